"""Monotone DEQ and monotone DBM: the weight's margin, uniqueness, convergence of both
splittings, the equation and the free energy, the entropic prox, implicit gradients
against finite differences, jit/vmap/grad, and bad inputs."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optimistix as optx
import pytest

import jaxmodels.data as jmd
from jaxmodels.implicit import (
    RBM,
    ForwardBackward,
    MeanFieldActivation,
    MonotoneDBM,
    MonotoneDEQ,
    MonotoneLinear,
    PeacemanRachford,
)

from .helpers import jaxtyping_off


LAYERS = [(5, 1), (3, 3), (4, 1)]  # binary, one categorical of 3, binary hidden


def _dbm(splitting, *, m=0.5, key=1):
    dbm = MonotoneDBM(LAYERS, m=m, scale=1.5, splitting=splitting, key=jr.key(key))
    return eqx.tree_at(lambda d: d.bias, dbm, jr.normal(jr.key(key + 7), (12,)))


def _clamp():
    values = jnp.zeros(12).at[:5].set(jnp.array([1.0, 0.0, 1.0, 1.0, 0.0]))
    observed = jnp.zeros(12, dtype=bool).at[jnp.array([0, 2, 3])].set(True)
    return values, observed


def test_weight_margin_holds_for_any_factors():
    for symmetric in (False, True):
        lin = MonotoneLinear(7, m=0.3, symmetric=symmetric, scale=4.0, key=jr.key(0))
        w = np.asarray(lin.weight(), dtype=np.float64)
        sym = np.eye(7) - (w + w.T) / 2
        assert np.linalg.eigvalsh(sym).min() >= 0.3 - 1e-4
        assert np.allclose(w, w.T) == symmetric
        # With a rank-deficient A the bound is attained: the margin is exactly m.
        low = eqx.tree_at(lambda lin: lin.root, lin, lin.root.at[2:].set(0.0))
        w = np.asarray(low.weight(), dtype=np.float64)
        sym = np.eye(7) - (w + w.T) / 2
        assert np.linalg.eigvalsh(sym).min() == pytest.approx(0.3, abs=1e-5)
    # `m` is a leaf but not trained.
    grad = eqx.filter_grad(lambda lin: jnp.sum(lin.weight()))(lin)
    assert float(grad.m) == 0.0


@jax.jit
def _many_starts(z0s):
    deq = MonotoneDEQ(3, 8, m=0.2, key=jr.key(0))
    deq = eqx.tree_at(lambda d: d.linear.root, deq, 3 * deq.linear.root)
    x = jnp.array([1.0, -2.0, 0.5])
    dbm = _dbm(PeacemanRachford(rtol=1e-6, atol=1e-7))
    values, observed = _clamp()
    zs = jax.vmap(lambda z0: deq.fixed_point(x, z0=z0).value)(z0s[:, :8])
    qs = jax.vmap(lambda q0: dbm.infer(values, observed, q0=q0).value)(
        jax.nn.sigmoid(z0s[:, :12])
    )
    return zs, qs


def test_one_fixed_point_from_100_random_starts():
    z0s = 5 * jr.normal(jr.key(3), (100, 12))
    zs, qs = _many_starts(z0s)
    for out in (zs, qs):
        assert np.all(np.isfinite(out))
        spread = float(jnp.max(jnp.abs(out - out[:1])))
        assert spread < 1e-5, spread
    # The equilibria are not trivial: the starts were far apart.
    assert float(jnp.max(jnp.abs(z0s[:, :8] - zs))) > 1.0


@eqx.filter_jit
def _solve_all(deq, x):
    return deq.fixed_point(x)


def test_both_splittings_converge_for_every_m_and_admissible_alpha(x64):
    x = jnp.array([0.3, -1.0, 2.0])
    tight = dict(rtol=1e-11, atol=1e-11, max_steps=100000)
    ends = []
    for m in (0.2, 1.0, 5.0):
        base = MonotoneDEQ(3, 6, m=m, key=jr.key(2))
        w = np.asarray(base.linear.weight())
        lipschitz = np.linalg.norm(np.eye(6) - w, ord=2)
        limit = 2 * m / lipschitz**2  # Theorem: forward-backward needs alpha < limit
        splittings = [ForwardBackward(f * limit, **tight) for f in (0.3, 0.95)]
        splittings += [PeacemanRachford(a, **tight) for a in (0.1, 1.0, 10.0)]
        solutions = []
        for splitting in splittings:
            deq = eqx.tree_at(lambda d: d.splitting, base, splitting)
            sol = _solve_all(deq, x)
            assert sol.result == optx.RESULTS.successful
            assert float(sol.residual) < 1e-8, (m, splitting, float(sol.residual))
            solutions.append(np.asarray(sol.value))
        spread = np.max(np.abs(np.stack(solutions) - solutions[0][None, :]))
        assert spread < 1e-8, (m, spread)
        ends.append(solutions[0])
    # Different margins give different equilibria (the test sees the weights).
    assert np.max(np.abs(ends[0] - ends[2])) > 1e-2


def test_equilibrium_satisfies_its_equation_and_minimises_free_energy():
    deq = MonotoneDEQ(3, 8, m=0.5, key=jr.key(4))
    x = jnp.array([1.0, 0.5, -1.5])
    z = np.asarray(deq(x), dtype=np.float64)
    w = np.asarray(deq.linear.weight(), dtype=np.float64)
    u = np.asarray(deq.inject.weight, dtype=np.float64)
    b = np.asarray(deq.inject.bias, dtype=np.float64)
    assert np.max(np.abs(z - np.maximum(w @ z + u @ np.asarray(x) + b, 0))) < 1e-5
    assert (z > 0).any() and (z == 0).any()

    dbm = _dbm(PeacemanRachford(rtol=1e-6, atol=1e-7))
    values, observed = _clamp()
    q = np.asarray(dbm(values, observed), dtype=np.float64)
    w = np.asarray(dbm.linear.weight(), dtype=np.float64)
    field = w @ q + np.asarray(dbm.bias, dtype=np.float64)
    expect = np.concatenate(
        [
            1 / (1 + np.exp(-field[:5])),
            np.exp(field[5:8]) / np.exp(field[5:8]).sum(),
            1 / (1 + np.exp(-field[8:])),
        ]
    )
    free = ~np.asarray(observed)
    assert np.max(np.abs(q - expect)[free]) < 1e-5
    assert np.all(q[~free] == np.asarray(values)[~free])
    # Mean field is variational: q minimises the free energy over distributions that
    # agree on the clamped units (random feasible perturbations all increase it).
    energy = jax.jit(jax.vmap(dbm.free_energy))
    rng = np.random.default_rng(0)
    trial = np.repeat(q[None, :], 200, axis=0)
    noise = 0.05 * rng.standard_normal((200, 12)) * free[None, :]
    noise[:, 5:8] -= noise[:, 5:8].mean(axis=1, keepdims=True)  # stay on the simplex
    trial = np.clip(trial + noise, 1e-4, 1 - 1e-4)
    gaps = np.asarray(energy(jnp.asarray(trial, jnp.float32))) - float(
        energy(jnp.asarray(q[None, :], jnp.float32))[0]
    )
    assert gaps.min() > 0, gaps.min()


def test_entropic_prox_is_the_proximal_operator(x64):
    act = MeanFieldActivation([(4, 1), (4, 4)])
    v = jnp.array([-3.0, -0.2, 0.7, 4.0, 1.0, -2.0, 0.5, 3.0])
    grid = np.linspace(1e-9, 1 - 1e-9, 200001)
    for alpha in (0.1, 0.5, 1.0):
        z = np.asarray(act.prox(v, alpha))
        # Binary units: a brute-force argmin of |z - v|^2 / 2 + alpha g(z).
        for k in range(4):
            g = grid * np.log(grid) + (1 - grid) * np.log(1 - grid) - grid**2 / 2
            objective = (grid - float(v[k])) ** 2 / 2 + alpha * g
            assert z[k] == pytest.approx(grid[np.argmin(objective)], abs=2e-5)
        # The categorical group: on the simplex, and the stationarity condition
        # (1 - alpha) z + alpha log z - v is constant (the multiplier).
        zg = z[4:]
        assert zg.sum() == pytest.approx(1.0, abs=1e-12)
        stationary = (1 - alpha) * zg + alpha * np.log(zg) - np.asarray(v[4:])
        assert np.ptp(stationary) < 1e-10
    # At alpha = 1 it is the activation itself.
    assert np.allclose(act.prox(v, 1.0), act(v), atol=1e-12)


def _fd_check(loss, model, key, eps=1e-6):
    params, static = eqx.partition(model, eqx.is_inexact_array)
    grads = eqx.filter_grad(lambda p: loss(eqx.combine(p, static)))(params)
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jr.split(key, len(leaves))
    direction = [jr.normal(k, leaf.shape, leaf.dtype) for k, leaf in zip(keys, leaves)]
    d = jax.tree_util.tree_unflatten(tree, direction)
    # The margin `m` is held out of training (its gradient is zero by design) and the
    # step size does not move the equilibrium: perturb the trained parameters only.
    d = eqx.tree_at(
        lambda t: (t.linear.m, t.splitting.alpha), d, replace_fn=jnp.zeros_like
    )
    direction = jax.tree_util.tree_leaves(d)
    plus = jax.tree_util.tree_map(lambda p, t: p + eps * t, params, d)
    minus = jax.tree_util.tree_map(lambda p, t: p - eps * t, params, d)
    fd = (loss(eqx.combine(plus, static)) - loss(eqx.combine(minus, static))) / (
        2 * eps
    )
    analytic = sum(
        float(jnp.sum(g * t))
        for g, t in zip(jax.tree_util.tree_leaves(grads), direction)
    )
    return analytic, float(fd)


def test_implicit_gradients_match_finite_differences(x64):
    tight = dict(rtol=1e-12, atol=1e-12)
    deq = MonotoneDEQ(3, 6, m=0.5, splitting=PeacemanRachford(**tight), key=jr.key(5))
    x = jnp.array([0.4, -1.0, 1.5])
    target = jnp.linspace(-1.0, 1.0, 6)
    analytic, fd = _fd_check(
        jax.jit(lambda d: jnp.sum((d(x) - target) ** 2)), deq, jr.key(6)
    )
    assert analytic == pytest.approx(fd, rel=1e-6, abs=1e-9)

    values, observed = _clamp()
    for splitting in (PeacemanRachford(0.5, **tight),):
        dbm = _dbm(splitting)
        analytic, fd = _fd_check(
            jax.jit(lambda d: jnp.sum(jnp.sin(3 * d(values, observed)))), dbm, jr.key(7)
        )
        assert analytic == pytest.approx(fd, rel=1e-6, abs=1e-9)


def test_jit_vmap_grad_compose():
    deq = MonotoneDEQ(2, 5, key=jr.key(8))
    xs = jr.normal(jr.key(9), (6, 2))

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def loss_and_grad(model, xs):
        def loss(model):
            zs = jax.vmap(model)(xs)
            return jnp.mean(zs**2), zs

        return eqx.filter_value_and_grad(loss, has_aux=True)(model)

    (value, zs), grads = loss_and_grad(deq, xs)
    loss_and_grad(deq, xs + 1)
    assert np.isfinite(float(value))
    assert float(jnp.max(jnp.abs(grads.linear.root))) > 0
    # Each row of the batch is the equilibrium of its own input.
    w = np.asarray(deq.linear.weight())
    pre = np.asarray(zs) @ w.T + np.asarray(jax.vmap(deq.inject)(xs))
    assert np.max(np.abs(np.asarray(zs) - np.maximum(pre, 0))) < 1e-5

    # The RBM baseline and the data also compose with vmap.
    x, _ = jmd.binary_patterns(jr.key(0), 4)
    rbm = RBM([(64, 1)], 8, key=jr.key(1))
    masks = jr.bernoulli(jr.key(2), 0.5, (4, 64))
    out = jax.vmap(rbm)(x, masks)
    assert out.shape == (4, 64) and np.all(np.where(masks, out == x, True))


def test_running_out_of_steps_raises_or_reports():
    dbm = _dbm(ForwardBackward(0.01, max_steps=3))
    values, observed = _clamp()
    sol = dbm.infer(values, observed, throw=False)
    assert sol.result != optx.RESULTS.successful and int(sol.num_steps) == 3
    with pytest.raises(Exception, match="maximum number of steps"):
        dbm.infer(values, observed)


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="`m`"):
        MonotoneLinear(4, m=0.0, key=jr.key(0))
    with pytest.raises(ValueError, match="`m`"):
        MonotoneDBM(LAYERS, m=-1.0, key=jr.key(0))
    with pytest.raises(ValueError, match="`size`"):
        MonotoneDEQ(2, 0, key=jr.key(0))
    with pytest.raises(ValueError, match="`alpha`"):
        PeacemanRachford(0.0)
    with pytest.raises(ValueError, match="`alpha`"):
        ForwardBackward(-1.0)
    with pytest.raises(ValueError, match="`layers`"):
        MonotoneDBM([(5, 2)], key=jr.key(0))
    with pytest.raises(ValueError, match="`noise`"):
        jmd.binary_patterns(jr.key(0), 4, noise=0.7)
    deq = MonotoneDEQ(2, 4, key=jr.key(0))
    dbm = _dbm(PeacemanRachford())
    values, observed = _clamp()
    with jaxtyping_off():
        with pytest.raises(ValueError, match="`x`"):
            deq.fixed_point(jnp.zeros(3))
        with pytest.raises(ValueError, match="`observed`"):
            dbm.infer(values, observed[:5])
    # A margin edited to zero after construction, or an entropic step above 1.
    flat = eqx.tree_at(lambda d: d.linear.m, deq, jnp.asarray(0.0))
    with pytest.raises(Exception, match="`m` must be positive"):
        flat(jnp.zeros(2))
    with pytest.raises(Exception, match=r"`alpha` in \(0, 1\]"):
        _dbm(PeacemanRachford(2.0)).infer(values, observed)
