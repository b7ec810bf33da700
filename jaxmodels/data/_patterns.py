import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Real

from ._split import _check_at_least


def binary_patterns(
    key: PRNGKeyArray,
    n: int,
    *,
    noise: Real[ArrayLike, ""] = 0.05,
) -> tuple[Float[Array, "{n} 64"], Int[Array, " {n}"]]:
    """Noisy 8x8 binary patterns of four kinds: a synthetic completion task.

    Class 0 has horizontal bars (each row on with probability 1/2), class 1 vertical
    bars (each column), class 2 blocks (each 4x4 quadrant) and class 3 diagonal stripes
    two pixels wide (a random phase). Every pixel is then flipped with probability
    `noise`. Pixels of one image are strongly dependent (a row, column or quadrant is
    on or off together), so a masked pixel can be inferred from the visible ones.

    **Arguments:**

    - `key`: a PRNG key (`jax.random.key`).
    - `n`: the number of images, at least 1.
    - `noise`: the probability of flipping each pixel, in `[0, 1/2]`.

    **Returns:** a tuple `(x, y)`: the float32 images `x` in `{0, 1}`, flattened row by
    row to shape `(n, 64)`, and the int32 labels `y` in `{0, 1, 2, 3}`, cycling along
    the sample axis.

    **Raises:** `ValueError` naming the argument if `n < 1` or `noise` is outside
    `[0, 1/2]`.
    """
    _check_at_least(n, "n", 1)
    if not 0 <= float(noise) <= 0.5:
        raise ValueError(f"`noise` must be in [0, 1/2]; got {noise!r}.")
    bkey, pkey, nkey = jr.split(key, 3)
    y = jnp.arange(n, dtype=jnp.int32) % 4
    bits = jr.bernoulli(bkey, 0.5, (n, 8))
    i = jnp.arange(8)[:, None]
    j = jnp.arange(8)[None, :]
    rows = bits[:, :, None] & jnp.ones((1, 1, 8), bool)
    cols = bits[:, None, :] & jnp.ones((1, 8, 1), bool)
    quadrant = (i // 4) * 2 + (j // 4)
    blocks = bits[:, quadrant]
    phase = jr.randint(pkey, (n, 1, 1), 0, 4)
    stripes = ((i + j)[None, :, :] + phase) % 4 < 2
    kinds = jnp.stack([rows, cols, blocks, stripes], axis=1)
    images = kinds[jnp.arange(n), y]
    flips = jr.bernoulli(nkey, noise, (n, 8, 8))
    return (images ^ flips).reshape(n, 64).astype(jnp.float32), y
