from typing import Literal

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jax import lax
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree, Real

from .._core import check_positive_int


_SOLVES = ("fused", "diffrax")
_INPUT_MAPPINGS = ("affine", None)


def _check_input_mapping(input_mapping: object) -> None:
    if input_mapping not in _INPUT_MAPPINGS:
        raise ValueError(
            f"`input_mapping` must be one of {_INPUT_MAPPINGS}; got {input_mapping!r}."
        )


class LTCCell(eqx.Module):
    """A liquid time-constant cell with biophysical synapses.

    From Hasani et al., "Liquid Time-constant Networks" (AAAI 2021), with the
    conductance-based synapses of Lechner et al., "Neural circuit policies enabling
    auditable autonomy" (2020). Neuron `i` has the membrane equation

    `c_i dx_i/dt = g_i (v_i - x_i) + sum_j s_ij(x_j) (E_ij - x_i) + sum_k r_ik(u_k)
    (F_ik - x_i)`,

    with leak conductance `g_i`, resting potential `v_i`, capacitance `c_i`, and
    synaptic conductances `s_ij(x) = w_ij sigmoid(gamma_ij (x - mu_ij))` from the
    neurons (recurrent) and `r_ik(u)` alike from the inputs (sensory), each with its
    reversal potential `E_ij`, `F_ik`. It is the LTC form `dx/dt = -[1/tau + f(x, u)] x
    + f(x, u) A` with a non-negative, input- and state-dependent `f`, written as
    `dx/dt = a(x, u) * x + b(x, u)` (`a` the negated total conductance over `c`, `b` the
    driving currents over `c`): `rhs_linear_form` returns `(a, b)`.

    Conductances are non-negative (softplus), so `a < 0` and each neuron relaxes
    towards a convex combination of `v_i` and the reversal potentials; its state stays
    within their range (`state_bounds`), under the exact flow and under the paper's
    fused semi-implicit step alike.

    With `input_mapping="affine"`, the input first passes through a learnable
    elementwise affine map, `u -> input_w * u + input_b` (initialised to the
    identity), as in the `ncps` reference implementation, whose default it is. It is
    not part of the paper's equations, but without it the sensory sigmoids, centred
    on `[0.3, 0.8]`, only see inputs of that scale. The map acts on the input only, so
    the state bounds are unchanged.
    """

    sensory_w: Float[Array, "hidden inputs"]
    sensory_mu: Float[Array, "hidden inputs"]
    sensory_gamma: Float[Array, "hidden inputs"]
    sensory_erev: Float[Array, "hidden inputs"]
    w: Float[Array, "hidden hidden"]
    mu: Float[Array, "hidden hidden"]
    gamma: Float[Array, "hidden hidden"]
    erev: Float[Array, "hidden hidden"]
    gleak: Float[Array, " hidden"]
    vleak: Float[Array, " hidden"]
    cm: Float[Array, " hidden"]
    input_w: Float[Array, " inputs"] | None
    input_b: Float[Array, " inputs"] | None
    input_size: int = eqx.field(static=True)
    hidden_size: int = eqx.field(static=True)

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        input_mapping: Literal["affine", None] = None,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `input_size`: the number of input channels `u`.
        - `hidden_size`: the number of neurons `x`.
        - `input_mapping`: `"affine"` for a learnable elementwise map `input_w * u +
            input_b` (ones and zeros at first) ahead of the sensory synapses, the
            default of `ncps`; `None` (the default here, the paper's equations) for
            none, when `input_w` and `input_b` are `None`.
        - `key`: a PRNG key for the initial parameters (the ranges of the `ncps`
            reference implementation).

        **Raises:** `ValueError` naming the argument if a size is not a positive
        integer or `input_mapping` is unknown.
        """
        check_positive_int(input_size, "input_size")
        check_positive_int(hidden_size, "hidden_size")
        _check_input_mapping(input_mapping)
        keys = jr.split(key, 9)
        sensory, recurrent = (hidden_size, input_size), (hidden_size, hidden_size)

        def sign(k, shape):
            return jnp.where(jr.bernoulli(k, 0.5, shape), 1.0, -1.0)

        self.sensory_w = jr.uniform(keys[0], sensory, minval=0.01, maxval=1.0)
        self.sensory_mu = jr.uniform(keys[1], sensory, minval=0.3, maxval=0.8)
        self.sensory_gamma = jr.uniform(keys[2], sensory, minval=3.0, maxval=8.0)
        self.sensory_erev = sign(keys[3], sensory)
        self.w = jr.uniform(keys[4], recurrent, minval=0.01, maxval=1.0)
        self.mu = jr.uniform(keys[5], recurrent, minval=0.3, maxval=0.8)
        self.gamma = jr.uniform(keys[6], recurrent, minval=3.0, maxval=8.0)
        self.erev = sign(keys[7], recurrent)
        self.gleak = jr.uniform(keys[8], (hidden_size,), minval=0.001, maxval=1.0)
        self.vleak = jnp.zeros(hidden_size)
        self.cm = jnp.full(hidden_size, 0.5)
        if input_mapping == "affine":
            self.input_w = jnp.ones(input_size)
            self.input_b = jnp.zeros(input_size)
        else:
            self.input_w = self.input_b = None
        self.input_size = input_size
        self.hidden_size = hidden_size

    def _synapses(self, x: Array, u: Array) -> tuple[Array, Array]:
        """The sensory and recurrent conductances, `(hidden, inputs)`, `(hidden,
        hidden)`; non-negative (softplus weights): the state bounds rely on it."""
        # Every code path reaches the input through here, so the map is applied once
        # per evaluation (a few flops, next to the `hidden * inputs` sigmoids).
        if self.input_w is not None and self.input_b is not None:
            u = self.input_w * u + self.input_b
        sensory = jax.nn.softplus(self.sensory_w) * jax.nn.sigmoid(
            self.sensory_gamma * (u[None, :] - self.sensory_mu)
        )
        recurrent = jax.nn.softplus(self.w) * jax.nn.sigmoid(
            self.gamma * (x[None, :] - self.mu)
        )
        return sensory, recurrent

    def rhs_linear_form(
        self, x: Float[Array, " hidden"], u: Float[Array, " inputs"]
    ) -> tuple[Float[Array, " hidden"], Float[Array, " hidden"]]:
        """`(a, b)` with `dx/dt = a * x + b`: `a = -(g + total conductance) / c` (< 0),
        `b = (g v + driving currents) / c`."""
        sensory, recurrent = self._synapses(x, u)
        gleak, cm = jax.nn.softplus(self.gleak), jax.nn.softplus(self.cm)
        total = gleak + sensory.sum(axis=1) + recurrent.sum(axis=1)
        driving = (
            gleak * self.vleak
            + (sensory * self.sensory_erev).sum(axis=1)
            + (recurrent * self.erev).sum(axis=1)
        )
        return -total / cm, driving / cm

    def vector_field(
        self,
        t: Real[ArrayLike, ""],
        x: Float[Array, " hidden"],
        u: Float[Array, " inputs"],
    ) -> Float[Array, " hidden"]:
        """`dx/dt`, computed directly from the membrane equation."""
        del t
        sensory, recurrent = self._synapses(x, u)
        gleak, cm = jax.nn.softplus(self.gleak), jax.nn.softplus(self.cm)
        currents = (
            gleak * (self.vleak - x)
            + (sensory * (self.sensory_erev - x[:, None])).sum(axis=1)
            + (recurrent * (self.erev - x[:, None])).sum(axis=1)
        )
        return currents / cm

    def state_bounds(self) -> tuple[Float[Array, " hidden"], Float[Array, " hidden"]]:
        """Per neuron, the lowest and highest of `v_i` and its reversal potentials."""
        potentials = jnp.concatenate(
            [self.vleak[:, None], self.sensory_erev, self.erev], axis=1
        )
        return potentials.min(axis=1), potentials.max(axis=1)

    def fused_step(
        self,
        x: Float[Array, " hidden"],
        u: Float[Array, " inputs"],
        dt: Real[ArrayLike, ""],
    ) -> Float[Array, " hidden"]:
        """One fused semi-implicit Euler step of Hasani et al.: implicit in the `a * x`
        term, explicit in the conductances, `x' = (x + dt b) / (1 - dt a)`."""
        a, b = self.rhs_linear_form(x, u)
        return (x + dt * b) / (1 - dt * a)

    def __call__(
        self,
        x: Float[Array, " hidden"],
        u: Float[Array, " inputs"],
        dt: Real[ArrayLike, ""],
        *,
        unfolds: int = 6,
        solve: str = "fused",
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, " hidden"]:
        """Advance the state by `dt` with the input `u` held constant.

        **Arguments:**

        - `x`: the state, of shape `(hidden_size,)`.
        - `u`: the input, of shape `(input_size,)`.
        - `dt`: the time to advance, non-negative.
        - `unfolds`: the number of fused steps of `dt / unfolds` (the paper's ODE
            unfolds); with `solve="diffrax"`, the number of Tsit5 steps.
        - `solve`: `"fused"` (the paper's semi-implicit step) or `"diffrax"` (Tsit5 at
            a fixed step, through diffrax).
        - `key`: unused.

        **Returns:** the state after `dt`.

        **Raises:** `ValueError` naming the argument if `solve` is unknown or
        `unfolds` is not a positive integer.
        """
        del key
        check_positive_int(unfolds, "unfolds")
        if solve not in _SOLVES:
            raise ValueError(f"`solve` must be one of {_SOLVES}; got {solve!r}.")
        h = dt / unfolds
        if solve == "fused":
            return lax.fori_loop(0, unfolds, lambda _, y: self.fused_step(y, u, h), x)
        sol = dfx.diffeqsolve(
            dfx.ODETerm(self.vector_field),
            dfx.Tsit5(),
            t0=0.0,
            t1=dt,
            dt0=h,
            y0=x,
            args=u,
            stepsize_controller=dfx.ConstantStepSize(),
            max_steps=unfolds + 1,
        )
        return sol.ys[-1]


def ltc_scan(
    cell: LTCCell,
    ts: Real[Array, " time"],
    us: Float[Array, "time inputs"],
    x0: Float[Array, " hidden"] | None = None,
    *,
    unfolds: int = 6,
    solve: str = "fused",
) -> Float[Array, "time hidden"]:
    """Run an `LTCCell` over an irregularly sampled input sequence (`lax.scan`).

    **Arguments:**

    - `cell`: the cell.
    - `ts`: the observation times, of shape `(time,)`, non-decreasing.
    - `us`: the inputs, of shape `(time, input_size)`. Between `ts[i-1]` and `ts[i]`
        the input is held at `us[i]` (a zero-order hold).
    - `x0`: the state at `ts[0]`, of shape `(hidden_size,)`; zeros by default.
    - `unfolds`, `solve`: as for `LTCCell.__call__`.

    **Returns:** the states at `ts`, of shape `(time, hidden_size)`; row 0 is `x0`.
    """
    if x0 is None:
        x0 = jnp.zeros(cell.hidden_size, us.dtype)
    gaps = jnp.diff(ts, prepend=ts[:1])

    def step(x: Array, inputs: PyTree) -> tuple[Array, Array]:
        gap, u = inputs
        x = cell(x, u, gap, unfolds=unfolds, solve=solve)
        return x, x

    _, xs = lax.scan(step, x0, (gaps, us))
    return xs


class LTC(eqx.Module):
    """A liquid time-constant network over irregularly sampled sequences.

    Hasani et al., "Liquid Time-constant Networks" (AAAI 2021): an `LTCCell` advanced
    between observation times (the input held constant over each gap) and a linear
    readout of its state at every observation, for sequence-to-sequence prediction.
    """

    cell: LTCCell
    readout: eqx.nn.Linear
    unfolds: int = eqx.field(static=True)
    solve: str = eqx.field(static=True)

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        output_size: int,
        *,
        unfolds: int = 6,
        solve: str = "fused",
        input_mapping: Literal["affine", None] = None,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `input_size`, `hidden_size`, `output_size`: the sizes of the inputs, the
            neurons and the outputs.
        - `unfolds`: steps per observation gap (see `LTCCell.__call__`).
        - `solve`: `"fused"` (the paper's semi-implicit step) or `"diffrax"` (Tsit5).
        - `input_mapping`: `"affine"` (the `ncps` default) or `None`; see `LTCCell`.
            The readout is already affine, so no output map is offered.
        - `key`: a PRNG key for the initial parameters.

        **Raises:** `ValueError` naming the argument if a size or `unfolds` is not a
        positive integer, or `solve` or `input_mapping` is unknown.
        """
        check_positive_int(output_size, "output_size")
        check_positive_int(unfolds, "unfolds")
        if solve not in _SOLVES:
            raise ValueError(f"`solve` must be one of {_SOLVES}; got {solve!r}.")
        ckey, rkey = jr.split(key)
        self.cell = LTCCell(
            input_size, hidden_size, input_mapping=input_mapping, key=ckey
        )
        self.readout = eqx.nn.Linear(hidden_size, output_size, key=rkey)
        self.unfolds = unfolds
        self.solve = solve

    def __call__(
        self,
        ts: Real[Array, " time"],
        us: Float[Array, "time inputs"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "time outputs"]:
        """**Arguments:**

        - `ts`: the observation times, of shape `(time,)`, non-decreasing.
        - `us`: the inputs, of shape `(time, input_size)`; batch with `jax.vmap`.
        - `key`: unused.

        **Returns:** the output at every observation time, of shape
        `(time, output_size)`.

        **Raises:** `ValueError` naming `ts` or `us` if a shape is wrong;
        `equinox.EquinoxRuntimeError` if `ts` decreases.
        """
        del key
        if jnp.ndim(ts) != 1 or jnp.shape(us) != (
            jnp.shape(ts)[0],
            self.cell.input_size,
        ):
            raise ValueError(
                "`ts` must be of shape `(time,)` and `us` of shape `(time, "
                f"{self.cell.input_size})`; got {jnp.shape(ts)} and {jnp.shape(us)}. "
                "Batch with `jax.vmap`."
            )
        ts = eqx.error_if(ts, jnp.any(jnp.diff(ts) < 0), "`ts` must not decrease.")
        xs = ltc_scan(self.cell, ts, us, unfolds=self.unfolds, solve=self.solve)
        return jax.vmap(self.readout)(xs)
