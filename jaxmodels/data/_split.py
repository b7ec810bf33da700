import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree, Real

from .._core import leading_size


def _check_at_least(value: int, name: str, minimum: int) -> None:
    if value < minimum:
        raise ValueError(f"`{name}` must be at least {minimum}; got {value}.")


def _check_scale(
    value: Real[ArrayLike, ""], name: str, *, positive: bool = False
) -> Real[ArrayLike, ""]:
    """Raise at call time for a concrete negative (or NaN, or with `positive=True` zero)
    scale; a traced one is checked at run time instead, with `eqx.error_if`."""
    what = "positive" if positive else "non-negative"
    if isinstance(value, jax.core.Tracer):
        bad = ~(value > 0) if positive else ~(value >= 0)
        return eqx.error_if(value, bad, f"`{name}` must be {what}.")
    if not (value > 0 if positive else value >= 0):
        raise ValueError(f"`{name}` must be {what}; got {value}.")
    return value


def train_test_split(
    key: PRNGKeyArray, data: PyTree, *, test_fraction: float = 0.2
) -> tuple[PyTree, PyTree]:
    """Randomly split a data set into a training and a test set.

    `data` is any pytree whose array leaves share a leading sample axis, e.g. the
    `(x, y)` tuple returned by the generators of `jaxmodels.data`. One random
    permutation of the samples is drawn from `key` and applied to every leaf, so that
    the rows of different leaves stay paired. Every sample lands in exactly one of the
    two sets.

    **Arguments:**

    - `key`: a PRNG key (`jax.random.key`) choosing the permutation.
    - `data`: a pytree of arrays with a common leading size `n >= 2`. Leaves that are
        not arrays (`None`, strings) are passed through to both outputs unchanged.
    - `test_fraction`: the fraction of samples held out, strictly between 0 and 1. The
        test set has `test_fraction * n` samples rounded to the nearest integer (halves
        up), clamped so that both sets hold at least one.

    **Returns:**

    A tuple `(train, test)` of pytrees with the structure of `data`, whose leaves have
    leading sizes `n - n_test` and `n_test`. Both are in a random order.

    **Raises:**

    `ValueError` naming `data` if it has no array leaves, a scalar leaf, leaves with
    different leading sizes, or fewer than two samples; naming `test_fraction` if it is
    not strictly between 0 and 1.
    """
    n = leading_size(data, "data")
    if n < 2:
        raise ValueError(f"`data` needs at least 2 samples to split; got {n}.")
    if not 0 < test_fraction < 1:
        raise ValueError(
            f"`test_fraction` must be strictly between 0 and 1; got {test_fraction}."
        )
    # Round half up (Python's `round` rounds half to even).
    n_test = min(max(math.floor(test_fraction * n + 0.5), 1), n - 1)
    perm = jr.permutation(key, n)
    test_index, train_index = perm[:n_test], perm[n_test:]

    def take(index):
        return jtu.tree_map(
            lambda x: jnp.asarray(x)[index] if eqx.is_array(x) else x, data
        )

    return take(train_index), take(test_index)


def standardise(
    x: Float[Array, "*shape"], *, axis: int | tuple[int, ...] = 0
) -> tuple[Float[Array, "*shape"], Float[Array, "..."], Float[Array, "..."]]:
    """Shift and scale `x` to zero mean and unit standard deviation along `axis`.

    A slice with zero standard deviation (a constant feature) is divided by one instead,
    so that it maps to zeros rather than NaNs. Apply the same statistics to held-out
    data with `(x_test - mean) / std`, and undo the transform with `z * std + mean`.

    **Arguments:**

    - `x`: a floating array, e.g. of shape `(n, dim)` with samples along axis 0.
    - `axis`: the axis or axes over which the statistics are computed (the sample axes).

    **Returns:**

    A tuple `(z, mean, std)`: `z` has the shape of `x`; `mean` and `std` keep the
    reduced axes with size one (so they broadcast against `x`), and `std` is the scale
    actually used, with zeros replaced by ones.
    """
    mean = jnp.mean(x, axis=axis, keepdims=True)
    std = jnp.std(x, axis=axis, keepdims=True)
    std = jnp.where(std > 0, std, jnp.ones_like(std))
    return (x - mean) / std, mean, std
