"""Kernel recursions, fixed points, susceptibilities and criticality of deep MLPs.

After "The Principles of Deep Learning Theory" (Roberts, Yaida and Hanin, 2022), and
the order-to-chaos transition of "Exponential expressivity in deep neural networks
through transient chaos" (Poole et al., 2016). An MLP with preactivations
`z^{l+1} = W^{l+1} s(z^l) + b^{l+1}`, `W_ij ~ N(0, C_W / n_l)`, `b_i ~ N(0, C_b)`, has at
infinite width the layer-to-layer kernel recursion

    K^{l+1}_{ab} = C_b + C_W E_{z ~ N(0, K^l)}[s(z_a) s(z_b)],

with `K^1 = C_b + C_W x_a . x_b / n_0`. Near a fixed point `K*` of the single-input
recursion, small changes of the variance are multiplied per layer by the parallel
susceptibility `chi_par = C_W d<s^2>_K / dK = C_W <s'^2 + s s''>_K`, and small
differences between two inputs by the perpendicular one `chi_perp = C_W <s'^2>_K`.
Criticality `chi_par = chi_perp = 1` keeps both from exploding or vanishing with depth
(ReLU: `C_W = 2, C_b = 0`; tanh: `C_W = 1, C_b = 0`, the `K* = 0` universality class).

Gaussian expectations of any activation use Gauss-Hermite quadrature, whose nodes are
computed once per order and dtype by the Golub-Welsch eigenvalue method.
"""

import functools as ft
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Array, ArrayLike, Float

from .._core import check_positive, check_positive_int


Activation = Callable[[Array], Array]

# Gauss-Hermite converges slowly for functions much narrower than the standard
# deviation (s'^2 of tanh at K ~ 10); 256 nodes keep <sech^4>_10 to 3e-4.
_ORDER = 256
_RTOL = 1e-8
_ATOL = 1e-10


# --------------------------------------------------------------------------------------
# Argument checks


def _check_activation(activation) -> None:
    if not callable(activation):
        raise ValueError(
            f"`activation` must be a callable (e.g. `jax.nn.relu`); got {activation!r}."
        )


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_scalar(value, name: str, *, positive: bool):
    """A scale `c_w` (positive) or `c_b` (non-negative): checked now if concrete, by
    `eqx.error_if` if traced."""
    what = "positive" if positive else "non-negative"
    if _is_concrete(value):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"`{name}` must be a {what} number; got {value!r}.")
        if isinstance(value, bool) or not (number > 0 if positive else number >= 0):
            raise ValueError(f"`{name}` must be {what} and finite; got {value!r}.")
        if number == float("inf"):
            raise ValueError(f"`{name}` must be finite; got {value!r}.")
        return jnp.asarray(value, dtype=jnp.result_type(float))
    bad = ~jnp.isfinite(value) | ((value <= 0) if positive else (value < 0))
    return eqx.error_if(value, bad, f"`{name}` must be {what} and finite.")


def _check_kernel(k0, name: str = "k0"):
    """A variance (shape `()`) or a pair `(k11, k12, k22)` (shape `(3,)`)."""
    dtype = jnp.result_type(float)
    if _is_concrete(k0):
        try:
            k = jnp.asarray(k0, dtype=dtype)
        except (TypeError, ValueError):
            raise ValueError(f"`{name}` must be an array of variances; got {k0!r}.")
    else:
        k = k0
    if k.shape not in ((), (3,)):
        raise ValueError(
            f"`{name}` must be a variance (shape ()) or a pair (k11, k12, k22) "
            f"(shape (3,)); got shape {k.shape}."
        )
    if k.shape == ():
        bad = ~jnp.isfinite(k) | (k <= 0)
    else:
        bad = (
            ~jnp.all(jnp.isfinite(k))
            | (k[0] <= 0)
            | (k[2] <= 0)
            | (k[1] ** 2 > k[0] * k[2] * (1 + 1e-6))
        )
    message = (
        f"`{name}` must hold finite positive variances (and |k12| <= sqrt(k11 k22))."
    )
    if _is_concrete(k):
        if bool(bad):
            raise ValueError(f"{message} Got {k0!r}.")
        return k
    return eqx.error_if(k, bad, message)


# --------------------------------------------------------------------------------------
# Gauss-Hermite quadrature


@ft.cache
def _hermite_rule(order: int, dtype_name: str) -> tuple[Array, Array]:
    # Golub-Welsch: the nodes of the probabilists' Hermite rule (weight N(0, 1)) are the
    # eigenvalues of the Jacobi matrix with off-diagonal sqrt(k); the weights are the
    # squared first components of the eigenvectors. Symmetrised so that odd moments
    # vanish exactly (and E[relu(z)^2] = K / 2 to round-off).
    with jax.ensure_compile_time_eval():
        dtype = jnp.dtype(dtype_name)
        off = jnp.sqrt(jnp.arange(1, order, dtype=dtype))
        jacobi = jnp.diag(off, 1) + jnp.diag(off, -1)
        nodes, vectors = jnp.linalg.eigh(jacobi)
        weights = vectors[0] ** 2
        nodes = (nodes - nodes[::-1]) / 2
        weights = (weights + weights[::-1]) / 2
        weights = weights / jnp.sum(weights)
    return nodes, weights


def hermite_rule(order: int = _ORDER, *, dtype=None) -> tuple[Array, Array]:
    """Gauss-Hermite nodes and weights for expectations under `N(0, 1)`.

    `sum_i w_i f(x_i)` is exact for polynomials of degree `< 2 * order`. Computed once
    per order and dtype by the Golub-Welsch method (`jnp.linalg.eigh` of the Jacobi
    matrix of the probabilists' Hermite polynomials).

    **Arguments:**

    - `order`: the number of nodes, a positive integer.
    - `dtype`: the floating dtype (JAX's default float if `None`).

    **Returns:** `(nodes, weights)`, each of shape `(order,)`; the weights sum to 1.

    **Raises:** `ValueError` naming `order` if it is not a positive integer.
    """
    check_positive_int(order, "order")
    return _hermite_rule(order, jnp.dtype(dtype or jnp.result_type(float)).name)


def gaussian_expectation(
    fn: Callable[[Array], Array],
    variance: Float[ArrayLike, ""],
    *,
    order: int = _ORDER,
) -> Array:
    """`E_{z ~ N(0, variance)}[fn(z)]` by Gauss-Hermite quadrature.

    **Arguments:**

    - `fn`: a function of a scalar, returning an array (vmapped over the nodes).
    - `variance`: the variance, non-negative (zero evaluates `fn(0)`).
    - `order`: the number of quadrature nodes.

    **Returns:** the expectation, with the shape of `fn`'s output.
    """
    _check_activation(fn)
    variance = jnp.asarray(variance, dtype=jnp.result_type(float))
    nodes, weights = hermite_rule(order, dtype=variance.dtype)
    values = jax.vmap(fn)(jnp.sqrt(jnp.maximum(variance, 0)) * nodes)
    return jnp.tensordot(weights, values, axes=1)


@ft.cache
def _laguerre_legendre_rules(
    radial: int, angular: int, dtype_name: str
) -> tuple[Array, Array, Array, Array]:
    # Golub-Welsch again: Gauss-Laguerre (weight e^-t on [0, inf): diagonal 2k + 1,
    # off-diagonal k) and Gauss-Legendre (on [-1, 1]: off-diagonal k / sqrt(4k^2 - 1)).
    with jax.ensure_compile_time_eval():
        dtype = jnp.dtype(dtype_name)
        k = jnp.arange(1, radial, dtype=dtype)
        jacobi = jnp.diag(2 * jnp.arange(radial, dtype=dtype) + 1) + jnp.diag(k, 1)
        jacobi = jacobi + jnp.diag(k, -1)
        t, vectors = jnp.linalg.eigh(jacobi)
        t_weights = vectors[0] ** 2
        t_weights = t_weights / jnp.sum(t_weights)
        k = jnp.arange(1, angular, dtype=dtype)
        off = k / jnp.sqrt(4 * k**2 - 1)
        x, vectors = jnp.linalg.eigh(jnp.diag(off, 1) + jnp.diag(off, -1))
        x_weights = vectors[0] ** 2
        x = (x - x[::-1]) / 2
        x_weights = (x_weights + x_weights[::-1]) / 2
        x_weights = x_weights / jnp.sum(x_weights)
    return t, t_weights, x, x_weights


def bivariate_gaussian_expectation(
    fn: Callable[[Array, Array], Array],
    kernel: Float[ArrayLike, "3"],
    *,
    radial_order: int = 32,
    angular_order: int = 24,
) -> Array:
    """`E[fn(z_a, z_b)]` for `(z_a, z_b) ~ N(0, [[k11, k12], [k12, k22]])`.

    In polar coordinates `z_a = sqrt(k11) r cos(theta)`,
    `z_b = sqrt(k22) r cos(theta - phi)` with `cos(phi) = rho`, the lines `z_a = 0` and
    `z_b = 0` (where activations such as ReLU have their kinks) are rays. The angle is
    integrated by Gauss-Legendre on the four arcs between them and `t = r^2 / 2` by
    Gauss-Laguerre, which is spectrally accurate for integrands smooth away from
    those lines (exact for ReLU's arc-cosine kernel up to round-off), where a
    Cartesian Gauss-Hermite grid converges only as one over its order.

    **Arguments:**

    - `fn`: a function of two scalars, returning an array.
    - `kernel`: `(k11, k12, k22)`, shape `(3,)`.
    - `radial_order`, `angular_order`: Gauss-Laguerre nodes, and Gauss-Legendre nodes
        on each of the four arcs.

    **Returns:** the expectation, with the shape of `fn`'s output.
    """
    _check_activation(fn)
    check_positive_int(radial_order, "radial_order")
    check_positive_int(angular_order, "angular_order")
    kernel = jnp.asarray(kernel, dtype=jnp.result_type(float))
    t, t_weights, x, x_weights = _laguerre_legendre_rules(
        radial_order, angular_order, kernel.dtype.name
    )
    s1 = jnp.sqrt(jnp.maximum(kernel[0], 0))
    s2 = jnp.sqrt(jnp.maximum(kernel[2], 0))
    positive = s1 * s2 > 0
    rho = jnp.where(positive, kernel[1] / jnp.where(positive, s1 * s2, 1.0), 0.0)
    rho = jnp.clip(rho, -1.0, 1.0)
    # The double `where` keeps arccos' infinite slope at |rho| = 1 out of gradients.
    inside = jnp.abs(rho) < 1
    phi = jnp.where(
        inside, jnp.arccos(jnp.where(inside, rho, 0.0)), jnp.where(rho > 0, 0.0, jnp.pi)
    )
    half = jnp.pi / 2
    edges = jnp.stack([phi - half, half, phi + half, 3 * half, phi - half + 4 * half])
    centres = (edges[1:] + edges[:-1]) / 2
    widths = (edges[1:] - edges[:-1]) / 2
    theta = (centres[:, None] + widths[:, None] * x[None, :]).reshape(-1)
    theta_weights = (widths[:, None] * x_weights[None, :]).reshape(-1) / jnp.pi
    r = jnp.sqrt(2 * t)
    za = s1 * r[:, None] * jnp.cos(theta)[None, :]
    zb = s2 * r[:, None] * jnp.cos(theta - phi)[None, :]
    values = jax.vmap(fn)(za.reshape(-1), zb.reshape(-1))
    weights = (t_weights[:, None] * theta_weights[None, :]).reshape(-1)
    return jnp.tensordot(weights, values, axes=1)


def _derivatives(activation: Activation):
    first = jax.grad(activation)
    return first, jax.grad(first)


# --------------------------------------------------------------------------------------
# The recursion


def kernel_step(
    activation: Activation,
    k: Float[ArrayLike, "*pair"],
    *,
    c_w: Float[ArrayLike, ""],
    c_b: Float[ArrayLike, ""] = 0.0,
) -> Float[Array, "*pair"]:
    """One layer of the infinite-width kernel recursion,
    `K' = C_b + C_W E_{z ~ N(0, K)}[s(z_a) s(z_b)]` (Roberts, Yaida and Hanin, 2022).

    **Arguments:**

    - `activation`: the activation `s`, a scalar function (`jax.nn.relu`, `jnp.tanh`).
    - `k`: a variance `K` (shape `()`) or a pair `(K11, K12, K22)` (shape `(3,)`).
    - `c_w`: the weight variance `C_W` (weights `N(0, C_W / fan_in)`), positive.
    - `c_b`: the bias variance `C_b`, non-negative.

    **Returns:** `K'`, with the shape of `k`.
    """
    _check_activation(activation)
    k = jnp.asarray(k, dtype=jnp.result_type(float))
    if k.shape == ():
        second = gaussian_expectation(lambda z: activation(z) ** 2, k)
        return c_b + c_w * second
    if k.shape != (3,):
        raise ValueError(f"`k` must have shape () or (3,); got {k.shape}.")
    s11 = gaussian_expectation(lambda z: activation(z) ** 2, k[0])
    s22 = gaussian_expectation(lambda z: activation(z) ** 2, k[2])
    s12 = bivariate_gaussian_expectation(lambda a, b: activation(a) * activation(b), k)
    return c_b + c_w * jnp.stack([s11, s12, s22])


def kernel_recursion(
    activation: Activation,
    depth: int,
    k0: Float[ArrayLike, "*pair"],
    *,
    c_w: Float[ArrayLike, ""],
    c_b: Float[ArrayLike, ""] = 0.0,
) -> Float[Array, " depth *pair"]:
    """The kernels `K^1, ..., K^depth` of an MLP at infinite width (by `lax.scan`).

    `K^1 = C_b + C_W k0` and `K^{l+1} = C_b + C_W E_{z ~ N(0, K^l)}[s(z_a) s(z_b)]`
    (Roberts, Yaida and Hanin, 2022, chapter 4), for one input or a pair.

    **Arguments:**

    - `activation`: the activation, a scalar function (static under `jit`).
    - `depth`: the number of layers `L`, a positive integer.
    - `k0`: the input's second moment `x . x / n_0` (shape `()`), or a pair's
        `(x_a . x_a, x_a . x_b, x_b . x_b) / n_0` (shape `(3,)`).
    - `c_w`: the weight variance `C_W`, positive.
    - `c_b`: the bias variance `C_b`, non-negative.

    **Returns:** the preactivation kernels of layers `1..depth`, shape `(depth,)` or
    `(depth, 3)`.

    **Raises:** `ValueError` naming the argument for a non-callable `activation`, a
    non-positive `depth`, `c_w` or variance in `k0`, a negative `c_b` or a NaN.
    """
    _check_activation(activation)
    check_positive_int(depth, "depth")
    _check_kernel(k0)
    _check_scalar(c_w, "c_w", positive=True)
    _check_scalar(c_b, "c_b", positive=False)
    return _kernel_recursion(activation, depth, k0, c_w=c_w, c_b=c_b)


@eqx.filter_jit
def _kernel_recursion(activation, depth, k0, *, c_w, c_b):
    # Checked again inside: values only known at run time go through `eqx.error_if`.
    k0 = _check_kernel(k0)
    c_w = _check_scalar(c_w, "c_w", positive=True)
    c_b = _check_scalar(c_b, "c_b", positive=False)
    k1 = c_b + c_w * k0

    def step(k, _):
        return kernel_step(activation, k, c_w=c_w, c_b=c_b), k

    _, ks = jax.lax.scan(step, k1, None, length=depth)
    return ks


def susceptibilities(
    activation: Activation,
    k: Float[ArrayLike, ""],
    *,
    c_w: Float[ArrayLike, ""],
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """The parallel and perpendicular susceptibilities at the variance `k`.

    `chi_par = dK^{l+1} / dK^l = C_W <s'(z)^2 + s(z) s''(z)>_K` (by the heat equation
    `d<f>_K / dK = <f''>_K / 2`, defined at `K = 0` too) and
    `chi_perp = C_W <s'(z)^2>_K`, the growth per layer of a small difference between
    two inputs (Roberts, Yaida and Hanin, 2022, section 5.1). They do not depend on
    `C_b` at a given `K`.

    **Arguments:**

    - `activation`: the activation, twice differentiable almost everywhere.
    - `k`: the variance `K`, non-negative.
    - `c_w`: the weight variance `C_W`.

    **Returns:** `(chi_par, chi_perp)`.
    """
    _check_activation(activation)
    first, second = _derivatives(activation)
    k = jnp.asarray(k, dtype=jnp.result_type(float))
    # The K -> 0 limit rather than the derivative at the kink (ReLU's chi at K = 0).
    k = jnp.maximum(k, jnp.finfo(k.dtype).tiny)
    both = gaussian_expectation(
        lambda z: jnp.stack([first(z) ** 2 + activation(z) * second(z), first(z) ** 2]),
        k,
    )
    return c_w * both[0], c_w * both[1]


def kernel_fixed_point(
    activation: Activation,
    *,
    c_w: Float[ArrayLike, ""],
    c_b: Float[ArrayLike, ""] = 0.0,
    k0: Float[ArrayLike, ""] = 1.0,
    burn_in: int = 64,
    rtol: float | None = None,
    atol: float | None = None,
    max_steps: int = 256,
    throw: bool = True,
) -> Float[Array, ""]:
    """The fixed point `K* = C_b + C_W <s^2>_{K*}` reached from the variance `k0`.

    The recursion is iterated `burn_in` times from `k0` (to land in the basin of the
    attracting fixed point, e.g. the non-zero one of tanh with `C_b = 0, C_W > 1`),
    then polished by Newton's method (`optimistix.root_find`). On a line of fixed
    points (ReLU at `C_W = 2, C_b = 0`) it returns the one reached, `k0`.

    **Arguments:**

    - `activation`: the activation.
    - `c_w`, `c_b`: the weight and bias variances.
    - `k0`: the starting variance (that of the first layer), positive.
    - `burn_in`: plain iterations before Newton's method, a non-negative integer.
    - `rtol`, `atol`: Newton's tolerances (`None`: `1e-8`, `1e-10` in double
        precision, `1e-5`, `1e-6` in single).
    - `max_steps`: Newton's step budget.
    - `throw`: raise (an `equinox.EquinoxRuntimeError`) if no attracting fixed point
        (`chi_par <= 1`) is found; otherwise return the last iterate.

    **Returns:** `K*`, a non-negative scalar.

    **Raises:** `ValueError` naming the argument for bad inputs; with `throw`, an
    error saying that the recursion has no fixed point (e.g. ReLU with `C_W > 2`).
    """
    _check_activation(activation)
    if not isinstance(burn_in, int) or burn_in < 0:
        raise ValueError(f"`burn_in` must be a non-negative integer; got {burn_in!r}.")
    _check_kernel(k0)
    _check_scalar(c_w, "c_w", positive=True)
    _check_scalar(c_b, "c_b", positive=False)
    return _kernel_fixed_point(
        activation,
        c_w=c_w,
        c_b=c_b,
        k0=k0,
        burn_in=burn_in,
        rtol=rtol,
        atol=atol,
        max_steps=max_steps,
        throw=throw,
    )


@eqx.filter_jit
def _kernel_fixed_point(
    activation, *, c_w, c_b, k0, burn_in, rtol, atol, max_steps, throw
):
    k0 = _check_kernel(k0)
    if k0.shape != ():
        raise ValueError("`k0` must be a scalar variance.")
    c_w = _check_scalar(c_w, "c_w", positive=True)
    c_b = _check_scalar(c_b, "c_b", positive=False)
    double = k0.dtype == jnp.float64
    rtol = (_RTOL if double else 1e-5) if rtol is None else rtol
    atol = (_ATOL if double else 1e-6) if atol is None else atol

    def step(k, _):
        return kernel_step(activation, k, c_w=c_w, c_b=c_b), None

    k_iter, _ = jax.lax.scan(step, k0, None, length=burn_in)

    def residual(k, _):
        return kernel_step(activation, jnp.maximum(k, 0), c_w=c_w, c_b=c_b) - k

    scale = jnp.maximum(jnp.abs(k_iter), 1.0)
    converged = jnp.abs(residual(k_iter, None)) <= atol + rtol * scale
    # Newton would divide by a zero derivative on a line of fixed points; start it
    # where it is needed and keep the iterate where it has already converged.
    solution = optx.root_find(
        residual,
        optx.Newton(rtol=rtol, atol=atol),
        jnp.where(jnp.isfinite(k_iter), k_iter, k0),
        max_steps=max_steps,
        throw=False,
    )
    k_star = jnp.where(converged, k_iter, jnp.maximum(solution.value, 0))
    failed = ~converged & (
        (solution.result != optx.RESULTS.successful)
        | ~jnp.isfinite(solution.value)
        | (jnp.abs(residual(k_star, None)) > 1e3 * (atol + rtol * scale))
    )
    # A repelling fixed point (K = 0 of ReLU with c_w > 2) is not reached by the
    # recursion, however well Newton's method converges to it.
    chi_par, _ = susceptibilities(activation, k_star, c_w=c_w)
    failed = failed | (chi_par > 1 + (1e-6 if double else 1e-4))
    if throw:
        k_star = eqx.error_if(
            k_star,
            failed | ~jnp.isfinite(k_star),
            "The kernel recursion has no finite fixed point for these `c_w` and `c_b` "
            "(the variance diverges, e.g. ReLU with c_w > 2 or c_b > 0 at c_w = 2).",
        )
    return k_star


@eqx.filter_jit
def critical_initialisation(
    activation: Activation,
    *,
    init: Sequence[float] = (0.1, 1.5, 1.0),
    rtol: float = 1e-10,
    atol: float = 1e-10,
    max_steps: int = 512,
    throw: bool = True,
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """The critical initialisation `(C_b, C_W)` of an activation:
    `chi_par = chi_perp = 1` at a fixed point `K*` (Roberts, Yaida and Hanin, 2022,
    section 5.2).

    Solves the three equations `K = C_b + C_W <s^2>_K`, `C_W <s'^2>_K = 1` and
    `C_W <s'^2 + s s''>_K = 1` for `(C_b, C_W, K = t^2)` by Levenberg-Marquardt
    (`optimistix.least_squares`), which copes with the line of solutions of
    scale-invariant activations (ReLU: any `K`, `C_W = 2`, `C_b = 0`) and with the
    `K* = 0` universality class (tanh: `C_W = 1`, `C_b = 0` at `K* = 0`).

    **Arguments:**

    - `activation`: the activation, twice differentiable almost everywhere.
    - `init`: the starting `(C_b, C_W, K)`.
    - `rtol`, `atol`, `max_steps`: the solver's tolerances and budget.
    - `throw`: raise if the equations have no solution (residual not zero).

    **Returns:** `(c_b, c_w)`.

    **Raises:** `ValueError` naming `activation` or `init`; with `throw`, an error if
    no critical point is found (e.g. an activation whose `<s s''>_K` never vanishes
    with `C_b >= 0`).
    """
    _check_activation(activation)
    if len(init) != 3 or not all(float(v) == float(v) for v in init):
        raise ValueError(f"`init` must be three numbers (c_b, c_w, k); got {init!r}.")
    first, second = _derivatives(activation)
    dtype = jnp.result_type(float)

    def residuals(y, _):
        c_b, c_w, t = y[0], y[1], y[2]
        k = t**2
        moments = gaussian_expectation(
            lambda z: jnp.stack(
                [activation(z) ** 2, first(z) ** 2, activation(z) * second(z)]
            ),
            k,
        )
        return jnp.stack(
            [
                c_b + c_w * moments[0] - k,
                c_w * moments[1] - 1,
                c_w * moments[2],
            ]
        )

    y0 = jnp.asarray(
        [init[0], init[1], jnp.sqrt(jnp.asarray(init[2], dtype))], dtype=dtype
    )
    solution = optx.least_squares(
        residuals,
        optx.LevenbergMarquardt(rtol=rtol, atol=atol),
        y0,
        max_steps=max_steps,
        throw=False,
    )
    y = solution.value
    if throw:
        bad = (
            (jnp.max(jnp.abs(residuals(y, None))) > 1e-6)
            | (y[0] < -1e-8)
            | ~jnp.all(jnp.isfinite(y))
        )
        y = eqx.error_if(
            y,
            bad,
            "No critical initialisation (chi_par = chi_perp = 1 with c_b >= 0) found "
            "for this `activation` from `init`.",
        )
    return jnp.maximum(y[0], 0), y[1]


def order_chaos_boundary(
    activation: Activation,
    c_b_values: Float[ArrayLike, " n"],
    *,
    k_max: float = 10.0,
    rtol: float = 1e-10,
    atol: float = 1e-12,
    max_steps: int = 256,
    throw: bool = True,
) -> Float[Array, " n"]:
    """The critical line `C_W(C_b)` between the ordered and the chaotic phase, where
    `chi_perp = 1` at the fixed point (Poole et al., 2016).

    On the line `C_W = 1 / <s'^2>_{K*}`, so `K*` solves the one-dimensional equation
    `K = C_b + <s^2>_K / <s'^2>_K`, found by bisection (`optimistix.Bisection`) on
    `[0, k_max]` (the right-hand side is decreasing for sigmoid-like activations,
    positive at `K = 0` and negative at `k_max`). For tanh the line passes through
    `(0, 1)`.

    **Arguments:**

    - `activation`: the activation.
    - `c_b_values`: bias variances `C_b >= 0`, shape `(n,)`.
    - `k_max`: the upper end of the bisection bracket for `K*`.
    - `rtol`, `atol`, `max_steps`: bisection tolerances and budget.
    - `throw`: raise if the bracket holds no sign change (no critical line there).

    **Returns:** the critical `C_W` for each `C_b`, shape `(n,)`.

    **Raises:** `ValueError` naming `activation`, `c_b_values` or `k_max`.
    """
    _check_activation(activation)
    k_max = check_positive(k_max, "k_max")
    c_b_values = jnp.asarray(c_b_values, dtype=jnp.result_type(float))
    if c_b_values.ndim != 1:
        raise ValueError("`c_b_values` must be one-dimensional.")
    if _is_concrete(c_b_values) and not bool(
        jnp.all(jnp.isfinite(c_b_values) & (c_b_values >= 0))
    ):
        raise ValueError("`c_b_values` must be finite and non-negative.")
    return _order_chaos_boundary(
        activation,
        c_b_values,
        k_max=k_max,
        rtol=rtol,
        atol=atol,
        max_steps=max_steps,
        throw=throw,
    )


@eqx.filter_jit
def _order_chaos_boundary(
    activation, c_b_values, *, k_max, rtol, atol, max_steps, throw
):
    first, _ = _derivatives(activation)

    def ratio(k):
        m = gaussian_expectation(
            lambda z: jnp.stack([activation(z) ** 2, first(z) ** 2]), k
        )
        return m[0] / m[1], m[1]

    def one(c_b):
        def fn(k, _):
            return c_b + ratio(k)[0] - k

        solution = optx.root_find(
            fn,
            optx.Bisection(rtol=rtol, atol=atol, flip=True),
            jnp.asarray(k_max / 2, c_b.dtype),
            options={"lower": jnp.zeros_like(c_b), "upper": k_max + 0 * c_b},
            max_steps=max_steps,
            throw=False,
        )
        k_star = solution.value
        c_w = 1 / ratio(k_star)[1]
        ok = (fn(0.0, None) >= 0) & (fn(k_max, None) <= 0) & jnp.isfinite(c_w)
        return c_w, ok

    c_w, ok = jax.vmap(one)(c_b_values)
    if throw:
        c_w = eqx.error_if(
            c_w,
            ~jnp.all(ok),
            "No order-to-chaos transition found in [0, k_max] for some `c_b_values` "
            "(K = C_b + <s^2>/<s'^2> has no root there).",
        )
    return c_w


@eqx.filter_jit
def depth_scales(
    activation: Activation,
    *,
    c_w: Float[ArrayLike, ""],
    c_b: Float[ArrayLike, ""] = 0.0,
    k0: Float[ArrayLike, ""] = 1.0,
    throw: bool = True,
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """The depth scales `xi = 1 / |log chi|` at the fixed point reached from `k0`.

    `xi_perp = 1 / |log chi_perp|` is the correlation depth scale of Schoenholz et al.
    (2017): over about `xi_perp` layers two nearby inputs collapse together (ordered
    phase, `chi_perp < 1`) or decorrelate (chaotic phase, `chi_perp > 1`); it is
    infinite on the critical line. `xi_par` is the same for the variance.

    **Arguments:**

    - `activation`: the activation.
    - `c_w`, `c_b`: the weight and bias variances.
    - `k0`: the starting variance of `kernel_fixed_point`.
    - `throw`: passed to `kernel_fixed_point`.

    **Returns:** `(xi_par, xi_perp)`, positive (`inf` at exactly `chi = 1`).
    """
    k_star = kernel_fixed_point(activation, c_w=c_w, c_b=c_b, k0=k0, throw=throw)
    chi_par, chi_perp = susceptibilities(activation, k_star, c_w=c_w)
    return 1 / jnp.abs(jnp.log(chi_par)), 1 / jnp.abs(jnp.log(chi_perp))


@eqx.filter_jit
def input_gradient_norms(
    activation: Activation,
    depth: int,
    k0: Float[ArrayLike, ""],
    *,
    c_w: Float[ArrayLike, ""],
    c_b: Float[ArrayLike, ""] = 0.0,
) -> Float[Array, " {depth}"]:
    """The mean squared input-gradient norm `E |d z^l_i / d x|^2` for `l = 1..depth`.

    At infinite width `E |d z^1_i / d x|^2 = C_W` and each layer multiplies it by
    `C_W <s'^2>_{K^l} = chi_perp(K^l)`, so it is `C_W prod_{l' < l} chi_perp(K^l')`:
    constant at criticality, exploding or vanishing as `chi_perp^l` off it
    (Roberts, Yaida and Hanin, 2022, section 9.4; exact at any width for ReLU).

    **Arguments:** as `kernel_recursion` with a single input.

    **Returns:** the norms, shape `(depth,)`.
    """
    ks = kernel_recursion(activation, depth, k0, c_w=c_w, c_b=c_b)
    if ks.ndim != 1:
        raise ValueError("`k0` must be a scalar variance.")
    chi_perp = jax.vmap(lambda k: susceptibilities(activation, k, c_w=c_w)[1])(ks)
    growth = jnp.concatenate([jnp.ones((1,), ks.dtype), chi_perp[:-1]])
    return c_w * jnp.cumprod(growth)
