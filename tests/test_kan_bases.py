import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

from jaxmodels import data as jmd, kan
from jaxmodels.experiments.kan import bases as kan_bases
from jaxmodels.experiments.kan.feynman import fit_batched

from .helpers import jaxtyping_off, tree_allclose


_X = np.array([-1.7, -0.9, -0.31, 0.0, 0.42, 0.8, 1.3])
# One compiled program per basis call (eager evaluation would compile every op).
_eval = eqx.filter_jit(lambda basis, x: basis(x))


def _key(i):
    # rbg keys: XLA compiles their generator far faster than threefry's.
    return jr.key(i, impl="rbg")


def _fill(module, seed, **arrays):
    """`module` built by shape only (nothing compiled), its random leaves drawn by numpy
    and the named fields (`basis=...`) set; jax.random would compile a kernel per
    shape, most of these tests' time."""
    rng = np.random.default_rng(seed)
    shaped = eqx.filter_eval_shape(module)
    shaped = eqx.tree_at(
        lambda m: [getattr(m, name) for name in arrays],
        shaped,
        list(arrays.values()),
        is_leaf=lambda x: x is None,
    )

    def fill(leaf):
        if isinstance(leaf, jax.ShapeDtypeStruct):
            return jnp.asarray(rng.uniform(-0.5, 0.5, leaf.shape))
        return leaf

    return jax.tree.map(fill, shaped)


def _silu(x):
    return x / (1 + np.exp(-x))


def test_chebyshev_matches_numpy_and_cosines():
    basis = kan.Chebyshev(_X.size, degree=6)
    out = np.asarray(_eval(basis, jnp.asarray(_X)))
    t = np.tanh(_X)
    # numpy's Vandermonde matrix of Chebyshev polynomials, T_n(t) for n = 0..6.
    np.testing.assert_allclose(
        out, np.polynomial.chebyshev.chebvander(t, 6), rtol=1e-5, atol=1e-6
    )
    # T_n(cos theta) = cos(n theta): an identity independent of any recurrence.
    np.testing.assert_allclose(
        out, np.cos(np.arccos(t)[:, None] * np.arange(7)), rtol=1e-4, atol=1e-5
    )
    assert basis.size == 7


def test_fourier_is_orthogonal_on_a_uniform_grid():
    n, k = 16, 3
    x = 2 * np.pi * np.arange(n) / n
    b = np.asarray(_eval(kan.Fourier(n, frequencies=k), jnp.asarray(x)), np.float64)
    np.testing.assert_allclose(
        b[:, :k], np.cos(np.outer(x, np.arange(1, k + 1))), atol=1e-5
    )
    np.testing.assert_allclose(
        b[:, k:], np.sin(np.outer(x, np.arange(1, k + 1))), atol=1e-5
    )
    # Discrete orthogonality of the harmonics below the Nyquist frequency.
    np.testing.assert_allclose(b.T @ b, n / 2 * np.eye(2 * k), atol=1e-4)


def test_gaussian_rbf_values():
    basis = kan.GaussianRBF(_X.size, grid_size=5, grid_range=(-2.0, 2.0))
    c = np.linspace(-2.0, 2.0, 5)
    want = np.exp(-(((_X[:, None] - c[None, :]) / 1.0) ** 2))
    np.testing.assert_allclose(_eval(basis, jnp.asarray(_X)), want, rtol=1e-5)


def test_relukan_bumps_peak_at_one_and_vanish_outside():
    g, k = 4, 2
    basis = kan.ReLUKAN(1, grid_size=g, order=k, grid_range=(-1.0, 1.0))
    h = 2 / g
    s = -1 + h * np.arange(-k, g)
    e = s + (k + 1) * h
    xs = np.concatenate([(s + e) / 2, np.linspace(-2.5, 2.5, 41)])
    out = np.asarray(eqx.filter_jit(jax.vmap(lambda x: basis(x[None])[0]))(xs))
    # At its own midpoint, each bump is exactly 1.
    np.testing.assert_allclose(np.diag(out[: g + k]), 1.0, rtol=1e-6)
    grid = xs[g + k :]
    inside = (grid[:, None] > s) & (grid[:, None] < e)
    assert np.all(out[g + k :][~inside] == 0)
    want = (np.maximum(e - grid[:, None], 0) * np.maximum(grid[:, None] - s, 0)) ** 2
    np.testing.assert_allclose(
        out[g + k :], want * 16 / (e - s) ** 4, rtol=1e-5, atol=1e-7
    )


def test_afkan_against_the_formula():
    basis = kan.AFKAN(_X.size, grid_size=3, order=2, combination="quad2")
    h = 2 / 3
    s = -1 + h * np.arange(-2, 3)
    e = s + 3 * h
    a, b = _silu(_X[:, None] - s), _silu(e - _X[:, None])
    c = _silu(1.5 * h)
    want = (a * b + a**2 + b**2) / (3 * c**2)
    np.testing.assert_allclose(_eval(basis, jnp.asarray(_X)), want, rtol=1e-5)
    # With ReLU and quad1, AF-KAN's windows are ReLU-KAN's.
    x = jnp.asarray(_X)
    relu = kan.AFKAN(_X.size, activation=jax.nn.relu, combination="quad1")
    np.testing.assert_allclose(
        _eval(relu, x), _eval(kan.ReLUKAN(_X.size), x), rtol=1e-5, atol=1e-7
    )


def test_afkan_layer_against_the_formula():
    layer = _fill(lambda: kan.AFKANLayer(3, 2, key=_key(0)), 0, basis=kan.AFKAN(3))
    x = np.array([-0.4, 0.1, 0.7])
    b, edges, out = eqx.filter_jit(
        lambda layer, x: (layer.basis(x), layer.edges(x), layer(x))
    )(layer, jnp.asarray(x))
    b = np.asarray(b, np.float64)
    scores = b @ np.asarray(layer.score_weight) + float(layer.score_bias)
    t = max(float(layer.temperature), 1.0)
    att = np.exp(scores / t) / np.exp(scores / t).sum()
    z = att * b.sum(-1)
    u = (z - z.mean()) / np.sqrt(z.var() + 1e-5)
    u = u * np.asarray(layer.norm.weight) + np.asarray(layer.norm.bias)
    want = np.asarray(layer.weight) * _silu(u)[None, :]
    np.testing.assert_allclose(edges, want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out, want.sum(-1), rtol=1e-4, atol=1e-6)
    # Fewer parameters than a KAN layer with the same basis, as the paper claims.
    n_af = sum(a.size for a in jax.tree.leaves(eqx.filter(layer, eqx.is_inexact_array)))
    n_af -= layer.basis.starts.size + layer.basis.ends.size
    assert n_af < 2 * 3 * (layer.basis.size + 2)


def _bases(n):
    return [
        kan.BSpline(n),
        kan.Chebyshev(n, degree=4),
        kan.Fourier(n, frequencies=2),
        kan.GaussianRBF(n, grid_size=4),
        kan.ReLUKAN(n, grid_size=3, order=2),
        kan.AFKAN(n, grid_size=3, order=2),
    ]


def test_selectable_one_hot_is_the_selected_layer():
    n_in, n_out, pick = 3, 2, 2
    bases = _bases(n_in)
    logits = np.full((n_in, len(bases)), -np.inf)
    logits[:, pick] = 0.0
    selectable = kan.Selectable(n_in, bases, logits=jnp.asarray(logits))
    mixed = _fill(
        lambda: kan.KANLayer(n_in, n_out, basis=selectable, key=_key(0)),
        1,
        basis=selectable,
    )
    single = _fill(
        lambda: kan.KANLayer(n_in, n_out, basis=bases[pick], key=_key(0)),
        2,
        basis=bases[pick],
    )
    offset = sum(b.size for b in bases[:pick])
    coef = np.array(mixed.coef)
    coef[:, :, offset : offset + bases[pick].size] = single.coef
    mixed = eqx.tree_at(
        lambda m: (m.coef, m.scale_base, m.scale_spline, m.mask),
        mixed,
        (jnp.asarray(coef), single.scale_base, single.scale_spline, single.mask),
    )
    # A soft selection: the functions of basis m scaled by softmax(a)_m per node.
    soft = kan.Selectable(n_in, bases[:2], logits=jnp.array([[0.3, -0.2]] * n_in))
    x = jnp.array([-0.6, 0.2, 0.9])
    mixed_edges, single_edges, soft_values, b0, b1 = eqx.filter_jit(
        lambda mixed, single, soft, x: (
            mixed.edges(x),
            single.edges(x),
            soft(x),
            soft.bases[0](x),
            soft.bases[1](x),
        )
    )(mixed, single, soft, x)
    np.testing.assert_allclose(mixed_edges, single_edges, rtol=1e-6, atol=1e-7)
    p = np.exp([0.3, -0.2]) / np.exp([0.3, -0.2]).sum()
    want = np.concatenate([p[0] * b0, p[1] * b1], axis=-1)
    np.testing.assert_allclose(soft_values, want, rtol=1e-6)
    assert soft.size == bases[0].size + bases[1].size
    np.testing.assert_array_equal(soft.selection, [0, 0, 0])


def _network():
    # One network exercising every basis: a soft selection over all of them, then an
    # AF-KAN layer.
    logits = jnp.asarray(np.random.default_rng(4).standard_normal((2, 6)))
    selectable = kan.Selectable(2, _bases(2), logits=logits)
    first = _fill(
        lambda: kan.KANLayer(2, 3, basis=selectable, key=_key(0)),
        3,
        basis=selectable,
        mask=jnp.ones((3, 2)),
    )
    second = _fill(lambda: kan.AFKANLayer(3, 1, key=_key(0)), 4, basis=kan.AFKAN(3))
    model = eqx.filter_eval_shape(kan.KAN, [2, 3, 1], key=_key(0))
    return eqx.tree_at(lambda m: m.layers, model, (first, second))


def test_jit_vmap_grad_compose(x64):
    model = _network()
    assert model.layers[0].coef.dtype == jnp.float64
    xs = jnp.array([[0.3, -0.55], [-0.8, 0.15]])
    eps = 1e-6

    @eqx.filter_jit
    def check(model, xs):
        f = lambda m, x: m(x)[0]  # noqa: E731
        # The points and their shifts by +-eps along each coordinate, in one vmap.
        shift = eps * jnp.eye(2)
        points = jnp.concatenate([xs, (xs[:, None] + shift[None]).reshape(-1, 2)])
        points = jnp.concatenate([points, (xs[:, None] - shift[None]).reshape(-1, 2)])
        values = jax.vmap(f, in_axes=(None, 0))(model, points)
        # Each output depends on its own point only, so the gradient of the sum with
        # respect to the points holds every point's gradient.
        total = lambda m, xs: jnp.sum(jax.vmap(f, in_axes=(None, 0))(m, xs))  # noqa: E731
        grads = jax.grad(total, argnums=(0, 1))(model, xs)
        return values, grads, f(model, xs[0])

    values, (param_grads, grads), one = check(model, xs)
    np.testing.assert_allclose(values[0], one, rtol=1e-12)
    fd = (values[2:6] - values[6:]).reshape(2, 2) / (2 * eps)
    np.testing.assert_allclose(grads, fd, rtol=1e-6, atol=1e-9)
    # Gradients reach the coefficients and selection logits, not the fixed grids.
    sel = param_grads.layers[0].basis
    assert np.all(np.isfinite(sel.logits)) and np.any(sel.logits != 0)
    assert np.any(param_grads.layers[0].coef != 0)
    assert np.all(sel.bases[3].centres == 0) and np.all(sel.bases[4].starts == 0)


def test_kan_takes_every_basis():
    # Shapes only (nothing compiled): KAN builds its layers with any basis.
    x = jax.ShapeDtypeStruct((2,), jnp.float32)
    for make in (
        lambda n: kan.Chebyshev(n, degree=5),
        lambda n: kan.Fourier(n),
        lambda n: kan.GaussianRBF(n),
        lambda n: kan.ReLUKAN(n),
        lambda n: kan.AFKAN(n),
        lambda n: kan.Selectable(n, [kan.Fourier(n), kan.GaussianRBF(n)]),
    ):
        out = eqx.filter_eval_shape(
            lambda x: kan.KAN([2, 2, 1], basis=make, key=_key(0))(x), x
        )
        assert out.shape == (1,)
    out = eqx.filter_eval_shape(lambda x: kan.af_kan([2, 3, 1], key=_key(0))(x), x)
    assert out.shape == (1,)


_FIT = dict(steps=4, lr=1e-2, x_test=None, y_test=None)


def _same(model, x, y):
    return model


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: kan.Chebyshev(2, degree=-1), "degree"),
        (lambda: kan.Fourier(2, frequencies=0), "frequencies"),
        (lambda: kan.GaussianRBF(2, grid_size=0), "grid_size"),
        (lambda: kan.GaussianRBF(2, grid_range=(1.0, -1.0)), "grid_range"),
        (lambda: kan.ReLUKAN(2, grid_size=0), "grid_size"),
        (lambda: kan.ReLUKAN(2, order=-1), "order"),
        (lambda: kan.AFKAN(2, grid_size=0), "grid_size"),
        (lambda: kan.AFKAN(2, combination="quad3"), "combination"),
        (lambda: kan.AFKAN(2, activation=jnp.zeros_like), "activation"),
        (lambda: kan.Chebyshev(0), "in_features"),
        (lambda: kan.Selectable(2, []), "bases"),
        (lambda: kan.Selectable(2, [kan.Chebyshev(2), kan.Fourier(3)]), "bases[1]"),
        (lambda: kan.Selectable(2, [kan.Chebyshev(2)], logits=jnp.zeros(2)), "logits"),
        (lambda: kan.KANLayer(3, 1, basis=kan.Fourier(2), key=jr.key(0)), "basis"),
        (lambda: kan.AFKANLayer(1, 1, key=jr.key(0)), "in_features"),
        (lambda: kan.AFKANLayer(2, 1, basis=kan.Fourier(2), key=jr.key(0)), "basis"),
        (lambda: kan.Fourier(2)(jnp.zeros(3)), "x"),
        (lambda: jmd.feynman(jr.key(0), 4, equation="I.99"), "equation"),
        (lambda: jmd.feynman(jr.key(0), 0, equation="I.6.2"), "n"),
        (lambda: fit_batched(None, None, None, **_FIT, switch=_same), "switch"),
        (lambda: fit_batched(None, None, None, **_FIT, switch_step=2), "switch"),
        (
            lambda: fit_batched(None, None, None, **_FIT, switch=_same, switch_step=4),
            "switch_step",
        ),
    ],
)
def test_bad_inputs_raise(make, name):
    pattern = "`" + name.replace("[", r"\[").replace("]", r"\]") + "`"
    # The library's own errors, not jaxtyping's checks of the same mistakes.
    with jaxtyping_off(), pytest.raises(ValueError, match=pattern):
        make()


_FORMULAS = {
    "I.6.2a": lambda t: np.exp(-(t**2) / 2) / np.sqrt(2 * np.pi),
    "I.6.2": lambda s, t: np.exp(-0.5 * t**2 / s**2) / np.sqrt(2 * np.pi * s**2),
    "I.12.11": lambda q, ef, b, v, t: q * ef + q * v * b * np.sin(t),
    "I.13.12": lambda m1, m2, r1, r2, g: g * m1 * m2 / r2 - g * m1 * m2 / r1,
    "I.27.6": lambda d1, d2, n: d1 * d2 / (d2 + n * d1),
    "II.2.42": lambda k, t2, t1, a, d: k * t2 * a / d - k * t1 * a / d,
}


def test_feynman_data():
    ranges = jmd.feynman_equations()
    assert set(ranges) == set(_FORMULAS)
    # All equations in one compiled program.
    sample = jax.jit(
        lambda key: {e: jmd.feynman(key, 64, equation=e) for e in sorted(_FORMULAS)}
    )
    data = sample(_key(5))
    for name, formula in _FORMULAS.items():
        x, y = data[name]
        names, bounds = ranges[name]
        assert x.shape == (64, len(names)) and y.shape == (64, 1)
        assert x.dtype == y.dtype == jnp.float32
        lo, hi = np.array(bounds).T
        assert np.all((np.asarray(x) >= lo) & (np.asarray(x) <= hi))
        want = formula(*np.asarray(x, np.float64).T)
        np.testing.assert_allclose(y[:, 0], want, rtol=2e-5, atol=1e-6)
    x1 = data["I.27.6"][0]
    np.testing.assert_array_equal(x1, sample(_key(5))["I.27.6"][0])
    assert not np.array_equal(x1, sample(_key(6))["I.27.6"][0])


# The selectable KAN of the `kan-bases` experiment and its training recipe.


def _skan(seed):
    """The experiment's [2, 5, 1] selectable KAN with random coefficients, logits and
    per-basis gains, at temperature 0.7: every basis, weight and option matters."""
    rng = np.random.default_rng(seed)
    model = kan.KAN([2, 5, 1], basis=kan_bases._selectable, key=_key(seed))
    model = eqx.tree_at(
        lambda m: (
            [layer.basis.logits for layer in m.layers]
            + [layer.coef for layer in m.layers]
        ),
        model,
        [jnp.asarray(rng.standard_normal((n, 5))) for n in (2, 5)]
        + [jnp.asarray(rng.uniform(-1, 1, layer.coef.shape)) for layer in model.layers],
    )
    gain = jnp.asarray(rng.uniform(0.5, 2.0, 5))
    return kan_bases._Variant(
        model, jnp.zeros((2, 5, 5)), jnp.array(1.0), gain, jnp.array(0.7)
    )


@eqx.filter_jit
def _hard_and_reference(variant, x):
    choice = variant.argmax_choice()
    hard = variant.restricted(choice)
    # Reference: each node's edges from the plain single-basis layer of its chosen
    # basis, whose coefficients are the mixture's times that basis's gain and weight.
    h = x
    for i, layer in enumerate(variant.model.layers):
        p = jax.nn.softmax(layer.basis.logits / variant.temperature, axis=-1)
        edges, start = [], 0
        for m, basis in enumerate(layer.basis.bases):
            single = kan.KANLayer(
                layer.in_features, layer.out_features, basis=basis, key=_key(0)
            )
            coef = layer.coef[..., start : start + basis.size] * variant.gain[m]
            single = eqx.tree_at(
                lambda s: (s.coef, s.scale_base, s.scale_spline, s.mask),
                single,
                (
                    coef * p[None, :, m, None],
                    layer.scale_base,
                    layer.scale_spline,
                    layer.mask,
                ),
            )
            edges.append(jax.vmap(single.edges)(h))
            start += basis.size
        # (bases, points, out, in) -> the chosen basis's edges of every input node.
        edges = jnp.stack(edges)
        n_in = layer.in_features
        h = edges[choice[i, :n_in], :, :, jnp.arange(n_in)].sum(0)
    return choice, hard.logits(), jax.vmap(hard)(x), h, jax.vmap(variant)(x)


def test_skan_hard_selection_is_the_single_basis_kan_of_the_argmax():
    variant = _skan(0)
    x = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (16, 2)))
    choice, hard_logits, hard, want, soft = _hard_and_reference(variant, x)
    choice = np.asarray(choice)
    for i, layer in enumerate(variant.model.layers):
        n_in = layer.in_features
        selected = np.asarray(layer.basis.logits).argmax(-1)
        np.testing.assert_array_equal(choice[i, :n_in], selected)
        # The single-basis variants' frozen logits: 0 for the basis, -inf elsewhere.
        one_hot = np.where(np.arange(5) == selected[:, None], 0.0, -np.inf)
        np.testing.assert_array_equal(hard_logits[i], one_hot)
    assert len(set(choice[1])) > 1, "the test needs nodes with different bases"
    np.testing.assert_allclose(hard, want, rtol=1e-5, atol=1e-6)
    # Dropping the other bases changes the function: the comparison is not vacuous.
    assert not np.allclose(hard, soft, rtol=1e-2, atol=1e-3)


def test_skan_gain_normalises_the_basis_mass():
    xs = np.linspace(-1.0, 1.0, 201)
    bases = kan_bases._selectable(1).bases
    mass = eqx.filter_jit(lambda bases: [kan_bases._mass(b) for b in bases])(bases)
    # B-splines are a partition of unity on their grid.
    np.testing.assert_allclose(mass[0], 1.0, rtol=1e-5)
    k = np.arange(1, 4)
    fourier = np.abs(np.cos(np.outer(xs, k))) + np.abs(np.sin(np.outer(xs, k)))
    np.testing.assert_allclose(mass[2], fourier.sum(-1).mean(), rtol=1e-5)
    cheb = np.abs(np.polynomial.chebyshev.chebvander(np.tanh(xs), 5)).sum(-1).mean()
    np.testing.assert_allclose(mass[1], cheb, rtol=1e-5)


class _Toy(eqx.Module):
    """A model with two parameter arrays and a temperature, for `fit_batched`."""

    a: jax.Array
    b: jax.Array
    temperature: jax.Array

    def __call__(self, x, *, key=None):
        t = jax.lax.stop_gradient(self.temperature)
        return jnp.tanh(self.a @ x / t)[None] + (self.b @ x) ** 2 + t


def _loss(model, x, y):
    return jnp.mean((jax.vmap(model)(x) - y) ** 2)


@eqx.filter_jit
def _fits(model, x, y):
    batched = jax.tree.map(lambda a: a[None], model)
    xb, yb = x[None], y[None]
    fit = dict(x_test=xb, y_test=yb, lr=1e-2, return_models=True)
    scale = _Toy(jnp.full((1, 1), 7.0), jnp.ones((1, 1)), jnp.ones(1))
    plain = fit_batched(batched, xb, yb, steps=1, **fit)[2]
    scaled = fit_batched(batched, xb, yb, steps=1, lr_scale=scale, **fit)[2]
    one = fit_batched(batched, xb, yb, steps=4, **fit)
    two = fit_batched(batched, xb, yb, steps=4, switch=_same, switch_step=2, **fit)

    def anneal(m, t):
        return eqx.tree_at(lambda m: m.temperature, m, 1.0 - t / 2)

    annealed = fit_batched(batched, xb, yb, steps=3, anneal=anneal, **fit)
    # Reference for the annealing: three Adam steps by hand, at temperatures 1, 5/6,
    # 2/3 (t = 0, 1/3, 2/3), the test error at temperature 1/2 (t = 1).
    optim = optax.adam(optax.cosine_decay_schedule(1e-2, 3, alpha=0.01))
    state = optim.init(model)

    def at(m, temperature):
        return eqx.tree_at(lambda m: m.temperature, m, jnp.asarray(temperature))

    for temperature in (1.0, 5 / 6, 2 / 3):
        loss, grads = jax.value_and_grad(lambda m: _loss(at(m, temperature), x, y))(
            model
        )
        updates, state = optim.update(grads, state, model)
        model = optax.apply_updates(model, updates)
    by_hand = (loss, jnp.sqrt(_loss(at(model, 0.5), x, y)))
    return plain, scaled, one, two, annealed, by_hand


def test_fit_batched_learning_rate_scale_switch_and_annealing():
    rng = np.random.default_rng(3)
    model = _Toy(
        jnp.asarray(rng.standard_normal(2)),
        jnp.asarray(rng.standard_normal(2)),
        jnp.array(0.8),
    )
    x = jnp.asarray(rng.uniform(-1, 1, (12, 2)))
    y = jnp.sin(3 * x[:, :1]) * x[:, 1:]
    plain, scaled, one, two, annealed, by_hand = _fits(model, x, y)
    # The multiplier scales `a`'s first Adam step (by 7) and nothing else.
    step = np.asarray(plain.a[0] - model.a)
    assert np.all(np.abs(step) > 1e-3)
    np.testing.assert_allclose(scaled.a[0] - model.a, 7 * step, rtol=1e-5)
    np.testing.assert_array_equal(scaled.b, plain.b)
    np.testing.assert_array_equal(scaled.temperature, plain.temperature)
    # A switch that changes nothing leaves the training as it was: the optimiser's
    # state and schedule run on across it.
    assert tree_allclose(one, two, rtol=1e-6, atol=1e-8)
    assert float(one[1][0]) < float(jnp.sqrt(_loss(model, x, y)))
    # `anneal` sees t = step / steps, and t = 1 for the test error and the result.
    np.testing.assert_allclose(annealed[0][0], by_hand[0], rtol=1e-5)
    np.testing.assert_allclose(annealed[1][0], by_hand[1], rtol=1e-5)
    np.testing.assert_allclose(annealed[2].temperature, [0.5])
