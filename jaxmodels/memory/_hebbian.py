"""Dense Hebbian networks that learn from examples, and the multitasking network.

"Dense Hebbian neural networks: a replica symmetric picture of supervised learning"
(Agliari et al., 2023) and its unsupervised companion (Agliari et al., 2023) store, in
a `P`-body dense associative memory, not archetypes `xi^mu` but `M` noisy examples of
each (every entry flipped with probability `(1 - r) / 2`, `r` the example quality):
supervised storage uses the teacher's grouping and stores the per-class averages
`eta^mu = (1/M) sum_a xi^(mu,a)`; unsupervised storage stores every example. Retrieval
is measured against the archetypes, which the network never saw. "Parallel Learning by
Multitasking Neural Networks" (Agliari et al., 2023) stores diluted patterns (entries
zero with probability `d`) pairwise: the network then retrieves several patterns at
once, hierarchically for mild dilution and in parallel for strong dilution.
"""

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from .._core import check_positive_int
from ._spin import DenseAssociativeMemory, HopfieldNetwork, _dynamics, random_patterns


def _check_fraction(value: float, name: str, *, closed: bool) -> float:
    value = float(value)
    ok = 0 <= value <= 1 if closed else 0 <= value < 1
    if not ok:
        bounds = "[0, 1]" if closed else "[0, 1)"
        raise ValueError(f"`{name}` must be in {bounds}; got {value!r}.")
    return value


def noisy_examples(
    key: PRNGKeyArray,
    archetypes: Float[ArrayLike, "num_patterns num_units"],
    num_examples: int,
    quality: Float[ArrayLike, ""],
) -> Float[Array, "num_patterns {num_examples} num_units"]:
    """Noisy examples of `+-1` archetypes: each entry of each example is flipped with
    probability `(1 - r) / 2`, so that `E[example] = r xi` (P042, P084).

    **Arguments:**

    - `key`: a PRNG key.
    - `archetypes`: shape `(num_patterns, num_units)`.
    - `num_examples`: `M`, examples per archetype.
    - `quality`: `r` in `[0, 1]` (an array leaf: it can be vmapped over).

    **Returns:** shape `(num_patterns, num_examples, num_units)`.

    **Raises:** `ValueError` if `archetypes` is not two-dimensional, `num_examples` is
    not a positive integer or a Python `quality` lies outside `[0, 1]`.
    """
    archetypes = jnp.asarray(archetypes)
    if archetypes.ndim != 2:
        raise ValueError(
            "`archetypes` must have shape (num_patterns, num_units); got shape "
            f"{archetypes.shape}."
        )
    check_positive_int(num_examples, "num_examples")
    if isinstance(quality, int | float):
        _check_fraction(quality, "quality", closed=True)
    k, n = archetypes.shape
    keep = jr.uniform(key, (k, num_examples, n)) < (1 + jnp.asarray(quality)) / 2
    return jnp.where(keep, archetypes[:, None, :], -archetypes[:, None, :])


def diluted_patterns(
    key: PRNGKeyArray, num_patterns: int, num_units: int, dilution: Float[ArrayLike, ""]
) -> Float[Array, "{num_patterns} {num_units}"]:
    """Diluted patterns in `{-1, 0, +1}`: each entry is 0 with probability `d`, else
    `+-1` with equal probability (P041).

    **Raises:** `ValueError` for non-positive sizes or a Python `dilution` outside
    `[0, 1)`.
    """
    check_positive_int(num_patterns, "num_patterns")
    check_positive_int(num_units, "num_units")
    if isinstance(dilution, int | float):
        _check_fraction(dilution, "dilution", closed=False)
    skey, zkey = jr.split(key)
    signs = random_patterns(skey, num_patterns, num_units)
    zero = jr.uniform(zkey, (num_patterns, num_units)) < dilution
    return jnp.where(zero, 0.0, signs)


def _check_examples(examples: ArrayLike) -> Array:
    examples = jnp.asarray(examples)
    if examples.ndim != 3:
        raise ValueError(
            "`examples` must have shape (num_patterns, num_examples, num_units); got "
            f"shape {examples.shape}."
        )
    return examples.astype(jnp.result_type(examples.dtype, jnp.asarray(1.0).dtype))


def supervised_network(
    examples: Float[ArrayLike, "num_patterns num_examples num_units"],
    interaction: int = 4,
) -> DenseAssociativeMemory:
    """The supervised dense Hebbian network of P042: a `DenseAssociativeMemory` storing
    the per-class example averages `eta^mu = (1/M) sum_a xi^(mu,a)`.

    The energy `-(N/P) sum_mu (eta^mu . sigma / N)^P` differs from the paper's by a
    positive factor (its `1 / R^(P/2)` normalisation), which rescales temperature only.

    **Arguments:**

    - `examples`: shape `(num_patterns, num_examples, num_units)`, grouped by class.
    - `interaction`: `P`, an integer at least 2.

    **Raises:** `ValueError` for a wrong shape or `interaction`.
    """
    examples = _check_examples(examples)
    return DenseAssociativeMemory(jnp.mean(examples, axis=1), interaction)


def unsupervised_network(
    examples: Float[ArrayLike, "num_patterns num_examples num_units"],
    interaction: int = 4,
) -> DenseAssociativeMemory:
    """The unsupervised dense Hebbian network of P084: a `DenseAssociativeMemory`
    storing every example as a pattern, the labels ignored (`P`-body couplings summed
    over all examples).

    **Arguments:** as `supervised_network`.

    **Raises:** `ValueError` for a wrong shape or `interaction`.
    """
    examples = _check_examples(examples)
    k, m, n = examples.shape
    return DenseAssociativeMemory(examples.reshape(k * m, n), interaction)


class PhaseDiagram(eqx.Module):
    """Mean retrieval overlap with the archetypes on a grid of example quality `r`
    and examples per archetype `M`.

    **Fields:**

    - `quality`: `r`, shape `(qualities,)`.
    - `num_examples`: `M`, shape `(sizes,)`.
    - `overlap`: the mean final `xi^mu . sigma / N` with the archetype, shape
        `(qualities, sizes)`.
    - `stderr`: its standard error over the independent data sets.
    """

    quality: Float[Array, " qualities"]
    num_examples: Int[Array, " sizes"]
    overlap: Float[Array, "qualities sizes"]
    stderr: Float[Array, "qualities sizes"]


def phase_diagram(
    key: PRNGKeyArray,
    num_units: int,
    num_patterns: int,
    qualities: Sequence[float],
    num_examples: Sequence[int],
    *,
    interaction: int = 4,
    supervised: bool = True,
    start: str = "archetype",
    temperature: float = 0.0,
    trials: int = 4,
    probes: int = 4,
    sweeps: int = 20,
) -> PhaseDiagram:
    """Monte Carlo retrieval of unseen archetypes by a dense Hebbian network trained
    on noisy examples, over a grid of example quality `r` and number `M` (P042, P084).

    For every `(r, M)`, `trials` data sets are drawn (random `+-1` archetypes, `M`
    examples of quality `r` each), stored (`supervised_network` or
    `unsupervised_network`) and probed: asynchronous Glauber dynamics at `temperature`
    from the archetype itself (`start="archetype"`, is it a retrieval state?) or from a
    fresh example of it (`start="example"`, is it recognised?), and the final overlap
    with the archetype is averaged. One compilation covers the grid (examples are
    padded to the largest `M` with zeros, which add nothing to the energy).

    **Arguments:**

    - `key`: a PRNG key.
    - `num_units`, `num_patterns`: `N` and `K` (the load is `K / N`).
    - `qualities`: the `r` to try, each in `[0, 1]`.
    - `num_examples`: the `M` to try.
    - `interaction`: `P`, an integer at least 2.
    - `supervised`: store class averages (else every example).
    - `start`: `"archetype"` or `"example"`.
    - `temperature`: `T >= 0` of the dynamics.
    - `trials`: data sets per grid point; `probes`: archetypes probed per data set.
    - `sweeps`: the most sweeps of each run.

    **Returns:** a `PhaseDiagram`.

    **Raises:** `ValueError` for non-positive sizes, an empty grid, a quality outside
    `[0, 1]`, a negative temperature or an unknown `start`.
    """
    for value, name in (
        (num_units, "num_units"),
        (num_patterns, "num_patterns"),
        (trials, "trials"),
        (probes, "probes"),
        (sweeps, "sweeps"),
    ):
        check_positive_int(value, name)
    if not isinstance(interaction, int) or isinstance(interaction, bool) or interaction < 2:  # fmt: skip
        raise ValueError(
            f"`interaction` must be an integer P >= 2; got {interaction!r}."
        )
    if start not in ("archetype", "example"):
        raise ValueError(f'`start` must be "archetype" or "example"; got {start!r}.')
    qs = [_check_fraction(q, "qualities", closed=True) for q in qualities]
    ms = [int(m) for m in num_examples]
    if not qs or not ms:
        raise ValueError("`qualities` and `num_examples` must not be empty.")
    for m in ms:
        check_positive_int(m, "num_examples")
    if not float(temperature) >= 0:
        raise ValueError(f"`temperature` must be non-negative; got {temperature!r}.")
    overlap = _phase_grid(
        key,
        jnp.asarray(qs),
        jnp.asarray(ms),
        num_units,
        num_patterns,
        interaction,
        supervised,
        start == "example",
        jnp.asarray(float(temperature)),
        trials,
        min(probes, num_patterns),
        sweeps,
        max(ms),
    )
    mean = overlap.mean(-1)
    stderr = overlap.std(-1) / max(trials - 1, 1) ** 0.5
    return PhaseDiagram(
        quality=jnp.asarray(qs),
        num_examples=jnp.asarray(ms),
        overlap=mean,
        stderr=stderr,
    )


@eqx.filter_jit
def _phase_grid(
    key: PRNGKeyArray,
    qualities: Array,
    sizes: Array,
    num_units: int,
    num_patterns: int,
    interaction: int,
    supervised: bool,
    from_example: bool,
    temperature: Array,
    trials: int,
    probes: int,
    sweeps: int,
    max_m: int,
) -> Float[Array, "qualities sizes trials"]:
    def one(k: PRNGKeyArray, r: Array, m: Array) -> Array:
        akey, ekey, skey, dkey = jr.split(k, 4)
        xi = random_patterns(akey, num_patterns, num_units)
        examples = noisy_examples(ekey, xi, max_m, r)
        # Only the first `m` examples count: zero examples add nothing to a polynomial
        # energy, so every `M` shares one shape.
        used = (jnp.arange(max_m) < m).astype(examples.dtype)
        examples = examples * used[None, :, None]
        if supervised:
            net = DenseAssociativeMemory(examples.sum(1) / m, interaction)
        else:
            net = DenseAssociativeMemory(examples.reshape(-1, num_units), interaction)
        targets = xi[:probes]
        starts = noisy_examples(skey, targets, 1, r)[:, 0] if from_example else targets

        def probe(target, start, kk):
            s, *_ = _dynamics(net, start, kk, temperature, sweeps, "async")
            return jnp.dot(target, s) / num_units

        return jnp.mean(jax.vmap(probe)(targets, starts, jr.split(dkey, probes)))

    nq, nm = qualities.shape[0], sizes.shape[0]
    # One flat vmapped axis over (r, M, trial): nested vmaps of loops compile slowly.
    r = jnp.repeat(qualities, nm * trials)
    m = jnp.tile(jnp.repeat(sizes, trials), nq)
    keys = jr.split(key, nq * nm * trials)
    return jax.vmap(one)(keys, r, m).reshape(nq, nm, trials)


# --- P041: multitasking -------------------------------------------------------------


def hierarchical_amplitudes(
    num_patterns: int, dilution: Float[ArrayLike, ""]
) -> Float[Array, " {num_patterns}"]:
    """The zero-temperature, low-load magnetisations of the hierarchical state of the
    multitasking network, `m_k = (1 - d) d^(k-1)`.

    Signal-to-noise: pattern 1 sets every spin where it is non-zero (a fraction
    `1 - d`), pattern 2 the spins left blank by pattern 1 where it is non-zero
    (`d (1 - d)`), and so on; a spin blank in every pattern contributes nothing on
    average. The state is self-consistent while `m_1 > m_2 + ... + m_K`, i.e.
    `1 - d > d - d^K` (`d < 0.618` for `K = 3`, `d < 1/2` as `K -> infinity`); beyond,
    the parallel regime takes over. (Agliari et al., "Multitasking associative
    networks", 2012; P041 for the learning setting.)
    """
    check_positive_int(num_patterns, "num_patterns")
    d = jnp.asarray(dilution)
    return (1 - d) * d ** jnp.arange(num_patterns)


class MultitaskResult(eqx.Module):
    """Mattis magnetisations of the multitasking network at its zero-temperature
    fixed point.

    **Fields:**

    - `dilution`: `d`, shape `(dilutions,)`.
    - `magnetisations`: the mean over trials of `|m_mu|` sorted decreasingly per
        trial, shape `(dilutions, num_patterns)`. Which blank-filling pattern comes
        second is decided by the random start and the state may align with `-xi^mu`,
        so the ranked absolute values are what theory predicts.
    - `stderr`: their standard errors over the trials.
    """

    dilution: Float[Array, " dilutions"]
    magnetisations: Float[Array, "dilutions num_patterns"]
    stderr: Float[Array, "dilutions num_patterns"]


@eqx.filter_jit
def _multitask(
    key: PRNGKeyArray,
    dilutions: Array,
    num_units: int,
    num_patterns: int,
    trials: int,
    sweeps: int,
    from_first: bool,
) -> Array:
    def one(k: PRNGKeyArray, d: Array) -> Array:
        pkey, skey, dkey = jr.split(k, 3)
        xi = diluted_patterns(pkey, num_patterns, num_units, d)
        net = HopfieldNetwork(xi)
        noise = random_patterns(skey, 1, num_units)[0]
        # "first": pattern 1 where it is non-zero, random elsewhere.
        start = jnp.where(xi[0] != 0, xi[0], noise) if from_first else noise
        zero = jnp.zeros((), xi.dtype)
        s, *_ = _dynamics(net, start, dkey, zero, sweeps, "async")
        m = xi @ s / num_units
        return -jnp.sort(-jnp.abs(m))

    nd = dilutions.shape[0]
    keys = jr.split(key, nd * trials)
    m = jax.vmap(one)(keys, jnp.repeat(dilutions, trials))
    return m.reshape(nd, trials, num_patterns)


def multitask_magnetisations(
    key: PRNGKeyArray,
    num_units: int,
    num_patterns: int,
    dilutions: Sequence[float],
    *,
    trials: int = 8,
    sweeps: int = 50,
    start: str = "first",
) -> MultitaskResult:
    """Monte Carlo magnetisations of the multitasking (diluted Hebbian) network of
    "Parallel Learning by Multitasking Neural Networks" (Agliari et al., 2023).

    For each dilution `d`, `trials` sets of `num_patterns` diluted patterns are stored
    with Hebbian couplings and the network is run by zero-temperature asynchronous
    dynamics from pattern 1 completed at random on its blank entries
    (`start="first"`) or from a random state (`"random"`).

    **Arguments:**

    - `key`: a PRNG key.
    - `num_units`, `num_patterns`: `N` and `K`.
    - `dilutions`: the `d` to try, each in `[0, 1)`.
    - `trials`: independent pattern sets per dilution.
    - `sweeps`: the most sweeps per run.
    - `start`: `"first"` or `"random"`.

    **Returns:** a `MultitaskResult`.

    **Raises:** `ValueError` for non-positive sizes, an empty `dilutions`, a dilution
    outside `[0, 1)` or an unknown `start`.
    """
    check_positive_int(num_units, "num_units")
    check_positive_int(num_patterns, "num_patterns")
    check_positive_int(trials, "trials")
    check_positive_int(sweeps, "sweeps")
    if start not in ("first", "random"):
        raise ValueError(f'`start` must be "first" or "random"; got {start!r}.')
    ds = [_check_fraction(d, "dilutions", closed=False) for d in dilutions]
    if not ds:
        raise ValueError("`dilutions` must hold at least one dilution.")
    m = _multitask(
        key, jnp.asarray(ds), num_units, num_patterns, trials, sweeps, start == "first"
    )
    return MultitaskResult(
        dilution=jnp.asarray(ds),
        magnetisations=m.mean(1),
        stderr=m.std(1) / max(trials - 1, 1) ** 0.5,
    )
