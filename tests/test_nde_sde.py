"""Neural SDEs: strong orders against closed forms, Itô vs Stratonovich, noise shapes,
keys, transformations, gradients, the stable classes' bounded paths, and errors."""

import functools as ft

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
import pytest
from jaxtyping import Array, Float, PyTree

import jaxmodels.nde as nde

from .helpers import jaxtyping_off


class _Affine(eqx.Module):
    """`f(t, y) = a + b y`, elementwise."""

    a: float
    b: float

    def __call__(self, t, y: Float[Array, " n"], args: PyTree) -> Float[Array, " n"]:
        return self.a + self.b * y


def _final(model, ts, y0, keys):
    return jax.vmap(lambda k: model(ts, y0, key=k)[-1, 0])(keys)


@eqx.filter_jit
def _final_with_step(model, h: Array, ts, y0, keys):
    # `dt0` as a traced leaf, so one compilation serves every step size.
    return _final(eqx.tree_at(lambda m: m.dt0, model, jnp.asarray(h)), ts, y0, keys)


def _slope(hs, errors):
    return float(np.polyfit(np.log(hs), np.log(errors), 1)[0])


def test_euler_maruyama_strong_order_one_on_ornstein_uhlenbeck(x64):
    """Additive noise: Euler-Maruyama is Milstein, strong order 1 (not 0.5).

    The exact solution along the same Brownian path is
    `X_T = e^{-th T} x0 + mu (1 - e^{-th T}) + s (W_T - th int_0^T e^{-th (T - u)} W_u du)`
    (integration by parts); the Riemann integral is a trapezoid sum over `2^11` steps of
    the path, queried at dyadic times of a tree refined past them. The Euler grids are
    dyadic too, so both see the same path at the grid times.
    """
    theta, mu, sigma, T = 2.0, 0.5, 0.8, 1.0
    y0 = jnp.array([1.0])
    keys = jr.split(jr.key(0), 128)
    fine = 2**11
    model = nde.NeuralSDE(
        _Affine(theta * mu, -theta),
        lambda t, y, args: sigma * jnp.ones_like(y),
        dt0=T,
    )

    @jax.jit
    def exact(key):
        tree = model.brownian_motion(jnp.array(0.0), jnp.array(T), y0, key=key)
        tree = eqx.tree_at(lambda b: b.tol, tree, jnp.asarray(0.5 / fine))
        u = jnp.linspace(0.0, T, fine + 1)
        w = jax.vmap(lambda s: tree.evaluate(0.0, s)[0])(u)
        integral = jnp.trapezoid(jnp.exp(-theta * (T - u)) * w, u)
        decay = jnp.exp(-theta * T)
        return decay * y0[0] + mu * (1 - decay) + sigma * (w[-1] - theta * integral)

    reference = jax.vmap(exact)(keys)
    ts = jnp.array([0.0, T])
    hs = [T / 2**k for k in range(2, 7)]
    errors = [
        float(
            jnp.mean(
                jnp.abs(
                    _final_with_step(model, jnp.asarray(h), ts, y0, keys) - reference
                )
            )
        )
        for h in hs
    ]
    assert 0.8 < _slope(hs, errors) < 1.2, errors
    assert errors[-1] < 0.01, errors


def test_geometric_brownian_motion_ito_and_stratonovich(x64):
    """`dX = a X dt + b X dW` has `X_T = x0 exp((a - b^2/2) T + b W_T)` (Itô) and
    `x0 exp(a T + b W_T)` (Stratonovich). Euler-Maruyama converges to the first with
    strong order 0.5 (not 1: multiplicative noise); Euler-Heun to the second."""
    a, b, T = 0.5, 0.8, 1.0
    y0 = jnp.array([1.0])
    ts = jnp.array([0.0, T])
    keys = jr.split(jr.key(1), 128)
    diffusion = lambda t, y, args: b * y  # noqa: E731
    ito = nde.NeuralSDE(_Affine(0.0, a), diffusion, dt0=T)
    strat = nde.NeuralSDE(_Affine(0.0, a), diffusion, dt0=T, solver=dfx.EulerHeun())
    assert ito.calculus == "ito" and strat.calculus == "stratonovich"
    w = jax.vmap(
        lambda k: ito.brownian_motion(ts[0], ts[1], y0, key=k).evaluate(0.0, T)[0]
    )(keys)
    exact_ito = y0[0] * jnp.exp((a - b**2 / 2) * T + b * w)
    exact_strat = y0[0] * jnp.exp(a * T + b * w)
    gap = float(jnp.mean(jnp.abs(exact_ito - exact_strat)))
    hs = [T / 2**k for k in range(2, 8)]
    errors = {}
    for name, model in [("ito", ito), ("strat", strat)]:
        finals = [_final_with_step(model, jnp.asarray(h), ts, y0, keys) for h in hs]
        errors[name] = {
            target: [float(jnp.mean(jnp.abs(f - exact))) for f in finals]
            for target, exact in [("ito", exact_ito), ("strat", exact_strat)]
        }
    assert 0.35 < _slope(hs, errors["ito"]["ito"]) < 0.65, errors
    assert errors["ito"]["ito"][-1] < 0.1 * gap, (errors, gap)
    assert _slope(hs, errors["strat"]["strat"]) > 0.8, errors
    assert errors["strat"]["strat"][-1] < 0.02 * gap, (errors, gap)
    # Each converges to its own calculus and stays a full gap away from the other's.
    assert errors["ito"]["strat"][-1] > 0.8 * gap, (errors, gap)
    assert errors["strat"]["ito"][-1] > 0.8 * gap, (errors, gap)


class _MLPField(eqx.Module):
    mlp: eqx.nn.MLP

    def __call__(self, t, y: Float[Array, " n"], args: PyTree) -> Array:
        return self.mlp(jnp.concatenate([y, jnp.asarray(t, y.dtype)[None]]))


class _Matrix(eqx.Module):
    field: _MLPField
    size: int = eqx.field(static=True)

    def __call__(self, t, y: Float[Array, " n"], args: PyTree) -> Array:
        return self.field(t, y, args).reshape(y.shape[0], self.size)


def _field(n_in, n_out, key):
    return _MLPField(eqx.nn.MLP(n_in + 1, n_out, 8, 1, activation=jnp.tanh, key=key))


def test_noise_shapes_and_keys():
    drift = nde.MLPVectorField(3, 8, 1, key=jr.key(0))
    g = _field(3, 3, jr.key(1))
    ts = jnp.linspace(0.0, 1.0, 5)
    y0 = jnp.array([0.5, -0.2, 1.0])
    diagonal = nde.NeuralSDE(drift, g, dt0=0.1)
    # General noise with the diagonal matrix and as many channels: the same SDE, and
    # (the Brownian tree's shape being the same) the same path for the same key.
    square = nde.NeuralSDE(
        drift,
        lambda t, y, args: jnp.diag(g(t, y, args)),
        noise="general",
        brownian_size=3,
        dt0=0.1,
    )
    key = jr.key(2)
    np.testing.assert_allclose(
        diagonal(ts, y0, key=key), square(ts, y0, key=key), rtol=1e-5, atol=1e-6
    )
    wide = nde.NeuralSDE(
        drift, _Matrix(_field(3, 15, jr.key(3)), 5), noise="general",
        brownian_size=5, dt0=0.1,
    )  # fmt: skip
    assert wide.brownian_motion(ts[0], ts[-1], y0, key=key).shape.shape == (5,)
    assert wide(ts, y0, key=key).shape == (5, 3)

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def paths(model, keys):
        return jax.vmap(lambda k: model(ts, y0, key=k))(keys)

    keys = jr.split(jr.key(4), 4)
    ys = paths(diagonal, keys)
    again = paths(diagonal, jnp.stack([keys[0], keys[0], keys[2], keys[3]]))
    assert ys.shape == (4, 5, 3)
    np.testing.assert_allclose(ys[:, 0], jnp.broadcast_to(y0, (4, 3)))
    # Per-example keys give different paths; the same key, the same path.
    assert float(jnp.min(jnp.abs(ys[0, -1] - ys[1, -1]))) > 1e-3
    np.testing.assert_array_equal(again[1], ys[0])
    np.testing.assert_allclose(ys[0], diagonal(ts, y0, key=keys[0]), atol=1e-6)


def test_jit_vmap_grad_and_finite_differences(x64):
    drift = nde.MLPVectorField(2, 4, 1, key=jr.key(0))
    model = nde.NeuralSDE(drift, _field(2, 2, jr.key(1)), dt0=0.05)
    ts = jnp.array([0.0, 0.5, 1.0])
    y0 = jnp.array([0.5, -1.0])
    keys = jr.split(jr.key(2), 3)

    def loss(model, key):
        return jnp.sum(model(ts, y0, key=key)[-1] ** 2)

    @eqx.filter_jit
    def mean_loss(model, keys):
        return jnp.mean(jax.vmap(loss, in_axes=(None, 0))(model, keys))

    grads = eqx.filter_grad(mean_loss)(model, keys)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    leaves, treedef = jtu.tree_flatten(params)
    direction = jtu.tree_unflatten(
        treedef,
        [
            jr.normal(k, x.shape, x.dtype)
            for k, x in zip(jr.split(jr.key(3), len(leaves)), leaves)
        ],
    )
    eps = 1e-5

    def shifted(sign):
        p = jtu.tree_map(lambda x, d: x + sign * eps * d, params, direction)
        return mean_loss(eqx.combine(p, static), keys)

    fd = (shifted(1.0) - shifted(-1.0)) / (2 * eps)
    g = jnp.concatenate([x.ravel() for x in jtu.tree_leaves(grads)])
    d = jnp.concatenate([x.ravel() for x in jtu.tree_leaves(direction)])
    assert float(jnp.linalg.norm(g)) > 1e-3
    np.testing.assert_allclose(jnp.dot(g, d), fd, rtol=1e-5)


class _Unconstrained(eqx.Module):
    """A generic neural SDE's field: an MLP of `(z, X(t))` or `(t, z)`, no output bound."""

    mlp: eqx.nn.MLP
    reads_path: bool = eqx.field(static=True)

    def __call__(self, t, z: Float[Array, " n"], path: PyTree) -> Float[Array, " n"]:
        if self.reads_path:
            return self.mlp(jnp.concatenate([z, path.evaluate(t)]))
        return self.mlp(jnp.concatenate([jnp.asarray(t, z.dtype)[None], z]))


def _scale_weights(model, gain):
    def scale(x):
        if isinstance(x, eqx.nn.Linear):
            return eqx.tree_at(lambda lin: lin.weight, x, gain * x.weight)
        return x

    is_linear = lambda x: isinstance(x, eqx.nn.Linear)  # noqa: E731
    return jtu.tree_map(scale, model, is_leaf=is_linear)


@ft.cache
def _series():
    """Four series on `[0, 1]`: spirals at 16 times, about a third missing."""
    ts = jnp.linspace(0.0, 1.0, 16)
    speed = jnp.array([6.0, -6.0, 9.0, -12.0])[:, None]
    xs = jnp.stack([jnp.cos(speed * ts[None]), jnp.sin(speed * ts[None])], axis=-1)
    drop = jr.bernoulli(jr.key(7), 0.3, (4, 16)).at[:, 0].set(False)
    xs = jnp.where(drop[..., None], jnp.nan, xs)
    return jnp.broadcast_to(ts, (4, 16)), xs


def _bound(kind, z0, increments, hs):
    """The a-priori bound on `|z_n|` of Euler-Maruyama, from `|gamma| <= 1`, `0 < sigma
    < 1`: LSDE adds at most `h + |dW|` per step, LNSDE multiplies by `1 + |dW|` then adds
    `h`, GSDE multiplies by `1 + h + |dW|`."""
    b = jnp.abs(z0)
    for dw, h in zip(jnp.abs(increments), hs):
        if kind == "lsde":
            b = b + h + dw
        elif kind == "lnsde":
            b = b * (1 + dw) + h
        else:
            b = b * (1 + h + dw)
    return b


@eqx.filter_jit
def _stable_run(model, h, ts, xs, key):
    model = eqx.tree_at(lambda m: m.sde.dt0, model, h)
    sol = model.solve(ts, xs, key=key, throw=False)
    path = nde.control_path(ts, xs)
    z0 = model.initial(path.evaluate(ts[0]))
    bm = model.sde.brownian_motion(ts[0], ts[-1], z0, key=key)
    grid = jnp.linspace(ts[0], ts[-1], 65)
    increments = jax.vmap(bm.evaluate)(grid[:-1], grid[1:])
    return sol, z0, increments, model(ts, xs, key=key)


@eqx.filter_jit
def _unconstrained_run(model, initial, h, ts, xs, key):
    model = eqx.tree_at(lambda m: m.dt0, model, h)
    path = nde.control_path(ts, xs)
    z0 = initial(path.evaluate(ts[0]))
    return model.solve(path.ts, z0, key=key, throw=False, args=path)


def test_stable_paths_bounded_where_unconstrained_blow_up():
    """P202's stability claim, in the form that holds for every weight and step.

    With `gamma` in `[-1, 1]` and `sigma` in `(0, 1)` (tanh and sigmoid outputs), an
    Euler-Maruyama path of LSDE, LNSDE or GSDE obeys a bound that depends only on
    `z0`, the horizon and the Brownian increments (`_bound`), whatever the weights and
    the step. A generic neural SDE, MLP drift of `(z, X(t))` and MLP diffusion of
    `(t, z)` with unbounded outputs, has no such bound: with every weight of both
    models scaled by 16 (as training may grow them) its paths overflow or pass `1e6`
    within the same horizon of 1, at the same steps. Conditions, measured: at the
    default initialisation (gain 1) neither blows up on this horizon, and the
    unconstrained model's growth is that of its SDE (exponential in the drift's
    Lipschitz constant), largest at the smallest step: it is not an artefact of large
    steps.
    """
    ts, xs = _series()
    hidden, gain = 8, 16.0
    keys = jr.split(jr.key(0), 4)
    # Steps that divide the horizon, so that the steps are the grid of `_bound`.
    steps = [1 / 64, 1 / 4, 1.0]
    for kind in ("lsde", "lnsde", "gsde"):
        model = nde.StableNeuralSDE(kind, 2, hidden, 2, 16, 1, dt0=1.0, key=jr.key(1))
        model = _scale_weights(model, gain)
        for h in steps:
            n = round(1 / h)
            for i in range(4):
                sol, z0, dw, out = _stable_run(
                    model, jnp.asarray(h), ts[i], xs[i], keys[i]
                )
                assert sol.result == dfx.RESULTS.successful
                assert sol.ys.shape == (16, hidden) and out.shape == (2,)
                dw = dw.reshape(n, 64 // n, hidden).sum(axis=1)
                bound = _bound(kind, z0, dw, [h] * n)
                assert bool(jnp.all(jnp.abs(sol.ys) <= 1.001 * bound[None] + 1e-4)), (
                    kind
                )
                assert float(jnp.max(jnp.abs(sol.ys))) < 1e3, (kind, h)
    drift_key, diffusion_key = jr.split(jr.key(2))
    unconstrained = nde.NeuralSDE(
        _Unconstrained(eqx.nn.MLP(hidden + 3, hidden, 16, 1, key=drift_key), True),
        _Unconstrained(eqx.nn.MLP(hidden + 1, hidden, 16, 1, key=diffusion_key), False),
        dt0=1.0,
    )
    initial = model.initial  # pyright: ignore[reportPossiblyUnbound]
    for h in steps[:2]:
        sizes = []
        for i in range(4):
            sol = _unconstrained_run(
                _scale_weights(unconstrained, gain), initial, jnp.asarray(h), ts[i],
                xs[i], keys[i],
            )  # fmt: skip
            if sol.result == dfx.RESULTS.nonfinite:
                sizes.append(np.inf)
            else:
                assert sol.result == dfx.RESULTS.successful
                sizes.append(float(jnp.max(jnp.abs(sol.ys))))
        assert max(sizes) > 1e6, (h, sizes)


def test_nonfinite_path_is_an_error():
    model = nde.NeuralSDE(_Affine(0.0, 200.0), lambda t, y, args: y, dt0=0.01)
    ts = jnp.array([0.0, 10.0])
    sol = model.solve(ts, jnp.ones(1), key=jr.key(0), throw=False)
    assert sol.result == dfx.RESULTS.nonfinite
    with pytest.raises(eqx.EquinoxRuntimeError, match="Nonfinite"):
        model(ts, jnp.ones(1), key=jr.key(0))


def test_max_steps():
    model = nde.NeuralSDE(
        _Affine(0.0, -1.0), lambda t, y, args: y, dt0=0.1, max_steps=3
    )
    ts = jnp.linspace(0.0, 1.0, 3)
    with pytest.raises(eqx.EquinoxRuntimeError, match="max_steps"):
        model(ts, jnp.ones(2), key=jr.key(0))
    sol = model.solve(ts, jnp.ones(2), key=jr.key(0), throw=False)
    assert sol.result == dfx.RESULTS.max_steps_reached
    assert int(sol.stats["num_steps"]) == 3


def test_bad_inputs():
    drift = nde.MLPVectorField(2, 4, 1, key=jr.key(0))
    g = _field(2, 2, jr.key(1))
    model = nde.NeuralSDE(drift, g, dt0=0.1)
    ts, y0, key = jnp.linspace(0.0, 1.0, 3), jnp.ones(2), jr.key(0)
    with pytest.raises(ValueError, match="`key`"):
        model(ts, y0)
    with pytest.raises(ValueError, match="`y0`"):
        model(ts, jnp.ones(3), key=key)
    with pytest.raises(ValueError, match="`ts`"):
        model(jnp.zeros(1), y0, key=key)
    with jaxtyping_off():
        with pytest.raises(ValueError, match="`ts`"):
            model(jnp.ones((3, 2)), y0, key=key)
        with pytest.raises(ValueError, match="`drift`"):
            nde.NeuralSDE(lambda t, y, a: y[:1], g, dt0=0.1)(ts, y0, key=key)
        with pytest.raises(ValueError, match="`diffusion`"):
            nde.NeuralSDE(drift, g, noise="general", brownian_size=2, dt0=0.1)(
                ts, y0, key=key
            )
    with pytest.raises(eqx.EquinoxRuntimeError, match="`ts` must be strictly"):
        model(jnp.array([0.0, 1.0, 1.0]), y0, key=key)
    with pytest.raises(eqx.EquinoxRuntimeError, match="`y0` must be finite"):
        model(ts, jnp.array([1.0, jnp.nan]), key=key)
    for kwargs, name in [
        ({"noise": "scalar"}, "noise"),
        ({"noise": "general"}, "brownian_size"),
        ({"brownian_size": 2}, "brownian_size"),
        ({"solver": dfx.Tsit5()}, "solver"),
        ({"dt0": -0.1}, "dt0"),
        ({"max_steps": 0}, "max_steps"),
    ]:
        with jaxtyping_off(), pytest.raises(ValueError, match=f"`{name}`"):
            nde.NeuralSDE(drift, g, **{"dt0": 0.1, **kwargs})
    with jaxtyping_off(), pytest.raises(ValueError, match="`drift`"):
        nde.NeuralSDE(jnp.ones(2), g, dt0=0.1)  # pyright: ignore[reportArgumentType]
    for kwargs, name in [
        ({"kind": "sde"}, "kind"),
        ({"interpolation": "rectilinear"}, "interpolation"),
        ({"hidden_size": 0}, "hidden_size"),
    ]:
        args = {"kind": "lnsde", "hidden_size": 4, **kwargs}
        with jaxtyping_off(), pytest.raises(ValueError, match=f"`{name}`"):
            nde.StableNeuralSDE(
                input_size=2, output_size=2, width=4, depth=1, dt0=0.1,
                key=jr.key(0), **args,
            )  # fmt: skip
    stable = nde.StableNeuralSDE("gsde", 2, 4, 2, 4, 1, dt0=0.1, key=jr.key(0))
    with jaxtyping_off(), pytest.raises(ValueError, match="`xs`"):
        stable(ts, jnp.ones((3, 3)), key=key)


def test_sde_missing_experiment_wiring():
    import jaxmodels.experiments  # noqa: F401  (registers the experiments)
    from jaxmodels.experiments import get_experiment

    exp = get_experiment("sde-missing")
    assert exp.family == "nde" and exp.metric == "test_accuracy"
    assert exp.higher_is_better and exp.target == 0.9
    task = exp.setup(True, jr.key(0))
    # Traced, not compiled: that the loss and a vmapped evaluate (as `sweep` runs
    # them) compose is a property of tracing; their values are the quick mode's test
    # (test_cli), which trains and evaluates this task.
    batch = jtu.tree_map(lambda a: a[:4], task.data)
    panel = task.make_model(task.hparams, jr.key(0))
    loss = eqx.filter_eval_shape(task.loss, panel, batch, jr.key(1))
    assert loss.shape == ()
    panels = eqx.filter_vmap(lambda k: task.make_model(task.hparams, k))(
        jr.split(jr.key(2), 2)
    )
    accuracy = eqx.filter_eval_shape(eqx.filter_vmap(task.evaluate), panels)
    assert accuracy.shape == (2,)
