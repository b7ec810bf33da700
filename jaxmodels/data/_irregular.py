import math

import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Real

from ._classification import _balanced_labels
from ._split import _check_at_least, _check_scale


def _irregular_times(
    key: PRNGKeyArray, n: int, length: int, t1: float
) -> Float[Array, "{n} {length}"]:
    # Gaps uniform on [0.2, 1] (relative), rescaled so each row runs from 0 to t1
    # exactly: irregular, and strictly increasing even in float32 (sorted uniform
    # draws can repeat a time in float32).
    gaps = jr.uniform(key, (n, length - 1), minval=0.2, maxval=1.0)
    cumulative = jnp.cumsum(gaps, axis=1)
    # The last set exactly: XLA may divide by multiplying with a rounded reciprocal.
    fractions = (cumulative / cumulative[:, -1:]).at[:, -1].set(1.0)
    return jnp.concatenate([jnp.zeros((n, 1)), t1 * fractions], axis=1)


def _check_rate(value: float, name: str) -> float:
    value = float(value)
    if not 0 <= value < 1:
        raise ValueError(f"`{name}` must be in [0, 1); got {value}.")
    return value


def irregular_spirals(
    key: PRNGKeyArray,
    n: int,
    *,
    length: int = 32,
    t1: float = 10.0,
    missing_rate: Real[ArrayLike, ""] = 0.3,
    noise: Real[ArrayLike, ""] = 0.05,
) -> tuple[
    tuple[Float[Array, "{n} {length}"], Float[Array, "{n} {length} 2"]],
    Int[Array, " {n}"],
]:
    """Clockwise or anticlockwise 2-D spirals, irregularly sampled, partly missing.

    The time-series classification task of Kidger et al., "Neural Controlled
    Differential Equations for Irregular Time Series" (2020), made harder in the way of
    Oh et al., "Stable Neural Stochastic Differential Equations in Analyzing Irregular
    Time Series Data" (2024): series `i` is `r_i(t) (cos a_i(t), sin a_i(t))` with
    `a_i(t) = phi_i + s_i w_i t` and `r_i(t) = exp(-d_i t)`, the direction `s_i = +1`
    (label 1, anticlockwise) or `-1` (label 0, clockwise), the angular speed `w_i`
    uniform on `[0.5, 1.5]`, the decay `d_i` uniform on `[0.02, 0.1]` and the phase
    `phi_i` uniform. Each series is observed at its own `length` irregular times from
    0 to `t1` (gaps drawn uniform on `[0.2, 1]` and rescaled), with Gaussian noise of standard deviation `noise`;
    then each observation after the first is dropped (both channels `NaN`, the time
    kept) with probability `missing_rate`.

    **Arguments:**

    - `key`: a PRNG key.
    - `n`: the number of series, at least 1; the labels alternate 0, 1, 0, ...
    - `length`: the number of observation times per series, at least 2.
    - `t1`: the end of the observation window, positive.
    - `missing_rate`: the probability that an observation is dropped, in `[0, 1)`.
    - `noise`: the standard deviation of the observation noise, non-negative.

    **Returns:** `((ts, xs), y)`: float32 times `ts` of shape `(n, length)`, strictly
    increasing in each row from `ts[:, 0] == 0` to `ts[:, -1] == t1`; observations `xs` of shape
    `(n, length, 2)` with `NaN` rows where dropped (never row 0, so every channel has
    a value); int32 labels `y` of shape `(n,)`.

    **Raises:** `ValueError` naming the argument if `n < 1`, `length < 2`, `t1 <= 0`,
    `missing_rate` is not in `[0, 1)` or `noise < 0`.
    """
    _check_at_least(n, "n", 1)
    _check_at_least(length, "length", 2)
    _check_scale(t1, "t1", positive=True)
    missing_rate = _check_rate(missing_rate, "missing_rate")
    noise = _check_scale(noise, "noise")
    tkey, wkey, dkey, pkey, nkey, mkey = jr.split(key, 6)
    y = _balanced_labels(n, 2)
    ts = _irregular_times(tkey, n, length, t1)
    speed = jr.uniform(wkey, (n, 1), minval=0.5, maxval=1.5)
    decay = jr.uniform(dkey, (n, 1), minval=0.02, maxval=0.1)
    phase = jr.uniform(pkey, (n, 1), maxval=2 * math.pi)
    angle = phase + jnp.where(y[:, None] == 1, 1.0, -1.0) * speed * ts
    radius = jnp.exp(-decay * ts)
    xs = radius[..., None] * jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=-1)
    xs = xs + noise * jr.normal(nkey, xs.shape)
    dropped = jr.bernoulli(mkey, missing_rate, (n, length)).at[:, 0].set(False)
    xs = jnp.where(dropped[..., None], jnp.nan, xs)
    return (ts.astype(jnp.float32), xs.astype(jnp.float32)), y


def damped_sines(
    key: PRNGKeyArray,
    n: int,
    *,
    length: int = 40,
    t1: float = 10.0,
    noise: Real[ArrayLike, ""] = 0.0,
) -> tuple[Float[Array, "{n} {length}"], Float[Array, "{n} {length} 1"]]:
    """Damped sine waves at irregular times, for latent ODEs.

    The synthetic task of Rubanova et al., "Latent ODEs for Irregularly-Sampled Time
    Series" (2019), in its damped form: series `i` is `x_i(t) = a_i exp(-d_i t)
    sin(w_i t + phi_i)` with amplitude `a_i` uniform on `[0.5, 1.5]`, decay `d_i` uniform
    on `[0.05, 0.2]`, angular frequency `w_i` uniform on `[0.5, 1.5]` and phase `phi_i`
    uniform, observed at its own `length` irregular times from 0 to `t1` (gaps drawn
    uniform on `[0.2, 1]` and rescaled) with Gaussian noise of standard deviation `noise`. Every such series solves
    the linear ODE `x'' + 2 d x' + (w^2 + d^2) x = 0`, so a two-dimensional latent state
    suffices in principle.

    **Arguments:**

    - `key`: a PRNG key.
    - `n`: the number of series, at least 1.
    - `length`: the number of observation times per series, at least 2.
    - `t1`: the end of the observation window, positive.
    - `noise`: the standard deviation of the observation noise, non-negative.

    **Returns:** `(ts, xs)`: float32 times of shape `(n, length)`, strictly increasing
    in each row from `ts[:, 0] == 0` to `ts[:, -1] == t1`, and values of shape `(n, length, 1)`.

    **Raises:** `ValueError` naming the argument if `n < 1`, `length < 2`, `t1 <= 0` or
    `noise < 0`.
    """
    _check_at_least(n, "n", 1)
    _check_at_least(length, "length", 2)
    _check_scale(t1, "t1", positive=True)
    noise = _check_scale(noise, "noise")
    tkey, akey, dkey, wkey, pkey, nkey = jr.split(key, 6)
    ts = _irregular_times(tkey, n, length, t1)
    amplitude = jr.uniform(akey, (n, 1), minval=0.5, maxval=1.5)
    decay = jr.uniform(dkey, (n, 1), minval=0.05, maxval=0.2)
    freq = jr.uniform(wkey, (n, 1), minval=0.5, maxval=1.5)
    phase = jr.uniform(pkey, (n, 1), maxval=2 * math.pi)
    xs = amplitude * jnp.exp(-decay * ts) * jnp.sin(freq * ts + phase)
    xs = xs + noise * jr.normal(nkey, xs.shape)
    return ts.astype(jnp.float32), xs[..., None].astype(jnp.float32)
