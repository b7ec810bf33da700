"""Solver-heuristic regularisers (global and local) and their baselines: the steps are
the unregularised ones, the sums are over accepted steps only, the stiffness estimate
is exact on linear fields, gradients match finite differences and agree across
adjoints, the kinetic integrals match closed forms, and the errors."""

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from jaxtyping import Array, Float, PyTree

import jaxmodels.nde as nde

from .helpers import jaxtyping_off


class _Linear(eqx.Module):
    """`f(t, y) = lam * y`: every stiffness estimate of a step is exactly `|h lam|`."""

    lam: Array

    def __call__(self, t, y: Float[Array, " n"], args: PyTree) -> Float[Array, " n"]:
        return self.lam * y


class _Zero(eqx.Module):
    def __call__(self, t, y: Float[Array, " n"], args: PyTree) -> Float[Array, " n"]:
        return jnp.zeros_like(y)


def _mlp_model(key, **kwargs) -> nde.NeuralODE:
    field = nde.MLPVectorField(2, 8, 1, key=key)
    return nde.NeuralODE(field, **kwargs)


_TS = jnp.linspace(0.0, 2.0, 5)
_Y0 = jnp.array([1.0, -0.5])


def test_global_takes_the_unregularised_steps():
    # A tight tolerance and a large first step force rejected steps.
    model = _mlp_model(
        jr.key(1),
        stepsize_controller=dfx.PIDController(rtol=1e-6, atol=1e-6),
        dt0=2.0,
    )
    plain = model.solve(_TS, _Y0)
    reg = eqx.filter_jit(nde.regularised_solve)(model, _TS, _Y0, stiffness_weight=1.0)
    assert int(plain.stats["num_rejected_steps"]) > 0
    assert plain.stats == reg.solution.stats
    np.testing.assert_array_equal(plain.ys, reg.solution.ys)
    assert float(reg.heuristics.error) > 0 and float(reg.heuristics.stiffness) > 0
    np.testing.assert_allclose(
        reg.penalty, reg.heuristics.error + reg.heuristics.stiffness, rtol=1e-6
    )


def test_global_sums_the_accepted_steps(x64):
    """Recompute each accepted step's scaled error times |h| from the step times of an
    ordinary diffrax solve (`SaveAt(steps=True)`), and compare with the sum."""
    rtol, atol = 1e-8, 1e-8
    model = _mlp_model(
        jr.key(1),
        stepsize_controller=dfx.PIDController(rtol=rtol, atol=atol),
        dt0=2.0,
    )
    y0 = _Y0.astype(jnp.float64)
    ts = _TS.astype(jnp.float64)
    term, solver = dfx.ODETerm(model.vector_field), model.solver
    sol = dfx.diffeqsolve(
        term,
        solver,
        ts[0],
        ts[-1],
        2.0,
        y0,
        saveat=dfx.SaveAt(t0=True, steps=True),
        stepsize_controller=model.stepsize_controller,
        max_steps=model.max_steps,
    )
    assert int(sol.stats["num_rejected_steps"]) > 0
    n = int(sol.stats["num_accepted_steps"])
    step_ts, step_ys = np.asarray(sol.ts)[: n + 1], np.asarray(sol.ys)[: n + 1]
    total = 0.0
    for k in range(n):
        t0, t1, y = step_ts[k], step_ts[k + 1], step_ys[k]
        state = solver.init(term, t0, t1, y, None)
        y1, err, _, _, _ = solver.step(term, t0, t1, y, None, state, made_jump=False)
        scale = atol + rtol * np.maximum(np.abs(y), np.abs(y1))
        total += np.sqrt(np.mean((np.asarray(err) / scale) ** 2)) * (t1 - t0)
    reg = nde.regularised_solve(model, ts, y0)
    np.testing.assert_allclose(reg.heuristics.error, total, rtol=1e-8)


@pytest.mark.parametrize("solver", [dfx.Tsit5(), dfx.Dopri5(), dfx.Bosh3()])
def test_stiffness_of_a_linear_field_is_exact(solver, x64):
    # Each step estimates |h lam|, so the sum over the steps is |lam| (t1 - t0).
    lam = -7.0
    model = nde.NeuralODE(_Linear(jnp.asarray(lam)), solver=solver)
    y0, ts = _Y0.astype(jnp.float64), _TS.astype(jnp.float64)
    reg = nde.regularised_solve(model, ts, y0, stiffness_weight=1.0)
    assert int(reg.solution.stats["num_accepted_steps"]) > 3
    # Tsit5's last two stages (both at c = 1) differ by O(h^5), so their difference
    # carries a relative rounding error of about eps / (C h^5): 1e-7 in float64 at
    # these steps, 1e-5 at the 0.03 and 0.05 steps below.
    np.testing.assert_allclose(reg.heuristics.stiffness, abs(lam) * 2.0, rtol=1e-7)
    # One step of the given first step 0.05, or clipped at `t_end`.
    fixed = eqx.tree_at(lambda m: m.dt0, model, 0.05, is_leaf=lambda x: x is None)
    one = nde.step_heuristics(fixed, ts[1], y0, ts[1] + 1.0, adaptations=0)
    np.testing.assert_allclose(one.stiffness, abs(lam) * 0.05, rtol=1e-5)
    one = nde.step_heuristics(fixed, ts[1], y0, ts[1] + 0.03, adaptations=0)
    np.testing.assert_allclose(one.stiffness, abs(lam) * 0.03, rtol=1e-5)
    # The stiffness reveals the step size h: adapting moves it from Hairer's cautious
    # first step to one whose scaled error is near the controller's target of 1.
    first = nde.step_heuristics(model, ts[1], y0, ts[-1], adaptations=0)
    adapted = nde.step_heuristics(model, ts[1], y0, ts[-1], adaptations=3)
    h0, h3 = first.stiffness / abs(lam), adapted.stiffness / abs(lam)
    assert h3 > 2 * h0
    assert float(first.error / h0) < 0.05 < float(adapted.error / h3) < 1.0


def test_global_gradient_matches_finite_differences(x64):
    # Fixed steps, so the penalty is a smooth function of the parameters.
    model = _mlp_model(jr.key(2), stepsize_controller=dfx.ConstantStepSize(), dt0=0.25)
    model = jax.tree.map(
        lambda x: x.astype(jnp.float64) if eqx.is_inexact_array(x) else x, model
    )
    params, static = eqx.partition(model, eqx.is_inexact_array)
    y0, ts = _Y0.astype(jnp.float64), _TS.astype(jnp.float64)

    def penalty(p):
        return nde.regularised_solve(
            eqx.combine(p, static), ts, y0, error_weight=1.0, stiffness_weight=0.3
        ).penalty

    grad = jax.jit(jax.grad(penalty))(params)
    leaves, treedef = jax.tree.flatten(params)
    keys = jr.split(jr.key(3), len(leaves))
    direction = jax.tree.unflatten(
        treedef, [jr.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    )
    eps = 1e-5
    shift = lambda s: jax.tree.map(lambda p, d: p + s * eps * d, params, direction)  # noqa: E731
    fd = (penalty(shift(1.0)) - penalty(shift(-1.0))) / (2 * eps)
    ad = sum(
        jnp.vdot(g, d)
        for g, d in zip(jax.tree.leaves(grad), jax.tree.leaves(direction))
    )
    np.testing.assert_allclose(ad, fd, rtol=1e-6)


def test_local_regulariser_works_with_any_adjoint(x64):
    """The unbiased strategy reaches the sampled time with the model's own adjoint:
    backsolve and discrete (checkpointed) gradients agree."""
    controller = dfx.PIDController(rtol=1e-9, atol=1e-9)
    base = _mlp_model(jr.key(4), stepsize_controller=controller)
    base = jax.tree.map(
        lambda x: x.astype(jnp.float64) if eqx.is_inexact_array(x) else x, base
    )
    y0, ts = _Y0.astype(jnp.float64), _TS.astype(jnp.float64)

    def grad(adjoint):
        model = eqx.tree_at(lambda m: m.adjoint, base, adjoint)
        fn = lambda m: nde.local_regulariser(  # noqa: E731
            m, ts, y0, key=jr.key(5), error_weight=1.0, stiffness_weight=1.0
        )
        return eqx.filter_jit(eqx.filter_grad(fn))(model).vector_field

    discrete = grad(dfx.RecursiveCheckpointAdjoint())
    backsolve = grad(dfx.BacksolveAdjoint(stepsize_controller=controller))
    for a, b in zip(jax.tree.leaves(discrete), jax.tree.leaves(backsolve)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9)


def test_local_strategies_sample_where_they_should():
    model = nde.NeuralODE(_Linear(jnp.asarray(-3.0)))
    ys = model(_TS, _Y0)
    keys = jr.split(jr.key(6), 64)
    biased = jax.vmap(
        lambda k: nde.local_regulariser(
            model,
            _TS,
            _Y0,
            key=k,
            strategy="biased",
            ys=ys,
            stiffness_weight=1.0,
            error_weight=0.0,
        )
    )(keys)
    # The stiffness of a linear field is |h lam|, h the controller's first step at
    # the sampled point: a saved time gives one of len(ts) - 1 values only.
    assert len(np.unique(np.round(np.asarray(biased), 6))) <= len(_TS) - 1
    unbiased = jax.vmap(
        lambda k: nde.local_regulariser(
            model, _TS, _Y0, key=k, stiffness_weight=1.0, error_weight=0.0
        )
    )(keys)
    assert len(np.unique(np.round(np.asarray(unbiased), 6))) > len(_TS)


def test_sde_global_regulariser(x64):
    lam = -2.0
    sde = nde.NeuralSDE(
        _Linear(jnp.asarray(lam)),
        _Linear(jnp.asarray(0.3)),
        noise="diagonal",
        solver=dfx.Heun(),
        stepsize_controller=dfx.PIDController(rtol=1e-3, atol=1e-3, dtmin=2**-9),
        dt0=2**-4,
    )
    y0, ts = _Y0.astype(jnp.float64), _TS.astype(jnp.float64)
    key = jr.key(7)
    plain = sde.solve(ts, y0, key=key)
    reg = nde.regularised_solve(sde, ts, y0, key=key, stiffness_weight=1.0)
    np.testing.assert_array_equal(plain.ys, reg.solution.ys)
    assert plain.stats["num_steps"] == reg.solution.stats["num_steps"]
    assert float(reg.heuristics.error) > 0
    # The drift-evaluation estimate is exact for a linear drift, noise or not.
    np.testing.assert_allclose(reg.heuristics.stiffness, abs(lam) * 2.0, rtol=1e-10)
    local = nde.local_regulariser(sde, ts, y0, key=jr.key(8), path_key=key)
    assert float(local) > 0


def test_kinetic_solve_closed_forms(x64):
    lam, T = -0.7, 2.0
    model = nde.NeuralODE(
        _Linear(jnp.asarray(lam)),
        stepsize_controller=dfx.PIDController(rtol=1e-10, atol=1e-12),
    )
    y0, ts = _Y0.astype(jnp.float64), _TS.astype(jnp.float64)
    key = jr.key(9)
    out = nde.kinetic_solve(model, ts, y0, key=key)
    kinetic = lam**2 * jnp.sum(y0**2) * (jnp.exp(2 * lam * T) - 1) / (2 * lam)
    np.testing.assert_allclose(out.kinetic, kinetic, rtol=1e-8)
    probe = jr.normal(key, y0.shape, y0.dtype)
    np.testing.assert_allclose(out.jacobian, T * lam**2 * jnp.sum(probe**2), rtol=1e-8)
    np.testing.assert_allclose(out.solution.ys, model(ts, y0), rtol=1e-12)


def test_sample_end_time():
    keys = jr.split(jr.key(10), 200)
    ends = jax.vmap(lambda k: nde.sample_end_time(_TS, key=k, width=0.2))(keys)
    np.testing.assert_array_equal(
        ends[:, :-1], jnp.broadcast_to(_TS[None, :-1], (200, 4))
    )
    assert float(ends[:, -1].min()) >= 1.8 and float(ends[:, -1].max()) <= 2.2
    assert float(ends[:, -1].std()) > 0.05
    with pytest.raises(ValueError, match="width"):
        nde.sample_end_time(_TS, key=keys[0], width=0.0)
    with pytest.raises(eqx.EquinoxRuntimeError, match="width"):
        nde.sample_end_time(_TS, key=keys[0], width=0.6)


def test_vmap_and_jit():
    model = _mlp_model(jr.key(11))
    y0s = jr.normal(jr.key(12), (3, 2))
    reg = eqx.filter_jit(jax.vmap(lambda y: nde.regularised_solve(model, _TS, y)))(y0s)
    assert reg.solution.ys.shape == (3, 5, 2) and reg.penalty.shape == (3,)
    np.testing.assert_allclose(reg.solution.ys, jax.vmap(lambda y: model(_TS, y))(y0s))


def test_errors():
    model = _mlp_model(jr.key(13))
    back = eqx.tree_at(lambda m: m.adjoint, model, dfx.BacksolveAdjoint())
    with pytest.raises(ValueError, match="adjoint"):
        nde.regularised_solve(back, _TS, _Y0)
    euler = nde.NeuralODE(
        model.vector_field,
        solver=dfx.Euler(),
        stepsize_controller=dfx.ConstantStepSize(),
        dt0=0.1,
    )
    with pytest.raises(ValueError, match="solver"):
        nde.regularised_solve(euler, _TS, _Y0)
    with jaxtyping_off():
        with pytest.raises(ValueError, match="error_weight"):
            nde.regularised_solve(model, _TS, _Y0, error_weight=-1.0)
        with pytest.raises(ValueError, match="strategy"):
            nde.local_regulariser(model, _TS, _Y0, key=jr.key(0), strategy="x")  # pyright: ignore
        with pytest.raises(ValueError, match="ys"):
            nde.local_regulariser(model, _TS, _Y0, key=jr.key(0), strategy="biased")
        with pytest.raises(ValueError, match="model"):
            nde.regularised_solve(_Zero(), _TS, _Y0)  # pyright: ignore
        with pytest.raises(ValueError, match="y0"):
            nde.regularised_solve(model, _TS, jnp.zeros(3))
    sde = nde.NeuralSDE(_Zero(), _Zero(), noise="diagonal", dt0=0.1)
    with pytest.raises(ValueError, match="key"):
        nde.regularised_solve(sde, _TS, _Y0)
    with pytest.raises(ValueError, match="path_key"):
        nde.local_regulariser(sde, _TS, _Y0, key=jr.key(0))
