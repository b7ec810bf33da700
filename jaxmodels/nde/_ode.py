from collections.abc import Callable

import diffrax as dfx
import equinox as eqx
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree

from .._core import check_positive_int
from ._vector_field import check_dt0, check_initial_value


class ODESolution(eqx.Module):
    """The outcome of `NeuralODE.solve`.

    **Fields:**

    - `ts`: the save times (of shape `(len(ts),)` for the default `SaveAt(ts=ts)`), or
        `None` if the `saveat` saved no times.
    - `ys`: the states at `ts` (of shape `(len(ts), data_size)` by default), or
        whatever the `saveat` asked for.
    - `stats`: a dict of integer scalars: `num_steps` (step attempts),
        `num_accepted_steps`, `num_rejected_steps`, and `num_function_evaluations`,
        the vector-field evaluations, for solvers whose count follows from their
        steps (see `solver_stats`).
    - `result`: a `diffrax.RESULTS` code. It is not promoted to `jaxmodels.RESULTS`:
        both extend `optimistix.RESULTS` as siblings, so neither promotes the other.
        Compare with `diffrax.RESULTS.successful`.
    """

    ts: Float[Array, " save"] | None
    ys: PyTree[Array] | None
    stats: dict[str, Int[Array, ""]]
    result: dfx.RESULTS


def function_evaluations(
    solver: dfx.AbstractSolver, num_steps: Int[Array, ""]
) -> Int[Array, ""] | None:
    """The vector-field evaluations of `num_steps` step attempts of `solver`.

    Diffrax 0.7 does not count evaluations, but for explicit Runge-Kutta solvers they
    follow from the tableau: each attempt (accepted or rejected) evaluates every stage,
    except that a first-same-as-last (FSAL) method reuses its last stage as the next
    step's first, costing one evaluation at the start. The count is exact except that
    an FSAL method whose very first step is rejected re-evaluates the initial point
    (one more per such rejection); the initial step-size selection of
    `PIDController(dt0=None)` is not counted (torchdiffeq does count its two). `Euler`
    costs one evaluation a step. A solve with `jump_ts` (a `NeuralCDE` on a path with
    kinks) re-evaluates after each step that ends on a jump, uncounted here. `None`
    for other solvers (implicit ones, whose cost depends on their root finder).
    """
    if isinstance(solver, dfx.Euler):
        return num_steps
    if isinstance(solver, dfx.AbstractERK) and isinstance(
        solver.tableau, dfx.ButcherTableau
    ):
        stages, fsal = solver.tableau.num_stages, int(solver.tableau.fsal)
        return num_steps * (stages - fsal) + fsal
    return None


def solver_stats(
    solver: dfx.AbstractSolver, sol: dfx.Solution
) -> dict[str, Int[Array, ""]]:
    """The statistics of a diffrax solve that `ODESolution.stats` reports."""
    stats = {
        name: sol.stats[name]
        for name in ("num_steps", "num_accepted_steps", "num_rejected_steps")
    }
    evaluations = function_evaluations(solver, sol.stats["num_steps"])
    if evaluations is not None:
        stats["num_function_evaluations"] = evaluations
    return stats


class NeuralODE(eqx.Module):
    """A neural ordinary differential equation `dy/dt = f(t, y)`, solved with diffrax.

    From Chen et al., "Neural Ordinary Differential Equations" (2018); see also Kidger,
    "On Neural Differential Equations" (2021). The model maps an initial state `y0` to
    the solution at the times `ts`; the vector field `f` (usually a `MLPVectorField`)
    holds the parameters, and gradients flow through the solver by the chosen diffrax
    adjoint: `RecursiveCheckpointAdjoint` (discretise-then-optimise, exact gradients of
    the numerical solution) or `BacksolveAdjoint` (the paper's continuous adjoint,
    memory constant in the number of steps).
    """

    vector_field: Callable[..., Array]
    solver: dfx.AbstractSolver
    stepsize_controller: dfx.AbstractStepSizeController
    adjoint: dfx.AbstractAdjoint
    # A solver option, not a parameter: a Python float, so no gradient reaches it.
    dt0: float | None
    max_steps: int = eqx.field(static=True)

    def __init__(
        self,
        vector_field: Callable[..., Array],
        *,
        solver: dfx.AbstractSolver = dfx.Tsit5(),
        stepsize_controller: dfx.AbstractStepSizeController = dfx.PIDController(
            rtol=1e-3, atol=1e-6
        ),
        adjoint: dfx.AbstractAdjoint = dfx.RecursiveCheckpointAdjoint(),
        dt0: float | None = None,
        max_steps: int = 4096,
    ):
        """**Arguments:**

        - `vector_field`: an Equinox module (or other callable) `f(t, y, args)` that
            returns `dy/dt` of the same shape as `y`, such as `MLPVectorField`.
        - `solver`: a diffrax ODE solver.
        - `stepsize_controller`: a diffrax step-size controller. Adaptive ones
            (`PIDController`) need a solver with an error estimate.
        - `adjoint`: how to differentiate through the solve, a diffrax adjoint.
        - `dt0`: the initial step; `None` lets an adaptive controller choose it.
            Required (and then the fixed step) with `ConstantStepSize`.
        - `max_steps`: the most steps one solve may take.

        **Raises:** `ValueError` naming the argument if `vector_field` is not
        callable, `max_steps` is not a positive integer, `dt0` is not positive, or
        `dt0` is `None` with `ConstantStepSize`.
        """
        if not callable(vector_field):
            raise ValueError(
                "`vector_field` must be a callable `f(t, y, args)`, such as "
                f"`MLPVectorField`; got {vector_field!r}."
            )
        check_positive_int(max_steps, "max_steps")
        dt0 = check_dt0(dt0, stepsize_controller)
        self.vector_field = vector_field
        self.solver = solver
        self.stepsize_controller = stepsize_controller
        self.adjoint = adjoint
        self.dt0 = dt0
        self.max_steps = max_steps

    def solve(
        self,
        ts: Float[Array, " time"],
        y0: Float[Array, " data"],
        *,
        throw: bool = True,
        saveat: dfx.SaveAt | None = None,
    ) -> ODESolution:
        """Solve from `ts[0]` to `ts[-1]`, with the solver's statistics and result.

        **Arguments:**

        - `ts`: the times, of shape `(time,)`, strictly increasing, at least 2; the
            solve starts at `ts[0]` (where the state is `y0`) and ends at `ts[-1]`.
        - `y0`: one initial state, of shape `(data_size,)`; batch with `jax.vmap`.
        - `throw`: whether a failed solve (such as `max_steps` reached) raises. If
            `False`, check `ODESolution.result` instead.
        - `saveat`: what to save, a `diffrax.SaveAt`; `None` means `SaveAt(ts=ts)`.

        **Returns:** an `ODESolution`.

        **Raises:** `ValueError` naming `ts` or `y0` if a shape is wrong;
        `equinox.EquinoxRuntimeError` if `ts` is not strictly increasing, or (with
        `throw=True`) if the solve fails.
        """
        ts, y0, terms = self._setup(ts, y0, None, None)
        if saveat is None:
            saveat = dfx.SaveAt(ts=ts)
        sol = dfx.diffeqsolve(
            terms,
            self.solver,
            t0=ts[0],
            t1=ts[-1],
            dt0=self.dt0,
            y0=y0,
            saveat=saveat,
            stepsize_controller=self.stepsize_controller,
            adjoint=self.adjoint,
            max_steps=self.max_steps,
            throw=throw,
        )
        return ODESolution(
            ts=sol.ts,
            ys=sol.ys,
            stats=solver_stats(self.solver, sol),
            result=sol.result,
        )

    def _setup(
        self, ts: Array, y0: Array, key: PRNGKeyArray | None, args: PyTree
    ) -> tuple[Array, Array, dfx.AbstractTerm]:
        """The checked `ts` and `y0`, and the diffrax terms of a solve (the key and
        `args` are unused: the model is deterministic and takes none)."""
        del key, args
        ts = check_initial_value(ts, y0, self.vector_field)
        return ts, y0, dfx.ODETerm(self.vector_field)

    def __call__(
        self,
        ts: Float[Array, " time"],
        y0: Float[Array, " data"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "time data"]:
        """**Arguments:**

        - `ts`: the times, of shape `(time,)`, strictly increasing, at least 2; the
            first is the initial time.
        - `y0`: one initial state, of shape `(data_size,)`; batch with `jax.vmap`
            (over `ts` too, for per-example time grids).
        - `key`: unused; the model is deterministic.

        **Returns:** the solution at `ts`, of shape `(time, data_size)`; row 0 is `y0`.

        **Raises:** as `solve` with `throw=True`.
        """
        del key
        return self.solve(ts, y0).ys
