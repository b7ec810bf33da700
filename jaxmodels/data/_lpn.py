import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Real

from ._split import _check_at_least, _check_scale


def laplace_denoising(
    key: PRNGKeyArray,
    n: int,
    *,
    scale: Real[ArrayLike, ""] = 1.0,
    noise: Real[ArrayLike, ""] = 1.0,
) -> tuple[Float[Array, "{n} 1"], Float[Array, "{n} 1"]]:
    """Noisy and clean samples of a 1-D Laplace prior: a denoising task.

    The clean signals are `x ~ Laplace(0, scale)` (density `exp(-|x| / scale) /
    (2 scale)`) and the noisy ones `y = x + noise * eps` with `eps` standard normal.
    The MAP denoiser of this pair is soft-thresholding at `noise^2 / scale`, the
    proximal operator of `(noise^2 / scale) |x|`; the posterior mean (the MMSE
    denoiser) is a smooth shrinkage instead. The task of "What's in a Prior? Learned
    Proximal Networks for Inverse Problems" (Fang, Buchanan & Sulam, 2024).

    **Arguments:**

    - `key`: a PRNG key (`jax.random.key`).
    - `n`: the number of pairs, at least 1.
    - `scale`: the Laplace scale `b`, positive.
    - `noise`: the standard deviation of the Gaussian noise, positive.

    **Returns:**

    A tuple `(y, x)` of float32 arrays of shape `(n, 1)`: the noisy inputs and the
    clean targets.

    **Raises:**

    `ValueError` naming the argument if `n < 1` or `scale` or `noise` is not positive.
    """
    _check_at_least(n, "n", 1)
    scale = _check_scale(scale, "scale", positive=True)
    noise = _check_scale(noise, "noise", positive=True)
    xkey, nkey = jr.split(key)
    x = scale * jr.laplace(xkey, (n, 1), jnp.float32)
    y = x + noise * jr.normal(nkey, (n, 1), jnp.float32)
    return y, x
