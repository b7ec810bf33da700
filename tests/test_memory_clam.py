"""ClAM, k-means and the clustering metrics: NMI and silhouette against brute-force
NumPy, k-means at the optimum of separated blobs, the AM energy decreasing along the
dynamics (the descent lemma), convergence to a prototype at large beta, the loss
gradient against finite differences, the data generators, jit/vmap/grad, and bad
inputs."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import jaxmodels.data as jmd
from jaxmodels._core import RESULTS
from jaxmodels.memory import (
    ClAM,
    clam_loss,
    kmeans,
    kmeans_plusplus,
    normalised_mutual_info,
    silhouette_score,
)

from .helpers import jaxtyping_off


_nmi = jax.jit(normalised_mutual_info, static_argnames="num_labels")
_silhouette = jax.jit(silhouette_score, static_argnames="num_labels")


# ---------------------------------------------------------------- NumPy references


def _nmi_numpy(a, b):
    a, b = np.asarray(a), np.asarray(b)
    n = len(a)
    ua, ub = np.unique(a), np.unique(b)
    if len(ua) == len(ub) == 1:
        return 1.0
    mi = 0.0
    for i in ua:
        for j in ub:
            nij = np.sum((a == i) & (b == j))
            if nij > 0:
                ni, nj = np.sum(a == i), np.sum(b == j)
                mi += nij / n * math.log(n * nij / (ni * nj))
    ha = -sum(np.mean(a == i) * math.log(np.mean(a == i)) for i in ua)
    hb = -sum(np.mean(b == j) * math.log(np.mean(b == j)) for j in ub)
    return max(mi, 0.0) / ((ha + hb) / 2)


def _silhouette_numpy(x, labels):
    x, labels = np.asarray(x, dtype=np.float64), np.asarray(labels)
    n = len(x)
    s = np.zeros(n)
    for i in range(n):
        same = labels == labels[i]
        if same.sum() == 1:
            continue
        d = np.sqrt(((x - x[i]) ** 2).sum(axis=1))
        a = d[same].sum() / (same.sum() - 1)
        b = min(d[labels == c].mean() for c in np.unique(labels) if c != labels[i])
        s[i] = (b - a) / max(a, b)
    return s.mean()


def _energy_numpy(x, prototypes, beta):
    d2 = ((x[None, :] - prototypes) ** 2).sum(axis=1)
    m = (-beta * d2).max()
    return -(m + np.log(np.exp(-beta * d2 - m).sum())) / beta


# ---------------------------------------------------------------- metrics


def test_nmi_against_numpy(x64):
    # One shape throughout (one compilation): n = 3000, labels below 6.
    keys = jr.split(jr.key(0), 6)
    for i in range(3):
        a = jr.randint(keys[2 * i], (3000,), 0, 4)
        b = jr.randint(keys[2 * i + 1], (3000,), 0, 3 + i)
        b = jnp.where(a == 0, 0, b)  # dependent, so the NMI is not near 0
        got = float(_nmi(a, b, num_labels=6))
        assert got == pytest.approx(_nmi_numpy(a, b), rel=1e-10, abs=1e-12)
        assert got > 0.1
    # A relabelled copy is the same partition; unused labels do not matter.
    perm = jnp.array([3, 0, 5, 1, 2, 4])
    assert float(_nmi(a, perm[a], num_labels=6)) == pytest.approx(1.0, abs=1e-12)
    # Independent labels: the plug-in MI of n = 3000 samples of 3 x 3 uniform labels
    # has mean about (3 - 1)^2 / (2 n) = 7e-4 nats, against H = log 3.
    a, b = jr.randint(keys[0], (2, 3000), 0, 3)
    assert float(_nmi(a, b, num_labels=6)) < 0.01
    # scikit-learn's conventions: one cluster against one is 1, against several 0.
    ones = jnp.zeros(3000, jnp.int32)
    assert float(_nmi(ones, ones + 1, num_labels=6)) == 1.0
    assert float(_nmi(ones, a, num_labels=6)) == 0.0


def test_silhouette_against_numpy(x64):
    x = jr.normal(jr.key(1), (30, 3))
    labels = jr.randint(jr.key(2), (30,), 0, 3)
    got = float(_silhouette(x, labels, num_labels=4))
    assert got == pytest.approx(_silhouette_numpy(x, labels), rel=1e-9)
    # A singleton cluster scores 0 for its point; well separated pairs score near 1.
    labels = labels.at[0].set(3)
    got = float(_silhouette(x, labels, num_labels=4))
    assert got == pytest.approx(_silhouette_numpy(x, labels), rel=1e-9)
    pairs = jnp.array([[0.0, 0.0], [0.0, 0.1], [10.0, 0.0], [10.0, 0.1]])
    got = float(_silhouette(pairs, jnp.array([0, 0, 1, 1]), num_labels=2))
    assert got == pytest.approx(_silhouette_numpy(pairs, [0, 0, 1, 1]), rel=1e-9)
    assert got > 0.98


@jax.jit
def _kmeans_on(x, key):
    return kmeans(x, 4, key=key, restarts=3), kmeans_plusplus(x, 4, key=key)


def test_kmeans_reaches_the_optimum_of_separated_blobs(x64):
    centres = 20.0 * jnp.array([[0, 0], [1, 0], [0, 1], [1, 1.0]])
    y = jnp.arange(80) % 4
    x = centres[y] + 0.5 * jr.normal(jr.key(3), (80, 2))
    sol, seeds = _kmeans_on(x, jr.key(4))
    assert float(_nmi(y, sol.labels, num_labels=4)) == 1.0
    # The optimum: each blob's own mean, inertia = the within-blob sum of squares.
    xn, yn = np.asarray(x), np.asarray(y)
    optimum = sum(((xn[yn == c] - xn[yn == c].mean(0)) ** 2).sum() for c in range(4))
    assert float(sol.inertia) == pytest.approx(optimum, rel=1e-12)
    means = np.stack([xn[yn == c].mean(0) for c in range(4)])
    got = np.asarray(sol.value)[np.asarray(sol.labels)[:4]]
    np.testing.assert_allclose(got, means, rtol=1e-12)
    assert sol.result == RESULTS.successful
    assert 1 <= int(sol.num_steps) < 300
    # k-means++ seeds are k distinct data points here.
    seeds = np.asarray(seeds)
    assert all(np.any(np.all(xn == s, axis=1)) for s in seeds)
    assert len(np.unique(seeds, axis=0)) == 4


# ---------------------------------------------------------------- ClAM dynamics


def _model(beta, eta, steps, key=0, dim=3, k=4):
    return ClAM(k, dim, beta=beta, eta=eta, steps=steps, key=jr.key(key))


def test_step_matches_the_formula(x64):
    model = _model(0.7, 0.6, 1)
    x = jr.normal(jr.key(7), (3,))
    rho, xn = np.asarray(model.prototypes), np.asarray(x)
    logits = -0.7 * ((xn - rho) ** 2).sum(axis=1)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    expected = xn + 0.6 * (p[:, None] * (rho - xn)).sum(axis=0)
    sol = model.dynamics(x)
    np.testing.assert_allclose(np.asarray(sol.value), expected, rtol=1e-12)
    assert float(sol.energies[0]) == pytest.approx(
        _energy_numpy(xn, rho, 0.7), rel=1e-12
    )


@jax.jit
def _energy_runs(x0s, free):
    out = []
    for key, beta, eta in ((1, 0.3, 0.4), (2, 2.0, 1.0), (3, 5.0, 1.9)):
        model = _model(beta, eta, 25, key=key)
        out.append(jax.vmap(lambda x: model.dynamics(x).energies)(x0s))
        out.append(jax.vmap(lambda x: model.dynamics(x, free=free).energies)(x0s))
    return jnp.stack(out)


def test_dynamics_decrease_the_energy(x64):
    # x + eta sum p (rho - x) is gradient descent on E with step eta / 2, and the
    # Hessian of E is at most 2 I: E decreases for every eta < 2 (descent lemma).
    x0s = 2.0 * jr.normal(jr.key(8), (20, 3))
    energies = np.asarray(_energy_runs(x0s, jnp.array([True, False, True])))
    increments = np.diff(energies, axis=-1)
    assert increments.max() <= 1e-12, increments.max()
    # Not trivially: the energy does go down.
    assert (energies[..., 0] - energies[..., -1]).min() > 1e-3


def test_converges_to_the_nearest_prototype_at_large_beta(x64):
    prototypes = (
        3.0 * jnp.eye(3)[jnp.array([0, 1, 2, 0])] * jnp.array([[1], [1], [1], [-1]])
    )
    model = eqx.tree_at(lambda m: m.prototypes, _model(40.0, 0.5, 60), prototypes)
    x0s = 2.0 * jr.normal(jr.key(9), (50, 3))
    sols = jax.jit(jax.vmap(model.dynamics))(x0s)
    d2 = ((np.asarray(x0s)[:, None] - np.asarray(prototypes)) ** 2).sum(-1)
    srt = np.sort(d2, axis=1)
    # Clear winners only: the softmax is one-hot up to exp(-beta * margin).
    clear = srt[:, 1] - srt[:, 0] > 0.5
    assert clear.sum() >= 30
    nearest = np.asarray(prototypes)[d2.argmin(1)]
    err = np.abs(np.asarray(sols.value) - nearest).max(axis=1)
    assert err[clear].max() < 1e-8
    np.testing.assert_array_equal(
        np.asarray(sols.assignment)[clear], d2.argmin(1)[clear]
    )
    assert np.all(np.asarray(sols.step_norm)[clear] < 1e-8)


def test_loss_gradient_against_finite_differences(x64):
    model = ClAM(3, 4, beta=0.8, eta=0.7, steps=5, learn_beta=True, key=jr.key(10))
    x = jr.normal(jr.key(11), (4,))
    mask = jnp.array([True, False, True, False])

    def loss(protos, beta):
        m = eqx.tree_at(lambda m: (m.prototypes, m.beta), model, (protos, beta))
        return m.completion_loss(x, mask)

    grad_p, grad_b = jax.jit(jax.grad(loss, argnums=(0, 1)))(
        model.prototypes, model.beta
    )
    direction = jr.normal(jr.key(12), model.prototypes.shape)
    h = 1e-6
    fd = (
        loss(model.prototypes + h * direction, model.beta)
        - loss(model.prototypes - h * direction, model.beta)
    ) / (2 * h)
    assert float(jnp.sum(grad_p * direction)) == pytest.approx(float(fd), rel=1e-6)
    fd_b = (
        loss(model.prototypes, model.beta + h) - loss(model.prototypes, model.beta - h)
    ) / (2 * h)
    assert float(grad_b) == pytest.approx(float(fd_b), rel=1e-6)
    assert abs(float(grad_b)) > 1e-6
    # Nothing masked, nothing to complete.
    assert float(model.completion_loss(x, jnp.zeros(4, bool))) == 0.0


def test_jit_vmap_grad_compose():
    model = _model(1.0, 1.0, 4, dim=2, k=3)
    xs = jr.normal(jr.key(16), (5, 2))
    one = eqx.filter_jit(model)
    single = np.array([int(one(x)) for x in xs])
    batched = np.asarray(eqx.filter_jit(jax.vmap(model))(xs))
    np.testing.assert_array_equal(batched, single)
    grads = eqx.filter_jit(eqx.filter_grad(clam_loss))(model, xs, jr.key(17))
    assert np.all(np.isfinite(np.asarray(grads.prototypes)))
    assert float(jnp.abs(grads.prototypes).sum()) > 0
    assert float(grads.beta) == 0.0 and float(grads.eta) == 0.0
    # Models with different beta vmap over as one stack.
    betas = jnp.array([0.5, 1.0, 2.0])

    @eqx.filter_jit
    def energies(betas):
        stack = eqx.filter_vmap(lambda b: ClAM(3, 2, beta=b, key=jr.key(0)))(betas)
        return eqx.filter_vmap(lambda m: m.energy(xs[0]))(stack)

    energies = energies(betas)
    assert energies.shape == (3,) and np.all(np.isfinite(np.asarray(energies)))


# ---------------------------------------------------------------- data


def test_cluster_generators():
    blobs = jax.jit(jmd.anisotropic_blobs, static_argnums=1, static_argnames="dim")
    rings = jax.jit(jmd.rings, static_argnums=1, static_argnames="classes")
    x, y = blobs(jr.key(18), 3000, dim=2, std=0.5, stretch=3.0)
    assert x.shape == (3000, 2) and x.dtype == jnp.float32 and y.dtype == jnp.int32
    np.testing.assert_array_equal(np.bincount(np.asarray(y)), [1000, 1000, 1000])
    for c in range(3):
        eig = np.linalg.eigvalsh(np.cov(np.asarray(x[y == c]).T))
        # Standard deviations 0.5 * 3 = 1.5 and 0.5 (1000 samples: ~5% error).
        np.testing.assert_allclose(np.sqrt(eig), [0.5, 1.5], rtol=0.1)
    x, y = rings(jr.key(19), 900, classes=3, noise=0.0)
    radius = np.linalg.norm(np.asarray(x), axis=1)
    np.testing.assert_allclose(radius, (np.asarray(y) + 1) / 3, rtol=1e-5)
    with pytest.raises(ValueError, match="stretch"):
        jmd.anisotropic_blobs(jr.key(0), 10, stretch=0.0)
    with pytest.raises(ValueError, match="classes"):
        jmd.rings(jr.key(0), 10, classes=1)
    with pytest.raises(ValueError, match="noise"):
        jmd.rings(jr.key(0), 10, noise=-1.0)


# ---------------------------------------------------------------- bad inputs


def test_bad_inputs_raise_naming_the_argument():
    key = jr.key(0)
    with pytest.raises(ValueError, match="`k`"):
        ClAM(0, 2, key=key)
    with pytest.raises(ValueError, match="`dim`"):
        ClAM(2, 0, key=key)
    with pytest.raises(ValueError, match="`steps`"):
        ClAM(2, 2, steps=0, key=key)
    with pytest.raises(ValueError, match="`beta`"):
        ClAM(2, 2, beta=0.0, key=key)
    with pytest.raises(ValueError, match="`eta`"):
        ClAM(2, 2, eta=-1.0, key=key)
    for ratio in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="`mask_ratio`"):
            ClAM(2, 2, mask_ratio=ratio, key=key)
    with pytest.raises(ValueError, match="`init`"):
        ClAM(2, 2, data=jnp.zeros((4, 2)), init="random", key=key)
    model = ClAM(2, 3, key=key)
    x = jnp.zeros((5, 3))
    with jaxtyping_off():
        with pytest.raises(ValueError, match="`data`"):
            ClAM(2, 2, data=jnp.zeros((4, 3)), key=key)
        with pytest.raises(ValueError, match="`data`"):
            ClAM(5, 2, data=jnp.zeros((4, 2)), key=key)
        with pytest.raises(ValueError, match="`x`"):
            model(jnp.zeros(2))
        with pytest.raises(ValueError, match="`free`"):
            model.dynamics(jnp.zeros(3), free=jnp.ones(2, bool))
        with pytest.raises(ValueError, match="`x`"):
            kmeans(jnp.zeros(5), 2, key=key)
        with pytest.raises(ValueError, match="`k`"):
            kmeans(x, 0, key=key)
        with pytest.raises(ValueError, match="`x`"):
            kmeans(x, 6, key=key)
        with pytest.raises(ValueError, match="`labels_pred`"):
            normalised_mutual_info(jnp.zeros(5, int), jnp.zeros(4, int), num_labels=2)
        with pytest.raises(ValueError, match="`labels`"):
            silhouette_score(x, jnp.zeros(4, int), num_labels=2)
    with pytest.raises(Exception, match="labels_true"):
        normalised_mutual_info(jnp.array([0, 3]), jnp.array([0, 1]), num_labels=2)
    with pytest.raises(Exception, match="non-empty clusters"):
        silhouette_score(x, jnp.zeros(5, int), num_labels=2)
    # Edited leaves are checked where used.
    bad = eqx.tree_at(lambda m: m.mask_ratio, model, jnp.asarray(1.5))
    with pytest.raises(Exception, match="mask_ratio"):
        bad.random_mask(key)
    bad = eqx.tree_at(lambda m: m.beta, model, jnp.asarray(-1.0))
    with pytest.raises(Exception, match="beta"):
        bad.energy(jnp.zeros(3))
