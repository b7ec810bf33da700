"""Infinite-depth NTK classifiers and their taxonomy.

After "Wide and Deep Neural Networks Achieve Optimality for Classification"
(Radhakrishnan, Belkin and Uhler, 2023). For inputs on the unit sphere and a bias-free
network whose activation `phi` is normalised (`E[phi(u)^2] = 1`, `u ~ N(0, 1)`), the
NNGP and NTK are functions of the correlation `rho = <x, x'>` through the activation's
dual `dual(rho) = E[phi(u) phi(v)]` (unit variances, correlation `rho`; `dual(1) = 1`):

    Sigma_0 = Theta_0 = rho,   Sigma_l = dual(Sigma_{l-1}),
    Theta_l = Sigma_l + dual'(Sigma_{l-1}) Theta_{l-1}.

The classifier `sign(sum_i y_i Theta_L(x, x_i))` has a limit as `L -> infinity` that
depends only on the dual near its fixed points (`classify_activation`; the conditions
are derived in its docstring). The dual is a power series `sum_k c_k rho^k` with
`c_k >= 0`, `sum_k c_k = 1` (the squared normalised Hermite coefficients of `phi`).
The recursion runs in a signed log domain by `lax.scan`, so that depth 5000 neither
overflows (`Theta_L(1)` grows like `dual'(1)^L`) nor underflows (off-diagonal
correlations may collapse doubly exponentially).
"""

import math
from collections.abc import Sequence
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Real

from .._core import check_positive, check_positive_int


# Floor for log|value|: log(0) would give -inf and then inf - inf = NaN.
_LOG_FLOOR = -1e36
# Past k^l = 1e30 the rescaled log-kernel log|Theta| / k^l is constant to working
# precision (its layer-to-layer change is O(k^-l)), so deeper layers are the limit.
_LOG_MAX_SCALE = math.log(1e30)


class DualActivation(eqx.Module):
    """A normalised activation together with its dual, for the deep kernels.

    Made by `relu_activation`, `hermite_activation`, `nearest_neighbour_activation`
    or `singular_activation`. `coefficients` are the dual's power-series weights
    `c_k` (for `"hermite"`); ReLU uses its closed-form arc-cosine dual. `order` is
    the order of the dual's zero at 0, the first `k` with `c_k > 0` (0 for ReLU, whose
    dual is positive at 0).
    """

    kind: Literal["relu", "hermite"] = eqx.field(static=True)
    coefficients: Float[Array, " k"] | None
    order: int = eqx.field(static=True)

    def __call__(self, u: Float[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
        """The activation itself (normalised: `E[phi(u)^2] = 1` for `u ~ N(0, 1)`)."""
        u = jnp.asarray(u, float)
        if self.kind == "relu":
            return jnp.sqrt(2.0) * jax.nn.relu(u)
        assert self.coefficients is not None
        # phi = sum_k sqrt(c_k) He_k(u) / sqrt(k!), He_k the probabilists' Hermite.
        out = jnp.zeros_like(u)
        prev, cur = jnp.zeros_like(u), jnp.ones_like(u)
        for k in range(self.coefficients.shape[0]):
            out = out + jnp.sqrt(self.coefficients[k] / math.factorial(k)) * cur
            prev, cur = cur, u * cur - k * prev
        return out

    def dual(self, rho: Float[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
        """`E[phi(u) phi(v)]` for standard normals with correlation `rho`."""
        rho = jnp.clip(jnp.asarray(rho, float), -1.0, 1.0)
        if self.kind == "relu":
            theta = jnp.arccos(rho)
            return (jnp.sqrt(1 - rho**2) + (jnp.pi - theta) * rho) / jnp.pi
        assert self.coefficients is not None
        return jnp.polyval(self.coefficients[::-1], rho)

    def dual_grad(self, rho: Float[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
        """The derivative of the dual, `E[phi'(u) phi'(v)]`."""
        rho = jnp.clip(jnp.asarray(rho, float), -1.0, 1.0)
        if self.kind == "relu":
            return (jnp.pi - jnp.arccos(rho)) / jnp.pi
        assert self.coefficients is not None
        c = self.coefficients
        k = jnp.arange(c.shape[0], dtype=c.dtype)
        return jnp.polyval((k * c)[1:][::-1], rho)


def relu_activation() -> DualActivation:
    """`phi(u) = sqrt(2) max(u, 0)`: dual `(sqrt(1 - rho^2) + (pi - arccos rho) rho)
    / pi`, `dual'(1) = 1`; correlations tend to 1 (majority vote at infinite depth)."""
    return DualActivation(kind="relu", coefficients=None, order=0)


def hermite_activation(
    coefficients: Sequence[float] | Real[ArrayLike, " k"],
) -> DualActivation:
    """`phi(u) = sum_k b_k He_k(u) / sqrt(k!)` with `b` rescaled to unit norm.

    The dual is `sum_k b_k^2 rho^k`, a polynomial.

    **Arguments:**

    - `coefficients`: the Hermite coefficients `b_0, b_1, ...` (not all zero).

    **Returns:** a `DualActivation` with dual weights `c_k = b_k^2 / sum_j b_j^2`.

    **Raises:** `ValueError` naming `coefficients` if it is not a non-zero 1-D list.
    """
    array = jnp.asarray(coefficients, float)
    b = [float(v) for v in jnp.ravel(array)]
    if array.ndim != 1 or not any(v != 0 for v in b):
        raise ValueError(
            f"`coefficients` must be a 1-D sequence, not all zero; got {coefficients!r}."
        )
    total = sum(v * v for v in b)
    return DualActivation(
        kind="hermite",
        coefficients=jnp.asarray([v * v / total for v in b], float),
        order=next(k for k, v in enumerate(b) if v != 0),
    )


def nearest_neighbour_activation() -> DualActivation:
    """`phi = (He_2 / sqrt 2 + He_3 / sqrt 6) / sqrt 2`: dual `(rho^2 + rho^3) / 2`.

    `dual(0) = dual'(0) = 0` and `dual'(1) = 5/2 > 1`: off-diagonal correlations
    collapse to 0 doubly exponentially, and the infinite-depth NTK classifier is the
    1-nearest-neighbour rule (ranking training points by `dual(rho)`, which orders
    non-negative correlations as `rho` does)."""
    return hermite_activation([0.0, 0.0, 1.0, 1.0])


def singular_exponent(activation: DualActivation) -> float:
    """The exponent `alpha` of the singular kernel `||x - x'||^-alpha` that the
    normalised infinite-depth NTK becomes when `dual(0) = 0 < dual'(0) < 1 < dual'(1)`:
    `alpha = 2 + 2 log(1 / dual'(0)) / log dual'(1)` (see `classify_activation`).

    **Raises:** `ValueError` if the activation is not of the singular class.
    """
    if classify_activation(activation) != "singular":
        raise ValueError("`activation` is not of the 'singular' class.")
    g0 = float(activation.dual_grad(0.0))
    g1 = float(activation.dual_grad(1.0))
    return 2 + 2 * math.log(1 / g0) / math.log(g1)


def singular_activation(dim: int) -> DualActivation:
    """An activation whose infinite-depth NTK is the singular kernel
    `||x - x'||^-dim`, the Hilbert kernel that is consistent for data of intrinsic
    dimension `dim` (Devroye, Gyorfi and Krzyzak, 1998; `dim - 1` for inputs spread
    over the unit sphere of `R^dim`).

    The dual is `c rho + (1 - c) rho^p` (`phi = sqrt(c) He_1 + sqrt(1 - c)
    He_p / sqrt(p!)`) with the smallest `p` for which `c` in `(0, 1)` solves
    `2 + 2 log(1 / c) / log(c + p (1 - c)) = dim` (found by bisection). The NTK's
    exponent is at least 2 (the NNGP's is `dim - 2`), so `dim >= 3`. This
    construction is derived from the singular-kernel condition of
    `classify_activation`; the paper's own explicit activations were not available
    to check it against.

    **Raises:** `ValueError` naming `dim` if it is not an integer of at least 3.
    """
    check_positive_int(dim, "dim")
    if dim < 3:
        raise ValueError(
            f"`dim` must be at least 3 (the deep NTK's singular exponent exceeds 2); "
            f"got {dim!r}."
        )
    beta = dim / 2 - 1
    p = 2
    while beta * (p - 1) <= 1:
        p += 1

    def excess(c: float) -> float:
        return math.log(1 / c) - beta * math.log(c + p * (1 - c))

    lo, hi = 1e-12, 1.0 - 1e-12  # excess(lo) > 0 > excess(hi)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if excess(mid) > 0 else (lo, mid)
    c = 0.5 * (lo + hi)
    coefficients = [0.0] * (p + 1)
    coefficients[1], coefficients[p] = math.sqrt(c), math.sqrt(1 - c)
    return hermite_activation(coefficients)


def classify_activation(
    activation: DualActivation, *, atol: float = 1e-9
) -> Literal["nearest-neighbour", "majority-vote", "singular", "linear"]:
    """Which classifier the infinite-depth NTK classifier of `activation` becomes.

    With `c_k >= 0`, `sum c_k = 1`, the dual is increasing and convex on `[0, 1]`
    with the fixed point 1. Writing `g(rho) = dual'(rho)`:

    - `g(1) <= 1` (e.g. ReLU, `g(1) = 1`): `dual(rho) >= rho`, every correlation tends
        to 1 and `Theta_L(rho) / Theta_L(1)` tends to a positive constant off the
        diagonal (1/4 for ReLU), so the prediction is `sign(sum_i y_i)`:
        **majority vote**.
    - `g(1) > 1`, `dual(0) > 0`: correlations tend to the attracting fixed point
        `rho* in (0, 1)`, where `g(rho*) < 1`, and `Theta_L(rho)` to the positive
        constant `rho* / (1 - g(rho*))` for every `rho != 1`: **majority vote**.
    - `g(1) > 1`, `dual(0) = 0`, `0 < g(0) < 1`: 0 is attracting and
        `Sigma_l(rho) ~ g(0)^l h(rho)`, `Theta_L(rho) ~ L g(0)^L h(rho)`, with the
        Koenigs function `h` of the dual; points at correlation `1 - eps` stay near 1
        for `n = log(1/eps) / log g(1)` layers, so `h(rho) ~ eps^(-log(1/g(0)) /
        log g(1))`, and the NTK gains a further `g(1)^n = 1/eps` over those layers:
        `Theta_L(rho) / Theta_L(rho') -> ((1 - rho') / (1 - rho))^(alpha / 2)` with
        `alpha = 2 + 2 log(1/g(0)) / log g(1)`, a **singular** kernel
        `||x - x'||^-alpha` (`singular_exponent`).
    - `g(1) > 1`, `dual(0) = g(0) = 0`: 0 is super-attracting, the first non-zero
        `c_k` (`k >= 2`) gives `Sigma_l ~ exp(k^l B(rho))`, and the largest correlation
        wins by a doubly exponential margin: **nearest-neighbour** (1-NN).
    - The identity dual (`c_1 = 1`, a linear network) stays linear: `"linear"`.

    **Arguments:**

    - `activation`: a `DualActivation`.
    - `atol`: the tolerance for "equals 0" and "equals 1".

    **Returns:** the class name.
    """
    check_positive(atol, "atol")
    g1 = float(activation.dual_grad(1.0))
    d0 = float(activation.dual(0.0))
    g0 = float(activation.dual_grad(0.0))
    if abs(g0 - 1) <= atol and abs(g1 - 1) <= atol:
        return "linear"
    if g1 <= 1 + atol or d0 > atol:
        return "majority-vote"
    return "singular" if g0 > atol else "nearest-neighbour"


class DeepKernel(eqx.Module):
    """Depth-`L` NNGP and NTK in signed log form: `Sigma = nngp_sign *
    exp(nngp_log)`, `Theta = ntk_sign * exp(ntk_log)`. For nearest-neighbour
    activations the logs are frozen once `k^l` passes `1e30` (see `deep_kernel`)."""

    nngp_sign: Float[Array, "*shape"]
    nngp_log: Float[Array, "*shape"]
    ntk_sign: Float[Array, "*shape"]
    ntk_log: Float[Array, "*shape"]


def _signed_log(v: Array) -> tuple[Array, Array]:
    sign = jnp.where(v < 0, -1.0, 1.0)
    safe = jnp.where(v == 0, 1.0, jnp.abs(v))
    return sign, jnp.where(v == 0, _LOG_FLOOR, jnp.log(safe))


def _series_log(logc: Array, powers: Array, sign: Array, t: Array):
    """`sum_j exp(logc_j) (sign e^t)^powers_j` in signed log form, for tiny `e^t`."""
    lead = (1,) * t.ndim
    logc, powers = logc.reshape(lead + (-1,)), powers.reshape(lead + (-1,))
    e = logc + powers * t[..., None]
    top = jnp.max(e, axis=-1, keepdims=True)
    odd = (powers % 2 == 1) & (sign[..., None] < 0)
    total = jnp.sum(jnp.where(odd, -1.0, 1.0) * jnp.exp(e - top), axis=-1)
    s, log_abs = _signed_log(total)
    return s, jnp.maximum(top[..., 0] + log_abs, _LOG_FLOOR)


def _log_add(sa, ta, sb, tb):
    top = jnp.maximum(ta, tb)
    total = sa * jnp.exp(ta - top) + sb * jnp.exp(tb - top)
    s, log_abs = _signed_log(total)
    return s, jnp.maximum(top + log_abs, _LOG_FLOOR)


def _check_depth(depth) -> None:
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 0:
        raise ValueError(f"`depth` must be a non-negative integer; got {depth!r}.")


def deep_kernel(
    rho: Float[ArrayLike, "*shape"], *, activation: DualActivation, depth: int
) -> DeepKernel:
    """The depth-`L` NNGP `Sigma_L` and NTK `Theta_L` at correlations `rho`.

    The recursion of the module docstring runs by `lax.scan` over the layers in a
    signed log domain. For duals with `dual(0) = 0` the dual and its derivative are
    summed as log-sum-exps of their power series, so collapsing correlations never
    underflow; when the first non-zero coefficient has order `k >= 2` the logs grow
    like `k^l` and are frozen once `k^l > 1e30`, where `log|Theta_l| / k^l` has
    converged to working precision (the classifier only compares these).

    **Arguments:**

    - `rho`: correlations `<x, x'>` of unit vectors, any shape (clipped to [-1, 1]).
    - `activation`: a `DualActivation`.
    - `depth`: the number of hidden layers `L >= 0`.

    **Returns:** a `DeepKernel` of the shape of `rho`.

    **Raises:** `ValueError` naming `depth` if it is not a non-negative integer.
    """
    _check_depth(depth)
    rho = jnp.clip(jnp.asarray(rho, float), -1.0, 1.0)
    order = activation.order
    series = activation.kind == "hermite" and order >= 1
    if series:
        c = activation.coefficients
        assert c is not None
        powers = jnp.arange(c.shape[0], dtype=rho.dtype)
        logc = jnp.where(c > 0, jnp.log(jnp.where(c > 0, c, 1.0)), -jnp.inf)
        logdc = jnp.where(
            c[1:] > 0, jnp.log(jnp.where(c[1:] > 0, powers[1:] * c[1:], 1.0)), -jnp.inf
        )
    freeze_after = (
        math.floor(_LOG_MAX_SCALE / math.log(order)) if series and order >= 2 else None
    )

    def layer(state, index):
        s_sig, t_sig, s_ntk, t_ntk = state
        if series:
            s_new, t_new = _series_log(logc, powers, s_sig, t_sig)
            s_der, t_der = _series_log(logdc, powers[:-1], s_sig, t_sig)
        else:
            value = s_sig * jnp.exp(t_sig)
            s_new, t_new = _signed_log(activation.dual(value))
            s_der, t_der = _signed_log(activation.dual_grad(value))
        s_out, t_out = _log_add(s_new, t_new, s_der * s_ntk, t_der + t_ntk)
        new = (s_new, t_new, s_out, t_out)
        if freeze_after is not None:
            new = jax.tree.map(
                lambda a, b: jnp.where(index < freeze_after, a, b), new, state
            )
        return new, None

    sign, log_abs = _signed_log(rho)
    state = (sign, log_abs, sign, log_abs)
    state, _ = jax.lax.scan(layer, state, jnp.arange(depth))
    return DeepKernel(*state)


def _unit_rows(x: Array, name: str) -> Array:
    if x.ndim != 2:
        raise ValueError(
            f"`{name}` must be a 2-D array (points, features); got {x.shape}."
        )
    norm = jnp.linalg.norm(x, axis=1, keepdims=True)
    norm = eqx.error_if(norm, jnp.any(norm == 0), f"`{name}` has a zero row.")
    return x / norm


def deep_ntk(
    x1: Float[Array, "n d"],
    x2: Float[Array, "m d"],
    *,
    activation: DualActivation,
    depth: int,
) -> Float[Array, "n m"]:
    """The depth-`L` NTK normalised by its diagonal, `Theta_L(x, x') / Theta_L(1)`.

    Inputs are projected onto the unit sphere (the kernel is a function of the
    correlation). The normalised value is computed from the logs, so it stays finite
    at any depth (it underflows to 0 where the off-diagonal kernel collapses).

    **Returns:** the `(n, m)` matrix.
    """
    u1, u2 = _unit_rows(x1, "x1"), _unit_rows(x2, "x2")
    if u1.shape[1] != u2.shape[1]:
        raise ValueError(
            f"`x1` and `x2` must have the same number of features; got {x1.shape} "
            f"and {x2.shape}."
        )
    k = deep_kernel(u1 @ u2.T, activation=activation, depth=depth)
    diag = deep_kernel(jnp.ones(()), activation=activation, depth=depth)
    return k.ntk_sign * jnp.exp(k.ntk_log - diag.ntk_log)


def deep_ntk_classifier(
    x_train: Float[Array, "n d"],
    y_train: Real[Array, " n"],
    x_test: Float[Array, "m d"],
    *,
    activation: DualActivation,
    depth: int,
) -> Float[Array, " m"]:
    """The depth-`L` NTK classifier `sign(sum_i y_i Theta_L(x, x_i))`.

    The sum is a signed log-sum-exp of the log-kernels, so the prediction stays
    exact when the kernel itself under- or overflows (depths of thousands).

    **Arguments:**

    - `x_train`: training inputs, `(n, d)`, projected onto the unit sphere.
    - `y_train`: labels, `(n,)`, usually `+-1`.
    - `x_test`: test inputs, `(m, d)`.
    - `activation`: a `DualActivation`.
    - `depth`: the number of hidden layers.

    **Returns:** the predictions in `{-1, 0, +1}` (0 only on an exact tie), `(m,)`.

    **Raises:** `ValueError` naming the argument for mismatched shapes or a bad
    `depth`; `equinox.EquinoxRuntimeError` for a zero input row.
    """
    if y_train.shape != x_train.shape[:1]:
        raise ValueError(
            f"`y_train` must have one label per row of `x_train`; got {y_train.shape} "
            f"and {x_train.shape}."
        )
    u_train, u_test = _unit_rows(x_train, "x_train"), _unit_rows(x_test, "x_test")
    if u_train.shape[1] != u_test.shape[1]:
        raise ValueError(
            f"`x_train` and `x_test` must have the same number of features; got "
            f"{x_train.shape} and {x_test.shape}."
        )
    k = deep_kernel(u_test @ u_train.T, activation=activation, depth=depth)
    top = jnp.max(k.ntk_log, axis=1, keepdims=True)
    weights = y_train[None, :] * k.ntk_sign
    total = jnp.sum(weights * jnp.exp(k.ntk_log - top), axis=1)
    return jnp.sign(total)
