import functools as ft

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from jaxmodels import kan

from .helpers import jaxtyping_off


# Every fit in this file uses `N` samples in float64 and the default library, so that
# all of them share one compilation of the fitter.
N = 41
GRID = dict(grid_number=41)


def _samples() -> np.ndarray:
    return np.linspace(-1.0, 1.0, N)


def _np_bspline(x: np.ndarray, grid: np.ndarray, order: int) -> np.ndarray:
    """B-splines by the Cox-de Boor recursion in NumPy: shape (points, size)."""
    x = x[:, None]
    b = ((x >= grid[None, :-1]) & (x < grid[None, 1:])).astype(float)
    for p in range(1, order + 1):
        left = (x - grid[None, : -(p + 1)]) / (grid[p:-1] - grid[: -(p + 1)])
        right = (grid[None, p + 1 :] - x) / (grid[p + 1 :] - grid[1:-p])
        b = left * b[:, :-1] + right * b[:, 1:]
    return b


def _build(widths, targets, lo=-1.0, hi=2.0, grid_size=5, order=3) -> kan.KAN:
    """A float64 B-spline KAN without base activation whose edge `(layer, j, i)` is
    `targets[(layer, j, i)]` (least squares on dense points of the grid's span: exact
    for polynomials up to the spline order), the others zero. Built from the model's
    shapes and NumPy values (no random initialisation to compile)."""
    model = eqx.filter_eval_shape(
        kan.KAN,
        widths,
        basis=lambda n: kan.BSpline(n, grid_size=grid_size, order=order),
        base_activation=None,
        key=jr.key(0),
    )
    h = (hi - lo) / grid_size
    knots = lo + h * np.arange(-order, grid_size + order + 1)
    t = np.linspace(lo, hi, 300)
    design = _np_bspline(t, knots, order)
    layers = []
    for k, layer in enumerate(model.layers):
        n_out, n_in = layer.out_features, layer.in_features
        coef = np.zeros((n_out, n_in, grid_size + order))
        for (kk, j, i), fn in targets.items():
            if kk == k:
                coef[j, i] = np.linalg.lstsq(design, fn(t), rcond=None)[0]
        layers.append(
            eqx.tree_at(
                lambda lay: (
                    lay.basis.grid,
                    lay.coef,
                    lay.scale_base,
                    lay.scale_spline,
                    lay.mask,
                ),
                layer,
                (
                    jnp.asarray(np.tile(knots, (n_in, 1))),
                    jnp.asarray(coef),
                    jnp.zeros((n_out, n_in)),
                    jnp.ones((n_out, n_in)),
                    jnp.ones((n_out, n_in)),
                ),
            )
        )
    return eqx.tree_at(lambda m: m.layers, model, tuple(layers))


@ft.cache
def _composition() -> kan.KAN:
    """A [2, 1, 1] KAN whose edges are exactly x1^2, 0.5 x2 + 0.25 and h^2, so that it
    computes f(x1, x2) = (x1^2 + 0.5 x2 + 0.25)^2."""
    with jax.enable_x64(True):
        return _build(
            [2, 1, 1],
            {
                (0, 0, 0): np.square,
                (0, 0, 1): lambda t: 0.5 * t + 0.25,
                (1, 0, 0): np.square,
            },
        )


def _target(x: np.ndarray) -> np.ndarray:
    return (x[:, 0] ** 2 + 0.5 * x[:, 1] + 0.25) ** 2


@ft.cache
def _inputs() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.uniform(-1.0, 1.0, (N, 2))


# One compiled function per layer type, reused.
_edges = eqx.filter_jit(lambda layer, x: jax.vmap(layer.edges)(x))
_outputs = eqx.filter_jit(lambda model, x: jax.vmap(model)(x))


def _numpy_env(x: np.ndarray) -> dict:
    env = {name: getattr(np, name) for name in ("sin", "exp", "log", "sqrt", "tan")}
    env.update(tanh=np.tanh, arctan=np.arctan, sign=np.sign, abs=np.abs)
    env.update({f"x_{i + 1}": x[:, i] for i in range(x.shape[1])})
    return env


# The functions as `c f(a x + b) + d` and what their parameters determine uniquely:
# sin up to its period and reflections, c exp(a x + b) only through (a, c e^b, d),
# c (a x + b)^2 + d only through its polynomial coefficients.
def _sin_invariants(p):
    a, b, c, d = p
    if a < 0:  # sin(a x + b) = sin(-a x + pi - b)
        a, b = -a, np.pi - b
    if c < 0:  # -c sin(z) = c sin(z + pi)
        c, b = -c, b + np.pi
    return np.array([a, np.mod(b + np.pi, 2 * np.pi) - np.pi, c, d])


def _exp_invariants(p):
    a, b, c, d = p
    return np.array([a, c * np.exp(b), d])


def _square_invariants(p):
    a, b, c, d = p
    return np.array([c * a**2, 2 * a * b * c, c * b**2 + d])


@pytest.mark.parametrize(
    "name, truth, invariants",
    [
        ("sin", (2.0, 0.5, 1.5, 0.3), _sin_invariants),
        ("exp", (1.3, -0.4, 0.7, -0.2), _exp_invariants),
        ("x^2", (1.7, 0.3, -0.8, 0.5), _square_invariants),
    ],
)
def test_fit_symbolic_recovers_clean_data_exactly(x64, name, truth, invariants):
    x = _samples()
    a, b, c, d = truth
    fn = {"sin": np.sin, "exp": np.exp, "x^2": np.square}[name]
    y = c * fn(a * x + b) + d
    params, r2 = kan.fit_symbolic(jnp.asarray(x), jnp.asarray(y), name, **GRID)
    assert params.shape == (4,) and params.dtype == jnp.float64
    assert float(r2) > 1 - 1e-10
    np.testing.assert_allclose(
        invariants(np.asarray(params)), invariants(np.array(truth)), atol=1e-5
    )
    # The fitted function itself, from the returned parameters.
    pa, pb, pc, pd = np.asarray(params)
    np.testing.assert_allclose(pc * fn(pa * x + pb) + pd, y, atol=1e-8)


def test_fit_symbolic_r2_of_a_wrong_function_is_the_linear_fit(x64):
    # For f = x the fit is ordinary linear regression: R^2 = corr(x, y)^2.
    x = _samples()
    y = np.sin(3 * x)
    _, r2 = kan.fit_symbolic(jnp.asarray(x), jnp.asarray(y), "x", **GRID)
    np.testing.assert_allclose(float(r2), np.corrcoef(x, y)[0, 1] ** 2, rtol=1e-9)


def test_suggest_symbolic_ranks_the_true_function_first(x64):
    model = _composition()
    x = jnp.asarray(_inputs())
    ranking = kan.suggest_symbolic(model, 0, 0, 0, x, **GRID)
    names = [name for name, _, _ in ranking]
    assert names[0] == "x^2"
    assert sorted(names) == sorted(kan.SYMBOLIC_LIBRARY)
    r2 = [r for _, r, _ in ranking]
    assert r2[0] > 1 - 1e-10 and r2[0] >= max(r2[1:])
    # The linear edge 0.5 x2 + 0.25: `x` is exact, and the simplest exact function.
    ranking = kan.suggest_symbolic(model, 0, 0, 1, x, **GRID)
    assert ranking[0][0] == "x" and ranking[0][1] > 1 - 1e-10


def test_snapped_edge_evaluates_to_its_formula(x64):
    model = _composition()
    layer = kan.SymbolicLayer(model.layers[0], library=["sin"])
    layer = layer.with_edge(0, 1, "sin", jnp.array([2.0, 0.5, 1.5, 0.3]))
    x = jnp.asarray(_inputs())
    edges = np.asarray(_edges(layer, x))
    xn = np.asarray(x)
    np.testing.assert_allclose(edges[:, 0, 1], 1.5 * np.sin(2 * xn[:, 1] + 0.5) + 0.3)
    # The edge not snapped keeps the spline's function (x1^2, exactly).
    np.testing.assert_allclose(edges[:, 0, 0], xn[:, 0] ** 2, atol=1e-10)
    # A pruned (masked) snapped edge is zero.
    masked = eqx.tree_at(lambda s: s.layer.mask, layer, jnp.array([[1.0, 0.0]]))
    masked_edges = np.asarray(_edges(masked, x))
    assert np.all(masked_edges[:, 0, 1] == 0.0)
    np.testing.assert_allclose(masked_edges[:, 0, 0], edges[:, 0, 0])
    # Snapping to a function outside the layer's library extends the library.
    wider = layer.with_edge(0, 0, "exp", jnp.array([1.0, 0.0, 1.0, 0.0]))
    assert wider.library_names == ("sin", "exp")
    assert int(wider.function_index[0, 0]) == 1 and int(wider.function_index[0, 1]) == 0


def test_auto_symbolic_recovers_the_composition(x64):
    model = _composition()
    xn = _inputs()
    x = jnp.asarray(xn)
    # The constructed KAN computes the composition (splines reproduce polynomials).
    np.testing.assert_allclose(
        np.asarray(_outputs(model, x))[:, 0], _target(xn), atol=1e-10
    )
    snapped = kan.auto_symbolic(model, x, **GRID)
    for layer in snapped.layers:
        assert isinstance(layer, kan.SymbolicLayer)
        assert bool(layer.snapped.all())
    names = [
        [layer.library_names[k] for k in np.asarray(layer.function_index).ravel()]
        for layer in snapped.layers
    ]
    assert names == [["x^2", "x"], ["x^2"]]
    # Fresh points: the snapped model is the composition itself.
    test = np.random.default_rng(1).uniform(-1.0, 1.0, (200, 2))
    out = np.asarray(_outputs(snapped, jnp.asarray(test)))[:, 0]
    np.testing.assert_allclose(out, _target(test), atol=1e-8)
    # The formula, evaluated by NumPy, is the same function.
    (expr,) = kan.formula(snapped, precision=15)
    assert "phi" not in expr
    np.testing.assert_allclose(eval(expr, _numpy_env(test)), _target(test), atol=1e-8)
    # With `x` as variable names and rounded numbers.
    (short,) = kan.formula(snapped, precision=3, variables=["u", "v"])
    assert "u" in short and "v" in short and "x_" not in short


def test_formula_of_an_unsnapped_model_names_the_numeric_edges(x64):
    model = _composition()
    model = eqx.tree_at(lambda m: m.layers[0].mask, model, jnp.array([[1.0, 0.0]]))
    (expr,) = kan.formula(model)
    assert expr == "phi_1_0_0(phi_0_0_0(x_1))"


def test_jit_vmap_grad_through_symbolic_layer(x64):
    model = _composition()
    layer = kan.SymbolicLayer(model.layers[0], library=["sin"]).with_edge(
        0, 0, "sin", jnp.array([2.0, 0.5, 0.5, 0.3])
    )
    xn = _inputs()
    x = jnp.asarray(xn)

    @eqx.filter_jit
    @eqx.filter_grad
    def grad(lay, x):
        return jnp.sum(jax.vmap(lay)(x))

    g = grad(layer, x)
    a, b, c = 2.0, 0.5, 0.5
    z = a * xn[:, 0] + b
    analytic = [
        np.sum(c * np.cos(z) * xn[:, 0]),
        np.sum(c * np.cos(z)),
        np.sum(np.sin(z)),
        float(N),
    ]
    np.testing.assert_allclose(np.asarray(g.params[0, 0]), analytic, rtol=1e-10)
    # The snapped edge's spline receives no gradient, the other edge's does.
    assert float(jnp.abs(g.layer.coef[0, 0]).max()) == 0.0
    assert float(jnp.abs(g.layer.coef[0, 1]).max()) > 0.0
    # A whole model with symbolic layers, jitted and vmapped, differentiated in x.
    snapped = eqx.tree_at(lambda m: m.layers[0], model, layer)
    dfdx = eqx.filter_jit(jax.vmap(jax.grad(lambda x: snapped(x)[0])))(x)
    h = c * np.sin(z) + 0.3 + 0.5 * xn[:, 1] + 0.25
    np.testing.assert_allclose(
        np.asarray(dfdx[:, 0]), 2 * h * c * a * np.cos(z), rtol=1e-8
    )
    np.testing.assert_allclose(np.asarray(dfdx[:, 1]), 2 * h * 0.5, rtol=1e-8)


def test_snap_then_fine_tune_parameters_are_trainable(x64):
    model = _composition()
    x = jnp.asarray(_inputs())
    snapped = kan.snap(model, 1, 0, 0, "x^2", x, **GRID)
    assert isinstance(snapped.layers[1], kan.SymbolicLayer)
    assert bool(snapped.layers[1].snapped[0, 0])
    params = eqx.filter(snapped, eqx.is_inexact_array)
    assert params.layers[1].params is not None
    assert params.layers[1].snapped is None  # bool masks are not trainable
    # Snapping a second edge of the same layer updates the existing SymbolicLayer.
    again = kan.snap(snapped, 0, 0, 1, "x", x, **GRID)
    assert bool(again.layers[0].snapped[0, 1]) and bool(again.layers[1].snapped[0, 0])


def test_bad_inputs_raise(x64):
    model = _composition()
    x = jnp.asarray(_inputs())
    with pytest.raises(ValueError, match=r"`name`.*'cosh'.*known ones.*'sin'"):
        kan.snap(model, 0, 0, 0, "cosh", x)
    with pytest.raises(ValueError, match="`fn`.*known ones"):
        kan.fit_symbolic(x[:, 0], x[:, 1], "cosh")
    with pytest.raises(ValueError, match="`library`.*known ones"):
        kan.suggest_symbolic(model, 0, 0, 0, x, library=["sin", "cosh"])
    with pytest.raises(ValueError, match="`layer` = 2 is out of range"):
        kan.snap(model, 2, 0, 0, "sin", x)
    with pytest.raises(ValueError, match="`out` = 1 is out of range"):
        kan.suggest_symbolic(model, 0, 1, 0, x)
    with pytest.raises(ValueError, match="`in_` = 2 is out of range"):
        kan.snap(model, 0, 0, 2, "sin", x)
    with jaxtyping_off():
        with pytest.raises(ValueError, match=r"`x` must be a batch .* \(batch, 2\)"):
            kan.auto_symbolic(model, x[:, :1])
        with pytest.raises(ValueError, match="`y` must have the shape of `x`"):
            kan.fit_symbolic(x[:, 0], x[:5, 1], "sin")
    with pytest.raises(ValueError, match="`a_range`"):
        kan.fit_symbolic(x[:, 0], x[:, 1], "sin", a_range=(1.0, -1.0))
    with pytest.raises(ValueError, match="`grid_number`"):
        kan.fit_symbolic(x[:, 0], x[:, 1], "sin", grid_number=2)
    with jaxtyping_off(), pytest.raises(ValueError, match="`layer` must be a KANLayer"):
        kan.SymbolicLayer(model)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`variables`"):
        kan.formula(model, variables=["u"])
