"""Kernel recursions and criticality (Roberts, Yaida and Hanin, 2022; Poole et al.,
2016): the recursion against the arc-cosine and arcsin closed forms, the critical
points of ReLU and tanh, the susceptibilities against finite differences of the
recursion map, Monte Carlo of random MLPs for the variance, and the input-gradient
norms on and off criticality, jit/vmap/grad, bad inputs."""

import functools as ft

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from jaxmodels.kernels import (
    bivariate_gaussian_expectation,
    critical_initialisation,
    depth_scales,
    input_gradient_norms,
    kernel_fixed_point,
    kernel_recursion,
    kernel_step,
    order_chaos_boundary,
    susceptibilities,
)

from .helpers import jaxtyping_off


relu, erf = jax.nn.relu, jax.scipy.special.erf


def _arccos_step(k, c_w, c_b):
    k11, k12, k22 = k
    norm = np.sqrt(k11 * k22)
    theta = np.arccos(np.clip(k12 / norm, -1, 1))
    e12 = norm / (2 * np.pi) * (np.sin(theta) + (np.pi - theta) * np.cos(theta))
    return c_b + c_w * np.array([k11 / 2, e12, k22 / 2])


def _arcsin_step(k, c_w, c_b):
    k11, k12, k22 = k

    def e(a, b, c):
        return 2 / np.pi * np.arcsin(2 * b / np.sqrt((1 + 2 * a) * (1 + 2 * c)))

    return c_b + c_w * np.array([e(k11, k11, k11), e(k11, k12, k22), e(k22, k22, k22)])


@pytest.mark.parametrize(
    "activation, reference, c_w, c_b",
    [(relu, _arccos_step, 1.7, 0.1), (erf, _arcsin_step, 1.3, 0.2)],
)
def test_recursion_matches_closed_forms(x64, activation, reference, c_w, c_b):
    k0 = np.array([1.0, 0.3, 2.0])
    ks = np.asarray(kernel_recursion(activation, 6, k0, c_w=c_w, c_b=c_b))
    expect = [c_b + c_w * k0]
    for _ in range(5):
        expect.append(reference(expect[-1], c_w, c_b))
    assert np.max(np.abs(ks - np.array(expect))) < 1e-8
    single = np.asarray(kernel_recursion(activation, 6, 2.0, c_w=c_w, c_b=c_b))
    assert np.max(np.abs(single - np.array(expect)[:, 2])) < 1e-8


def test_critical_points(x64):
    c_b, c_w = critical_initialisation(relu)
    assert abs(float(c_b)) < 1e-6 and abs(float(c_w) - 2) < 1e-6
    c_b, c_w = critical_initialisation(jnp.tanh)
    assert abs(float(c_b)) < 1e-6 and abs(float(c_w) - 1) < 1e-6
    # The order-to-chaos line: through (0, 1) for tanh, chi_perp = 1 on it, and the
    # correlation depth scale diverges there and is short away from it.
    c_bs = jnp.array([0.0, 0.05, 0.2])
    line = order_chaos_boundary(jnp.tanh, c_bs)
    assert abs(float(line[0]) - 1) < 1e-6 and np.all(np.diff(np.asarray(line)) > 0)
    for c_b, c_w in zip(c_bs[1:], line[1:]):
        k_star = kernel_fixed_point(jnp.tanh, c_w=c_w, c_b=c_b)
        assert abs(float(susceptibilities(jnp.tanh, k_star, c_w=c_w)[1]) - 1) < 1e-6
        near = depth_scales(jnp.tanh, c_w=c_w * 1.001, c_b=c_b)[1]
        far = depth_scales(jnp.tanh, c_w=c_w * 1.5, c_b=c_b)[1]
        assert float(near) > 300 and float(far) < 10


@pytest.mark.parametrize("activation", [jnp.tanh, erf, jax.nn.gelu])
def test_susceptibilities_match_finite_differences(x64, activation):
    k, c_w, h = 0.7, 1.4, 1e-4
    chi_par, chi_perp = susceptibilities(activation, k, c_w=c_w)

    def scalar_map(q):
        return float(kernel_step(activation, q, c_w=c_w, c_b=0.1))

    fd_par = (scalar_map(k + h) - scalar_map(k - h)) / (2 * h)
    assert abs(float(chi_par) - fd_par) < 1e-6
    # chi_perp: d K'_12 / d K_12 at K_12 = K_11 = K_22, one-sided (K_12 <= K).
    pair = [
        float(kernel_step(activation, jnp.array([k, k - j * h, k]), c_w=c_w)[1])
        for j in range(3)
    ]
    fd_perp = (3 * pair[0] - 4 * pair[1] + pair[2]) / (2 * h)
    assert abs(float(chi_perp) - fd_perp) < 1e-6


def test_fixed_points(x64):
    assert float(kernel_fixed_point(relu, c_w=1.0, c_b=0.5)) == pytest.approx(1.0)
    assert float(kernel_fixed_point(relu, c_w=2.0, c_b=0.0, k0=3.0)) == pytest.approx(
        3.0
    )
    k_star = kernel_fixed_point(jnp.tanh, c_w=1.5, c_b=0.1)
    deep = kernel_recursion(jnp.tanh, 400, 2.0, c_w=1.5, c_b=0.1)[-1]
    assert abs(float(k_star - deep)) < 1e-9
    assert abs(float(kernel_step(jnp.tanh, k_star, c_w=1.5, c_b=0.1) - k_star)) < 1e-10
    with pytest.raises(eqx.EquinoxRuntimeError, match="no finite fixed point"):
        kernel_fixed_point(relu, c_w=2.5, c_b=0.0)
    with pytest.raises(eqx.EquinoxRuntimeError, match="no finite fixed point"):
        kernel_fixed_point(relu, c_w=2.0, c_b=0.1)


@ft.partial(jax.jit, static_argnums=(1, 2, 3))
def _mlp_variances(key, activation, width, depth, c_w, c_b, k1):
    """Output variances of `depth`-layer MLPs, one per key, sampled exactly: for one
    input and Gaussian weights, the units of `W s + b` are i.i.d. N(0, c_b + c_w
    |s|^2 / n) given `s` (rotation invariance)."""

    def one(key):
        keys = jr.split(key, depth)
        z = jnp.sqrt(k1) * jr.normal(keys[0], (width,))
        out = []
        for layer in range(1, depth):
            g = c_b + c_w * jnp.mean(activation(z) ** 2)
            out.append(g)
            z = jnp.sqrt(g) * jr.normal(keys[layer], (width,))
        return jnp.stack(out), z[0]

    return jax.vmap(one)(key)


def test_monte_carlo_variance_follows_recursion():
    # G^l is the conditional variance of z^l: E[G^l] = E[(z^l)^2] (Rao-Blackwell).
    n, depth, num = 32, 6, 20_000
    keys = jr.split(jr.key(0), num)
    for activation, c_w, c_b in ((relu, 2.0, 0.0), (jnp.tanh, 1.6, 0.1)):
        g, z = _mlp_variances(keys, activation, n, depth, c_w, c_b, c_b + c_w)
        g = np.asarray(g, np.float64)
        mean, se = g.mean(0), g.std(0) / np.sqrt(num)
        ks = np.asarray(kernel_recursion(activation, depth, 1.0, c_w=c_w, c_b=c_b))
        # tanh has an O(1/n) shift of the mean variance (chapter 4's K^{1}); bound it
        # by the four-point size |d^2 K / dK^2| Var(G) / 2 <= 0.01 K at n = 32.
        slack = (0.0 if activation is relu else 0.01) * ks[1:]
        assert np.all(np.abs(mean - ks[1:]) < 4 * se + slack), (mean, ks, se)
        zz = np.asarray(z, np.float64) ** 2
        assert abs(zz.mean() - ks[-1]) < 4 * zz.std() / np.sqrt(num) + slack[-1]


@ft.partial(jax.jit, static_argnums=(1,))
def _gradient_norms(key, depth, c_w, x):
    width = 32

    def one(key):
        keys = jr.split(key, depth)
        fan_ins = [x.shape[0]] + [width] * (depth - 1)
        ws = [
            jnp.sqrt(c_w / f) * jr.normal(k, (width, f)) for k, f in zip(keys, fan_ins)
        ]

        def first_units(x):
            z, out = ws[0] @ x, []
            for w in ws[1:]:
                out.append(z[0])
                z = w @ relu(z)
            out.append(z[0])
            return jnp.stack(out)

        return jnp.sum(jax.jacrev(first_units)(x) ** 2, axis=1)

    return jax.vmap(one)(key)


def test_gradient_norms_on_and_off_criticality():
    depth, num = 8, 1000
    x = jr.normal(jr.key(1), (8,))
    keys = jr.split(jr.key(2), num)
    for c_w in (1.5, 2.0, 2.5):
        norms = np.asarray(_gradient_norms(keys, depth, c_w, x), np.float64)
        mean, se = norms.mean(0), norms.std(0) / np.sqrt(num)
        k0 = float(jnp.mean(x**2))
        predicted = np.asarray(input_gradient_norms(relu, depth, k0, c_w=c_w))
        chi_perp = float(susceptibilities(relu, k0, c_w=c_w)[1])
        assert np.allclose(predicted, c_w * chi_perp ** np.arange(depth), rtol=1e-5)
        assert np.all(np.abs(mean - predicted) < 4 * se), (c_w, mean, predicted, se)
        ratio = mean[-1] / mean[0]
        if c_w == 2.0:
            assert 0.8 < ratio < 1.25  # O(1) at criticality
        else:  # (3/4)^7 = 0.13 and (5/4)^7 = 4.8
            assert abs(np.log(ratio) - 7 * np.log(chi_perp)) < 0.25


def test_jit_vmap_grad(x64):
    def last(c_w):
        return kernel_recursion(jnp.tanh, 5, 1.0, c_w=c_w, c_b=0.1)[-1]

    h = 1e-5
    fd = (last(1.5 + h) - last(1.5 - h)) / (2 * h)
    assert abs(float(jax.grad(last)(1.5)) - float(fd)) < 1e-7
    c_ws = jnp.array([1.2, 1.5, 2.0])
    batched = jax.vmap(lambda c: kernel_fixed_point(jnp.tanh, c_w=c, c_b=0.1))(c_ws)
    for c, k in zip(c_ws, batched):
        assert abs(float(kernel_fixed_point(jnp.tanh, c_w=c, c_b=0.1) - k)) < 1e-10
    # The fixed point is differentiable (implicit function theorem through Newton).
    dk = jax.grad(lambda c: kernel_fixed_point(jnp.tanh, c_w=c, c_b=0.1))(1.5)
    fd = (
        kernel_fixed_point(jnp.tanh, c_w=1.5 + h, c_b=0.1)
        - kernel_fixed_point(jnp.tanh, c_w=1.5 - h, c_b=0.1)
    ) / (2 * h)
    assert abs(float(dk - fd)) < 1e-6
    value = bivariate_gaussian_expectation(
        lambda a, b: a * b, jnp.array([1.0, 0.3, 2.0])
    )
    assert abs(float(value) - 0.3) < 1e-12


def test_bad_inputs():
    with pytest.raises(ValueError, match="depth"):
        kernel_recursion(relu, 0, 1.0, c_w=2.0)
    with jaxtyping_off(), pytest.raises(ValueError, match="activation"):
        kernel_recursion("relu", 3, 1.0, c_w=2.0)
    with pytest.raises(ValueError, match="k0"):
        kernel_recursion(relu, 3, float("nan"), c_w=2.0)
    with pytest.raises(ValueError, match="k0"):
        kernel_recursion(relu, 3, jnp.array([1.0, 2.0, 1.0]), c_w=2.0)
    with pytest.raises(ValueError, match="c_w"):
        kernel_recursion(relu, 3, 1.0, c_w=-1.0)
    with pytest.raises(ValueError, match="c_b"):
        kernel_fixed_point(relu, c_w=1.0, c_b=-0.1)
    with pytest.raises(ValueError, match="c_b_values"):
        order_chaos_boundary(jnp.tanh, jnp.array([-0.1]))
    with pytest.raises(ValueError, match="init"):
        critical_initialisation(jnp.tanh, init=(0.0, 1.0))
