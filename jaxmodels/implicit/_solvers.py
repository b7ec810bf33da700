"""Anderson acceleration and Broyden's method, written as optimistix solvers.

Optimistix has fixed-point iteration, Newton and chord methods, but neither Anderson
acceleration nor Broyden's method, the two workhorses of deep equilibrium models. Both are
written here against optimistix's solver interface (`init`/`step`/`terminate`/
`postprocess`), so they go wherever an optimistix solver goes: `optx.fixed_point`,
`optx.root_find`, any adjoint, `throw=`, `max_steps=`.
"""

from collections.abc import Callable
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.flatten_util as jfu
import jax.numpy as jnp
import lineax as lx
import optimistix as optx
from jaxtyping import Array, Bool, Float, Int, PyTree, Scalar


def _check_tolerances(rtol: float, atol: float, memory: int) -> None:
    if not (rtol >= 0 and atol >= 0 and rtol + atol > 0):
        raise ValueError(
            f"`rtol` and `atol` must be non-negative and not both zero, got "
            f"rtol={rtol!r}, atol={atol!r}."
        )
    if memory < 1:
        raise ValueError(f"`memory` must be a positive int, got {memory!r}.")


def _scaled_size(
    norm: Callable[[PyTree], Scalar],
    diff: Float[Array, " n"],
    ref: Float[Array, " n"],
    rtol: float,
    atol: float,
) -> Scalar:
    return norm(diff / (atol + rtol * jnp.abs(ref)))


def _finite_or_diverged(
    error: Scalar, y: Float[Array, " n"]
) -> tuple[Bool[Array, ""], optx.RESULTS]:
    # The error starts at +inf, before any step; NaN or a non-finite iterate diverged.
    finite = ~jnp.isnan(error) & jnp.all(jnp.isfinite(y))
    converged = finite & (error < 1)
    result = optx.RESULTS.where(
        finite, optx.RESULTS.successful, optx.RESULTS.nonlinear_divergence
    )
    return converged | ~finite, result


# --- Anderson acceleration ------------------------------------------------------------


class _AndersonState(eqx.Module):
    xs: Float[Array, "memory n"]
    gs: Float[Array, "memory n"]
    count: Int[Array, ""]
    restarts: Int[Array, ""]
    error: Scalar


class Anderson(optx.AbstractFixedPointSolver):
    """Anderson acceleration (type II) for fixed points `y = f(y)`.

    Keeps the last `memory` iterates `x_i` and residuals `g_i = f(x_i) - x_i`, and moves
    to `sum_i a_i [(1 - mixing) x_i + mixing f(x_i)]` with the weights `a` (summing to
    one) that minimise `||sum_i a_i g_i||^2 + regularisation * scale * ||a||^2`.
    The regularisation is relative to the latest squared residual, so it stays a small
    fraction of the objective from the first step to the last, at every scale. If that small system is
    singular or gives non-finite weights, the history restarts from the current point and
    the step is a plain damped fixed-point step: a singular history never produces NaN.

    Walker and Ni, "Anderson acceleration for fixed-point iterations" (SIAM J. Numer.
    Anal., 2011); used for deep equilibrium models by Bai, Kolter and Koltun (2019).

    Use it wherever optimistix takes a fixed-point solver:
    `optx.fixed_point(fn, Anderson(rtol=1e-5, atol=1e-5), y0)`.
    """

    rtol: float
    atol: float
    norm: Callable[[PyTree], Scalar] = optx.max_norm
    memory: int = eqx.field(static=True, default=5)
    mixing: float = 1.0
    regularisation: float = 1e-8

    def __check_init__(self):
        _check_tolerances(self.rtol, self.atol, self.memory)

    def init(
        self,
        fn: Callable,
        y: PyTree[Array],
        args: PyTree,
        options: dict[str, Any],
        f_struct: PyTree[jax.ShapeDtypeStruct],
        aux_struct: PyTree[jax.ShapeDtypeStruct],
        tags: frozenset[object],
    ) -> _AndersonState:
        del fn, args, options, f_struct, aux_struct, tags
        flat, _ = jfu.ravel_pytree(y)
        zeros = jnp.zeros((self.memory, flat.size), flat.dtype)
        return _AndersonState(
            xs=zeros,
            gs=zeros,
            count=jnp.array(0),
            restarts=jnp.array(0),
            error=jnp.array(jnp.inf, flat.dtype),
        )

    def step(
        self,
        fn: Callable,
        y: PyTree[Array],
        args: PyTree,
        options: dict[str, Any],
        state: _AndersonState,
        tags: frozenset[object],
    ) -> tuple[PyTree[Array], _AndersonState, Any]:
        del options, tags
        x, unravel = jfu.ravel_pytree(y)
        fx_tree, aux = fn(y, args)
        fx, _ = jfu.ravel_pytree(fx_tree)
        g = fx - x
        slot = state.count % self.memory
        xs = state.xs.at[slot].set(x)
        gs = state.gs.at[slot].set(g)
        n_valid = jnp.minimum(state.count + 1, self.memory)
        valid = jnp.arange(self.memory) < n_valid

        # Bordered normal equations of min ||G^T a|| s.t. sum(a) = 1; unused slots get
        # an identity row so that their weight is exactly zero.
        gram = jnp.where(valid[:, None] & valid[None, :], gs @ gs.T, 0.0)
        scale = g @ g
        eye = jnp.eye(self.memory, dtype=x.dtype)
        gram = gram + jnp.where(valid, self.regularisation * scale, 1.0)[:, None] * eye
        ones = valid.astype(x.dtype)
        matrix = jnp.block([[jnp.zeros((1, 1), x.dtype), ones[None, :]],
                            [ones[:, None], gram]])  # fmt: skip
        rhs = jnp.zeros(self.memory + 1, x.dtype).at[0].set(1.0)
        solution = lx.linear_solve(
            lx.MatrixLinearOperator(matrix), rhs, lx.LU(), throw=False
        )
        alpha = solution.value[1:]
        ok = (
            (solution.result == lx.RESULTS.successful)
            & jnp.all(jnp.isfinite(alpha))
            & (scale > 0)
        )
        fs = xs + gs
        mixed = (1 - self.mixing) * (alpha @ xs) + self.mixing * (alpha @ fs)
        plain = (1 - self.mixing) * x + self.mixing * fx
        new_x = jnp.where(ok, mixed, plain)
        # A restart keeps only the current point in the history.
        xs = jnp.where(ok, xs, jnp.zeros_like(xs).at[0].set(x))
        gs = jnp.where(ok, gs, jnp.zeros_like(gs).at[0].set(g))
        count = jnp.where(ok, state.count + 1, 1)
        error = _scaled_size(self.norm, g, fx, self.rtol, self.atol)
        new_state = _AndersonState(
            xs=xs,
            gs=gs,
            count=count,
            restarts=state.restarts + jnp.where(ok, 0, 1),
            error=error,
        )
        return unravel(new_x), new_state, aux

    def terminate(
        self,
        fn: Callable,
        y: PyTree[Array],
        args: PyTree,
        options: dict[str, Any],
        state: _AndersonState,
        tags: frozenset[object],
    ) -> tuple[Bool[Array, ""], optx.RESULTS]:
        del fn, args, options, tags
        return _finite_or_diverged(state.error, jfu.ravel_pytree(y)[0])

    def postprocess(
        self,
        fn: Callable,
        y: PyTree[Array],
        aux: Any,
        args: PyTree,
        options: dict[str, Any],
        state: _AndersonState,
        tags: frozenset[object],
        result: optx.RESULTS,
    ) -> tuple[PyTree[Array], Any, dict[str, Any]]:
        del fn, args, options, tags, result
        return y, aux, {"restarts": state.restarts}


Anderson.__init__.__doc__ = """**Arguments:**

- `rtol`, `atol`: the solve stops when `norm((f(y) - y) / (atol + rtol * |f(y)|)) < 1`.
- `norm`: the norm of that test (`optx.max_norm`, `optx.rms_norm`, `optx.two_norm`).
- `memory`: how many past iterates enter the least-squares problem (`m`).
- `mixing`: `beta` in `(0, 1]`; 1 mixes the function values only, smaller values damp.
- `regularisation`: Tikhonov weight of the least-squares problem, relative to the
    latest squared residual.

**Raises:** `ValueError` if the tolerances are negative or both zero, or `memory < 1`.
"""


# --- Broyden's method -----------------------------------------------------------------


class _BroydenState(eqx.Module):
    us: Float[Array, "memory n"]
    vs: Float[Array, "memory n"]
    count: Int[Array, ""]
    y_prev: Float[Array, " n"]
    f_prev: Float[Array, " n"]
    error: Scalar
    best_y: Float[Array, " n"]
    best_f: Float[Array, " n"]
    best_error: Scalar
    restarts: Int[Array, ""]


class _AbstractBroyden(optx.AbstractRootFinder):
    rtol: eqx.AbstractVar[float]
    atol: eqx.AbstractVar[float]
    norm: eqx.AbstractVar[Callable[[PyTree], Scalar]]
    memory: eqx.AbstractVar[int]
    initial_inverse_jacobian: eqx.AbstractVar[float]
    _good: ClassVar[bool]

    def _apply(self, state: _BroydenState, v: Float[Array, " n"]) -> Float[Array, " n"]:
        """`H v` with `H = h0 I + sum_i u_i v_i^T`."""
        return self.initial_inverse_jacobian * v + state.us.T @ (state.vs @ v)

    def _apply_transpose(
        self, state: _BroydenState, v: Float[Array, " n"]
    ) -> Float[Array, " n"]:
        return self.initial_inverse_jacobian * v + state.vs.T @ (state.us @ v)

    def init(
        self,
        fn: Callable,
        y: PyTree[Array],
        args: PyTree,
        options: dict[str, Any],
        f_struct: PyTree[jax.ShapeDtypeStruct],
        aux_struct: PyTree[jax.ShapeDtypeStruct],
        tags: frozenset[object],
    ) -> _BroydenState:
        del fn, args, options, aux_struct, tags
        flat, _ = jfu.ravel_pytree(y)
        f_flat, _ = jfu.ravel_pytree(
            jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), f_struct)
        )
        if f_flat.size != flat.size:
            raise ValueError(
                "Broyden's method needs a square system: `fn` must return as many "
                f"elements as `y` has ({f_flat.size} != {flat.size})."
            )
        zeros = jnp.zeros((self.memory, flat.size), flat.dtype)
        inf = jnp.array(jnp.inf, flat.dtype)
        return _BroydenState(
            us=zeros,
            vs=zeros,
            count=jnp.array(0),
            y_prev=flat,
            f_prev=jnp.zeros_like(flat),
            error=inf,
            best_y=flat,
            best_f=jnp.zeros_like(flat),
            best_error=inf,
            restarts=jnp.array(0),
        )

    def step(
        self,
        fn: Callable,
        y: PyTree[Array],
        args: PyTree,
        options: dict[str, Any],
        state: _BroydenState,
        tags: frozenset[object],
    ) -> tuple[PyTree[Array], _BroydenState, Any]:
        del options, tags
        x, unravel = jfu.ravel_pytree(y)
        f_tree, aux = fn(y, args)
        f, _ = jfu.ravel_pytree(f_tree)
        error = _scaled_size(self.norm, f, x, self.rtol, self.atol)
        dx = x - state.y_prev
        df = f - state.f_prev
        h_df = self._apply(state, df)
        if self._good:
            # Sherman-Morrison form of J+ = J + (df - J dx) dx^T / (dx^T dx).
            v = self._apply_transpose(state, dx)
        else:
            # The inverse update H+ = H + (dx - H df) df^T / (df^T df).
            v = df
        denominator = v @ df
        # Skip an update whose denominator is lost in rounding (the differences of
        # nearly equal iterates near convergence are noise).
        eps = jnp.finfo(x.dtype).eps
        usable = (state.count > 0) & (
            jnp.abs(denominator) > eps**0.5 * jnp.linalg.norm(v) * jnp.linalg.norm(df)
        )
        u = jnp.where(usable, (dx - h_df) / jnp.where(usable, denominator, 1.0), 0.0)
        v = jnp.where(usable, v, 0.0)
        # The low-rank factors live in a ring buffer: beyond `memory` updates the oldest
        # is overwritten (limited-memory Broyden).
        slot = jnp.maximum(state.count - 1, 0) % self.memory
        us = jnp.where(usable, state.us.at[slot].set(u), state.us)
        vs = jnp.where(usable, state.vs.at[slot].set(v), state.vs)
        # Without a line search a poor secant model can throw the iterate far away:
        # when the residual grows tenfold past the best one (or is not finite), forget
        # the model and restart with a plain step from the best point so far.
        improved = error < state.best_error
        best_y = jnp.where(improved, x, state.best_y)
        best_f = jnp.where(improved, f, state.best_f)
        best_error = jnp.where(improved, error, state.best_error)
        restart = ~(error <= 10 * state.best_error)
        us = jnp.where(restart, 0.0, us)
        vs = jnp.where(restart, 0.0, vs)
        model = eqx.tree_at(lambda s: (s.us, s.vs), state, (us, vs))
        new_x = jnp.where(
            restart,
            best_y - self.initial_inverse_jacobian * best_f,
            x - self._apply(model, f),
        )
        new_state = _BroydenState(
            us=us,
            vs=vs,
            count=jnp.where(restart, 0, state.count + 1),
            y_prev=jnp.where(restart, best_y, x),
            f_prev=jnp.where(restart, best_f, f),
            error=error,
            best_y=best_y,
            best_f=best_f,
            best_error=best_error,
            restarts=state.restarts + jnp.where(restart, 1, 0),
        )
        return unravel(new_x), new_state, aux

    def terminate(
        self,
        fn: Callable,
        y: PyTree[Array],
        args: PyTree,
        options: dict[str, Any],
        state: _BroydenState,
        tags: frozenset[object],
    ) -> tuple[Bool[Array, ""], optx.RESULTS]:
        del fn, args, options, tags
        return _finite_or_diverged(state.error, jfu.ravel_pytree(y)[0])

    def postprocess(
        self,
        fn: Callable,
        y: PyTree[Array],
        aux: Any,
        args: PyTree,
        options: dict[str, Any],
        state: _BroydenState,
        tags: frozenset[object],
        result: optx.RESULTS,
    ) -> tuple[PyTree[Array], Any, dict[str, Any]]:
        del fn, args, options, tags
        # A failed solve returns the best point it evaluated, not its last guess.
        y_flat, unravel = jfu.ravel_pytree(y)
        failed = result != optx.RESULTS.successful
        y = unravel(jnp.where(failed, state.best_y, y_flat))
        return y, aux, {"restarts": state.restarts}


class Broyden(_AbstractBroyden):
    """Broyden's "good" method, a quasi-Newton root finder for `fn(y) = 0`.

    Keeps a low-rank approximation `H = h0 I + U^T V` of the inverse Jacobian, updated by
    Sherman-Morrison so that the Jacobian approximation satisfies the secant condition
    with the least change in Frobenius norm; the step is `y - H fn(y)`. No Jacobian is
    ever formed, and a step costs one evaluation of `fn`. The default
    `initial_inverse_jacobian = -1` is the exact inverse Jacobian of a fixed-point
    residual `f(y) - y` with `df/dy = 0`, so the first step is a fixed-point step
    (`optx.fixed_point` hands root finders exactly that residual).

    Broyden, "A class of methods for solving nonlinear simultaneous equations" (Math.
    Comp., 1965); the limited-memory form used by deep equilibrium models (Bai, Kolter
    and Koltun, 2019).
    """

    rtol: float
    atol: float
    norm: Callable[[PyTree], Scalar] = optx.max_norm
    memory: int = eqx.field(static=True, default=30)
    initial_inverse_jacobian: float = -1.0
    _good: ClassVar[bool] = True

    def __check_init__(self):
        _check_tolerances(self.rtol, self.atol, self.memory)


class BadBroyden(_AbstractBroyden):
    """Broyden's "bad" method: the inverse Jacobian itself gets the least-change update.

    As [`jaxmodels.implicit.Broyden`][] but with `H+ = H + (dy - H df) df^T / |df|^2`,
    the secant update of the inverse that is smallest in Frobenius norm. Cheaper by one
    matrix-vector product; often as good on the mildly nonlinear maps of equilibrium
    models.
    """

    rtol: float
    atol: float
    norm: Callable[[PyTree], Scalar] = optx.max_norm
    memory: int = eqx.field(static=True, default=30)
    initial_inverse_jacobian: float = -1.0
    _good: ClassVar[bool] = False

    def __check_init__(self):
        _check_tolerances(self.rtol, self.atol, self.memory)


_BROYDEN_DOC = """**Arguments:**

- `rtol`, `atol`: the solve stops when `norm(fn(y) / (atol + rtol * |y|)) < 1`.
- `norm`: the norm of that test.
- `memory`: the rank of the inverse-Jacobian update kept (a ring buffer).
- `initial_inverse_jacobian`: `h0`, the multiple of the identity that starts `H`.

**Raises:** `ValueError` if the tolerances are negative or both zero, `memory < 1`, or
`fn` does not return as many elements as `y` has.
"""
Broyden.__init__.__doc__ = _BROYDEN_DOC
BadBroyden.__init__.__doc__ = _BROYDEN_DOC


# --- Anderson-accelerated Richardson iteration, as a lineax linear solver --------------


class AndersonLinearSolver(lx.AbstractLinearSolver):
    """Solves `A v = b` by Richardson iteration `v <- v + (b - A v)`, Anderson-accelerated.

    The backward solve of a deep equilibrium model, `(I - J)^T v = g`, is the fixed
    point `v = J^T v + g`, which converges whenever the cell is a contraction; Anderson
    acceleration (the [`jaxmodels.implicit.Anderson`][] solver above, on that affine map)
    speeds it up. Unlike lineax's GMRES, which always builds its whole Krylov basis of
    `restart` vectors before testing convergence, the test here runs after every
    product with `A`: an easy solve costs a few products. The solve stops when
    `norm(b - A v) < atol + rtol * norm(b)`; `max_steps` products without that is a
    `max_steps_reached` result. This is how torchdeq solves its backward pass (Geng and
    Kolter, "TorchDEQ: a library for deep equilibrium models", 2023).

    Matrix-free: only `A.mv` is used. For an `A` that is far from the identity
    (Richardson diverges when `I - A` has spectral radius above one) use
    `lineax.GMRES`.
    """

    rtol: float
    atol: float
    norm: Callable[[PyTree], Scalar] = optx.two_norm
    memory: int = eqx.field(static=True, default=6)
    max_steps: int = eqx.field(static=True, default=100)

    def __check_init__(self):
        _check_tolerances(self.rtol, self.atol, self.memory)
        if self.max_steps < 1:
            raise ValueError(f"`max_steps` must be a positive int, got {self.max_steps!r}.")  # fmt: skip

    def init(self, operator: lx.AbstractLinearOperator, options: dict[str, Any]):
        del options
        if operator.in_structure() != operator.out_structure():
            raise ValueError(
                "`AndersonLinearSolver` needs a square operator with the same input "
                "and output structure."
            )
        return operator

    def compute(
        self,
        state: lx.AbstractLinearOperator,
        vector: PyTree[Array],
        options: dict[str, Any],
    ) -> tuple[PyTree[Array], lx.RESULTS, dict[str, Any]]:
        del options
        operator = state
        b, unravel = jfu.ravel_pytree(vector)
        # Rescale so that the stopping test is `norm(residual) < 1`, whatever rtol and
        # atol: the problem is linear, so the solution scales back exactly.
        scale = self.atol + self.rtol * self.norm(b)
        safe = jnp.where(scale > 0, scale, 1.0)
        b_scaled = b / safe

        def residual_step(v, _):
            av, _ = jfu.ravel_pytree(operator.mv(unravel(v)))
            return v + (b_scaled - av)

        solver = Anderson(rtol=0.0, atol=1.0, norm=self.norm, memory=self.memory)
        sol = optx.fixed_point(
            residual_step,
            solver,
            jnp.zeros_like(b_scaled),
            max_steps=self.max_steps,
            adjoint=optx.ImplicitAdjoint(),
            throw=False,
        )
        # A non-finite iterate (Richardson diverging past overflow) is a breakdown; any
        # other failure is the step budget running out.
        failure = lx.RESULTS.where(
            sol.result == optx.RESULTS.nonlinear_divergence,
            lx.RESULTS.breakdown,
            lx.RESULTS.max_steps_reached,
        )
        result = lx.RESULTS.where(
            sol.result == optx.RESULTS.successful, lx.RESULTS.successful, failure
        )
        value = unravel(sol.value * safe)
        return value, result, {"num_steps": sol.stats["num_steps"]}

    def transpose(self, state: lx.AbstractLinearOperator, options: dict[str, Any]):
        return state.transpose(), options

    def conj(self, state: lx.AbstractLinearOperator, options: dict[str, Any]):
        return lx.conj(state), options

    def assume_full_rank(self) -> bool:
        return True


AndersonLinearSolver.__init__.__doc__ = """**Arguments:**

- `rtol`, `atol`: the solve stops when `norm(b - A v) < atol + rtol * norm(b)`.
- `norm`: the norm of that test; the two-norm by default.
- `memory`: the Anderson memory `m`.
- `max_steps`: the most products with `A`.

**Raises:** `ValueError` if the tolerances are negative or both zero, `memory < 1` or
`max_steps < 1`.
"""
