import math
from collections.abc import Callable
from typing import ClassVar

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
import numpy as np
from jaxtyping import Array, ArrayLike, Complex, Float, PRNGKeyArray, Real

from ._split import _check_at_least, _check_scale


# ---------------------------------------------------------------------------------
# Burgers' equation
# ---------------------------------------------------------------------------------

# The initial condition is drawn with this many Fourier modes whatever the resolution
# (then cut at the dealiasing limit of the solve grid): the same key gives the same
# function at every resolution. Mode 256 has standard deviation 1e-5 of mode 0.
_BURGERS_MODES = 256


class _IntegratingFactorRK(dfx.AbstractAdaptiveSolver):
    """An integrating-factor (Lawson) Runge--Kutta method for `y' = L y + N(y)` with
    `L` diagonal in Fourier space, as a diffrax solver.

    Each step from `t0` solves for `w(s) = exp(-L (s - t0)) y(s)` with the explicit
    tableau of `tableau`, so the stiff linear part is integrated exactly and every
    exponential is a decay `exp(-rate (c_i - c_j) h)` with `c_i >= c_j` (the integrating
    factor is reset each step: a global one, `exp(nu k^2 t)`, overflows at `nu k^2 t >
    88`). The state `y` is real, on the periodic grid, `L` is `-rate` on its real-FFT
    coefficients, and the term is the nonlinear part `N`. Reference: Lawson,
    "Generalized Runge-Kutta processes for stable systems with large Lipschitz
    constants" (1967).
    """

    rate: Float[Array, " modes"]
    tableau: ClassVar[dfx.ButcherTableau] = dfx.Tsit5.tableau
    term_structure: ClassVar = dfx.AbstractTerm
    interpolation_cls: ClassVar[Callable[..., dfx.LocalLinearInterpolation]] = (
        dfx.LocalLinearInterpolation
    )

    def order(self, terms):
        return 5

    def _decay(self, tau):
        return jnp.exp(-self.rate * tau)

    def init(self, terms, t0, t1, y0, args):
        return jnp.fft.rfft(terms.vf(t0, y0, args))

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del made_jump  # the vector field has no jumps
        tab = self.tableau
        n = y0.shape[-1]
        h = t1 - t0
        c = np.concatenate([[0.0], tab.c])
        y0_hat = jnp.fft.rfft(y0)
        stages = [solver_state]
        for i, a_row in enumerate(tab.a_lower, start=1):
            z_hat = self._decay(c[i] * h) * y0_hat
            for j, a in enumerate(a_row):
                if a != 0:
                    z_hat = z_hat + (h * a) * self._decay((c[i] - c[j]) * h) * stages[j]
            z = jnp.fft.irfft(z_hat, n)
            stages.append(jnp.fft.rfft(terms.vf(t0 + c[i] * h, z, args)))
        y1_hat = self._decay(h) * y0_hat
        err_hat = jnp.zeros_like(y0_hat)
        for j, (b, e) in enumerate(zip(tab.b_sol, tab.b_error)):
            decayed = h * self._decay((1 - c[j]) * h) * stages[j]
            if b != 0:
                y1_hat = y1_hat + b * decayed
            if e != 0:
                err_hat = err_hat + e * decayed
        y1 = jnp.fft.irfft(y1_hat, n)
        y_error = jnp.fft.irfft(err_hat, n)
        # First same as last: the last stage sits at y1 (a_lower[-1] == b_sol).
        return y1, y_error, dict(y0=y0, y1=y1), stages[-1], dfx.RESULTS.successful

    def func(self, terms, t0, y0, args):
        linear = jnp.fft.irfft(-self.rate * jnp.fft.rfft(y0), y0.shape[-1])
        return linear + terms.vf(t0, y0, args)


def _check_resolution(resolution: int, name: str, minimum: int) -> None:
    if not isinstance(resolution, int | np.integer):
        raise ValueError(f"`{name}` must be a Python int; got {resolution!r}.")
    _check_at_least(resolution, name, minimum)


def _burgers_initial(
    key: PRNGKeyArray, n: int, solve_resolution: int, cutoff: int
) -> Complex[Array, "{n} modes"]:
    """Real-FFT coefficients on the solve grid of u0 ~ N(0, 625 (-Laplacian + 25)^-2)."""
    k = np.arange(_BURGERS_MODES + 1)
    # Standard deviations of the coefficients on the orthonormal basis 1,
    # sqrt(2) cos(2 pi k x), sqrt(2) sin(2 pi k x): eigenvalues (2 pi k)^2 of -Laplacian.
    std = 25.0 / ((2 * np.pi * k) ** 2 + 25.0)
    re, im = jr.normal(key, (2, n, _BURGERS_MODES + 1), jnp.float32)
    # rfft convention: u(x_j) = irfft(c)_j with c_k = N sqrt(2) std_k (re - i im) / 2.
    scale = solve_resolution * np.where(k == 0, std, std / np.sqrt(2))
    coeffs = scale[None] * jax.lax.complex(re, -jnp.where(k[None] == 0, 0.0, im))
    kept = min(cutoff, _BURGERS_MODES + 1)
    out = jnp.zeros((n, solve_resolution // 2 + 1), coeffs.dtype)
    return out.at[:, :kept].set(coeffs[:, :kept])


def burgers_1d(
    key: PRNGKeyArray,
    n: int,
    *,
    resolution: int = 1024,
    nu: Real[ArrayLike, ""] = 0.1,
    t1: Real[ArrayLike, ""] = 1.0,
    solve_resolution: int = 1024,
    rtol: float = 1e-6,
    atol: float = 1e-6,
    max_steps: int = 4096,
) -> tuple[Float[Array, "{n} {resolution}"], Float[Array, "{n} {resolution}"]]:
    """Initial conditions and solutions of the viscous Burgers equation.

    The 1-D benchmark of Li et al., "Fourier Neural Operator for Parametric Partial
    Differential Equations" (2020): `u_t + (u^2 / 2)_x = nu u_xx` on the periodic unit
    interval, `u0 ~ N(0, 625 (-Laplacian + 25 I)^-2)` (a Gaussian random field sampled
    in Fourier space, mean mode included, 256 modes at most), and the target the
    solution `u(t1)`. Solved pseudo-spectrally on `solve_resolution` points with the 2/3
    dealiasing rule (modes `k < solve_resolution / 3` are kept, including in `u0`),
    integrated with diffrax: an adaptive integrating-factor (Lawson) method on the
    Tsit5 tableau, so that the stiff diffusion is exact and only the advection is
    integrated explicitly, with a PID step-size controller at `rtol`, `atol`. Both
    functions are then sampled on every `solve_resolution / resolution`-th point, so one
    key gives the same functions at every resolution dividing `solve_resolution`.

    **Arguments:**

    - `key`: a PRNG key.
    - `n`: the number of pairs, at least 1.
    - `resolution`: the number of output grid points `x_i = i / resolution`, at least
        4 and dividing `solve_resolution`.
    - `nu`: the viscosity, positive.
    - `t1`: the final time, positive.
    - `solve_resolution`: the number of points the equation is solved on, at least 8.
    - `rtol`, `atol`: the tolerances of the step-size controller.
    - `max_steps`: the most steps of the time integration.

    **Returns:**

    A tuple `(u0, u1)` of float32 arrays of shape `(n, resolution)`: the initial
    conditions and the solutions at `t1`.

    **Raises:**

    `ValueError` naming the argument if `n < 1`, `solve_resolution < 8`, `resolution <
    4` or not a divisor of `solve_resolution`, or `nu` or `t1` is not positive. At run
    time, an error if the integration needs more than `max_steps` steps.
    """
    _check_at_least(n, "n", 1)
    _check_resolution(solve_resolution, "solve_resolution", 8)
    _check_resolution(resolution, "resolution", 4)
    if solve_resolution % resolution != 0:
        raise ValueError(
            f"`resolution` must divide `solve_resolution` ({solve_resolution}); got "
            f"{resolution}."
        )
    nu = _check_scale(nu, "nu", positive=True)
    t1 = _check_scale(t1, "t1", positive=True)
    size = solve_resolution
    cutoff = -(-size // 3)  # modes k < size / 3 survive the 2/3 rule
    mask = np.arange(size // 2 + 1) < size / 3
    u0_hat = _burgers_initial(key, n, size, cutoff)
    u0 = jnp.fft.irfft(u0_hat, size)
    dtype = u0.dtype
    u1 = _burgers_batch(
        u0,
        jnp.asarray(nu, dtype),
        jnp.asarray(t1, dtype),
        jnp.asarray(mask),
        rtol,
        atol,
        max_steps,
    )
    stride = size // resolution
    return u0[:, ::stride].astype(jnp.float32), u1[:, ::stride].astype(jnp.float32)


def _advection(t, u, wavenumbers):
    # -(u^2 / 2)_x, with the product dealiased by the 2/3 rule (`wavenumbers` is zero
    # on the modes it removes). Real arguments: diffrax warns on complex ones.
    return jnp.fft.irfft(-0.5j * wavenumbers * jnp.fft.rfft(u * u), u.shape[-1])


def _burgers_solve(u0, rate, wavenumbers, t1, rtol, atol, max_steps):
    """Solve Burgers' equation from one function `u0` on the full periodic grid."""
    sol = dfx.diffeqsolve(
        dfx.ODETerm(_advection),
        _IntegratingFactorRK(rate=rate),
        0.0,
        t1,
        dt0=1e-3 * t1,
        y0=u0,
        args=wavenumbers,
        saveat=dfx.SaveAt(t1=True),
        stepsize_controller=dfx.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps,
    )
    return sol.ys[0]


@eqx.filter_jit
def _burgers_batch(u0, nu, t1, mask, rtol, atol, max_steps):
    size = u0.shape[-1]
    k = jnp.asarray(2 * np.pi * np.arange(size // 2 + 1), u0.dtype)
    rate, kept = nu * k**2, k * mask

    def solve(y0):
        return _burgers_solve(y0, rate, kept, t1, rtol, atol, max_steps)

    return jax.vmap(solve)(u0)


# ---------------------------------------------------------------------------------
# Diffusion on the unit square
# ---------------------------------------------------------------------------------


def _check_coefficient(a) -> None:
    shape = jnp.shape(a)
    if len(shape) != 2 or shape[0] != shape[1] or shape[0] < 3:
        raise ValueError(
            "`a` must be a square coefficient field of shape (r, r) with r >= 3 on "
            f"the node grid; got shape {shape}."
        )


def _harmonic(a, b):
    return 2 * a * b / (a + b)


def diffusion_operator_2d(a: Float[ArrayLike, "r r"]) -> lx.FunctionLinearOperator:
    """The 5-point finite-difference operator of `-div(a grad u)` on the unit square.

    With `r` nodes per side (`h = 1 / (r - 1)`, node `(i, j)` at `(i h, j h)`, the first
    axis `x`) and `u = 0` on the boundary, the unknowns are the `(r - 2)^2` interior
    values and `(A u)_ij = sum over the 4 neighbours of a_f (u_ij - u_nb) / h^2`, where
    `a_f` on the face between two nodes is the harmonic mean of their coefficients (the
    standard choice for piecewise constant coefficients: it is the exact flux of a 1-D
    interface between two constant media). The operator is symmetric, and positive
    definite when `a > 0`; it is tagged symmetric and positive semidefinite, so lineax
    solves it with `lx.CG`.

    **Arguments:**

    - `a`: the coefficient field, of shape `(r, r)` with `r >= 3`, on the node grid
        including the boundary.

    **Returns:**

    A matrix-free `lineax.FunctionLinearOperator` on arrays of shape `(r - 2, r - 2)`.

    **Raises:**

    `ValueError` naming `a` if it is not square of side at least 3.
    """
    _check_coefficient(a)
    a = jnp.asarray(a)
    if not jnp.issubdtype(a.dtype, jnp.floating):
        a = a.astype(jnp.float32)
    r = a.shape[0]
    inv_h2 = (r - 1) ** 2
    ax = _harmonic(a[:-1, :], a[1:, :])[:, 1:-1]  # faces (i + 1/2, j), shape (r-1, r-2)
    ay = _harmonic(a[:, :-1], a[:, 1:])[1:-1, :]  # faces (i, j + 1/2), shape (r-2, r-1)

    def matvec(u):
        padded = jnp.pad(u, 1)
        fx = ax * (padded[1:, 1:-1] - padded[:-1, 1:-1])
        fy = ay * (padded[1:-1, 1:] - padded[1:-1, :-1])
        return -inv_h2 * ((fx[1:] - fx[:-1]) + (fy[:, 1:] - fy[:, :-1]))

    structure = jax.ShapeDtypeStruct((r - 2, r - 2), a.dtype)
    return lx.FunctionLinearOperator(
        matvec, structure, tags=(lx.symmetric_tag, lx.positive_semidefinite_tag)
    )


def _dst1(x: Float[Array, "*batch m"]) -> Float[Array, "*batch m"]:
    """The type-I discrete sine transform along the last axis, via a real FFT of the
    odd extension: `y_k = sum_j x_j sin(pi j k / (m + 1))`, `j, k = 1..m`."""
    zero = jnp.zeros((*x.shape[:-1], 1), x.dtype)
    odd = jnp.concatenate([zero, x, zero, -x[..., ::-1]], axis=-1)
    return -0.5 * jnp.fft.rfft(odd)[..., 1:-1].imag.astype(x.dtype)


def _poisson_preconditioner(
    r: int, scale: Float[Array, ""], dtype
) -> lx.FunctionLinearOperator:
    """The inverse of `scale` times the constant-coefficient 5-point Laplacian, applied
    exactly with sine transforms (its eigenvectors). Against a coefficient field with
    values in `[lo, hi]`, the preconditioned system has condition number at most
    `hi / lo`, whatever the resolution."""
    m = r - 2
    s = np.sin(np.pi * np.arange(1, m + 1) / (2 * (m + 1))) ** 2
    eig = 4 * (r - 1) ** 2 * (s[:, None] + s[None, :])
    factor = jnp.asarray((2 / (m + 1)) ** 2 / eig, dtype) / scale

    def apply(v):
        w = _dst1(_dst1(v).T).T
        return _dst1(_dst1(factor * w).T).T

    structure = jax.ShapeDtypeStruct((m, m), dtype)
    return lx.FunctionLinearOperator(
        apply, structure, tags=(lx.symmetric_tag, lx.positive_semidefinite_tag)
    )


def _cosine_field(
    key: PRNGKeyArray, n: int, resolution: int, modes: int, tau: float
) -> Float[Array, "{n} {resolution} {resolution}"]:
    """Samples of N(0, (-Laplacian + tau^2 I)^-2) with zero Neumann boundary conditions
    on the unit square, on the node grid, from the first `modes` cosine modes per axis,
    the constant mode removed (as in the FNO paper's data)."""
    k = np.arange(modes)
    lam = np.pi**2 * (k[:, None] ** 2 + k[None, :] ** 2)
    std = 1.0 / (lam + tau**2)
    std[0, 0] = 0.0
    x = np.linspace(0.0, 1.0, resolution)
    # Orthonormal basis: 1 and sqrt(2) cos(pi k x).
    basis = np.where(k[:, None] == 0, 1.0, np.sqrt(2)) * np.cos(np.pi * k[:, None] * x)
    xi = jr.normal(key, (n, modes, modes), jnp.float32) * jnp.asarray(
        std[None], jnp.float32
    )
    basis = jnp.asarray(basis, jnp.float32)
    return jnp.einsum("kx,nkl,ly->nxy", basis, xi, basis)


_DARCY_MODES = 32


def darcy_2d(
    key: PRNGKeyArray,
    n: int,
    *,
    resolution: int = 64,
    cg_steps: int = 25,
) -> tuple[
    Float[Array, "{n} {resolution} {resolution}"],
    Float[Array, "{n} {resolution} {resolution}"],
]:
    """Coefficient fields and solutions of the 2-D Darcy flow problem.

    The 2-D benchmark of Li et al., "Fourier Neural Operator for Parametric Partial
    Differential Equations" (2020): `-div(a grad u) = 1` on the unit square with `u = 0`
    on the boundary. The coefficient is `a = 12` where a Gaussian random field `mu ~
    N(0, (-Laplacian + 9 I)^-2)` is non-negative and `3` elsewhere; `mu` is the
    zero-Neumann cosine series of the paper (constant mode removed), truncated at 32
    modes per axis and evaluated on the node grid, so that one key gives the same field
    at every resolution. The problem is discretised by `diffusion_operator_2d` (harmonic
    face means) and solved with lineax's conjugate gradients, preconditioned by an exact
    fast (sine-transform) inverse of the constant-coefficient Laplacian: the condition
    number is then at most 12 / 3 = 4 at every resolution, so each iteration divides
    the energy-norm error by at least `(2 - 1) / (2 + 1) = 3`: a fixed `cg_steps = 25`
    iterations reach `2 * 3^-25 ~ 1e-12`, far below float32 rounding (measured: 1e-7
    relative to a float64 solve at resolutions 32 to 128). A residual-based stopping
    test is not used: in float32 the true residual of an operator scaled by `1 / h^2`
    stalls at about `1e-3` at resolution 128 while the solution is already exact.

    **Arguments:**

    - `key`: a PRNG key.
    - `n`: the number of pairs, at least 1.
    - `resolution`: the number of nodes per side (boundary included), at least 3.
        The preconditioner's sine transforms are FFTs of length `2 (resolution - 1)`:
        `2^k + 1` is fastest (measured, 100 samples: 1.7 s at 129, 7.2 s at 128).
    - `cg_steps`: the number of conjugate-gradient iterations, at least 1.

    **Returns:**

    A tuple `(a, u)` of float32 arrays of shape `(n, resolution, resolution)`: the
    coefficients and the solutions (zero on the boundary), indexed `[i, j]` at
    `(x_i, y_j) = (i, j) / (resolution - 1)`.

    **Raises:**

    `ValueError` naming the argument if `n < 1`, `resolution < 3` or `cg_steps < 1`.
    """
    _check_at_least(n, "n", 1)
    _check_resolution(resolution, "resolution", 3)
    _check_at_least(cg_steps, "cg_steps", 1)
    return _darcy(key, n, resolution, cg_steps)


@eqx.filter_jit
def _darcy(key, n, resolution, cg_steps):
    mu = _cosine_field(key, n, resolution, _DARCY_MODES, 3.0)
    a = jnp.where(mu >= 0, 12.0, 3.0).astype(jnp.float32)
    f = jnp.ones((resolution - 2, resolution - 2), jnp.float32)
    u = jax.vmap(lambda ai: _diffusion_solve(ai, f, cg_steps))(a)
    return a, jnp.pad(u, ((0, 0), (1, 1), (1, 1)))


def _diffusion_solve(a, f, steps):
    """Solve `diffusion_operator_2d(a) u = f` by `steps` preconditioned conjugate
    gradient iterations."""
    operator = diffusion_operator_2d(a)
    # Any positive scale works for the bound; the mean makes the first step good.
    pre = _poisson_preconditioner(a.shape[0], jnp.mean(a), a.dtype)
    # No tolerance: exactly `steps` iterations (lineax reports success).
    solver = lx.CG(rtol=0.0, atol=0.0, max_steps=steps)
    sol = lx.linear_solve(operator, f, solver, options={"preconditioner": pre})
    return sol.value


# ---------------------------------------------------------------------------------
# Poisson problems for learned solvers
# ---------------------------------------------------------------------------------

_POISSON_KINDS = ("constant", "coefficients", "obstacles")
_OBSTACLES = 3
_OBSTACLE_LOW, _OBSTACLE_HIGH = 1e-2, 1e2
_RHS_MODES = 16


def _log_normal(key, n, resolution):
    k = np.arange(_DARCY_MODES)
    lam = np.pi**2 * (k[:, None] ** 2 + k[None, :] ** 2)
    std = 1.0 / (lam + 9.0)
    std[0, 0] = 0.0
    var = np.sum(std**2)
    # log a has average pointwise variance 1 (the basis is orthonormal).
    g = _cosine_field(key, n, resolution, _DARCY_MODES, 3.0) / np.sqrt(var)
    return jnp.exp(g)


def _obstacles(key, n, resolution):
    # One draw for every random number (the random-bit generator dominates compile time).
    draws = jr.uniform(key, (n, _OBSTACLES, 5), jnp.float32)
    corner = 0.1 + 0.6 * draws[..., 0:2]
    side = 0.1 + 0.2 * draws[..., 2:4]
    value = jnp.where(draws[..., 4] < 0.5, _OBSTACLE_HIGH, _OBSTACLE_LOW)
    x = jnp.linspace(0.0, 1.0, resolution)[None, None, None]
    lo, hi = corner[..., None], (corner + side)[..., None]
    inside = (x >= lo) & (x <= hi)  # (n, obstacles, 2, resolution)
    inside = inside[:, :, 0, :, None] & inside[:, :, 1, None, :]
    # Later obstacles are drawn over earlier ones.
    a = jnp.ones((n, resolution, resolution), jnp.float32)
    for i in range(_OBSTACLES):
        a = jnp.where(inside[:, i], value[:, i, None, None], a)
    return a


def _right_hand_sides(key, n, resolution, roughness):
    m = resolution - 2
    p = np.arange(1, _RHS_MODES + 1)
    x = np.arange(1, m + 1) / (m + 1)
    basis = jnp.asarray(np.sin(np.pi * p[:, None] * x), jnp.float32)
    std = 1.0 / (p[:, None] ** 2 + p[None, :] ** 2)
    draws = jr.normal(key, (n, _RHS_MODES**2 + m * m), jnp.float32)
    coeffs = draws[:, : _RHS_MODES**2].reshape(n, _RHS_MODES, _RHS_MODES)
    coeffs = coeffs * jnp.asarray(std[None], jnp.float32)
    noise = draws[:, _RHS_MODES**2 :].reshape(n, m, m)
    smooth = jnp.einsum("px,npq,qy->nxy", basis, coeffs, basis)
    smooth = smooth / jnp.sqrt(jnp.mean(smooth**2, axis=(1, 2), keepdims=True))
    b = smooth + roughness * noise
    return b / jnp.sqrt(jnp.mean(b**2, axis=(1, 2), keepdims=True))


def poisson_2d(
    key: PRNGKeyArray,
    n: int,
    *,
    resolution: int = 64,
    kind: str = "coefficients",
    roughness: float = 0.25,
) -> tuple[
    Float[Array, "{n} {resolution} {resolution}"],
    Float[Array, "{n} {resolution-2} {resolution-2}"],
]:
    """Coefficient fields and right-hand sides of 2-D diffusion problems, for learned
    linear solvers.

    The systems `diffusion_operator_2d(a[i]) x = b[i]` are the training and test
    problems of learned iterative solvers such as Kaneda et al., "A Deep Conjugate
    Direction Method for Iteratively Solving Linear Systems" (2023), which learns on
    Poisson problems from fluid simulation, with and without obstacles. Coefficient
    fields by `kind`:

    - `"constant"`: all ones (the Poisson equation);
    - `"coefficients"`: smooth log-normal fields, `log a` a Gaussian random field `~
        N(0, (-Laplacian + 9 I)^-2)` (cosine series, 32 modes per axis) scaled to unit
        average variance, so `a` spans about `e^-3` to `e^3`;
    - `"obstacles"`: ones, with 3 random axis-aligned rectangles (corners uniform on
        `[0.1, 0.7]^2`, sides on `[0.1, 0.3]`) of coefficient `1e-2` (nearly insulating)
        or `1e2` (nearly conducting) with equal probability.

    Right-hand sides mix a smooth and a rough part, like the training vectors of the
    paper that combine low (smooth) and high (oscillating) eigenvectors of the Laplacian:
    a sine series with coefficients `N(0, 1) / (p^2 + q^2)` over modes `p, q <= 16`,
    normalised to unit root mean square, plus `roughness` times white noise; each `b[i]`
    is then normalised to unit root mean square.

    **Arguments:**

    - `key`: a PRNG key.
    - `n`: the number of problems, at least 1.
    - `resolution`: the number of nodes per side, at least 3 (`r - 2` unknowns per side).
    - `kind`: `"constant"`, `"coefficients"` or `"obstacles"`.
    - `roughness`: the weight of the white-noise part of `b`, non-negative.

    **Returns:**

    A tuple `(a, b)` of float32 arrays, of shapes `(n, r, r)` and `(n, r - 2, r - 2)`.

    **Raises:**

    `ValueError` naming the argument if `n < 1`, `resolution < 3`, `kind` is unknown or
    `roughness < 0`.
    """
    _check_at_least(n, "n", 1)
    _check_resolution(resolution, "resolution", 3)
    if kind not in _POISSON_KINDS:
        raise ValueError(f"`kind` must be one of {_POISSON_KINDS}; got {kind!r}.")
    roughness = _check_scale(roughness, "roughness")
    return _poisson(key, n, resolution, kind, jnp.asarray(roughness, jnp.float32))


@eqx.filter_jit
def _poisson(key, n, resolution, kind, roughness):
    akey, bkey = jr.split(key)
    if kind == "constant":
        a = jnp.ones((n, resolution, resolution), jnp.float32)
    elif kind == "coefficients":
        a = _log_normal(akey, n, resolution)
    else:
        a = _obstacles(akey, n, resolution)
    b = _right_hand_sides(bkey, n, resolution, roughness)
    return a.astype(jnp.float32), b.astype(jnp.float32)


# ---------------------------------------------------------------------------------
# Antiderivative
# ---------------------------------------------------------------------------------


def antiderivative_1d(
    key: PRNGKeyArray,
    n: int,
    *,
    resolution: int = 100,
    length_scale: float = 0.2,
) -> tuple[Float[Array, "{n} {resolution}"], Float[Array, "{n} {resolution}"]]:
    """Functions on `[0, 1]` and their antiderivatives.

    The antiderivative operator `s(x) = integral_0^x u(y) dy` of Lu et al., "Learning
    nonlinear operators via DeepONet based on the universal approximation theorem of
    operators" (2021), with `u` from a Gaussian random field with the RBF kernel
    `exp(-(x - y)^2 / (2 l^2))`, `l = length_scale`. The field is a finite cosine/sine
    series `u(x) = sum_m sqrt(v_m) (xi_m cos(w_m x) + eta_m sin(w_m x))`, with standard
    normal `xi_m`, `eta_m`, on the frequencies `w_m = 2 pi m / P`, `P = max(4, 16 l)`;
    the variances `v_m` are the weights of the trapezoidal rule applied to the kernel's
    spectral density (`m <= 10 P / (2 pi l)`). By Poisson summation its
    covariance is the RBF kernel made `P`-periodic, which on `[0, 1]` differs from it by
    less than `exp(-(P - 1)^2 / (2 l^2)) <= exp(-72)`, and the frequencies stop where
    the density is `exp(-50)` of its peak. So `u` is that Gaussian field to float
    precision, and `s` is the exact integral of the series.

    **Arguments:**

    - `key`: a PRNG key.
    - `n`: the number of pairs, at least 1.
    - `resolution`: the number of points `x_i = i / (resolution - 1)`, at least 2.
    - `length_scale`: the kernel's length scale, in `[0.05, 1]` (the series is sized
        for it; shorter ones need many more modes, longer ones a longer period).

    **Returns:**

    A tuple `(u, s)` of float32 arrays of shape `(n, resolution)`, with `s[:, 0] == 0`.

    **Raises:**

    `ValueError` naming the argument if `n < 1`, `resolution < 2` or `length_scale` is
    not in `[0.05, 1]`.
    """
    _check_at_least(n, "n", 1)
    _check_resolution(resolution, "resolution", 2)
    length_scale = float(length_scale)
    if not 0.05 <= length_scale <= 1.0:
        raise ValueError(f"`length_scale` must be in [0.05, 1]; got {length_scale}.")
    to_u, to_s = _antiderivative_basis(resolution, length_scale)
    coeffs = jr.normal(key, (n, to_u.shape[0]), jnp.float32)
    to_u, to_s = jnp.asarray(to_u, jnp.float32), jnp.asarray(to_s, jnp.float32)
    return coeffs @ to_u, coeffs @ to_s


def _antiderivative_basis(
    resolution: int, length_scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """The values on the grid of the series' terms and of their integrals from 0."""
    # The trapezoidal rule with step 2 pi / P on the spectral density sums the kernel
    # over shifts by P (Poisson summation): P = max(4, 16 l) keeps the shifted copies
    # below exp(-(P - 1)^2 / 2 l^2) <= exp(-72) on [0, 1].
    period = 4.0 * max(1.0, length_scale * 4.0)
    step = 2 * np.pi / period
    # Up to l w = 10, where the density has fallen to exp(-50) of its peak.
    modes = math.ceil(10.0 / (length_scale * step))
    w = step * np.arange(modes + 1)
    density = length_scale / np.sqrt(2 * np.pi) * np.exp(-0.5 * (length_scale * w) ** 2)
    # Trapezoidal weights over the whole line, folded onto w >= 0.
    var = np.where(w == 0, step * density, 2 * step * density)
    x = np.linspace(0.0, 1.0, resolution)
    wx = w[:, None] * x
    safe_w = np.where(w == 0, 1.0, w)[:, None]
    int_cos = np.where(w[:, None] == 0, x, np.sin(wx) / safe_w)
    int_sin = (1 - np.cos(wx)) / safe_w
    std = np.sqrt(var)[:, None]
    # The sine of frequency 0 vanishes: it is left out.
    to_u = np.concatenate([std * np.cos(wx), std[1:] * np.sin(wx[1:])])
    to_s = np.concatenate([std * int_cos, std[1:] * int_sin[1:]])
    return to_u, to_s
