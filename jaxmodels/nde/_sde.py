from collections.abc import Callable
from typing import Literal

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
from jaxtyping import Array, Float, PRNGKeyArray, PyTree, Real

from .._core import check_positive_int, tree_allfinite
from ._cde import _check_interpolation, control_path
from ._ode import ODESolution
from ._vector_field import AbstractVectorField, check_initial_value


_NOISES = ("diagonal", "general")
_KINDS = ("lsde", "lnsde", "gsde")
# The Brownian tree is resolved to `dt0 / _TREE_REFINEMENT`: finer than any fixed step,
# so that every step sees Brownian increments, not the tree's interpolation inside a
# leaf (which is one Gaussian per leaf, so increments inside a leaf are correlated).
_TREE_REFINEMENT = 8


def _calculus(solver: dfx.AbstractSolver) -> str | None:
    while isinstance(solver, dfx.AbstractWrappedSolver):
        solver = solver.solver
    if isinstance(solver, dfx.AbstractItoSolver):
        return "ito"
    if isinstance(solver, dfx.AbstractStratonovichSolver):
        return "stratonovich"
    return None


def _levy_area(solver: dfx.AbstractSolver) -> type[dfx.AbstractBrownianIncrement]:
    while isinstance(solver, dfx.AbstractWrappedSolver):
        solver = solver.solver
    if isinstance(solver, dfx.AbstractSRK):
        minimal = solver.minimal_levy_area
        if issubclass(minimal, dfx.AbstractSpaceTimeTimeLevyArea):
            return dfx.SpaceTimeTimeLevyArea
        if issubclass(minimal, dfx.AbstractSpaceTimeLevyArea):
            return dfx.SpaceTimeLevyArea
    return dfx.BrownianIncrement


class _Diagonal(eqx.Module):
    """A diffusion returning the diagonal of `g`, as a diagonal linear operator."""

    diffusion: Callable[..., Array]

    def __call__(self, t: Array, y: Array, args: PyTree) -> lx.DiagonalLinearOperator:
        return lx.DiagonalLinearOperator(self.diffusion(t, y, args))


class NeuralSDE(eqx.Module):
    """A neural stochastic differential equation `dy = f(t, y) dt + g(t, y) dW`.

    The SDE form of a neural ODE (Kidger, "On Neural Differential Equations", 2021;
    Li et al., "Scalable Gradients for Stochastic Differential Equations", 2020, for
    the virtual Brownian tree), solved with diffrax. The drift `f` and diffusion `g`
    are Equinox modules (or other callables) `f(t, y, args)`; with `noise="diagonal"`
    the diffusion returns the diagonal of `g`, of the shape of `y`, and `W` has one
    channel per state entry; with `noise="general"` it returns the full matrix, of
    shape `(data_size, brownian_size)`.

    **Ito or Stratonovich** is chosen by the solver, as in diffrax: `Euler`
    (Euler-Maruyama, the default) and `ItoMilstein` converge to the Itô solution;
    `EulerHeun`, `Heun`, `Midpoint`, `ReversibleHeun`, `StratonovichMilstein` and the
    stochastic Runge-Kutta solvers (`ShARK`, `SRA1`, `SEA`, `GeneralShARK`, `SPaRK`) to
    the Stratonovich one. The two differ only for a diffusion that depends on `y`; for
    additive noise (`g(t)`) they agree, and `SEA`, `ShARK` or `SRA1` apply, with higher
    strong order. `calculus` says which one a model solves.

    The Brownian motion is a `diffrax.VirtualBrownianTree` on `[ts[0], ts[-1]]`,
    resolved to `dt0 / 8` and built from the key of each call: one path per key,
    reproducible, and with a fixed memory cost. Batch with `jax.vmap` over keys for
    independent paths per example. The Lévy area the solver needs (space-time for
    `ShARK`, `SRA1`, `SEA`) is generated for it.
    """

    drift: Callable[..., Array]
    diffusion: Callable[..., Array]
    solver: dfx.AbstractSolver
    stepsize_controller: dfx.AbstractStepSizeController
    adjoint: dfx.AbstractAdjoint
    # A solver option, not a parameter: a Python float, so no gradient reaches it.
    dt0: float
    noise: str = eqx.field(static=True)
    brownian_size: int | None = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)

    def __init__(
        self,
        drift: Callable[..., Array],
        diffusion: Callable[..., Array],
        *,
        noise: Literal["diagonal", "general"] = "diagonal",
        brownian_size: int | None = None,
        solver: dfx.AbstractSolver = dfx.Euler(),
        stepsize_controller: dfx.AbstractStepSizeController = dfx.ConstantStepSize(),
        adjoint: dfx.AbstractAdjoint = dfx.RecursiveCheckpointAdjoint(),
        dt0: float,
        max_steps: int = 4096,
    ):
        """**Arguments:**

        - `drift`: a callable `f(t, y, args)` returning the drift, of the shape of `y`;
            such as `MLPVectorField`.
        - `diffusion`: a callable `g(t, y, args)` returning the diagonal of the
            diffusion, of the shape of `y` (`noise="diagonal"`), or the matrix, of
            shape `(data_size, brownian_size)` (`noise="general"`).
        - `noise`: `"diagonal"` (one Brownian channel per state entry, each driving
            only its entry) or `"general"`.
        - `brownian_size`: the number of Brownian channels for `noise="general"`;
            leave it `None` for diagonal noise, where it is the state's size.
        - `solver`: a diffrax SDE solver; it fixes Itô or Stratonovich (see above).
        - `stepsize_controller`: a diffrax step-size controller; the default is fixed
            steps of `dt0`. An adaptive one needs a solver with an error estimate
            (`HalfSolver(Euler())`, `Heun`, `ShARK`) and steps no shorter than
            `dt0 / 8` (its `dtmin`), below which the Brownian tree interpolates.
        - `adjoint`: how to differentiate through the solve, a diffrax adjoint.
            `RecursiveCheckpointAdjoint` differentiates the numerical solution exactly;
            `BacksolveAdjoint` needs a Stratonovich solver.
        - `dt0`: the (initial) step, positive. It also sets the resolution of the
            Brownian tree, `dt0 / 8`.
        - `max_steps`: the most steps one solve may take.

        **Raises:** `ValueError` naming the argument if `drift` or `diffusion` is not
        callable, `noise` is unknown, `brownian_size` is missing for general noise or
        given for diagonal noise, `solver` converges to neither Itô nor Stratonovich
        solutions (an ODE solver such as `Tsit5`), `dt0` is not positive, or
        `max_steps` is not a positive integer.
        """
        for value, name in [(drift, "drift"), (diffusion, "diffusion")]:
            if not callable(value):
                raise ValueError(
                    f"`{name}` must be a callable `{name[0]}(t, y, args)`; got "
                    f"{value!r}."
                )
        if noise not in _NOISES:
            raise ValueError(f"`noise` must be one of {_NOISES}; got {noise!r}.")
        if noise == "general":
            check_positive_int(brownian_size, "brownian_size")
        elif brownian_size is not None:
            raise ValueError(
                "`brownian_size` must be `None` with diagonal noise (it is the size of "
                f"the state); got {brownian_size!r}. Use `noise='general'` for another."
            )
        if _calculus(solver) is None:
            raise ValueError(
                f"`solver` must be a diffrax SDE solver (Itô: `Euler`, `ItoMilstein`; "
                f"Stratonovich: `EulerHeun`, `Heun`, `ShARK`, ...); got {solver!r}, "
                "which converges to neither Itô nor Stratonovich solutions."
            )
        if dt0 is None or not float(dt0) > 0:
            raise ValueError(
                f"`dt0` must be positive; got {dt0!r}. It is the step (and sets the "
                "Brownian tree's resolution)."
            )
        check_positive_int(max_steps, "max_steps")
        self.drift = drift
        self.diffusion = diffusion
        self.solver = solver
        self.stepsize_controller = stepsize_controller
        self.adjoint = adjoint
        self.dt0 = float(dt0)
        self.noise = noise
        self.brownian_size = brownian_size
        self.max_steps = max_steps

    @property
    def calculus(self) -> str:
        """`"ito"` or `"stratonovich"`: the solution that the solver converges to."""
        calculus = _calculus(self.solver)
        assert calculus is not None
        return calculus

    def brownian_motion(
        self,
        t0: Real[Array, ""],
        t1: Real[Array, ""],
        y0: Float[Array, " data"],
        *,
        key: PRNGKeyArray,
    ) -> dfx.VirtualBrownianTree:
        """The Brownian motion that a solve from `t0` to `t1` with this `key` uses.

        **Arguments:**

        - `t0`, `t1`: the first and last times (`ts[0]` and `ts[-1]`).
        - `y0`: the initial state, for the shape (diagonal noise) and dtype.
        - `key`: the PRNG key of the solve.

        **Returns:** a `diffrax.VirtualBrownianTree` on `[t0, t1]` with one channel
        per state entry (diagonal noise) or `brownian_size` channels (general noise).
        """
        shape = jnp.shape(y0) if self.noise == "diagonal" else (self.brownian_size,)
        return dfx.VirtualBrownianTree(
            t0,
            t1,
            tol=self.dt0 / _TREE_REFINEMENT,
            shape=jax.ShapeDtypeStruct(shape, jnp.result_type(y0)),
            key=key,
            levy_area=_levy_area(self.solver),
        )

    def _setup(
        self, ts: Array, y0: Array, key: PRNGKeyArray, args: PyTree
    ) -> tuple[Array, Array, dfx.MultiTerm]:
        """The checked `ts` and `y0`, and the drift and diffusion terms along the
        Brownian path of `key`."""
        ts, y0 = self._check(ts, y0, args)
        bm = self.brownian_motion(ts[0], ts[-1], y0, key=key)
        diffusion = self.diffusion
        if self.noise == "diagonal":
            diffusion = _Diagonal(diffusion)
        terms = dfx.MultiTerm(dfx.ODETerm(self.drift), dfx.ControlTerm(diffusion, bm))
        return ts, y0, terms

    def _check(self, ts: Array, y0: Array, args: PyTree) -> tuple[Array, Array]:
        ts = check_initial_value(ts, y0, self.drift)
        if not jnp.issubdtype(jnp.result_type(y0), jnp.inexact):
            raise ValueError(
                f"`y0` must be floating point; got dtype {jnp.result_type(y0)}."
            )
        t0 = ts[0]
        drift = eqx.filter_eval_shape(self.drift, t0, y0, args)
        if not (
            isinstance(drift, jax.ShapeDtypeStruct) and drift.shape == jnp.shape(y0)
        ):
            raise ValueError(
                f"`drift` must return an array of the shape of `y0`, {jnp.shape(y0)}; "
                f"got {drift!r}."
            )
        if self.noise == "diagonal":
            want = jnp.shape(y0)
        else:
            want = (*jnp.shape(y0), self.brownian_size)
        diffusion = eqx.filter_eval_shape(self.diffusion, t0, y0, args)
        if not (
            isinstance(diffusion, jax.ShapeDtypeStruct) and diffusion.shape == want
        ):
            raise ValueError(
                f"`diffusion` must return an array of shape {want} with "
                f"noise={self.noise!r}; got {diffusion!r}."
            )
        y0 = eqx.error_if(y0, ~jnp.all(jnp.isfinite(y0)), "`y0` must be finite.")
        return ts, y0

    def solve(
        self,
        ts: Real[Array, " time"],
        y0: Float[Array, " data"],
        *,
        key: PRNGKeyArray | None = None,
        throw: bool = True,
        saveat: dfx.SaveAt | None = None,
        args: PyTree = None,
    ) -> ODESolution:
        """Solve from `ts[0]` to `ts[-1]` along the Brownian path drawn from `key`.

        **Arguments:**

        - `ts`: the times, of shape `(time,)`, strictly increasing, at least 2; the
            solve starts at `ts[0]` (where the state is `y0`) and ends at `ts[-1]`.
        - `y0`: one initial state, of shape `(data_size,)`, finite; batch with
            `jax.vmap`.
        - `key`: the PRNG key of the Brownian path; required. The same key gives the
            same path; batch over keys with `jax.vmap` for one path per example.
        - `throw`: whether a failed solve (such as `max_steps` reached) raises. If
            `False`, check `ODESolution.result` instead.
        - `saveat`: what to save, a `diffrax.SaveAt`; `None` means `SaveAt(ts=ts)`.
            Between steps the solution is the solver's interpolation (linear for
            Euler-Maruyama).
        - `args`: passed to `drift` and `diffusion` as their `args`.

        **Returns:** an `ODESolution` (the same type as `NeuralODE.solve`'s). A path
        that overflowed (non-finite saved values) has `result`
        `diffrax.RESULTS.nonfinite`, never `successful`.

        **Raises:** `ValueError` naming `key`, `ts`, `y0`, `drift` or `diffusion` if
        the key is missing or a shape is wrong; `equinox.EquinoxRuntimeError` if `ts`
        is not strictly increasing or `y0` is not finite, or (with `throw=True`) if the
        solve fails (`max_steps` reached, or a non-finite path).
        """
        if key is None:
            raise ValueError(
                "`key` is required: it draws the Brownian path. Pass one per example."
            )
        ts, y0, terms = self._setup(ts, y0, key, args)
        if saveat is None:
            saveat = dfx.SaveAt(ts=ts)
        sol = dfx.diffeqsolve(
            terms,
            self.solver,
            t0=ts[0],
            t1=ts[-1],
            dt0=self.dt0,
            y0=y0,
            args=args,
            saveat=saveat,
            stepsize_controller=self.stepsize_controller,
            adjoint=self.adjoint,
            max_steps=self.max_steps,
            throw=throw,
        )
        stats = {
            name: sol.stats[name]
            for name in ("num_steps", "num_accepted_steps", "num_rejected_steps")
        }
        # Fixed steps never reject a step, so a path that overflowed would otherwise
        # come back as a success full of `inf`s and `NaN`s.
        result = dfx.RESULTS.where(
            (sol.result != dfx.RESULTS.successful) | tree_allfinite(sol.ys),
            sol.result,
            dfx.RESULTS.nonfinite,
        )
        ys = sol.ys
        if throw:
            ys = result.error_if(ys, result != dfx.RESULTS.successful)
        return ODESolution(ts=sol.ts, ys=ys, stats=stats, result=result)

    def __call__(
        self,
        ts: Real[Array, " time"],
        y0: Float[Array, " data"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "time data"]:
        """**Arguments:**

        - `ts`: the times, of shape `(time,)`, strictly increasing, at least 2.
        - `y0`: one initial state, of shape `(data_size,)`; batch with `jax.vmap`.
        - `key`: the PRNG key of the Brownian path; required.

        **Returns:** one sample path at `ts`, of shape `(time, data_size)`; row 0 is
        `y0`.

        **Raises:** as `solve` with `throw=True`.
        """
        return self.solve(ts, y0, key=key).ys


class _StableDrift(AbstractVectorField):
    """The drift of a stable neural SDE, read by `diffrax` with the path as `args`."""

    mlp: eqx.nn.MLP
    data_size: int = eqx.field(static=True)
    kind: str = eqx.field(static=True)

    def __call__(
        self,
        t: Real[Array, ""],
        y: Float[Array, " {self.data_size}"],
        args: PyTree,
    ) -> Float[Array, " {self.data_size}"]:
        # `args` is the control path; its channel 0 is time, so `gamma` sees `t` too.
        x = args.evaluate(t)
        gamma = self.mlp(jnp.concatenate([y, x.astype(y.dtype)]))
        return gamma * y if self.kind == "gsde" else gamma


class _StableDiffusion(eqx.Module):
    """The diagonal diffusion `sigma(t)` (LSDE) or `sigma(t) * z` (LNSDE, GSDE)."""

    mlp: eqx.nn.MLP
    kind: str = eqx.field(static=True)

    def __call__(self, t: Array, y: Array, args: PyTree) -> Array:
        del args
        sigma = self.mlp(jnp.asarray(t, y.dtype)[None])
        return sigma if self.kind == "lsde" else sigma * y


class StableNeuralSDE(eqx.Module):
    """A stable neural SDE for irregular time series: Langevin, linear-noise, geometric.

    The three classes of Oh et al., "Stable Neural Stochastic Differential Equations in
    Analyzing Irregular Time Series Data" (ICLR 2024), for classification or regression
    of a whole series. The observations `(ts, xs)` are interpolated into a control
    path `X` (`control_path`: time as channel 0, missing values as `NaN`s filled), the
    hidden state starts at a linear map of the first observation, `z(t0) = l(X(t0))`,
    and evolves by an Itô SDE whose drift reads the data through `X(t)`:

    - `"lsde"` (Langevin-type): `dz = gamma(t, z, X(t)) dt + sigma(t) dW`;
    - `"lnsde"` (linear noise): `dz = gamma(t, z, X(t)) dt + sigma(t) z dW`;
    - `"gsde"` (geometric): `dz = gamma(t, z, X(t)) z dt + sigma(t) z dW`;

    with diagonal noise (products elementwise), `gamma` an MLP on `(z, X(t))` with a
    tanh output and `sigma` an MLP of time only with a sigmoid output. A linear readout
    maps `z(ts[-1])` to the output. The paper's stability conditions are that `gamma`
    is Lipschitz with linear growth (here it is also bounded) and `sigma` depends on
    time only; then strong solutions exist, and an Euler-Maruyama step of any size
    multiplies `z` by at most `1 + dt + sigma |dW|` (GSDE) or adds at most `dt` to
    `z (1 + sigma dW)` (LNSDE), so the discrete paths cannot blow up within a horizon.
    A GSDE state keeps its sign in continuous time (`z = z0 exp(...)`). Differences from
    the paper: `gamma` sees `z` and `X(t)` concatenated, where the paper first embeds
    them (`z-bar`), and the outputs are bounded (tanh, sigmoid) for all three.
    """

    initial: eqx.nn.Linear
    sde: NeuralSDE
    output: eqx.nn.Linear
    kind: str = eqx.field(static=True)
    input_size: int = eqx.field(static=True)
    hidden_size: int = eqx.field(static=True)
    output_size: int = eqx.field(static=True)
    interpolation: str = eqx.field(static=True)

    def __init__(
        self,
        kind: Literal["lsde", "lnsde", "gsde"],
        input_size: int,
        hidden_size: int,
        output_size: int,
        width: int,
        depth: int,
        *,
        interpolation: Literal["cubic", "linear"] = "cubic",
        solver: dfx.AbstractSolver = dfx.Euler(),
        stepsize_controller: dfx.AbstractStepSizeController = dfx.ConstantStepSize(),
        adjoint: dfx.AbstractAdjoint = dfx.RecursiveCheckpointAdjoint(),
        dt0: float,
        max_steps: int = 4096,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `kind`: `"lsde"`, `"lnsde"` or `"gsde"` (see above).
        - `input_size`: the number of data channels of `xs` (time is added to them).
        - `hidden_size`: the size of the hidden state `z`.
        - `output_size`: the size of the readout (logits or regression targets).
        - `width`, `depth`: the hidden layers of the drift and diffusion networks.
        - `interpolation`: how to build the control path, `"cubic"` or `"linear"`;
            see `control_path`.
        - `solver`, `stepsize_controller`, `adjoint`, `dt0`, `max_steps`: as for
            `NeuralSDE`. The default Euler-Maruyama with fixed steps solves the Itô
            form, the paper's.
        - `key`: a PRNG key for the initial weights.

        **Raises:** `ValueError` naming the argument if `kind` or `interpolation` is
        unknown, a size is not a positive integer, or as `NeuralSDE`.
        """
        if kind not in _KINDS:
            raise ValueError(f"`kind` must be one of {_KINDS}; got {kind!r}.")
        for value, name in [
            (input_size, "input_size"),
            (hidden_size, "hidden_size"),
            (output_size, "output_size"),
            (width, "width"),
            (depth, "depth"),
        ]:
            check_positive_int(value, name)
        _check_interpolation(interpolation)
        if interpolation == "rectilinear":
            raise ValueError(
                "`interpolation` must be 'cubic' or 'linear': the SDE runs in the "
                "time of the data, which a rectilinear path reparameterises."
            )
        initial_key, drift_key, diffusion_key, output_key = jr.split(key, 4)
        drift = _StableDrift(
            eqx.nn.MLP(
                hidden_size + input_size + 1,
                hidden_size,
                width,
                depth,
                activation=jax.nn.softplus,
                final_activation=jnp.tanh,
                key=drift_key,
            ),
            hidden_size,
            kind,
        )
        diffusion = _StableDiffusion(
            eqx.nn.MLP(
                1,
                hidden_size,
                width,
                depth,
                activation=jax.nn.softplus,
                final_activation=jax.nn.sigmoid,
                key=diffusion_key,
            ),
            kind,
        )
        self.initial = eqx.nn.Linear(input_size + 1, hidden_size, key=initial_key)
        self.sde = NeuralSDE(
            drift,
            diffusion,
            solver=solver,
            stepsize_controller=stepsize_controller,
            adjoint=adjoint,
            dt0=dt0,
            max_steps=max_steps,
        )
        self.output = eqx.nn.Linear(hidden_size, output_size, key=output_key)
        self.kind = kind
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.output_size = output_size
        self.interpolation = interpolation

    def solve(
        self,
        ts: Real[Array, " time"],
        xs: Float[Array, "time {self.input_size}"],
        *,
        key: PRNGKeyArray | None = None,
        throw: bool = True,
    ) -> ODESolution:
        """Solve for the hidden state at every observation time.

        **Arguments:**

        - `ts`: the observation times, of shape `(time,)`, strictly increasing, at
            least 2.
        - `xs`: the observations, of shape `(time, input_size)`; `NaN` marks a missing
            value (see `control_path`). Batch with `jax.vmap` (over `ts` too).
        - `key`: the PRNG key of the Brownian path; required.
        - `throw`: whether a failed solve (such as `max_steps` reached) raises. If
            `False`, check `ODESolution.result` instead.

        **Returns:** an `ODESolution` whose `ys`, of shape `(time, hidden_size)`, are
        the hidden states at `ts` (the last is the state the readout uses).

        **Raises:** as `control_path` and `NeuralSDE.solve`, and `ValueError` naming
        `xs` if its channels are not `input_size`.
        """
        if jnp.ndim(xs) != 2 or jnp.shape(xs)[-1] != self.input_size:
            raise ValueError(
                f"`xs` must be of shape `(time, {self.input_size})` (`input_size` "
                f"channels); got shape {jnp.shape(xs)}. Batch with `jax.vmap`."
            )
        path = control_path(ts, xs, interpolation=self.interpolation)  # pyright: ignore[reportArgumentType]
        z0 = self.initial(path.evaluate(path.ts[0]))
        return self.sde.solve(path.ts, z0, key=key, throw=throw, args=path)

    def __call__(
        self,
        ts: Real[Array, " time"],
        xs: Float[Array, "time {self.input_size}"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, " {self.output_size}"]:
        """**Arguments:**

        - `ts`: the observation times, of shape `(time,)`, strictly increasing, at
            least 2.
        - `xs`: the observations, of shape `(time, input_size)`; `NaN` marks a missing
            value. Batch with `jax.vmap` (over `ts` and `key` too).
        - `key`: the PRNG key of the Brownian path; required. The output is random:
            average over keys for a Monte Carlo estimate.

        **Returns:** the readout of the final hidden state, of shape `(output_size,)`.

        **Raises:** as `solve` with `throw=True`.
        """
        return self.output(self.solve(ts, xs, key=key).ys[-1])
