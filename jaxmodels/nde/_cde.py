from collections.abc import Callable
from typing import Literal

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray, PyTree, Real

from .._core import check_positive_int
from ._ode import ODESolution, solver_stats
from ._vector_field import check_dt0, check_increasing


_INTERPOLATIONS = ("cubic", "linear", "rectilinear")
_READOUTS = ("final", "all")


def _check_interpolation(interpolation: str) -> None:
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(
            f"`interpolation` must be one of {_INTERPOLATIONS}; got {interpolation!r}."
        )


def _check_shapes(ts: Array, xs: Array) -> None:
    if jnp.ndim(ts) != 1 or jnp.shape(ts)[0] < 2:
        raise ValueError(
            "`ts` must be a 1-D array of at least 2 observation times; got shape "
            f"{jnp.shape(ts)}. Batch with `jax.vmap`."
        )
    if jnp.ndim(xs) != 2 or jnp.shape(xs)[0] != jnp.shape(ts)[0]:
        raise ValueError(
            "`xs` must be of shape `(time, channels)` with one row per entry of "
            f"`ts`; got shape {jnp.shape(xs)} for `ts` of shape {jnp.shape(ts)}. "
            "Batch with `jax.vmap`."
        )


def control_path(
    ts: Real[Array, " time"],
    xs: Float[Array, "time channels"],
    *,
    interpolation: Literal["cubic", "linear", "rectilinear"] = "cubic",
) -> dfx.CubicInterpolation | dfx.LinearInterpolation:
    """Interpolate irregular, partly missing observations into a control path.

    The control `X` of a neural CDE, as in Kidger et al., "Neural Controlled
    Differential Equations for Irregular Time Series" (2020). Time is prepended as
    channel 0, the standard practice: it makes `X` strictly monotone in one channel,
    so the CDE can react to how much time passed and not just to the change in the data
    (without it the CDE is invariant to time reparameterisations).

    Missing values are `NaN`s, filled per channel by the diffrax routine of each
    interpolation: `"linear"` (`diffrax.linear_interpolation`) interpolates linearly in
    time between the nearest observed values either side; `"cubic"`
    (`diffrax.backward_hermite_coefficients`) fits the Hermite cubic with backward
    differences of Morrill et al. (2021) through the observed values only, skipping
    the missing knot; `"rectilinear"` (`diffrax.rectilinear_interpolation`) fills
    forward. In all three, `NaN`s before a channel's first observation take that first
    observed value, and (for `"linear"` and `"cubic"`) `NaN`s after its last take the
    last observed value.

    **Arguments:**

    - `ts`: the observation times, of shape `(time,)`, strictly increasing, at least 2.
    - `xs`: the observations, of shape `(time, channels)`; `NaN` marks a missing value.
        Every channel needs at least one observed value.
    - `interpolation`: `"cubic"` (smooth; the default, for adaptive solvers),
        `"linear"` (piecewise linear, kinks at `ts`) or `"rectilinear"` (for online
        prediction: causal, `X` at an observation time depends on no later observation).

    **Returns:** a `diffrax.CubicInterpolation` or `diffrax.LinearInterpolation` with
    values of shape `(channels + 1,)`, time first. For `"cubic"` and `"linear"` the
    path is parameterised by `ts` itself. For `"rectilinear"` (Morrill et al., "Neural
    Controlled Differential Equations for Online Prediction Tasks", 2021) it is a
    `LinearInterpolation` over the knots `s = 0, 1, ..., 2 time - 2`: from `s = 2i` to
    `2i + 1` time advances from `ts[i]` to `ts[i + 1]` with the data held at `xs[i]`,
    then from `2i + 1` to `2i + 2` the data jumps to `xs[i + 1]`; observation `i` is at
    `s = 2i`.

    **Raises:** `ValueError` naming `ts`, `xs` or `interpolation` if a shape or the
    name is wrong; `equinox.EquinoxRuntimeError` naming `ts` if it is not strictly
    increasing, or naming `xs` if a channel has no observed value.
    """
    _check_interpolation(interpolation)
    _check_shapes(ts, xs)
    dtype = jnp.promote_types(jnp.result_type(ts), jnp.result_type(xs))
    if not jnp.issubdtype(dtype, jnp.inexact):
        dtype = jnp.zeros(()).dtype
    ts = jnp.asarray(ts, dtype)
    xs = jnp.asarray(xs, dtype)
    ts = check_increasing(ts, "ts")
    observed = ~jnp.isnan(xs)
    xs = eqx.error_if(
        xs,
        ~jnp.all(jnp.any(observed, axis=0)),
        "`xs` has a channel with no observed value (all `NaN`): drop it or fill it.",
    )
    first = jnp.take_along_axis(xs, jnp.argmax(observed, axis=0)[None], axis=0)[0]
    if interpolation == "rectilinear":
        knots_ts, knots_xs = dfx.rectilinear_interpolation(
            ts, xs, replace_nans_at_start=first
        )
        data = jnp.concatenate([knots_ts[:, None], knots_xs], axis=-1)
        return dfx.LinearInterpolation(jnp.arange(data.shape[0], dtype=dtype), data)
    if interpolation == "linear":
        xs = dfx.linear_interpolation(
            ts, xs, fill_forward_nans_at_end=True, replace_nans_at_start=first
        )
        return dfx.LinearInterpolation(ts, jnp.concatenate([ts[:, None], xs], -1))
    coeffs = dfx.backward_hermite_coefficients(
        ts,
        jnp.concatenate([ts[:, None], xs], axis=-1),
        fill_forward_nans_at_end=True,
        replace_nans_at_start=jnp.concatenate([ts[:1], first]),
    )
    return dfx.CubicInterpolation(ts, coeffs)


class CDEVectorField(eqx.Module):
    """A multilayer perceptron `g(t, z)` returning a matrix, the vector field of a CDE.

    The parameterisation of Kidger et al., "Neural Controlled Differential Equations
    for Irregular Time Series" (2020): an MLP on the hidden state `z` whose output is
    reshaped to a `(hidden_size, input_size)` matrix, to be multiplied by the increment
    `dX` of the control. Smooth hidden activations (softplus) and a tanh on the output,
    which bounds `g` and so keeps the solution from blowing up. The field does not
    read `t`: time reaches the model through the control's time channel.
    """

    mlp: eqx.nn.MLP
    hidden_size: int = eqx.field(static=True)
    input_size: int = eqx.field(static=True)
    width: int = eqx.field(static=True)
    depth: int = eqx.field(static=True)

    def __init__(
        self,
        hidden_size: int,
        input_size: int,
        width: int,
        depth: int,
        *,
        activation: Callable[[Array], Array] = jax.nn.softplus,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `hidden_size`: the size of the hidden state `z`.
        - `input_size`: the number of channels of the control `X` (for `NeuralCDE`,
            the data channels plus one for time).
        - `width`: the size of every hidden layer.
        - `depth`: the number of hidden layers, at least 1.
        - `activation`: the nonlinearity after each hidden layer.
        - `key`: a PRNG key for the initial weights.

        **Raises:** `ValueError` naming the argument if `hidden_size`, `input_size`,
        `width` or `depth` is not a positive integer.
        """
        for value, name in [
            (hidden_size, "hidden_size"),
            (input_size, "input_size"),
            (width, "width"),
            (depth, "depth"),
        ]:
            check_positive_int(value, name)
        self.mlp = eqx.nn.MLP(
            hidden_size,
            hidden_size * input_size,
            width,
            depth,
            activation=activation,
            final_activation=jnp.tanh,
            key=key,
        )
        self.hidden_size = hidden_size
        self.input_size = input_size
        self.width = width
        self.depth = depth

    def __call__(
        self,
        t: Real[Array, ""],
        z: Float[Array, " {self.hidden_size}"],
        args: PyTree,
    ) -> Float[Array, "{self.hidden_size} {self.input_size}"]:
        """**Arguments:**

        - `t`: the time, a scalar; unused (see the class docstring).
        - `z`: the hidden state, of shape `(hidden_size,)`.
        - `args`: unused; present for the diffrax signature `g(t, z, args)`.

        **Returns:** the matrix `g(t, z)`, of shape `(hidden_size, input_size)`.
        """
        del t, args
        return self.mlp(z).reshape(self.hidden_size, self.input_size)


class NeuralCDE(eqx.Module):
    """A neural controlled differential equation `dz = g(z) dX(t)`, solved with diffrax.

    From Kidger et al., "Neural Controlled Differential Equations for Irregular Time
    Series" (2020); see also Kidger, "On Neural Differential Equations" (2021). The
    observations `(ts, xs)` are interpolated into a control path `X` (`control_path`,
    with time as a channel and missing values filled), the hidden state starts at a
    linear map of `X(ts[0])`, evolves by `dz = g(z) dX = g(z) X'(t) dt` (the CDE solved
    as an ODE, `diffrax.ControlTerm(...).to_ode()`), and a linear readout maps it to
    the output: of the final state for classification or regression of a whole
    series, or of the state at every observation time for online prediction.
    """

    initial: eqx.nn.Linear
    vector_field: Callable[..., Array]
    output: eqx.nn.Linear
    solver: dfx.AbstractSolver
    stepsize_controller: dfx.AbstractStepSizeController
    adjoint: dfx.AbstractAdjoint
    # A solver option, not a parameter: a Python float, so no gradient reaches it.
    dt0: float | None
    input_size: int = eqx.field(static=True)
    hidden_size: int = eqx.field(static=True)
    output_size: int = eqx.field(static=True)
    interpolation: str = eqx.field(static=True)
    readout: str = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        output_size: int,
        width: int,
        depth: int,
        *,
        interpolation: Literal["cubic", "linear", "rectilinear"] = "cubic",
        readout: Literal["final", "all"] = "final",
        solver: dfx.AbstractSolver = dfx.Tsit5(),
        stepsize_controller: dfx.AbstractStepSizeController = dfx.PIDController(
            rtol=1e-3, atol=1e-6
        ),
        adjoint: dfx.AbstractAdjoint = dfx.RecursiveCheckpointAdjoint(),
        dt0: float | None = None,
        max_steps: int = 4096,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `input_size`: the number of data channels of `xs` (time is added to them).
        - `hidden_size`: the size of the hidden state `z`.
        - `output_size`: the size of the readout (logits or regression targets).
        - `width`, `depth`: the hidden layers of the `CDEVectorField`.
        - `interpolation`: how to build the control path; see `control_path`.
        - `readout`: `"final"` (one output for the whole series) or `"all"` (one per
            observation time, the online mode).
        - `solver`: a diffrax ODE solver.
        - `stepsize_controller`: a diffrax step-size controller. An adaptive one is
            wrapped, at each call, in a `diffrax.ClipStepSizeController` with
            `jump_ts` at the knots of the path (the observation times), as the path
            is not smooth there: stepping across a knot misleads the error estimate.
        - `adjoint`: how to differentiate through the solve, a diffrax adjoint.
        - `dt0`: the initial step; `None` lets an adaptive controller choose it.
            Required (and then the fixed step) with `ConstantStepSize`. In the time of
            the path: the knot index `s` for `"rectilinear"`.
        - `max_steps`: the most steps one solve may take.
        - `key`: a PRNG key for the initial weights.

        **Raises:** `ValueError` naming the argument if a size is not a positive
        integer, `interpolation` or `readout` is unknown, `max_steps` is not a
        positive integer, `dt0` is not positive, or `dt0` is `None` with
        `ConstantStepSize`.
        """
        for value, name in [
            (input_size, "input_size"),
            (hidden_size, "hidden_size"),
            (output_size, "output_size"),
            (max_steps, "max_steps"),
        ]:
            check_positive_int(value, name)
        _check_interpolation(interpolation)
        if readout not in _READOUTS:
            raise ValueError(f"`readout` must be one of {_READOUTS}; got {readout!r}.")
        dt0 = check_dt0(dt0, stepsize_controller)
        initial_key, field_key, output_key = jr.split(key, 3)
        self.initial = eqx.nn.Linear(input_size + 1, hidden_size, key=initial_key)
        self.vector_field = CDEVectorField(
            hidden_size, input_size + 1, width, depth, key=field_key
        )
        self.output = eqx.nn.Linear(hidden_size, output_size, key=output_key)
        self.solver = solver
        self.stepsize_controller = stepsize_controller
        self.adjoint = adjoint
        self.dt0 = dt0
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.output_size = output_size
        self.interpolation = interpolation
        self.readout = readout
        self.max_steps = max_steps

    def solve(
        self,
        ts: Real[Array, " time"],
        xs: Float[Array, "time {self.input_size}"],
        *,
        throw: bool = True,
    ) -> ODESolution:
        """Solve for the hidden state at every observation time.

        **Arguments:**

        - `ts`: the observation times, of shape `(time,)`, strictly increasing, at
            least 2.
        - `xs`: the observations, of shape `(time, input_size)`; `NaN` marks a missing
            value (see `control_path`). Batch with `jax.vmap` (over `ts` too).
        - `throw`: whether a failed solve (such as `max_steps` reached) raises. If
            `False`, check `ODESolution.result` instead.

        **Returns:** an `ODESolution` whose `ts` are the observation times and whose
        `ys`, of shape `(time, hidden_size)`, are the hidden states there; row 0 is the
        initial state.

        **Raises:** as `control_path`, and `ValueError` naming `xs` if its channels
        are not `input_size`; with `throw=True`, `equinox.EquinoxRuntimeError` if the
        solve fails.
        """
        if jnp.ndim(xs) != 2 or jnp.shape(xs)[-1] != self.input_size:
            raise ValueError(
                f"`xs` must be of shape `(time, {self.input_size})` (`input_size` "
                f"channels); got shape {jnp.shape(xs)}. Batch with `jax.vmap`."
            )
        path = control_path(ts, xs, interpolation=self.interpolation)
        if self.interpolation == "rectilinear":
            save_ts = path.ts[::2]
        else:
            save_ts = path.ts
        controller = self.stepsize_controller
        # Every knot is a kink of `X'` (linear) or `X''` (cubic), which fools the
        # error estimate of an adaptive step across it; stepping to each is cheaper.
        if isinstance(controller, dfx.AbstractAdaptiveStepSizeController):
            controller = dfx.ClipStepSizeController(controller, jump_ts=path.ts)
        t0 = path.ts[0]
        sol = dfx.diffeqsolve(
            dfx.ControlTerm(self.vector_field, path).to_ode(),
            self.solver,
            t0=t0,
            t1=path.ts[-1],
            dt0=self.dt0,
            y0=self.initial(path.evaluate(t0)),
            saveat=dfx.SaveAt(ts=save_ts),
            stepsize_controller=controller,
            adjoint=self.adjoint,
            max_steps=self.max_steps,
            throw=throw,
        )
        stats = solver_stats(self.solver, sol)
        # Report the observation times (the time channel), not a rectilinear knot index.
        obs_ts = path.ys[::2, 0] if self.interpolation == "rectilinear" else path.ts
        return ODESolution(ts=obs_ts, ys=sol.ys, stats=stats, result=sol.result)

    def __call__(
        self,
        ts: Real[Array, " time"],
        xs: Float[Array, "time {self.input_size}"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, " {self.output_size}"] | Float[Array, "time {self.output_size}"]:
        """**Arguments:**

        - `ts`: the observation times, of shape `(time,)`, strictly increasing, at
            least 2.
        - `xs`: the observations, of shape `(time, input_size)`; `NaN` marks a missing
            value. Batch with `jax.vmap` (over `ts` too, for per-example times).
        - `key`: unused; the model is deterministic.

        **Returns:** with `readout="final"`, the output for the whole series, of shape
        `(output_size,)`; with `readout="all"`, the output at every observation time,
        of shape `(time, output_size)`. With an adaptive controller (whose steps stop
        at each observation), row `i` depends on no observation after `ts[i]`: the
        cubic has backward differences and the rectilinear path is causal by design.
        With missing values only `"rectilinear"` stays causal, as `"linear"` and
        `"cubic"` fill a gap from the next observation.

        **Raises:** as `solve` with `throw=True`.
        """
        del key
        zs = self.solve(ts, xs).ys
        if self.readout == "final":
            return self.output(zs[-1])
        return jax.vmap(self.output)(zs)
