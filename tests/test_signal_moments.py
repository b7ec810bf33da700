"""The SELU moment map, its fixed point and its Jacobian (float64 reference checks)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
import pytest
from scipy import integrate

import jaxmodels.signal as jms
from jaxmodels import RESULTS


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def _quad_moments(mean: float, var: float) -> tuple[float, float]:
    """E[selu(z)] and Var[selu(z)] for z ~ N(mean, var), by adaptive quadrature."""
    sd = math.sqrt(var)

    def density(z):
        return math.exp(-((z - mean) ** 2) / (2 * var)) / math.sqrt(2 * math.pi * var)

    def f(z):
        return float(jms.selu(z))

    lo, hi = mean - 12 * sd, mean + 12 * sd
    pieces = [(lo, min(0.0, hi)), (max(0.0, lo), hi)]  # split at the kink

    def expect(g):
        return sum(
            integrate.quad(lambda z: g(z) * density(z), a, b, epsabs=1e-13)[0]
            for a, b in pieces
            if a < b
        )

    m1 = expect(f)
    m2 = expect(lambda z: f(z) ** 2)
    return m1, m2 - m1**2


_POINTS = np.random.default_rng(0).uniform(
    [-1.5, 0.2, -1.0, 0.5], [1.5, 3.0, 1.0, 2.0], size=(5, 4)
).tolist() + [[0.0, 1.0, 0.0, 1.0], [3.0, 0.05, 1.0, 1.0], [-3.0, 4.0, 1.0, 1.5]]


@pytest.mark.parametrize(
    "mu, nu, omega, tau", _POINTS, ids=[f"point{i}" for i in range(len(_POINTS))]
)
def test_closed_form_matches_quadrature(mu, nu, omega, tau):
    mean, var = jms.selu_moment_map(mu, nu, omega=omega, tau=tau)
    ref_mean, ref_var = _quad_moments(mu * omega, nu * tau)
    assert float(mean) == pytest.approx(ref_mean, abs=1e-9)
    assert float(var) == pytest.approx(ref_var, abs=1e-9)


def test_moment_map_stable_far_out():
    # The paper's exp(.) erfc(.) products overflow in float32 here; the map does not.
    with jax.enable_x64(False):
        mean, var = jms.selu_moment_map(
            jnp.array([-30.0, 0.0, 40.0]), jnp.array([60.0, 90.0, 1.0]), omega=1.0
        )
    assert bool(jnp.all(jnp.isfinite(mean)) and jnp.all(jnp.isfinite(var)))
    assert bool(jnp.all(var > 0))


def test_moment_map_broadcasts_and_jits():
    mu = jnp.linspace(-0.5, 0.5, 4)[:, None]
    nu = jnp.linspace(0.5, 1.5, 3)[None, :]
    mean, var = jax.jit(jms.selu_moment_map)(mu, nu)
    assert mean.shape == var.shape == (4, 3)
    one, _ = jms.selu_moment_map(mu[2, 0], nu[0, 1])
    assert float(mean[2, 1]) == pytest.approx(float(one), rel=1e-12)


def test_moment_map_bad_variance():
    with pytest.raises(RuntimeError, match="positive"):
        jms.selu_moment_map(0.0, -1.0)


@pytest.mark.parametrize(
    "solver",
    [None, optx.FixedPointIteration(rtol=1e-12, atol=1e-12)],
    ids=["newton", "iteration"],
)
@pytest.mark.parametrize("y0", [[0.5, 2.0], [-0.3, 0.5], [0.0, 1.0]])
def test_fixed_point_is_zero_one(solver, y0):
    sol = jms.selu_fixed_point(jnp.array(y0), solver=solver)
    assert sol.result == RESULTS.successful
    np.testing.assert_allclose(sol.value, [0.0, 1.0], atol=1e-6)
    assert float(sol.mean) == pytest.approx(0, abs=1e-6)
    assert float(sol.variance) == pytest.approx(1, abs=1e-6)


def test_jacobian_contracts_at_fixed_point():
    sol = jms.selu_fixed_point(jnp.array([0.5, 2.0]))
    assert float(sol.spectral_norm) < 1
    # The paper's value: "the spectral norm of J(0, 1) is 0.7877".
    assert float(sol.spectral_norm) == pytest.approx(0.7877, abs=1e-4)
    # At omega = 0 the input mean does not matter: the first column vanishes.
    np.testing.assert_allclose(sol.jacobian[:, 0], 0, atol=1e-12)


def test_jacobian_matches_finite_differences():
    mu, nu, omega, tau = 0.07, 1.2, 0.08, 1.03
    jac = jms.moment_map_jacobian(mu, nu, omega=omega, tau=tau)
    eps = 1e-6
    for j, (dmu, dnu) in enumerate([(eps, 0.0), (0.0, eps)]):
        up = jms.selu_moment_map(mu + dmu, nu + dnu, omega=omega, tau=tau)
        down = jms.selu_moment_map(mu - dmu, nu - dnu, omega=omega, tau=tau)
        fd = [(float(u) - float(d)) / (2 * eps) for u, d in zip(up, down)]
        np.testing.assert_allclose(jac[:, j], fd, rtol=1e-6, atol=1e-8)


def test_fixed_point_off_normalised_weights():
    omega, tau = 0.08, 1.05  # inside the paper's domain, fixed point moves a little
    sol = jms.selu_fixed_point(omega=omega, tau=tau)
    mean, var = jms.selu_moment_map(sol.value[0], sol.value[1], omega=omega, tau=tau)
    np.testing.assert_allclose([mean, var], sol.value, atol=1e-10)
    assert not np.allclose(sol.value, [0.0, 1.0], atol=1e-3)
    assert float(sol.spectral_norm) < 1
    it = jms.selu_fixed_point(
        omega=omega, tau=tau, solver=optx.FixedPointIteration(rtol=1e-12, atol=1e-12)
    )
    np.testing.assert_allclose(it.value, sol.value, atol=1e-9)


def test_fixed_point_gradient_wrt_tau():
    def nu_star(tau):
        return jms.selu_fixed_point(omega=0.05, tau=tau).variance

    tau, eps = 1.02, 1e-5
    grad = jax.grad(nu_star)(tau)
    fd = (nu_star(tau + eps) - nu_star(tau - eps)) / (2 * eps)
    assert float(grad) == pytest.approx(float(fd), rel=1e-5)
    assert float(grad) > 0  # larger weights, larger fixed-point variance


def test_fixed_point_failure_is_reported():
    solver = optx.FixedPointIteration(rtol=1e-12, atol=1e-12)
    sol = jms.selu_fixed_point(
        jnp.array([0.5, 2.0]), solver=solver, max_steps=2, throw=False
    )
    assert sol.result != RESULTS.successful
    with pytest.raises(RuntimeError):
        jms.selu_fixed_point(jnp.array([0.5, 2.0]), solver=solver, max_steps=2)
