import abc
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
import optimistix as optx
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray, PyTree

from .._core import check_positive, check_positive_int


class MonotoneLinear(eqx.Module):
    """A square weight `W` with `I - W` strongly monotone: `I - W >= m I`.

    The parameterisation of "Monotone operator equilibrium networks" (Winston and
    Kolter, 2020): `W = (1 - m) I - A^T A + B - B^T`. The symmetric part of `I - W` is
    `m I + A^T A`, at least `m I` for every `A` and `B`, which makes the equilibrium
    `z = sigma(W z + b)` exist and be unique for every proximal activation `sigma`.
    With `symmetric=True` the skew part `B - B^T` is left out (pairwise energies, as in
    the monotone deep Boltzmann machine, are symmetric).

    `m` is an array leaf, so that it can be swept over, but it is held out of training
    (`lax.stop_gradient`): the guarantee is about a fixed margin, and a trained `m`
    would be pushed towards zero.
    """

    root: Float[Array, "size size"]
    skew: Float[Array, "size size"] | None
    m: Float[Array, ""]
    size: int = eqx.field(static=True)

    def __init__(
        self,
        size: int,
        *,
        m: float = 0.5,
        symmetric: bool = False,
        scale: float = 0.5,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `size`: the number of units.
        - `m`: the monotonicity margin, positive.
        - `symmetric`: leave out the skew part (a symmetric `W`).
        - `scale`: the initial `A` and `B` have entries of standard deviation
            `scale / sqrt(size)`.
        - `key`: a PRNG key for the initial `A` and `B`.

        **Raises:** `ValueError` naming the argument if `size` is not a positive integer
        or `m` or `scale` is not positive.
        """
        check_positive_int(size, "size")
        check_positive(m, "m")
        check_positive(scale, "scale")
        akey, bkey = jr.split(key)
        std = scale / size**0.5
        self.root = std * jr.normal(akey, (size, size))
        self.skew = None if symmetric else std * jr.normal(bkey, (size, size))
        self.m = jnp.asarray(m, dtype=self.root.dtype)
        self.size = size

    def margin(self) -> Float[Array, ""]:
        """The margin `m`, checked positive (it is a leaf: it can be edited).

        **Raises:** `equinox.EquinoxRuntimeError` if `m <= 0`.
        """
        m = jax.lax.stop_gradient(self.m)
        return eqx.error_if(m, m <= 0, "`m` must be positive for a monotone weight.")

    def weight(self) -> Float[Array, "size size"]:
        """The matrix `W = (1 - m) I - A^T A + B - B^T`."""
        m = self.margin()
        eye = jnp.eye(self.size, dtype=self.root.dtype)
        w = (1 - m) * eye - self.root.T @ self.root
        if self.skew is not None:
            w = w + self.skew - self.skew.T
        return w

    def __call__(self, z: Float[Array, " size"]) -> Float[Array, " size"]:
        """`W z`."""
        return self.weight() @ z


class AbstractProxActivation(eqx.Module):
    """An activation that is a proximal operator: `sigma = prox_f^1` for a convex `f`.

    Operator splitting needs the scaled operator `prox_f^alpha(v) = argmin_z
    |z - v|^2 / 2 + alpha f(z)` as well; `__call__` is `prox(v, 1)`, usually in closed
    form.
    """

    @abc.abstractmethod
    def prox(
        self, v: Float[Array, " size"], alpha: Float[ArrayLike, ""]
    ) -> Float[Array, " size"]:
        """`prox_f^alpha(v)`, for one vector `v`."""

    @abc.abstractmethod
    def __call__(self, v: Float[Array, " size"]) -> Float[Array, " size"]:
        """The activation itself, `prox_f^1(v)`."""


class ReLU(AbstractProxActivation):
    """`max(v, 0)`: the projection onto the non-negative orthant, the same for every
    `alpha` (the proximal operator of the orthant's indicator)."""

    def prox(
        self, v: Float[Array, " size"], alpha: Float[ArrayLike, ""]
    ) -> Float[Array, " size"]:
        del alpha
        return jax.nn.relu(v)

    def __call__(self, v: Float[Array, " size"]) -> Float[Array, " size"]:
        return jax.nn.relu(v)


def _equation_residual(z: Array, equation: PyTree) -> Array:
    """`z - sigma(W z + b)` on the free units, `z - values` on the clamped ones."""
    activation, weight, bias, free, values = equation
    return z - jnp.where(free, activation(weight @ z + bias), values)


class _AtRoot(optx.AbstractRootFinder):
    """A root finder that returns its starting point, taken to be a root already.

    Lets `optimistix.ImplicitAdjoint` differentiate an equation whose root was found
    by other means (here, an operator splitting)."""

    rtol: float = 0.0
    atol: float = 0.0
    norm: Callable[[PyTree], Array] = optx.max_norm

    def init(self, fn, y, args, options, f_struct, aux_struct, tags):
        return None

    def step(self, fn, y, args, options, state, tags):
        return y, state, None

    def terminate(self, fn, y, args, options, state, tags):
        return jnp.array(True), optx.RESULTS.successful

    def postprocess(self, fn, y, aux, args, options, state, tags, result):
        return y, aux, {}


class MonotoneSolution(eqx.Module):
    """The equilibrium of a monotone operator network and how it was found.

    **Fields:**

    - `value`: the equilibrium `z`, of shape `(size,)`.
    - `result`: an `optimistix.RESULTS`; successful unless `max_steps` ran out.
    - `num_steps`: the splitting iterations taken.
    - `residual`: `max |z - sigma(W z + b)|` over the free units, the equation itself
        (computed apart from the splitting, with `sigma = prox_f^1`).
    - `alpha`: the step size the splitting used.
    """

    value: Float[Array, " size"]
    result: optx.RESULTS
    num_steps: Int[Array, ""]
    residual: Float[Array, ""]
    alpha: Float[Array, ""]


class AbstractMonotoneSplitting(eqx.Module):
    """An operator splitting for `0 in (I - W) z - b + df(z)`, iterated as a fixed
    point with `optimistix.fixed_point` and differentiated implicitly.

    Subclasses give the iteration map on their state `y` and the equilibrium `z` read
    off `y`. Units marked not free are clamped to given values: the equilibrium is then
    that of the free units alone, with the principal submatrix of `W` (still `m`-strongly
    monotone) and the clamped units entering as input.
    """

    rtol: eqx.AbstractVar[float]
    atol: eqx.AbstractVar[float]
    max_steps: eqx.AbstractVar[int]
    adjoint_solver: eqx.AbstractVar[lx.AbstractLinearSolver | None]

    @abc.abstractmethod
    def step_size(
        self, linear: MonotoneLinear, weight: Float[Array, "size size"]
    ) -> Float[Array, ""]:
        """The step size `alpha` for this weight."""

    @abc.abstractmethod
    def prepare(
        self,
        weight: Float[Array, "size size"],
        alpha: Float[Array, ""],
        free: Bool[Array, " size"],
    ) -> PyTree:
        """What the iteration reuses at every step (a factorisation, or nothing)."""

    @abc.abstractmethod
    def iterate(
        self,
        y: Float[Array, " size"],
        args: PyTree,
    ) -> Float[Array, " size"]:
        """One step of the splitting on the state `y`."""

    @abc.abstractmethod
    def equilibrium(
        self, y: Float[Array, " size"], args: PyTree
    ) -> Float[Array, " size"]:
        """The equilibrium `z` read off a state `y`."""

    def solve(
        self,
        linear: MonotoneLinear,
        activation: AbstractProxActivation,
        bias: Float[Array, " size"],
        *,
        z0: Float[Array, " size"] | None = None,
        free: Bool[Array, " size"] | None = None,
        values: Float[Array, " size"] | None = None,
        throw: bool = True,
    ) -> MonotoneSolution:
        """Solve `z = sigma(W z + bias)` for the free units, the others held at `values`.

        **Arguments:**

        - `linear`: the monotone weight `W`.
        - `activation`: the proximal activation `sigma`.
        - `bias`: the input term `U x + b`, of shape `(size,)`.
        - `z0`: the initial state (zeros by default); any start reaches the same point.
        - `free`: which units are inferred (all by default).
        - `values`: the values of the clamped units (read where `free` is false).
        - `throw`: whether running out of `max_steps` raises.

        **Returns:** a `MonotoneSolution`. Gradients with respect to `linear`,
        `activation`, `bias` and `values` come from the implicit function theorem
        applied to `z = sigma(W z + bias)` (`optimistix.ImplicitAdjoint`, matrix-free
        GMRES unless `adjoint_solver` says otherwise), not from the iterations, so
        they do not depend on the splitting.
        """
        size = bias.shape[0]
        if free is None:
            free = jnp.ones(size, dtype=bool)
        if values is None:
            values = jnp.zeros_like(bias)
        if z0 is None:
            z0 = jnp.zeros_like(bias)
        weight = linear.weight()
        alpha = jax.lax.stop_gradient(self.step_size(linear, weight))
        values = jnp.where(free, 0.0, values)
        z0 = jnp.where(free, z0, values)
        equation = (activation, weight, bias, free, values)
        # The splitting only locates the equilibrium: it runs on stopped parameters,
        # and the gradient comes from the equation itself below.
        dynamic, static = eqx.partition((self, equation), eqx.is_array)
        stopped, stopped_equation = eqx.combine(jax.lax.stop_gradient(dynamic), static)
        sw = stopped_equation[1]
        args = (stopped, *stopped_equation, alpha, self.prepare(sw, alpha, free))
        sol = optx.fixed_point(
            lambda y, a: a[0].iterate(y, a),
            optx.FixedPointIteration(rtol=self.rtol, atol=self.atol),
            z0,
            args,
            max_steps=self.max_steps,
            throw=throw,
        )
        z = jax.lax.stop_gradient(self.equilibrium(sol.value, args))
        linear_solver = self.adjoint_solver
        if linear_solver is None:
            linear_solver = lx.GMRES(rtol=self.rtol, atol=self.atol, restart=size)
        # Implicit differentiation of `z = sigma(W z + b)` at the splitting's solution:
        # a root find that starts at the root, so that optimistix's implicit adjoint
        # solves `(I - J_sigma W)^T v = g` (well posed: J_sigma is symmetric with
        # eigenvalues in [0, 1] and I - W >= m I), whichever splitting found `z`.
        z = optx.root_find(
            _equation_residual,
            _AtRoot(),
            z,
            equation,
            adjoint=optx.ImplicitAdjoint(linear_solver=linear_solver),
            throw=False,
        ).value
        residual = jnp.max(
            jnp.abs(jax.lax.stop_gradient(_equation_residual(z, equation)))
        )
        return MonotoneSolution(
            value=z,
            result=sol.result,
            num_steps=sol.stats["num_steps"],
            residual=residual,
            alpha=alpha,
        )


class ForwardBackward(AbstractMonotoneSplitting):
    """Forward-backward splitting: `z <- prox_f^alpha((1 - alpha) z + alpha (W z + b))`.

    A damped fixed-point iteration of the network itself. It converges for
    `0 < alpha < 2 m / L^2`, `L = |I - W|_2` (Winston and Kolter, 2020, Theorem 2);
    `alpha=None` takes `min(1, m / L^2)`, the middle of that range, computed from the
    current weight.
    """

    alpha: Float[Array, ""] | None
    rtol: float
    atol: float
    max_steps: int = eqx.field(static=True)
    adjoint_solver: lx.AbstractLinearSolver | None

    def __init__(
        self,
        alpha: float | None = None,
        *,
        rtol: float = 1e-5,
        atol: float = 1e-6,
        max_steps: int = 2000,
        adjoint_solver: lx.AbstractLinearSolver | None = None,
    ):
        """**Arguments:**

        - `alpha`: the step size, in `(0, 2 m / L^2)`; `None` for `min(1, m / L^2)`.
        - `rtol`, `atol`: the fixed-point tolerances (also of the adjoint solve).
        - `max_steps`: the most iterations.
        - `adjoint_solver`: the lineax solver of the implicit-gradient system; `None`
            for matrix-free `lineax.GMRES` at `rtol`, `atol` (`lineax.LU()` builds
            the Jacobian instead: faster for a few hundred units).

        **Raises:** `ValueError` naming the argument if one is not positive.
        """
        self.alpha = (
            None if alpha is None else jnp.asarray(check_positive(alpha, "alpha"))
        )
        self.rtol = check_positive(rtol, "rtol")
        self.atol = check_positive(atol, "atol")
        check_positive_int(max_steps, "max_steps")
        self.max_steps = max_steps
        self.adjoint_solver = adjoint_solver

    def step_size(
        self, linear: MonotoneLinear, weight: Float[Array, "size size"]
    ) -> Float[Array, ""]:
        if self.alpha is not None:
            return self.alpha.astype(weight.dtype)
        eye = jnp.eye(weight.shape[0], dtype=weight.dtype)
        lipschitz = jnp.linalg.norm(eye - weight, ord=2)
        return jnp.minimum(1.0, linear.margin() / lipschitz**2)

    def prepare(
        self,
        weight: Float[Array, "size size"],
        alpha: Float[Array, ""],
        free: Bool[Array, " size"],
    ) -> PyTree:
        return None

    def iterate(self, y: Float[Array, " size"], args: PyTree) -> Float[Array, " size"]:
        _, activation, weight, bias, free, values, alpha, _ = args
        forward = (1 - alpha) * y + alpha * (weight @ y + bias)
        return jnp.where(free, activation.prox(forward, alpha), values)

    def equilibrium(
        self, y: Float[Array, " size"], args: PyTree
    ) -> Float[Array, " size"]:
        return y


class PeacemanRachford(AbstractMonotoneSplitting):
    """Peaceman-Rachford splitting, iterated on `u` with `z = prox_f^alpha(u)`:

    `u <- (2 R_F - I)(2 prox_f^alpha - I) u`, `R_F = (I + alpha (I - W))^-1 (. + alpha b)`.

    It converges for every `alpha > 0` (Winston and Kolter, 2020, Theorem 3), usually
    in far fewer steps than forward-backward splitting. The resolvent's matrix
    `I + alpha (I - W)` (restricted to the free units) is LU-factorised once per solve
    with lineax and the factorisation reused at every step.
    """

    alpha: Float[Array, ""]
    rtol: float
    atol: float
    max_steps: int = eqx.field(static=True)
    adjoint_solver: lx.AbstractLinearSolver | None

    def __init__(
        self,
        alpha: float = 1.0,
        *,
        rtol: float = 1e-5,
        atol: float = 1e-6,
        max_steps: int = 500,
        adjoint_solver: lx.AbstractLinearSolver | None = None,
    ):
        """**Arguments:**

        - `alpha`: the step size, positive.
        - `rtol`, `atol`: the fixed-point tolerances (also of the adjoint solve).
        - `max_steps`: the most iterations.
        - `adjoint_solver`: the lineax solver of the implicit-gradient system; `None`
            for matrix-free `lineax.GMRES` at `rtol`, `atol` (`lineax.LU()` builds
            the Jacobian instead: faster for a few hundred units).

        **Raises:** `ValueError` naming the argument if one is not positive.
        """
        self.alpha = jnp.asarray(check_positive(alpha, "alpha"))
        self.rtol = check_positive(rtol, "rtol")
        self.atol = check_positive(atol, "atol")
        check_positive_int(max_steps, "max_steps")
        self.max_steps = max_steps
        self.adjoint_solver = adjoint_solver

    def step_size(
        self, linear: MonotoneLinear, weight: Float[Array, "size size"]
    ) -> Float[Array, ""]:
        return self.alpha.astype(weight.dtype)

    def prepare(
        self,
        weight: Float[Array, "size size"],
        alpha: Float[Array, ""],
        free: Bool[Array, " size"],
    ) -> PyTree:
        eye = jnp.eye(weight.shape[0], dtype=weight.dtype)
        mask = free.astype(weight.dtype)
        # Clamped rows and columns become those of the identity: the resolvent then
        # returns the clamped values unchanged and acts on the free units alone.
        matrix = eye + alpha * mask[:, None] * (eye - weight) * mask[None, :]
        operator = lx.MatrixLinearOperator(matrix)
        solver = lx.LU()
        return operator, solver, solver.init(operator, {})

    def iterate(self, y: Float[Array, " size"], args: PyTree) -> Float[Array, " size"]:
        _, activation, weight, bias, free, values, alpha, factors = args
        operator, solver, state = factors
        z = jnp.where(free, activation.prox(y, alpha), values)
        u_half = 2 * z - y
        inputs = jnp.where(free, alpha * (weight @ values + bias), 0.0)
        rhs = jnp.where(free, u_half, values) + inputs
        z_half = lx.linear_solve(operator, rhs, solver, state=state, throw=False).value
        # Clamped units map to a constant, not to themselves: an identity there would
        # make the implicit-gradient system singular.
        return jnp.where(free, 2 * z_half - u_half, values)

    def equilibrium(
        self, y: Float[Array, " size"], args: PyTree
    ) -> Float[Array, " size"]:
        _, activation, _, _, free, values, alpha, _ = args
        return jnp.where(free, activation.prox(y, alpha), values)


class MonotoneDEQ(eqx.Module):
    """A monotone operator equilibrium network: `z = sigma(W z + U x + b)`.

    After "Monotone operator equilibrium networks" (Winston and Kolter, NeurIPS 2020).
    `W` is a `MonotoneLinear`, so the equilibrium exists and is unique for every input
    and every parameter value; it is found by operator splitting (Peaceman-Rachford by
    default, or forward-backward) and differentiated implicitly. The output is the
    equilibrium itself; compose a readout for a classifier.
    """

    linear: MonotoneLinear
    inject: eqx.nn.Linear
    activation: AbstractProxActivation
    splitting: AbstractMonotoneSplitting

    def __init__(
        self,
        in_size: int,
        size: int,
        *,
        m: float = 0.5,
        activation: AbstractProxActivation = ReLU(),
        splitting: AbstractMonotoneSplitting = PeacemanRachford(),
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `in_size`: the size of the input `x`.
        - `size`: the number of hidden units (the size of `z`).
        - `m`: the monotonicity margin of `W`, positive.
        - `activation`: the proximal activation (`ReLU()` by default).
        - `splitting`: `PeacemanRachford(...)` (default) or `ForwardBackward(...)`.
        - `key`: a PRNG key for the initial parameters.

        **Raises:** `ValueError` naming the argument if a size is not a positive integer
        or `m` is not positive.
        """
        check_positive_int(in_size, "in_size")
        check_positive_int(size, "size")
        wkey, ukey = jr.split(key)
        self.linear = MonotoneLinear(size, m=m, key=wkey)
        self.inject = eqx.nn.Linear(in_size, size, key=ukey)
        self.activation = activation
        self.splitting = splitting

    def fixed_point(
        self,
        x: Float[Array, " in_size"],
        *,
        z0: Float[Array, " size"] | None = None,
        throw: bool = True,
    ) -> MonotoneSolution:
        """The equilibrium for one input `x` (batch with `jax.vmap`).

        **Arguments:**

        - `x`: the input, of shape `(in_size,)`.
        - `z0`: the initial state of the splitting (zeros by default).
        - `throw`: whether running out of iterations raises.

        **Returns:** a `MonotoneSolution`.

        **Raises:** `ValueError` naming `x` or `z0` if its shape is wrong.
        """
        if x.shape != (self.inject.in_features,):
            raise ValueError(
                f"`x` must have shape ({self.inject.in_features},) (one example; batch "
                f"with jax.vmap); got {x.shape}."
            )
        if z0 is not None and z0.shape != (self.linear.size,):
            raise ValueError(
                f"`z0` must have shape ({self.linear.size},); got {z0.shape}."
            )
        return self.splitting.solve(
            self.linear, self.activation, self.inject(x), z0=z0, throw=throw
        )

    def __call__(
        self, x: Float[Array, " in_size"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, " size"]:
        """The equilibrium `z` for one input `x`.

        **Raises:** `equinox.EquinoxRuntimeError` if the splitting runs out of steps.
        """
        del key
        return self.fixed_point(x).value
