"""Structured-derivatives empirical NTK: against a per-example `jax.jacrev` reference
contracted in the test, on `eqx.nn.MLP`s and on a custom model with parameters outside
any `Linear`; jit/vmap/grad; the refused models and the bad inputs."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import pytest
from jaxtyping import Array

from jaxmodels.kernels import structured_ntk

from .helpers import jaxtyping_off


TOL = 1e-10


@eqx.filter_jit
def _reference(model, x, spec=eqx.is_inexact_array):
    """`sum_params J(x_a) J(x_b)^T` for all pairs, shape `(n, n, out, out)`, from
    per-example `jacrev`; the parameters are the leaves `spec` selects."""
    params, static = eqx.partition(model, spec)

    def jac(x):
        j = jax.jacrev(lambda p: eqx.combine(p, static)(x))(params)
        return [a.reshape(a.shape[0], -1) for a in jtu.tree_leaves(j)]

    return sum(jnp.einsum("aip,bjp->abij", j, j) for j in jax.vmap(jac)(x))


def _traced(full):
    return jnp.trace(full, axis1=2, axis2=3) / full.shape[-1]


def _error(a, b) -> float:
    assert a.shape == b.shape
    return float(jnp.max(jnp.abs(a - b)))


def _data(d, n1=4, n2=3):
    k1, k2 = jr.split(jr.key(1))
    return jr.normal(k1, (n1, d)), jr.normal(k2, (n2, d))


class Lifted(eqx.Module):
    """A scalar-output model as a model with one output."""

    inner: eqx.nn.MLP

    def __call__(self, x):
        return self.inner(x)[None]


class Scaled(eqx.Module):
    """Two Linear layers, a learned elementwise scale between them and a LayerNorm
    (parameters outside any Linear), and a Linear that is never called."""

    first: eqx.nn.Linear
    second: eqx.nn.Linear
    unused: eqx.nn.Linear
    scale: Array
    norm: eqx.nn.LayerNorm

    def __init__(self, d, width, k, *, key):
        k1, k2, k3, k4 = jr.split(key, 4)
        self.first = eqx.nn.Linear(d, width, key=k1)
        self.second = eqx.nn.Linear(width, k, use_bias=False, key=k2)
        self.unused = eqx.nn.Linear(width, width, key=k3)
        self.scale = 1 + 0.3 * jr.normal(k4, (width,))
        self.norm = eqx.nn.LayerNorm(width)

    def __call__(self, x):
        h = jnp.tanh(self.norm(self.scale * self.first(x)))
        return self.second(h)


@pytest.mark.parametrize(
    "activation, use_bias", [(jax.nn.relu, True), (jnp.tanh, False)]
)
def test_mlp(x64, activation: Callable, use_bias: bool):
    model = eqx.nn.MLP(
        5,
        3,
        8,
        2,
        activation=activation,
        use_bias=use_bias,
        use_final_bias=use_bias,
        key=jr.key(0),
    )
    x1, x2 = _data(5)
    full = _reference(model, jnp.concatenate([x1, x2]))
    assert _error(structured_ntk(model, x1), _traced(full[:4, :4])) < TOL
    kernel = structured_ntk(model, x1, x2, trace_axes=())
    assert kernel.shape == (4, 3, 3, 3)
    assert _error(kernel, full[:4, 4:]) < TOL


def test_scalar(x64):
    model = eqx.nn.MLP("scalar", "scalar", 8, 2, key=jr.key(0))
    x1, x2 = _data(1)
    full = _reference(Lifted(model), jnp.concatenate([x1, x2])[:, 0])
    kernel = structured_ntk(model, x1[:, 0], x2[:, 0], trace_axes=())
    assert _error(kernel, full[:4, 4:, 0, 0]) < TOL


def test_custom_model(x64):
    model = Scaled(5, 8, 3, key=jr.key(0))
    x1, x2 = _data(5)
    full = _reference(model, jnp.concatenate([x1, x2]))
    assert _error(structured_ntk(model, x1, x2), _traced(full[:4, 4:])) < TOL
    assert _error(structured_ntk(model, x1, trace_axes=()), full[:4, :4]) < TOL
    # The non-Linear leaves matter: dropping them from the reference changes it.
    spec = jtu.tree_map(lambda _: False, model)
    spec = eqx.tree_at(lambda s: (s.first, s.second), spec, replace=(True, True))
    frozen = _reference(model, jnp.concatenate([x1, x2]), spec)
    assert _error(full, frozen) > 1e-2


def test_jit_vmap_grad(x64):
    model = eqx.nn.MLP(5, 3, 8, 1, key=jr.key(0))
    x1, x2 = _data(5)
    full = _reference(model, jnp.concatenate([x1, 2 * x1, x2]))
    jitted = jax.jit(lambda a, b: structured_ntk(model, a, b))
    assert _error(jitted(x1, x2), _traced(full[:4, 8:])) < TOL
    batches = jnp.stack([x1, 2 * x1])
    mapped = jax.vmap(lambda a: structured_ntk(model, a, x2))(batches)
    assert _error(mapped[1], _traced(full[4:8, 8:])) < TOL

    def reference(m, a, b):
        return _traced(_reference(m, jnp.concatenate([a, b]))[:4, 4:])

    def total(kernel_fn):
        return lambda args: jnp.sum(kernel_fn(args[0], args[1], x2) ** 2)

    grads = eqx.filter_grad(total(structured_ntk))((model, x1))
    expected = eqx.filter_grad(total(reference))((model, x1))
    grads = jtu.tree_leaves(eqx.filter(grads, eqx.is_inexact_array))
    expected = jtu.tree_leaves(eqx.filter(expected, eqx.is_inexact_array))
    assert len(grads) == len(expected) == 5
    assert max(_error(a, b) for a, b in zip(grads, expected)) < 1e-9


class Shared(eqx.Module):
    linear: eqx.nn.Linear

    def __call__(self, x):
        return self.linear(jnp.tanh(self.linear(x)))


class Mapped(eqx.Module):
    linear: eqx.nn.Linear

    def __call__(self, x):
        return jnp.sum(jax.vmap(self.linear)(x.reshape(5, 1)), axis=0)


class Scanned(eqx.Module):
    linear: eqx.nn.Linear

    def __call__(self, x):
        step = lambda h, _: (jnp.tanh(self.linear(h)), None)  # noqa: E731
        return jax.lax.scan(step, x, length=3)[0]


class Checkpointed(eqx.Module):
    linear: eqx.nn.Linear

    def __call__(self, x):
        return jax.checkpoint(lambda h: self.linear(h))(x)


class Batched(eqx.Module):
    linear: eqx.nn.Linear

    def __call__(self, x):
        return jnp.sum(self.linear(x.reshape(1, 5)), axis=-1)


class Stacked(eqx.Module):
    """Two layers in one `Linear` with stacked weights, for scan-over-layers."""

    layers: eqx.nn.Linear

    def __init__(self, *, key):
        linear = eqx.nn.Linear(5, 5, key=key)
        stack = lambda a: jnp.stack([a, -a])  # noqa: E731
        where = lambda m: (m.weight, m.bias)  # noqa: E731
        self.layers = eqx.tree_at(
            where, linear, replace=tuple(map(stack, where(linear)))
        )

    def __call__(self, x):
        params, static = eqx.partition(self.layers, eqx.is_array)
        step = lambda h, p: (jnp.tanh(eqx.combine(p, static)(h)), None)  # noqa: E731
        return jax.lax.scan(step, x, params)[0]


@pytest.mark.parametrize(
    "make",
    [
        lambda k: Shared(eqx.nn.Linear(5, 5, key=k)),
        lambda k: Mapped(eqx.nn.Linear(1, 3, key=k)),
        lambda k: Scanned(eqx.nn.Linear(5, 5, key=k)),
        lambda k: Checkpointed(eqx.nn.Linear(5, 5, key=k)),
        lambda k: Batched(eqx.nn.Linear(1, 3, use_bias=False, key=k)),
        lambda k: Stacked(key=k),
    ],
    ids=["shared", "vmap", "scan", "checkpoint", "batched", "stacked"],
)
def test_refused(make):
    model = make(jr.key(0))
    x1, _ = _data(5)
    with pytest.raises(ValueError, match="`model`.*implementation='jacobian'"):
        structured_ntk(model, x1)
    # The refused models are valid models.
    assert eqx.filter_eval_shape(model, x1[0]).shape in ((3,), (5,))


def test_bad_inputs():
    model = eqx.nn.MLP(5, 3, 8, 2, key=jr.key(0))
    x1, x2 = _data(5)
    with jaxtyping_off():
        with pytest.raises(ValueError, match="x2"):
            structured_ntk(model, x1, x2[:, :4])
        with pytest.raises(ValueError, match="x1"):
            structured_ntk(model, x1[0, 0])
        with pytest.raises(ValueError, match="trace_axes"):
            structured_ntk(model, x1, trace_axes=(1,))
        with pytest.raises(ValueError, match="model"):
            structured_ntk(lambda x: (model(x), model(x)), x1)
