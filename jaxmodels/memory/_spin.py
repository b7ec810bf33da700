"""Binary associative memories: the classical Hopfield network and dense associative
memories, run by Glauber dynamics.

The classical network is "Neural networks and physical systems with emergent collective
computational abilities" (Hopfield, 1982): Hebbian couplings
`J = (1/N) sum_mu xi^mu xi^mu^T` with a zero diagonal, capacity `alpha_c ~ 0.138 N`
("Storing infinite numbers of patterns in a spin-glass model of neural networks",
Amit, Gutfreund and Sompolinsky, 1985). Dense associative memories replace the pairwise
energy by `-sum_mu F(xi^mu . sigma)` ("Dense Associative Memory for Pattern
Recognition", Krotov and Hopfield, 2016: `F(x) = x^n`, capacity `~ N^(n-1)`; "On a
model of associative memory with huge storage capacity", Demircigil et al., 2017:
`F(x) = exp(x)`).

Stored patterns are the rows of `patterns`, shape `(num_patterns, num_units)`; a state
`sigma` has shape `(num_units,)` with entries `+-1`. Dynamics keep the overlaps
`xi^mu . sigma` and update them as spins flip, so an asynchronous sweep costs
`O(num_units num_patterns)`, never a coupling matrix.
"""

import abc
import math
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray

from .._core import RESULTS, check_positive_int


_MODES = ("async", "sync")


def _check_patterns(patterns: ArrayLike) -> Array:
    patterns = jnp.asarray(patterns)
    if patterns.ndim != 2 or patterns.shape[0] < 1 or patterns.shape[1] < 1:
        raise ValueError(
            "`patterns` must have shape (num_patterns, num_units), one stored pattern "
            f"per row, both at least 1; got shape {patterns.shape}."
        )
    if not jnp.issubdtype(patterns.dtype, jnp.floating):
        patterns = patterns.astype(jnp.asarray(1.0).dtype)
    # Finiteness is checked where the patterns are used (`run`), in one branched
    # check with the other inputs.
    return patterns


def hebbian_couplings(
    patterns: Float[ArrayLike, "num_patterns num_units"],
) -> Float[Array, "num_units num_units"]:
    """The Hebbian couplings `J = (1/N) sum_mu xi^mu xi^mu^T` with a zero diagonal
    (Hopfield, 1982).

    **Arguments:**

    - `patterns`: shape `(num_patterns, num_units)`, usually with entries in
        `{-1, 0, +1}` (zeros for diluted patterns).

    **Returns:** the symmetric `(num_units, num_units)` coupling matrix.

    **Raises:** `ValueError` if `patterns` is not two-dimensional.
    """
    patterns = _check_patterns(patterns)
    n = patterns.shape[1]
    j = patterns.T @ patterns / n
    return j * (1 - jnp.eye(n, dtype=j.dtype))


def random_patterns(
    key: PRNGKeyArray, num_patterns: int, num_units: int, *, dtype=None
) -> Float[Array, "{num_patterns} {num_units}"]:
    """Independent unbiased `+-1` patterns, shape `(num_patterns, num_units)`.

    **Raises:** `ValueError` if a size is not a positive integer.
    """
    check_positive_int(num_patterns, "num_patterns")
    check_positive_int(num_units, "num_units")
    dtype = jnp.asarray(1.0).dtype if dtype is None else dtype
    return jr.rademacher(key, (num_patterns, num_units), dtype=dtype)


class SpinSolution(eqx.Module):
    """The end of a run of Glauber dynamics.

    **Fields:**

    - `value`: the final state `sigma`, shape `(num_units,)`, entries `+-1`.
    - `overlaps`: the Mattis magnetisations `m_mu = xi^mu . sigma / N`, shape
        `(num_patterns,)`.
    - `energy`: the network's energy at `value`.
    - `num_sweeps`: sweeps run (a sweep is `num_units` single-spin updates, or one
        synchronous update).
    - `num_flips`: spins flipped over the whole run.
    - `fixed_point`: whether the last sweep flipped no spin. At zero temperature the
        run stops at the first such sweep; at positive temperature every sweep runs.
    - `result`: a `jaxmodels._core.RESULTS`: `max_steps_reached` if a zero-temperature
        run did not reach a fixed point within `sweeps` (synchronous dynamics may end on
        a 2-cycle), otherwise successful.
    """

    value: Float[Array, " num_units"]
    overlaps: Float[Array, " num_patterns"]
    energy: Float[Array, ""]
    num_sweeps: Int[Array, ""]
    num_flips: Int[Array, ""]
    fixed_point: Bool[Array, ""]
    result: RESULTS


def _glauber(h: Array, old: Array, u: Array, temperature: Array) -> Array:
    """The Glauber heat-bath update: `+1` with probability `1 / (1 + exp(-2 h / T))`;
    at `T = 0` the sign of `h`, keeping the spin on a tie."""
    cold = jnp.where(h > 0, 1.0, jnp.where(h < 0, -1.0, old))
    hot_t = jnp.where(temperature > 0, temperature, 1.0)
    hot = jnp.where(u < jax.nn.sigmoid(2 * h / hot_t), 1.0, -1.0)
    return jnp.where(temperature > 0, hot, cold).astype(old.dtype)


class AbstractSpinNetwork(eqx.Module):
    """A network of `+-1` spins whose energy depends on the state only through the
    overlaps `xi^mu . sigma` with its stored patterns.

    Subclasses give the energy and the local field of one spin from its cavity overlaps
    `x_mu = xi^mu . sigma - xi^mu_i sigma_i` (the overlaps without spin `i`); the local
    field is half the energy difference of flipping the spin,
    `h_i = (E(sigma_i = -1) - E(sigma_i = +1)) / 2`, so that Glauber dynamics samples
    `exp(-E / T)`.
    """

    patterns: eqx.AbstractVar[Float[Array, "num_patterns num_units"]]

    @abc.abstractmethod
    def energy(self, sigma: Float[Array, " num_units"]) -> Float[Array, ""]:
        """The energy of the state `sigma`, shape `(num_units,)`."""

    @abc.abstractmethod
    def cavity_field(
        self,
        cavity: Float[Array, " num_patterns"],
        column: Float[Array, " num_patterns"],
    ) -> Float[Array, ""]:
        """The local field of one spin from its cavity overlaps `cavity` and its
        pattern entries `column = xi^mu_i`."""

    def overlaps(
        self, sigma: Float[Array, " num_units"]
    ) -> Float[Array, " num_patterns"]:
        """The Mattis magnetisations `m_mu = xi^mu . sigma / N`."""
        return self.patterns @ sigma / self.patterns.shape[1]

    def local_field(
        self, sigma: Float[Array, " num_units"]
    ) -> Float[Array, " num_units"]:
        """The local field `h_i` of every spin, half the energy difference of
        flipping it (for the classical network, `h = J sigma`)."""
        a = self.patterns @ sigma
        cavity = a[None, :] - self.patterns.T * sigma[:, None]
        return jax.vmap(self.cavity_field)(cavity, self.patterns.T)

    def run(
        self,
        sigma0: Float[ArrayLike, " num_units"],
        *,
        key: PRNGKeyArray,
        temperature: Float[ArrayLike, ""] = 0.0,
        sweeps: int = 100,
        mode: str = "async",
        throw: bool = True,
    ) -> SpinSolution:
        """Glauber dynamics from `sigma0`.

        Asynchronous (`mode="async"`): each sweep visits the spins in a fresh random
        order, one at a time. Synchronous (`"sync"`): all spins update at once from the
        same fields. At temperature `T` a spin becomes `+1` with probability
        `1 / (1 + exp(-2 h_i / T))`; at `T = 0` it takes the sign of `h_i` (keeping its
        value on a tie) and the run stops at the first sweep that flips nothing.
        Replicas: `jax.vmap` over keys and initial states.

        **Arguments:**

        - `sigma0`: the initial state, shape `(num_units,)`, entries `+-1`.
        - `key`: a PRNG key (orders of visit and heat-bath noise).
        - `temperature`: `T >= 0`, an array leaf (can be vmapped over).
        - `sweeps`: the most sweeps to run.
        - `mode`: `"async"` or `"sync"`.
        - `throw`: raise if a zero-temperature run reaches no fixed point.

        **Returns:** a `SpinSolution`.

        **Raises:** `ValueError` for a wrong shape of `sigma0`, a non-positive
        `sweeps` or an unknown `mode`; `equinox.EquinoxRuntimeError` if `sigma0` has an
        entry other than `+-1`, `temperature` is negative or NaN, or (with `throw`) no
        fixed point is reached at zero temperature.
        """
        check_positive_int(sweeps, "sweeps")
        if mode not in _MODES:
            raise ValueError(f"`mode` must be one of {_MODES}; got {mode!r}.")
        sigma0 = jnp.asarray(sigma0, dtype=self.patterns.dtype)
        n = self.patterns.shape[1]
        if sigma0.shape != (n,):
            raise ValueError(
                f"`sigma0` must have shape ({n},), one state of the network (batch "
                f"with jax.vmap); got shape {sigma0.shape}."
            )
        temperature = jnp.asarray(temperature, dtype=self.patterns.dtype)
        if temperature.ndim != 0:
            raise ValueError(
                f"`temperature` must be a scalar; got shape {temperature.shape}."
            )
        return _run(self, sigma0, key, temperature, sweeps, mode, throw)


def _dynamics(
    net: AbstractSpinNetwork,
    sigma0: Array,
    key: PRNGKeyArray,
    temperature: Array,
    sweeps: int,
    mode: str,
) -> tuple[Array, Array, Array, Array]:
    """The dynamics alone, unchecked: `(state, sweeps run, flips in the last sweep,
    flips in all)`."""
    xi = net.patterns
    xi_t = xi.T
    n = xi.shape[1]

    def async_sweep(s: Array, k: PRNGKeyArray) -> tuple[Array, Array]:
        # One draw per sweep gives both the random order (the argsort of uniforms is a
        # uniformly random permutation) and the heat-bath noise; `jr.permutation`'s
        # repeated sorts would triple the compile time.
        order_u, noise = jr.uniform(k, (2, n), dtype=s.dtype)
        order = jnp.argsort(order_u)

        def visit(t, carry):
            s, a, flips = carry
            i = order[t]
            column = xi_t[i]
            old = s[i]
            h = net.cavity_field(a - column * old, column)
            new = _glauber(h, old, noise[t], temperature)
            return s.at[i].set(new), a + column * (new - old), flips + (new != old)

        # The overlaps are recomputed once a sweep so that rounding (real-valued
        # patterns) cannot drift across sweeps.
        s, _, flips = jax.lax.fori_loop(0, n, visit, (s, xi @ s, jnp.array(0)))
        return s, flips

    def sync_sweep(s: Array, k: PRNGKeyArray) -> tuple[Array, Array]:
        noise = jr.uniform(k, (n,), dtype=s.dtype)
        new = _glauber(net.local_field(s), s, noise, temperature)
        return new, jnp.sum(new != s)

    sweep = async_sweep if mode == "async" else sync_sweep

    def cond(carry):
        _, count, flips, _ = carry
        frozen = (temperature == 0) & (count > 0) & (flips == 0)
        return (count < sweeps) & ~frozen

    def body(carry):
        s, count, _, total = carry
        s, flips = sweep(s, jr.fold_in(key, count))
        return s, count + 1, flips, total + flips

    start = (sigma0, jnp.array(0), jnp.array(-1), jnp.array(0))
    return jax.lax.while_loop(cond, body, start)


@eqx.filter_jit
def _run(
    net: AbstractSpinNetwork,
    sigma0: Array,
    key: PRNGKeyArray,
    temperature: Array,
    sweeps: int,
    mode: str,
    throw: bool,
) -> SpinSolution:
    # One branched check (each error_if adds compile time).
    bad = jnp.stack(
        [
            ~jnp.all(jnp.abs(sigma0) == 1),
            ~(temperature >= 0),
            ~jnp.all(jnp.isfinite(net.patterns)),
        ]
    )
    sigma0 = eqx.branched_error_if(
        sigma0,
        jnp.any(bad),
        jnp.argmax(bad),
        [
            "`sigma0` must have entries +-1.",
            "`temperature` must be non-negative.",
            "`patterns` contains NaN or inf.",
        ],
    )
    s, count, last, total = _dynamics(net, sigma0, key, temperature, sweeps, mode)
    fixed = last == 0
    result = RESULTS.where(
        fixed | (temperature > 0), RESULTS.successful, RESULTS.max_steps_reached
    )
    sol = SpinSolution(
        value=s,
        overlaps=net.overlaps(s),
        energy=net.energy(s),
        num_sweeps=count,
        num_flips=total,
        fixed_point=fixed,
        result=result,
    )
    if throw:
        sol = result.error_if(sol, result != RESULTS.successful)
    return sol


class HopfieldNetwork(AbstractSpinNetwork):
    """The classical Hopfield network: pairwise Hebbian couplings
    `J = (1/N) sum_mu xi^mu xi^mu^T`, zero diagonal, energy `-sigma^T J sigma / 2`.

    From "Neural networks and physical systems with emergent collective computational
    abilities" (Hopfield, 1982). `J` is never formed: fields and energies come from the
    overlaps, `O(N K)` per evaluation.
    """

    patterns: Float[Array, "num_patterns num_units"]

    def __init__(self, patterns: Float[ArrayLike, "num_patterns num_units"]):
        """**Arguments:**

        - `patterns`: the stored patterns, shape `(num_patterns, num_units)`, usually
            `+-1` (or `{-1, 0, +1}` for diluted patterns).

        **Raises:** `ValueError` if `patterns` is not two-dimensional.
        """
        self.patterns = _check_patterns(patterns)

    def couplings(self) -> Float[Array, "num_units num_units"]:
        """The coupling matrix `J` (`hebbian_couplings(patterns)`)."""
        return hebbian_couplings(self.patterns)

    def energy(self, sigma: Float[Array, " num_units"]) -> Float[Array, ""]:
        """`-sigma^T J sigma / 2`."""
        n = self.patterns.shape[1]
        a = self.patterns @ sigma
        diagonal = jnp.sum(self.patterns**2 * sigma[None, :] ** 2)
        return -(jnp.sum(a**2) - diagonal) / (2 * n)

    def cavity_field(
        self,
        cavity: Float[Array, " num_patterns"],
        column: Float[Array, " num_patterns"],
    ) -> Float[Array, ""]:
        return jnp.dot(column, cavity) / self.patterns.shape[1]


def _double_factorial(k: int) -> int:
    return math.prod(range(k, 0, -2)) if k > 0 else 1


class DenseAssociativeMemory(AbstractSpinNetwork):
    """A dense associative memory: energy `-sum_mu F(xi^mu . sigma)`.

    From "Dense Associative Memory for Pattern Recognition" (Krotov and Hopfield,
    2016). With `interaction=n` (an integer `n >= 2`), `F(x) = x^n`, normalised as
    `E = -(N / n) sum_mu m_mu^n` with `m_mu = xi^mu . sigma / N` so that fields are
    `O(1)` and `n = 2` is the classical network (up to a constant); its capacity grows
    as `N^(n-1) / (2 (2n-3)!! ln N)`. With `interaction="exp"`, `F(x) = exp(x)` ("On a
    model of associative memory with huge storage capacity", Demircigil et al., 2017);
    the energy used is `-log sum_mu exp(xi^mu . sigma)`, a monotone function of
    `-sum_mu exp(xi^mu . sigma)` that does not overflow: zero-temperature dynamics are
    the same, temperatures are in units of this `O(N)` energy.

    Patterns may be real-valued (the dense Hebbian networks of P042 store example
    averages); a zero pattern contributes nothing for polynomial interactions.
    """

    patterns: Float[Array, "num_patterns num_units"]
    interaction: int | str = eqx.field(static=True)

    def __init__(
        self,
        patterns: Float[ArrayLike, "num_patterns num_units"],
        interaction: int | str = 3,
    ):
        """**Arguments:**

        - `patterns`: the stored patterns, shape `(num_patterns, num_units)`.
        - `interaction`: an integer `n >= 2` (`F(x) = x^n`) or `"exp"`.

        **Raises:** `ValueError` if `patterns` is not two-dimensional or `interaction`
        is neither an integer at least 2 nor `"exp"`.
        """
        if interaction != "exp" and (
            not isinstance(interaction, int)
            or isinstance(interaction, bool)
            or interaction < 2
        ):
            raise ValueError(
                f'`interaction` must be an integer n >= 2 (F(x) = x^n) or "exp"; got '
                f"{interaction!r}."
            )
        self.patterns = _check_patterns(patterns)
        self.interaction = interaction

    def energy(self, sigma: Float[Array, " num_units"]) -> Float[Array, ""]:
        """`-(N / n) sum_mu m_mu^n`, or `-log sum_mu exp(xi^mu . sigma)` for `"exp"`."""
        n = self.patterns.shape[1]
        a = self.patterns @ sigma
        if self.interaction == "exp":
            return -jax.nn.logsumexp(a)
        p = self.interaction
        return -n / p * jnp.sum((a / n) ** p)

    def cavity_field(
        self,
        cavity: Float[Array, " num_patterns"],
        column: Float[Array, " num_patterns"],
    ) -> Float[Array, ""]:
        if self.interaction == "exp":
            plus = jax.nn.logsumexp(cavity + column)
            minus = jax.nn.logsumexp(cavity - column)
            return (plus - minus) / 2
        # ((x + c)^p - (x - c)^p) / 2 = sum over odd k of C(p, k) x^(p-k) c^k, expanded
        # so that no large powers cancel; scaled by 1 / (p N^(p-1)).
        n = self.patterns.shape[1]
        p = self.interaction
        u = cavity / n
        terms = sum(
            math.comb(p, k) * u ** (p - k) * column**k * float(n) ** (1 - k)
            for k in range(1, p + 1, 2)
        )
        return jnp.sum(terms) / p

    def capacity_estimate(self) -> float:
        """The Krotov-Hopfield estimate `N^(n-1) / (2 (2n-3)!! ln N)` of the number of
        `+-1` patterns that are stable states (polynomial interactions only).

        **Raises:** `ValueError` for `interaction="exp"`.
        """
        return krotov_hopfield_capacity(self.patterns.shape[1], self.interaction)


def krotov_hopfield_capacity(num_units: int, interaction: int | str) -> float:
    """`N^(n-1) / (2 (2n-3)!! ln N)`: the number of random `+-1` patterns a dense
    associative memory with `F(x) = x^n` keeps stable, from the signal-to-noise argument
    of "Dense Associative Memory for Pattern Recognition" (Krotov and Hopfield, 2016).
    `n = 2` gives the classical `N / (2 ln N)`.

    **Raises:** `ValueError` if `num_units < 2` or `interaction` is not an integer
    `n >= 2`.
    """
    check_positive_int(num_units, "num_units")
    if num_units < 2:
        raise ValueError(f"`num_units` must be at least 2; got {num_units}.")
    if not isinstance(interaction, int) or isinstance(interaction, bool) or interaction < 2:  # fmt: skip
        raise ValueError(
            f"`interaction` must be an integer n >= 2; got {interaction!r}."
        )
    n = interaction
    return num_units ** (n - 1) / (
        2 * _double_factorial(2 * n - 3) * math.log(num_units)
    )


# --- capacity ----------------------------------------------------------------------


class RetrievalCurve(eqx.Module):
    """Retrieval as a function of the number of stored patterns.

    **Fields:**

    - `num_patterns`: the numbers of stored patterns `K`, shape `(loads,)`.
    - `load`: `K / N`.
    - `retrieved`: the fraction of probed patterns whose final overlap after
        zero-temperature dynamics (from the pattern, corrupted as asked) exceeds the
        threshold.
    - `stable`: the fraction of probed patterns that are fixed points of the dynamics
        (no spin disagrees with its field when the state is the pattern).
    - `overlap`: the mean final overlap with the probed pattern.
    - `stderr`: the standard error of `retrieved` over the independent pattern draws.
    - `num_units`: `N`.
    """

    num_patterns: Int[Array, " loads"]
    load: Float[Array, " loads"]
    retrieved: Float[Array, " loads"]
    stable: Float[Array, " loads"]
    overlap: Float[Array, " loads"]
    stderr: Float[Array, " loads"]
    num_units: int = eqx.field(static=True)


def _make_network(patterns: Array, interaction: int | str) -> AbstractSpinNetwork:
    if interaction == 2:
        return HopfieldNetwork(patterns)
    return DenseAssociativeMemory(patterns, interaction)


@eqx.filter_jit
def _curve(
    key: PRNGKeyArray,
    units: Array,
    counts: Array,
    max_units: int,
    interaction: int | str,
    trials: int,
    probes: int,
    pad: int,
    corruption: float,
    threshold: float,
    sweeps: int,
) -> tuple[Array, Array, Array]:
    """Per (size, count) entry and trial: the retrieved and stable fractions and the
    mean overlap, shape `(entries, trials)` each."""

    def one(xi, flips, keys, n, count):
        # Rows beyond `count` and columns beyond `n` are zero. A zero pattern adds
        # nothing to any field of a polynomial energy, and a spin with zero entries
        # has a zero field (it keeps its value) and moves no overlap: every load and
        # size share one shape, and zero-temperature dynamics are those of the
        # unpadded network (fields differ by the positive factor n / max_units).
        active = (jnp.arange(pad) < count)[:, None] & (jnp.arange(max_units) < n)[
            None, :
        ]
        xi = xi * active
        net = _make_network(xi, interaction)
        probed = xi[:probes]
        starts = jnp.where(flips, -probed, probed)
        starts = jnp.where(probed == 0, 1.0, starts)
        zero = jnp.zeros((), xi.dtype)

        def probe(target, start, k):
            s, *_ = _dynamics(net, start, k, zero, sweeps, "async")
            m = jnp.dot(target, s) / n
            stable = jnp.all(target * net.local_field(target) >= 0)
            return m, stable

        m, stable = jax.vmap(probe)(probed, starts, keys)
        valid = jnp.arange(probes) < count
        weight = valid / jnp.sum(valid)
        return (
            jnp.sum(weight * (m > threshold)),
            jnp.sum(weight * stable),
            jnp.sum(weight * m),
        )

    # Entries and trials share one vmapped axis (nested vmaps of loops compile
    # slowly); all random numbers are drawn in bulk (each draw inside the vmapped body
    # is one more inlined threefry to compile).
    entries = counts.shape[0]
    batch = entries * trials
    pkey, ckey, dkey = jr.split(key, 3)
    xi = random_patterns(pkey, batch * pad, max_units).reshape(batch, pad, max_units)
    flips = jr.bernoulli(ckey, corruption, (batch, probes, max_units))
    keys = jr.split(dkey, (batch, probes))
    out = jax.vmap(one)(
        xi, flips, keys, jnp.repeat(units, trials), jnp.repeat(counts, trials)
    )
    return tuple(x.reshape(entries, trials) for x in out)


def _summarise(retrieved, stable, overlap, counts, n, trials) -> RetrievalCurve:
    counts_arr = jnp.asarray(counts)
    return RetrievalCurve(
        num_patterns=counts_arr,
        load=counts_arr / n,
        retrieved=retrieved.mean(1),
        stable=stable.mean(1),
        overlap=overlap.mean(1),
        stderr=jnp.std(retrieved, axis=1) / math.sqrt(max(trials - 1, 1)),
        num_units=n,
    )


def _check_curve_args(interaction, corruption, trials, probes, sweeps) -> None:
    check_positive_int(trials, "trials")
    check_positive_int(probes, "probes")
    check_positive_int(sweeps, "sweeps")
    if not isinstance(interaction, int) or isinstance(interaction, bool) or interaction < 2:  # fmt: skip
        raise ValueError(
            f"`interaction` must be an integer n >= 2; got {interaction!r}."
        )
    if not 0 <= corruption < 1:
        raise ValueError(f"`corruption` must be in [0, 1); got {corruption!r}.")


def retrieval_curve(
    key: PRNGKeyArray,
    num_units: int,
    num_patterns: Sequence[int],
    *,
    interaction: int = 2,
    trials: int = 8,
    probes: int = 8,
    corruption: float = 0.0,
    threshold: float = 0.95,
    sweeps: int = 20,
) -> RetrievalCurve:
    """The fraction of stored random patterns that are retrieved, at several loads.

    For each number of patterns `K`, `trials` independent sets of `K` random `+-1`
    patterns are stored; the first `probes` of each set (patterns are exchangeable) are
    each taken as the initial state, with every spin flipped with probability
    `corruption`, and run by zero-temperature asynchronous dynamics. A pattern is
    *retrieved* if the final overlap with it exceeds `threshold`, *stable* if it is a
    fixed point. One compilation serves every load: the pattern sets are padded to
    the largest `K` with zero rows, which change nothing.

    **Arguments:**

    - `key`: a PRNG key.
    - `num_units`: `N`.
    - `num_patterns`: the numbers of stored patterns `K` to try.
    - `interaction`: `2` (the classical network) or a larger integer `n`
        (`DenseAssociativeMemory` with `F(x) = x^n`).
    - `trials`: independent pattern sets per load (vmapped).
    - `probes`: patterns probed per set (at most the smallest `K`... a set with fewer
        patterns than `probes` probes all of them).
    - `corruption`: the probability of flipping each spin of the initial state.
    - `threshold`: the overlap above which a pattern counts as retrieved.
    - `sweeps`: the most sweeps of each run.

    **Returns:** a `RetrievalCurve`.

    **Raises:** `ValueError` for non-positive sizes, an empty `num_patterns`, a
    `corruption` outside `[0, 1)` or a non-integer `interaction` below 2.
    """
    check_positive_int(num_units, "num_units")
    _check_curve_args(interaction, corruption, trials, probes, sweeps)
    counts = [int(k) for k in num_patterns]
    if not counts:
        raise ValueError("`num_patterns` must hold at least one number of patterns.")
    for k in counts:
        check_positive_int(k, "num_patterns")
    pad = max(counts)
    out = _curve(
        key,
        jnp.full(len(counts), num_units),
        jnp.asarray(counts),
        num_units,
        interaction,
        trials,
        min(probes, pad),
        pad,
        float(corruption),
        float(threshold),
        sweeps,
    )
    return _summarise(*out, counts, num_units, trials)


class FiniteSizeCapacity(eqx.Module):
    """Critical loads at several sizes and their extrapolation to `N -> infinity`.

    **Fields:**

    - `num_units`: the sizes `N`, shape `(sizes,)`.
    - `critical_load`: `alpha_c(N)` from `critical_load` at each size.
    - `alpha_infinity`, `slope`: the least-squares fit
        `alpha_c(N) = alpha_infinity + slope / sqrt(N)`.
    - `curves`: the `RetrievalCurve` of each size.
    """

    num_units: Int[Array, " sizes"]
    critical_load: Float[Array, " sizes"]
    alpha_infinity: Float[Array, ""]
    slope: Float[Array, ""]
    curves: tuple[RetrievalCurve, ...]


def finite_size_capacity(
    key: PRNGKeyArray,
    num_units: Sequence[int],
    loads: Sequence[float],
    *,
    trials: int = 8,
    probes: int = 8,
    corruption: float = 0.0,
    threshold: float = 0.95,
    sweeps: int = 20,
    level: float = 0.5,
) -> FiniteSizeCapacity:
    """The critical load of the classical Hopfield network at several sizes, and its
    extrapolation `alpha_c(N) = alpha_infinity + c / sqrt(N)`.

    At finite `N` retrieval from a stored pattern outlives the thermodynamic
    `alpha_c = 0.138` (Amit, Gutfreund and Sompolinsky, 1985) by `O(N^(-1/2))`; a fit
    over several sizes removes most of that shift. One compilation covers every size
    and load: networks are padded to the largest `N` with spins whose pattern entries
    are all zero (their fields vanish, they never flip and move no overlap).

    **Arguments:**

    - `key`: a PRNG key.
    - `num_units`: the sizes `N` (at least two).
    - `loads`: the loads `alpha = K / N` tried at every size (`K` rounded).
    - `trials`, `probes`, `corruption`, `threshold`, `sweeps`: as `retrieval_curve`.
    - `level`: the retrieved fraction that defines `alpha_c(N)` (`critical_load`).

    **Returns:** a `FiniteSizeCapacity`.

    **Raises:** `ValueError` for fewer than two sizes, non-positive sizes or loads.
    """
    import numpy as np

    _check_curve_args(2, corruption, trials, probes, sweeps)
    sizes = [int(n) for n in num_units]
    if len(sizes) < 2:
        raise ValueError("`num_units` must hold at least two sizes to extrapolate.")
    for n in sizes:
        check_positive_int(n, "num_units")
    if not loads or min(loads) <= 0:
        raise ValueError(f"`loads` must be positive and not empty; got {loads!r}.")
    grid = [[max(1, round(a * n)) for a in loads] for n in sizes]
    units = [n for n, row in zip(sizes, grid) for _ in row]
    counts = [k for row in grid for k in row]
    pad = max(counts)
    out = _curve(
        key,
        jnp.asarray(units),
        jnp.asarray(counts),
        max(sizes),
        2,
        trials,
        min(probes, min(counts)),
        pad,
        float(corruption),
        float(threshold),
        sweeps,
    )
    curves, alphas = [], []
    for i, (n, row) in enumerate(zip(sizes, grid)):
        sl = slice(i * len(loads), (i + 1) * len(loads))
        curve = _summarise(*(x[sl] for x in out), row, n, trials)
        curves.append(curve)
        alphas.append(critical_load(curve, level=level))
    x = 1 / np.sqrt(np.asarray(sizes, float))
    slope, intercept = np.polyfit(x, np.asarray(alphas), 1)
    return FiniteSizeCapacity(
        num_units=jnp.asarray(sizes),
        critical_load=jnp.asarray(alphas),
        alpha_infinity=jnp.asarray(intercept),
        slope=jnp.asarray(slope),
        curves=tuple(curves),
    )


def _crossing(x: Array, y: Array, level: float) -> float:
    """The first `x` where `y` falls through `level`, interpolated linearly; the last
    `x` if it never does, the first if it starts below."""
    import numpy as np

    x, y = np.asarray(x, float), np.asarray(y, float)
    below = np.nonzero(y < level)[0]
    if below.size == 0:
        return float(x[-1])
    j = int(below[0])
    if j == 0:
        return float(x[0])
    x0, x1, y0, y1 = x[j - 1], x[j], y[j - 1], y[j]
    return float(x0 + (y0 - level) * (x1 - x0) / (y0 - y1))


def critical_load(curve: RetrievalCurve, *, level: float = 0.5) -> float:
    """The load `alpha = K / N` at which the retrieved fraction of `curve` first falls
    below `level`, interpolated linearly between the loads tried.

    For the classical network this estimates `alpha_c`, `0.138` as `N -> infinity`
    (Amit, Gutfreund and Sompolinsky, 1985); at finite `N` the drop is smeared over a
    window of width `O(N^(-1/2))` and retrieval from the pattern persists slightly
    beyond `0.138` (simulations: Kohring, 1990, `alpha_c(N) ~ 0.14-0.15` at `N` of a
    few hundred).

    **Returns:** the estimated critical load, a Python float.
    """
    return _crossing(curve.load, curve.retrieved, level)


def max_patterns(curve: RetrievalCurve, *, level: float = 0.5, stable: bool = False) -> float:  # fmt: skip
    """The number of patterns at which the retrieved (or, with `stable=True`, the
    stable) fraction first falls below `level`, interpolated between the loads tried.
    """
    y = curve.stable if stable else curve.retrieved
    return _crossing(curve.num_patterns, y, level)
