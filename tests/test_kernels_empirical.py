"""Empirical NTK / NNGP: the three implementations against each other, against the
closed-form NTK of a hand-built one-hidden-layer network (NumPy), chunked against
unchunked, the operator against the matrix, the neural-tangents-style entry points,
jit/vmap/grad, and bad inputs."""

import functools as ft
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
import numpy as np
import pytest
from jaxtyping import Array

from jaxmodels.kernels import (
    empirical_kernel_fn,
    empirical_nngp,
    empirical_nngp_fn,
    empirical_ntk,
    empirical_ntk_fn,
    ntk_operator,
)

from .helpers import jaxtyping_off


class OneHidden(eqx.Module):
    """`f(x) = V s(W x + b) / sqrt(n)`, the NTK parameterisation."""

    w: Array
    b: Array
    v: Array
    activation: Callable = eqx.field(static=True)

    def __init__(self, d, n, k, *, key, activation=jnp.tanh):
        kw, kb, kv = jr.split(key, 3)
        self.w = jr.normal(kw, (n, d))
        self.b = jr.normal(kb, (n,))
        self.v = jr.normal(kv, (k, n))
        self.activation = activation

    def __call__(self, x):
        h = self.w @ x + self.b
        return self.v @ self.activation(h) / np.sqrt(self.w.shape[0])


def _closed_form(model, x1, x2):
    """Theta_{kl}(x, x') summed over the parameter groups by hand, in NumPy."""
    w, b, v = (np.asarray(a, np.float64) for a in (model.w, model.b, model.v))
    n = w.shape[0]
    h1, h2 = x1 @ w.T + b, x2 @ w.T + b
    s1, s2 = np.tanh(h1), np.tanh(h2)
    d1, d2 = 1 - s1**2, 1 - s2**2
    # W and b: sum_j V_kj V_lj s'(h_j) s'(h'_j) (x.x' + 1); V: delta_kl s(h_j) s(h'_j).
    hidden = (
        np.einsum("kj,lj,aj,bj->abkl", v, v, d1, d2) * (x1 @ x2.T + 1)[..., None, None]
    )
    readout = np.einsum("aj,bj->ab", s1, s2)[..., None, None] * np.eye(v.shape[0])
    return (hidden + readout) / n


@ft.cache
def _setup():
    model = OneHidden(3, 7, 2, key=jr.key(0))
    model = jax.tree.map(lambda a: a.astype(jnp.float64), model)
    x1 = jr.normal(jr.key(1), (5, 3), jnp.float64)
    x2 = jr.normal(jr.key(2), (4, 3), jnp.float64)
    return model, x1, x2


def test_implementations_agree_with_closed_form(x64):
    model, x1, x2 = _setup()
    expect = _closed_form(model, np.asarray(x1), np.asarray(x2))
    for impl in ("jacobian", "ntvp", "structured", 1, 2, 3):
        full = empirical_ntk(model, x1, x2, trace_axes=(), implementation=impl)
        assert full.shape == (5, 4, 2, 2)
        assert np.abs(np.asarray(full) - expect).max() < 1e-10
        traced = empirical_ntk(model, x1, x2, implementation=impl)
        # neural-tangents' convention: the mean over the output diagonal.
        mean_diag = np.trace(expect, axis1=2, axis2=3) / 2
        assert np.abs(np.asarray(traced) - mean_diag).max() < 1e-10
    # The matrix-free operator: v -> J J^T v equals the full kernel times v.
    k = empirical_ntk(model, x1, trace_axes=(), implementation="ntvp")
    matrix = np.asarray(k).transpose(0, 2, 1, 3).reshape(10, 10)
    operator = ntk_operator(model, x1)
    vec = jr.normal(jr.key(3), (10,), jnp.float64)
    assert np.abs(np.asarray(operator.mv(vec)) - matrix @ np.asarray(vec)).max() < 1e-10
    assert lx.is_positive_semidefinite(operator) and lx.is_symmetric(operator)
    assert np.abs(np.asarray(operator.as_matrix()) - matrix).max() < 1e-10


def test_nngp_is_outer_product(x64):
    model, x1, x2 = _setup()
    f1, f2 = (np.asarray(jax.vmap(model)(x)) for x in (x1, x2))
    assert np.allclose(empirical_nngp(model, x1, x2), f1 @ f2.T / 2, atol=1e-12)
    full = empirical_nngp(model, x1, x2, trace_axes=())
    assert np.allclose(full, np.einsum("ak,bl->abkl", f1, f2), atol=1e-12)


def test_chunked_equals_unchunked(x64):
    model, x1, x2 = _setup()
    x1 = jnp.concatenate([x1, x2])  # 9 examples
    for impl in ("jacobian", "ntvp", "structured"):
        whole = empirical_ntk(model, x1, x2, implementation=impl, trace_axes=())
        chunked = empirical_ntk(
            model, x1, x2, implementation=impl, trace_axes=(), chunk_size=2
        )
        assert chunked.shape == whole.shape == (9, 4, 2, 2)
        assert np.abs(np.asarray(chunked - whole)).max() < 1e-12
    nngp = empirical_nngp(model, x1, chunk_size=4)
    assert np.abs(np.asarray(nngp - empirical_nngp(model, x1))).max() < 1e-12


def test_nt_style_entry_points(x64):
    model, x1, x2 = _setup()
    params = (model.w, model.b, model.v)

    def apply_fn(p, x, scale=1.0):
        w, b, v = p
        return scale * jnp.tanh(x @ w.T + b[None]) @ v.T / np.sqrt(w.shape[0])

    expect = _closed_form(model, np.asarray(x1), np.asarray(x2))
    ntk_fn = empirical_ntk_fn(apply_fn, trace_axes=(), implementation=2)
    assert np.abs(np.asarray(ntk_fn(x1, x2, params)) - expect).max() < 1e-10
    # Without batch structure the same kernel comes out (the batch as one example).
    whole = empirical_ntk_fn(apply_fn, trace_axes=(), vmap_axes=None)
    assert np.abs(np.asarray(whole(x1, x2, params)) - expect).max() < 1e-10
    # Keyword arguments reach `f`: scaling the outputs by 2 scales the kernel by 4.
    scaled = empirical_ntk_fn(apply_fn)(x1, None, params, scale=2.0)
    traced = np.trace(_closed_form(model, *(np.asarray(x1),) * 2), axis1=2, axis2=3)
    assert np.abs(np.asarray(scaled) - 4 * traced / 2).max() < 1e-10
    kernel_fn = empirical_kernel_fn(apply_fn)
    both = kernel_fn(x1, x2, None, params)
    assert both._fields == ("nngp", "ntk")
    assert np.allclose(both.nngp, empirical_nngp_fn(apply_fn)(x1, x2, params))
    assert np.allclose(kernel_fn(x1, x2, "ntk", params), np.trace(expect, 0, 2, 3) / 2)


def test_jit_vmap_grad(x64):
    model, x1, x2 = _setup()

    @eqx.filter_jit
    def trace_ntk(m, x):
        return jnp.trace(empirical_ntk(m, x, implementation="ntvp"))

    # grad of the kernel's trace in the inputs against central finite differences.
    g = jax.grad(lambda x: trace_ntk(model, x))(x1)
    direction = jr.normal(jr.key(4), x1.shape, jnp.float64)
    eps = 1e-5
    fd = (
        trace_ntk(model, x1 + eps * direction) - trace_ntk(model, x1 - eps * direction)
    ) / (2 * eps)
    assert abs(float(jnp.sum(g * direction)) - float(fd)) < 1e-7 * max(
        1, abs(float(fd))
    )
    # vmap over a batch of models: each equals its own kernel.
    models = eqx.filter_vmap(lambda k: OneHidden(3, 7, 2, key=k))(
        jr.split(jr.key(5), 3)
    )
    models = jax.tree.map(lambda a: a.astype(jnp.float64), models)
    ks = eqx.filter_vmap(lambda m: empirical_ntk(m, x1, x2))(models)
    for i in range(3):
        one = jax.tree.map(lambda a: a[i], models)
        expect = (
            np.trace(_closed_form(one, np.asarray(x1), np.asarray(x2)), 0, 2, 3) / 2
        )
        assert np.abs(np.asarray(ks[i]) - expect).max() < 1e-10


def test_bad_inputs():
    model, x1, x2 = (
        OneHidden(3, 4, 2, key=jr.key(0)),
        jnp.ones((2, 3)),
        jnp.ones((2, 4)),
    )
    with jaxtyping_off():
        with pytest.raises(ValueError, match="x2"):
            empirical_ntk(model, x1, x2)
        with pytest.raises(ValueError, match="implementation"):
            empirical_ntk(model, x1, implementation="magic")
        with pytest.raises(ValueError, match="implementation"):
            empirical_ntk_fn(lambda p, x: x, implementation=3)
        for bad in (0, 1.5):
            with pytest.raises(ValueError, match="chunk_size"):
                empirical_ntk(model, x1, chunk_size=bad)
        with pytest.raises(ValueError, match="trace_axes"):
            empirical_ntk(model, x1, trace_axes=(1,))
        with pytest.raises(ValueError, match="x1"):
            empirical_nngp(model, jnp.ones(()))
        with pytest.raises(ValueError, match="vmap_axes"):
            empirical_ntk_fn(lambda p, x: x, vmap_axes=1)
        with pytest.raises(ValueError, match="get"):
            empirical_kernel_fn(lambda p, x: x * p)(x1, None, "cov", 1.0)
