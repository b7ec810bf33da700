"""Leading finite-width corrections: the four-point vertex and the Edgeworth density.

After "The Principles of Deep Learning Theory" (Roberts, Yaida and Hanin, 2022,
chapter 4) and "Finite size corrections for neural network Gaussian processes"
(Antognini, 2019). At width `n` the preactivations of a randomly initialised MLP are
Gaussian only at leading order: given layer `l - 1`, `z^l` is Gaussian with the random
variance `G^l = C_b + (C_W / n) sum_j s(z^{l-1}_j)^2`, whose fluctuations
`Var(G^l) = V^l / n_{l-1}` (the four-point vertex) make the output distribution
heavier-tailed, with excess kurtosis `3 V^l / (n_{l-1} (K^l)^2)`. The vertex obeys

    V^{l+1} = C_W^2 (<s^4>_{K^l} - <s^2>_{K^l}^2) + (n_l / n_{l-1}) chi_par(K^l)^2 V^l,

with `V^1 = 0`; at ReLU criticality it grows linearly in depth, `V^l = 5 (l - 1) K^2`
(excess kurtosis `15 (l - 1) / n`). For one hidden layer with output weights from any
symmetric distribution of excess kurtosis `kappa_w`, the output is a sum of `n` i.i.d.
terms, so its fourth cumulant is exactly
`C_W^2 ((kappa_w + 3) <s^4>_K - 3 <s^2>_K^2) / n` and its density is, to order `1/n`,
the Edgeworth series `N(f; 0, K) [1 + (kappa4 / 24) He4(f / sqrt(K))]`; higher
cumulants are `O(1/n^2)`.
"""

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .._core import check_positive, check_positive_int
from ._criticality import (
    Activation,
    _check_activation,
    _check_kernel,
    _check_scalar,
    gaussian_expectation,
    kernel_recursion,
    susceptibilities,
)


def _widths(widths, depth: int) -> tuple[int, ...]:
    if isinstance(widths, int) and not isinstance(widths, bool):
        check_positive_int(widths, "widths")
        return (widths,) * max(depth - 1, 1)
    if not isinstance(widths, Sequence) or len(widths) != depth - 1 or depth == 1:
        raise ValueError(
            "`widths` must be a positive integer or a sequence of the depth - 1 hidden "
            f"widths n_1..n_(L-1); got {widths!r} for depth {depth}."
        )
    for w in widths:
        check_positive_int(w, "widths")
    return tuple(int(w) for w in widths)


def four_point_vertex(
    activation: Activation,
    depth: int,
    k0: Float[ArrayLike, ""],
    *,
    c_w: Float[ArrayLike, ""],
    c_b: Float[ArrayLike, ""] = 0.0,
    widths: int | Sequence[int],
) -> tuple[
    Float[Array, " {depth}"], Float[Array, " {depth}"], Float[Array, " {depth}"]
]:
    """The kernel, the four-point vertex and the predicted excess kurtosis per layer.

    The recursion of Roberts, Yaida and Hanin (2022, eq. 4.90 for a single input):
    `V^1 = 0` and `V^{l+1} = C_W^2 (<s^4> - <s^2>^2)_{K^l}
    + (n_l / n_{l-1}) chi_par(K^l)^2 V^l`, where the preactivations of layer `l`
    have `E[z_i^2 z_j^2] - E[z_i^2] E[z_j^2] = V^l / n_{l-1}` for `i != j` and excess
    kurtosis `3 V^l / (n_{l-1} (K^l)^2)`, to leading order in `1 / n` (the next order is
    `O(l^2 / n^2)`: at ReLU criticality the exact value is `3 ((1 + 5/n)^(l-1) - 1)`).

    **Arguments:**

    - `activation`: the activation.
    - `depth`: the number of layers `L` (`L - 1` hidden layers), a positive integer.
    - `k0`: the input's second moment `x . x / n_0`, positive.
    - `c_w`, `c_b`: the weight and bias variances.
    - `widths`: the hidden width `n` (all layers), or the `L - 1` widths
        `n_1, ..., n_{L-1}`.

    **Returns:** `(K, V, excess_kurtosis)`, each of shape `(depth,)`, for layers
    `1..depth` (`V` and the kurtosis are 0 at layer 1, a Gaussian).

    **Raises:** `ValueError` naming the argument for bad inputs (as
    `kernel_recursion`, and `widths`).
    """
    _check_activation(activation)
    check_positive_int(depth, "depth")
    widths = _widths(widths, depth)
    _check_kernel(k0)
    _check_scalar(c_w, "c_w", positive=True)
    _check_scalar(c_b, "c_b", positive=False)
    return _four_point_vertex(activation, depth, k0, c_w=c_w, c_b=c_b, widths=widths)


@eqx.filter_jit
def _four_point_vertex(activation, depth, k0, *, c_w, c_b, widths):
    ns = jnp.asarray(widths, dtype=jnp.result_type(float))
    ks = kernel_recursion(activation, depth, k0, c_w=c_w, c_b=c_b)
    if ks.ndim != 1:
        raise ValueError("`k0` must be a scalar variance.")
    c_w = _check_scalar(c_w, "c_w", positive=True)

    def source_and_chi(k):
        m = gaussian_expectation(
            lambda z: jnp.stack([activation(z) ** 2, activation(z) ** 4]), k
        )
        chi_par, _ = susceptibilities(activation, k, c_w=c_w)
        return c_w**2 * (m[1] - m[0] ** 2), chi_par

    sources, chis = jax.vmap(source_and_chi)(ks[:-1])
    # n_l / n_{l-1} for l = 1..L-1; n_0 does not matter since V^1 = 0.
    ratios = ns / jnp.concatenate([ns[:1], ns[:-1]])

    def step(v, inputs):
        source, chi, ratio = inputs
        v = source + ratio * chi**2 * v
        return v, v

    _, vs = jax.lax.scan(step, jnp.zeros_like(ks[0]), (sources, chis, ratios))
    vs = jnp.concatenate([jnp.zeros_like(ks[:1]), vs])
    previous_widths = jnp.concatenate([ns[:1], ns])
    kurtosis = 3 * vs / (previous_widths * ks**2)
    return ks, vs, kurtosis


def hermite_correction_coefficient(
    activation: Activation,
    k: Float[ArrayLike, ""],
    *,
    width: int,
    weight_kurtosis: Float[ArrayLike, ""] = 0.0,
    c_w: Float[ArrayLike, ""] = 1.0,
    c_b: Float[ArrayLike, ""] = 0.0,
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """The output variance and excess kurtosis of a one-hidden-layer network.

    For `f = b + sum_j a_j s(u_j) / sqrt(n)` with hidden preactivations
    `u_j ~ N(0, k)` (Gaussian first-layer weights, or many inputs), output weights
    `a_j` i.i.d. from a symmetric law with variance `c_w` and excess kurtosis
    `kappa_w` (Gaussian 0, uniform -6/5, Rademacher -2) and a Gaussian bias of
    variance `c_b`, the output is a sum of `n` i.i.d. terms, so exactly
    `Var f = c_b + c_w <s^2>_k` and
    `kappa4 / Var(f)^2 = c_w^2 ((kappa_w + 3) <s^4>_k - 3 <s^2>_k^2) / (n Var(f)^2)`,
    the coefficient of `He4` in the density's Edgeworth series (Antognini, 2019).

    **Arguments:**

    - `activation`: the activation.
    - `k`: the hidden preactivations' variance, positive.
    - `width`: the hidden width `n`, a positive integer.
    - `weight_kurtosis`: the output weights' excess kurtosis, `>= -2`.
    - `c_w`, `c_b`: the output layer's weight and bias variances.

    **Returns:** `(variance, excess_kurtosis)` of the output.

    **Raises:** `ValueError` naming the argument for bad inputs.
    """
    _check_activation(activation)
    check_positive_int(width, "width")
    if not isinstance(k, jax.core.Tracer):
        check_positive(k, "k")
    c_w = _check_scalar(c_w, "c_w", positive=True)
    c_b = _check_scalar(c_b, "c_b", positive=False)
    if not isinstance(weight_kurtosis, jax.core.Tracer):
        if not float(weight_kurtosis) >= -2:
            raise ValueError(
                "`weight_kurtosis` must be at least -2 (the Rademacher law's); got "
                f"{weight_kurtosis!r}."
            )
    kappa = jnp.asarray(weight_kurtosis, dtype=jnp.result_type(float))
    m = gaussian_expectation(
        lambda z: jnp.stack([activation(z) ** 2, activation(z) ** 4]), k
    )
    variance = c_b + c_w * m[0]
    cumulant = c_w**2 * ((kappa + 3) * m[1] - 3 * m[0] ** 2) / width
    return variance, cumulant / variance**2


def _he4(x):
    return x**4 - 6 * x**2 + 3


def edgeworth_density(
    f: Float[ArrayLike, "*shape"],
    variance: Float[ArrayLike, ""],
    excess_kurtosis: Float[ArrayLike, ""],
) -> Float[Array, "*shape"]:
    """The Edgeworth density `N(f; 0, K) [1 + (kappa / 24) He4(f / sqrt(K))]`.

    The leading finite-width correction to the output distribution of a symmetric
    network (Antognini, 2019), with `He4(x) = x^4 - 6 x^2 + 3`. It integrates to 1 and
    has variance `K` and excess kurtosis `kappa`; for large `|f|` or large `kappa` it
    may be negative (it is an asymptotic series, not a density).

    **Arguments:**

    - `f`: points, any shape.
    - `variance`: `K`, positive.
    - `excess_kurtosis`: `kappa` (the fourth cumulant over `K^2`).

    **Returns:** the density at `f`, with the shape of `f`.
    """
    f = jnp.asarray(f, dtype=jnp.result_type(float))
    if not isinstance(variance, jax.core.Tracer):
        check_positive(variance, "variance")
    x = f / jnp.sqrt(variance)
    gauss = jnp.exp(-(x**2) / 2) / jnp.sqrt(2 * jnp.pi * variance)
    return gauss * (1 + excess_kurtosis / 24 * _he4(x))


def edgeworth_cdf(
    f: Float[ArrayLike, "*shape"],
    variance: Float[ArrayLike, ""],
    excess_kurtosis: Float[ArrayLike, ""],
) -> Float[Array, "*shape"]:
    """The distribution function of `edgeworth_density`:
    `Phi(x) - (kappa / 24) He3(x) phi(x)` with `x = f / sqrt(K)`, `He3 = x^3 - 3x`.

    **Arguments:** as `edgeworth_density`.

    **Returns:** the CDF at `f`, with the shape of `f`.
    """
    f = jnp.asarray(f, dtype=jnp.result_type(float))
    if not isinstance(variance, jax.core.Tracer):
        check_positive(variance, "variance")
    x = f / jnp.sqrt(variance)
    phi = jnp.exp(-(x**2) / 2) / jnp.sqrt(2 * jnp.pi)
    big_phi = 0.5 * (1 + jax.scipy.special.erf(x / jnp.sqrt(2.0)))
    return big_phi - excess_kurtosis / 24 * (x**3 - 3 * x) * phi
