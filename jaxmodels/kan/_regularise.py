"""The sparsity penalty of a KAN: L1 plus entropy of the mean edge magnitudes."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._layer import KAN


@eqx.filter_jit
def regularisation(
    model: KAN,
    x: Float[Array, "batch in_features"],
    *,
    l1: float | Float[Array, ""] = 1.0,
    entropy: float | Float[Array, ""] = 2.0,
) -> Float[Array, ""]:
    """The sparsity regularisation of Liu et al., "KAN: Kolmogorov-Arnold Networks"
    (2024).

    For every layer, the magnitude of edge `(j, i)` is its mean absolute activation
    over the batch, `A_{j,i} = mean_b |phi_{j,i}(x_{b,i})|`; the layer's penalty is
    `l1 * sum A + entropy * H(A / sum A)`, with `H(p) = -sum p log p`: the L1 term makes
    edges small, the entropy term makes few edges carry the magnitude. The total is
    summed over layers. This is pykan's `reg(reg_metric="edge_forward_spline_n")` on
    whole edge activations, without its coefficient-smoothness terms.

    **Arguments:**

    - `model`: the KAN.
    - `x`: a batch of inputs, shape `(batch, widths[0])`.
    - `l1`, `entropy`: the weights of the two terms (pykan's defaults, 1 and 2).

    **Returns:** the penalty, a scalar.

    **Raises:** `ValueError` if `x` is not a batch of inputs of the model's width.
    """
    n = model.layers[0].in_features
    if x.ndim != 2 or x.shape[1] != n:
        raise ValueError(
            f"`x` must be a batch of inputs of shape (batch, {n}), got {x.shape}."
        )
    total = jnp.zeros((), x.dtype)
    for _, edges in jax.vmap(model.activations)(x):
        a = jnp.abs(edges).mean(0)
        s = a.sum()
        p = a / jnp.where(s > 0, s, 1.0)
        # p log p -> 0 as p -> 0; the inner where keeps the gradient finite there.
        plogp = jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)
        total = total + l1 * s - entropy * plogp.sum()
    return total
