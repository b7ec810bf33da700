"""Neural ODEs: Euler as a ResNet, an analytic solution, adjoints, transformations, errors."""

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.scipy.linalg as jsl
import jax.tree_util as jtu
import numpy as np
import pytest
from jaxtyping import Array, Float, PyTree

import jaxmodels.nde as nde

from .helpers import jaxtyping_off, tree_allclose


class _Linear(eqx.Module):
    """`f(t, y) = A y`: a plain module, not an `AbstractVectorField`."""

    A: Float[Array, "n n"]

    def __call__(self, t, y: Float[Array, " n"], args: PyTree) -> Float[Array, " n"]:
        return self.A @ y


def _loss(model, ts, y0):
    return jnp.sum(model(ts, y0)[-1] ** 2)


def test_euler_is_a_weight_tied_resnet():
    h = 0.125  # exact in binary, so the step times and `ts` agree to the bit
    vf = nde.MLPVectorField(3, 8, 2, key=jr.key(0))
    model = nde.NeuralODE(
        vf, solver=dfx.Euler(), stepsize_controller=dfx.ConstantStepSize(), dt0=h
    )
    ts = jnp.arange(9) * h
    y0 = jr.normal(jr.key(1), (3,))
    ys = model(ts, y0)
    y, expected = y0, [y0]
    for t in ts[:-1]:
        y = y + h * vf(t, y, None)
        expected.append(y)
    expected = jnp.stack(expected)
    assert ys.shape == (9, 3)
    np.testing.assert_allclose(ys, expected, rtol=0, atol=1e-6)
    # Not vacuous: the state moved by much more than the tolerance.
    assert float(jnp.max(jnp.abs(expected[-1] - y0))) > 1e-2


def test_time_dependent_field_uses_t():
    vf = nde.MLPVectorField(2, 8, 1, time_dependent=True, key=jr.key(0))
    y = jnp.ones(2)
    assert vf(jnp.array(0.0), y, None).shape == (2,)
    assert not np.allclose(vf(jnp.array(0.0), y, None), vf(jnp.array(1.0), y, None))


def _linear_problem():
    A = jnp.array([[-0.3, 1.0, 0.0], [-1.0, -0.3, 0.5], [0.0, -0.5, -0.2]])
    ts = jnp.linspace(0.0, 2.0, 5)
    y0 = jnp.array([1.0, -0.5, 0.25])
    return A, ts, y0


def test_linear_field_matches_expm(x64):
    A, ts, y0 = _linear_problem()
    exact = jnp.stack([jsl.expm(t * A) @ y0 for t in ts])
    evaluations, errors = {}, {}
    for tol in (1e-8, 1e-6, 1e-4):
        model = nde.NeuralODE(
            _Linear(A), stepsize_controller=dfx.PIDController(rtol=tol, atol=tol)
        )
        sol = model.solve(ts, y0)
        assert sol.result == dfx.RESULTS.successful
        assert sol.ys.dtype == jnp.float64
        evaluations[tol] = int(sol.stats["num_function_evaluations"])
        errors[tol] = float(jnp.max(jnp.abs(sol.ys - exact)))
    assert errors[1e-8] < 10 * 1e-8, errors
    assert errors[1e-8] < errors[1e-6] < errors[1e-4] < 10 * 1e-4, errors
    # Function evaluations fall strictly as the tolerance rises.
    assert evaluations[1e-4] < evaluations[1e-6] < evaluations[1e-8], evaluations


class _Counting(eqx.Module):
    """A vector field that counts its evaluations on the host, as they run."""

    field: nde.MLPVectorField

    def __call__(self, t, y, args):
        jax.debug.callback(_COUNT.append, t)
        return self.field(t, y, args)


_COUNT: list = []


_ADAPTIVE = [dfx.Tsit5(), dfx.Dopri5(), dfx.Bosh3(), dfx.Heun()]


@pytest.mark.parametrize(
    "solver, adaptive",
    [(s, True) for s in _ADAPTIVE] + [(s, False) for s in [*_ADAPTIVE, dfx.Euler()]],
)
def test_function_evaluations_match_a_counter(solver, adaptive):
    field = _Counting(nde.MLPVectorField(2, 8, 1, key=jr.key(0)))
    # A small first step is accepted, so the count is exact (see the docstring).
    controller = (
        dfx.PIDController(rtol=1e-5, atol=1e-7) if adaptive else dfx.ConstantStepSize()
    )
    model = nde.NeuralODE(
        field, solver=solver, stepsize_controller=controller, dt0=0.01
    )
    _COUNT.clear()
    sol = model.solve(jnp.linspace(0.0, 3.0, 4), jnp.array([1.0, -1.0]))
    jax.effects_barrier()
    assert int(sol.stats["num_function_evaluations"]) == len(_COUNT) > 0
    if adaptive and not isinstance(solver, (dfx.Tsit5, dfx.Dopri5)):
        assert int(sol.stats["num_rejected_steps"]) > 0, "rejections are counted too"


def test_implicit_solver_reports_no_evaluation_count():
    model = nde.NeuralODE(
        nde.MLPVectorField(2, 4, 1, key=jr.key(0)),
        solver=dfx.Kvaerno3(),
        stepsize_controller=dfx.PIDController(rtol=1e-3, atol=1e-6),
    )
    sol = model.solve(jnp.linspace(0.0, 1.0, 3), jnp.ones(2))
    assert "num_function_evaluations" not in sol.stats
    assert int(sol.stats["num_steps"]) > 0


def _flat_grad(model, ts, y0):
    grads = eqx.filter_grad(_loss)(model, ts, y0)
    return jnp.concatenate([g.ravel() for g in jtu.tree_leaves(grads)])


def test_backsolve_matches_checkpoint_and_finite_differences(x64):
    vf = nde.MLPVectorField(2, 4, 1, key=jr.key(0))
    ts = jnp.array([0.0, 0.5, 1.0])
    y0 = jnp.array([0.5, -1.0])
    controller = dfx.PIDController(rtol=1e-10, atol=1e-10)
    checkpoint = nde.NeuralODE(vf, stepsize_controller=controller)
    backsolve = nde.NeuralODE(
        vf, stepsize_controller=controller, adjoint=dfx.BacksolveAdjoint()
    )
    g_checkpoint = _flat_grad(checkpoint, ts, y0)
    g_backsolve = _flat_grad(backsolve, ts, y0)
    assert float(jnp.linalg.norm(g_checkpoint)) > 1e-3
    np.testing.assert_allclose(g_backsolve, g_checkpoint, rtol=1e-4, atol=1e-8)

    params, static = eqx.partition(checkpoint, eqx.is_inexact_array)
    leaves, treedef = jtu.tree_flatten(params)
    keys = jr.split(jr.key(1), len(leaves))
    direction = jtu.tree_unflatten(
        treedef, [jr.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    )
    eps = 1e-5

    def shifted(sign):
        p = jtu.tree_map(lambda x, d: x + sign * eps * d, params, direction)
        return _loss(eqx.combine(p, static), ts, y0)

    fd = (shifted(1.0) - shifted(-1.0)) / (2 * eps)
    d_flat = jnp.concatenate([d.ravel() for d in jtu.tree_leaves(direction)])
    for g in (g_checkpoint, g_backsolve):
        np.testing.assert_allclose(jnp.dot(g, d_flat), fd, rtol=1e-4)


def test_jit_vmap_grad_and_per_example_grids():
    model = nde.NeuralODE(nde.MLPVectorField(2, 8, 2, key=jr.key(0)))
    ends = jnp.array([0.5, 1.0, 2.0])
    ts = jax.vmap(lambda t1: jnp.linspace(0.0, t1, 4))(ends)
    y0 = jr.normal(jr.key(1), (3, 2))

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def batched(model, ts, y0):
        return jax.vmap(model)(ts, y0)

    ys = batched(model, ts, y0)
    batched(model, ts + 0.0, y0 * 1.0)
    assert ys.shape == (3, 4, 2)
    for i in range(3):
        np.testing.assert_allclose(ys[i], model(ts[i], y0[i]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ys[:, 0], y0)

    @eqx.filter_jit
    def mean_loss(model, ts, y0):
        return jnp.mean(jax.vmap(_loss, in_axes=(None, 0, 0))(model, ts, y0))

    grads = eqx.filter_grad(mean_loss)(model, ts, y0)
    separate = [eqx.filter_grad(_loss)(model, ts[i], y0[i]) for i in range(3)]
    mean = jtu.tree_map(lambda *g: sum(g) / 3, *separate)
    assert tree_allclose(grads, mean, rtol=1e-4, atol=1e-6)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jtu.tree_leaves(grads))


def test_bad_shapes():
    model = nde.NeuralODE(nde.MLPVectorField(2, 4, 1, key=jr.key(0)))
    ts = jnp.linspace(0.0, 1.0, 3)
    with pytest.raises(ValueError, match="`y0`"):
        model(ts, jnp.ones(3))
    with pytest.raises(ValueError, match="`ts`"):
        model(jnp.zeros(1), jnp.ones(2))
    with jaxtyping_off():
        with pytest.raises(ValueError, match="`y0`"):
            model(ts, jnp.ones((4, 2)))
        with pytest.raises(ValueError, match="`ts`"):
            model(jnp.ones((3, 2)), jnp.ones(2))
        # A vector field that declares no `data_size` still needs one 1-D state.
        linear = nde.NeuralODE(_Linear(jnp.eye(2)))
        with pytest.raises(ValueError, match="`y0`"):
            linear(ts, jnp.ones((1, 2)))


@pytest.mark.parametrize("jit", [False, True])
def test_ts_not_increasing(jit):
    model = nde.NeuralODE(nde.MLPVectorField(2, 4, 1, key=jr.key(0)))
    call = eqx.filter_jit(model) if jit else model
    for ts in (jnp.array([0.0, 1.0, 0.5]), jnp.array([0.0, 1.0, 1.0])):
        with pytest.raises(eqx.EquinoxRuntimeError, match="`ts` must be strictly"):
            call(ts, jnp.ones(2))


def test_max_steps():
    vf = _Linear(jnp.array([[0.0, 10.0], [-10.0, 0.0]]))
    model = nde.NeuralODE(vf, max_steps=2)
    ts = jnp.linspace(0.0, 10.0, 3)
    with pytest.raises(eqx.EquinoxRuntimeError, match="max_steps"):
        model(ts, jnp.ones(2))
    sol = model.solve(ts, jnp.ones(2), throw=False)
    assert sol.result == dfx.RESULTS.max_steps_reached
    assert int(sol.stats["num_steps"]) == 2
    # With room to finish, the same problem succeeds.
    ok = nde.NeuralODE(vf).solve(ts, jnp.ones(2), throw=False)
    assert ok.result == dfx.RESULTS.successful


def test_bad_construction():
    vf = nde.MLPVectorField(2, 4, 1, key=jr.key(0))
    with pytest.raises(ValueError, match="`dt0`"):
        nde.NeuralODE(vf, stepsize_controller=dfx.ConstantStepSize())
    with pytest.raises(ValueError, match="`dt0`"):
        nde.NeuralODE(vf, dt0=-0.1)
    with pytest.raises(ValueError, match="`max_steps`"):
        nde.NeuralODE(vf, max_steps=0)
    with jaxtyping_off(), pytest.raises(ValueError, match="`vector_field`"):
        nde.NeuralODE(jnp.ones(2))  # pyright: ignore[reportArgumentType]
    for kwargs, name in [
        ({"data_size": 0, "width": 4, "depth": 1}, "data_size"),
        ({"data_size": 2, "width": 4, "depth": 0}, "depth"),
    ]:
        with pytest.raises(ValueError, match=f"`{name}`"):
            nde.MLPVectorField(**kwargs, key=jr.key(0))
