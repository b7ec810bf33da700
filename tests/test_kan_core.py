import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from jaxtyping import Array, Float

import jaxmodels.kan as kan

from .helpers import jaxtyping_off


def _np_bspline(x: float, t: np.ndarray, k: int) -> np.ndarray:
    """The textbook Cox-de Boor recursion, one spline at a time, in float64."""

    def b(i, p):
        if p == 0:
            return float(t[i] <= x < t[i + 1])
        out = 0.0
        if t[i + p] != t[i]:
            out += (x - t[i]) / (t[i + p] - t[i]) * b(i, p - 1)
        if t[i + p + 1] != t[i + 1]:
            out += (t[i + p + 1] - x) / (t[i + p + 1] - t[i + 1]) * b(i + 1, p - 1)
        return out

    return np.array([b(i, k) for i in range(len(t) - k - 1)])


def _np_design(xs: np.ndarray, t: np.ndarray, k: int) -> np.ndarray:
    return np.stack([_np_bspline(float(x), t, k) for x in xs])


def _np_edges(layer: kan.KANLayer, x: np.ndarray) -> np.ndarray:
    """Every edge of a B-spline SiLU KAN layer at one input, from its fields."""
    x = np.asarray(x, np.float64)
    grid = np.asarray(layer.basis.grid, np.float64)
    coef = np.asarray(layer.coef, np.float64)
    basis = np.stack(
        [_np_bspline(float(xi), g, layer.basis.order) for xi, g in zip(x, grid)]
    )
    spline = np.einsum("jik,ik->ji", coef, basis)
    silu = x / (1 + np.exp(-x))
    return np.asarray(layer.mask) * (
        np.asarray(layer.scale_base) * silu + np.asarray(layer.scale_spline) * spline
    )


_basis_at = jax.jit(jax.vmap(kan.bspline, in_axes=(0, None, None)), static_argnums=2)


def test_bspline_partition_of_unity_scipy_and_derivative(x64):
    scipy_interpolate = pytest.importorskip("scipy.interpolate")
    rng = np.random.default_rng(0)
    k = 3
    # Non-uniform knots, so that nothing relies on uniform spacing.
    t = np.sort(rng.uniform(-1.0, 1.0, 12))
    x = np.linspace(t[k], t[-k - 1], 57, endpoint=False)
    b = np.asarray(_basis_at(jnp.asarray(x), jnp.asarray(t), k))
    assert b.shape == (57, len(t) - k - 1)
    np.testing.assert_allclose(b.sum(-1), 1.0, atol=1e-13)
    assert b.min() >= 0.0
    ref = scipy_interpolate.BSpline.design_matrix(x, t, k).toarray()
    np.testing.assert_allclose(b, ref, atol=1e-13)
    # Outside the knots every spline is zero.
    out = _basis_at(jnp.array([t[0] - 0.1, t[-1] + 0.1]), jnp.asarray(t), k)
    assert float(jnp.abs(out).max()) == 0.0
    # The derivative relation B'_{i,k} = k B_{i,k-1} / (t_{i+k} - t_i)
    # - k B_{i+1,k-1} / (t_{i+k+1} - t_{i+1}).
    d = np.asarray(
        jax.jit(
            jax.vmap(jax.jacfwd(kan.bspline), in_axes=(0, None, None)),
            static_argnums=2,
        )(jnp.asarray(x), jnp.asarray(t), k)
    )
    low = _np_design(x, t, k - 1)
    expect = k * low[:, :-1] / (t[k:-1] - t[: -k - 1]) - k * low[:, 1:] / (
        t[k + 1 :] - t[1:-k]
    )
    np.testing.assert_allclose(d, expect, atol=1e-10)


@pytest.mark.parametrize("k", [0, 1, 2, 3, 4])
def test_bspline_with_repeated_knots_matches_the_textbook_recursion(x64, k):
    # Repeated knots (clamped ends, a double interior knot) make some knot differences
    # zero, the terms they divide taken as zero; bspline computes the recursion window
    # by window, so check it against the one-spline-at-a-time recursion at every order,
    # with the derivative from the order k - 1 splines.
    t = np.array([-1.0] * (k + 1) + [-0.4, 0.1, 0.1, 0.6] + [1.0] * (k + 1))
    x = np.linspace(-1.0, 1.0, 41, endpoint=False)
    b = np.asarray(_basis_at(jnp.asarray(x), jnp.asarray(t), k))
    np.testing.assert_allclose(b, _np_design(x, t, k), atol=1e-14)
    np.testing.assert_allclose(b.sum(-1), 1.0, atol=1e-13)
    d = np.asarray(
        jax.jit(
            jax.vmap(jax.jacfwd(kan.bspline), in_axes=(0, None, None)),
            static_argnums=2,
        )(jnp.asarray(x), jnp.asarray(t), k)
    )
    if k == 0:
        np.testing.assert_array_equal(d, 0.0)
        return
    low = _np_design(x, t, k - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        left = np.where(t[k:-1] > t[: -k - 1], k / (t[k:-1] - t[: -k - 1]), 0.0)
        right = np.where(t[k + 1 :] > t[1:-k], k / (t[k + 1 :] - t[1:-k]), 0.0)
    np.testing.assert_allclose(d, left * low[:, :-1] - right * low[:, 1:], atol=1e-12)


def test_bspline_derivatives_match_finite_differences(x64):
    # bspline's derivative is hand-given (a custom JVP); check it, its reverse mode and
    # its second derivative against central differences of the values, on non-uniform
    # knots away from them (the splines are smooth between knots).
    t = jnp.asarray([-1.3, -1.0, -0.7, -0.1, 0.2, 0.25, 0.8, 1.1, 1.6, 2.0])
    k = 3
    x = jnp.asarray([-0.4, 0.0, 0.5, 0.9, 1.3])
    f = lambda v: kan.bspline(v, t, k)  # noqa: E731
    eps = 1e-5
    fd1 = (jax.vmap(f)(x + eps) - jax.vmap(f)(x - eps)) / (2 * eps)
    fwd = jax.vmap(jax.jacfwd(f))(x)
    rev = jax.vmap(jax.jacrev(f))(x)
    np.testing.assert_allclose(fwd, fd1, atol=1e-8)
    np.testing.assert_allclose(rev, fwd, atol=1e-14)
    d1 = jax.jacfwd(f)
    fd2 = (jax.vmap(d1)(x + eps) - jax.vmap(d1)(x - eps)) / (2 * eps)
    np.testing.assert_allclose(jax.vmap(jax.jacfwd(d1))(x), fd2, atol=1e-6)
    assert float(jnp.abs(fd2).max()) > 0.1


def test_bspline_reproduces_polynomials_up_to_its_order(x64):
    k = 3
    basis = kan.BSpline(1, grid_size=6, order=k, grid_range=(-1.0, 2.0))
    x = np.linspace(-1.0, 2.0, 80, endpoint=False)
    a = np.asarray(jax.jit(jax.vmap(basis))(jnp.asarray(x[:, None])))[:, 0, :]
    assert a.shape == (80, 6 + k)

    def residual(y):
        c = np.linalg.lstsq(a, y, rcond=None)[0]
        return np.abs(a @ c - y).max()

    for degree in range(k + 1):
        assert residual((x - 0.3) ** degree) < 1e-12, degree
    # Degree order + 1 is not in the spline space.
    assert residual((x - 0.3) ** (k + 1)) > 1e-5
    # The uniform grid of G intervals on grid_range, extended by k knots each side.
    h = 3.0 / 6
    np.testing.assert_allclose(
        basis.grid[0], -1.0 + h * np.arange(-k, 6 + k + 1), atol=1e-14
    )


@eqx.filter_jit
def _edges(layer, xs):
    return jax.vmap(layer.edges)(xs)


def test_layer_edges_and_network_match_numpy(x64):
    model = kan.KAN([3, 4, 2], key=jr.key(0))
    layer = model.layers[0]
    assert layer.coef.shape == (4, 3, 8)
    assert layer.scale_base.shape == layer.mask.shape == (4, 3)
    # Make every field matter: a non-trivial mask and scales.
    layer = eqx.tree_at(
        lambda m: (m.mask, m.scale_spline),
        layer,
        (layer.mask.at[1, 2].set(0.0), layer.scale_spline * 1.7),
    )
    model = eqx.tree_at(lambda m: m.layers[0], model, layer)
    xs = np.random.default_rng(1).uniform(-1.2, 1.2, (5, 3))
    got = np.asarray(_edges(layer, jnp.asarray(xs)))
    expect = np.stack([_np_edges(layer, x) for x in xs])
    np.testing.assert_allclose(got, expect, atol=1e-12)
    assert np.all(got[:, 1, 2] == 0.0)

    @eqx.filter_jit
    def forward(m, xs):
        return jax.vmap(m)(xs), jax.vmap(m.activations)(xs)

    out, acts = forward(model, jnp.asarray(xs))
    hidden = expect.sum(-1)
    expect_out = np.stack([_np_edges(model.layers[1], h).sum(-1) for h in hidden])
    np.testing.assert_allclose(out, expect_out, atol=1e-12)
    np.testing.assert_allclose(acts[0][1], expect, atol=1e-12)
    np.testing.assert_allclose(acts[1][0], hidden, atol=1e-12)
    # edge_curves: each edge on a grid spanning the B-spline grid.
    xs_c, ys_c = eqx.filter_jit(kan.edge_curves)(model.layers[1], n=7)
    assert xs_c.shape == (4, 7) and ys_c.shape == (2, 4, 7)
    np.testing.assert_allclose(xs_c[:, 0], -1.0)
    np.testing.assert_allclose(xs_c[:, -1], 1.0)
    np.testing.assert_allclose(ys_c[:, :, 3], _np_edges(model.layers[1], xs_c[:, 3]))


def _single_layer(grid_size, order=3):
    model = kan.KAN(
        [2, 3],
        basis=lambda n: kan.BSpline(n, grid_size=grid_size, order=order),
        key=jr.key(3),
    )
    # Coefficients of order one, so that the function is far from flat.
    coef = jnp.asarray(np.random.default_rng(2).normal(size=model.layers[0].coef.shape))
    return eqx.tree_at(lambda m: m.layers[0].coef, model, coef)


_splines = eqx.filter_jit(lambda layer, xs: jax.vmap(layer.spline)(xs))
_outputs = eqx.filter_jit(lambda model, xs: jax.vmap(model)(xs))


def _spline_values(layer, xs):
    return np.asarray(_splines(layer, jnp.asarray(xs)))


def test_extend_grid_is_the_least_squares_fit(x64):
    model = _single_layer(5)
    layer = model.layers[0]
    xs = np.random.default_rng(4).uniform(-1.0, 1.0, (60, 2))
    old = _spline_values(layer, xs)
    # G -> 7: not nested; the fit is the least-squares optimum on the same points.
    fine = kan.extend_grid(model, jnp.asarray(xs), 7, dense=False).layers[0]
    assert fine.basis.grid_size == 7 and fine.coef.shape == (3, 2, 10)
    new = _spline_values(fine, xs)
    grid = np.asarray(fine.basis.grid)
    np.testing.assert_allclose(grid[:, 3:-3], np.tile(np.linspace(-1, 1, 8), (2, 1)))
    for i in range(2):
        a = _np_design(xs[:, i], grid[i], 3)
        for j in range(3):
            c = np.linalg.lstsq(a, old[:, j, i], rcond=None)[0]
            best = np.linalg.norm(a @ c - old[:, j, i])
            got = np.linalg.norm(new[:, j, i] - old[:, j, i])
            assert best > 1e-4  # a real approximation, not an exact fit
            assert got <= best * (1 + 1e-8), (i, j)
    # G -> 2G: every coarse knot is a fine knot, the coarse spline is reproduced.
    fine = kan.extend_grid(model, jnp.asarray(xs), 10).layers[0]
    test = np.random.default_rng(5).uniform(-1.0, 1.0, (40, 2))
    np.testing.assert_allclose(
        _spline_values(fine, test), _spline_values(layer, test), atol=1e-10
    )
    np.testing.assert_array_equal(fine.scale_base, layer.scale_base)


def test_update_grid_moves_knots_to_percentiles_and_keeps_the_function(x64):
    model = _single_layer(4)
    layer = model.layers[0]
    # Skewed samples, so that the percentile grid differs from the uniform one.
    xs = np.random.default_rng(6).beta(2.0, 5.0, (50, 2)) * 2 - 1
    new_model = kan.update_grid(model, jnp.asarray(xs), grid_eps=0.1)
    new = new_model.layers[0]
    srt = np.sort(xs, axis=0)
    adaptive = srt[[0, 12, 25, 37, 49]].T
    lo, hi = adaptive[:, :1], adaptive[:, -1:]
    uniform = lo + (hi - lo) * np.linspace(0, 1, 5)
    interior = 0.1 * uniform + 0.9 * adaptive
    h = (interior[:, -1:] - interior[:, :1]) / 4
    expect_grid = np.concatenate(
        [interior[:, :1] - h * [3, 2, 1], interior, interior[:, -1:] + h * [1, 2, 3]], 1
    )
    np.testing.assert_allclose(new.basis.grid, expect_grid, atol=1e-14)
    old_v, new_v = _spline_values(layer, xs), _spline_values(new, xs)
    for i in range(2):
        a = _np_design(xs[:, i], expect_grid[i], 3)
        for j in range(3):
            c = np.linalg.lstsq(a, old_v[:, j, i], rcond=None)[0]
            best = np.linalg.norm(a @ c - old_v[:, j, i])
            assert (
                np.linalg.norm(new_v[:, j, i] - old_v[:, j, i])
                <= best * (1 + 1e-8) + 1e-12
            )
    # Edges that are cubic polynomials lie in both spline spaces: kept exactly.
    grid = np.asarray(layer.basis.grid)
    dense = np.linspace(-1.0, 1.0, 41, endpoint=False)
    cubic = np.stack(
        [
            np.linalg.lstsq(
                _np_design(dense, grid[i], 3), dense**3 - dense, rcond=None
            )[0]
            for i in range(2)
        ]
    )
    coef = jnp.asarray(
        np.broadcast_to(cubic, layer.coef.shape)
        * np.array([1.0, 2.0, -1.0])[:, None, None]
    )
    model = eqx.tree_at(lambda m: m.layers[0].coef, model, coef)
    new_model = kan.update_grid(model, jnp.asarray(xs), grid_eps=0.1)
    out_old = np.asarray(_outputs(model, jnp.asarray(xs)))
    out_new = np.asarray(_outputs(new_model, jnp.asarray(xs)))
    np.testing.assert_allclose(out_new, out_old, atol=1e-11)


def test_regularisation_equals_direct_computation(x64):
    model = kan.KAN([2, 3, 1], key=jr.key(7))
    # A pruned edge: zero magnitude, no NaN from its 0 log 0.
    model = eqx.tree_at(
        lambda m: m.layers[0].mask, model, model.layers[0].mask.at[2, 0].set(0.0)
    )
    xs = np.random.default_rng(8).uniform(-1, 1, (6, 2))
    expect = 0.0
    for x_layer in [xs, None]:
        if x_layer is None:
            x_layer = np.stack([_np_edges(model.layers[0], x).sum(-1) for x in xs])
            layer = model.layers[1]
        else:
            layer = model.layers[0]
        a = np.abs(np.stack([_np_edges(layer, x) for x in x_layer])).mean(0)
        p = a / a.sum()
        p = p[p > 0]
        expect += 0.5 * a.sum() + 3.0 * -(p * np.log(p)).sum()

    @eqx.filter_jit
    def reg_and_grad(m, xs):
        return eqx.filter_value_and_grad(
            lambda m: kan.regularisation(m, xs, l1=0.5, entropy=3.0)
        )(m)

    val, grads = reg_and_grad(model, jnp.asarray(xs))
    np.testing.assert_allclose(val, expect, rtol=1e-12)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


def test_jit_vmap_grad_compose_and_grad_matches_finite_differences(x64):
    model = kan.KAN([2, 3, 1], key=jr.key(9))
    xs = jnp.asarray(np.random.default_rng(10).uniform(-1, 1, (8, 2)))
    ys = jnp.sin(xs.sum(-1, keepdims=True))
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def loss(p):
        m = eqx.combine(p, static)
        return jnp.mean((jax.vmap(m)(xs) - ys) ** 2)

    direction = jax.tree.map(
        lambda a: jnp.asarray(np.random.default_rng(a.size).normal(size=a.shape)),
        params,
    )
    # Only trainable directions: the knots and the mask are fixed.
    direction = eqx.tree_at(
        lambda d: (
            [layer.basis.grid for layer in d.layers]
            + [layer.mask for layer in d.layers]
        ),
        direction,
        replace_fn=jnp.zeros_like,
    )

    @jax.jit
    def grad_and_fd(p, v):
        g = jax.grad(loss)(p)
        eps = 1e-6
        plus = jax.tree.map(lambda a, d: a + eps * d, p, v)
        minus = jax.tree.map(lambda a, d: a - eps * d, p, v)
        return g, (loss(plus) - loss(minus)) / (2 * eps)

    g, fd = grad_and_fd(params, direction)
    # The knots and the mask are not trained.
    for layer in g.layers:
        assert float(jnp.abs(layer.basis.grid).max()) == 0.0
        assert float(jnp.abs(layer.mask).max()) == 0.0
    gv = sum(
        float(jnp.vdot(a, d))
        for a, d in zip(jax.tree.leaves(g), jax.tree.leaves(direction))
    )
    np.testing.assert_allclose(gv, fd, rtol=1e-6)
    # vmap of the jitted network equals the example-by-example values.
    batched = _outputs(model, xs)
    call = eqx.filter_jit(lambda m, x: m(x))
    single = jnp.stack([call(model, x) for x in xs[:2]])
    np.testing.assert_allclose(batched[:2], single, atol=1e-12)


class _Monomials(kan.AbstractBasis):
    in_features: int = eqx.field(static=True)

    @property
    def size(self) -> int:
        return 2

    def __call__(
        self, x: Float[Array, " {self.in_features}"]
    ) -> Float[Array, "{self.in_features} 2"]:
        return jnp.stack([x, x**2], -1)


def test_bad_inputs_raise_naming_the_argument():
    with pytest.raises(ValueError, match="widths"):
        kan.KAN([3], key=jr.key(0))
    with pytest.raises(ValueError, match="widths"):
        kan.KAN([2, 0, 1], key=jr.key(0))
    with pytest.raises(ValueError, match="grid_size"):
        kan.BSpline(2, grid_size=0)
    with pytest.raises(ValueError, match="order"):
        kan.BSpline(2, order=-1)
    with pytest.raises(ValueError, match="grid_range"):
        kan.BSpline(2, grid_range=(1.0, 1.0))
    with pytest.raises(ValueError, match="basis"):
        kan.KANLayer(3, 2, basis=kan.BSpline(2), key=jr.key(0))
    model = kan.KAN([2, 2], key=jr.key(0))
    xs = jnp.zeros((20, 2))
    with jaxtyping_off():
        with pytest.raises(ValueError, match="`x`"):
            model(jnp.zeros(3))
        with pytest.raises(ValueError, match="`x`"):
            kan.update_grid(model, jnp.zeros((20, 3)))
    with pytest.raises(ValueError, match="grid_size"):
        kan.extend_grid(model, xs, 3)
    custom = kan.KAN([2, 2], basis=lambda n: _Monomials(n), key=jr.key(0))
    with pytest.raises(ValueError, match="update_grid"):
        kan.update_grid(custom, xs)
    with pytest.raises(ValueError, match="extend_grid"):
        kan.extend_grid(custom, xs, 8)
