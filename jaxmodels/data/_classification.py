import math

import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Real

from ._split import _check_at_least, _check_scale


def _balanced_labels(n: int, classes: int) -> Int[Array, " {n}"]:
    # Labels cycle 0, 1, ..., classes - 1, so the class counts of the whole set (and of
    # every prefix of it) differ by at most one.
    return jnp.arange(n, dtype=jnp.int32) % classes


def blobs(
    key: PRNGKeyArray,
    n: int,
    *,
    classes: int = 3,
    dim: int = 2,
    std: Real[ArrayLike, ""] = 1.0,
    spread: Real[ArrayLike, ""] = 5.0,
) -> tuple[Float[Array, "{n} {dim}"], Int[Array, " {n}"]]:
    """Isotropic Gaussian blobs, one per class.

    The class centres are drawn uniformly from the cube `[-spread, spread]^dim`, and
    each sample is its class centre plus independent Gaussian noise of standard
    deviation `std` in every coordinate (the data set of scikit-learn's
    `make_blobs`). The ratio `spread / std` sets how separable the classes are.

    **Arguments:**

    - `key`: a PRNG key (`jax.random.key`); the centres and the noise are drawn from it.
    - `n`: the number of samples, at least 1.
    - `classes`: the number of classes (blobs), at least 2.
    - `dim`: the dimension of the inputs, at least 1.
    - `std`: the standard deviation of every blob, non-negative.
    - `spread`: the half-width of the cube the centres are drawn from, non-negative.

    **Returns:**

    A tuple `(x, y)`: the float32 inputs `x` of shape `(n, dim)` and the int32 labels
    `y` of shape `(n,)` in `{0, ..., classes - 1}`. The labels cycle
    `0, 1, ..., classes - 1` along the sample axis, so every class has `n // classes`
    or `n // classes + 1` samples; shuffle (e.g. with `train_test_split`) if the order
    matters.

    **Raises:**

    `ValueError` naming the argument if `n < 1`, `classes < 2`, `dim < 1`, or `std` or
    `spread` is negative.
    """
    _check_at_least(n, "n", 1)
    _check_at_least(classes, "classes", 2)
    _check_at_least(dim, "dim", 1)
    std = _check_scale(std, "std")
    spread = _check_scale(spread, "spread")
    ckey, nkey = jr.split(key)
    centres = jr.uniform(ckey, (classes, dim), minval=-1.0, maxval=1.0) * spread
    y = _balanced_labels(n, classes)
    x = centres[y] + std * jr.normal(nkey, (n, dim))
    return x.astype(jnp.float32), y


def two_spirals(
    key: PRNGKeyArray,
    n: int,
    *,
    noise: Real[ArrayLike, ""] = 0.1,
    turns: Real[ArrayLike, ""] = 1.5,
) -> tuple[Float[Array, "{n} 2"], Int[Array, " {n}"]]:
    """Two interleaved spirals in the plane, one per class.

    The classic benchmark of Lang and Witbrock, "Learning to tell two spirals apart"
    (1988). Spiral 0 is the Archimedean spiral `r = theta / (2 pi)` at angle `theta`
    in `[0, 2 pi turns]`, i.e. the point `r (cos theta, sin theta)`, whose radius grows
    by one per turn; spiral 1 is spiral 0 rotated by `pi`. Adjacent arms of the
    two spirals are therefore `1/2` apart everywhere. The angles are drawn as
    `2 pi turns sqrt(u)` with `u` uniform on `[0, 1]`, which spreads the points roughly
    evenly along the arc length instead of crowding them at the centre. Independent
    Gaussian noise of standard deviation `noise` is then added to both coordinates.

    **Arguments:**

    - `key`: a PRNG key (`jax.random.key`).
    - `n`: the number of samples, at least 1.
    - `noise`: the standard deviation of the additive noise, non-negative.
    - `turns`: the number of turns of each spiral, positive.

    **Returns:**

    A tuple `(x, y)`: the float32 points `x` of shape `(n, 2)` and the int32 labels `y`
    of shape `(n,)`, with `y[i]` the spiral of point `i`. The labels alternate
    `0, 1, 0, ...`, so the two classes have sizes differing by at most one.

    **Raises:**

    `ValueError` naming the argument if `n < 1`, `noise < 0` or `turns <= 0`.
    """
    _check_at_least(n, "n", 1)
    noise = _check_scale(noise, "noise")
    turns = _check_scale(turns, "turns", positive=True)
    tkey, nkey = jr.split(key)
    y = _balanced_labels(n, 2)
    theta = 2 * math.pi * turns * jnp.sqrt(jr.uniform(tkey, (n,)))
    radius = (1 - 2 * y) * theta / (2 * math.pi)
    x = radius[:, None] * jnp.stack([jnp.cos(theta), jnp.sin(theta)], axis=-1)
    x = x + noise * jr.normal(nkey, (n, 2))
    return x.astype(jnp.float32), y


def two_moons(
    key: PRNGKeyArray, n: int, *, noise: Real[ArrayLike, ""] = 0.1
) -> tuple[Float[Array, "{n} 2"], Int[Array, " {n}"]]:
    """Two interleaving half circles in the plane, one per class.

    The data set of scikit-learn's `make_moons`. Moon 0 is the upper half of the unit
    circle centred at `(0, 0)`, the points `(cos theta, sin theta)`; moon 1 is the lower
    half of the unit circle centred at `(1, 1/2)`, the points
    `(1 - cos theta, 1/2 - sin theta)`; in both `theta` is uniform on `[0, pi]`.
    Independent Gaussian noise of standard deviation `noise` is then added to both
    coordinates.

    **Arguments:**

    - `key`: a PRNG key (`jax.random.key`).
    - `n`: the number of samples, at least 1.
    - `noise`: the standard deviation of the additive noise, non-negative.

    **Returns:**

    A tuple `(x, y)`: the float32 points `x` of shape `(n, 2)` and the int32 labels `y`
    of shape `(n,)`, with `y[i]` the moon of point `i`. The labels alternate
    `0, 1, 0, ...`, so the two classes have sizes differing by at most one.

    **Raises:**

    `ValueError` naming the argument if `n < 1` or `noise < 0`.
    """
    _check_at_least(n, "n", 1)
    noise = _check_scale(noise, "noise")
    tkey, nkey = jr.split(key)
    y = _balanced_labels(n, 2)
    theta = jr.uniform(tkey, (n,), maxval=math.pi)
    upper = jnp.stack([jnp.cos(theta), jnp.sin(theta)], axis=-1)
    lower = jnp.stack([1 - jnp.cos(theta), 0.5 - jnp.sin(theta)], axis=-1)
    x = jnp.where((y == 0)[:, None], upper, lower)
    x = x + noise * jr.normal(nkey, (n, 2))
    return x.astype(jnp.float32), y
