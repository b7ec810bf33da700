import math

import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx
from jax.scipy.special import erfc, log_ndtr
from jaxtyping import Array, ArrayLike, Float, Int, Real

from .._core import RESULTS
from ._selu import ALPHA_01, LAMBDA_01


def _moment_map(mu, nu, omega, tau, alpha, lam):
    m = mu * omega  # mean of the pre-activation z
    s2 = nu * tau  # variance of z
    s = jnp.sqrt(s2)
    r = m / (math.sqrt(2) * s)
    erfc_r = erfc(r)
    gauss = math.sqrt(2 / math.pi) * s * jnp.exp(-(r**2))
    # The paper's exp(a) erfc(b / (sqrt(2) s)) terms, as 2 exp(a + log Phi(-b / s)):
    # the same numbers, without overflow of exp(a) or underflow of erfc.
    e1 = 2 * jnp.exp(m + s2 / 2 + log_ndtr(-(m + s2) / s))
    e2 = 2 * jnp.exp(2 * (m + s2) + log_ndtr(-(m + 2 * s2) / s))
    mean = lam / 2 * (m * (2 - erfc_r) + alpha * e1 - alpha * erfc_r + gauss)
    second = (
        lam**2
        / 2
        * ((m**2 + s2) * (2 - erfc_r) + alpha**2 * (-2 * e1 + e2 + erfc_r) + m * gauss)
    )
    return mean, second - mean**2


def selu_moment_map(
    mu: Real[ArrayLike, "*#shape"],
    nu: Real[ArrayLike, "*#shape"],
    *,
    omega: Real[ArrayLike, "*#shape"] = 0.0,
    tau: Real[ArrayLike, "*#shape"] = 1.0,
    alpha: Real[ArrayLike, ""] = ALPHA_01,
    lam: Real[ArrayLike, ""] = LAMBDA_01,
) -> tuple[Float[Array, "..."], Float[Array, "..."]]:
    """The map `g: (mu, nu) -> (mu~, nu~)` of activation moments through one SELU layer.

    From Klambauer et al., "Self-Normalizing Neural Networks" (2017), Eqs. (4) and (5).
    If a layer's inputs have mean `mu` and variance `nu`, and a unit's `n` weights have
    `omega = n * mean(w)` and `tau = n * mean(w^2)`, then (by the central limit theorem)
    its pre-activation is `z ~ N(mu omega, nu tau)` and `selu(z)` has mean `mu~` and
    variance `nu~`, given in closed form with `erfc`. Iterating `g` describes how the
    moments travel through a deep network; with the default constants its fixed point
    at `omega = 0`, `tau = 1` is `(0, 1)` (see `selu_fixed_point`).

    Elementwise: the arguments broadcast against each other.

    **Arguments:**

    - `mu`: the mean of the inputs.
    - `nu`: the variance of the inputs; `nu * tau` must be positive.
    - `omega`: `n` times the mean of the weights; default 0.
    - `tau`: `n` times the mean of the squared weights; default 1.
    - `alpha`, `lam`: SELU's constants; default `ALPHA_01`, `LAMBDA_01`.

    **Returns:** `(mu~, nu~)`, floating arrays of the broadcast shape.

    **Raises:** an `eqx.error_if` runtime error if some `nu * tau <= 0`.
    """
    mu, nu, omega, tau = jnp.broadcast_arrays(
        *(jnp.asarray(v, dtype=jnp.result_type(float)) for v in (mu, nu, omega, tau))
    )
    nu = eqx.error_if(
        nu, nu * tau <= 0, "selu_moment_map: `nu * tau` (a variance) must be positive."
    )
    return _moment_map(mu, nu, omega, tau, alpha, lam)


def _as_vector_map(y, args):
    omega, tau, alpha, lam = args
    mean, var = _moment_map(y[0], y[1], omega, tau, alpha, lam)
    return jnp.stack([mean, var])


def moment_map_jacobian(
    mu: Real[ArrayLike, ""],
    nu: Real[ArrayLike, ""],
    *,
    omega: Real[ArrayLike, ""] = 0.0,
    tau: Real[ArrayLike, ""] = 1.0,
    alpha: Real[ArrayLike, ""] = ALPHA_01,
    lam: Real[ArrayLike, ""] = LAMBDA_01,
) -> Float[Array, "2 2"]:
    """The Jacobian of `selu_moment_map` with respect to `(mu, nu)`.

    Row `i`, column `j` is the derivative of output `i` (`mu~`, `nu~`) with respect to
    input `j` (`mu`, `nu`), by forward-mode autodiff of the closed form. The paper's
    contraction condition is that its spectral norm is below 1 near the fixed point.

    **Arguments:** as `selu_moment_map`, all scalars.

    **Returns:** a `(2, 2)` array.
    """
    dtype = jnp.result_type(float)
    y = jnp.stack([jnp.asarray(mu, dtype), jnp.asarray(nu, dtype)])
    args = tuple(jnp.asarray(v, dtype) for v in (omega, tau, alpha, lam))
    return jax.jacfwd(_as_vector_map)(y, args)


class MomentFixedPoint(eqx.Module):
    """What `selu_fixed_point` returns.

    **Fields:**

    - `value`: the fixed point `(mu*, nu*)`, shape `(2,)`.
    - `jacobian`: the Jacobian of the moment map there, shape `(2, 2)`.
    - `spectral_norm`: its largest singular value; below 1 means that the moment map
        is a local contraction in the Euclidean norm, so the fixed point attracts.
    - `result`: a `RESULTS` code; `successful` if the solve converged.
    - `steps`: the solver's number of steps.
    """

    value: Float[Array, "2"]
    jacobian: Float[Array, "2 2"]
    spectral_norm: Float[Array, ""]
    result: RESULTS
    steps: Int[Array, ""]

    @property
    def mean(self) -> Float[Array, ""]:
        """`mu*`, the fixed-point mean."""
        return self.value[0]

    @property
    def variance(self) -> Float[Array, ""]:
        """`nu*`, the fixed-point variance."""
        return self.value[1]


def selu_fixed_point(
    y0: Real[ArrayLike, "2"] | None = None,
    *,
    omega: Real[ArrayLike, ""] = 0.0,
    tau: Real[ArrayLike, ""] = 1.0,
    alpha: Real[ArrayLike, ""] = ALPHA_01,
    lam: Real[ArrayLike, ""] = LAMBDA_01,
    solver: optx.AbstractRootFinder | optx.AbstractFixedPointSolver | None = None,
    max_steps: int = 256,
    throw: bool = True,
) -> MomentFixedPoint:
    """The fixed point `(mu*, nu*) = g(mu*, nu*)` of the SELU moment map, with optimistix.

    Klambauer et al., "Self-Normalizing Neural Networks" (2017), show that for weights
    near `omega = 0`, `tau = 1` the moment map `g` (`selu_moment_map`) has a stable,
    attracting fixed point near `(0, 1)`, exactly `(0, 1)` for the default constants.
    This solves for it with `optx.fixed_point` and evaluates the Jacobian there. The
    solve is differentiable with respect to `omega`, `tau`, `alpha` and `lam` (by the
    implicit function theorem, optimistix's default adjoint).

    **Arguments:**

    - `y0`: the starting point `(mu, nu)`, `nu > 0`; default `(0, 1)`.
    - `omega`, `tau`, `alpha`, `lam`: as `selu_moment_map`, scalars.
    - `solver`: an optimistix root finder (applied to `g(y) - y`) or fixed-point
        solver (iterating `g`); default `optx.Newton(rtol=1e-6, atol=1e-6)`, which
        converges quadratically so the answer is far more accurate than the tolerance.
        `optx.FixedPointIteration` converges too, linearly at a rate set by the
        Jacobian, which is what makes the network self-normalising.
    - `max_steps`: the most solver steps.
    - `throw`: raise a runtime error if the solve fails; with `False` the failure is
        reported in `result` instead.

    **Returns:** a `MomentFixedPoint`.

    **Raises:** with `throw=True`, a runtime error (`eqx.EquinoxRuntimeError`) if the
    solve does not converge within `max_steps`.
    """
    dtype = jnp.result_type(float)
    if y0 is None:
        y0 = jnp.array([0.0, 1.0], dtype)
    y0 = jnp.asarray(y0, dtype)
    if solver is None:
        solver = optx.Newton(rtol=1e-6, atol=1e-6)
    args = tuple(jnp.asarray(v, dtype) for v in (omega, tau, alpha, lam))
    return _solve_fixed_point(y0, args, solver=solver, max_steps=max_steps, throw=throw)


@eqx.filter_jit
def _solve_fixed_point(y0, args, *, solver, max_steps, throw):
    # Jitted on arrays, so new omega, tau or starting points reuse one compilation.
    sol = optx.fixed_point(
        _as_vector_map, solver, y0, args, max_steps=max_steps, throw=throw
    )
    jacobian = jax.jacfwd(_as_vector_map)(sol.value, args)
    return MomentFixedPoint(
        value=sol.value,
        jacobian=jacobian,
        spectral_norm=jnp.linalg.svd(jacobian, compute_uv=False)[0],
        result=RESULTS.promote(sol.result),
        steps=sol.stats["num_steps"],
    )
