import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import jaxmodels.kan as kan
from jaxmodels._core import RESULTS

from .helpers import jaxtyping_off


# --- K-means ---------------------------------------------------------------------------


@functools.cache
def _blobs():
    """Four well-separated blobs in R^3 (20 points each) and uniform points of the
    same shape, so that both K-means runs share one compilation."""
    centres = np.array([[0, 0, 0], [5, 0, 0], [0, 5, 0], [0, 0, 5]], np.float32)
    labels = np.repeat(np.arange(4), 20)
    rng = np.random.default_rng(0)
    blobs = centres[labels] + 0.3 * rng.standard_normal((80, 3)).astype(np.float32)
    uniform = rng.uniform(size=(80, 3)).astype(np.float32)
    return jnp.asarray(blobs), labels, jnp.asarray(uniform)


def _inertia(points, assignments, k):
    """Sum of squared distances to the means of the clusters of an assignment."""
    points = np.asarray(points, np.float64)
    total = 0.0
    for c in range(k):
        members = points[assignments == c]
        if len(members):
            total += np.sum((members - members.mean(0)) ** 2)
    return total


def test_kmeans_recovers_blobs():
    points, labels, _ = _blobs()
    sol = kan.kmeans(points, 4, key=jr.key(0))
    found = np.asarray(sol.assignments)
    # The same partition up to a permutation of the cluster labels.
    mapping = {int(t): int(found[labels == t][0]) for t in range(4)}
    assert sorted(mapping.values()) == [0, 1, 2, 3]
    assert np.array_equal(found, np.array([mapping[int(t)] for t in labels]))
    assert sol.result == RESULTS.successful
    # The reported inertia is that of the returned centroids and assignments.
    direct = np.sum(
        (np.asarray(points) - np.asarray(sol.centroids)[found]) ** 2, dtype=np.float64
    )
    assert math.isclose(float(sol.inertia), direct, rel_tol=1e-5)
    assert math.isclose(float(sol.inertia), _inertia(points, found, 4), rel_tol=1e-5)
    # No better than a converged K-means: random assignments (with their own means).
    rng = np.random.default_rng(1)
    for _ in range(5):
        random = rng.integers(0, 4, size=80)
        assert float(sol.inertia) <= _inertia(points, random, 4)


def test_kmeans_inertia_non_increasing():
    _, _, points = _blobs()
    sol = kan.kmeans(points, 4, key=jr.key(3))
    history = np.asarray(sol.inertia_history)
    steps = int(sol.num_steps)
    assert steps >= 2  # Lloyd's algorithm did move the K-means++ centres
    assert np.all(np.diff(history) <= 1e-6 * history[0])
    assert history[-1] == pytest.approx(float(sol.inertia))
    assert history[-1] < history[0]
    # A local minimum: each centroid is the mean of its points.
    found = np.asarray(sol.assignments)
    for c in range(4):
        np.testing.assert_allclose(
            np.asarray(sol.centroids)[c],
            np.asarray(points)[found == c].mean(0),
            atol=1e-5,
        )


def test_kmeans_bad_inputs():
    points, _, _ = _blobs()
    with pytest.raises(ValueError, match="`k`"):
        kan.kmeans(points, 0, key=jr.key(0))
    with pytest.raises(ValueError, match="`k`"):
        kan.kmeans(points, 81, key=jr.key(0))
    with jaxtyping_off(), pytest.raises(ValueError, match="`points`"):
        kan.kmeans(points[0], 1, key=jr.key(0))


# --- compression --------------------------------------------------------------------


@functools.cache
def _shared_model():
    """A [3, 4, 2] KAN (B-splines, size 8) whose edges use 3 coefficient vectors per
    layer, and a batch of inputs."""
    model = kan.KAN([3, 4, 2], key=jr.key(0))
    rng = np.random.default_rng(2)
    for i, layer in enumerate(model.layers):
        out_f, in_f, size = layer.coef.shape
        protos = rng.standard_normal((3, size)).astype(np.float32)
        # Every prototype used at least once.
        assign = np.concatenate([np.arange(3), rng.integers(0, 3, out_f * in_f - 3)])
        coef = protos[rng.permutation(assign)].reshape(out_f, in_f, size)
        model = eqx.tree_at(lambda m: m.layers[i].coef, model, jnp.asarray(coef))
    x = jr.uniform(jr.key(1), (16, 3), minval=-1.0, maxval=1.0)
    return model, x


@eqx.filter_jit
def _batched(model, x):
    return jax.vmap(model)(x)


def test_compress_lossless_and_storage():
    model, x = _shared_model()
    small = kan.compress(model, 3, key=jr.key(0))
    assert all(isinstance(layer, kan.CodebookKANLayer) for layer in small.layers)
    np.testing.assert_allclose(_batched(small, x), _batched(model, x), atol=1e-6)
    for layer, original in zip(small.layers, model.layers):
        assert layer.codebook.shape == (3, 8)
        # Each centroid is the mean of identical vectors (equal up to rounding).
        np.testing.assert_allclose(
            layer.codebook[layer.assignments], original.coef, rtol=1e-6, atol=1e-7
        )
    # By hand: 20 edges of 8 coefficients; per layer 3 * 8 floats and 2-bit indices;
    # other leaves: scale_base, scale_spline and mask per edge (3 * 20) and the knots
    # (5 + 2 * 3 + 1 = 12 per input, 3 + 4 inputs).
    s = kan.storage(small)
    assert s["dense_coefficient_bits"] == 20 * 8 * 32
    assert s["coefficient_bits"] == 2 * 3 * 8 * 32 + 20 * 2
    assert s["index_bits"] == 40
    assert s["other_bits"] == 32 * (3 * 20 + 12 * 7)
    assert s["compression_factor"] == pytest.approx(5120 / 1576)
    assert s["total_compression_factor"] == pytest.approx(
        (5120 + 32 * 144) / (1576 + 32 * 144)
    )
    dense = kan.storage(model)
    assert dense["compression_factor"] == 1.0
    assert dense["coefficient_bits"] == 5120


def test_compress_bad_inputs():
    model, _ = _shared_model()
    with pytest.raises(ValueError, match="`k`"):
        kan.compress(model, 0, key=jr.key(0))
    with pytest.raises(ValueError, match="`k`"):
        kan.compress(model, 9, key=jr.key(0))  # the second layer has 8 edges
    with jaxtyping_off(), pytest.raises(ValueError, match="`model`"):
        kan.compress(model.layers[0], 2, key=jr.key(0))
    layer = model.layers[0]
    with pytest.raises(ValueError, match="`codebook`"):
        kan.CodebookKANLayer(layer, jnp.zeros((3, 7)), jnp.zeros((4, 3), jnp.int32))
    with pytest.raises(ValueError, match="`assignments`"):
        kan.CodebookKANLayer(layer, jnp.zeros((3, 8)), jnp.zeros((3, 4), jnp.int32))


def test_codebook_grad_jit_vmap():
    model, x = _shared_model()
    small = kan.compress(model, 3, key=jr.key(0))

    def loss(codebook):
        m = eqx.tree_at(lambda m: m.layers[-1].codebook, small, codebook)
        return jnp.sum(jax.vmap(m)(x) ** 2)

    codebook = small.layers[-1].codebook
    value, grad = jax.jit(jax.value_and_grad(loss))(codebook)
    # The output is linear in the last layer's codebook, so the loss is quadratic in
    # it and a central difference is exact (up to rounding).
    direction = jr.normal(jr.key(5), codebook.shape)
    eps = 1e-2
    fd = (loss(codebook + eps * direction) - loss(codebook - eps * direction)) / (
        2 * eps
    )
    assert float(jnp.vdot(grad, direction)) == pytest.approx(float(fd), rel=1e-3)
    assert float(value) == pytest.approx(float(loss(codebook)), rel=1e-6)


# --- MetaKAN layers -------------------------------------------------------------------


def test_meta_layer_edges_match_generated_kan_layer():
    layer = _shared_model()[0].layers[0]
    meta = kan.MetaKANLayer(layer, embedding_size=2, width=8, depth=1, key=jr.key(1))
    assert meta.embedding.shape == (4, 3, 2)
    # The generated coefficients, computed by hand from the MLP's weights.
    e = np.asarray(meta.embedding, np.float64)
    (l1, l2) = meta.meta.layers
    h = e @ np.asarray(l1.weight, np.float64).T + np.asarray(l1.bias)
    h = h / (1 + np.exp(-h))
    coef = h @ np.asarray(l2.weight, np.float64).T + np.asarray(l2.bias)
    np.testing.assert_allclose(meta.coefficients(), coef, rtol=1e-5, atol=1e-6)
    x = jnp.array([-0.7, 0.1, 0.55])
    edges, called = eqx.filter_jit(lambda m, x: (m.edges(x), m(x)))(meta, x)
    # The KAN edge formula, evaluated directly: w_b silu(x) + w_s sum_k c_k B_k(x).
    xn = np.asarray(x, np.float64)
    basis = np.asarray(layer.basis(x), np.float64)
    expected = np.asarray(layer.scale_base) * (xn / (1 + np.exp(-xn))) + np.asarray(
        layer.scale_spline
    ) * np.einsum("jik,ik->ji", coef, basis)
    np.testing.assert_allclose(edges, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(called, expected.sum(1), rtol=1e-5, atol=1e-6)


def test_meta_kan_jit_vmap_grad_and_compress():
    base, x = _shared_model()
    model = kan.meta_kan(base, embedding_size=2, width=8, depth=1, key=jr.key(1))
    assert all(isinstance(layer, kan.MetaKANLayer) for layer in model.layers)

    @eqx.filter_jit
    def run(m):
        def loss(m):
            return jnp.sum(jax.vmap(m)(x) ** 2)

        one_by_one = jnp.stack([m(x[i]) for i in range(3)])
        return jax.vmap(m)(x), one_by_one, eqx.filter_grad(loss)(m)

    batched, one_by_one, g = run(model)
    np.testing.assert_allclose(batched[:3], one_by_one, rtol=1e-6, atol=1e-7)
    for layer in g.layers:
        assert jnp.all(jnp.isfinite(layer.embedding))
        assert jnp.any(layer.embedding != 0)
    # Storage of a MetaKAN: the embeddings and the meta-learners' parameters.
    s = kan.storage(model)
    meta_params = sum(
        layer.embedding.size
        + sum(
            leaf.size for leaf in jax.tree.leaves(eqx.filter(layer.meta, eqx.is_array))
        )
        for layer in model.layers
    )
    assert s["coefficients"] == meta_params
    assert s["dense_coefficients"] == 20 * 8
    # Compression of the generated vectors: each centroid is the mean of its edges'.
    small = kan.compress(model, 3, key=jr.key(3))
    for layer, original in zip(small.layers, model.layers):
        coef = np.asarray(original.coefficients()).reshape(-1, 8)
        assign = np.asarray(layer.assignments).reshape(-1)
        for c in range(3):
            np.testing.assert_allclose(
                layer.codebook[c], coef[assign == c].mean(0), rtol=1e-5, atol=1e-6
            )


def test_meta_layer_bad_inputs():
    layer = _shared_model()[0].layers[0]
    with pytest.raises(ValueError, match="`embedding_size`"):
        kan.MetaKANLayer(layer, embedding_size=0, key=jr.key(1))
    with pytest.raises(ValueError, match="`embedding`"):
        kan.MetaKANLayer(
            layer, embedding_size=2, embedding=jnp.zeros((4, 3, 3)), key=jr.key(1)
        )
    with jaxtyping_off(), pytest.raises(ValueError, match="`layer`"):
        kan.MetaKANLayer(kan.KAN([3, 2], key=jr.key(0)), key=jr.key(1))
