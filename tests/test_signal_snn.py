"""Deep self-normalising networks: signal propagation, transformations, errors."""

import functools as ft

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import jaxmodels.signal as jms

from .helpers import jaxtyping_off


@eqx.filter_jit
def _layer_moments(model, x):
    hs = jax.vmap(model.hidden_states)(x)  # (batch, depth, width)
    return jnp.mean(hs, axis=(0, 2)), jnp.var(hs, axis=(0, 2))


@ft.cache
def _propagation(cls):
    # 64 layers; width 512 keeps the finite-width fluctuations of the per-layer
    # variance (about 1 / sqrt(width) per layer, damped by the contraction) near 0.05.
    model = cls(16, 1, 512, 64, key=jr.key(0))
    x = jr.normal(jr.key(1), (128, 16))
    mean, var = _layer_moments(model, x)
    return np.asarray(mean), np.asarray(var)


def test_snn_self_normalises_64_layers():
    mean, var = _propagation(jms.SNN)
    assert mean.shape == var.shape == (64,)
    assert np.max(np.abs(mean)) < 0.05, mean
    assert np.max(np.abs(var - 1)) < 0.1, var


def test_relu_mlp_does_not():
    mean, var = _propagation(jms.ReLUMLP)
    # He init keeps the second moment, not the mean: ReLU outputs are positive.
    assert not (np.max(np.abs(mean)) < 0.05 and np.max(np.abs(var - 1)) < 0.1)
    assert np.min(mean[8:]) > 0.3, mean


def test_depth_does_not_grow_the_program():
    x = jnp.ones(3)
    sizes = [
        len(
            jax.make_jaxpr(jms.SNN(3, 2, 8, depth, dropout_rate=0.1, key=jr.key(0)))(
                x, key=jr.key(1)
            ).eqns
        )
        for depth in (2, 64)
    ]
    assert sizes[0] == sizes[1]


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_shapes_and_hidden_states(depth):
    model = jms.SNN(3, 2, 4, depth, key=jr.key(0))
    x = jr.normal(jr.key(1), (3,))
    hs = model.hidden_states(x)
    assert hs.shape == (depth, 4)
    assert model.hidden.weight.shape == (depth - 1, 4, 4)
    # The output is the last linear map of the last hidden state.
    np.testing.assert_allclose(model(x), model.last(hs[-1]), rtol=1e-6)


def test_lecun_and_he_weights():
    snn = jms.SNN(100, 2, 200, 3, key=jr.key(0))
    relu = jms.ReLUMLP(100, 2, 200, 3, key=jr.key(0))
    assert float(jnp.var(snn.first.weight) * 100) == pytest.approx(1, rel=0.05)
    assert float(jnp.var(snn.hidden.weight) * 200) == pytest.approx(1, rel=0.05)
    assert float(jnp.var(relu.hidden.weight) * 200) == pytest.approx(2, rel=0.05)
    assert bool(jnp.all(snn.hidden.bias == 0) and jnp.all(relu.last.bias == 0))


def test_relu_mlp_options():
    model = jms.ReLUMLP(
        3, 2, 4, 2, activation=jnp.tanh, init=jms.lecun_normal, key=jr.key(0)
    )
    x = jnp.full(3, 10.0)
    assert bool(jnp.all(jnp.abs(model.hidden_states(x)) <= 1))


def test_dropout_in_training_and_inference():
    model = jms.SNN(3, 2, 8, 3, dropout_rate=0.2, key=jr.key(0))
    x = jr.normal(jr.key(1), (3,))
    a, b = model(x, key=jr.key(2)), model(x, key=jr.key(3))
    assert not np.allclose(a, b)
    test_model = eqx.nn.inference_mode(model)
    np.testing.assert_array_equal(test_model(x), test_model(x))
    no_dropout = jms.SNN(3, 2, 8, 3, key=jr.key(0))
    np.testing.assert_allclose(test_model(x), no_dropout(x), rtol=1e-6)


def test_jit_vmap_no_retrace():
    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def forward(model, x, key):
        keys = jr.split(key, x.shape[0])
        return jax.vmap(lambda xi, k: model(xi, key=k))(x, keys)

    x = jr.normal(jr.key(1), (5, 3))
    outs = []
    for seed in range(3):  # new weights, inputs and keys: same trace
        model = jms.SNN(3, 2, 4, 3, dropout_rate=0.1, key=jr.key(seed))
        outs.append(forward(model, x + seed, jr.key(10 + seed)))
    assert outs[0].shape == (5, 2)
    eager = jax.vmap(lambda xi, k: model(xi, key=k))(x + 2, jr.split(jr.key(12), 5))
    np.testing.assert_allclose(outs[-1], eager, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls", [jms.SNN, jms.ReLUMLP])
def test_grad_matches_finite_differences(cls):
    with jax.enable_x64(True):
        model = cls(3, 2, 4, 3, key=jr.key(0))
        assert model.first.weight.dtype == jnp.float64
        x = jr.normal(jr.key(1), (6, 3), jnp.float64)

        @eqx.filter_jit
        def total(m):
            return jnp.sum(jax.vmap(m)(x))

        grads = eqx.filter_grad(total)(model)
        params, static = eqx.partition(model, eqx.is_inexact_array)
        leaves, treedef = jax.tree_util.tree_flatten(params)
        direction = [
            jr.normal(k, leaf.shape, leaf.dtype)
            for k, leaf in zip(jr.split(jr.key(2), len(leaves)), leaves)
        ]
        eps = 1e-6

        def shifted(sign):
            moved = [p + sign * eps * d for p, d in zip(leaves, direction)]
            return total(
                eqx.combine(jax.tree_util.tree_unflatten(treedef, moved), static)
            )

        fd = (shifted(1) - shifted(-1)) / (2 * eps)
        grad_leaves = jax.tree_util.tree_leaves(grads)
        jvp = sum(jnp.vdot(g, d) for g, d in zip(grad_leaves, direction))
        assert float(jvp) == pytest.approx(float(fd), rel=1e-7)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(depth=0), "depth"),
        (dict(depth=2.0), "depth"),
        (dict(width=0), "width"),
        (dict(in_size=-1), "in_size"),
        (dict(dropout_rate=1.0), "dropout_rate"),
        (dict(dropout_rate=-0.5), "dropout_rate"),
    ],
)
def test_bad_construction(kwargs, name):
    args = dict(in_size=3, out_size=2, width=4, depth=2) | kwargs
    with jaxtyping_off(), pytest.raises(ValueError, match=f"`{name}`"):
        jms.SNN(**args, key=jr.key(0))


def test_relu_bad_depth():
    with pytest.raises(ValueError, match="`depth`"):
        jms.ReLUMLP(3, 2, 4, 0, key=jr.key(0))


def test_missing_key_in_training():
    model = jms.SNN(3, 2, 4, 2, dropout_rate=0.1, key=jr.key(0))
    with pytest.raises(ValueError, match="`key`"):
        model(jnp.ones(3))
    jms.SNN(3, 2, 4, 2, key=jr.key(0))(jnp.ones(3))  # no dropout: no key needed


@pytest.mark.parametrize("shape", [(4,), (2, 3), ()])
def test_wrong_input_shape(shape):
    model = jms.SNN(3, 2, 4, 2, key=jr.key(0))
    x = jnp.ones(shape)
    with jaxtyping_off(), pytest.raises(ValueError, match="`x`"):
        model(x)
    # With the runtime checks of the test suite on, they catch it first, naming `x`.
    with pytest.raises((ValueError, TypeError), match="parameter 'x'|`x`"):
        model(x)
