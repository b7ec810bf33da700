import math

import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Real

from ._split import _check_at_least, _check_scale


def anisotropic_blobs(
    key: PRNGKeyArray,
    n: int,
    *,
    classes: int = 3,
    dim: int = 2,
    std: Real[ArrayLike, ""] = 0.5,
    stretch: Real[ArrayLike, ""] = 3.0,
    spread: Real[ArrayLike, ""] = 5.0,
) -> tuple[Float[Array, "{n} {dim}"], Int[Array, " {n}"]]:
    """Elongated Gaussian blobs with random orientations, one per class.

    The class centres are drawn uniformly from the cube `[-spread, spread]^dim`. Class
    `c` is Gaussian with covariance `std^2 (I + (stretch^2 - 1) u_c u_c^T)`, with `u_c`
    a uniformly random unit vector: a cigar of standard deviation `std * stretch` along
    `u_c` and `std` across it.
    Unlike isotropic blobs, the clusters are not Voronoi cells of their means, which is
    where Euclidean-prototype clustering (k-means) starts to cut clusters in two.

    **Arguments:**

    - `key`: a PRNG key (`jax.random.key`).
    - `n`: the number of samples, at least 1.
    - `classes`: the number of classes (blobs), at least 2.
    - `dim`: the dimension of the inputs, at least 1.
    - `std`: the standard deviation across the long axis, non-negative.
    - `stretch`: the ratio of the long axis to the short ones, positive.
    - `spread`: the half-width of the cube the centres are drawn from, non-negative.

    **Returns:**

    A tuple `(x, y)`: the float32 inputs `x` of shape `(n, dim)` and the int32 labels
    `y` of shape `(n,)` in `{0, ..., classes - 1}`, cycling `0, 1, ..., classes - 1`
    along the sample axis (class sizes differ by at most one).

    **Raises:**

    `ValueError` naming the argument if `n < 1`, `classes < 2`, `dim < 1`, `std` or
    `spread` is negative, or `stretch` is not positive.
    """
    _check_at_least(n, "n", 1)
    _check_at_least(classes, "classes", 2)
    _check_at_least(dim, "dim", 1)
    std = _check_scale(std, "std")
    stretch = _check_scale(stretch, "stretch", positive=True)
    spread = _check_scale(spread, "spread")
    ckey, ukey, nkey = jr.split(key, 3)
    centres = jr.uniform(ckey, (classes, dim), minval=-1.0, maxval=1.0) * spread
    # A uniformly random long axis per class; `z + (stretch - 1) (u.z) u` has
    # covariance `I + (stretch^2 - 1) u u^T` for standard normal `z`.
    u = jr.normal(ukey, (classes, dim))
    u = u / jnp.linalg.norm(u, axis=-1, keepdims=True)
    y = jnp.arange(n, dtype=jnp.int32) % classes
    z = jr.normal(nkey, (n, dim))
    uy = u[y]
    z = z + (stretch - 1) * jnp.sum(uy * z, axis=-1, keepdims=True) * uy
    x = centres[y] + std * z
    return x.astype(jnp.float32), y


def rings(
    key: PRNGKeyArray,
    n: int,
    *,
    classes: int = 2,
    noise: Real[ArrayLike, ""] = 0.05,
) -> tuple[Float[Array, "{n} 2"], Int[Array, " {n}"]]:
    """Concentric circles in the plane, one per class.

    Class `c` lies on the circle of radius `(c + 1) / classes` about the origin (the
    outer one has radius 1), at a uniform angle, plus independent Gaussian noise of
    standard deviation `noise` in both coordinates (scikit-learn's `make_circles` for
    two classes with `factor=0.5`). No clustering by Euclidean prototypes can separate
    the rings: each ring surrounds the others' centre.

    **Arguments:**

    - `key`: a PRNG key (`jax.random.key`).
    - `n`: the number of samples, at least 1.
    - `classes`: the number of rings, at least 2.
    - `noise`: the standard deviation of the additive noise, non-negative.

    **Returns:**

    A tuple `(x, y)`: the float32 points `x` of shape `(n, 2)` and the int32 labels `y`
    of shape `(n,)`, cycling `0, 1, ..., classes - 1` along the sample axis.

    **Raises:**

    `ValueError` naming the argument if `n < 1`, `classes < 2` or `noise < 0`.
    """
    _check_at_least(n, "n", 1)
    _check_at_least(classes, "classes", 2)
    noise = _check_scale(noise, "noise")
    tkey, nkey = jr.split(key)
    y = jnp.arange(n, dtype=jnp.int32) % classes
    theta = jr.uniform(tkey, (n,), maxval=2 * math.pi)
    radius = (y + 1) / classes
    x = radius[:, None] * jnp.stack([jnp.cos(theta), jnp.sin(theta)], axis=-1)
    x = x + noise * jr.normal(nkey, (n, 2))
    return x.astype(jnp.float32), y
