"""Neural CDEs: an exact solution, the ODE special case, missing data, online mode,
transformations, a learning check, errors."""

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
import pytest
from jaxtyping import Array, Float, PyTree

from jaxmodels.nde import NeuralODE
from jaxmodels.nde._cde import CDEVectorField, NeuralCDE, control_path

from .helpers import jaxtyping_off, tree_allclose


_TIGHT = dfx.PIDController(rtol=1e-9, atol=1e-9)


class _Constant(eqx.Module):
    """`g(t, z) = M`: the CDE `dz = M dX` has the solution `z0 + M (X(t) - X(t0))`."""

    M: Float[Array, "h c"]

    def __call__(self, t, z: Float[Array, " h"], args: PyTree) -> Float[Array, "h c"]:
        return self.M


class _TimeColumn(eqx.Module):
    """The ODE `dz/dt = g(z)[:, 0]` that a CDE becomes when only time moves."""

    field: CDEVectorField

    def __call__(self, t, z: Float[Array, " h"], args: PyTree) -> Float[Array, " h"]:
        return self.field(t, z, args)[:, 0]


def _data(key, time=6, channels=2):
    t_key, x_key = jr.split(key)
    ts = jnp.cumsum(jr.uniform(t_key, (time,), minval=0.1, maxval=0.5))
    return ts, jr.normal(x_key, (time, channels))


@pytest.mark.parametrize("interpolation", ["linear", "cubic", "rectilinear"])
def test_constant_field_matches_exact_solution(x64, interpolation):
    ts, xs = _data(jr.key(0))
    model = NeuralCDE(
        2,
        3,
        1,
        4,
        1,
        interpolation=interpolation,
        stepsize_controller=_TIGHT,
        key=jr.key(1),
    )
    M = jr.normal(jr.key(2), (3, 3))
    model = eqx.tree_at(lambda m: m.vector_field, model, _Constant(M))
    sol = model.solve(ts, xs)
    assert sol.result == dfx.RESULTS.successful
    assert sol.ys.dtype == jnp.float64
    np.testing.assert_allclose(sol.ts, ts)
    X = jnp.concatenate([ts[:, None], xs], axis=-1)
    z0 = model.initial(X[0])
    exact = z0[None] + (X - X[:1]) @ M.T
    np.testing.assert_allclose(sol.ys, exact, rtol=0, atol=1e-7)
    assert float(jnp.max(jnp.abs(exact - z0[None]))) > 0.5


def test_time_only_control_is_an_ode(x64):
    ts, _ = _data(jr.key(0))
    xs = jnp.broadcast_to(jnp.array([0.5, -1.0]), (ts.shape[0], 2))
    model = NeuralCDE(2, 3, 1, 8, 2, stepsize_controller=_TIGHT, key=jr.key(1))
    ode = NeuralODE(_TimeColumn(model.vector_field), stepsize_controller=_TIGHT)
    zs = model.solve(ts, xs).ys
    z0 = model.initial(jnp.concatenate([ts[:1], xs[0]]))
    expected = ode(ts, z0)
    np.testing.assert_allclose(zs, expected, rtol=0, atol=1e-7)
    assert float(jnp.max(jnp.abs(expected[-1] - z0))) > 1e-2


def test_missing_values_use_diffrax_filling(x64):
    ts, xs = _data(jr.key(0))
    nan = jnp.nan
    missing = xs.at[0, 1].set(nan).at[2, 0].set(nan).at[3, 0].set(nan)
    missing = missing.at[-1, 1].set(nan)
    # Linear: interior gaps interpolated in time, ends filled by the nearest value.
    w2, w3 = [(ts[i] - ts[1]) / (ts[4] - ts[1]) for i in (2, 3)]
    linear = xs.at[0, 1].set(xs[1, 1]).at[-1, 1].set(xs[-2, 1])
    linear = linear.at[2, 0].set((1 - w2) * xs[1, 0] + w2 * xs[4, 0])
    linear = linear.at[3, 0].set((1 - w3) * xs[1, 0] + w3 * xs[4, 0])
    # Rectilinear: filled forward, and the start filled by the first observed value.
    forward = xs.at[0, 1].set(xs[1, 1]).at[-1, 1].set(xs[-2, 1])
    forward = forward.at[2, 0].set(xs[1, 0]).at[3, 0].set(xs[1, 0])
    for interpolation, filled, other in [
        ("linear", linear, forward),
        ("rectilinear", forward, linear),
    ]:
        model = NeuralCDE(
            2,
            3,
            2,
            8,
            1,
            interpolation=interpolation,
            readout="all",
            stepsize_controller=_TIGHT,
            key=jr.key(1),
        )
        out = model(ts, missing)
        assert bool(jnp.all(jnp.isfinite(out)))
        np.testing.assert_allclose(out, model(ts, filled), rtol=0, atol=1e-7)
        # Not vacuous: the other convention gives a different answer.
        assert float(jnp.max(jnp.abs(out - model(ts, other)))) > 1e-4
    cubic = NeuralCDE(2, 3, 2, 8, 1, readout="all", key=jr.key(1))
    assert bool(jnp.all(jnp.isfinite(cubic(ts, missing))))
    path = control_path(ts, missing)
    assert bool(jnp.all(jnp.isfinite(jax.vmap(path.evaluate)(ts))))


@pytest.mark.parametrize("interpolation", ["cubic", "rectilinear"])
def test_online_mode(interpolation):
    ts, xs = _data(jr.key(0))
    kwargs = dict(interpolation=interpolation, key=jr.key(1))
    final = NeuralCDE(2, 3, 2, 8, 1, **kwargs)
    online = NeuralCDE(2, 3, 2, 8, 1, readout="all", **kwargs)
    out = online(ts, xs)
    assert out.shape == (6, 2)
    assert final(ts, xs).shape == (2,)
    np.testing.assert_allclose(out[-1], final(ts, xs), rtol=1e-5, atol=1e-6)
    if interpolation == "rectilinear":
        # Causal: changing the last observation changes only the last output.
        changed = online(ts, xs.at[-1].add(3.0))
        np.testing.assert_allclose(changed[:-1], out[:-1], rtol=1e-5, atol=1e-6)
        assert float(jnp.max(jnp.abs(changed[-1] - out[-1]))) > 1e-3


def _loss(model, ts, xs):
    return jnp.sum(model(ts, xs) ** 2)


def test_jit_vmap_grad_and_per_example_times():
    # Fixed steps: batched adaptive solves may pick different steps from unbatched
    # ones (diffrax under `vmap`) and then agree only to the solver's tolerance.
    model = NeuralCDE(
        2,
        3,
        2,
        8,
        1,
        solver=dfx.Heun(),
        stepsize_controller=dfx.ConstantStepSize(),
        dt0=0.1,
        key=jr.key(0),
    )
    ts, xs = jax.vmap(_data)(jr.split(jr.key(1), 3))
    assert not np.allclose(ts[0], ts[1])

    def loss_and_output(model, ts, xs):
        out = model(ts, xs)
        return jnp.sum(out**2), out

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def batched(model, ts, xs):
        def mean_loss(model):
            losses, outs = jax.vmap(loss_and_output, in_axes=(None, 0, 0))(
                model, ts, xs
            )
            return jnp.mean(losses), outs

        return eqx.filter_grad(mean_loss, has_aux=True)(model)

    grads, out = batched(model, ts, xs)
    batched(model, ts + 0.0, xs * 1.0)
    assert out.shape == (3, 2)
    single = eqx.filter_jit(eqx.filter_grad(loss_and_output, has_aux=True))
    separate = [single(model, ts[i], xs[i]) for i in range(3)]
    for i in range(3):
        np.testing.assert_allclose(out[i], separate[i][1], rtol=1e-5, atol=1e-6)
    mean = jtu.tree_map(lambda *g: sum(g) / 3, *[g for g, _ in separate])
    assert tree_allclose(grads, mean, rtol=1e-4, atol=1e-6)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jtu.tree_leaves(grads))


def test_grad_matches_finite_differences(x64):
    model = NeuralCDE(2, 3, 2, 4, 1, stepsize_controller=_TIGHT, key=jr.key(0))
    ts, xs = _data(jr.key(1), time=4)
    xs = xs.at[1, 0].set(jnp.nan)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    grads = eqx.filter_jit(eqx.filter_grad(_loss))(model, ts, xs)
    leaves, treedef = jtu.tree_flatten(params)
    keys = jr.split(jr.key(2), len(leaves))
    direction = jtu.tree_unflatten(
        treedef, [jr.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    )
    eps = 1e-5

    @eqx.filter_jit
    def shifted(sign):
        p = jtu.tree_map(lambda x, d: x + sign * eps * d, params, direction)
        return _loss(eqx.combine(p, static), ts, xs)

    fd = (shifted(1.0) - shifted(-1.0)) / (2 * eps)
    jvp = sum(
        jnp.vdot(g, d)
        for g, d in zip(jtu.tree_leaves(grads), jtu.tree_leaves(direction))
    )
    assert abs(float(fd)) > 1e-3
    np.testing.assert_allclose(jvp, fd, rtol=1e-5)


def test_bad_inputs():
    model = NeuralCDE(2, 3, 1, 4, 1, key=jr.key(0))
    ts, xs = _data(jr.key(1))
    with pytest.raises(ValueError, match="`dt0`"):
        NeuralCDE(
            2, 3, 1, 4, 1, stepsize_controller=dfx.ConstantStepSize(), key=jr.key(0)
        )
    with pytest.raises(ValueError, match="`hidden_size`"):
        NeuralCDE(2, 0, 1, 4, 1, key=jr.key(0))
    with jaxtyping_off():
        with pytest.raises(ValueError, match="`interpolation`"):
            control_path(ts, xs, interpolation="quadratic")  # pyright: ignore
        with pytest.raises(ValueError, match="`interpolation`"):
            NeuralCDE(2, 3, 1, 4, 1, interpolation="spline", key=jr.key(0))  # pyright: ignore
        with pytest.raises(ValueError, match="`readout`"):
            NeuralCDE(2, 3, 1, 4, 1, readout="last", key=jr.key(0))  # pyright: ignore
        with pytest.raises(ValueError, match="`xs`"):
            model(ts, xs[:-1])
        with pytest.raises(ValueError, match="`xs`"):
            model(ts, jnp.ones((6, 3)))
        with pytest.raises(ValueError, match="`xs`"):
            control_path(ts, xs[:, 0])
        with pytest.raises(ValueError, match="`ts`"):
            model(ts[:1], xs[:1])
        with pytest.raises(ValueError, match="`ts`"):
            control_path(jnp.stack([ts, ts], -1), xs)
    bad_ts = ts.at[3].set(ts[1])
    all_nan = xs.at[:, 1].set(jnp.nan)
    for call in (model, eqx.filter_jit(model)):
        with pytest.raises(eqx.EquinoxRuntimeError, match="`ts` must be strictly"):
            call(bad_ts, xs)
        with pytest.raises(eqx.EquinoxRuntimeError, match="`ts` must be strictly"):
            call(ts.at[2].set(jnp.nan), xs)
        with pytest.raises(eqx.EquinoxRuntimeError, match="`xs` has a channel"):
            call(ts, all_nan)
