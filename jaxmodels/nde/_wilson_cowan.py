import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optimistix as optx
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray, Real

from .._core import check_positive_int


# The bound on the coupling's spectral norm; below 4 (1 / max S') the flow contracts.
_NORM_BOUND = 3.0


class WilsonCowanSolution(eqx.Module):
    """The steady state a `WilsonCowan` layer settled in, and how it got there.

    **Fields:**

    - `excitatory`, `inhibitory`: the populations' activities at the steady state, each
        of shape `(nodes,)`.
    - `time`: the time at which the steady state was declared.
    - `residual`: the RMS norm of `d(E, I)/dt` there, below `atol + rtol * rms(E, I)`
        (the criterion of `diffrax.steady_state_event`).
    - `settled`: whether the steady state was reached before `t1` (if not, the solve
        raises unless `throw=False`).
    - `num_steps`: the solver's steps.
    - `result`: a `diffrax.RESULTS`, successful unless the solver itself failed
        (`max_steps`).
    """

    excitatory: Float[Array, " nodes"]
    inhibitory: Float[Array, " nodes"]
    time: Real[Array, ""]
    residual: Float[Array, ""]
    settled: Bool[Array, ""]
    num_steps: Int[Array, ""]
    result: dfx.RESULTS


class WilsonCowan(eqx.Module):
    """A Wilson-Cowan metapopulation integrated to its steady state: a classifier head.

    After "Learning in Wilson-Cowan model for metapopulation" (2024), on the neural-mass
    model of Wilson and Cowan (1972). Each of `nodes` brain regions has an excitatory
    and an inhibitory population,

    `dE_k/dt = -E_k + S(sum_j C_kj E_j - w_EI,k I_k + P_k(x))`,
    `dI_k/dt = -I_k + S(w_IE,k E_k - w_II,k I_k)`,

    with `S` the logistic sigmoid, `C` the (learned) coupling between regions and
    `P(x)` a linear map of the input driving the excitatory populations. The layer
    starts from rest, integrates with diffrax until the steady state
    (`diffrax.steady_state_event`: `|d(E, I)/dt|` below tolerance) and reads the class
    scores off the excitatory activities with a linear map. Local couplings enter
    through softplus, so excitation excites and inhibition inhibits. The paper's
    requirement of stable attractors is met by construction: the whole coupling
    matrix is rescaled to spectral norm at most 3, which makes the flow a contraction
    with one globally attracting fixed point (see `_couplings`); time constants are 1.
    """

    drive: eqx.nn.Linear
    coupling: Float[Array, "nodes nodes"]
    w_ei: Float[Array, " nodes"]
    w_ie: Float[Array, " nodes"]
    w_ii: Float[Array, " nodes"]
    readout: eqx.nn.Linear
    rtol: float
    atol: float
    t1: float
    max_steps: int = eqx.field(static=True)

    def __init__(
        self,
        in_size: int,
        nodes: int,
        out_size: int,
        *,
        rtol: float = 1e-4,
        atol: float = 1e-5,
        t1: float = 200.0,
        max_steps: int = 4096,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `in_size`: the size of the input `x`.
        - `nodes`: the number of regions (each an E and an I population).
        - `out_size`: the number of class scores.
        - `rtol`, `atol`: the solver's tolerances, also the steady-state criterion.
        - `t1`: the latest time to wait for the steady state, positive.
        - `max_steps`: the most solver steps.
        - `key`: a PRNG key for the initial parameters.

        **Raises:** `ValueError` naming the argument if a size or `max_steps` is not a
        positive integer, or `rtol`, `atol` or `t1` is not positive.
        """
        for value, name in [
            (in_size, "in_size"),
            (nodes, "nodes"),
            (out_size, "out_size"),
            (max_steps, "max_steps"),
        ]:
            check_positive_int(value, name)
        for value, name in [(rtol, "rtol"), (atol, "atol"), (t1, "t1")]:
            if not float(value) > 0:
                raise ValueError(f"`{name}` must be positive; got {value!r}.")
        dkey, ckey, rkey = jr.split(key, 3)
        self.drive = eqx.nn.Linear(in_size, nodes, key=dkey)
        self.coupling = jr.normal(ckey, (nodes, nodes)) / jnp.sqrt(nodes)
        # The classic oscillation-free regime: strong self-inhibition (Wilson & Cowan).
        self.w_ei = jnp.full(nodes, 1.0)
        self.w_ie = jnp.full(nodes, 1.0)
        self.w_ii = jnp.full(nodes, 0.5)
        self.readout = eqx.nn.Linear(nodes, out_size, key=rkey)
        self.rtol = float(rtol)
        self.atol = float(atol)
        self.t1 = float(t1)
        self.max_steps = max_steps

    def _couplings(self) -> Float[Array, "states states"]:
        """The coupling matrix `M` of `(E, I)`, scaled so that `||M||_2 <= 3`.

        The Jacobian of the dynamics is `-1 + D M` with `D = diag(S')`, `S' <= 1/4`, so
        `||M||_2 < 4` makes the flow a contraction (in the Euclidean norm, at rate at
        least `1 - ||M||_2 / 4`): there is exactly one fixed point and every start
        converges to it, never oscillating. The margin (3, a rate of 1/4) keeps the
        time to settle short.
        """
        w_ei, w_ie, w_ii = (
            jax.nn.softplus(self.w_ei),
            jax.nn.softplus(self.w_ie),
            jax.nn.softplus(self.w_ii),
        )
        m = jnp.concatenate(
            [
                jnp.concatenate([self.coupling, -jnp.diag(w_ei)], axis=1),
                jnp.concatenate([jnp.diag(w_ie), -jnp.diag(w_ii)], axis=1),
            ],
            axis=0,
        )
        norm = jnp.linalg.norm(m, ord=2)
        return m * jnp.minimum(1.0, _NORM_BOUND / norm)

    def vector_field(
        self,
        t: Real[ArrayLike, ""],
        y: tuple[Float[Array, " nodes"], Float[Array, " nodes"]],
        drive: Float[Array, " nodes"],
    ) -> tuple[Float[Array, " nodes"], Float[Array, " nodes"]]:
        """`(dE/dt, dI/dt)` at the state `y = (E, I)` under the input drive `P(x)`."""
        del t
        e, i = y
        nodes = e.shape[0]
        inputs = self._couplings() @ jnp.concatenate([e, i])
        inputs = inputs + jnp.concatenate([drive, jnp.zeros_like(drive)])
        target = jax.nn.sigmoid(inputs)
        return -e + target[:nodes], -i + target[nodes:]

    def steady_state(
        self, x: Float[Array, " in_size"], *, throw: bool = True
    ) -> WilsonCowanSolution:
        """Integrate from rest (`E = I = 0`) to the steady state under the input `x`.

        **Arguments:**

        - `x`: one input, of shape `(in_size,)`; batch with `jax.vmap`.
        - `throw`: whether failing to settle by `t1`, or a failed solve, raises.

        **Returns:** a `WilsonCowanSolution`.
        """
        drive = self.drive(x)
        nodes = drive.shape[0]
        y0 = (jnp.zeros(nodes, drive.dtype), jnp.zeros(nodes, drive.dtype))
        sol = dfx.diffeqsolve(
            dfx.ODETerm(self.vector_field),
            dfx.Tsit5(),
            t0=0.0,
            t1=self.t1,
            dt0=None,
            y0=y0,
            args=drive,
            saveat=dfx.SaveAt(t1=True),
            stepsize_controller=dfx.PIDController(rtol=self.rtol, atol=self.atol),
            event=dfx.Event(dfx.steady_state_event()),
            max_steps=self.max_steps,
            throw=False,
        )
        e, i = sol.ys[0][0], sol.ys[1][0]
        residual = optx.rms_norm(self.vector_field(0.0, (e, i), drive))
        # The solve also ends "successfully" at `t1`; only the event means settled.
        settled = sol.result == dfx.RESULTS.event_occurred
        result = dfx.RESULTS.where(settled, dfx.RESULTS.successful, sol.result)
        if throw:
            e = result.error_if(e, result != dfx.RESULTS.successful)
            e = eqx.error_if(
                e,
                ~settled,
                f"The Wilson-Cowan layer reached no steady state by t1={self.t1}: "
                "raise `t1`, or check the couplings for oscillations.",
            )
        return WilsonCowanSolution(
            excitatory=e,
            inhibitory=i,
            time=sol.ts[0],
            residual=residual,
            settled=settled,
            num_steps=sol.stats["num_steps"],
            result=result,
        )

    def __call__(
        self, x: Float[Array, " in_size"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, " out_size"]:
        """The class scores: a linear readout of the steady excitatory activities.

        **Raises:** `equinox.EquinoxRuntimeError` if no steady state is reached.
        """
        del key
        return self.readout(self.steady_state(x).excitatory)
