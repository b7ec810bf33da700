"""Pruning of KAN edges and hidden nodes by the magnitude of their activations."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, Float, Int

from ._basis import AbstractBasis
from ._layer import KAN, AbstractKANLayer, KANLayer
from ._symbolic import SymbolicLayer


def _check_batch(model: KAN, x) -> Array:
    n = model.layers[0].in_features
    x = jnp.asarray(x)
    if x.ndim != 2 or x.shape[1] != n or x.shape[0] < 1:
        raise ValueError(
            f"`x` must be a non-empty batch of inputs of shape (batch, {n}), got "
            f"{x.shape}."
        )
    return x


def _check_threshold(threshold) -> float:
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        value = float("nan")
    if isinstance(threshold, bool) or not value >= 0:
        raise ValueError(f"`threshold` must be a number >= 0, got {threshold!r}.")
    return value


@eqx.filter_jit
def _forward(model: KAN, x: Array) -> tuple[tuple[Array, ...], tuple[Array, ...]]:
    """Per layer: the edge scores `(out, in)` and the layer's inputs `(batch, in)`."""
    acts = jax.vmap(model.activations)(x)
    return tuple(jnp.abs(e).mean(0) for _, e in acts), tuple(i for i, _ in acts)


def edge_scores(
    model: KAN, x: Float[Array, "batch in_features"]
) -> tuple[Float[Array, "_ _"], ...]:
    """The magnitude of every edge: its mean absolute activation over a batch.

    Liu et al., "KAN: Kolmogorov-Arnold Networks" (2024), section 2.5.1: the L1 norm
    of an activation function is its mean magnitude over the inputs,
    `|phi_{j,i}|_1 = mean_b |phi_{j,i}(x_{b,i})|`, with `x_{b,i}` the input that edge
    sees for sample `b`. Pruned edges score 0.

    **Arguments:**

    - `model`: the KAN.
    - `x`: a batch of model inputs, shape `(batch, widths[0])`.

    **Returns:** per layer, the scores, shape `(out_features, in_features)`.

    **Raises:** `ValueError` if `x` is not a batch of inputs of the model's width.
    """
    return _forward(model, _check_batch(model, x))[0]


def _is_kan_layer(node) -> bool:
    return isinstance(node, KANLayer)


def _inner(layer: AbstractKANLayer) -> KANLayer:
    """The one `KANLayer` of a layer (itself, or the one a wrapper holds)."""
    found = [
        n
        for n in jtu.tree_leaves(layer, is_leaf=_is_kan_layer)
        if isinstance(n, KANLayer)
    ]
    if len(found) != 1:
        raise ValueError(
            f"a {type(layer).__name__} layer holds {len(found)} KANLayers; pruning "
            "needs exactly one, whose `mask` it sets."
        )
    return found[0]


def prune_edges(
    model: KAN, x: Float[Array, "batch in_features"], *, threshold: float = 1e-2
) -> KAN:
    """Remove the edges whose magnitude is below a threshold.

    Liu et al., "KAN: Kolmogorov-Arnold Networks" (2024), section 2.5.1: after training
    with the sparsity penalty, an edge whose `edge_scores` magnitude is below
    `threshold` is removed by zeroing its mask (so it stays zero under further
    training; the mask is read under `stop_gradient`). Wrapped layers (symbolic,
    compressed) have the mask of the `KANLayer` they hold set.

    **Arguments:**

    - `model`: the KAN.
    - `x`: a batch of model inputs, shape `(batch, widths[0])`.
    - `threshold`: the smallest magnitude an edge keeps.

    **Returns:** the model with the masks of the weak edges set to 0.

    **Raises:** `ValueError` for an `x` of the wrong shape, a negative `threshold`, or
    a layer that does not hold exactly one `KANLayer`.
    """
    threshold = _check_threshold(threshold)
    scores = edge_scores(model, x)
    for k, score in enumerate(scores):
        inner = _inner(model.layers[k])
        mask = jnp.where(score < threshold, 0.0, inner.mask).astype(inner.mask.dtype)

        def where(m, k=k):
            return _inner(m.layers[k]).mask

        model = eqx.tree_at(where, model, mask)
    return model


def active_nodes(
    model: KAN, x: Float[Array, "batch in_features"], *, threshold: float = 1e-2
) -> tuple[Int[np.ndarray, " kept"], ...]:
    """The hidden nodes that node pruning keeps.

    Liu et al., "KAN: Kolmogorov-Arnold Networks" (2024), section 2.5.1: a hidden node
    is important if the largest magnitude (`edge_scores`) of its incoming edges and the
    largest of its outgoing edges both exceed `threshold`.

    **Arguments:** as for `prune_nodes`.

    **Returns:** per hidden layer (`widths[1:-1]`), the indices of the kept nodes.

    **Raises:** `ValueError` for an `x` of the wrong shape or a negative `threshold`.
    """
    threshold = _check_threshold(threshold)
    scores = [np.asarray(s) for s in edge_scores(model, x)]
    return tuple(
        np.nonzero(
            (scores[k - 1].max(axis=1) > threshold)
            & (scores[k].max(axis=0) > threshold)
        )[0]
        for k in range(1, len(scores))
    )


def _rebuild(module: eqx.Module, **changes) -> eqx.Module:
    # Static fields (`in_features`) cannot be set by `eqx.tree_at`; build the instance
    # field by field, as Equinox's own unflattening does, without calling `__init__`.
    new = object.__new__(type(module))
    for field in dataclasses.fields(module):
        value = changes.get(field.name, getattr(module, field.name))
        object.__setattr__(new, field.name, value)
    return new


def _slice_basis(basis: AbstractBasis, index: np.ndarray) -> AbstractBasis:
    """A basis for the inputs `index` only: every array leaf whose leading axis is the
    inputs is sliced, nested bases (mixtures) recursively."""
    n = basis.in_features

    def cut(value):
        if isinstance(value, AbstractBasis):
            return _slice_basis(value, index)
        if isinstance(value, tuple | list) and any(
            isinstance(v, AbstractBasis) for v in value
        ):
            return type(value)(cut(v) for v in value)
        if eqx.is_array(value) and value.ndim >= 1 and value.shape[0] == n:
            return value[index]
        return value

    changes = {f.name: cut(getattr(basis, f.name)) for f in dataclasses.fields(basis)}
    changes["in_features"] = len(index)
    return _rebuild(basis, **changes)


def _slice_kan_layer(layer: KANLayer, rows: np.ndarray, cols: np.ndarray) -> KANLayer:
    changes = {
        name: getattr(layer, name)[rows][:, cols]
        for name in ("coef", "scale_base", "scale_spline", "mask")
    }
    if len(cols) != layer.in_features:
        changes["basis"] = _slice_basis(layer.basis, cols)
    return _rebuild(layer, in_features=len(cols), out_features=len(rows), **changes)


def _slice_layer(
    layer: AbstractKANLayer, rows: np.ndarray, cols: np.ndarray, k: int
) -> AbstractKANLayer:
    if isinstance(layer, KANLayer):
        return _slice_kan_layer(layer, rows, cols)
    if isinstance(layer, SymbolicLayer):
        return _rebuild(
            layer,
            layer=_slice_kan_layer(layer.layer, rows, cols),
            snapped=layer.snapped[rows][:, cols],
            function_index=layer.function_index[rows][:, cols],
            params=layer.params[rows][:, cols],
        )
    raise ValueError(
        f"`model`: layer {k} is a {type(layer).__name__}; node pruning can resize "
        "KANLayer and SymbolicLayer layers only (prune before compressing)."
    )


@eqx.filter_jit
def _sliced_error(old: AbstractBasis, new: AbstractBasis, x: Array, cols: Array):
    want = jax.vmap(old)(x)[:, cols]
    got = jax.vmap(new)(x[:, cols])
    if got.shape != want.shape:
        return jnp.array(jnp.inf)
    return jnp.max(jnp.abs(got - want) / (1 + jnp.abs(want)))


def _check_sliced(old: KANLayer, new: KANLayer, cols, inputs, k: int) -> None:
    """The sliced basis must give the old basis's functions of the kept inputs."""
    if len(cols) == old.in_features:
        return
    try:
        error = float(_sliced_error(old.basis, new.basis, inputs, jnp.asarray(cols)))
        ok = error <= 1e-5
    except (ValueError, TypeError, IndexError):
        ok = False
    if not ok:
        raise ValueError(
            f"`model`: cannot remove inputs of layer {k}'s basis, a "
            f"{type(old.basis).__name__}: slicing its per-input arrays does not give "
            "the same functions of the kept inputs."
        )


def prune_nodes(
    model: KAN, x: Float[Array, "batch in_features"], *, threshold: float = 1e-2
) -> KAN:
    """Remove the unimportant hidden nodes, giving a smaller network.

    Liu et al., "KAN: Kolmogorov-Arnold Networks" (2024), section 2.5.1 (pykan's
    `prune_node`): a hidden node is kept if the largest magnitude of its incoming edges
    and the largest of its outgoing edges both exceed `threshold` (`active_nodes`);
    the others are dropped: the rows of the layer before and the columns of the layer
    after are sliced out (coefficients, scales, mask, symbolic parameters, and the
    per-input arrays of the basis, such as a spline's knots). Inputs and outputs are
    never removed.

    **Arguments:**

    - `model`: the KAN.
    - `x`: a batch of model inputs, shape `(batch, widths[0])`.
    - `threshold`: the magnitude a node's strongest incoming and outgoing edges must
        exceed.

    **Returns:** the smaller model. A node whose outgoing edges are all pruned or zero
    contributes nothing, so the output is unchanged when only such nodes are removed.

    **Raises:** `ValueError` for an `x` of the wrong shape, a negative `threshold`, a
    hidden layer left with no node, a layer that is neither a `KANLayer` nor a
    `SymbolicLayer` next to a removed node, or a basis that cannot be sliced.
    """
    x = _check_batch(model, x)
    kept = active_nodes(model, x, threshold=threshold)
    for k, index in enumerate(kept):
        if len(index) == 0:
            raise ValueError(
                f"every node of hidden layer {k + 1} scores below `threshold` = "
                f"{threshold}; lower it."
            )
    _, inputs = _forward(model, x)
    widths = model.widths
    rows = list(kept) + [np.arange(widths[-1])]
    cols = [np.arange(widths[0])] + list(kept)
    layers = []
    for k, layer in enumerate(model.layers):
        if len(rows[k]) == layer.out_features and len(cols[k]) == layer.in_features:
            layers.append(layer)
            continue
        new = _slice_layer(layer, rows[k], cols[k], k)
        base = new.layer if isinstance(new, SymbolicLayer) else new
        old = layer.layer if isinstance(layer, SymbolicLayer) else layer
        _check_sliced(old, base, cols[k], inputs[k], k)
        layers.append(new)
    return eqx.tree_at(lambda m: m.layers, model, tuple(layers))
