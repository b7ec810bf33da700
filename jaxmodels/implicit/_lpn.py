from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
import optax
import optimistix as optx
from jax import lax
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Real

from .._core import check_positive, check_positive_int


def _inverse_softplus(u: Array) -> Array:
    return u + jnp.log(-jnp.expm1(-u))


class LearnedProximalNetwork(eqx.Module):
    """A learned proximal network (LPN): the gradient of an input-convex network.

    After "What's in a Prior? Learned Proximal Networks for Inverse Problems" (Fang,
    Buchanan & Sulam, ICLR 2024). The network is `f(y) = grad psi(y)` with `psi` an
    input-convex neural network (Amos et al., 2017) plus a strongly convex term,

    `z_1 = g(H_1 y + b_1)`, `z_k = g(W_k z_{k-1} + H_k y + b_k)` for `k = 2..depth`,
    `psi(y) = w . z_depth + alpha / 2 ||y||^2`,

    with `g(z) = softplus(beta z) / beta` (convex and non-decreasing) and `W_k`, `w` non-negative, so
    `psi` is convex and `alpha`-strongly convex. Then `f` is exactly the proximal
    operator of the (possibly nonconvex) regulariser `R = psi^* - 1/2 ||.||^2`, and it
    is invertible, so `R` can be evaluated at any point (`regulariser`).

    The non-negative weights are reparameterised, `W_k = softplus(V_k)` with `V_k` the
    stored leaves, rather than clipped after each update as in the paper: any optax
    optimiser then keeps `psi` convex with no projection step.
    """

    input_weights: Float[Array, "depth width size"]
    biases: Float[Array, "depth width"]
    hidden_raw: Float[Array, "depth_minus_1 width width"]
    output_raw: Float[Array, " width"]
    alpha: float
    beta: float
    size: int = eqx.field(static=True)
    width: int = eqx.field(static=True)
    depth: int = eqx.field(static=True)

    def __init__(
        self,
        size: int,
        width: int,
        depth: int,
        *,
        alpha: float = 0.01,
        beta: float = 1.0,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `size`: the dimension of the signal `y` (and of `f(y)`).
        - `width`: the width of every hidden layer of `psi`.
        - `depth`: the number of hidden layers of `psi`, at least 1.
        - `alpha`: the weight of the strongly convex term `alpha / 2 ||y||^2`, positive;
            every eigenvalue of the Jacobian of `f` is at least `alpha`.
        - `beta`: the sharpness of the activation `g(z) = softplus(beta z) / beta`,
            positive; large values approach the ReLU, so `f` can bend sharply (a
            soft threshold's kinks) without large weights.
        - `key`: a PRNG key for the initial parameters.

        **Raises:** `ValueError` naming the argument if a size is not a positive
        integer or `alpha` is not positive.
        """
        for value, name in [(size, "size"), (width, "width"), (depth, "depth")]:
            check_positive_int(value, name)
        alpha = check_positive(alpha, "alpha")
        beta = check_positive(beta, "beta")
        ikey, bkey, hkey, okey = jr.split(key, 4)
        lim = 1.0 / jnp.sqrt(size)
        self.input_weights = jr.uniform(
            ikey, (depth, width, size), minval=-lim, maxval=lim
        )
        self.biases = jr.uniform(bkey, (depth, width), minval=-1.0, maxval=1.0)
        # Non-negative hidden weights of mean 1 / width: the hidden path neither blows
        # up nor vanishes with depth at initialisation.
        hidden = jr.uniform(
            hkey, (depth - 1, width, width), minval=0.1 / width, maxval=1.9 / width
        )
        self.hidden_raw = _inverse_softplus(hidden)
        output = jr.uniform(okey, (width,), minval=0.1 / width, maxval=1.9 / width)
        self.output_raw = _inverse_softplus(output)
        self.alpha = alpha
        self.beta = beta
        self.size = size
        self.width = width
        self.depth = depth

    def potential(self, y: Float[Array, " size"]) -> Float[Array, ""]:
        """The convex potential `psi(y)`, of which `f` is the gradient.

        **Arguments:**

        - `y`: one signal, of shape `(size,)`.

        **Returns:** a scalar.
        """
        if y.shape != (self.size,):
            raise ValueError(
                f"`y` must have shape ({self.size},); got {y.shape}. Batch with "
                "`jax.vmap`."
            )
        pre = self.input_weights @ y + self.biases
        hidden = jax.nn.softplus(self.hidden_raw)

        def act(z: Array) -> Array:
            return jax.nn.softplus(self.beta * z) / self.beta

        def layer(z: Array, inputs: tuple[Array, Array]) -> tuple[Array, None]:
            w, p = inputs
            return act(w @ z + p), None

        z, _ = lax.scan(layer, act(pre[0]), (hidden, pre[1:]))
        return jax.nn.softplus(self.output_raw) @ z + 0.5 * self.alpha * (y @ y)

    def __call__(
        self, y: Float[Array, " size"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, " size"]:
        """The learned proximal operator `f(y) = grad psi(y)`.

        **Arguments:**

        - `y`: one signal, of shape `(size,)`; batch with `jax.vmap`.
        - `key`: unused.

        **Returns:** `f(y)`, of shape `(size,)`.
        """
        del key
        return jax.grad(self.potential)(y)

    def invert(
        self,
        x: Float[Array, " size"],
        *,
        y0: Float[Array, " size"] | None = None,
        solver: optx.AbstractMinimiser | None = None,
        rtol: float = 1e-6,
        atol: float = 1e-6,
        max_steps: int = 256,
        throw: bool = True,
    ) -> optx.Solution:
        """The `y` with `f(y) = x`: the minimiser of the strongly convex `psi(y) - <x, y>`.

        **Arguments:**

        - `x`: one point, of shape `(size,)`; every point is in the range of `f`
            (`psi` is strongly convex).
        - `y0`: the start of the solve; default `x`.
        - `solver`: an optimistix minimiser; default `optimistix.BFGS(rtol, atol)`.
        - `rtol`, `atol`: the tolerances of the default solver.
        - `max_steps`: the most solver steps.
        - `throw`: whether a failed solve raises.

        **Returns:** an `optimistix.Solution` whose `value` is `y` (differentiable in
        `x` and the parameters by the implicit function theorem).
        """
        if x.shape != (self.size,):
            raise ValueError(f"`x` must have shape ({self.size},); got {x.shape}.")
        check_positive_int(max_steps, "max_steps")
        if solver is None:
            solver = optx.BFGS(rtol=rtol, atol=atol)
        y0 = x if y0 is None else y0

        def objective(y: Array, x: Array) -> Array:
            return self.potential(y) - x @ y

        # The Hessian of `psi` is symmetric positive definite, so the implicit
        # function theorem's linear solve can use Cholesky.
        adjoint = optx.ImplicitAdjoint(linear_solver=lx.Cholesky())
        return optx.minimise(
            objective,
            solver,
            y0,
            args=x,
            max_steps=max_steps,
            adjoint=adjoint,
            throw=throw,
            tags=frozenset({lx.symmetric_tag, lx.positive_semidefinite_tag}),
        )

    def regulariser(
        self,
        x: Float[Array, " size"],
        *,
        rtol: float = 1e-6,
        atol: float = 1e-6,
        max_steps: int = 256,
        throw: bool = True,
    ) -> Float[Array, ""]:
        """The regulariser `R` whose proximal operator `f` is, at `x`.

        `f = prox_R` means `f(y) = argmin_x 1/2 ||y - x||^2 + R(x)`; with `f = grad psi`
        that holds for `R(x) = psi^*(x) - 1/2 ||x||^2` (Fang et al., 2024, Prop. 1; up
        to an additive constant), and the convex conjugate is evaluated by inverting
        `f`: `R(x) = <x, y> - psi(y) - 1/2 ||x||^2` with `f(y) = x`. Its gradient is
        `y - x`.

        **Arguments:**

        - `x`: one point, of shape `(size,)`.
        - `rtol`, `atol`, `max_steps`, `throw`: as for `invert`.

        **Returns:** the scalar `R(x)`.

        **Raises:** `equinox.EquinoxRuntimeError` if `throw` and the inversion fails.
        """
        y = self.invert(x, rtol=rtol, atol=atol, max_steps=max_steps, throw=throw).value
        return x @ y - self.potential(y) - 0.5 * (x @ x)


def proximal_matching_loss(
    prediction: Float[Array, "*shape"],
    target: Float[Array, "*shape"],
    gamma: Real[ArrayLike, ""],
) -> Float[Array, ""]:
    """The proximal-matching loss of one example, `1 - exp(-||prediction - target||^2 /
    gamma^2)`.

    From "What's in a Prior? Learned Proximal Networks for Inverse Problems" (Fang,
    Buchanan & Sulam, 2024). As `gamma -> 0` the expected loss over noisy `y` and
    clean `target` is minimised by the posterior mode (the MAP estimate), where the
    squared error would give the posterior mean: a denoiser trained with it, annealing
    `gamma` from large to small (`proximal_matching_schedule`), is the proximal
    operator of `-log p`, the log-prior. For large `gamma` it is `||.||^2 / gamma^2`
    to first order, a scaled squared error.

    **Arguments:**

    - `prediction`: the denoiser's output `f(y)`, of any shape.
    - `target`: the clean signal, of the same shape.
    - `gamma`: the width of the matching kernel, positive.

    **Returns:** a scalar in `[0, 1)`.

    **Raises:** `ValueError` if the shapes differ, or a concrete `gamma` is not positive.
    """
    if prediction.shape != target.shape:
        raise ValueError(
            f"`prediction` and `target` must have the same shape; got "
            f"{prediction.shape} and {target.shape}."
        )
    if not isinstance(gamma, jax.core.Tracer) and not float(gamma) > 0:
        raise ValueError(f"`gamma` must be positive; got {gamma!r}.")
    diff = prediction - target
    return -jnp.expm1(-jnp.sum(diff * diff) / jnp.square(gamma))


def proximal_matching_schedule(
    gamma_start: Real[ArrayLike, ""], gamma_end: Real[ArrayLike, ""], steps: int
) -> optax.Schedule:
    """A schedule for `gamma` in `proximal_matching_loss`: geometric from
    `gamma_start` at step 0 down to `gamma_end` at step `steps`, then constant.

    The loss with a large `gamma` acts as the squared error, easy to fit from any
    start; shrinking it moves the fit from the posterior mean to the posterior mode.
    (The paper lowers `gamma` in a few stages; a geometric decay is the same idea
    without the stage boundaries.)

    **Arguments:**

    - `gamma_start`: the initial width, positive.
    - `gamma_end`: the final width, positive and at most `gamma_start`.
    - `steps`: the number of steps over which to anneal, a positive integer.

    **Returns:** an `optax.Schedule`, a function of the step count (traceable, also
    in `gamma_start` and `gamma_end`, so it can be swept over).

    **Raises:** `ValueError` naming the argument if a concrete one is out of range.
    """
    check_positive_int(steps, "steps")
    concrete = not any(isinstance(g, jax.core.Tracer) for g in (gamma_start, gamma_end))
    if concrete:
        check_positive(gamma_start, "gamma_start")
        check_positive(gamma_end, "gamma_end")
        if float(gamma_end) > float(gamma_start):
            raise ValueError(
                "`gamma_end` must be at most `gamma_start` (annealing goes from large "
                f"to small); got {gamma_end} > {gamma_start}."
            )

    def schedule(count: Real[ArrayLike, ""]) -> Float[Array, ""]:
        frac = jnp.clip(jnp.asarray(count) / steps, 0.0, 1.0)
        start = jnp.asarray(gamma_start, float)
        return start * (jnp.asarray(gamma_end, float) / start) ** frac

    return schedule


def pnp_proximal_gradient(
    prox: Callable[[Float[Array, " n"]], Float[Array, " n"]],
    fidelity: Callable[[Float[Array, " n"]], Float[Array, ""]],
    x0: Float[Array, " n"],
    *,
    step_size: Real[ArrayLike, ""],
    rtol: float = 1e-5,
    atol: float = 1e-5,
    damp: float = 0.0,
    max_steps: int = 1000,
    throw: bool = True,
) -> optx.Solution:
    """Plug-and-play proximal gradient descent: the fixed point of
    `x -> prox(x - step_size * grad fidelity(x))`.

    With `prox` a learned proximal network (`prox = prox_R`), a fixed point is a
    stationary point of `step_size * fidelity + R` (Fang, Buchanan & Sulam, 2024,
    convergence of PnP with LPNs). The iteration runs as `optimistix.fixed_point` with
    `optimistix.FixedPointIteration`, so it reports a `RESULTS` code and the number of
    steps, and the solution is differentiable by the implicit function theorem.

    **Arguments:**

    - `prox`: the proximal operator, mapping a point of shape `(n,)` to one of the same
        shape (for a 1-D network applied pixel by pixel, vmap it).
    - `fidelity`: the data-fidelity term `D(x)`, a scalar function (e.g.
        `0.5 * ||A x - b||^2`).
    - `x0`: the starting point, of shape `(n,)`.
    - `step_size`: the gradient step `eta`, positive; `eta <= 1 / L` with `L` the
        Lipschitz constant of `grad D` for the convergence guarantees.
    - `rtol`, `atol`: the fixed-point tolerances (on successive iterates).
    - `damp`: the damping of `optimistix.FixedPointIteration`, in `[0, 1)`.
    - `max_steps`: the most iterations.
    - `throw`: whether failing to converge raises.

    **Returns:** an `optimistix.Solution`: `value` the fixed point, `result`, and
    `stats["num_steps"]`.

    **Raises:** `ValueError` naming the argument if `step_size` is not positive,
    `damp` is not in `[0, 1)`, or `x0` is not a vector.
    """
    if x0.ndim != 1:
        raise ValueError(f"`x0` must be a vector of shape (n,); got {x0.shape}.")
    if not isinstance(step_size, jax.core.Tracer) and not float(step_size) > 0:
        raise ValueError(f"`step_size` must be positive; got {step_size!r}.")
    if not 0.0 <= float(damp) < 1.0:
        raise ValueError(f"`damp` must be in [0, 1); got {damp!r}.")
    check_positive_int(max_steps, "max_steps")
    grad_fidelity = jax.grad(fidelity)

    def step(x: Array, eta: Array) -> Array:
        out = prox(x - eta * grad_fidelity(x))
        if out.shape != x.shape:
            raise ValueError(
                f"`prox` must map shape {x.shape} to itself; got {out.shape}."
            )
        return out

    solver = optx.FixedPointIteration(rtol=rtol, atol=atol, damp=damp)
    return optx.fixed_point(
        step,
        solver,
        x0,
        args=jnp.asarray(step_size, x0.dtype),
        max_steps=max_steps,
        throw=throw,
    )
