import math

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from ._selu import ALPHA_01, LAMBDA_01


class AlphaDropout(eqx.Module):
    """Alpha dropout: dropout that keeps zero mean and unit variance.

    From Klambauer et al., "Self-Normalizing Neural Networks" (2017). Ordinary dropout
    sets units to 0, which shifts the mean and variance of SELU activations away from
    the fixed point `(0, 1)`. Alpha dropout sets a dropped unit to SELU's negative
    saturation `alpha' = -lambda * alpha` instead, and then applies the affine map
    `a x + b` with `a = (q + alpha'^2 q (1 - q))^(-1/2)` and `b = -a (1 - q) alpha'`
    (`q = 1 - p` the keep probability), so that inputs of mean 0 and variance 1 keep
    them.

    Like `eqx.nn.Dropout` it behaves differently in training and in inference; toggle
    the whole model with `eqx.nn.inference_mode`. `p` is a Python float, not an array,
    so that a trainer that updates every floating array leaf leaves it alone.
    """

    p: float
    inference: bool

    def __init__(self, p: float | int = 0.1, inference: bool = False):
        """**Arguments:**

        - `p`: the probability of dropping each unit, in `[0, 1)`. `p = 0` is the
            identity.
        - `inference`: if `True`, the layer is the identity.

        **Raises:** `ValueError` naming `p` if it is not in `[0, 1)`.
        """
        p = float(p)
        if not 0 <= p < 1:
            raise ValueError(f"`p` must be in [0, 1) (the drop rate); got {p}.")
        self.p = p
        self.inference = inference

    @property
    def affine(self) -> tuple[float, float]:
        """The correction `(a, b)` applied after dropping, from the paper."""
        q = 1 - self.p
        saturation = -LAMBDA_01 * ALPHA_01
        a = 1 / math.sqrt(q + saturation**2 * q * (1 - q))
        return a, -a * (1 - q) * saturation

    def __call__(
        self,
        x: Float[Array, "*shape"],
        *,
        key: PRNGKeyArray | None = None,
        inference: bool | None = None,
    ) -> Float[Array, "*shape"]:
        """**Arguments:**

        - `x`: a floating array of any shape.
        - `key`: a PRNG key choosing the dropped units; needed in training mode with
            `p > 0`.
        - `inference`: overrides `self.inference` if not `None`.

        **Returns:** an array of the shape of `x`.

        **Raises:** `ValueError` naming `key` if it is missing in training mode.
        """
        if inference is None:
            inference = self.inference
        if inference or self.p == 0:
            return x
        if key is None:
            raise ValueError(
                "AlphaDropout needs `key` in training mode; pass `key=`, or switch "
                "to inference with `inference=True` (or `eqx.nn.inference_mode`)."
            )
        a, b = self.affine
        saturation = -LAMBDA_01 * ALPHA_01
        keep = jr.bernoulli(key, 1 - self.p, x.shape)
        return a * jnp.where(keep, x, saturation) + b
