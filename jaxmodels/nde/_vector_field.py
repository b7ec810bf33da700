import abc
from collections.abc import Callable

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray, PyTree, Real

from .._core import check_positive_int


def check_dt0(
    dt0: float | None, stepsize_controller: dfx.AbstractStepSizeController
) -> float | None:
    """`dt0` as a Python float, checked against the step-size controller.

    **Raises:** `ValueError` naming `dt0` if it is not positive, or is missing with
    `diffrax.ConstantStepSize` (where it is the fixed step).
    """
    if dt0 is not None:
        dt0 = float(dt0)
        if not dt0 > 0:
            raise ValueError(f"`dt0` must be positive or `None`; got {dt0}.")
    elif isinstance(stepsize_controller, dfx.ConstantStepSize):
        raise ValueError(
            "`dt0` must be given with `ConstantStepSize`: it is the fixed step."
        )
    return dt0


def check_increasing(ts: Array, name: str) -> Array:
    """`ts` with a run-time check (`eqx.error_if`) that it is strictly increasing; the
    error names the argument `name`. A `NaN` time fails it too."""
    # `~(diff > 0)` rather than `diff <= 0`, so that a `NaN` time is caught too.
    return eqx.error_if(
        ts,
        ~(jnp.diff(ts) > 0),
        f"`{name}` must be strictly increasing (and not `NaN`).",
    )


def check_initial_value(ts: Array, y0: Array, field: Callable[..., Array]) -> Array:
    """Check the shapes of `ts` and `y0` (against `field`), and the order of `ts`.

    **Returns:** `ts`, with a run-time check (`eqx.error_if`) that it is strictly
    increasing; a `NaN` time fails it too.

    **Raises:** `ValueError` naming `ts` if it is not 1-D with at least 2 times, or
    `y0` if it is not one state (of shape `(field.data_size,)` when `field` is an
    `AbstractVectorField`, else any 1-D shape).
    """
    if jnp.ndim(ts) != 1 or jnp.shape(ts)[0] < 2:
        raise ValueError(
            "`ts` must be a 1-D array of at least 2 times (the first is the "
            f"initial time); got shape {jnp.shape(ts)}. Batch with `jax.vmap`."
        )
    if isinstance(field, AbstractVectorField):
        expected = (field.data_size,)
        message = f"of shape {expected}"
    else:
        expected = jnp.shape(y0)[:1]
        message = "a 1-D array"
    if jnp.ndim(y0) != 1 or jnp.shape(y0) != expected:
        raise ValueError(
            f"`y0` must be one initial state, {message}; got shape "
            f"{jnp.shape(y0)}. Batch with `jax.vmap`."
        )
    return check_increasing(ts, "ts")


class AbstractVectorField(eqx.Module):
    """A vector field `f(t, y, args)` on states of shape `(data_size,)`.

    Any Equinox module `f(t, y, args)` can drive a `NeuralODE`; subclassing this one
    also declares `data_size`, so that `NeuralODE` can check the shape of `y0` before
    tracing the solve.
    """

    data_size: eqx.AbstractVar[int]

    @abc.abstractmethod
    def __call__(
        self,
        t: Real[Array, ""],
        y: Float[Array, " {self.data_size}"],
        args: PyTree,
    ) -> Float[Array, " {self.data_size}"]:
        """The time derivative `dy/dt` at time `t` and state `y`."""


class MLPVectorField(AbstractVectorField):
    """A multilayer perceptron as the vector field of a neural ODE.

    The parameterisation of Chen et al., "Neural Ordinary Differential Equations"
    (2018), in the form recommended by Kidger, "On Neural Differential Equations"
    (2021): smooth hidden activations (softplus) so that adaptive solvers see a
    smooth field, and a bounded final activation (tanh) so that solutions cannot
    blow up in finite time. Autonomous by default; with `time_dependent=True` the
    time `t` is appended to the input.
    """

    mlp: eqx.nn.MLP
    data_size: int = eqx.field(static=True)
    width: int = eqx.field(static=True)
    depth: int = eqx.field(static=True)
    time_dependent: bool = eqx.field(static=True)

    def __init__(
        self,
        data_size: int,
        width: int,
        depth: int,
        *,
        activation: Callable[[Array], Array] = jax.nn.softplus,
        final_activation: Callable[[Array], Array] = jnp.tanh,
        time_dependent: bool = False,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `data_size`: the size of the state `y`.
        - `width`: the size of every hidden layer.
        - `depth`: the number of hidden layers, at least 1.
        - `activation`: the nonlinearity after each hidden layer.
        - `final_activation`: the nonlinearity on the output.
        - `time_dependent`: whether `t` is an input of the network (non-autonomous).
        - `key`: a PRNG key for the initial weights.

        **Raises:** `ValueError` naming the argument if `data_size`, `width` or
        `depth` is not a positive integer, or `time_dependent` is not a bool.
        """
        for value, name in [
            (data_size, "data_size"),
            (width, "width"),
            (depth, "depth"),
        ]:
            check_positive_int(value, name)
        if not isinstance(time_dependent, bool):
            raise ValueError(
                f"`time_dependent` must be a bool; got {time_dependent!r}."
            )
        self.mlp = eqx.nn.MLP(
            data_size + int(time_dependent),
            data_size,
            width,
            depth,
            activation=activation,
            final_activation=final_activation,
            key=key,
        )
        self.data_size = data_size
        self.width = width
        self.depth = depth
        self.time_dependent = time_dependent

    def __call__(
        self,
        t: Real[Array, ""],
        y: Float[Array, " {self.data_size}"],
        args: PyTree,
    ) -> Float[Array, " {self.data_size}"]:
        """**Arguments:**

        - `t`: the time, a scalar; used only if `time_dependent`.
        - `y`: the state, of shape `(data_size,)`.
        - `args`: unused; present for the diffrax signature `f(t, y, args)`.

        **Returns:** `dy/dt`, of shape `(data_size,)`.
        """
        if self.time_dependent:
            y = jnp.concatenate([y, jnp.asarray(t, y.dtype)[None]])
        return self.mlp(y)
