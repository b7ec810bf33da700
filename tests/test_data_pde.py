import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import jaxmodels.data as jmd
from jaxmodels.data import _pde

from .helpers import jaxtyping_off


# ---------------------------------------------------------------------------------
# Burgers
# ---------------------------------------------------------------------------------

# One solve shape (3 functions on 128 points, float32) serves the public generator and
# the float32 accuracy check, so that the adaptive solve compiles once.
_N, _SOLVE = 3, 128


@functools.cache
def _burgers(seed, resolution):
    return jmd.burgers_1d(
        jr.key(seed), _N, resolution=resolution, solve_resolution=_SOLVE, t1=0.5
    )


def _cole_hopf(x, t, nu, amplitude):
    """u = -2 nu phi_x / phi with phi solving the heat equation `phi_t = nu phi_xx`
    from `phi0 = 1.5 + a cos(2 pi x) + 0.3 a sin(4 pi x)` (positive for a <= 1)."""
    e1, e2 = np.exp(-4 * np.pi**2 * nu * t), np.exp(-16 * np.pi**2 * nu * t)
    phi = 1.5 + amplitude * (
        e1 * np.cos(2 * np.pi * x) + 0.3 * e2 * np.sin(4 * np.pi * x)
    )
    phi_x = amplitude * (
        -2 * np.pi * e1 * np.sin(2 * np.pi * x)
        + 1.2 * np.pi * e2 * np.cos(4 * np.pi * x)
    )
    return -2 * nu * phi_x / phi


def test_burgers_shapes_determinism_and_conserved_mean():
    u0, u1 = _burgers(0, 64)
    assert u0.shape == u1.shape == (_N, 64)
    assert u0.dtype == u1.dtype == jnp.float32
    assert np.all(np.isfinite(u0)) and np.all(np.isfinite(u1))
    again = jmd.burgers_1d(
        jr.key(0), _N, resolution=64, solve_resolution=_SOLVE, t1=0.5
    )
    assert np.array_equal(u0, again[0]) and np.array_equal(u1, again[1])
    other = _burgers(1, 64)
    assert not np.allclose(u0, other[0]) and not np.allclose(u1, other[1])
    # Viscosity smooths: the solution is smaller and has less variation than u0.
    assert np.all(np.ptp(u1, axis=1) < np.ptp(u0, axis=1))
    # The periodic equation is in conservation form: the mean is invariant (the
    # spectral mean of the subsampled grid is exact for the dealiased modes).
    np.testing.assert_allclose(u1.mean(axis=1), u0.mean(axis=1), atol=2e-6)


def test_burgers_same_functions_at_every_resolution():
    u0_64, u1_64 = _burgers(0, 64)
    u0_32, u1_32 = _burgers(0, 32)
    assert np.array_equal(u0_64[:, ::2], u0_32) and np.array_equal(u1_64[:, ::2], u1_32)


def test_burgers_initial_condition_has_the_fno_covariance():
    # u0 ~ N(0, 625 (-Laplacian + 25)^-2): on the orthonormal Fourier basis the
    # coefficient of mode k has variance 625 ((2 pi k)^2 + 25)^-2, i.e. Re and Im of
    # the discrete Fourier coefficient c_k = rfft(u0)_k / N have half of it for k >= 1.
    n, size = 4000, 64
    c = np.asarray(_pde._burgers_initial(jr.key(2), n, size, size // 3)) / size
    k = np.arange(6)
    var = 625.0 / ((2 * np.pi * k) ** 2 + 25) ** 2
    expected = np.where(k == 0, var, var / 2)
    # Relative standard error of a variance from 4000 samples: sqrt(2 / 4000) = 2%.
    np.testing.assert_allclose(np.var(c[:, :6].real, axis=0), expected, rtol=0.1)
    np.testing.assert_allclose(np.var(c[:, 1:6].imag, axis=0), expected[1:], rtol=0.1)
    assert np.all(c[:, size // 3 :] == 0)  # the 2/3 rule


def test_burgers_float32_default_tolerances_reach_1e_5_against_cole_hopf():
    nu, t1 = 0.02, 0.5
    x = np.arange(_SOLVE) / _SOLVE
    amplitudes = np.array([0.4, 0.7, 1.0])[:, None]
    u0 = jnp.asarray(_cole_hopf(x, 0.0, nu, amplitudes), jnp.float32)
    mask = jnp.asarray(np.arange(_SOLVE // 2 + 1) < _SOLVE / 3)
    u1 = _pde._burgers_batch(
        u0, jnp.float32(nu), jnp.float32(t1), mask, 1e-6, 1e-6, 4096
    )
    exact = _cole_hopf(x, t1, nu, amplitudes)
    error = np.max(np.abs(np.asarray(u1) - exact)) / np.max(np.abs(exact))
    assert error < 1e-5, error


def test_burgers_converges_spectrally_to_cole_hopf(x64):
    # Truncating to the modes k < N / 3 on a 64-point grid is exactly the 2/3-rule
    # Galerkin method on N points (the products are unaliased either way): solving
    # the three truncations of N = 16, 32, 64 on one grid compiles one solve.
    nu, t1, size = 0.02, 0.5, 64
    x = np.arange(size) / size
    u0 = jnp.asarray(_cole_hopf(x, 0.0, nu, 1.0))[None]
    masks = jnp.asarray(
        [np.arange(size // 2 + 1) < m / 3 for m in (16, 32, 64)], jnp.float64
    )
    u0_hat = jnp.fft.rfft(u0)

    @eqx.filter_jit
    def solve(mask):
        start = jnp.fft.irfft(u0_hat * mask[None], size)
        return _pde._burgers_batch(start, 0.02, 0.5, mask, 1e-12, 1e-12, 20000)[0]

    u1 = jax.vmap(solve)(masks)
    exact = _cole_hopf(x, t1, nu, 1.0)
    errors = np.max(np.abs(np.asarray(u1) - exact), axis=1)
    # Geometric convergence, error ~ exp(-c N): doubling N roughly squares the error
    # (measured: 2.6e-4, 4.0e-7, 2.6e-13), where an algebraic order p would only
    # divide it by 2^p.
    logs = np.log(errors)
    assert np.all(logs[1:] / logs[:-1] > 1.5), errors
    assert errors[2] < 1e-11, errors


# ---------------------------------------------------------------------------------
# The diffusion operator and Darcy flow
# ---------------------------------------------------------------------------------


def _stencil_matrix(a):
    """The matrix of -div(a grad) by explicit loops over the 5-point stencil."""
    r = a.shape[0]
    m, h2 = r - 2, 1.0 / (r - 1) ** 2
    index = lambda i, j: (i - 1) * m + (j - 1)  # noqa: E731
    matrix = np.zeros((m * m, m * m))
    for i in range(1, r - 1):
        for j in range(1, r - 1):
            for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                face = 2 * a[i, j] * a[i + di, j + dj] / (a[i, j] + a[i + di, j + dj])
                matrix[index(i, j), index(i, j)] += face / h2
                if 0 < i + di < r - 1 and 0 < j + dj < r - 1:
                    matrix[index(i, j), index(i + di, j + dj)] -= face / h2
    return matrix


@jax.jit
def _matrix(a):
    """The dense matrix of `diffusion_operator_2d(a)`, column by column."""
    operator = jmd.diffusion_operator_2d(a)
    m = a.shape[0] - 2
    columns = jax.vmap(lambda e: operator.mv(e.reshape(m, m)).ravel())(
        jnp.eye(m * m, dtype=a.dtype)
    )
    return columns.T


def test_diffusion_operator_matches_the_stencil_and_is_spd(x64):
    a = np.exp(np.asarray(jr.normal(jr.key(0), (7, 7))))
    operator = jmd.diffusion_operator_2d(jnp.asarray(a))
    assert operator.in_structure().shape == (5, 5)
    assert operator.out_structure().shape == (5, 5)
    matrix = np.asarray(_matrix(jnp.asarray(a)))
    np.testing.assert_allclose(matrix, _stencil_matrix(a), rtol=1e-12, atol=1e-9)
    x, y = np.asarray(jr.normal(jr.key(1), (2, 25)))
    np.testing.assert_allclose(x @ matrix @ y, y @ matrix @ x, rtol=1e-12)
    assert np.min(np.linalg.eigvalsh(matrix)) > 0


def test_diffusion_operator_has_the_laplacian_spectrum(x64):
    # For a = 1 it is the 5-point Dirichlet Laplacian, with eigenvalues
    # 4 (r - 1)^2 (sin^2(p pi / 2(r - 1)) + sin^2(q pi / 2(r - 1))).
    r = 9
    eig = np.linalg.eigvalsh(np.asarray(_matrix(jnp.ones((r, r)))))
    s = np.sin(np.arange(1, r - 1) * np.pi / (2 * (r - 1))) ** 2
    expected = np.sort((4 * (r - 1) ** 2 * (s[:, None] + s[None, :])).ravel())
    np.testing.assert_allclose(eig, expected, rtol=1e-10)


def test_diffusion_operator_gradient_matches_finite_differences(x64):
    a = jnp.exp(jr.normal(jr.key(0), (6, 6)))
    x, y = jr.normal(jr.key(1), (2, 4, 4))
    energy = lambda a: jnp.sum(y * jmd.diffusion_operator_2d(a).mv(x))  # noqa: E731
    direction = jr.normal(jr.key(2), (6, 6))
    eps = 1e-6

    @jax.jit
    def check(a):
        jvp = jnp.sum(jax.grad(energy)(a) * direction)
        plus, minus = jax.vmap(energy)(
            jnp.stack([a + eps * direction, a - eps * direction])
        )
        return jvp, (plus - minus) / (2 * eps)

    jvp, fd = check(a)
    np.testing.assert_allclose(jvp, fd, rtol=1e-7)


def test_diffusion_operator_converges_at_second_order(x64):
    # Manufactured solution: u = sin(pi x) sin(pi y) exp(x) (zero on the boundary),
    # a = 2 + sin(pi x) cos(2 pi y), f = -div(a grad u) = -(a_x u_x + a_y u_y + a
    # Laplacian u), differentiated by hand.
    pi = np.pi
    errors = []
    for r in (9, 17, 33):
        x, y = np.meshgrid(np.linspace(0, 1, r), np.linspace(0, 1, r), indexing="ij")
        sx, cx = np.sin(pi * x), np.cos(pi * x)
        sy, cy = np.sin(pi * y), np.cos(pi * y)
        u = sx * sy * np.exp(x)
        u_x = np.exp(x) * sy * (pi * cx + sx)
        u_xx = np.exp(x) * sy * (-(pi**2) * sx + 2 * pi * cx + sx)
        u_y = pi * np.exp(x) * sx * cy
        u_yy = -(pi**2) * u
        a = 2 + sx * np.cos(2 * pi * y)
        a_x = pi * cx * np.cos(2 * pi * y)
        a_y = -2 * pi * sx * np.sin(2 * pi * y)
        f = -(a_x * u_x + a_y * u_y + a * (u_xx + u_yy))
        matrix = np.asarray(_matrix(jnp.asarray(a)))
        solution = np.linalg.solve(matrix, f[1:-1, 1:-1].ravel())
        errors.append(np.max(np.abs(solution - u[1:-1, 1:-1].ravel())))
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    assert np.all((ratios > 3.6) & (ratios < 4.4)), (errors, ratios)


@functools.cache
def _darcy(seed, resolution):
    return jmd.darcy_2d(jr.key(seed), 4, resolution=resolution)


def test_darcy_shapes_values_and_accuracy():
    a, u = _darcy(0, 33)
    assert a.shape == u.shape == (4, 33, 33)
    assert a.dtype == u.dtype == jnp.float32
    assert set(np.unique(np.asarray(a))) == {3.0, 12.0}
    # mu is a centred Gaussian: about half of the domain is at 12.
    assert 0.3 < np.mean(np.asarray(a) == 12) < 0.7
    assert np.all(u[:, 0] == 0) and np.all(u[:, -1] == 0)
    assert np.all(u[:, :, 0] == 0) and np.all(u[:, :, -1] == 0)
    assert np.all(u[:, 1:-1, 1:-1] > 0)  # maximum principle for f = 1 > 0
    # Against a dense double-precision solve of the same system.
    with jax.enable_x64(True):
        for ai, ui in zip(np.asarray(a, np.float64), np.asarray(u, np.float64)):
            matrix = np.asarray(_matrix(jnp.asarray(ai)))
            reference = np.linalg.solve(matrix, np.ones(matrix.shape[0]))
            interior = ui[1:-1, 1:-1].ravel()
            residual = matrix @ interior - 1
            assert np.linalg.norm(residual) / np.sqrt(residual.size) < 1e-3
            error = np.max(np.abs(interior - reference)) / np.max(reference)
            assert error < 1e-5, error
    # Comparison: the face coefficients lie in [3, 12], so 3 A(1) <= A(a) <= 12 A(1)
    # and the compliance f^T A(a)^-1 f lies between those of a = 12 and a = 3.
    with jax.enable_x64(True):
        matrix = np.asarray(_matrix(jnp.ones((33, 33), jnp.float64)))
    compliance = np.sum(np.linalg.solve(matrix, np.ones(matrix.shape[0])))
    ours = np.sum(np.asarray(u, np.float64), axis=(1, 2))
    assert np.all((compliance / 12 < ours) & (ours < compliance / 3)), ours


def test_darcy_same_field_at_every_resolution_and_determinism():
    mu_fine = np.asarray(_pde._cosine_field(jr.key(0), 4, 65, 32, 3.0))
    mu_coarse = np.asarray(_pde._cosine_field(jr.key(0), 4, 33, 32, 3.0))
    np.testing.assert_allclose(mu_fine[:, ::2, ::2], mu_coarse, atol=1e-6)
    a, u = _darcy(0, 33)
    again = jmd.darcy_2d(jr.key(0), 4, resolution=33)
    assert np.array_equal(a, again[0]) and np.array_equal(u, again[1])
    assert not np.array_equal(a, jmd.darcy_2d(jr.key(1), 4, resolution=33)[0])


# ---------------------------------------------------------------------------------
# Poisson problems
# ---------------------------------------------------------------------------------


def _smooth_fraction(b, modes):
    """The fraction of the energy of `b` in the sine modes p, q <= `modes`."""
    coeff = np.asarray(_pde._dst1(_pde._dst1(jnp.asarray(b)).swapaxes(-1, -2)))
    total = np.sum(coeff**2, axis=(-1, -2))
    return np.sum(coeff[..., :modes, :modes] ** 2, axis=(-1, -2)) / total


@pytest.mark.parametrize("kind", ["constant", "coefficients", "obstacles"])
def test_poisson_kinds(kind):
    a, b = jmd.poisson_2d(jr.key(0), 4, resolution=34, kind=kind)
    assert a.shape == (4, 34, 34) and b.shape == (4, 32, 32)
    assert a.dtype == b.dtype == jnp.float32
    assert np.all(np.isfinite(a)) and np.all(a > 0)
    np.testing.assert_allclose(
        np.sqrt(np.mean(np.asarray(b) ** 2, axis=(1, 2))), 1, rtol=1e-5
    )
    if kind == "constant":
        assert np.all(a == 1)
    elif kind == "coefficients":
        log_a = np.log(np.asarray(a))
        assert abs(np.mean(log_a)) < 0.5 and 0.5 < np.var(log_a) < 1.5
    else:
        values = set(np.unique(np.asarray(a)).tolist())
        assert values <= {np.float32(1e-2), 1.0, np.float32(1e2)} and 1.0 in values
        assert len(values) > 1
    again = jmd.poisson_2d(jr.key(0), 4, resolution=34, kind=kind)
    assert np.array_equal(a, again[0]) and np.array_equal(b, again[1])


def test_poisson_right_hand_sides_mix_smooth_and_rough_parts():
    _, smooth = jmd.poisson_2d(
        jr.key(0), 4, resolution=34, kind="constant", roughness=0.0
    )
    _, mixed = jmd.poisson_2d(jr.key(0), 4, resolution=34, kind="constant")
    # The smooth part lies in the sine modes p, q <= 16; white noise of weight 0.25
    # (relative to the unit-RMS smooth part) puts its share, 3/4 of 0.25^2 / (1 +
    # 0.25^2), above them.
    np.testing.assert_allclose(_smooth_fraction(smooth, 16), 1.0, atol=1e-6)
    rough = 1 - _smooth_fraction(mixed, 16)
    expected = 0.75 * 0.25**2 / (1 + 0.25**2)
    assert np.all(np.abs(rough - expected) < 0.3 * expected), rough


def test_poisson_composes_with_jit_and_vmap():
    keys = jr.split(jr.key(0), 2)
    fn = jax.jit(
        jax.vmap(lambda k: jmd.poisson_2d(k, 4, resolution=34, kind="constant"))
    )
    a, b = fn(keys)
    eager = jmd.poisson_2d(keys[1], 4, resolution=34, kind="constant")
    np.testing.assert_array_equal(a[1], eager[0])
    np.testing.assert_allclose(b[1], eager[1], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------
# Antiderivative
# ---------------------------------------------------------------------------------


def test_antiderivative_is_exact():
    u, s = jmd.antiderivative_1d(jr.key(0), 8, resolution=101)
    assert u.shape == s.shape == (8, 101) and u.dtype == s.dtype == jnp.float32
    assert np.all(s[:, 0] == 0)
    u, s = np.asarray(u, np.float64), np.asarray(s, np.float64)
    h = 1 / 100
    # Fourth-order central differences: truncation h^4 |u^(5)| / 30 ~ 1e-4 (for
    # l = 0.2, u^(5) has standard deviation sqrt(945) / l^5 ~ 1e5), float32 rounding of
    # s (~1e-6) times 18 / 12 h ~ 2e-4.
    fd = (-s[:, 4:] + 8 * s[:, 3:-1] - 8 * s[:, 1:-3] + s[:, :-4]) / (12 * h)
    np.testing.assert_allclose(fd, u[:, 2:-2], atol=1e-3)
    # The composite trapezoidal rule: error <= h^2 max|u'| / 12 ~ 2e-4.
    trapezoid = np.concatenate(
        [np.zeros((8, 1)), np.cumsum((u[:, 1:] + u[:, :-1]) * h / 2, axis=1)], axis=1
    )
    np.testing.assert_allclose(trapezoid, s, atol=5e-4)


def test_antiderivative_inputs_have_the_rbf_covariance():
    u, _ = jmd.antiderivative_1d(jr.key(1), 20000, resolution=11)
    x = np.linspace(0, 1, 11)
    kernel = np.exp(-((x[:, None] - x[None, :]) ** 2) / (2 * 0.2**2))
    covariance = np.cov(np.asarray(u, np.float64), rowvar=False)
    # Standard error of a covariance entry from 20000 samples: <= sqrt(2 / 20000) = 0.01.
    np.testing.assert_allclose(covariance, kernel, atol=0.05)


def test_antiderivative_composes_with_jit_and_vmap():
    keys = jr.split(jr.key(0), 3)
    u, s = jax.jit(jax.vmap(lambda k: jmd.antiderivative_1d(k, 2, resolution=7)))(keys)
    eager = jmd.antiderivative_1d(keys[2], 2, resolution=7)
    np.testing.assert_allclose(u[2], eager[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(s[2], eager[1], rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------

_BAD = [
    (lambda: jmd.burgers_1d(jr.key(0), 0), "`n`"),
    (
        lambda: jmd.burgers_1d(jr.key(0), 1, resolution=2, solve_resolution=8),
        "`resolution`",
    ),
    (lambda: jmd.burgers_1d(jr.key(0), 1, resolution=48), "`resolution`"),
    (
        lambda: jmd.burgers_1d(jr.key(0), 1, resolution=4, solve_resolution=4),
        "`solve_resolution`",
    ),
    (lambda: jmd.burgers_1d(jr.key(0), 1, nu=0.0), "`nu`"),
    (lambda: jmd.burgers_1d(jr.key(0), 1, t1=-1.0), "`t1`"),
    (lambda: jmd.darcy_2d(jr.key(0), 0), "`n`"),
    (lambda: jmd.darcy_2d(jr.key(0), 1, resolution=2), "`resolution`"),
    (lambda: jmd.darcy_2d(jr.key(0), 1, cg_steps=0), "`cg_steps`"),
    (lambda: jmd.poisson_2d(jr.key(0), 1, kind="fluid"), "`kind`"),
    (lambda: jmd.poisson_2d(jr.key(0), 1, resolution=2), "`resolution`"),
    (lambda: jmd.poisson_2d(jr.key(0), 1, roughness=-1.0), "`roughness`"),
    (lambda: jmd.diffusion_operator_2d(jnp.ones((5, 6))), "`a`"),
    (lambda: jmd.diffusion_operator_2d(jnp.ones((2, 2))), "`a`"),
    (lambda: jmd.diffusion_operator_2d(jnp.ones((2, 5, 5))), "`a`"),
    (lambda: jmd.antiderivative_1d(jr.key(0), 0), "`n`"),
    (lambda: jmd.antiderivative_1d(jr.key(0), 1, resolution=1), "`resolution`"),
    (lambda: jmd.antiderivative_1d(jr.key(0), 1, length_scale=0.01), "`length_scale`"),
]


@pytest.mark.parametrize(
    "fn, name", _BAD, ids=[f"{i}-{n}" for i, (_, n) in enumerate(_BAD)]
)
def test_bad_inputs_raise_naming_the_argument(fn, name):
    with jaxtyping_off(), pytest.raises(ValueError, match=name):
        fn()


def test_antiderivative_series_has_the_rbf_covariance_exactly():
    # u = coefficients @ to_u with standard normal coefficients, so its covariance is
    # to_u^T to_u: the periodised kernel differs from the RBF kernel by at most
    # exp(-(P - 1)^2 / 2 l^2) and the cut spectrum by exp(-50).
    x = np.linspace(0, 1, 9)
    for length_scale in (0.05, 0.2, 1.0):
        to_u, _ = _pde._antiderivative_basis(9, length_scale)
        kernel = np.exp(-((x[:, None] - x[None, :]) ** 2) / (2 * length_scale**2))
        np.testing.assert_allclose(to_u.T @ to_u, kernel, atol=1e-12)
