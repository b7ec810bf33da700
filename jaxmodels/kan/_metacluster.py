"""MetaCluster: meta-learned coefficients, K-means codebooks and compressed KANs."""

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jax import lax
from jaxtyping import Array, Float, Int, PRNGKeyArray

from .._core import RESULTS, check_positive_int, tree_size
from ._layer import KAN, AbstractKANLayer, KANLayer


def _is_none(x: Any) -> bool:
    return x is None


def _with_coef(
    layer: KANLayer, coef: Float[Array, "out_features in_features size"]
) -> KANLayer:
    """`layer` with its coefficients set to `coef` (the stored ones may be `None`)."""
    return eqx.tree_at(lambda layer: layer.coef, layer, coef, is_leaf=_is_none)


def _without_coef(layer: KANLayer) -> KANLayer:
    return eqx.tree_at(lambda layer: layer.coef, layer, None)


# --- K-means ---------------------------------------------------------------------------


class KMeansSolution(eqx.Module):
    """The output of [`jaxmodels.kan.kmeans`][].

    **Fields:**

    - `centroids`: the cluster centres, shape `(k, dim)`.
    - `assignments`: the index of each point's nearest centre, shape `(n,)`, int32.
    - `inertia`: the sum of squared distances of the points to their nearest centres.
    - `inertia_history`: shape `(max_steps + 1,)`: the inertia of the K-means++
        initialisation, then after each Lloyd step; after the last step taken, repeated.
        Lloyd's algorithm never increases it.
    - `num_steps`: the number of Lloyd steps taken.
    - `result`: a `RESULTS` code: `successful` when the assignments stopped changing,
        `max_steps_reached` otherwise.
    """

    centroids: Float[Array, "k dim"]
    assignments: Int[Array, " n"]
    inertia: Float[Array, ""]
    inertia_history: Float[Array, " max_steps_plus_one"]
    num_steps: Int[Array, ""]
    result: RESULTS


def _squared_distances(
    points: Float[Array, "n dim"], centroids: Float[Array, "k dim"]
) -> Float[Array, "n k"]:
    # Differences rather than |p|^2 - 2 p.c + |c|^2: no cancellation, so that the
    # inertia is exactly monotone in floating point too.
    return jnp.sum((points[:, None, :] - centroids[None, :, :]) ** 2, axis=-1)


def _kmeans_plus_plus(
    points: Float[Array, "n dim"], k: int, key: PRNGKeyArray
) -> Float[Array, "k dim"]:
    """K-means++ seeding (Arthur and Vassilvitskii, 2007): each new centre is a point
    drawn with probability proportional to its squared distance to the nearest one."""
    n = points.shape[0]
    # All the randomness up front, and inverse-CDF sampling by counting: random draws
    # and `jr.choice` inside the loop cost seconds of compile time on CPU.
    u = jr.uniform(key, (k,))

    def draw(i, d2):
        cdf = jnp.cumsum(d2)
        # Every point already a centre (fewer distinct points than k): draw uniformly.
        weighted = jnp.sum(cdf <= u[i] * cdf[-1])
        index = jnp.where(cdf[-1] > 0, weighted, jnp.floor(u[i] * n).astype(int))
        return points[jnp.minimum(index, n - 1)]

    first = draw(0, jnp.zeros(n, points.dtype))
    centroids = jnp.zeros((k, points.shape[1]), points.dtype).at[0].set(first)
    d2 = jnp.sum((points - first[None, :]) ** 2, axis=-1)

    def body(i, carry):
        centroids, d2 = carry
        new = draw(i, d2)
        d2 = jnp.minimum(d2, jnp.sum((points - new[None, :]) ** 2, axis=-1))
        return centroids.at[i].set(new), d2

    centroids, _ = lax.fori_loop(1, k, body, (centroids, d2))
    return centroids


@eqx.filter_jit
def kmeans(
    points: Float[Array, "n dim"],
    k: int,
    *,
    key: PRNGKeyArray,
    max_steps: int = 100,
    throw: bool = True,
) -> KMeansSolution:
    """K-means clustering: K-means++ seeding, then Lloyd's algorithm.

    Lloyd's algorithm alternates assigning every point to its nearest centre and moving
    every centre to the mean of its points, which never increases the inertia (the sum
    of squared distances to the nearest centres); it stops when no assignment changes.
    A centre left without points keeps its position. This is the clustering step of
    MetaCluster (Wang et al., "MetaCluster: Enabling Deep Compression of
    Kolmogorov-Arnold Network", 2025), run on the coefficient vectors of a layer's
    edges.

    **Arguments:**

    - `points`: the points to cluster, shape `(n, dim)`.
    - `k`: the number of clusters, `1 <= k <= n`.
    - `key`: a PRNG key for the K-means++ seeding.
    - `max_steps`: the most Lloyd steps to take.
    - `throw`: raise a runtime error if the assignments had not settled after
        `max_steps` steps; else report it in `result`.

    **Returns:** a [`jaxmodels.kan.KMeansSolution`][].

    **Raises:** `ValueError` naming `points` if it is not a non-empty 2-D array, `k`
    if it is not an integer in `[1, n]`, `max_steps` if it is not a positive integer;
    a runtime error if `points` is not finite.
    """
    if points.ndim != 2 or points.shape[0] < 1:
        raise ValueError(
            f"`points` must have shape (n, dim) with n >= 1; got {points.shape}."
        )
    check_positive_int(k, "k")
    n = points.shape[0]
    if k > n:
        raise ValueError(f"`k` must be at most the number of points {n}; got {k}.")
    check_positive_int(max_steps, "max_steps")
    points = eqx.error_if(
        points, ~jnp.all(jnp.isfinite(points)), "`points` must be finite."
    )
    centroids = _kmeans_plus_plus(points, k, key)
    d2 = _squared_distances(points, centroids)
    assignments = jnp.argmin(d2, axis=-1).astype(jnp.int32)
    inertia = jnp.sum(jnp.min(d2, axis=-1))
    history = jnp.full((max_steps + 1,), inertia)

    def cond(carry):
        step, _, _, _, _, changed = carry
        return (step < max_steps) & changed

    def body(carry):
        step, centroids, assignments, _, history, _ = carry
        one_hot = jax.nn.one_hot(assignments, k, dtype=points.dtype)
        counts = jnp.sum(one_hot, axis=0)
        sums = one_hot.T @ points
        centroids = jnp.where(
            counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], centroids
        )
        d2 = _squared_distances(points, centroids)
        new = jnp.argmin(d2, axis=-1).astype(jnp.int32)
        inertia = jnp.sum(jnp.min(d2, axis=-1))
        # Fill the rest of the history too, so that it ends on the final value.
        history = jnp.where(jnp.arange(max_steps + 1) > step, inertia, history)
        changed = jnp.any(new != assignments)
        return step + 1, centroids, new, inertia, history, changed

    init = (jnp.array(0), centroids, assignments, inertia, history, jnp.array(True))
    step, centroids, assignments, inertia, history, changed = lax.while_loop(
        cond, body, init
    )
    result = RESULTS.where(changed, RESULTS.max_steps_reached, RESULTS.successful)
    if throw:
        centroids = result.error_if(centroids, result != RESULTS.successful)
    return KMeansSolution(
        centroids=centroids,
        assignments=assignments,
        inertia=inertia,
        inertia_history=history,
        num_steps=step,
        result=result,
    )


# --- layers ----------------------------------------------------------------------------


class MetaKANLayer(AbstractKANLayer):
    """A KAN layer whose edge coefficients are generated by a meta-learner.

    Every edge `(j, i)` holds a low-dimensional embedding `e_{j,i}`; a small MLP shared
    by the layer (the meta-learner) maps it to the edge's coefficient vector
    `c_{j,i} = meta(e_{j,i})`. Trained jointly with the task loss, the coefficient
    vectors are confined to the image of the meta-learner, a manifold of dimension
    `embedding_size`, which is what makes them clusterable by
    [`jaxmodels.kan.compress`][]: MetaCluster (Wang et al., "MetaCluster: Enabling Deep
    Compression of Kolmogorov-Arnold Network", 2025). Everything but the coefficients
    (basis, grid, base and spline scales, mask) is the wrapped `KANLayer`'s; its own
    coefficients are dropped (stored as `None`).

    **Fields:**

    - `layer`: the wrapped [`jaxmodels.kan.KANLayer`][], with `coef=None`.
    - `embedding`: the edge embeddings, shape `(out_features, in_features,
        embedding_size)`.
    - `meta`: the meta-learner, an `eqx.nn.MLP` from `embedding_size` to the basis
        size.
    """

    layer: KANLayer
    embedding: Float[Array, "out_features in_features embedding_size"]
    meta: eqx.nn.MLP
    in_features: int = eqx.field(static=True)
    out_features: int = eqx.field(static=True)

    def __init__(
        self,
        layer: KANLayer,
        *,
        embedding_size: int = 2,
        width: int = 32,
        depth: int = 2,
        embedding: Float[Array, "out_features in_features embedding_size"]
        | None = None,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `layer`: the `KANLayer` to wrap (its coefficients are discarded).
        - `embedding_size`: the dimension of the edge embeddings.
        - `width`, `depth`: the hidden width and number of hidden layers of the
            meta-learner (SiLU activations).
        - `embedding`: initial edge embeddings, shape `(out_features, in_features,
            embedding_size)`; default standard normal.
        - `key`: a PRNG key for the embeddings and the meta-learner.

        **Raises:** `ValueError` naming `layer` if it is not a `KANLayer`, the size
        argument that is not a positive integer (`depth` may be 0), or `embedding` if
        its shape is not `(out_features, in_features, embedding_size)`.
        """
        if not isinstance(layer, KANLayer):
            raise ValueError(f"`layer` must be a KANLayer; got {type(layer).__name__}.")
        check_positive_int(embedding_size, "embedding_size")
        check_positive_int(width, "width")
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
            raise ValueError(f"`depth` must be a non-negative integer; got {depth!r}.")
        ekey, mkey = jr.split(key)
        out_features, in_features, size = layer.coef.shape
        self.layer = _without_coef(layer)
        shape = (out_features, in_features, embedding_size)
        if embedding is None:
            embedding = jr.normal(ekey, shape)
        elif embedding.shape != shape:
            raise ValueError(
                f"`embedding` must have shape (out_features, in_features, "
                f"embedding_size) = {shape}; got {embedding.shape}."
            )
        self.embedding = embedding
        self.meta = eqx.nn.MLP(
            embedding_size, size, width, depth, activation=jax.nn.silu, key=mkey
        )
        self.in_features = in_features
        self.out_features = out_features

    def coefficients(self) -> Float[Array, "{self.out_features} {self.in_features} _"]:
        """The generated coefficient vectors, shape `(out_features, in_features,
        size)`."""
        return jax.vmap(jax.vmap(self.meta))(self.embedding)

    def edges(
        self, x: Float[Array, " {self.in_features}"]
    ) -> Float[Array, "{self.out_features} {self.in_features}"]:
        """The value `phi_{j,i}(x_i)` of every edge, shape `(out_features,
        in_features)`."""
        return _with_coef(self.layer, self.coefficients()).edges(x)

    def __call__(
        self,
        x: Float[Array, " {self.in_features}"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, " {self.out_features}"]:
        """**Arguments:**

        - `x`: one input vector, shape `(in_features,)`.
        - `key`: unused; for the uniform model signature.

        **Returns:** `sum_i phi_{j,i}(x_i)`, shape `(out_features,)`.
        """
        del key
        return _with_coef(self.layer, self.coefficients())(x)


class CodebookKANLayer(AbstractKANLayer):
    """A KAN layer whose edges share coefficient vectors from a small codebook.

    Edge `(j, i)` uses the coefficient vector `codebook[assignments[j, i]]`; everything
    else (basis, grid, scales, mask) is the wrapped `KANLayer`'s. Made by
    [`jaxmodels.kan.compress`][]; the codebook (and the scales) can then be fine-tuned
    with any optimiser, the integer assignments staying fixed.

    **Fields:**

    - `layer`: the wrapped [`jaxmodels.kan.KANLayer`][], with `coef=None`.
    - `codebook`: the shared coefficient vectors, shape `(k, size)`.
    - `assignments`: the codebook index of every edge, shape `(out_features,
        in_features)`, int32.
    """

    layer: KANLayer
    codebook: Float[Array, "k size"]
    assignments: Int[Array, "out in"]
    in_features: int = eqx.field(static=True)
    out_features: int = eqx.field(static=True)

    def __init__(
        self,
        layer: KANLayer,
        codebook: Float[Array, "k size"],
        assignments: Int[Array, "out in"],
    ):
        """**Arguments:**

        - `layer`: the `KANLayer` to wrap (its coefficients are discarded, so it may
            also have `coef=None`).
        - `codebook`: the shared coefficient vectors, shape `(k, size)`.
        - `assignments`: the codebook index of every edge, shape `(out_features,
            in_features)`, integers in `[0, k)`.

        **Raises:** `ValueError` naming the argument whose type or shape does not fit.
        """
        if not isinstance(layer, KANLayer):
            raise ValueError(f"`layer` must be a KANLayer; got {type(layer).__name__}.")
        out_features, in_features = layer.out_features, layer.in_features
        if codebook.ndim != 2 or codebook.shape[1] != layer.basis.size:
            raise ValueError(
                f"`codebook` must have shape (k, {layer.basis.size}); got "
                f"{codebook.shape}."
            )
        if assignments.shape != (out_features, in_features) or not jnp.issubdtype(
            assignments.dtype, jnp.integer
        ):
            raise ValueError(
                f"`assignments` must be integers of shape ({out_features}, "
                f"{in_features}); got {assignments.dtype} {assignments.shape}."
            )
        self.layer = _without_coef(layer) if layer.coef is not None else layer
        self.codebook = codebook
        self.assignments = assignments.astype(jnp.int32)
        self.in_features = in_features
        self.out_features = out_features

    def edges(
        self, x: Float[Array, " {self.in_features}"]
    ) -> Float[Array, "{self.out_features} {self.in_features}"]:
        """The value `phi_{j,i}(x_i)` of every edge, shape `(out_features,
        in_features)`."""
        return _with_coef(self.layer, self.codebook[self.assignments]).edges(x)

    def __call__(
        self,
        x: Float[Array, " {self.in_features}"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, " {self.out_features}"]:
        """**Arguments:**

        - `x`: one input vector, shape `(in_features,)`.
        - `key`: unused; for the uniform model signature.

        **Returns:** `sum_i phi_{j,i}(x_i)`, shape `(out_features,)`.
        """
        del key
        return _with_coef(self.layer, self.codebook[self.assignments])(x)


# --- model-level operations ---------------------------------------------------------


def meta_kan(
    model: KAN,
    *,
    embedding_size: int = 2,
    width: int = 32,
    depth: int = 2,
    key: PRNGKeyArray,
) -> KAN:
    """Wrap every `KANLayer` of `model` in a [`jaxmodels.kan.MetaKANLayer`][].

    **Arguments:**

    - `model`: a [`jaxmodels.kan.KAN`][].
    - `embedding_size`, `width`, `depth`: as in `MetaKANLayer`.
    - `key`: a PRNG key, split over the layers.

    **Returns:** the KAN with its `KANLayer`s replaced (other layers are kept).

    **Raises:** `ValueError` naming `model` if it is not a `KAN`.
    """
    if not isinstance(model, KAN):
        raise ValueError(f"`model` must be a KAN; got {type(model).__name__}.")
    keys = jr.split(key, len(model.layers))
    layers = tuple(
        MetaKANLayer(
            layer, embedding_size=embedding_size, width=width, depth=depth, key=k
        )
        if isinstance(layer, KANLayer)
        else layer
        for layer, k in zip(model.layers, keys)
    )
    return eqx.tree_at(lambda m: m.layers, model, layers)


def _coefficients(
    layer: AbstractKANLayer, index: int
) -> Float[Array, "out_features in_features size"]:
    if isinstance(layer, MetaKANLayer):
        return layer.coefficients()
    if isinstance(layer, KANLayer):
        return layer.coef
    raise ValueError(
        f"`model` layer {index} is a {type(layer).__name__}; `compress` handles "
        "KANLayer and MetaKANLayer."
    )


def compress(model: KAN, k: int, *, key: PRNGKeyArray, max_steps: int = 100) -> KAN:
    """Compress a KAN by clustering each layer's coefficient vectors (MetaCluster).

    For every layer, the coefficient vectors of its edges (generated by the
    meta-learner for a [`jaxmodels.kan.MetaKANLayer`][], stored for a `KANLayer`) are
    clustered by [`jaxmodels.kan.kmeans`][] into `k` centroids, and the layer is
    replaced by a [`jaxmodels.kan.CodebookKANLayer`][] that stores the centroids and
    one index per edge; the meta-learner and the embeddings are discarded. Every edge
    takes part, pruned ones included (their mask still zeroes them). Fine-tune the
    result briefly (the codebooks and scales are its floating-point leaves) to recover
    the accuracy the clustering lost, as in Wang et al., "MetaCluster: Enabling Deep
    Compression of Kolmogorov-Arnold Network" (2025).

    **Arguments:**

    - `model`: a [`jaxmodels.kan.KAN`][] of `KANLayer`s and/or `MetaKANLayer`s.
    - `k`: the codebook size of every layer, at least 1 and at most the number of
        edges of the smallest layer.
    - `key`: a PRNG key for the K-means++ seeding, split over the layers.
    - `max_steps`: the most Lloyd steps per layer; the clustering is used as it is if
        it has not settled by then.

    **Returns:** the KAN with every layer a `CodebookKANLayer`.

    **Raises:** `ValueError` naming `model` if it is not a KAN or has a layer of
    another kind, naming `k` if it is not an integer in `[1, edges]` for every layer.
    """
    if not isinstance(model, KAN):
        raise ValueError(f"`model` must be a KAN; got {type(model).__name__}.")
    check_positive_int(k, "k")
    edges = min(layer.out_features * layer.in_features for layer in model.layers)
    if k > edges:
        raise ValueError(
            f"`k` must be at most the number of edges of the smallest layer, {edges}; "
            f"got {k}."
        )
    keys = jr.split(key, len(model.layers))
    layers = []
    for i, (layer, layer_key) in enumerate(zip(model.layers, keys)):
        coef = _coefficients(layer, i)
        out_features, in_features, size = coef.shape
        sol = kmeans(
            coef.reshape(-1, size), k, key=layer_key, max_steps=max_steps, throw=False
        )
        inner = layer.layer if isinstance(layer, MetaKANLayer) else layer
        assignments = sol.assignments.reshape(out_features, in_features)
        layers.append(CodebookKANLayer(inner, sol.centroids, assignments))
    return eqx.tree_at(lambda m: m.layers, model, tuple(layers))


def storage(model: KAN) -> dict[str, int | float]:
    """The storage of a KAN's coefficients, before and after compression.

    Counts, over all layers, the bits of the coefficient tensors, which dominate a
    KAN's storage: uncompressed (`dense_coefficient_bits`: `out * in * size` 32-bit
    floats per layer) and as the model stores them (`coefficient_bits`: the same for a
    `KANLayer`; `k * size` 32-bit floats plus `out * in` indices of `ceil(log2 k)`
    bits for a `CodebookKANLayer`; the embeddings and the meta-learner's parameters in
    32-bit floats for a `MetaKANLayer`). Every other floating-point leaf (the base
    and spline scales, the mask, the basis's grid) is counted once, in 32-bit floats,
    as `other_bits`; it is the same before and after compression.

    **Arguments:**

    - `model`: a [`jaxmodels.kan.KAN`][] of `KANLayer`s, `MetaKANLayer`s and
        `CodebookKANLayer`s.

    **Returns:** a dict of Python numbers: `dense_coefficients` and
    `dense_coefficient_bits`, `coefficients` (floats stored for them) and
    `coefficient_bits`, `index_bits`, `other_parameters` and `other_bits`,
    `compression_factor` (`dense_coefficient_bits / coefficient_bits`, the quantity
    MetaCluster reports) and `total_compression_factor` (the same with `other_bits`
    added to both).

    **Raises:** `ValueError` naming `model` if it is not a KAN or has a layer of
    another kind.
    """
    if not isinstance(model, KAN):
        raise ValueError(f"`model` must be a KAN; got {type(model).__name__}.")
    dense = floats = index_bits = other = 0
    for i, layer in enumerate(model.layers):
        if isinstance(layer, KANLayer):
            count = layer.coef.size
            dense += count
            floats += count
            other += tree_size(layer) - count
        elif isinstance(layer, MetaKANLayer):
            dense += (
                layer.embedding.shape[0]
                * layer.embedding.shape[1]
                * (layer.layer.basis.size)
            )
            floats += layer.embedding.size + tree_size(layer.meta)
            other += tree_size(layer.layer)
        elif isinstance(layer, CodebookKANLayer):
            k = layer.codebook.shape[0]
            dense += layer.assignments.size * layer.codebook.shape[1]
            floats += layer.codebook.size
            index_bits += layer.assignments.size * math.ceil(math.log2(k))
            other += tree_size(layer.layer)
        else:
            raise ValueError(
                f"`model` layer {i} is a {type(layer).__name__}; `storage` handles "
                "KANLayer, MetaKANLayer and CodebookKANLayer."
            )
    coefficient_bits = 32 * floats + index_bits
    return {
        "dense_coefficients": dense,
        "dense_coefficient_bits": 32 * dense,
        "coefficients": floats,
        "coefficient_bits": coefficient_bits,
        "index_bits": index_bits,
        "other_parameters": other,
        "other_bits": 32 * other,
        "compression_factor": 32 * dense / coefficient_bits,
        "total_compression_factor": (32 * dense + 32 * other)
        / (coefficient_bits + 32 * other),
    }
