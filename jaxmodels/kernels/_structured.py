"""The empirical NTK by structured derivatives: linear layers never form a Jacobian.

After "Fast Finite Width Neural Tangent Kernel" (Novak, Sohl-Dickstein and Schoenholz,
ICML 2022). For a linear layer `y = W a + b` called once per example, the derivative
of output `o` is `dF_o/dW = delta_o a^T` and `dF_o/db = delta_o`, with `a` the layer's
input and `delta_o = dF_o/dy`. The layer's contribution to `J(x) J(x')^T` is therefore
`(a . a' + 1) sum_h delta_oh delta'_o'h`: a product of two small Gram matrices, with
no Jacobian of size (outputs x parameters) ever held. Every `eqx.nn.Linear` of the
model is wrapped to add a zero "probe" to its output and record its input; one VJP per
output basis vector gives the probes' cotangents, which are the `delta`s. Parameters
outside any `Linear` are contracted through their ordinary Jacobian.
"""

import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.extend.core
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, Float, PyTree, Shaped

from ._empirical import _check_inputs, _check_trace_axes, _contraction


_FALLBACK = "use `empirical_ntk(..., implementation='jacobian')` instead"
_HIDDEN = (
    "`model` calls an `eqx.nn.Linear` inside a transformation (`vmap`, `scan`, "
    "`cond`, `checkpoint`, `jit`) whose inputs structured derivatives cannot see; "
    f"{_FALLBACK}."
)


def _is_linear(node: Any) -> bool:
    return isinstance(node, eqx.nn.Linear)


def _features(n: int | str) -> tuple[int, ...]:
    return () if n == "scalar" else (n,)


class _Probe(eqx.Module):
    """A `Linear` whose output is shifted by `probe` and whose input is recorded."""

    linear: eqx.nn.Linear
    probe: Array
    record: Callable = eqx.field(static=True)

    def __call__(self, x: Array, *, key: Any = None) -> Array:
        expected = _features(self.linear.in_features)
        if jnp.shape(x) != expected:
            raise ValueError(
                "`model` calls an `eqx.nn.Linear` on an input of shape "
                f"{jnp.shape(x)}, not one vector of shape {expected} (a batched or "
                "vmapped call shares its weights across rows, which structured "
                f"derivatives do not factorise); {_FALLBACK}."
            )
        self.record(x)
        return self.linear(x) + self.probe


def _linears(model: PyTree) -> list[eqx.nn.Linear]:
    found = jtu.tree_leaves(model, is_leaf=_is_linear)
    linears = [node for node in found if _is_linear(node)]
    for linear in linears:
        shape = _features(linear.out_features)[:1] or (1,)
        shape += _features(linear.in_features)[:1] or (1,)
        if jnp.shape(linear.weight) != shape:
            raise ValueError(
                "`model` holds an `eqx.nn.Linear` whose weight has shape "
                f"{jnp.shape(linear.weight)}, not {shape} (a stack of layers, as made "
                f"for scan-over-layers); {_FALLBACK}."
            )
    return linears


def _wrap(model: PyTree, probes: list[Array], seen: list[list[Array]]) -> PyTree:
    """Wraps every Linear; `seen[i]` collects layer `i`'s inputs, `None` for a call
    inside a transformation (`vmap`, `scan`, `cond`, `checkpoint`, `jit`), whose
    input is a tracer of an inner trace: JAX would capture it silently as a constant
    and fail only at run time."""
    counter = iter(range(len(probes)))
    entry = jax.extend.core.get_opaque_trace_state()

    def wrap(node):
        if not _is_linear(node):
            return node
        i = next(counter)

        def record(x):
            same = jax.extend.core.get_opaque_trace_state() == entry
            seen[i].append(x if same else None)

        return _Probe(node, probes[i], record)

    return jtu.tree_map(wrap, model, is_leaf=_is_linear)


def _derivatives(model, probes, x):
    """Per example: each Linear's input, each probe's cotangent for every output
    component (the `delta`s) and the Jacobian of the other parameters."""
    spec = jtu.tree_map(
        lambda node: False if _is_linear(node) else eqx.is_inexact_array(node),
        model,
        is_leaf=_is_linear,
    )
    others, rest = eqx.partition(model, spec)

    def fn(probes, others):
        seen = [[] for _ in probes]
        return _wrap(eqx.combine(others, rest), probes, seen)(x), seen

    out, pullback, seen = jax.vjp(fn, probes, others, has_aux=True)
    if any(a is None for s in seen for a in s):
        raise ValueError(_HIDDEN)
    for i, count in enumerate(map(len, seen)):
        if count > 1:
            raise ValueError(
                f"`model` calls its `eqx.nn.Linear` number {i} {count} times per "
                "example (shared weights), which structured derivatives do not "
                f"factorise; {_FALLBACK}."
            )
    basis = jnp.eye(out.size, dtype=out.dtype).reshape((out.size,) + out.shape)
    deltas, jac = jax.vmap(pullback)(basis)
    inputs = [s[0].reshape(-1) if s else None for s in seen]
    deltas = [d.reshape(out.shape + (-1,)) for d in deltas]
    jac = [j.reshape(out.shape + (-1,)) for j in jtu.tree_leaves(jac)]
    return inputs, deltas, jac


@eqx.filter_jit
def structured_ntk(
    model: PyTree,
    x1: Shaped[Array, "n1 ..."],
    x2: Shaped[Array, "n2 ..."] | None = None,
    *,
    trace_axes: tuple[int, ...] = (-1,),
) -> Float[Array, "n1 n2 ..."]:
    """The empirical NTK `J(x1) J(x2)^T` of an Equinox model, by structured derivatives.

    Equals `empirical_ntk(model, x1, x2, trace_axes=trace_axes)` (the trainable
    parameters are the model's inexact-array leaves; along `trace_axes` the kernel is
    averaged over the diagonal), but each `eqx.nn.Linear` contributes
    `(a1 . a2 + 1) (delta1 . delta2)` from its inputs `a` and the derivatives `delta`
    of the outputs with respect to its output, instead of a contraction of its weight
    Jacobians: for an MLP of width `n` the cost per pair of examples falls from
    `O(outputs^2 n^2)` to `O(outputs^2 n)`. Parameters outside any `Linear` are
    handled by Jacobian contraction.

    **Arguments:**

    - `model`: a callable Equinox module on one example, `model(x) -> array`, in
        which every `eqx.nn.Linear` is called exactly once (or never) per example,
        on one vector.
    - `x1`: the first batch of inputs, shape `(N1, ...)`.
    - `x2`: the second batch, shape `(N2, ...)`; `None` means `x1`.
    - `trace_axes`: axes of one example's output to average the kernel over.

    **Returns:** the kernel, shape `(N1, N2)` followed by the untraced output axes,
    each twice, interleaved: `(N1, N2, out, out)` for vector outputs and
    `trace_axes=()`.

    **Raises:** `ValueError` naming `x1` or `x2` if the inputs have no batch axis or
    their example shapes differ, naming `trace_axes` if it does not fit the output,
    and naming `model` if the model returns more than one array, or calls a `Linear`
    more than once per example, on a batched input, or under a transformation
    (`vmap`, `scan`, `checkpoint`) that hides its input; these cases need
    `implementation='jacobian'`.
    """
    _check_inputs(x1, x2)
    out = eqx.filter_eval_shape(model, x1[0])
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise ValueError(
            "`model` must return a single array per example; got outputs with "
            f"structure {jtu.tree_structure(out)}."
        )
    out_ndim = len(out.shape)
    trace = _check_trace_axes(trace_axes, out_ndim)
    size = math.prod(out.shape[a] for a in trace)

    linears = _linears(model)
    probes = [
        jnp.zeros(_features(linear.out_features), jnp.result_type(linear.weight))
        for linear in linears
    ]
    per_example = jax.vmap(lambda x: _derivatives(model, probes, x))
    a1, d1, j1 = per_example(x1)
    a2, d2, j2 = (a1, d1, j1) if x2 is None else per_example(x2)
    sub1, sub2, sub = _contraction(out_ndim, trace, "A", "B")
    terms = []
    for linear, u, v, du, dv in zip(linears, a1, a2, d1, d2):
        if u is None:
            continue  # never called: its parameters do not move the output
        gram = jnp.einsum("Ai,Bi->AB", u, v)
        if linear.bias is not None:
            gram = gram + 1
        terms.append(jnp.einsum(f"AB,{sub1}Z,{sub2}Z->{sub}", gram, du, dv))
    for u, v in zip(j1, j2):
        terms.append(jnp.einsum(f"{sub1}Z,{sub2}Z->{sub}", u, v))
    if not terms:
        shape = (x1.shape[0], (x1 if x2 is None else x2).shape[0])
        shape += tuple(
            n for a, n in enumerate(out.shape) if a not in trace for _ in "ab"
        )
        return jnp.zeros(shape, out.dtype)
    return sum(terms[1:], terms[0]) / size
