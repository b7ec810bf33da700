"""Regularising neural DEs towards dynamics that are cheap to solve.

Pal et al., "Opening the Blackbox: Accelerating Neural Differential Equations by
Regularizing Internal Solver Heuristics" (2021), the global regulariser; Pal et al.,
"Locally Regularized Neural Differential Equations: Some Black Boxes Were Meant to
Remain Closed!" (2023), the local one. The baselines: Finlay et al., "How to train
your neural ODE" (2020), kinetic energy and Jacobian Frobenius norm; Ghosh et al.,
"STEER: Simple Temporal Regularization For Neural ODEs" (2020), random end times.
"""

from collections.abc import Callable
from typing import Literal

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import optimistix as optx
from jax import lax
from jaxtyping import Array, Float, PRNGKeyArray, PyTree, Real

from ._ode import NeuralODE, ODESolution, solver_stats
from ._sde import NeuralSDE


_Model = NeuralODE | NeuralSDE


class SolverHeuristics(eqx.Module):
    """The two cost heuristics of an adaptive solver, over one step or summed over a
    solve's accepted steps.

    **Fields:**

    - `error`: the local error estimate, scaled as the step-size controller sees it
        (`norm(y_error / (atol + rtol * |y|))`, which a step passes when below 1), times
        the step size `|h|`.
    - `stiffness`: the stiffness estimate `|h| * ||f(Y_s) - f(Y_{s-1})|| / ||Y_s -
        Y_{s-1}||` from the last two stages `Y` of a Runge-Kutta step (Hairer and
        Wanner's estimate of `|h λ|` for the dominant eigenvalue `λ`); for other
        solvers the drift is evaluated at the ends of the step instead.
    """

    error: Float[Array, ""]
    stiffness: Float[Array, ""]


class RegularisedSolution(eqx.Module):
    """The outcome of `regularised_solve`.

    **Fields:**

    - `solution`: the `ODESolution` at `ts`, as the model's `solve` would give it.
    - `heuristics`: the `SolverHeuristics` summed over the accepted steps.
    - `penalty`: `error_weight * heuristics.error + stiffness_weight *
        heuristics.stiffness`, the term to add to the loss.
    """

    solution: ODESolution
    heuristics: SolverHeuristics
    penalty: Float[Array, ""]


def _rms(tree: PyTree[Array]) -> Array:
    return optx.rms_norm(tree)


def _tolerances(controller: dfx.AbstractStepSizeController) -> tuple[float, float]:
    """The controller's (rtol, atol); an unscaled error for non-adaptive controllers."""
    if isinstance(controller, dfx.PIDController):
        return controller.rtol, controller.atol
    return 0.0, 1.0


def _scaled_error(
    y0: PyTree[Array], y1: PyTree[Array], y_error: PyTree[Array], rtol, atol
) -> Array:
    # As diffrax's PIDController scales it: the quantity a step must keep below 1.
    def scale(a, b, e):
        return e / (atol + rtol * jnp.maximum(jnp.abs(a), jnp.abs(b)))

    return _rms(jtu.tree_map(scale, y0, y1, y_error))


def _drift(terms: PyTree) -> Callable[..., PyTree[Array]]:
    if isinstance(terms, dfx.MultiTerm):
        return terms.terms[0].vf
    return terms.vf


def _stiffness(
    solver: dfx.AbstractSolver,
    terms: PyTree,
    t0: Array,
    t1: Array,
    y0: PyTree[Array],
    y1: PyTree[Array],
    dense_info: dict,
    args: PyTree,
) -> Array:
    tiny = jnp.finfo(jnp.result_type(*jtu.tree_leaves(y0))).tiny
    if (
        isinstance(solver, dfx.AbstractERK)
        and isinstance(solver.tableau, dfx.ButcherTableau)
        and isinstance(terms, dfx.AbstractTerm)
        and not isinstance(terms, dfx.MultiTerm)
    ):
        # `ks` are the stage increments `h f(Y_i)`; the stages are rebuilt from the
        # tableau, `Y_i = y0 + sum_j a_ij k_j`, so no function is evaluated again.
        tableau = solver.tableau
        ks = dense_info["k"]
        rows = [jnp.zeros(0)] + [jnp.asarray(a) for a in tableau.a_lower]

        def stage(i: int) -> PyTree[Array]:
            a = rows[i]
            return jtu.tree_map(
                lambda y, k: y + jnp.tensordot(a.astype(k.dtype), k[:i], axes=1),
                y0,
                ks,
            )

        s = tableau.num_stages - 1
        dk = jtu.tree_map(lambda k: k[s] - k[s - 1], ks)
        dy = jtu.tree_map(lambda a, b: a - b, stage(s), stage(s - 1))
        return _rms(dk) / (_rms(dy) + tiny)
    f = _drift(terms)
    df = jtu.tree_map(lambda a, b: a - b, f(t1, y1, args), f(t0, y0, args))
    dy = jtu.tree_map(lambda a, b: a - b, y1, y0)
    return jnp.abs(t1 - t0) * _rms(df) / (_rms(dy) + tiny)


def _heuristics(
    solver, terms, t0, t1, y0, y1, y_error, dense_info, args, rtol, atol, stiffness
) -> tuple[Array, Array]:
    if y_error is None:
        raise ValueError(
            f"`solver` {type(solver).__name__} gives no error estimate; the solver "
            "heuristics need an adaptive solver such as `Tsit5` (ODEs) or `Heun` "
            "(Stratonovich SDEs)."
        )
    error = _scaled_error(y0, y1, y_error, rtol, atol) * jnp.abs(t1 - t0)
    if stiffness:
        stiff = _stiffness(solver, terms, t0, t1, y0, y1, dense_info, args)
    else:
        stiff = jnp.zeros_like(error)
    return error, stiff


class _AccumulatingInterpolation(dfx.AbstractLocalInterpolation):
    t0: Real[Array, ""]
    t1: Real[Array, ""]
    inner: dfx.AbstractLocalInterpolation
    r0: Array
    r1: Array

    def evaluate(self, t0, t1=None, left=True):
        y = self.inner.evaluate(t0, t1, left)
        # A zero-length step happens in the masked iterations of a vmapped solve; its
        # `0 / 0` would turn the gradient to NaN even where it is not selected.
        length = self.t1 - self.t0
        length = jnp.where(length == 0, 1, length)
        if t1 is None:
            r = self.r0 + (t0 - self.t0) / length * (self.r1 - self.r0)
        else:
            r = (t1 - t0) / length * (self.r1 - self.r0)
        return y, r


def _is_term(x) -> bool:
    return isinstance(x, dfx.AbstractTerm) and not isinstance(x, dfx.MultiTerm)


def _unlift(terms: PyTree) -> PyTree:
    """The inner terms, from the `_Lifted` terms that `diffeqsolve` handed a solver.

    `diffeqsolve` wraps each term (here the `_Lifted` one) in its time-direction
    wrapper; each inner term gets a copy of that wrapper, as `diffeqsolve` would have
    given it, so a `MultiTerm` stays a `MultiTerm` of wrapped terms."""

    def unlift(wrapper):
        if isinstance(wrapper, _Lifted):
            return wrapper.term
        if not isinstance(getattr(wrapper, "term", None), _Lifted):
            raise ValueError(f"unexpected term {type(wrapper).__name__}")
        return jtu.tree_map(
            lambda term: eqx.tree_at(lambda w: w.term, wrapper, term),
            wrapper.term.term,
            is_leaf=_is_term,
        )

    return jtu.tree_map(unlift, terms, is_leaf=_is_term)


class _InterpolationFactory(eqx.Module):
    inner_cls: Callable[..., dfx.AbstractLocalInterpolation] = eqx.field(static=True)

    def __call__(self, *, t0, t1, inner, r0, r1) -> _AccumulatingInterpolation:
        return _AccumulatingInterpolation(
            t0=t0, t1=t1, inner=self.inner_cls(t0=t0, t1=t1, **inner), r0=r0, r1=r1
        )


class _Lifted(dfx.AbstractTerm):
    """The model's terms, seen by diffrax on the state `(y, r)`. Only `_Accumulating`
    steps with it, and it hands the inner solver `term` itself."""

    term: PyTree

    def vf(self, t, y, args):
        return self.term.vf(t, y[0], args), jnp.zeros_like(y[1])

    def contr(self, t0, t1, **kwargs):
        return self.term.contr(t0, t1, **kwargs)

    def prod(self, vf, control):
        return self.term.prod(vf[0], control), jnp.zeros_like(vf[1])


class _Accumulating(dfx.AbstractAdaptiveSolver, dfx.AbstractWrappedSolver):
    """Wraps a diffrax solver: the state becomes `(y, r)`, where `r` accumulates the
    step's solver heuristics (error, stiffness). A rejected step's `(y1, r1)` is
    discarded by diffrax, so `r` sums over the accepted steps only, and the gradient of
    `r` flows through the discrete solve. The error estimate of `r` is zero, and the
    controller's norm is restricted to `y` (`_FirstNorm`), so the steps taken are
    those of the unwrapped solver."""

    solver: dfx.AbstractSolver
    rtol: float
    atol: float
    stiffness: bool = eqx.field(static=True)

    # diffrax checks the terms against this structure on the state `(y, r)`; the
    # inner solver's own structure is checked on `y` by `_check_terms`.
    term_structure = dfx.AbstractTerm

    @property
    def interpolation_cls(self):  # pyright: ignore
        return _InterpolationFactory(self.solver.interpolation_cls)

    @property
    def term_compatible_contr_kwargs(self):
        return self.solver.term_compatible_contr_kwargs

    def order(self, terms):
        return self.solver.order(terms)

    def strong_order(self, terms):
        return self.solver.strong_order(terms)

    def error_order(self, terms):
        return self.solver.error_order(terms)  # pyright: ignore

    def init(self, terms, t0, t1, y0, args):
        return self.solver.init(_unlift(terms), t0, t1, y0[0], args)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        terms = _unlift(terms)
        y, r0 = y0
        y1, y_error, dense_info, solver_state, result = self.solver.step(
            terms, t0, t1, y, args, solver_state, made_jump
        )
        error, stiff = _heuristics(
            self.solver,
            terms,
            t0,
            t1,
            y,
            y1,
            y_error,
            dense_info,
            args,
            self.rtol,
            self.atol,
            self.stiffness,
        )
        r1 = r0 + jnp.stack([error, stiff]).astype(r0.dtype)
        info = dict(inner=dense_info, r0=r0, r1=r1)
        return (y1, r1), (y_error, jnp.zeros_like(r0)), info, solver_state, result

    def func(self, terms, t0, y0, args):
        return self.solver.func(_unlift(terms), t0, y0[0], args), jnp.zeros_like(y0[1])


class _FirstNorm(eqx.Module):
    norm: Callable[[PyTree[Array]], Array]

    def __call__(self, tree: PyTree[Array]) -> Array:
        return self.norm(tree[0])


def _restrict_norm(
    controller: dfx.AbstractStepSizeController,
) -> dfx.AbstractStepSizeController:
    if isinstance(controller, dfx.PIDController):
        return eqx.tree_at(lambda c: c.norm, controller, _FirstNorm(controller.norm))
    return controller


def _check_model(model: _Model) -> None:
    if not isinstance(model, (NeuralODE, NeuralSDE)):
        raise ValueError(
            f"`model` must be a `NeuralODE` or `NeuralSDE`; got {type(model).__name__}."
        )


def _check_weights(error_weight: float, stiffness_weight: float) -> None:
    for name, value in (
        ("error_weight", error_weight),
        ("stiffness_weight", stiffness_weight),
    ):
        if isinstance(value, (int, float)) and not value >= 0:
            raise ValueError(f"`{name}` must be non-negative; got {value!r}.")


def regularised_solve(
    model: _Model,
    ts: Real[Array, " time"],
    y0: Float[Array, " data"],
    *,
    error_weight: float | Float[Array, ""] = 1.0,
    stiffness_weight: float | Float[Array, ""] = 0.0,
    key: PRNGKeyArray | None = None,
    args: PyTree = None,
    throw: bool = True,
) -> RegularisedSolution:
    """Solve, and sum the solver's heuristics over the accepted steps (Pal et al.
    2021, "Opening the Blackbox").

    The model's own diffrax solver is wrapped so that each step also returns its
    scaled local error estimate times `|h|` and its stiffness estimate; they add up in
    an extra state over the accepted steps, and the gradient of the penalty flows
    through the discrete solve. The steps are exactly the unregularised solve's. The
    model's adjoint must differentiate the discrete solve
    (`RecursiveCheckpointAdjoint` or `DirectAdjoint`); with another adjoint use
    `local_regulariser`.

    **Arguments:**

    - `model`: a `NeuralODE` or `NeuralSDE` whose solver has an error estimate (an
        embedded Runge-Kutta method for ODEs; `Heun` or `SPaRK` for SDEs).
    - `ts`, `y0`: as for `model.solve`.
    - `error_weight`, `stiffness_weight`: `λ_E` and `λ_S`, non-negative. The stiffness
        estimate is computed only if `stiffness_weight` is not the Python number 0.
    - `key`: the Brownian path's key (SDEs only).
    - `args`: the SDE's `args` (SDEs only).
    - `throw`: as for `model.solve`.

    **Returns:** a `RegularisedSolution`.

    **Raises:** `ValueError` naming `model`, `error_weight`, `stiffness_weight` or the
    model's `adjoint` or `solver`; and what `model.solve` raises.
    """
    _check_model(model)
    _check_weights(error_weight, stiffness_weight)
    if not isinstance(
        model.adjoint, (dfx.RecursiveCheckpointAdjoint, dfx.DirectAdjoint)
    ):
        raise ValueError(
            "The global regulariser differentiates through the solver's steps, so the "
            "model's `adjoint` must be `RecursiveCheckpointAdjoint` or "
            f"`DirectAdjoint`; got {type(model.adjoint).__name__}. Use "
            "`local_regulariser` with other adjoints."
        )
    if isinstance(model, NeuralSDE):
        if key is None:
            raise ValueError("`key` is required for a `NeuralSDE`: it draws the path.")
    elif args is not None:
        raise ValueError("`args` is for `NeuralSDE`s only; a `NeuralODE` takes none.")
    ts, y0, terms = model._setup(ts, y0, key, args)
    rtol, atol = _tolerances(model.stepsize_controller)
    stiffness = not (
        isinstance(stiffness_weight, (int, float)) and stiffness_weight == 0
    )
    solver = _Accumulating(model.solver, rtol, atol, stiffness)
    r0 = jnp.zeros(2, jnp.result_type(y0))
    sol = dfx.diffeqsolve(
        _Lifted(terms),
        solver,
        t0=ts[0],
        t1=ts[-1],
        dt0=model.dt0,
        y0=(y0, r0),
        args=args,
        saveat=dfx.SaveAt(ts=ts),
        stepsize_controller=_restrict_norm(model.stepsize_controller),
        adjoint=model.adjoint,
        max_steps=model.max_steps,
        throw=throw,
    )
    ys, r = sol.ys  # pyright: ignore
    heuristics = SolverHeuristics(error=r[-1, 0], stiffness=r[-1, 1])
    solution = ODESolution(
        ts=sol.ts, ys=ys, stats=solver_stats(model.solver, sol), result=sol.result
    )
    penalty = error_weight * heuristics.error + stiffness_weight * heuristics.stiffness
    return RegularisedSolution(solution, heuristics, penalty)


def step_heuristics(
    model: _Model,
    t: Real[Array, ""],
    y: Float[Array, " data"],
    t_end: Real[Array, ""],
    *,
    terms: PyTree | None = None,
    args: PyTree = None,
    stiffness: bool = True,
    adaptations: int = 2,
) -> SolverHeuristics:
    """The solver heuristics of one adaptive step from `(t, y)`, at the step size the
    model's solver would take there.

    The step size starts as the one the model's controller would start a solve with
    at `(t, y)` (for `PIDController(dt0=None)`, Hairer's initial-step heuristic, which
    aims far below the tolerance), and is then adapted `adaptations` times by the
    controller, each time from a trial step at `(t, y)`, so that the measured step is
    near the size an ongoing solve uses there, whose error estimate is near the
    tolerance. Step sizes carry no gradient, as in diffrax's controllers. This is the
    primitive of the local regulariser (Pal et al. 2023). Steps never go past `t_end`.

    **Arguments:**

    - `model`: a `NeuralODE` or `NeuralSDE`.
    - `t`, `y`: the time and state to step from.
    - `t_end`: no step goes past it.
    - `terms`: the diffrax terms; `None` for a `NeuralODE`'s. For a `NeuralSDE`, pass
        the terms of the solve `y` comes from (its Brownian path), so that the step
        uses the same path.
    - `args`: passed to the vector fields.
    - `stiffness`: whether to compute the stiffness estimate (else it is 0).
    - `adaptations`: controller adaptations of the step size before the measured
        step, each costing one trial step; 0 measures the first step itself. Only
        adaptive controllers adapt.

    **Returns:** `SolverHeuristics` of the measured step.

    **Raises:** `ValueError` naming `model`, `terms` or `adaptations`.
    """
    _check_model(model)
    if not (isinstance(adaptations, int) and adaptations >= 0):
        raise ValueError(
            f"`adaptations` must be a non-negative integer; got {adaptations!r}."
        )
    if terms is None:
        if isinstance(model, NeuralSDE):
            raise ValueError(
                "`terms` is required for a `NeuralSDE`: the step must follow the "
                "Brownian path of the solve that `y` comes from."
            )
        terms = dfx.ODETerm(model.vector_field)
    solver, controller = model.solver, model.stepsize_controller
    error_order = solver.error_order(terms)  # pyright: ignore
    t_next, controller_state = controller.init(
        terms, t, t_end, y, model.dt0, args, solver.func, error_order
    )
    t_next = jnp.minimum(t_next, t_end)

    def step(t_next):
        state = solver.init(terms, t, t_next, y, args)
        return solver.step(terms, t, t_next, y, args, state, made_jump=False)

    if isinstance(controller, dfx.PIDController):
        for _ in range(adaptations):
            y1, y_error, _, _, _ = step(t_next)
            _, t0_new, t1_new, _, _, _ = controller.adapt_step_size(
                t, t_next, y, y1, args, y_error, error_order, controller_state
            )
            # Accepted or not, the proposal is the step size to use next.
            dt = lax.stop_gradient(t1_new - t0_new)
            t_next = jnp.minimum(t + dt, t_end)
    y1, y_error, dense_info, _, _ = step(t_next)
    rtol, atol = _tolerances(controller)
    error, stiff = _heuristics(
        solver,
        terms,
        t,
        t_next,
        y,
        y1,
        y_error,
        dense_info,
        args,
        rtol,
        atol,
        stiffness,
    )
    return SolverHeuristics(error=error, stiffness=stiff)


def local_regulariser(
    model: _Model,
    ts: Real[Array, " time"],
    y0: Float[Array, " data"],
    *,
    key: PRNGKeyArray,
    strategy: Literal["unbiased", "biased"] = "unbiased",
    ys: Float[Array, "time data"] | None = None,
    error_weight: float | Float[Array, ""] = 1.0,
    stiffness_weight: float | Float[Array, ""] = 0.0,
    path_key: PRNGKeyArray | None = None,
    args: PyTree = None,
    adaptations: int = 2,
) -> Float[Array, ""]:
    """The local solver-heuristic penalty at one random time (Pal et al. 2023,
    "Locally Regularized Neural Differential Equations").

    A time is drawn, the state there is found, and one adaptive step is taken from
    it; the penalty is `error_weight * error + stiffness_weight * stiffness` of that
    step (see `SolverHeuristics`). The two sampling strategies of the paper:

    - `"unbiased"`: a time uniform on `[ts[0], ts[-1])`; the state there comes from
        a solve with the model's own adjoint, so the penalty works with any adjoint.
        The extra solve costs up to one forward solve.
    - `"biased"`: one of the saved times `ts[:-1]`, uniformly, with the state from
        `ys`, the solution the loss already computed: only one extra step, but the
        times are those of the data.

    **Arguments:**

    - `model`: a `NeuralODE` or `NeuralSDE` with an adaptive solver.
    - `ts`, `y0`: as for `model.solve`.
    - `key`: draws the time.
    - `strategy`: `"unbiased"` or `"biased"`.
    - `ys`: the solution at `ts` (of shape `(len(ts), data_size)`); required by
        `"biased"`.
    - `error_weight`, `stiffness_weight`: non-negative weights.
    - `path_key`: a `NeuralSDE`'s Brownian key, the one its loss's solve used.
    - `args`: a `NeuralSDE`'s `args`.
    - `adaptations`: as for `step_heuristics`: the step measured is of the size the
        controller chooses at the sampled point after this many trial steps.

    **Returns:** the penalty, a scalar.

    **Raises:** `ValueError` naming `model`, `strategy`, `ys`, `path_key`, or a weight.
    """
    _check_model(model)
    _check_weights(error_weight, stiffness_weight)
    if strategy not in ("unbiased", "biased"):
        raise ValueError(
            f"`strategy` must be 'unbiased' or 'biased'; got {strategy!r}."
        )
    if isinstance(model, NeuralSDE) and path_key is None:
        raise ValueError("`path_key` is required for a `NeuralSDE` (its Brownian key).")
    ts, y0, terms = model._setup(ts, y0, path_key, args)
    if strategy == "biased":
        if ys is None or jnp.shape(ys) != (jnp.shape(ts)[0], *jnp.shape(y0)):
            raise ValueError(
                "`ys`, the solution at `ts` of shape "
                f"{(jnp.shape(ts)[0], *jnp.shape(y0))}, is required by the 'biased' "
                f"strategy; got {None if ys is None else jnp.shape(ys)}."
            )
        i = jr.randint(key, (), 0, jnp.shape(ts)[0] - 1)
        t, y = ts[i], ys[i]
    else:
        # Away from `ts[0]` by a sliver so the solve to `t` is never empty.
        u = jr.uniform(key, (), jnp.result_type(ts), minval=1e-3, maxval=1.0)
        t = ts[0] + u * (ts[-1] - ts[0])
        t = jnp.minimum(t, jnp.nextafter(ts[-1], ts[0]))
        sol = dfx.diffeqsolve(
            terms,
            model.solver,
            t0=ts[0],
            t1=t,
            dt0=model.dt0,
            y0=y0,
            args=args,
            saveat=dfx.SaveAt(t1=True),
            stepsize_controller=model.stepsize_controller,
            adjoint=model.adjoint,
            max_steps=model.max_steps,
        )
        y = sol.ys[-1]  # pyright: ignore
    stiffness = not (
        isinstance(stiffness_weight, (int, float)) and stiffness_weight == 0
    )
    h = step_heuristics(
        model,
        t,
        y,
        ts[-1],
        terms=terms,
        args=args,
        stiffness=stiffness,
        adaptations=adaptations,
    )
    return error_weight * h.error + stiffness_weight * h.stiffness


class KineticSolution(eqx.Module):
    """The outcome of `kinetic_solve`.

    **Fields:**

    - `solution`: the `ODESolution` at `ts`.
    - `kinetic`: `∫ ||f(t, y)||² dt` over the solve.
    - `jacobian`: `∫ ||ε^T ∂f/∂y||² dt`, Hutchinson's unbiased estimate of the
        integrated squared Frobenius norm of the Jacobian, with one Gaussian probe `ε`.
    """

    solution: ODESolution
    kinetic: Float[Array, ""]
    jacobian: Float[Array, ""]


class _Augmented(eqx.Module):
    field: Callable[..., Array]

    def __call__(self, t, state, args):
        y, _, _ = state
        probe = args
        f, vjp = jax.vjp(lambda z: self.field(t, z, None), y)
        (eps_jac,) = vjp(probe)
        return f, jnp.sum(f**2), jnp.sum(eps_jac**2)


def kinetic_solve(
    model: NeuralODE,
    ts: Real[Array, " time"],
    y0: Float[Array, " data"],
    *,
    key: PRNGKeyArray,
    throw: bool = True,
) -> KineticSolution:
    """Solve with the kinetic energy and Jacobian Frobenius norm integrated alongside
    (Finlay et al. 2020, "How to train your neural ODE"), the baseline regularisers.

    Both integrals are augmented states of the same solve; the step-size control looks
    at `y` alone, and any adjoint works (the augmented system is an ODE).

    **Arguments:**

    - `model`: a `NeuralODE`.
    - `ts`, `y0`: as for `model.solve`.
    - `key`: draws the Hutchinson probe.
    - `throw`: as for `model.solve`.

    **Returns:** a `KineticSolution`.
    """
    if not isinstance(model, NeuralODE):
        raise ValueError(f"`model` must be a `NeuralODE`; got {type(model).__name__}.")
    ts, y0, _ = model._setup(ts, y0, None, None)
    probe = jr.normal(key, jnp.shape(y0), jnp.result_type(y0))
    zero = jnp.zeros((), jnp.result_type(y0))
    sol = dfx.diffeqsolve(
        dfx.ODETerm(_Augmented(model.vector_field)),
        model.solver,
        t0=ts[0],
        t1=ts[-1],
        dt0=model.dt0,
        y0=(y0, zero, zero),
        args=probe,
        saveat=dfx.SaveAt(ts=ts),
        stepsize_controller=_restrict_norm(model.stepsize_controller),
        adjoint=model.adjoint,
        max_steps=model.max_steps,
        throw=throw,
    )
    ys, kinetic, jacobian = sol.ys  # pyright: ignore
    solution = ODESolution(
        ts=sol.ts, ys=ys, stats=solver_stats(model.solver, sol), result=sol.result
    )
    return KineticSolution(solution, kinetic[-1], jacobian[-1])


def sample_end_time(
    ts: Real[Array, " time"], *, key: PRNGKeyArray, width: float
) -> Real[Array, " time"]:
    """`ts` with its last time drawn uniformly from `[ts[-1] - width, ts[-1] + width]`
    (Ghosh et al. 2020, "STEER"), the random end-time baseline.

    **Arguments:**

    - `ts`: the times, strictly increasing.
    - `key`: draws the end time.
    - `width`: the half-width `b`, positive and less than `ts[-1] - ts[-2]` so the times
        stay increasing.

    **Returns:** the times, of the shape of `ts`.

    **Raises:** `ValueError` naming `width` if it is not positive; at run time
    (`eqx.error_if`) if it is not less than the last gap.
    """
    if not (isinstance(width, (int, float)) and width > 0):
        raise ValueError(f"`width` must be a positive number; got {width!r}.")
    gap = ts[-1] - ts[-2]
    end = ts[-1] + jr.uniform(key, (), jnp.result_type(ts), -width, width)
    end = eqx.error_if(end, width >= gap, "`width` must be less than ts[-1] - ts[-2].")
    return ts.at[-1].set(end)
