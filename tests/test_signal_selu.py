"""SELU, its constants, LeCun/He initialisation and alpha dropout."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import jaxmodels.signal as jms


def test_constants_derived_from_fixed_point():
    alpha, lam = jms.selu_constants()
    assert alpha == pytest.approx(jms.ALPHA_01, rel=1e-14)
    assert lam == pytest.approx(jms.LAMBDA_01, rel=1e-14)
    # The paper's printed digits.
    assert alpha == pytest.approx(1.6733, abs=1e-4)
    assert lam == pytest.approx(1.0507, abs=1e-4)


def test_selu_matches_jax_nn(x64):
    x = jnp.concatenate([jr.normal(jr.key(0), (1000,), jnp.float64) * 3, jnp.zeros(1)])
    np.testing.assert_allclose(jms.selu(x), jax.nn.selu(x), rtol=1e-13, atol=1e-15)


def test_selu_standard_normal_moments(x64):
    # E and E[.^2] of selu(z), z ~ N(0, 1), by Gauss-Hermite on each side of the kink.
    nodes, weights = np.polynomial.legendre.leggauss(200)
    z = 6 * (nodes + 1) / 2  # [0, 6] on each side; the tail beyond is < 1e-8
    w = weights * 3 * np.exp(-(z**2) / 2) / math.sqrt(2 * math.pi)
    pos, neg = (
        np.asarray(jms.selu(jnp.asarray(z))),
        np.asarray(jms.selu(-jnp.asarray(z))),
    )
    mean = np.sum(w * (pos + neg))
    second = np.sum(w * (pos**2 + neg**2))
    assert mean == pytest.approx(0, abs=1e-7)
    assert second == pytest.approx(1, abs=1e-7)


def test_selu_gradient_finite_everywhere():
    x = jnp.array([-200.0, -1.0, 0.0, 1.0, 200.0])
    g = jax.vmap(jax.grad(jms.selu))(x)
    assert bool(jnp.all(jnp.isfinite(g)))
    assert float(g[-1]) == pytest.approx(jms.LAMBDA_01, rel=1e-6)


@pytest.mark.parametrize("init, var", [(jms.lecun_normal, 1.0), (jms.he_normal, 2.0)])
def test_init_variance(init, var):
    fan_in = 50
    w = init(jr.key(0), (400, fan_in), jnp.float32)
    assert w.shape == (400, fan_in) and w.dtype == jnp.float32
    # 20 000 draws: the sample variance has relative standard error sqrt(2 / n) = 1%.
    assert float(jnp.var(w) * fan_in) == pytest.approx(var, rel=0.05)
    assert abs(float(jnp.mean(w))) < 5 * math.sqrt(var / fan_in / w.size)


def test_reinit_linear_mlp():
    mlp = eqx.nn.MLP(7, 3, 32, 2, key=jr.key(0))
    new = jms.reinit_linear(mlp, key=jr.key(1))
    for old_layer, layer in zip(mlp.layers, new.layers):
        assert layer.weight.shape == old_layer.weight.shape
        assert not np.allclose(layer.weight, old_layer.weight)
        assert bool(jnp.all(layer.bias == 0))
    # LeCun: variance 1 / fan_in (32 * 32 draws for the hidden layer).
    fan_in = new.layers[1].weight.shape[1]
    assert float(jnp.var(new.layers[1].weight)) * fan_in == pytest.approx(1, rel=0.15)


def test_init_errors():
    with pytest.raises(ValueError, match="`shape`"):
        jms.lecun_normal(jr.key(0), (3, 0), jnp.float32)
    with pytest.raises(ValueError, match="`model`"):
        jms.reinit_linear({"a": jnp.ones(3)}, key=jr.key(0))


@pytest.mark.parametrize("p", [0.05, 0.2, 0.5])
def test_alpha_dropout_keeps_mean_and_variance(p):
    n = 1_000_000
    x = jr.normal(jr.key(0), (n,))
    y = jms.AlphaDropout(p)(x, key=jr.key(1))
    # Tolerances: 5 standard errors, estimated from the sample itself.
    mean_se = float(jnp.std(y)) / math.sqrt(n)
    var_se = float(jnp.std(y**2)) / math.sqrt(n)
    assert abs(float(jnp.mean(y))) < 5 * mean_se
    assert abs(float(jnp.var(y)) - 1) < 5 * var_se
    # About a fraction p of the units sit at the (affinely moved) saturation value.
    a, b = jms.AlphaDropout(p).affine
    dropped = jnp.mean(
        jnp.isclose(y, a * (-jms.LAMBDA_01 * jms.ALPHA_01) + b, atol=1e-6)
    )
    assert float(dropped) == pytest.approx(p, abs=5 * math.sqrt(p * (1 - p) / n))


def test_plain_dropout_would_not():
    # The check above can fail: ordinary (inverted) dropout of a SELU-normalised
    # signal changes its variance.
    n, p = 1_000_000, 0.2
    x = jr.normal(jr.key(0), (n,))
    y = eqx.nn.Dropout(p)(x, key=jr.key(1))
    assert abs(float(jnp.var(y)) - 1) > 0.2


def test_alpha_dropout_identity():
    x = jr.normal(jr.key(0), (5, 3))
    assert bool(jnp.all(jms.AlphaDropout(0.3, inference=True)(x) == x))
    assert bool(jnp.all(jms.AlphaDropout(0.3)(x, inference=True) == x))
    assert bool(jnp.all(jms.AlphaDropout(0.0)(x) == x))
    model = eqx.nn.inference_mode(jms.AlphaDropout(0.3))
    assert bool(jnp.all(model(x) == x))
    # In training mode it is not the identity, and the key matters.
    d = jms.AlphaDropout(0.3)
    assert not bool(jnp.all(d(x, key=jr.key(0)) == x))
    assert not bool(jnp.all(d(x, key=jr.key(0)) == d(x, key=jr.key(1))))


def test_alpha_dropout_jit_and_dtype():
    d = jms.AlphaDropout(0.1)
    x = jnp.ones(4, jnp.float16)
    f = eqx.filter_jit(lambda d, x, k: d(x, key=k))
    assert f(d, x, jr.key(0)).dtype == jnp.float16


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, float("nan")])
def test_alpha_dropout_bad_p(p):
    with pytest.raises(ValueError, match="`p`"):
        jms.AlphaDropout(p)


def test_alpha_dropout_missing_key():
    with pytest.raises(ValueError, match="`key`"):
        jms.AlphaDropout(0.5)(jnp.ones(3))
