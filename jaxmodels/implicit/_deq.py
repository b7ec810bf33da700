"""Deep equilibrium models: a layer whose output is the fixed point of a cell."""

import abc
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
import optimistix as optx
from jaxtyping import Array, Float, Int, PRNGKeyArray, Scalar

from ._solvers import Anderson, AndersonLinearSolver


# --- cells ----------------------------------------------------------------------------


class TanhCell(eqx.Module):
    """The equilibrium cell `f(z, x) = tanh(W z + U x + b)`.

    `W` starts as a Gaussian matrix rescaled to spectral norm `spectral_norm` (below one,
    `f` starts as a contraction in `z`, so the fixed point exists and is unique); `U` and
    `b` start as in `eqx.nn.Linear`.
    """

    weight: Float[Array, "hidden hidden"]
    injection: Float[Array, "hidden data"]
    bias: Float[Array, " hidden"]
    hidden_size: int = eqx.field(static=True)
    data_size: int = eqx.field(static=True)

    def __init__(
        self,
        hidden_size: int,
        data_size: int,
        *,
        spectral_norm: float = 0.5,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `hidden_size`: the size of the state `z`.
        - `data_size`: the size of the input `x`.
        - `spectral_norm`: the spectral norm of `W` at initialisation.
        - `key`: a JAX random key.

        **Raises:** `ValueError` for non-positive sizes or a negative `spectral_norm`.
        """
        if hidden_size < 1 or data_size < 1:
            raise ValueError(
                "`hidden_size` and `data_size` must be positive, got "
                f"{hidden_size!r} and {data_size!r}."
            )
        if not spectral_norm >= 0:
            raise ValueError(f"`spectral_norm` must be >= 0, got {spectral_norm!r}.")
        wkey, ukey, bkey = jr.split(key, 3)
        weight = jr.normal(wkey, (hidden_size, hidden_size))
        self.weight = spectral_norm * weight / jnp.linalg.norm(weight, ord=2)
        bound = data_size**-0.5
        self.injection = jr.uniform(ukey, (hidden_size, data_size), minval=-bound, maxval=bound)  # fmt: skip
        self.bias = jr.uniform(bkey, (hidden_size,), minval=-bound, maxval=bound)
        self.hidden_size = hidden_size
        self.data_size = data_size

    def __call__(
        self, z: Float[Array, " hidden"], x: Float[Array, " data"]
    ) -> Float[Array, " hidden"]:
        return jnp.tanh(self.weight @ z + self.injection @ x + self.bias)


# --- gradients ------------------------------------------------------------------------


class AbstractDEQGradient(eqx.Module):
    """How a [`jaxmodels.implicit.DEQ`][] is differentiated.

    `adjoint` is the optimistix adjoint of the forward solve; `attach(cell, z, x)` maps
    the solved fixed point to the output whose gradient the model reports.
    """

    @property
    @abc.abstractmethod
    def adjoint(self) -> optx.AbstractAdjoint | None:
        """The forward solve's adjoint; `None` stops gradients through the solve."""

    @abc.abstractmethod
    def attach(
        self, cell: Callable, z: Float[Array, " hidden"], x: Any
    ) -> Float[Array, " hidden"]:
        """The output, given the fixed point `z` of `cell(., x)`."""


class ImplicitGradient(AbstractDEQGradient):
    """Exact gradients by the implicit function theorem.

    The backward pass solves `(I - df/dz)^T v = g` with a matrix-free lineax solver
    (only vector-Jacobian products, never a dense Jacobian), through optimistix's
    `ImplicitAdjoint`. The default,
    [`jaxmodels.implicit.AndersonLinearSolver`][], iterates `v = (df/dz)^T v + g` with
    Anderson acceleration and stops as soon as the residual passes its tolerance, as
    torchdeq does; it converges when the cell is contractive at the fixed point. For a
    Jacobian with eigenvalues near or past one, pass `lineax.GMRES(...)`, which
    converges for any invertible `I - df/dz` but always builds its whole Krylov basis
    (`restart` products) before testing. A backward solve that does not converge
    raises. Bai, Kolter and Koltun, "Deep equilibrium models" (NeurIPS 2019).
    """

    linear_solver: lx.AbstractLinearSolver = AndersonLinearSolver(rtol=1e-5, atol=1e-5)

    @property
    def adjoint(self) -> optx.AbstractAdjoint | None:
        return optx.ImplicitAdjoint(linear_solver=self.linear_solver)

    def attach(
        self, cell: Callable, z: Float[Array, " hidden"], x: Any
    ) -> Float[Array, " hidden"]:
        del cell, x
        return z


class JacobianFreeGradient(AbstractDEQGradient):
    """Jacobian-free backpropagation: differentiate one application of the cell.

    Replaces `(I - df/dz)^{-T}` by the identity, which is a descent direction when `f` is
    contractive. Fung et al., "JFB: Jacobian-free backpropagation for implicit networks"
    (AAAI 2022).
    """

    @property
    def adjoint(self) -> optx.AbstractAdjoint | None:
        return None

    def attach(
        self, cell: Callable, z: Float[Array, " hidden"], x: Any
    ) -> Float[Array, " hidden"]:
        return cell(lax.stop_gradient(z), x)


class PhantomGradient(AbstractDEQGradient):
    """Phantom gradients: differentiate `steps` damped iterations from the fixed point.

    `z <- (1 - damping) z + damping f(z, x)` unrolled `steps` times; its gradient is a
    truncated Neumann series of the implicit one. Geng et al., "On training implicit
    models" (NeurIPS 2021).
    """

    steps: int = eqx.field(static=True, default=5)
    damping: float = 0.5

    def __check_init__(self):
        if self.steps < 1:
            raise ValueError(f"`steps` must be a positive int, got {self.steps!r}.")

    @property
    def adjoint(self) -> optx.AbstractAdjoint | None:
        return None

    def attach(
        self, cell: Callable, z: Float[Array, " hidden"], x: Any
    ) -> Float[Array, " hidden"]:
        def body(z, _):
            return (1 - self.damping) * z + self.damping * cell(z, x), None

        z, _ = lax.scan(body, lax.stop_gradient(z), length=self.steps)
        return z


# --- the model ------------------------------------------------------------------------


class DEQSolution(eqx.Module):
    """The output of a [`jaxmodels.implicit.DEQ`][] for one input.

    **Fields:**

    - `value`: the equilibrium state (with the gradient the model's rule attaches).
    - `result`: the optimistix `RESULTS` code of the forward solve.
    - `num_steps`: the forward solver's iterations.
    - `residual`: the relative residual `|f(z, x) - z| / |f(z, x)|` (two-norm).
    """

    value: Float[Array, " hidden"]
    result: optx.RESULTS
    num_steps: Int[Array, ""]
    residual: Scalar


def _cell_fn(z, args):
    cell, x = args
    return cell(z, x)


class DEQ(eqx.Module):
    """A deep equilibrium layer: the output is the fixed point `z* = f(z*, x)`.

    The forward pass is any optimistix fixed-point solver or root finder (the Anderson
    and Broyden solvers of this package, `optx.FixedPointIteration`, `optx.Newton`, ...);
    the backward pass is chosen by `gradient`: implicit differentiation, Jacobian-free
    backpropagation or phantom gradients. Bai, Kolter and Koltun, "Deep equilibrium
    models" (NeurIPS 2019).

    `__call__` takes one example (batch with `jax.vmap`) and returns a
    [`jaxmodels.implicit.DEQSolution`][].
    """

    cell: Callable
    solver: optx.AbstractFixedPointSolver | optx.AbstractRootFinder
    gradient: AbstractDEQGradient
    hidden_size: int = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    throw: bool = eqx.field(static=True)

    def __init__(
        self,
        cell: Callable,
        hidden_size: int,
        *,
        solver: optx.AbstractFixedPointSolver | optx.AbstractRootFinder | None = None,
        gradient: AbstractDEQGradient | None = None,
        max_steps: int = 100,
        throw: bool = True,
    ):
        """**Arguments:**

        - `cell`: an Equinox module (or any callable pytree) `cell(z, x) -> z`.
        - `hidden_size`: the size of `z`.
        - `solver`: the forward solver; default `Anderson(rtol=1e-4, atol=1e-4)`.
        - `gradient`: the backward rule; default `ImplicitGradient()`.
        - `max_steps`: the forward solver's iteration budget.
        - `throw`: raise if the forward solve fails (the default); otherwise return the
            last iterate with its `result` code and `residual`.

        **Raises:** `ValueError` if `hidden_size` or `max_steps` is not positive or the
        solver is not an optimistix fixed-point solver or root finder.
        """
        if hidden_size < 1:
            raise ValueError(f"`hidden_size` must be positive, got {hidden_size!r}.")
        if max_steps < 1:
            raise ValueError(f"`max_steps` must be positive, got {max_steps!r}.")
        if solver is None:
            solver = Anderson(rtol=1e-4, atol=1e-4)
        if not isinstance(
            solver, (optx.AbstractFixedPointSolver, optx.AbstractRootFinder)
        ):
            raise ValueError(
                "`solver` must be an optimistix fixed-point solver or root finder "
                f"(e.g. `jaxmodels.implicit.Anderson`), got {type(solver).__name__}."
            )
        self.cell = cell
        self.solver = solver
        self.gradient = ImplicitGradient() if gradient is None else gradient
        self.hidden_size = hidden_size
        self.max_steps = max_steps
        self.throw = throw

    def __call__(
        self,
        x: Any,
        z0: Float[Array, " hidden"] | None = None,
        *,
        key: PRNGKeyArray | None = None,
    ) -> DEQSolution:
        """**Arguments:**

        - `x`: one input, as the cell takes it.
        - `z0`: the initial state (a warm start); zeros by default.
        - `key`: unused; for the uniform model signature.

        **Returns:** a [`jaxmodels.implicit.DEQSolution`][].

        **Raises:** `ValueError` if `z0` or the cell's output has the wrong shape; an
        `EquinoxRuntimeError` if the solve fails and `throw=True`.
        """
        del key
        if z0 is None:
            z0 = jnp.zeros(self.hidden_size)
        if z0.shape != (self.hidden_size,):
            raise ValueError(
                f"`z0` must have shape ({self.hidden_size},), got {z0.shape}."
            )
        try:
            out = jax.eval_shape(self.cell, z0, x)
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"`cell(z, x)` fails for `z` of shape {z0.shape} (`hidden_size`) and "
                f"this `x`: {e}"
            ) from e
        if out.shape != z0.shape:
            raise ValueError(
                f"`cell(z, x)` must return shape {z0.shape} (`hidden_size`), got "
                f"{out.shape}."
            )
        adjoint = self.gradient.adjoint
        args = (self.cell, x)
        if adjoint is None:
            args = lax.stop_gradient(args)
            adjoint = optx.ImplicitAdjoint()
        sol = optx.fixed_point(
            _cell_fn,
            self.solver,
            z0,
            args,
            max_steps=self.max_steps,
            adjoint=adjoint,
            throw=self.throw,
        )
        z = self.gradient.attach(self.cell, sol.value, x)
        z_star = lax.stop_gradient(sol.value)
        fz = self.cell(z_star, lax.stop_gradient(x))
        residual = jnp.linalg.norm(fz - z_star) / (jnp.linalg.norm(fz) + 1e-12)
        return DEQSolution(
            value=z,
            result=sol.result,
            num_steps=sol.stats["num_steps"],
            residual=lax.stop_gradient(residual),
        )


def jacobian_penalty(
    cell: Callable,
    z: Float[Array, " hidden"],
    x: Any,
    *,
    key: PRNGKeyArray,
    samples: int = 1,
) -> Scalar:
    """Hutchinson's estimate of `||df/dz||_F^2 / hidden` at `(z, x)`.

    The Jacobian-norm regulariser of Bai, Koltun and Kolter, "Stabilizing equilibrium
    models by Jacobian regularization" (ICML 2021): `E |e^T J|^2 / d` with Gaussian
    probes `e`, one vector-Jacobian product per probe. Differentiable in the cell's
    parameters; pass the (stopped) fixed point as `z`.

    **Arguments:**

    - `cell`: the cell `f(z, x)`.
    - `z`, `x`: the point at which the Jacobian is taken.
    - `key`: a JAX random key for the probes.
    - `samples`: the number of probes.

    **Returns:** a non-negative scalar, unbiased for `||J||_F^2 / hidden`.

    **Raises:** `ValueError` if `samples < 1`.
    """
    if samples < 1:
        raise ValueError(f"`samples` must be a positive int, got {samples!r}.")
    _, vjp = jax.vjp(lambda z: cell(z, x), z)
    probes = jr.normal(key, (samples,) + z.shape, z.dtype)
    (rows,) = jax.vmap(vjp)(probes)
    return jnp.sum(rows**2) / (samples * z.size)
