import functools as ft

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from jaxmodels import operators as op

from .helpers import jaxtyping_off


def _numpy_mlp(mlp: eqx.nn.MLP, x: np.ndarray, final_relu: bool) -> np.ndarray:
    """An independent float64 forward pass of a ReLU `eqx.nn.MLP` from its weights."""
    h = np.asarray(x, np.float64).reshape(-1)
    for i, layer in enumerate(mlp.layers):
        h = np.asarray(layer.weight, np.float64) @ h + np.asarray(
            layer.bias, np.float64
        )
        if i < len(mlp.layers) - 1 or final_relu:
            h = np.maximum(h, 0.0)
    return h


# Models are built by shape only and filled from numpy: jax.random would compile a
# threefry kernel for every new shape, the slowest part of these tests.
def _build(*args, seed: int, dtype=np.float32, **kwargs) -> op.DeepONet:
    rng = np.random.default_rng(seed)
    model = eqx.filter_eval_shape(op.DeepONet, *args, key=jr.key(0), **kwargs)

    def fill(leaf):
        if not isinstance(leaf, jax.ShapeDtypeStruct):
            return leaf
        lim = leaf.shape[-1] ** -0.5 if leaf.ndim == 2 else 0.5
        return jnp.asarray(rng.uniform(-lim, lim, leaf.shape), dtype)

    return jax.tree_util.tree_map(fill, model)


def _normal(seed: int, shape, dtype=np.float32) -> jnp.ndarray:
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


# One compiled function per shape, reused: eager evaluation dispatches every op.
_call = eqx.filter_jit(lambda m, u, y: m(u, y))
_evaluate = eqx.filter_jit(lambda m, u, ys: m.evaluate(u, ys))


@ft.cache
def _model(out_size="scalar", coord_size="scalar"):
    model = _build(7, coord_size, width=12, depth=2, basis=5, out_size=out_size, seed=0)
    # A non-zero output bias, so that the test sees it.
    return eqx.tree_at(lambda m: m.bias, model, jnp.arange(1.0, model.bias.size + 1))


def test_output_is_the_sum_of_branch_times_trunk():
    # Vector output (split branch) and vector coordinates; numpy reference.
    model = _model(out_size=3, coord_size=2)
    u = _normal(1, (7,))
    y = jnp.array([0.3, -0.7])
    b = _numpy_mlp(model.branch, u, final_relu=False).reshape(3, 5)
    t = _numpy_mlp(model.trunk, y, final_relu=True)
    expected = np.array([sum(b[o, k] * t[k] for k in range(5)) for o in range(3)])
    expected += np.arange(1.0, 4.0)
    out = _call(model, u, y)
    assert out.shape == (3,)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    # The trunk's last layer has the activation (as in the paper): ReLU outputs >= 0.
    basis = eqx.filter_jit(lambda m, ys: jax.vmap(m.trunk_basis)(ys))
    ts = basis(model, _normal(2, (50, 2)))
    assert float(jnp.min(ts)) >= 0.0 and float(jnp.max(ts)) > 0.0


def test_scalar_shapes_and_many_points():
    model = _model()
    u = _normal(3, (7,))
    ys = jnp.linspace(0.0, 1.0, 4)
    assert _call(model, u, ys[0]).shape == ()
    many = _evaluate(model, u, ys)
    one_by_one = jnp.stack([_call(model, u, y) for y in ys])
    assert many.shape == (4,)
    np.testing.assert_allclose(many, one_by_one, rtol=1e-6, atol=1e-6)


def _dot_generals(jaxpr):
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            yield eqn
        for param in eqn.params.values():
            sub = getattr(param, "jaxpr", param)
            if hasattr(sub, "eqns"):
                yield from _dot_generals(sub)


def test_branch_runs_once_for_many_points():
    # The branch's first layer is the only matmul with a `num_sensors` (7) axis; it
    # must appear once and act on one vector, not on a batch of points.
    model = _model()
    u, ys = jnp.ones(7), jnp.linspace(0.0, 1.0, 13)
    jaxpr = jax.make_jaxpr(model.evaluate)(u, ys).jaxpr
    shapes = [
        tuple(v.aval.shape for v in eqn.invars)
        for eqn in _dot_generals(jaxpr)
        if any(7 in v.aval.shape for v in eqn.invars)
    ]
    assert shapes == [((12, 7), (7,))]
    # And the trace calls the branch network once.
    calls = []

    class Counting(eqx.Module):
        mlp: eqx.nn.MLP

        def __call__(self, x):
            calls.append(x.shape)
            return self.mlp(x)

    counting = eqx.tree_at(lambda m: m.branch, model, Counting(model.branch))
    eqx.filter_jit(lambda m, u, ys: m.evaluate(u, ys))(counting, u, ys)
    assert calls == [(7,)]


def test_linear_branch_gives_an_affine_operator():
    # With the identity activation the branch is affine in u, so G is affine in u:
    # G(a u + (1 - a) v) = a G(u) + (1 - a) G(v) at every point.
    model = _build(
        7, "scalar", width=9, depth=2, basis=4, activation=lambda x: x, seed=4
    )
    u, v = _normal(5, (2, 7))
    ys = jnp.linspace(0.0, 1.0, 5)
    a = 0.3
    g = ft.partial(_evaluate, model, ys=ys)
    np.testing.assert_allclose(
        g(a * u + (1 - a) * v), a * g(u) + (1 - a) * g(v), rtol=1e-5, atol=1e-5
    )
    # ReLU breaks this (the check can fail).
    g = ft.partial(_evaluate, _model(), ys=ys)
    lhs, rhs = g(3.0 * u - 2.0 * v), 3.0 * g(u) - 2.0 * g(v)
    assert float(jnp.max(jnp.abs(lhs - rhs))) > 1e-2


def test_jit_vmap_grad(x64):
    model = _build(
        6, 2, width=8, depth=1, basis=4, activation=jnp.tanh, seed=6, dtype=np.float64
    )
    us = _normal(7, (3, 6), np.float64)
    ys = jnp.asarray(np.random.default_rng(8).uniform(size=(4, 2)))
    batched = eqx.filter_jit(jax.vmap(op.DeepONet.evaluate, in_axes=(None, 0, None)))(
        model, us, ys
    )
    loop = np.stack([[_call(model, u, y) for y in ys] for u in us])
    np.testing.assert_allclose(batched, loop, rtol=1e-12)

    def loss(model, u, y):
        return model(u, y) ** 2

    grads = eqx.filter_jit(eqx.filter_grad(loss))(model, us[0], ys[0])
    # Finite differences along a random direction in parameter space.
    params, static = eqx.partition(model, eqx.is_array)
    direction = jax.tree_util.tree_map(lambda p: _normal(9, p.shape, p.dtype), params)
    eps = 1e-6

    @eqx.filter_jit
    def at(t):
        shifted = jax.tree_util.tree_map(lambda p, d: p + t * d, params, direction)
        return loss(eqx.combine(shifted, static), us[0], ys[0])

    fd = float(at(eps) - at(-eps)) / (2 * eps)
    analytic = sum(
        float(jnp.vdot(g, d))
        for g, d in zip(
            jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(direction)
        )
    )
    assert abs(fd - analytic) <= 1e-6 * max(1.0, abs(fd))
    # The gradient in the input function and the query point as well.
    du, dy = eqx.filter_jit(jax.grad(_call, argnums=(1, 2)))(model, us[0], ys[0])
    e_u, e_y = eps * jnp.eye(6)[2], eps * jnp.eye(2)[1]
    fd_u = (_call(model, us[0] + e_u, ys[0]) - _call(model, us[0] - e_u, ys[0])) / (2 * eps)  # fmt: skip
    fd_y = (_call(model, us[0], ys[0] + e_y) - _call(model, us[0], ys[0] - e_y)) / (2 * eps)  # fmt: skip
    np.testing.assert_allclose(du[2], fd_u, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(dy[1], fd_y, rtol=1e-6, atol=1e-9)


def test_bad_inputs():
    model = _model(coord_size=2)
    with jaxtyping_off():
        with pytest.raises(ValueError, match="num_sensors"):
            model(jnp.ones(6), jnp.zeros(2))
        with pytest.raises(ValueError, match="coord_size"):
            model(jnp.ones(7), jnp.zeros(3))
        with pytest.raises(ValueError, match="coord_size"):
            model(jnp.ones(7), jnp.zeros(()))
        with pytest.raises(ValueError, match="coord_size"):
            model.evaluate(jnp.ones(7), jnp.zeros(2))
        with pytest.raises(ValueError, match="num_sensors"):
            model.evaluate(jnp.ones((2, 7)), jnp.zeros((4, 2)))
    for kwargs, name in [
        (dict(num_sensors=0), "num_sensors"),
        (dict(num_sensors="scalar"), "num_sensors"),
        (dict(coord_size=0), "coord_size"),
        (dict(basis=0), "basis"),
        (dict(out_size=-1), "out_size"),
        (dict(width=0), "width"),
        (dict(depth=-1), "depth"),
    ]:
        args = dict(num_sensors=4, coord_size=1, width=4, depth=1, basis=2) | kwargs
        with jaxtyping_off(), pytest.raises(ValueError, match=name):
            op.DeepONet(
                args.pop("num_sensors"), args.pop("coord_size"), key=jr.key(0), **args
            )
