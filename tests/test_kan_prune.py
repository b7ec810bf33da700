import functools as ft

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

from jaxmodels import kan

from .helpers import jaxtyping_off


def _np_bspline(x: np.ndarray, grid: np.ndarray, order: int) -> np.ndarray:
    """B-splines by the Cox-de Boor recursion in NumPy: shape (points, size)."""
    x = x[:, None]
    b = ((x >= grid[None, :-1]) & (x < grid[None, 1:])).astype(float)
    for p in range(1, order + 1):
        left = (x - grid[None, : -(p + 1)]) / (grid[p:-1] - grid[: -(p + 1)])
        right = (grid[None, p + 1 :] - x) / (grid[p + 1 :] - grid[1:-p])
        b = left * b[:, :-1] + right * b[:, 1:]
    return b


def _np_edges(layer: kan.KANLayer, x: np.ndarray) -> np.ndarray:
    """An independent NumPy forward pass of one B-spline KAN layer: the edge values,
    shape (batch, out, in)."""
    grid = np.asarray(layer.basis.grid, np.float64)
    coef = np.asarray(layer.coef, np.float64)
    splines = np.stack(
        [
            np.einsum(
                "bk,jk->bj",
                _np_bspline(x[:, i], grid[i], layer.basis.order),
                coef[:, i],
            )
            for i in range(layer.in_features)
        ],
        axis=-1,
    )
    silu = x / (1 + np.exp(-x))
    out = np.asarray(layer.scale_spline) * splines
    out = out + np.asarray(layer.scale_base) * silu[:, None, :]
    return np.asarray(layer.mask) * out


def _np_forward(model: kan.KAN, x: np.ndarray):
    """Edge values of every layer and the output, in NumPy."""
    edges = []
    for layer in model.layers:
        e = _np_edges(layer, x)
        edges.append(e)
        x = e.sum(-1)
    return edges, x


def _build(widths, seed: int, basis=None) -> kan.KAN:
    """A KAN filled from NumPy (no random initialisation to compile): coefficients of
    size ~1, so that edges differ in size, base scales ~1/sqrt(in)."""
    rng = np.random.default_rng(seed)
    model = eqx.filter_eval_shape(kan.KAN, widths, basis=basis, key=jr.key(0))
    layers = []
    for layer in model.layers:
        n_out, n_in = layer.out_features, layer.in_features
        made = kan.BSpline(n_in) if basis is None else basis(n_in)
        layers.append(
            eqx.tree_at(
                lambda lay: (
                    lay.basis,
                    lay.coef,
                    lay.scale_base,
                    lay.scale_spline,
                    lay.mask,
                ),
                layer,
                (
                    made,
                    jnp.asarray(rng.uniform(-1, 1, layer.coef.shape), jnp.float32),
                    jnp.asarray(
                        rng.uniform(-1, 1, (n_out, n_in)) / n_in**0.5, jnp.float32
                    ),
                    jnp.full((n_out, n_in), 1 / n_in**0.5, jnp.float32),
                    jnp.ones((n_out, n_in), jnp.float32),
                ),
            )
        )
    return eqx.tree_at(lambda m: m.layers, model, tuple(layers))


@ft.cache
def _model() -> kan.KAN:
    return _build([2, 3, 1], seed=0)


@ft.cache
def _inputs() -> jnp.ndarray:
    return jnp.asarray(
        np.random.default_rng(0).uniform(-1.0, 1.0, (64, 2)), jnp.float32
    )


_outputs = eqx.filter_jit(lambda model, x: jax.vmap(model)(x))


def test_edge_scores_are_mean_absolute_activations():
    model, x = _model(), _inputs()
    edges, _ = _np_forward(model, np.asarray(x, np.float64))
    scores = kan.edge_scores(model, x)
    assert [s.shape for s in scores] == [(3, 2), (1, 3)]
    for s, e in zip(scores, edges):
        np.testing.assert_allclose(
            np.asarray(s), np.abs(e).mean(0), rtol=1e-4, atol=1e-6
        )


def test_prune_edges_removes_exactly_the_weak_edges():
    model, x = _model(), _inputs()
    scores = [np.asarray(s) for s in kan.edge_scores(model, x)]
    # Between the second and third smallest scores: two edges go.
    ordered = np.sort(np.concatenate([s.ravel() for s in scores]))
    threshold = float(ordered[1] + ordered[2]) / 2
    pruned = kan.prune_edges(model, x, threshold=threshold)
    for s, layer in zip(scores, pruned.layers):
        np.testing.assert_array_equal(np.asarray(layer.mask), (s >= threshold) * 1.0)
    assert sum(int((np.asarray(lay.mask) == 0).sum()) for lay in pruned.layers) == 2
    # The pruned model is the NumPy model with those edges removed.
    edges, _ = _np_forward(pruned, np.asarray(x, np.float64))
    for s, e in zip(kan.edge_scores(pruned, x), edges):
        np.testing.assert_allclose(
            np.asarray(s), np.abs(e).mean(0), rtol=1e-4, atol=1e-6
        )


def test_prune_nodes_drops_a_dead_hidden_node_and_keeps_the_function():
    model, x = _model(), _inputs()
    # Node 1 of the hidden layer has no outgoing edge.
    zero = jnp.zeros(1)
    model = eqx.tree_at(
        lambda m: (m.layers[1].scale_base, m.layers[1].scale_spline),
        model,
        (
            model.layers[1].scale_base.at[:, 1].set(zero),
            model.layers[1].scale_spline.at[:, 1].set(zero),
        ),
    )
    scores = [np.asarray(s) for s in kan.edge_scores(model, x)]
    threshold = 1e-4
    assert scores[0].max(1).min() > threshold and scores[1][:, [0, 2]].min() > threshold
    kept = kan.active_nodes(model, x, threshold=threshold)
    np.testing.assert_array_equal(kept[0], [0, 2])
    pruned = kan.prune_nodes(model, x, threshold=threshold)
    assert pruned.widths == (2, 2, 1)
    # The surviving rows, columns and knots are the original ones.
    coef0, coef1 = (np.asarray(layer.coef) for layer in model.layers)
    np.testing.assert_array_equal(pruned.layers[0].coef, coef0[[0, 2]])
    np.testing.assert_array_equal(pruned.layers[1].coef, coef1[:, [0, 2]])
    grid = np.asarray(model.layers[1].basis.grid)
    np.testing.assert_array_equal(pruned.layers[1].basis.grid, grid[[0, 2]])
    assert pruned.layers[1].basis.in_features == 2
    _, want = _np_forward(model, np.asarray(x, np.float64))
    _, got = _np_forward(pruned, np.asarray(x, np.float64))
    np.testing.assert_allclose(got, want, atol=1e-6)


@ft.cache
def _trained():
    """A [3, 1] KAN trained with the sparsity penalty on f = sin(pi x1) + x2^2, which
    does not depend on x3: full-batch Adam, one jitted scan."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.uniform(-1.0, 1.0, (128, 3)), jnp.float32)
    y = jnp.sin(jnp.pi * x[:, 0]) + x[:, 1] ** 2
    model = _build([3, 1], seed=2)
    optim = optax.adam(2e-2)

    def loss(m):
        mse = jnp.mean((jax.vmap(m)(x)[:, 0] - y) ** 2)
        return mse + 1e-2 * kan.regularisation(m, x)

    @eqx.filter_jit
    def train(m, steps=400):
        params, static = eqx.partition(m, eqx.is_inexact_array)

        def step(carry, _):
            p, state = carry
            g = jax.grad(lambda p: loss(eqx.combine(p, static)))(p)
            updates, state = optim.update(g, state, p)
            return (eqx.apply_updates(p, updates), state), None

        (params, _), _ = jax.lax.scan(step, (params, optim.init(params)), None, steps)
        return eqx.combine(params, static)

    return train(model), x, y, train


def test_pruning_a_trained_model_removes_the_irrelevant_input():
    model, x, y, train = _trained()

    def rmse(m):
        _, out = _np_forward(m, np.asarray(x, np.float64))
        return float(np.sqrt(np.mean((out[:, 0] - np.asarray(y)) ** 2)))

    before = rmse(model)
    assert before < 0.05  # it learned the function
    (scores,) = kan.edge_scores(model, x)
    assert float(scores[0, 2]) < 1e-2 < float(scores[0, :2].min())
    pruned = kan.prune_edges(model, x, threshold=1e-2)
    np.testing.assert_array_equal(pruned.layers[0].mask, [[1.0, 1.0, 0.0]])
    # Removing an edge of magnitude < 1e-2 changes the output by less than that.
    assert abs(rmse(pruned) - before) < 1e-2
    # Training on (the paper's prune-then-retrain): the pruned edge gets no gradient,
    # so its coefficients do not move and it stays zero; the accuracy is kept.
    tuned = train(pruned, steps=400)
    np.testing.assert_array_equal(
        tuned.layers[0].coef[0, 2], pruned.layers[0].coef[0, 2]
    )
    np.testing.assert_array_equal(tuned.layers[0].mask, pruned.layers[0].mask)
    assert rmse(tuned) < before + 1e-2


def test_prune_symbolic_layer_and_wrapped_masks():
    model, x = _model(), _inputs()
    layer = kan.SymbolicLayer(model.layers[1], library=["sin"])
    layer = layer.with_edge(0, 2, "sin", jnp.array([1.0, 0.0, 0.5, 0.0]))
    model = eqx.tree_at(lambda m: m.layers[1], model, layer)
    # Edge pruning sets the mask of the KANLayer inside the SymbolicLayer.
    pruned = kan.prune_edges(model, x, threshold=1e9)
    assert float(jnp.abs(pruned.layers[1].layer.mask).max()) == 0.0
    # Node pruning slices the symbolic parameters with the layer.
    dead = eqx.tree_at(
        lambda m: (m.layers[1].layer.scale_base, m.layers[1].layer.scale_spline),
        model,
        (
            model.layers[1].layer.scale_base.at[:, 0].set(0.0),
            model.layers[1].layer.scale_spline.at[:, 0].set(0.0),
        ),
    )
    small = kan.prune_nodes(dead, x, threshold=1e-4)
    assert small.widths == (2, 2, 1)
    assert isinstance(small.layers[1], kan.SymbolicLayer)
    np.testing.assert_array_equal(small.layers[1].snapped, [[False, True]])
    np.testing.assert_allclose(
        np.asarray(_outputs(small, x)), np.asarray(_outputs(dead, x)), atol=1e-6
    )


class _SharedCentres(kan.AbstractBasis):
    """Gaussian bumps at centres shared by all inputs: not sliceable by input."""

    centres: jnp.ndarray
    in_features: int = eqx.field(static=True)

    def __init__(self, in_features):
        self.in_features = in_features
        self.centres = jnp.linspace(-1.0, 1.0, in_features)

    @property
    def size(self) -> int:
        return self.centres.shape[0]

    def __call__(self, x):
        return jnp.exp(-((x[:, None] - self.centres[None, :]) ** 2))


def test_bad_inputs_raise():
    model, x = _model(), _inputs()
    with jaxtyping_off():
        with pytest.raises(ValueError, match=r"`x` must be .* \(batch, 2\)"):
            kan.edge_scores(model, x[:, :1])
        with pytest.raises(ValueError, match=r"`x` must be .* \(batch, 2\)"):
            kan.prune_nodes(model, x[0])
    with pytest.raises(ValueError, match="`threshold` must be a number >= 0"):
        kan.prune_edges(model, x, threshold=-1.0)
    with pytest.raises(ValueError, match="every node of hidden layer 1.*`threshold`"):
        kan.prune_nodes(model, x, threshold=1e9)
    # A basis whose per-input slicing does not give the same functions.
    odd = _build([2, 3, 1], seed=3, basis=_SharedCentres)
    odd = eqx.tree_at(
        lambda m: m.layers[1].scale_base,
        odd,
        odd.layers[1].scale_base.at[:, 1].set(0.0),
    )
    odd = eqx.tree_at(
        lambda m: m.layers[1].scale_spline,
        odd,
        odd.layers[1].scale_spline.at[:, 1].set(0.0),
    )
    with pytest.raises(ValueError, match="cannot remove inputs of layer 1's basis"):
        kan.prune_nodes(odd, x, threshold=1e-6)
