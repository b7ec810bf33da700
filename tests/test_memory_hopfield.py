"""Modern Hopfield networks and Hopfield layers: the energy decreases along updates
(CCCP), stored patterns are fixed points within the paper's bound, one-update retrieval
within the exponential bound, the three regimes of fixed points, the layers equal
attention (jax.nn.dot_product_attention, equinox's MultiheadAttention, a NumPy
reference), jit/vmap/grad with finite differences, and bad inputs."""

import functools as ft

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from jaxmodels import RESULTS
from jaxmodels.memory import (
    Hopfield,
    HopfieldLayer,
    HopfieldPooling,
    hopfield_energy,
    hopfield_retrieve,
    hopfield_update,
)

from .helpers import jaxtyping_off


def _separation(x: np.ndarray) -> np.ndarray:
    """`Delta_i = x_i.x_i - max_{j != i} x_i.x_j`."""
    g = x @ x.T
    return np.diag(g) - np.max(np.where(np.eye(len(x), dtype=bool), -np.inf, g), 1)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@ft.cache
def _clusters() -> np.ndarray:
    """Three clusters of four patterns in 6-D, every pattern of norm 3."""
    rng = np.random.default_rng(0)
    centres = 3 * np.eye(6)[:3]
    x = np.concatenate([c + 0.3 * rng.standard_normal((4, 6)) for c in centres])
    return 3 * x / np.linalg.norm(x, axis=1, keepdims=True)


def test_energy_never_increases_along_updates(x64):
    # The update is the concave-convex procedure on the energy (Theorem 1), so the
    # energy is non-increasing from every start; and it lies in [0, 2 M^2] (Lemma A1).
    patterns = jnp.asarray(np.random.default_rng(1).standard_normal((12, 5)))
    starts = 3 * jr.normal(jr.key(0), (200, 5))

    @jax.jit
    def trajectories(beta):
        def run(xi):
            def step(xi, _):
                new = hopfield_update(xi, patterns, beta)
                return new, hopfield_energy(new, patterns, beta)

            _, es = jax.lax.scan(step, xi, None, length=15)
            return jnp.concatenate([hopfield_energy(xi, patterns, beta)[None], es])

        return jax.vmap(run)(starts)

    max_sq_norm = float(jnp.max(jnp.sum(patterns**2, axis=1)))
    for beta in (0.1, 1.0, 8.0):
        energies = np.asarray(trajectories(jnp.asarray(beta)))
        rises = np.diff(energies, axis=1)
        assert rises.max() <= 1e-12 * np.abs(energies).max(), (beta, rises.max())
        # The energy does move: the starts are not fixed points already.
        assert (energies[:, 0] - energies[:, -1]).max() > 0.1
        # The upper bound holds for states in the patterns' convex hull (t >= 1).
        assert energies.min() >= -1e-12
        assert energies[:, 1:].max() <= 2 * max_sq_norm


def test_stored_patterns_are_fixed_points_within_the_bound(x64):
    # Theorem 5: for x_i* the fixed point near x_i,
    #   |x_i* - x_i| <= 2 (N - 1) M exp(-beta (Delta_i - 2 |x_i* - x_i| M)),
    # and, when |x_i* - x_i| <= 1 / (2 beta M),  |x_i* - x_i| <= 2 e (N - 1) M
    # exp(-beta Delta_i). Patterns whose second bound is within 1 / (2 beta M) are
    # "well separated": the fixed point must then lie in that sphere and meet both.
    rng = np.random.default_rng(1)
    n, beta = 20, 2.0
    x = rng.standard_normal((n, 16))
    delta, m = _separation(x), np.linalg.norm(x, axis=1).max()
    retrieve = jax.jit(
        jax.vmap(
            lambda xi: hopfield_retrieve(
                xi, jnp.asarray(x), beta, rtol=1e-14, atol=1e-14, max_steps=200
            )
        )
    )
    sol = retrieve(jnp.asarray(x))
    assert np.all(np.asarray(sol.result._value) == RESULTS.successful._value)
    err = np.linalg.norm(np.asarray(sol.value) - x, axis=1)
    bound_e = 2 * np.e * (n - 1) * m * np.exp(-beta * delta)
    separated = bound_e <= 1 / (2 * beta * m)
    assert separated.sum() >= n // 2, separated.sum()
    assert np.all(err[separated] <= 1 / (2 * beta * m))
    assert np.all(err[separated] <= bound_e[separated])
    bound = 2 * (n - 1) * m * np.exp(-beta * (delta - 2 * err * m))
    assert np.all(err[separated] <= bound[separated])
    # Most errors are resolved in float64 (above rounding), so the bound is checked
    # for real, and there it is within two orders of magnitude of the truth.
    resolved = separated & (err > 1e-10)
    assert resolved.sum() >= separated.sum() // 2, (resolved.sum(), separated.sum())
    assert np.all(err[resolved] >= 1e-2 * bound[resolved])


def test_one_update_retrieves_within_the_exponential_bound(x64):
    # One update from xi with |xi - x_i| = r: |f(xi) - x_i| <= 2 eps M with
    # eps = (N - 1) exp(-beta (Delta_i - 2 r M)) (the paper's Theorem 5 with r in the
    # exponent; its max(r, |x_i* - x_i|) only loosens it). Random +-1 patterns,
    # N = 40 in 64-D (above the classical 0.14 d), queries at distance 0.5.
    rng = np.random.default_rng(2)
    n, d = 40, 64
    x = rng.choice([-1.0, 1.0], (n, d))
    noise = rng.standard_normal((n, d))
    xi = x + 0.5 * noise / np.linalg.norm(noise, axis=1, keepdims=True)
    delta, m, r = _separation(x), np.sqrt(d), 0.5
    update = jax.jit(jax.vmap(hopfield_update, in_axes=(0, None, None)))
    for beta in (0.4, 0.5):
        err = np.linalg.norm(np.asarray(update(xi, x, beta)) - x, axis=1)
        paper = 2 * m * (n - 1) * np.exp(-beta * (delta - 2 * r * m))
        assert paper.max() < 0.05, paper.max()  # the bound says something
        assert np.all(err <= paper), beta
        assert np.all(err > 0)
    # A quarter of the signs flipped is outside the paper's sphere (2 r M > Delta_i,
    # so its bound is vacuous); the same argument with the exact gaps
    # (x_i - x_j).xi and distances |x_i - x_j| in place of Delta_i - 2 r M and 2 M
    # bounds the error: sum_j |x_j - x_i| exp(-beta (x_i - x_j).xi).
    flips = np.stack([rng.permutation(d) < d // 4 for _ in range(n)])
    xi = np.where(flips, -x, x)
    assert np.all(delta < 2 * np.linalg.norm(xi - x, axis=1) * m)
    dist = np.linalg.norm(x[:, None] - x[None, :], axis=-1)
    gap = np.einsum("id,ijd->ij", xi, x[:, None] - x[None, :])
    off = ~np.eye(n, dtype=bool)
    errs = []
    for beta in (0.1, 1.0, 4.0):
        err = np.linalg.norm(np.asarray(update(xi, x, beta)) - x, axis=1)
        tight = np.sum(np.where(off, dist * np.exp(-beta * gap), 0), 1)
        # (plus float64 rounding of a mix of 40 vectors of norm 8, ~1e-14)
        assert np.all(err <= tight * (1 + 1e-9) + 1e-12), beta
        errs.append(err.max())
    # Exponentially small in beta: at beta = 4 one update retrieves every pattern.
    assert errs[0] > 1.0 and errs[1] > 1e-3 and errs[2] < 1e-6, errs


@pytest.fixture(scope="module")
def regimes():
    with jax.enable_x64(True):
        x = jnp.asarray(_clusters(), jnp.float64)
        retrieve = jax.jit(
            jax.vmap(
                lambda xi, beta: hopfield_retrieve(
                    xi, x, beta, rtol=1e-13, atol=1e-13, max_steps=5000
                ),
                in_axes=(0, None),
            )
        )
        starts = x[jnp.array([0, 5, 9])] + 0.05
        out = {b: retrieve(starts, jnp.asarray(b)) for b in (1e-3, 2.0, 1e4)}
        return {
            b: (np.asarray(sol.value), np.asarray(sol.result._value))
            for b, sol in out.items()
        }


def test_three_regimes_of_fixed_points(regimes):
    x = _clusters()
    index, cluster = np.array([0, 5, 9]), np.array([0, 1, 2])
    # Small beta: the global fixed point. To first order in beta, softmax(beta X xi)
    # = (1 + beta (X xi - mean))/N, so xi* = (I - beta C)^-1 mean, C the covariance.
    beta = 1e-3
    xs = np.asarray(regimes[beta][0])
    mean = x.mean(0)
    cov = (x - mean).T @ (x - mean) / len(x)
    first_order = np.linalg.solve(np.eye(6) - beta * cov, mean)
    assert np.abs(xs - first_order).max() < 10 * beta**2 * 27, xs - first_order
    assert np.abs(xs - mean).max() > 1e-4  # the correction is visible
    # Intermediate beta: a metastable state averaging the start's cluster. Each of
    # its four patterns gets weight within a factor two of 1/4, the others ~0.
    for xi, c in zip(np.asarray(regimes[2.0][0]), cluster):
        p = _softmax(2.0 * x @ xi)
        inside = p[4 * c : 4 * c + 4]
        assert np.all((inside > 1 / 8) & (inside < 1 / 2)), inside
        assert 1 - inside.sum() < 1e-6
        centre = x[4 * c : 4 * c + 4].mean(0)
        nearest = np.linalg.norm(x - xi, axis=1).min()
        assert np.linalg.norm(xi - centre) < 0.2 * nearest
    # Large beta: the single pattern the start was near, within the bound.
    delta, m = _separation(x), 3.0
    for xi, i in zip(np.asarray(regimes[1e4][0]), index):
        err = np.linalg.norm(xi - x[i])
        assert err <= 2 * np.e * (len(x) - 1) * m * np.exp(-1e4 * delta[i])
    for _, result in regimes.values():
        assert np.all(result == RESULTS.successful._value)


def _numpy_layer(h: Hopfield, r, y, v=None, mask=None):
    """A NumPy reference of `Hopfield.__call__` (no normalisation, no bias)."""
    v = y if v is None else v
    q = r @ np.asarray(h.state_proj.weight).T
    k = y @ np.asarray(h.stored_proj.weight).T
    vv = v @ np.asarray(h.value_proj.weight).T
    heads, beta = h.num_heads, float(h.beta)
    dh, dv = q.shape[1] // heads, vv.shape[1] // heads
    outs = []
    for a in range(heads):
        qa, ka = q[:, a * dh : (a + 1) * dh], k[:, a * dh : (a + 1) * dh]
        for _ in range(h.update_steps):
            qa = _softmax(np.where(mask, beta * qa @ ka.T, -np.inf)) @ ka
        p = _softmax(np.where(mask, beta * qa @ ka.T, -np.inf))
        outs.append(p @ vv[:, a * dv : (a + 1) * dv])
    return np.concatenate(outs, 1) @ np.asarray(h.output_proj.weight).T


_PLAIN = dict(normalize_state=False, normalize_stored=False, normalize_projection=False)


@eqx.filter_jit
def _attention_outputs(plain, h, h2, mha, r, y, y6, v5, pad):
    full = jnp.broadcast_to(pad, (r.shape[0], y6.shape[0]))
    return dict(
        plain=plain(r, y),
        sdpa=jax.nn.dot_product_attention(r[:, None], y[:, None], y[:, None])[:, 0],
        ours=h(r, y6, v5),
        mha=mha(r, y6, v5),
        ours_masked=h(r, y6, v5, mask=pad),
        mha_masked=mha(r, y6, v5, mask=full),
        steps=h2(r, y6, v5),
        steps_masked=h2(r, y6, v5, mask=pad),
    )


def test_layer_is_attention():
    r, y = jr.normal(jr.key(0), (5, 8)), jr.normal(jr.key(1), (7, 8))
    # Identity projections, beta = 1/sqrt(d): softmax attention itself.
    plain = Hopfield(
        8,
        project_state=False,
        project_stored=False,
        project_values=False,
        project_output=False,
        key=jr.key(2),
        **_PLAIN,
    )
    assert float(plain.beta) == pytest.approx(8**-0.5)
    # Four heads with projections: equinox's MultiheadAttention with the same
    # weights, with and without a key padding mask.
    sizes = dict(hidden_size=12, num_heads=4, key=jr.key(3), **_PLAIN)
    h = Hopfield(8, 6, 5, 3, **sizes)
    mha = eqx.nn.MultiheadAttention(4, 8, 6, 5, 3, qk_size=3, vo_size=3, key=jr.key(4))
    mha = eqx.tree_at(
        lambda m: (m.query_proj, m.key_proj, m.value_proj, m.output_proj),
        mha,
        (h.state_proj, h.stored_proj, h.value_proj, h.output_proj),
    )
    # The same weights (same key), two Hopfield updates of the queries first.
    h2 = Hopfield(8, 6, 5, 3, update_steps=2, **sizes)
    y6, v5 = jr.normal(jr.key(5), (7, 6)), jr.normal(jr.key(6), (7, 5))
    pad = jnp.array([True] * 5 + [False] * 2)
    out = _attention_outputs(plain, h, h2, mha, r, y, y6, v5, pad)
    assert np.allclose(out["plain"], out["sdpa"], atol=1e-5)
    assert np.allclose(out["ours"], out["mha"], atol=1e-5)
    assert np.allclose(out["ours_masked"], out["mha_masked"], atol=1e-5)
    assert not np.allclose(out["ours_masked"], out["ours"], atol=1e-3)
    # Update steps before the readout: against the NumPy reference.
    args = (np.asarray(r), np.asarray(y6), np.asarray(v5))
    ref = _numpy_layer(h2, *args, mask=np.ones(7, bool))
    assert np.allclose(out["steps"], ref, atol=1e-5)
    ref = _numpy_layer(h2, *args, mask=np.asarray(pad))
    assert np.allclose(out["steps_masked"], ref, atol=1e-5)
    assert not np.allclose(out["steps"], out["ours"], atol=1e-3)


@eqx.filter_jit
def _set_outputs(pool, layer, x, padded, mask):
    return pool(x), pool(x[::-1]), pool(padded, mask=mask), layer(x)


def test_pooling_and_lookup_layers():
    x = jr.normal(jr.key(0), (6, 8))
    pool = HopfieldPooling(8, 4, num_queries=2, num_heads=2, key=jr.key(1))
    layer = HopfieldLayer(8, 3, num_patterns=5, num_heads=2, normalize=False,
                          key=jr.key(2))  # fmt: skip
    padded = jnp.concatenate([x, 100 * jnp.ones((3, 8))])
    out, permuted, masked, looked_up = _set_outputs(
        pool, layer, x, padded, jnp.arange(9) < 6
    )
    assert out.shape == (2, 4)
    # A set: invariant to permutations, and padding is ignored under the mask.
    assert np.allclose(permuted, out, atol=1e-5)
    assert np.allclose(masked, out, atol=1e-5)
    # The lookup layer: a NumPy reference with the learned keys and values.
    hop = layer.hopfield
    q = np.asarray(x) @ np.asarray(hop.state_proj.weight).T
    keys, values = np.asarray(layer.keys), np.asarray(layer.values)
    heads = [
        _softmax(
            float(hop.beta) * q[:, 4 * a : 4 * a + 4] @ keys[:, 4 * a : 4 * a + 4].T
        )
        @ values[:, 4 * a : 4 * a + 4]
        for a in range(2)
    ]
    ref = np.concatenate(heads, 1) @ np.asarray(hop.output_proj.weight).T
    assert np.allclose(looked_up, ref, atol=1e-5)


@eqx.filter_jit
def _grad_checks(h, r, y, eps):
    params, static = eqx.partition(h, eqx.is_inexact_array)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    direction = unravel(jr.normal(jr.key(3), flat.shape, flat.dtype))
    direction = eqx.tree_at(lambda p: p.beta, direction, jnp.zeros(()))

    def loss(params):
        return jnp.sum(jax.vmap(eqx.combine(params, static))(r, y) ** 2)

    def shifted(s):
        return loss(jax.tree_util.tree_map(lambda p, d: p + s * d, params, direction))

    grads = jax.grad(loss)(params)
    analytic = ravel(grads) @ ravel(direction)
    singles = jax.lax.map(lambda ry: h(*ry), (r, y))  # a loop, not vmap
    plus, minus = jax.vmap(shifted)(jnp.stack([eps, -eps]))
    fd = (plus - minus) / (2 * eps)
    return grads.beta, jax.vmap(h)(r, y), singles, analytic, fd


def ravel(tree):
    return jax.flatten_util.ravel_pytree(tree)[0]


@jax.jit
def _retrieval_grad(beta, eps):
    x = jnp.asarray(_clusters())

    def settle(beta):
        sol = hopfield_retrieve(x[0] + 0.05, x, beta, rtol=1e-13, atol=1e-13)
        return jnp.sum(sol.value**2)

    return jax.grad(settle)(beta), (settle(beta + eps) - settle(beta - eps)) / (2 * eps)


@eqx.filter_jit
def _dropout_outputs(hd, h, r, y):
    two = jax.vmap(lambda k: hd(r, y, key=k))(jr.split(jr.key(5)))
    return two[0], two[1], eqx.nn.inference_mode(hd)(r, y), h(r, y)


def test_jit_vmap_grad(x64):
    h = Hopfield(4, num_heads=2, update_steps=1, use_bias=True, key=jr.key(0))
    assert h.state_proj.weight.dtype == jnp.float64
    r = jr.normal(jr.key(1), (3, 3, 4), jnp.float64)
    y = jr.normal(jr.key(2), (3, 5, 4), jnp.float64)
    grad_beta, batched, singles, analytic, fd = _grad_checks(h, r, y, 1e-6)
    # vmap over the batch equals one call per set.
    assert np.allclose(batched, singles, atol=1e-12)
    # Directional derivative against central finite differences.
    assert float(analytic) == pytest.approx(float(fd), rel=1e-6)
    assert abs(float(analytic)) > 1e-3
    assert float(grad_beta) == 0.0  # beta is held out of training
    # The retrieval's implicit gradient with respect to beta, against finite
    # differences (metastable regime, where the fixed point moves with beta).
    g, fd = _retrieval_grad(jnp.asarray(2.0), 1e-5)
    assert float(g) == pytest.approx(float(fd), rel=1e-5) and abs(float(g)) > 1e-4


def test_dropout():
    r, y = jr.normal(jr.key(1), (3, 4)), jr.normal(jr.key(2), (5, 4))
    # Dropout on the association matrix: needs a key, and is off in inference mode.
    hd = Hopfield(4, dropout=0.5, key=jr.key(4))
    with pytest.raises(RuntimeError, match="key"):
        hd(r, y)
    h = Hopfield(4, key=jr.key(4))  # the same weights without dropout
    r0, y0 = r.astype(jnp.float32), y.astype(jnp.float32)
    a, b, off, none = _dropout_outputs(hd, h, r0, y0)
    assert not np.allclose(a, b)
    assert np.allclose(off, none)


def test_bad_inputs():
    key = jr.key(0)
    with pytest.raises(ValueError, match="num_heads"):
        Hopfield(6, num_heads=4, key=key)
    with pytest.raises(ValueError, match="beta"):
        Hopfield(6, beta=0.0, key=key)
    with pytest.raises(ValueError, match="dropout"):
        Hopfield(6, dropout=1.0, key=key)
    with pytest.raises(ValueError, match="project_state"):
        Hopfield(6, hidden_size=4, project_state=False, key=key)
    with pytest.raises(ValueError, match="num_patterns"):
        HopfieldLayer(6, num_patterns=0, key=key)
    x = jnp.ones((4, 3))
    with pytest.raises(ValueError, match="beta"):
        hopfield_update(jnp.ones(3), x, -1.0)
    with jaxtyping_off():
        h = Hopfield(6, key=key)
        with pytest.raises(ValueError, match="stored"):
            h(jnp.ones((2, 6)), jnp.ones((3, 5)))
        with pytest.raises(ValueError, match="mask"):
            h(jnp.ones((2, 6)), jnp.ones((3, 6)), mask=jnp.ones(4, bool))
        with pytest.raises(ValueError, match="xi"):
            hopfield_update(jnp.ones(4), x, 1.0)
        with pytest.raises(ValueError, match="patterns"):
            hopfield_energy(jnp.ones(3), jnp.ones(3), 1.0)
    with pytest.raises(eqx.EquinoxRuntimeError, match="patterns"):
        hopfield_update(jnp.ones(3), x.at[1, 2].set(jnp.nan), 1.0)
    with pytest.raises(eqx.EquinoxRuntimeError, match="beta"):
        eqx.filter_jit(hopfield_update)(jnp.ones(3), x, jnp.asarray(-1.0))
    with pytest.raises(ValueError, match="max_steps"):
        hopfield_retrieve(jnp.ones(3), x, 1.0, max_steps=0)
    # Running out of steps raises, or is reported with throw=False.
    x = jnp.asarray(_clusters(), jnp.float32)
    sol = hopfield_retrieve(x[0] + 0.05, x, 2.0, max_steps=2, throw=False)
    assert sol.result == RESULTS.nonlinear_max_steps_reached
    with pytest.raises(eqx.EquinoxRuntimeError):
        hopfield_retrieve(x[0] + 0.05, x, 2.0, max_steps=2)
