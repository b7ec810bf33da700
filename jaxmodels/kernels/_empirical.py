"""The empirical neural tangent kernel and NNGP of any Equinox model.

After "Neural Tangent Kernel: Convergence and Generalization in Neural Networks"
(Jacot, Gabriel and Hongler, NeurIPS 2018). For a model `f(theta, x)` with trainable
parameters `theta` (its inexact-array leaves), the empirical NTK is
`Theta(x, x') = J(x) J(x')^T` with `J = df/dtheta`, and the empirical NNGP is the
outer product of the outputs `f(x) f(x')^T`. Both are computed per pair of examples
and, along `trace_axes` of the output, averaged over the diagonal (the convention of
neural-tangents, whose API the `*_fn` functions here mirror), so that a network with
`k` outputs and the default `trace_axes=(-1,)` gives an `(N1, N2)` kernel.

Three implementations agree: `"jacobian"` contracts the two Jacobians leaf by leaf;
`"ntvp"` builds the kernel column by column from NTK-vector products
`J(x1) (J(x2)^T e)` (a VJP then a JVP), never holding a Jacobian; `ntk_operator`
is the matrix-free operator `v -> J (J^T v)` for solves that never form the kernel.
"""

import collections
import math
import string
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
from jaxtyping import Array, Float, PyTree, Shaped

from .._core import check_positive_int


# neural-tangents' `NtkImplementation` values: 0 AUTO, 1 JACOBIAN_CONTRACTION,
# 2 NTK_VECTOR_PRODUCTS, 3 STRUCTURED_DERIVATIVES (here: `structured_ntk`, for models
# whose `eqx.nn.Linear` layers it factorises; Equinox models only).
_IMPLEMENTATIONS = {
    "jacobian": "jacobian",
    "jacobian_contraction": "jacobian",
    "auto": "jacobian",
    "ntvp": "ntvp",
    "ntk_vector_products": "ntvp",
    "structured": "structured",
    "structured_derivatives": "structured",
    0: "jacobian",
    1: "jacobian",
    2: "ntvp",
    3: "structured",
}


def _check_implementation(implementation: Any, *, structured: bool = True) -> str:
    key = implementation.lower() if isinstance(implementation, str) else implementation
    if isinstance(key, bool) or key not in _IMPLEMENTATIONS:
        raise ValueError(
            "`implementation` must be 'jacobian' (or neural-tangents' 0 / 1), "
            "'ntvp' (neural-tangents' 2) or 'structured' (3, Equinox models of "
            f"`eqx.nn.Linear` layers). Got {implementation!r}."
        )
    if not structured and _IMPLEMENTATIONS[key] == "structured":
        raise ValueError(
            "`implementation` 'structured' (3) needs an Equinox model of "
            "`eqx.nn.Linear` layers: use `empirical_ntk(model, ...)` or "
            "`structured_ntk`; for an apply function use 'jacobian' or 'ntvp'."
        )
    return _IMPLEMENTATIONS[key]


def _check_inputs(x1: Any, x2: Any) -> None:
    if jnp.ndim(x1) < 1:
        raise ValueError(
            "`x1` must be a batch of examples with a leading batch axis; got a scalar."
        )
    if x2 is not None and (jnp.ndim(x2) < 1 or jnp.shape(x2)[1:] != x1.shape[1:]):
        raise ValueError(
            "`x2` must be a batch of examples of the same shape as those of `x1`; "
            f"got x1 of shape {x1.shape} and x2 of shape {jnp.shape(x2)}."
        )


def _check_trace_axes(trace_axes: Any, out_ndim: int) -> tuple[int, ...]:
    try:
        axes = tuple(trace_axes)
    except TypeError:
        axes = None
    if axes is None or not all(
        isinstance(a, int) and not isinstance(a, bool) for a in axes
    ):
        raise ValueError(
            f"`trace_axes` must be a tuple of integers; got {trace_axes!r}."
        )
    if not all(-out_ndim <= a < out_ndim for a in axes):
        raise ValueError(
            f"`trace_axes` {trace_axes!r} is out of range for model outputs with "
            f"{out_ndim} axes (a model with a scalar output needs `trace_axes=()`)."
        )
    canonical = tuple(sorted({a % out_ndim for a in axes}))
    if len(canonical) != len(axes):
        raise ValueError(f"`trace_axes` {trace_axes!r} repeats an axis.")
    return canonical


def _contraction(
    out_ndim: int, trace: tuple[int, ...], first: str, second: str
) -> tuple[str, str, str]:
    """Einsum subscripts for the two outputs' axes and the zipped kernel axes.

    Traced axes share a letter (so einsum takes their trace); the others are
    interleaved as neural-tangents does: `(N1, N2, X, X, Y, Y, ...)`.
    """
    letters = iter(string.ascii_letters.replace(first, "").replace(second, ""))
    one, two, zipped = "", "", ""
    for axis in range(out_ndim):
        a = next(letters)
        b = a if axis in trace else next(letters)
        one, two = one + a, two + b
        if axis not in trace:
            zipped += a + b
    return first + one, second + two, first + second + zipped


def _split_model(model: PyTree) -> tuple[PyTree, Callable]:
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def fn(p, x):
        return eqx.combine(p, static)(x)

    return params, fn


def _ntk_block(fn, params, x1, x2, trace, implementation):
    out = jax.eval_shape(fn, params, x1[0])
    out_ndim = len(out.shape)
    size = math.prod(out.shape[a] for a in trace)
    if implementation == "jacobian":
        jac = jax.vmap(jax.jacrev(fn), in_axes=(None, 0))
        j1, j2 = jac(params, x1), jac(params, x2)
        sub1, sub2, sub = _contraction(out_ndim, trace, "A", "B")
        sub = f"{sub1}Z,{sub2}Z->{sub}"

        def contract(a, b):
            a = a.reshape(a.shape[: out_ndim + 1] + (-1,))
            b = b.reshape(b.shape[: out_ndim + 1] + (-1,))
            return jnp.einsum(sub, a, b)

        terms = jtu.tree_leaves(jtu.tree_map(contract, j1, j2))
        kernel = sum(terms[1:], terms[0])
    else:
        batched = jax.vmap(fn, in_axes=(None, 0))
        basis = jnp.eye(math.prod(out.shape), dtype=out.dtype).reshape(
            (-1,) + out.shape
        )

        def columns(x):
            _, pullback = jax.vjp(lambda p: fn(p, x), params)

            def column(e):
                (tangent,) = pullback(e)
                return jax.jvp(lambda p: batched(p, x1), (params,), (tangent,))[1]

            return jax.vmap(column)(basis)

        # Axes (n2, *out2, n1, *out1): column `e` of example `x2[j]` is J(x1) J^T e.
        full = jax.vmap(columns)(x2).reshape(
            (x2.shape[0],) + out.shape + x1.shape[:1] + out.shape
        )
        sub1, sub2, sub = _contraction(out_ndim, trace, "A", "B")
        kernel = jnp.einsum(f"{sub2}{sub1}->{sub}", full)
    return kernel / size


def _nngp_block(fn, params, x1, x2, trace):
    batched = jax.vmap(fn, in_axes=(None, 0))
    f1, f2 = batched(params, x1), batched(params, x2)
    out_ndim = f1.ndim - 1
    sub1, sub2, sub = _contraction(out_ndim, trace, "A", "B")
    size = math.prod(f1.shape[1 + a] for a in trace)
    return jnp.einsum(f"{sub1},{sub2}->{sub}", f1, f2) / size


def _pad_chunks(x, chunk):
    n = x.shape[0]
    chunk = min(chunk, n)
    count = -(-n // chunk)
    # Padding repeats the first example (a valid input), whose rows are cut off.
    pad = jnp.broadcast_to(x[:1], (count * chunk - n,) + x.shape[1:])
    return jnp.concatenate([x, pad]).reshape((count, chunk) + x.shape[1:])


def _blocked(block, x1, x2, chunk_size):
    if chunk_size is None:
        return block(x1, x2)
    c1, c2 = _pad_chunks(x1, chunk_size), _pad_chunks(x2, chunk_size)
    kernel = jax.lax.map(lambda a: jax.lax.map(lambda b: block(a, b), c2), c1)
    kernel = jnp.moveaxis(kernel, 2, 1)
    shape = kernel.shape
    kernel = kernel.reshape((shape[0] * shape[1], shape[2] * shape[3]) + shape[4:])
    return kernel[: x1.shape[0], : x2.shape[0]]


def _prepare(fn, params, x1, x2, trace_axes, chunk_size):
    _check_inputs(x1, x2)
    check_positive_int(chunk_size, "chunk_size", allow_none=True)
    out = jax.eval_shape(fn, params, x1[0])
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise ValueError(
            "The model must return a single array per example; got outputs with "
            f"structure {jtu.tree_structure(out)}."
        )
    trace = _check_trace_axes(trace_axes, len(out.shape))
    return (x1 if x2 is None else x2), trace


@eqx.filter_jit
def empirical_ntk(
    model: PyTree,
    x1: Shaped[Array, "n1 ..."],
    x2: Shaped[Array, "n2 ..."] | None = None,
    *,
    implementation: str | int = "jacobian",
    trace_axes: tuple[int, ...] = (-1,),
    chunk_size: int | None = None,
) -> Float[Array, "n1 n2 ..."]:
    """The empirical NTK `J(x1) J(x2)^T` of an Equinox model.

    The trainable parameters are the model's inexact-array leaves
    (`eqx.filter(model, eqx.is_inexact_array)`); the model is called on one example,
    `model(x) -> array`. Along `trace_axes` of the output the kernel is averaged over
    the diagonal (neural-tangents' convention).

    **Arguments:**

    - `model`: a callable Equinox module (or any pytree callable) on one example.
    - `x1`: the first batch of inputs, shape `(N1, ...)`.
    - `x2`: the second batch, shape `(N2, ...)`; `None` means `x1`.
    - `implementation`: `"jacobian"` (Jacobian contraction), `"ntvp"`
        (NTK-vector products) or `"structured"` (`structured_ntk`: each
        `eqx.nn.Linear`'s Jacobian factorised as an outer product, never formed;
        much the fastest for MLPs); neural-tangents' `NtkImplementation` values 0
        (taken as 1), 1, 2 and 3 are accepted.
    - `trace_axes`: axes of one example's output to average the kernel over.
    - `chunk_size`: if given, the kernel is computed in `chunk_size x chunk_size`
        blocks of examples (`lax.map`), bounding memory; the result is the same.

    **Returns:** the kernel, shape `(N1, N2)` followed by the untraced output axes,
    each twice, interleaved: `(N1, N2, out, out)` for vector outputs and
    `trace_axes=()`.

    **Raises:** `ValueError` naming the argument if the inputs' example shapes
    differ, `trace_axes` does not fit the output, `implementation` is unknown, or
    `chunk_size` is not a positive integer.
    """
    implementation = _check_implementation(implementation)
    params, fn = _split_model(model)
    x2, trace = _prepare(fn, params, x1, x2, trace_axes, chunk_size)

    def block(a, b):
        if implementation == "structured":
            # Imported here: `_structured` builds on this module's checks.
            from ._structured import structured_ntk

            return structured_ntk(model, a, b, trace_axes=trace_axes)
        return _ntk_block(fn, params, a, b, trace, implementation)

    return _blocked(block, x1, x2, chunk_size)


@eqx.filter_jit
def empirical_nngp(
    model: PyTree,
    x1: Shaped[Array, "n1 ..."],
    x2: Shaped[Array, "n2 ..."] | None = None,
    *,
    trace_axes: tuple[int, ...] = (-1,),
    chunk_size: int | None = None,
) -> Float[Array, "n1 n2 ..."]:
    """The empirical NNGP kernel `f(x1) f(x2)^T` of an Equinox model.

    The outer product of the model's outputs (its feature map, for a readout of
    unit scale), averaged along `trace_axes` as in `empirical_ntk`; averaging over
    random initialisations gives the NNGP kernel of the architecture.

    **Arguments:** as `empirical_ntk`, without `implementation`.

    **Returns:** the kernel, of the shape `empirical_ntk` returns.

    **Raises:** `ValueError` naming the argument as `empirical_ntk`.
    """
    params, fn = _split_model(model)
    x2, trace = _prepare(fn, params, x1, x2, trace_axes, chunk_size)
    return _blocked(
        lambda a, b: _nngp_block(fn, params, a, b, trace), x1, x2, chunk_size
    )


def ntk_operator(model: PyTree, x: Shaped[Array, "n ..."]) -> lx.AbstractLinearOperator:
    """The empirical NTK on `x` as a matrix-free, symmetric PSD lineax operator.

    Acts on the flattened outputs of the batch, `v -> J (J^T v)` (one VJP and one
    JVP per product), so that solves with `lineax.CG` never form the kernel. It
    equals `empirical_ntk(model, x, trace_axes=())` with the kernel's axes
    unzipped to `(N, out, N, out)` and flattened to a square matrix.

    **Arguments:**

    - `model`: a callable Equinox module on one example.
    - `x`: a batch of inputs, shape `(N, ...)`.

    **Returns:** a `lineax.FunctionLinearOperator` on vectors of size `N * out`,
    tagged symmetric and positive semidefinite.

    **Raises:** `ValueError` naming `x` if it has no batch axis.
    """
    _check_inputs(x, None)
    params, fn = _split_model(model)
    batched = jax.vmap(fn, in_axes=(None, 0))
    out = jax.eval_shape(batched, params, x)

    def mv(v):
        _, pullback = jax.vjp(lambda p: batched(p, x), params)
        (tangent,) = pullback(v.reshape(out.shape))
        return jax.jvp(lambda p: batched(p, x), (params,), (tangent,))[1].reshape(-1)

    structure = jax.ShapeDtypeStruct((math.prod(out.shape),), out.dtype)
    return lx.FunctionLinearOperator(
        mv, structure, (lx.symmetric_tag, lx.positive_semidefinite_tag)
    )


# neural-tangents-compatible entry points: `f(params, x, **kwargs)` on a batch.


def _per_example(f: Callable, trace_axes: Any, vmap_axes: Any):
    """An NT apply function as a one-example function, and its per-example axes."""
    if vmap_axes is None:
        return f, trace_axes, True
    if (
        isinstance(vmap_axes, int)
        and not isinstance(vmap_axes, bool)
        and vmap_axes == 0
    ):
        try:
            axes = tuple(trace_axes)
        except TypeError:
            raise ValueError(
                f"`trace_axes` must be a tuple of integers; got {trace_axes!r}."
            ) from None
        if any(isinstance(a, int) and a == 0 for a in axes):
            raise ValueError(
                "`trace_axes` cannot contain the batch axis 0 when `vmap_axes=0`."
            )
        axes = tuple(a - 1 if isinstance(a, int) and a > 0 else a for a in axes)

        def one(params, x, **kwargs):
            return f(params, x[None], **kwargs)[0]

        return one, axes, False
    raise ValueError(
        "`vmap_axes` must be 0 (the batch axis of inputs and outputs) or None (no "
        f"batch structure); got {vmap_axes!r}."
    )


class _Applied(eqx.Module):
    fn: Callable = eqx.field(static=True)
    params: PyTree
    kwargs: dict

    def __call__(self, x):
        return self.fn(self.params, x, **self.kwargs)


def _whole_batch(kind, f, params, x1, x2, trace_axes, kwargs):
    """Kernels of an apply function without batch structure: the batched outputs
    are differentiated as a whole (by Jacobian contraction)."""
    _check_inputs(x1, x2)
    x2 = x1 if x2 is None else x2
    out = jax.eval_shape(lambda p: f(p, x1, **kwargs), params)
    trace = _check_trace_axes(trace_axes, len(out.shape))
    if 0 in trace:
        raise ValueError("`trace_axes` cannot contain the batch axis 0.")
    sub1, sub2, sub = _contraction(len(out.shape), trace, "", "")
    size = math.prod(out.shape[a] for a in trace)
    if kind == "nngp":
        f1, f2 = f(params, x1, **kwargs), f(params, x2, **kwargs)
        return jnp.einsum(f"{sub1},{sub2}->{sub}", f1, f2) / size
    j1 = jax.jacrev(lambda p: f(p, x1, **kwargs))(params)
    j2 = jax.jacrev(lambda p: f(p, x2, **kwargs))(params)

    def contract(a, b):
        a = a.reshape(a.shape[: len(out.shape)] + (-1,))
        b = b.reshape(b.shape[: len(out.shape)] + (-1,))
        return jnp.einsum(f"{sub1}Z,{sub2}Z->{sub}", a, b)

    terms = jtu.tree_leaves(jtu.tree_map(contract, j1, j2))
    return sum(terms[1:], terms[0]) / size


def _nt_call(kernel, f, trace_axes, vmap_axes, x1, x2, params, kwargs, **options):
    one, axes, whole = _per_example(f, trace_axes, vmap_axes)
    if whole:
        kind = "nngp" if kernel is empirical_nngp else "ntk"
        return _whole_batch(kind, f, params, x1, x2, trace_axes, kwargs)
    return kernel(_Applied(one, params, kwargs), x1, x2, trace_axes=axes, **options)


def empirical_ntk_fn(
    f: Callable,
    trace_axes: tuple[int, ...] = (-1,),
    vmap_axes: int | None = 0,
    implementation: str | int = "jacobian",
) -> Callable[..., Array]:
    """A neural-tangents-style empirical NTK function of an apply function.

    For porting `neural_tangents.empirical_ntk_fn` code: `f(params, x, **kwargs)`
    applies a network to a batch. With `vmap_axes=0` each output row depends only
    on its input row and the kernel is computed per example (`trace_axes` then
    refer to the batched output, as in neural-tangents); with `vmap_axes=None` the
    batch is differentiated as a whole (always by Jacobian contraction). Keyword
    arguments are passed unchanged to both calls of `f` (random keys are not split).

    **Arguments:**

    - `f`: the apply function `f(params, x, **kwargs) -> outputs`.
    - `trace_axes`: axes of the batched output to average over.
    - `vmap_axes`: 0 or None.
    - `implementation`: as `empirical_ntk`, except `"structured"` (3), which needs
        an Equinox model of `eqx.nn.Linear` layers, not an apply function.

    **Returns:** `ntk_fn(x1, x2, params, **kwargs)`, the kernel of shape
    `(N1, N2, ...)`; `x2=None` means `x1`.

    **Raises:** `ValueError` naming the argument for an unknown `implementation` or
    unsupported `vmap_axes` (and, when called, as `empirical_ntk`).
    """
    implementation = _check_implementation(implementation, structured=False)
    _per_example(f, trace_axes, vmap_axes)

    def ntk_fn(x1, x2, params, **kwargs):
        return _nt_call(
            empirical_ntk,
            f,
            trace_axes,
            vmap_axes,
            x1,
            x2,
            params,
            kwargs,
            implementation=implementation,
        )

    return ntk_fn


def empirical_nngp_fn(
    f: Callable, trace_axes: tuple[int, ...] = (-1,), vmap_axes: int | None = 0
) -> Callable[..., Array]:
    """A neural-tangents-style empirical NNGP function of an apply function.

    As `empirical_ntk_fn`, for the outer product of the outputs.

    **Returns:** `nngp_fn(x1, x2, params, **kwargs)`.

    **Raises:** `ValueError` naming `vmap_axes` if it is neither 0 nor None.
    """
    _per_example(f, trace_axes, vmap_axes)

    def nngp_fn(x1, x2, params, **kwargs):
        return _nt_call(
            empirical_nngp, f, trace_axes, vmap_axes, x1, x2, params, kwargs
        )

    return nngp_fn


def empirical_kernel_fn(
    f: Callable,
    trace_axes: tuple[int, ...] = (-1,),
    vmap_axes: int | None = 0,
    implementation: str | int = "jacobian",
) -> Callable[..., Any]:
    """A neural-tangents-style function returning empirical NNGP and/or NTK.

    **Arguments:** as `empirical_ntk_fn`.

    **Returns:** `kernel_fn(x1, x2, get, params, **kwargs)`: with `get` `"nngp"` or
    `"ntk"` the kernel array; with a tuple of them (or `None`, meaning
    `("nngp", "ntk")`) an `EmpiricalKernel` namedtuple with those fields.

    **Raises:** `ValueError` naming the argument as `empirical_ntk_fn`, and naming
    `get` when it asks for anything but `"nngp"` and `"ntk"`.
    """
    fns = {
        "nngp": empirical_nngp_fn(f, trace_axes, vmap_axes),
        "ntk": empirical_ntk_fn(f, trace_axes, vmap_axes, implementation),
    }

    def kernel_fn(x1, x2, get, params, **kwargs):
        names = ("nngp", "ntk") if get is None else get
        names = (names,) if isinstance(names, str) else tuple(names)
        if not names or any(g not in fns for g in names):
            raise ValueError(
                f"`get` must be 'nngp', 'ntk', a tuple of them or None; got {get!r}."
            )
        values = [fns[g](x1, x2, params, **kwargs) for g in names]
        if isinstance(get, str):
            return values[0]
        return collections.namedtuple("EmpiricalKernel", names)(*values)

    return kernel_fn
