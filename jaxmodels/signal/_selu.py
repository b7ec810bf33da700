import math

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Real


def selu_constants() -> tuple[float, float]:
    """The constants `(alpha_01, lambda_01)` of SELU, derived from their definition.

    Klambauer et al., "Self-Normalizing Neural Networks" (2017), choose `alpha` and
    `lambda` so that the mean and variance `(0, 1)` is a fixed point of the moment map
    `selu_moment_map` with normalised weights (`omega = 0`, `tau = 1`). Setting the
    mapped mean to 0 fixes `alpha`; setting the mapped second moment to 1 then fixes
    `lambda`. Both are closed forms in `erfc` (the paper's Eq. 8), evaluated here in
    double precision with the standard library.

    **Returns:** `(alpha_01, lambda_01)` as Python floats, about `1.6732632423543772`
    and `1.0507009873554805`.
    """
    erfc1 = math.erfc(1 / math.sqrt(2))  # P(z > 1) * 2 for z ~ N(0, 1)
    erfc2 = math.erfc(math.sqrt(2))
    e = math.e
    # Mapped mean at (mu, nu) = (0, 1): lambda / 2 (sqrt(2/pi) + alpha (sqrt(e) erfc1 - 1)).
    alpha = -math.sqrt(2 / math.pi) / (erfc1 * math.sqrt(e) - 1)
    # Mapped second moment: lambda^2 / 2 (1 + alpha^2 (1 - 2 sqrt(e) erfc1 + e^2 erfc2)).
    second = 1 + alpha**2 * (1 - 2 * math.sqrt(e) * erfc1 + e**2 * erfc2)
    lam = math.sqrt(2 / second)
    return alpha, lam


ALPHA_01 = 1.6732632423543772
"""SELU's `alpha`: the negative saturation is `-lambda * alpha`; see `selu_constants`."""

LAMBDA_01 = 1.0507009873554805
"""SELU's `lambda`, the slope for positive inputs; see `selu_constants`."""


def selu(
    x: Float[ArrayLike, "*shape"],
    alpha: Real[ArrayLike, ""] = ALPHA_01,
    lam: Real[ArrayLike, ""] = LAMBDA_01,
) -> Float[Array, "*shape"]:
    """The scaled exponential linear unit, elementwise.

    `selu(x) = lam * x` for `x > 0` and `lam * alpha * (exp(x) - 1)` for `x <= 0`, from
    Klambauer et al., "Self-Normalizing Neural Networks" (2017). With the default
    constants, activations with mean 0 and variance 1 keep them through a layer with
    normalised weights; other `(alpha, lam)` give other fixed points.

    **Arguments:**

    - `x`: a floating array of any shape.
    - `alpha`: the saturation scale; default `ALPHA_01`.
    - `lam`: the overall scale; default `LAMBDA_01`.

    **Returns:** an array of the shape and dtype of `x`.
    """
    x = jnp.asarray(x)
    # expm1 of min(x, 0): keeps the unused branch finite, so gradients are never NaN.
    negative = alpha * jnp.expm1(jnp.minimum(x, 0))
    return lam * jnp.where(x > 0, x, negative)
