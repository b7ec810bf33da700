from collections.abc import Callable
from typing import Any

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import lineax as lx
import optimistix as optx
from jax import lax
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, PyTree, Scalar

from .._core import check_positive, check_positive_int


class _NoAux(eqx.Module):
    fn: Callable

    def __call__(self, y: PyTree, args: PyTree) -> PyTree:
        out, _ = self.fn(y, args)
        return out


def _newton_direction(
    fn: _NoAux,
    y: PyTree,
    args: PyTree,
    rhs: PyTree,
    linear_solver: lx.AbstractLinearSolver,
    tags: frozenset[object],
) -> tuple[PyTree, PyTree, lx.RESULTS]:
    """`(fn(y), J^-1 rhs, result)` with `J = d fn / dy` at `y`, matrix-free.

    The Jacobian is only ever applied to vectors (`jax.linearize`: one primal
    evaluation, then one JVP per Krylov iteration); it is never materialised.
    """
    fx, lin_fn = jax.linearize(lambda z: fn(z, args), y)
    operator = lx.FunctionLinearOperator(lin_fn, jax.eval_shape(lambda: y), tags=tags)
    if rhs is None:
        rhs = fx
    sol = lx.linear_solve(operator, rhs, linear_solver, throw=False)
    return fx, sol.value, sol.result


def _homotopy_field(lam: Scalar, z: PyTree, args: PyTree) -> PyTree:
    fn, fn_args, g0, linear_solver, tags = args
    del lam
    _, direction, _ = _newton_direction(fn, z, fn_args, g0, linear_solver, tags)
    # A failed inner solve is not reported here: it shows up as a large error
    # estimate (the step is rejected) or as a residual the end state cannot meet.
    return jtu.tree_map(jnp.negative, direction)


class _NewtonHomotopyState(eqx.Module):
    z1: PyTree
    f: PyTree
    aux: PyTree
    scale: Scalar
    step: Int[Array, ""]
    ode_steps: Int[Array, ""]
    ode_result: dfx.RESULTS
    result: optx.RESULTS


class NewtonHomotopy(optx.AbstractRootFinder):
    """A root finder that follows the Newton homotopy ODE, then polishes with Newton.

    The solver of HomoODE, after "Two Sides of The Same Coin: Bridging Deep
    Equilibrium Models and Neural ODEs via Homotopy Continuation" (Ding et al., 2023).
    To solve `g(z) = 0` from a start `z0` it deforms the easy problem
    `g(z) - g(z0) = 0` (solved by `z0`) into the hard one along
    `H(z, lam) = g(z) - (1 - lam) g(z0) = 0`. Differentiating in `lam` gives the ODE

    `dz/dlam = -[dg/dz(z)]^{-1} g(z0)`,

    integrated from `lam = 0` to `1` with diffrax (an adaptive explicit Runge-Kutta
    method under a PID controller); `z(1)` solves `g(z) = 0` as long as `dg/dz` stays
    invertible along the path. Each evaluation of the vector field is one matrix-free
    linear solve (`jax.linearize` of `g` wrapped in a `lineax.FunctionLinearOperator`,
    solved with a Krylov method; the Jacobian is never formed). Further steps of the
    root find are Newton corrections (a predictor-corrector scheme), taken only while
    the residual is above tolerance.

    It is an optimistix root finder: pass it to `optimistix.root_find`, which gives
    implicit differentiation of the root (`optimistix.ImplicitAdjoint`), `max_steps`
    (one homotopy solve plus at most `max_steps - 1` Newton corrections), `throw` and
    a `RESULTS` code. The solution's `stats` add `ode_steps` (the ODE solver's steps,
    rejected ones included), `nfe` (the homotopy's vector-field evaluations, each one
    linear solve: the Runge-Kutta stages evaluated), `newton_steps`, `residual`
    (`norm(g(z))` at the returned `z`) and `ode_result` (the `diffrax.RESULTS` of the
    path; a failed path ends the solve with `RESULTS.nonlinear_divergence`).
    """

    rtol: float
    atol: float
    norm: Callable[[PyTree], Scalar]
    ode_rtol: float
    ode_atol: float
    solver: dfx.AbstractERK
    linear_solver: lx.AbstractLinearSolver
    max_ode_steps: int = eqx.field(static=True)

    def __init__(
        self,
        rtol: float,
        atol: float,
        norm: Callable[[PyTree], Scalar] = optx.rms_norm,
        *,
        ode_rtol: float | None = None,
        ode_atol: float | None = None,
        solver: dfx.AbstractERK = dfx.Tsit5(),
        linear_solver: lx.AbstractLinearSolver = lx.GMRES(rtol=1e-5, atol=1e-6),
        max_ode_steps: int = 256,
    ):
        """**Arguments:**

        - `rtol`, `atol`: the root's tolerance: the solve ends once
            `norm(g(z)) < atol + rtol * norm(z)`.
        - `norm`: the norm of that test, e.g. `optimistix.rms_norm` (the default).
        - `ode_rtol`, `ode_atol`: the PID controller's tolerances along the homotopy
            path; default `rtol` and `atol`. Looser ones make the path cheaper and leave
            more to the Newton corrections.
        - `solver`: an explicit adaptive Runge-Kutta method (a `diffrax.AbstractERK`
            with an error estimate, e.g. `diffrax.Tsit5()`).
        - `linear_solver`: a matrix-free lineax solver for the Newton systems (e.g.
            `lineax.GMRES` or `lineax.BiCGStab`); a dense solver would materialise the
            Jacobian.
        - `max_ode_steps`: the most steps of the homotopy ODE solve.

        **Raises:** `ValueError` naming the argument if a tolerance is not positive,
        `solver` is not an explicit Runge-Kutta method or `max_ode_steps` is not a
        positive integer.
        """
        for value, name in [(rtol, "rtol"), (atol, "atol")]:
            check_positive(value, name)
        ode_rtol = rtol if ode_rtol is None else ode_rtol
        ode_atol = atol if ode_atol is None else ode_atol
        for value, name in [(ode_rtol, "ode_rtol"), (ode_atol, "ode_atol")]:
            check_positive(value, name)
        if not isinstance(solver, dfx.AbstractERK):
            raise ValueError(
                "`solver` must be an explicit Runge-Kutta method (a diffrax.AbstractERK "
                f"such as diffrax.Tsit5()); got {type(solver).__name__}."
            )
        if not isinstance(linear_solver, lx.AbstractLinearSolver):
            raise ValueError(
                "`linear_solver` must be a lineax solver such as lineax.GMRES; got "
                f"{type(linear_solver).__name__}."
            )
        check_positive_int(max_ode_steps, "max_ode_steps")
        self.rtol = float(rtol)
        self.atol = float(atol)
        self.norm = norm
        self.ode_rtol = float(ode_rtol)
        self.ode_atol = float(ode_atol)
        self.solver = solver
        self.linear_solver = linear_solver
        self.max_ode_steps = max_ode_steps

    def _scale(self, z: PyTree) -> Scalar:
        return self.atol + self.rtol * self.norm(z)

    def init(
        self,
        fn: Callable,
        y: PyTree,
        args: PyTree,
        options: dict[str, Any],
        f_struct: PyTree,
        aux_struct: PyTree,
        tags: frozenset[object],
    ) -> _NewtonHomotopyState:
        del options, f_struct, aux_struct
        no_aux = _NoAux(fn)
        g0 = no_aux(y, args)
        # The whole path is integrated here, once: `step` runs inside optimistix's
        # loop, where a branch between the path and a correction would, under vmap,
        # execute both.
        sol = dfx.diffeqsolve(
            dfx.ODETerm(_homotopy_field),
            self.solver,
            t0=0.0,
            t1=1.0,
            dt0=None,
            y0=y,
            args=(no_aux, args, g0, self.linear_solver, tags),
            saveat=dfx.SaveAt(t1=True),
            stepsize_controller=dfx.PIDController(
                rtol=self.ode_rtol, atol=self.ode_atol
            ),
            max_steps=self.max_ode_steps,
            throw=False,
        )
        z1 = jtu.tree_map(lambda a: a[0], sol.ys)
        f1, aux1 = fn(z1, args)
        return _NewtonHomotopyState(
            z1=z1,
            f=f1,
            aux=aux1,
            scale=self._scale(z1),
            step=jnp.array(0),
            ode_steps=jnp.asarray(sol.stats["num_steps"]),
            ode_result=sol.result,
            result=optx.RESULTS.successful,
        )

    def step(
        self,
        fn: Callable,
        y: PyTree,
        args: PyTree,
        options: dict[str, Any],
        state: _NewtonHomotopyState,
        tags: frozenset[object],
    ) -> tuple[PyTree, _NewtonHomotopyState, PyTree]:
        del options
        no_aux = _NoAux(fn)

        def take_path_end(y: PyTree) -> tuple[Any, ...]:
            del y
            result = optx.RESULTS.successful
            return state.z1, state.f, state.aux, state.scale, result

        def correct(y: PyTree) -> tuple[Any, ...]:
            _, diff, result = _newton_direction(
                no_aux, y, args, None, self.linear_solver, tags
            )
            new_y = jtu.tree_map(lambda a, b: a - b, y, diff)
            new_f, aux = fn(new_y, args)
            result = optx.RESULTS.promote(result)
            return new_y, new_f, aux, self._scale(new_y), result

        new_y, f, aux, scale, result = lax.cond(
            state.step == 0, take_path_end, correct, y
        )
        new_state = _NewtonHomotopyState(
            z1=state.z1,
            f=f,
            aux=aux,
            scale=scale,
            step=state.step + 1,
            ode_steps=state.ode_steps,
            ode_result=state.ode_result,
            result=result,
        )
        return new_y, new_state, aux

    def terminate(
        self,
        fn: Callable,
        y: PyTree,
        args: PyTree,
        options: dict[str, Any],
        state: _NewtonHomotopyState,
        tags: frozenset[object],
    ) -> tuple[Bool[Array, ""], optx.RESULTS]:
        del fn, y, args, options, tags
        residual = self.norm(state.f)
        ode_failed = state.ode_result != dfx.RESULTS.successful
        nonfinite = ~jnp.isfinite(residual)
        converged = (state.step > 0) & (residual < state.scale)
        result = optx.RESULTS.where(
            ode_failed | nonfinite, optx.RESULTS.nonlinear_divergence, state.result
        )
        return converged | ode_failed | nonfinite | (
            state.result != optx.RESULTS.successful
        ), result

    def postprocess(
        self,
        fn: Callable,
        y: PyTree,
        aux: PyTree,
        args: PyTree,
        options: dict[str, Any],
        state: _NewtonHomotopyState,
        tags: frozenset[object],
        result: optx.RESULTS,
    ) -> tuple[PyTree, PyTree, dict[str, Any]]:
        del fn, args, options, tags, result
        tableau = self.solver.tableau
        fsal = 1 if tableau.fsal else 0
        # Counted as the Runge-Kutta stages evaluated, rejected steps included (an
        # FSAL tableau evaluates its first stage once, at the start).
        stats = {
            "ode_steps": state.ode_steps,
            "nfe": fsal + (tableau.num_stages - fsal) * state.ode_steps,
            "newton_steps": jnp.maximum(state.step - 1, 0),
            "residual": self.norm(state.f),
            "ode_result": state.ode_result,
        }
        return y, aux, stats


class MLPCell(eqx.Module):
    """The default HomoODE/DEQ cell `f(z, x) = s W2 tanh(W1 z + U x + b1) + b2`.

    A one-hidden-layer perceptron of the state `z` and the input `x`. With
    `lipschitz` set, the factor `s = min(1, lipschitz / (|W1|_F |W2|_F))` bounds the
    Lipschitz constant of `z -> f(z, x)` by `lipschitz` (the Frobenius norm bounds the
    spectral one), so below 1 the equilibrium `f(z, x) = z` exists, is unique, and
    `dg/dz = df/dz - I` is invertible everywhere: the homotopy path cannot break down.
    """

    w1: Float[Array, "width state"]
    u: Float[Array, "width in_size"]
    b1: Float[Array, " width"]
    w2: Float[Array, "state width"]
    b2: Float[Array, " state"]
    lipschitz: float | None

    def __init__(
        self,
        state_size: int,
        in_size: int,
        width: int,
        *,
        lipschitz: float | None = 0.9,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `state_size`: the size of the state `z`.
        - `in_size`: the size of the input `x`.
        - `width`: the hidden layer's width.
        - `lipschitz`: the bound on the Lipschitz constant in `z`, or `None` for none.
        - `key`: a PRNG key for the initial parameters.

        **Raises:** `ValueError` naming the argument if a size is not a positive integer
        or `lipschitz` is not positive.
        """
        for value, name in [
            (state_size, "state_size"),
            (in_size, "in_size"),
            (width, "width"),
        ]:
            check_positive_int(value, name)
        if lipschitz is not None:
            check_positive(lipschitz, "lipschitz")
        k1, ku, kb1, k2, kb2 = jr.split(key, 5)
        self.w1 = jr.normal(k1, (width, state_size)) / jnp.sqrt(state_size)
        self.u = jr.normal(ku, (width, in_size)) / jnp.sqrt(in_size)
        self.b1 = 0.5 * jr.normal(kb1, (width,))
        self.w2 = jr.normal(k2, (state_size, width)) / jnp.sqrt(width)
        self.b2 = 0.5 * jr.normal(kb2, (state_size,))
        self.lipschitz = None if lipschitz is None else float(lipschitz)

    def _w2(self) -> Float[Array, "state width"]:
        if self.lipschitz is None:
            return self.w2
        bound = jnp.linalg.norm(self.w1) * jnp.linalg.norm(self.w2)
        return self.w2 * jnp.minimum(1.0, self.lipschitz / bound)

    def __call__(
        self, z: Float[Array, " state"], x: Float[Array, " in_size"]
    ) -> Float[Array, " state"]:
        """`f(z, x)`, of the shape of `z`."""
        hidden = jnp.tanh(self.w1 @ z + self.u @ x + self.b1)
        return self._w2() @ hidden + self.b2


def _residual_fn(z: Array, args: tuple[Callable, Array]) -> Array:
    cell, x = args
    return cell(z, x) - z


class HomoODE(eqx.Module):
    """HomoODE: a deep equilibrium layer solved along a homotopy ODE, with a readout.

    After "Two Sides of The Same Coin: Bridging Deep Equilibrium Models and Neural
    ODEs via Homotopy Continuation" (Ding et al., NeurIPS 2023). The hidden state is
    the equilibrium `z*` of a cell, `f(z*, x) = z*`, found as a root of
    `g(z) = f(z, x) - z` by `NewtonHomotopy`: the Newton homotopy ODE integrated from
    the shared, learnable initial point `z0` (one vector for all inputs, as in the
    paper). The class scores are a linear readout of `z*`.

    Gradients: by implicit differentiation at the root (`optimistix.ImplicitAdjoint`
    with a matrix-free GMRES), not through the ODE solver: memory does not grow with
    the path's length, and the gradient is that of the exact equilibrium. As `z*` does
    not depend on where the path starts, no gradient of the task loss reaches `z0`;
    `z0` is trained by `initial_point_loss` (the squared distance to the stop-gradient
    equilibria, minimised by their mean), which shortens the paths and so cuts the
    function evaluations.
    """

    cell: Callable
    z0: Float[Array, " state"]
    readout: eqx.nn.Linear
    root_finder: optx.AbstractRootFinder
    adjoint: optx.AbstractAdjoint
    max_steps: int = eqx.field(static=True)

    def __init__(
        self,
        in_size: int,
        state_size: int,
        out_size: int,
        *,
        width: int = 32,
        cell: Callable | None = None,
        rtol: float = 1e-4,
        atol: float = 1e-5,
        root_finder: optx.AbstractRootFinder | None = None,
        max_steps: int = 8,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `in_size`: the size of an input `x`.
        - `state_size`: the size of the equilibrium state `z`.
        - `out_size`: the number of class scores.
        - `width`: the hidden width of the default `MLPCell`.
        - `cell`: any callable module `cell(z, x)` returning an array of the shape of
            `z`; default an `MLPCell(state_size, in_size, width)`.
        - `rtol`, `atol`: the tolerances of the default `NewtonHomotopy`, and of the
            GMRES of the implicit backward pass.
        - `root_finder`: any optimistix root finder in place of the default
            `NewtonHomotopy(rtol, atol)` (e.g. `optimistix.Newton`, for a plain DEQ).
        - `max_steps`: the root finder's most steps (for `NewtonHomotopy`: one
            homotopy solve plus Newton corrections).
        - `key`: a PRNG key for the initial parameters.

        **Raises:** `ValueError` naming the argument if a size or `max_steps` is not a
        positive integer, a tolerance is not positive, or `cell` is not callable.
        """
        for value, name in [
            (in_size, "in_size"),
            (state_size, "state_size"),
            (out_size, "out_size"),
            (width, "width"),
            (max_steps, "max_steps"),
        ]:
            check_positive_int(value, name)
        for value, name in [(rtol, "rtol"), (atol, "atol")]:
            check_positive(value, name)
        if cell is not None and not callable(cell):
            raise ValueError(f"`cell` must be callable as cell(z, x); got {cell!r}.")
        if root_finder is not None and not isinstance(
            root_finder, optx.AbstractRootFinder
        ):
            raise ValueError(
                "`root_finder` must be an optimistix root finder; got "
                f"{type(root_finder).__name__}."
            )
        ckey, rkey = jr.split(key)
        self.cell = (
            MLPCell(state_size, in_size, width, key=ckey) if cell is None else cell
        )
        self.z0 = jnp.zeros(state_size)
        self.readout = eqx.nn.Linear(state_size, out_size, key=rkey)
        self.root_finder = (
            NewtonHomotopy(rtol, atol) if root_finder is None else root_finder
        )
        self.adjoint = optx.ImplicitAdjoint(
            linear_solver=lx.GMRES(rtol=rtol, atol=atol)
        )
        self.max_steps = max_steps

    def equilibrium(
        self,
        x: Float[Array, " in_size"],
        *,
        z0: Float[Array, " state"] | None = None,
        throw: bool = True,
    ) -> optx.Solution:
        """The equilibrium `z*` with `cell(z*, x) = z*`.

        **Arguments:**

        - `x`: one input, of shape `(in_size,)`; batch with `jax.vmap`.
        - `z0`: the start of the path, of shape `(state_size,)`; default the learned
            `self.z0`.
        - `throw`: whether a failed solve raises.

        **Returns:** an `optimistix.Solution`: `value` is `z*`, `result` an
        `optimistix.RESULTS`, and `stats` hold `num_steps` with, for `NewtonHomotopy`,
        `ode_steps`, `nfe`, `newton_steps` and `residual` (`norm(f(z*, x) - z*)`).

        **Raises:** `ValueError` if `x` or `z0` has the wrong shape;
        `equinox.EquinoxRuntimeError` (with `throw`) if the solve fails.
        """
        state_size = self.z0.shape[0]
        if z0 is None:
            z0 = self.z0
        if jnp.shape(z0) != (state_size,):
            raise ValueError(
                f"`z0` must have shape ({state_size},); got {jnp.shape(z0)}."
            )
        if jnp.ndim(x) != 1:
            raise ValueError(
                f"`x` must be one example of shape (in_size,), got shape {jnp.shape(x)}"
                "; batch with jax.vmap."
            )
        z0 = jnp.asarray(z0, jnp.result_type(z0, x))
        return optx.root_find(
            _residual_fn,
            self.root_finder,
            z0,
            (self.cell, x),
            max_steps=self.max_steps,
            adjoint=self.adjoint,
            throw=throw,
        )

    def initial_point_loss(self, z_star: Float[Array, " state"]) -> Float[Array, ""]:
        """The squared distance `|z0 - stop_gradient(z*)|^2` that trains `z0`.

        Averaged over a data set it is minimised by the mean equilibrium, the single
        start closest (in mean square) to every input's root.
        """
        return jnp.sum((self.z0 - lax.stop_gradient(z_star)) ** 2)

    def __call__(
        self, x: Float[Array, " in_size"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, " out_size"]:
        """The class scores: a linear readout of the equilibrium.

        **Raises:** `equinox.EquinoxRuntimeError` if no equilibrium is found.
        """
        del key
        return self.readout(self.equilibrium(x).value)
