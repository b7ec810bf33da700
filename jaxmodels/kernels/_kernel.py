"""The `Kernel` pytree carried through the analytic `stax` layers, and the plumbing
that turns a layer's kernel transform into a neural-tangents-style `kernel_fn`.

After "Neural Tangents: Fast and Easy Infinite Neural Networks in Python" (Novak,
Xiao, Hron, Lee, Alemi, Sohl-Dickstein and Schoenholz, ICLR 2020). In the
infinite-width limit the outputs of a network at inputs `x1`, `x2` are jointly
Gaussian; each layer maps the covariance of its pre-activations (the NNGP kernel)
and the neural tangent kernel of its inputs to those of its outputs. A `Kernel`
holds these matrices for a batch of inputs, with the full location-location
covariance for convolutional inputs (neural-tangents' `diagonal_spatial=False`
layout: shape `(n1, n2, h, h, w, w)` for images).
"""

import collections
import functools as ft
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float


_GETS = ("nngp", "ntk", "cov1", "cov2")


class Kernel(eqx.Module):
    """The covariances of one layer's outputs over two batches of inputs.

    Arrays are leaves; the shapes of the finite network the kernel describes are
    static metadata. With `S` spatial dimensions (0 for vectors, 1 for sequences,
    2 for images), a spatial axis of size `h` appears twice in a row (positions of the
    first and of the second input), as in neural-tangents.

    **Fields:**

    - `nngp`: the NNGP kernel `E[f(x1) f(x2)]` per channel, shape `(n1, n2, h, h, ...)`;
        shape `(n1, h, h, ...)` (only `k(x1_i, x1_i)`) when `diagonal` is set.
    - `ntk`: the neural tangent kernel, the same shape as `nngp`, or `None` when it is
        not being computed.
    - `cov1`: `k(x1_i, x1_i)` (the batch diagonal of the NNGP of `x1` with itself),
        shape `(n1, h, h, ...)`.
    - `cov2`: the same for `x2`, or `None` when `x2` is `x1`.
    - `shape1`, `shape2`: the shapes of the finite layer's outputs for `x1` and `x2`
        (batch first, channels last), used by the standard parameterisation.
    - `is_gaussian`: whether the outputs are mean-zero Gaussian (true after an affine
        layer), which activations require of their inputs.
    - `diagonal`: whether only the batch diagonal is computed (`nngp is cov1`).
    """

    nngp: Float[Array, "..."]
    ntk: Float[Array, "..."] | None
    cov1: Float[Array, "..."]
    cov2: Float[Array, "..."] | None
    shape1: tuple[int, ...] = eqx.field(static=True)
    shape2: tuple[int, ...] = eqx.field(static=True)
    is_gaussian: bool = eqx.field(static=True)
    diagonal: bool = eqx.field(static=True)

    @property
    def spatial_ndim(self) -> int:
        """The number of spatial dimensions `S` (0 for vector inputs)."""
        return len(self.shape1) - 2

    @property
    def batch_ndim(self) -> int:
        """The number of batch axes of `nngp`/`ntk`: 1 if `diagonal`, else 2."""
        return 1 if self.diagonal else 2


def replace(k: Kernel, **changes: Any) -> Kernel:
    """A copy of `k` with some fields changed."""
    fields = dict(
        nngp=k.nngp,
        ntk=k.ntk,
        cov1=k.cov1,
        cov2=k.cov2,
        shape1=k.shape1,
        shape2=k.shape2,
        is_gaussian=k.is_gaussian,
        diagonal=k.diagonal,
    )
    fields.update(changes)
    return Kernel(**fields)


def _spatial_diagonal(cov: Array, batch_ndim: int, spatial_ndim: int) -> Array:
    """`(b..., h, h, w, w)` -> `(b..., h, w)`: the variances at each location."""
    for _ in range(spatial_ndim):
        # `jnp.diagonal` moves the diagonal last, so the order of locations is kept.
        cov = jnp.diagonal(cov, axis1=batch_ndim, axis2=batch_ndim + 1)
    return cov


def _expand(var: Array, side: int, two_batch: bool) -> Array:
    """Reshape per-location variances `(n, h, w)` to broadcast against a kernel.

    `side=0` puts them on the first input's axes (`(n, 1, h, 1, w, 1)` against an
    `(n1, n2, h, h, w, w)` kernel), `side=1` on the second input's.
    """
    n, spatial = var.shape[0], var.shape[1:]
    if two_batch:
        batch = (n, 1) if side == 0 else (1, n)
    else:
        batch = (n,)
    pairs = tuple(x for d in spatial for x in ((d, 1) if side == 0 else (1, d)))
    return var.reshape(batch + pairs)


# An activation's kernel map: given the covariances `c` of two pre-activations with
# variances `s1`, `s2` (broadcastable), it returns `E[phi(u) phi(v)]` and, if asked,
# `E[phi'(u) phi'(v)]`.
PairFn = Callable[[Array, Array, Array, bool], tuple[Array, Array | None]]


def apply_pair_fn(k: Kernel, fn: PairFn) -> Kernel:
    """Apply an activation's kernel map to every covariance a `Kernel` holds."""
    if not k.is_gaussian:
        raise ValueError(
            "The input to an activation must be Gaussian: put an affine layer "
            "(`Dense` or `Conv`) before the activation (after `Flatten`, too)."
        )
    s = k.spatial_ndim
    var1 = _spatial_diagonal(k.cov1, 1, s)
    want_ntk = k.ntk is not None
    if k.diagonal:
        nngp, dot = fn(
            k.nngp, _expand(var1, 0, False), _expand(var1, 1, False), want_ntk
        )
        cov1, cov2 = nngp, None
    else:
        cov1, dot1 = fn(
            k.cov1, _expand(var1, 0, False), _expand(var1, 1, False), want_ntk
        )
        if k.cov2 is None:
            var2, cov2 = var1, None
        else:
            var2 = _spatial_diagonal(k.cov2, 1, s)
            cov2, _ = fn(
                k.cov2, _expand(var2, 0, False), _expand(var2, 1, False), False
            )
        nngp, dot = fn(k.nngp, _expand(var1, 0, True), _expand(var2, 1, True), want_ntk)
        if k.cov2 is None:
            # `nngp[i, i]` and `cov1[i]` come from different reductions and may
            # differ in the last bit, which the square-root singularity of
            # `sqrt(s1 s2 - c^2)` at `c^2 = s1 s2` would amplify (to 1e-4 for `Sign`
            # in float64): the diagonal is taken from the exact `cov1` path.
            i = jnp.arange(nngp.shape[0])
            nngp = nngp.at[i, i].set(cov1)
            dot = None if dot is None else dot.at[i, i].set(dot1)
    ntk = None if k.ntk is None else k.ntk * dot
    return replace(k, nngp=nngp, ntk=ntk, cov1=cov1, cov2=cov2, is_gaussian=False)


def map_covariances(k: Kernel, fn: Callable[[Array], Array], **changes: Any) -> Kernel:
    """Apply the same linear map to `nngp`, `cov1` and `cov2` (not to `ntk`)."""
    nngp = fn(k.nngp)
    if k.diagonal:
        cov1, cov2 = nngp, None
    else:
        cov1 = fn(k.cov1)
        cov2 = None if k.cov2 is None else fn(k.cov2)
    return replace(k, nngp=nngp, cov1=cov1, cov2=cov2, **changes)


@jax.custom_jvp
def safe_sqrt(x: Array) -> Array:
    """`sqrt(max(x, 0))` with derivative 0 at 0 (instead of infinity).

    `sqrt(s1 s2 - c^2)` vanishes on the diagonal of every kernel; its infinite
    derivative there would turn gradients of the kernel into NaN.
    """
    return jnp.sqrt(jnp.maximum(x, 0))


@safe_sqrt.defjvp
def _safe_sqrt_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    y = safe_sqrt(x)
    return y, jnp.where(x > 0, dx / (2 * jnp.where(x > 0, y, 1)), 0)


def _einsum_spec(spatial_ndim: int, diagonal: bool) -> str:
    letters = "hwdtuv"[:spatial_ndim]
    upper = letters.upper()
    pairs = "".join(a + b for a, b in zip(letters, upper))
    if diagonal:
        return f"n{letters}c,n{upper}c->n{pairs}"
    return f"n{letters}c,m{upper}c->nm{pairs}"


def _input_kernel(
    x1: Array, x2: Array | None, compute_ntk: bool, diagonal: bool
) -> Kernel:
    s = x1.ndim - 2
    channels = x1.shape[-1]
    hi = jax.lax.Precision.HIGHEST

    def cov(a: Array, b: Array, diag: bool) -> Array:
        return jnp.einsum(_einsum_spec(s, diag), a, b, precision=hi) / channels

    cov1 = cov(x1, x1, True)
    if diagonal:
        nngp, cov2 = cov1, None
    else:
        cov2 = None if x2 is None else cov(x2, x2, True)
        nngp = cov(x1, x1 if x2 is None else x2, False)
    ntk = jnp.zeros_like(nngp) if compute_ntk else None
    return Kernel(
        nngp=nngp,
        ntk=ntk,
        cov1=cov1,
        cov2=cov2,
        shape1=tuple(x1.shape),
        shape2=tuple(x1.shape if x2 is None else x2.shape),
        is_gaussian=False,
        diagonal=diagonal,
    )


@ft.cache
def _namedtuple(fields: tuple[str, ...]) -> type:
    return collections.namedtuple("Kernel", fields)


def _check_get(get: Any) -> tuple[str, ...] | None:
    if get is None:
        return None
    fields = (get,) if isinstance(get, str) else get
    if (
        not isinstance(fields, tuple | list)
        or len(fields) == 0
        or any(f not in _GETS for f in fields)
    ):
        raise ValueError(
            f"`get` must be None, one of {_GETS} or a tuple of them; got {get!r}."
        )
    return tuple(fields)


def _extract(k: Kernel, get: Any) -> Any:
    if get is None:
        return k
    if isinstance(get, str):
        return getattr(k, get)
    return _namedtuple(tuple(get))(*(getattr(k, f) for f in get))


def _map_kernels(out: Any, fn: Callable[[Kernel], Any]) -> Any:
    if isinstance(out, Kernel):
        return fn(out)
    return [_map_kernels(o, fn) for o in out]


Transform = Callable[[Any], Any]


def _as_input(x: Any, dtype: Any, name: str) -> Array:
    """`x` as a floating array, checked for NaN.

    Concrete inputs (even inside someone else's `jit`) are checked here on the host,
    raising `ValueError`; only traced ones get an `eqx.error_if`, whose host
    callback would keep the compiled kernel out of JAX's compilation cache.
    """
    message = f"`{name}` contains NaN."
    if isinstance(x, jax.core.Tracer):
        x = jnp.asarray(x, dtype)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            x = x.astype(jnp.result_type(float))
        return eqx.error_if(x, jnp.any(jnp.isnan(x)), message)
    with jax.ensure_compile_time_eval():
        x = jnp.asarray(x, dtype)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            x = x.astype(jnp.result_type(float))
        if bool(jnp.any(jnp.isnan(x))):
            raise ValueError(message)
    return x


def make_kernel_fn(transform: Transform) -> Callable[..., Any]:
    """Wrap a layer's `Kernel -> Kernel` transform into a neural-tangents `kernel_fn`."""

    # One compiled program per (shapes, get): op-by-op dispatch of the many small
    # kernel operations would compile each of them separately.
    @eqx.filter_jit
    def compute(x1, x2, get, diagonal):
        compute_ntk = get is None or "ntk" in ((get,) if isinstance(get, str) else get)
        k = _input_kernel(x1, x2, compute_ntk, diagonal)
        return _map_kernels(transform(k), lambda kk: _extract(kk, get))

    def kernel_fn(
        x1: ArrayLike | Kernel | Sequence[Kernel],
        x2: ArrayLike | None = None,
        get: str | Sequence[str] | None = None,
        *,
        diagonal: bool = False,
    ) -> Any:
        """The infinite-width NNGP and NTK of the network at inputs `x1`, `x2`.

        **Arguments:**

        - `x1`: inputs of shape `(n1, features)`, `(n1, width, channels)` or
            `(n1, height, width, channels)`; or a `Kernel` (or list of them, for
            branching layers) to transform.
        - `x2`: inputs of shape `(n2, ...)` with the same trailing shape as `x1`;
            `None` means `x2 = x1` (then only `cov1` is computed, and the kernels'
            batch diagonal is taken from it).
        - `get`: `None` for the `Kernel`; `"nngp"`, `"ntk"`, `"cov1"`, `"cov2"`
            for that array; a tuple of them for a namedtuple of those arrays. The NTK
            is only computed when asked for (or when `get` is `None`).
        - `diagonal`: if `True` (only with `x2=None`), compute only `k(x1_i, x1_i)`
            in `O(n1)` work: the arrays then have shape `(n1, ...)` (`(n1,)` after
            dense or pooling layers).

        **Returns:** the `Kernel`, one array, or a namedtuple of arrays (lists of them
        after a branching layer that has not been merged).

        **Raises:** `ValueError` naming the argument for a bad `get`, inputs of
        mismatched shapes, a wrong rank for the layers, or NaN in `x1`/`x2` (under
        `jax.jit` the NaN check is an Equinox runtime error naming the argument).
        """
        fields = _check_get(get)
        # Hashable for `filter_jit`: a string stays one (one array), lists -> tuples.
        get = get if fields is None or isinstance(get, str) else fields
        if isinstance(x1, Kernel) or isinstance(x1, list | tuple):
            if x2 is not None:
                raise ValueError("`x2` must be None when `x1` is a `Kernel`.")
            return _map_kernels(transform(x1), lambda k: _extract(k, get))
        x1 = _as_input(x1, None, "x1")
        if x1.ndim < 2:
            raise ValueError(
                "`x1` must be a batch of inputs of shape `(n1, ..., channels)` "
                f"(at least 2-D); got shape {x1.shape}."
            )
        if x2 is not None:
            if diagonal:
                raise ValueError("`diagonal=True` needs `x2=None`.")
            x2 = _as_input(x2, x1.dtype, "x2")
            if x2.shape[1:] != x1.shape[1:]:
                raise ValueError(
                    "`x2` must have the same shape as `x1` apart from the batch "
                    f"axis; got x1.shape={x1.shape} and x2.shape={x2.shape}."
                )
        return compute(x1, x2, get, bool(diagonal))

    return kernel_fn
