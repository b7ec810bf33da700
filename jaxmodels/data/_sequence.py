import math

import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Real

from ._classification import _balanced_labels
from ._split import _check_at_least, _check_scale


def sine_sequences(
    key: PRNGKeyArray,
    n: int,
    *,
    length: int = 64,
    noise: Real[ArrayLike, ""] = 0.1,
    freq_range: tuple[float, float] = (0.02, 0.1),
    target: str = "next",
) -> tuple[
    Float[Array, "{n} {length} 1"],
    Float[Array, "{n} {length} 1"] | Float[Array, "{n} 1"],
]:
    """Noisy sine waves of random frequency and phase.

    Sequence `i` samples `s_t = sin(2 pi f_i t + phi_i)` at the integer times
    `t = 0, 1, ..., length`, with the frequency `f_i` uniform on `freq_range` (in cycles
    per step) and the phase `phi_i` uniform on `[0, 2 pi)`, and adds independent
    Gaussian noise of standard deviation `noise` to every value. The inputs are the
    first `length` noisy values. The target is either

    - `"next"`: next-step prediction, the noisy sequence shifted by one step, so that
        `y[:, t] == x[:, t + 1]` for `t < length - 1` and `y[:, -1]` is the noisy value
        at time `length`; or
    - `"frequency"`: the frequency `f_i` of each sequence (a sequence-to-one
        regression).

    **Arguments:**

    - `key`: a PRNG key (`jax.random.key`).
    - `n`: the number of sequences, at least 1.
    - `length`: the number of time steps of each input sequence, at least 1.
    - `noise`: the standard deviation of the additive noise, non-negative.
    - `freq_range`: the interval `(low, high)` of frequencies in cycles per step, with
        `0 < low <= high <= 1/2` (the Nyquist frequency).
    - `target`: `"next"` or `"frequency"`.

    **Returns:**

    A tuple `(x, y)` of float32 arrays: the inputs `x` of shape `(n, length, 1)` (time
    along axis 1, one feature), and the targets `y` of shape `(n, length, 1)` for
    `"next"` or `(n, 1)` for `"frequency"`.

    **Raises:**

    `ValueError` naming the argument if `n < 1`, `length < 1`, `noise < 0`,
    `freq_range` is not within `(0, 1/2]` with `low <= high`, or `target` is unknown.
    """
    _check_at_least(n, "n", 1)
    _check_at_least(length, "length", 1)
    noise = _check_scale(noise, "noise")
    low, high = freq_range
    if not 0 < low <= high <= 0.5:
        raise ValueError(
            f"`freq_range` must be (low, high) with 0 < low <= high <= 0.5 cycles per "
            f"step; got {freq_range}."
        )
    if target not in ("next", "frequency"):
        raise ValueError(f"`target` must be 'next' or 'frequency'; got {target!r}.")
    fkey, pkey, nkey = jr.split(key, 3)
    freq = jr.uniform(fkey, (n, 1), minval=low, maxval=high)
    phase = jr.uniform(pkey, (n, 1), maxval=2 * math.pi)
    t = jnp.arange(length + 1)[None, :]
    s = jnp.sin(2 * math.pi * freq * t + phase)
    s = (s + noise * jr.normal(nkey, (n, length + 1)))[..., None].astype(jnp.float32)
    x = s[:, :-1]
    if target == "next":
        return x, s[:, 1:]
    return x, freq.astype(jnp.float32)


def copy_task(
    key: PRNGKeyArray,
    n: int,
    *,
    length: int = 10,
    vocab: int = 8,
    delay: int = 10,
) -> tuple[
    Int[Array, "{n} {2*length+delay+1}"],
    Int[Array, "{n} {2*length+delay+1}"],
]:
    """The copy (memory) task for recurrent networks.

    From Hochreiter and Schmidhuber, "Long short-term memory" (1997), in the form of
    Arjovsky, Shah and Bengio, "Unitary evolution recurrent neural networks" (2016).
    The tokens are integers: `0` is the blank, `1` the delimiter, and `2, ...,
    vocab + 1` the `vocab` data symbols. Each input sequence is `length` random data
    symbols, `delay` blanks, the delimiter, then `length` blanks; the target is blank
    everywhere except for the last `length` steps (those following the delimiter), where
    it repeats the data symbols in order. The symbols must therefore be remembered for
    `length + delay + 1` steps. The memoryless baseline (blanks, then a uniform guess
    over the data symbols for the last `length` steps) has a mean cross-entropy of
    `length log(vocab) / (2 length + delay + 1)` per step.

    **Arguments:**

    - `key`: a PRNG key (`jax.random.key`).
    - `n`: the number of sequences, at least 1.
    - `length`: the number of symbols to copy, at least 1.
    - `vocab`: the number of distinct data symbols, at least 1.
    - `delay`: the number of blanks between the symbols and the delimiter, at least 0.

    **Returns:**

    A tuple `(x, y)` of int32 token arrays, both of shape `(n, 2 length + delay + 1)`
    with time along axis 1, and tokens in `{0, ..., vocab + 1}`. One-hot encode them
    with `jax.nn.one_hot(x, vocab + 2)`.

    **Raises:**

    `ValueError` naming the argument if `n < 1`, `length < 1`, `vocab < 1` or
    `delay < 0`.
    """
    _check_at_least(n, "n", 1)
    _check_at_least(length, "length", 1)
    _check_at_least(vocab, "vocab", 1)
    _check_at_least(delay, "delay", 0)
    symbols = jr.randint(key, (n, length), 2, vocab + 2, dtype=jnp.int32)
    gap = jnp.zeros((n, delay), jnp.int32)
    go = jnp.ones((n, 1), jnp.int32)
    blanks = jnp.zeros((n, length), jnp.int32)
    x = jnp.concatenate([symbols, gap, go, blanks], axis=1)
    y = jnp.concatenate([blanks, gap, jnp.zeros_like(go), symbols], axis=1)
    return x, y


def parity(
    key: PRNGKeyArray, n: int, *, length: int = 8
) -> tuple[Float[Array, "{n} {length} 1"], Int[Array, " {n}"]]:
    """Bit sequences labelled by their parity.

    The label of a sequence of bits is their sum modulo two (their exclusive or), which
    depends on every bit at once: the classic hard case for perceptrons (Minsky and
    Papert, "Perceptrons", 1969) and a standard long-range test for recurrent networks.
    Each sequence is uniform among the `2**(length - 1)` bit sequences with its label.

    **Arguments:**

    - `key`: a PRNG key (`jax.random.key`).
    - `n`: the number of sequences, at least 1.
    - `length`: the number of bits in each sequence, at least 1.

    **Returns:**

    A tuple `(x, y)`: the bits `x` as float32 zeros and ones of shape `(n, length, 1)`
    (time along axis 1, one feature; reshape to `(n, length)` for a non-recurrent
    model), and the int32 parity labels `y` of shape `(n,)`. The labels alternate
    `0, 1, 0, ...`, so the two classes have sizes differing by at most one.

    **Raises:**

    `ValueError` naming the argument if `n < 1` or `length < 1`.
    """
    _check_at_least(n, "n", 1)
    _check_at_least(length, "length", 1)
    y = _balanced_labels(n, 2)
    # Drawing all bits but the last and choosing the last to give the label samples
    # uniformly among the sequences of that parity, and balances the classes exactly.
    head = jr.bernoulli(key, 0.5, (n, length - 1)).astype(jnp.int32)
    last = (jnp.sum(head, axis=1) + y) % 2
    bits = jnp.concatenate([head, last[:, None]], axis=1)
    return bits[..., None].astype(jnp.float32), y
