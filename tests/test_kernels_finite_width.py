"""Finite-width corrections (Roberts, Yaida and Hanin, 2022; Antognini, 2019): the
four-point vertex against Monte Carlo of random MLPs (the exact ReLU law, the 1/n
coefficient by extrapolation in width), the one-hidden-layer excess kurtosis for
Gaussian, uniform and Rademacher weights, the Edgeworth density against a histogram,
the density's moments, jit/vmap/grad, bad inputs."""

import functools as ft

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from jaxmodels.kernels import (
    edgeworth_cdf,
    edgeworth_density,
    four_point_vertex,
    hermite_correction_coefficient,
)


relu = jax.nn.relu
NUM = 20_000


@ft.partial(jax.jit, static_argnums=(1, 2, 3))
def _conditional_variances(key, activation, width, depth, c_w, k1):
    """`G^l = c_w |s(z^{l-1})|^2 / n` for l = 2..depth, one MLP per key, sampled
    exactly: for one input and Gaussian weights the units of `W s` are i.i.d.
    N(0, c_w |s|^2 / n) given `s`."""

    def one(key):
        keys = jr.split(key, depth)
        z = jnp.sqrt(k1) * jr.normal(keys[0], (width,))
        out = []
        for layer in range(1, depth):
            g = c_w * jnp.mean(activation(z) ** 2)
            out.append(g)
            z = jnp.sqrt(g) * jr.normal(keys[layer], (width,))
        return jnp.stack(out)

    return jax.vmap(one)(jr.split(key, NUM))


def _kurtosis_from_variances(g):
    """Excess kurtosis of z with z | G ~ N(0, G): 3 (E[G^2] / E[G]^2 - 1)
    (Rao-Blackwellised), with its delta-method standard error."""
    a, b = np.mean(g**2, 0), np.mean(g, 0)
    influence = g**2 / b**2 - 2 * a * g / b**3
    return 3 * (a / b**2 - 1), 3 * influence.std(0) / np.sqrt(g.shape[0])


@pytest.mark.parametrize("activation, c_w", [(relu, 2.0), (jnp.tanh, 1.0)])
def test_four_point_vertex_matches_monte_carlo(activation, c_w):
    depth, widths = 5, (16, 32, 64)
    kurt, se = [], []
    for i, n in enumerate(widths):
        g = np.asarray(
            _conditional_variances(jr.key(i), activation, n, depth, c_w, c_w),
            np.float64,
        )
        k, s = _kurtosis_from_variances(g)
        kurt.append(k)
        se.append(s)
        if activation is relu:  # exact at any width: 3 ((1 + 5/n)^(l-1) - 1)
            exact = 3 * ((1 + 5 / n) ** np.arange(1, depth) - 1)
            assert np.all(np.abs(k - exact) < 4 * s), (n, k, exact, s)
    kurt, se = np.array(kurt), np.array(se)
    # n * kurtosis = a + b / n: the intercept a is the four-point prediction.
    ns = np.array(widths, float)
    design = np.stack([np.ones(3), 1 / ns], 1)
    for layer in range(depth - 1):
        y, sy = ns * kurt[:, layer], ns * se[:, layer]
        w = design / sy[:, None]
        cov = np.linalg.inv(w.T @ w)
        a = (cov @ w.T @ (y / sy))[0]
        predicted = 64 * float(
            four_point_vertex(activation, depth, 1.0, c_w=c_w, widths=64)[2][layer + 1]
        )
        assert abs(a - predicted) < 4 * np.sqrt(cov[0, 0]), (layer, a, predicted)
        if activation is relu:  # 15 (l - 1) / n: linear in depth
            assert predicted == pytest.approx(15 * (layer + 1), rel=1e-5)


_WEIGHTS = {
    "gaussian": (0.0, lambda key, shape: jr.normal(key, shape)),
    "uniform": (-1.2, lambda key, shape: jr.uniform(key, shape, minval=-1, maxval=1)),
    "rademacher": (-2.0, lambda key, shape: jr.rademacher(key, shape, jnp.float32)),
}


@ft.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _one_hidden_layer(key, activation, width, law, num):
    """Outputs `sum_j a_j s(u_j) / sqrt(n)`, u_j ~ N(0, 1), a_j from `law` scaled to
    unit variance, one network per sample."""
    kappa, sample = _WEIGHTS[law]
    scale = {"gaussian": 1.0, "uniform": np.sqrt(3.0), "rademacher": 1.0}[law]
    ukey, akey = jr.split(key)
    u = jr.normal(ukey, (num, width))
    a = scale * sample(akey, (num, width))
    return jnp.sum(a * activation(u), 1) / jnp.sqrt(width)


def _moment_kurtosis(f):
    m2, m4 = np.mean(f**2), np.mean(f**4)
    influence = f**4 / m2**2 - 2 * m4 * f**2 / m2**3
    return m4 / m2**2 - 3, influence.std() / np.sqrt(f.size), m2


@pytest.mark.parametrize("law", ["gaussian", "uniform", "rademacher"])
def test_one_hidden_layer_kurtosis(law):
    kappa = _WEIGHTS[law][0]
    for i, (activation, n) in enumerate(((relu, 8), (jnp.tanh, 32))):
        f = np.asarray(_one_hidden_layer(jr.key(i), activation, n, law, 100_000))
        kurt, se, m2 = _moment_kurtosis(f.astype(np.float64))
        variance, predicted = hermite_correction_coefficient(
            activation, 1.0, width=n, weight_kurtosis=kappa
        )
        assert abs(kurt - float(predicted)) < 4 * se, (law, n, kurt, predicted, se)
        assert abs(m2 - float(variance)) < 4 * np.std(f**2) / np.sqrt(f.size)


def test_edgeworth_fits_histogram_better_than_gaussian():
    n, num = 64, 200_000
    f = np.asarray(_one_hidden_layer(jr.key(7), relu, n, "gaussian", num), np.float64)
    variance, kappa = hermite_correction_coefficient(relu, 1.0, width=n)
    sd = float(np.sqrt(variance))
    edges = np.linspace(-4 * sd, 4 * sd, 41)
    counts = np.histogram(f, edges)[0]
    statistics = {}
    for name, k in (("gauss", 0.0), ("edgeworth", float(kappa))):
        cdf = np.asarray(edgeworth_cdf(jnp.asarray(edges), variance, k))
        expected = num * np.diff(cdf)
        statistics[name] = np.sum((counts - expected) ** 2 / expected)
    dof = len(counts)
    # Chi-square with 40 bins: the Gaussian is rejected, the Edgeworth density is
    # not (at width 16 its O(1/n^2) remainder is visible: 319 against 4455).
    bound = dof + 5 * np.sqrt(2 * dof)
    assert statistics["edgeworth"] < bound < statistics["gauss"], statistics


def test_edgeworth_density_moments(x64):
    x = np.linspace(-12, 12, 20001)
    for variance, kappa in ((1.0, 0.5), (2.5, 0.2)):
        p = np.asarray(edgeworth_density(jnp.asarray(x), variance, kappa))
        m = [np.trapezoid(p * x**j, x) for j in (0, 2, 4)]
        assert m[0] == pytest.approx(1, abs=1e-9)
        assert m[1] == pytest.approx(variance, rel=1e-8)
        assert m[2] / m[1] ** 2 - 3 == pytest.approx(kappa, abs=1e-8)
        cdf = np.asarray(edgeworth_cdf(jnp.asarray(x), variance, kappa))
        assert np.max(np.abs(np.gradient(cdf, x) - p)) < 1e-6


def test_jit_vmap_grad(x64):
    def output_kurtosis(c_w):
        return four_point_vertex(jnp.tanh, 4, 1.0, c_w=c_w, c_b=0.1, widths=32)[2][-1]

    h = 1e-5
    fd = (output_kurtosis(1.3 + h) - output_kurtosis(1.3 - h)) / (2 * h)
    assert abs(float(jax.grad(output_kurtosis)(1.3) - fd)) < 1e-7
    ks = jnp.array([0.5, 1.0, 2.0])
    batched = jax.vmap(
        lambda k: hermite_correction_coefficient(jnp.tanh, k, width=10)[1]
    )(ks)
    for k, b in zip(ks, batched):
        single = hermite_correction_coefficient(jnp.tanh, float(k), width=10)[1]
        assert float(b) == pytest.approx(float(single), rel=1e-12)
    # ReLU is scale-free: 3 V / (n K^2) does not depend on the input's size.
    widths = [8, 16, 32]
    a = four_point_vertex(relu, 4, 1.0, c_w=2.0, widths=widths)
    b = jax.jit(lambda k: four_point_vertex(relu, 4, k, c_w=2.0, widths=widths))(7.0)
    assert np.allclose(a[2], b[2], rtol=1e-10)
    # Unequal widths: V^{l+1} = 5 K^2 + (n_l / n_{l-1}) V^l at ReLU criticality.
    v = [0.0, 5.0]
    for ratio in (16 / 8, 32 / 16):
        v.append(5.0 + ratio * v[-1])
    assert np.allclose(np.asarray(a[1]), 4 * np.array(v), rtol=1e-10)


def test_bad_inputs():
    with pytest.raises(ValueError, match="widths"):
        four_point_vertex(relu, 3, 1.0, c_w=2.0, widths=0)
    with pytest.raises(ValueError, match="widths"):
        four_point_vertex(relu, 3, 1.0, c_w=2.0, widths=[8, 8, 8])
    with pytest.raises(ValueError, match="depth"):
        four_point_vertex(relu, 0, 1.0, c_w=2.0, widths=8)
    with pytest.raises(ValueError, match="k0"):
        four_point_vertex(relu, 3, float("nan"), c_w=2.0, widths=8)
    with pytest.raises(ValueError, match="width"):
        hermite_correction_coefficient(relu, 1.0, width=-3)
    with pytest.raises(ValueError, match="weight_kurtosis"):
        hermite_correction_coefficient(relu, 1.0, width=3, weight_kurtosis=-3.0)
    with pytest.raises(ValueError, match="k"):
        hermite_correction_coefficient(relu, -1.0, width=3)
    with pytest.raises(ValueError, match="variance"):
        edgeworth_density(jnp.zeros(3), 0.0, 0.1)
