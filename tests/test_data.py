import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import jaxmodels.data as jmd
from jaxmodels.data._regression import _friedman1


# (generator, keyword arguments, expected (x shape, x dtype), (y shape, y dtype)) at
# n = 7; the keyword arguments are small, non-default sizes to catch mixed-up axes.
_CASES = [
    (jmd.blobs, dict(classes=4, dim=3), ((7, 3), jnp.float32), ((7,), jnp.int32)),
    (jmd.two_spirals, {}, ((7, 2), jnp.float32), ((7,), jnp.int32)),
    (jmd.two_moons, {}, ((7, 2), jnp.float32), ((7,), jnp.int32)),
    (jmd.regression_1d, {}, ((7, 1), jnp.float32), ((7, 1), jnp.float32)),
    (
        jmd.regression_nd,
        dict(dim=3, width=5),
        ((7, 3), jnp.float32),
        ((7, 1), jnp.float32),
    ),
    (
        jmd.regression_nd,
        dict(dim=6, fn="friedman"),
        ((7, 6), jnp.float32),
        ((7, 1), jnp.float32),
    ),
    (
        jmd.sine_sequences,
        dict(length=5),
        ((7, 5, 1), jnp.float32),
        ((7, 5, 1), jnp.float32),
    ),
    (
        jmd.sine_sequences,
        dict(length=5, target="frequency"),
        ((7, 5, 1), jnp.float32),
        ((7, 1), jnp.float32),
    ),
    (
        jmd.copy_task,
        dict(length=3, vocab=4, delay=2),
        ((7, 9), jnp.int32),
        ((7, 9), jnp.int32),
    ),
    (jmd.parity, dict(length=5), ((7, 5, 1), jnp.float32), ((7,), jnp.int32)),
]
_IDS = [f"{fn.__name__}-{i}" for i, (fn, *_) in enumerate(_CASES)]


@pytest.mark.parametrize("fn, kwargs, x_spec, y_spec", _CASES, ids=_IDS)
def test_shapes_and_dtypes(fn, kwargs, x_spec, y_spec):
    x, y = fn(jr.key(0), 7, **kwargs)
    assert (x.shape, x.dtype) == x_spec
    assert (y.shape, y.dtype) == y_spec
    assert jnp.all(jnp.isfinite(x)) and jnp.all(jnp.isfinite(y))


@pytest.mark.parametrize("fn, kwargs, x_spec, y_spec", _CASES, ids=_IDS)
def test_determinism(fn, kwargs, x_spec, y_spec):
    x1, y1 = fn(jr.key(0), 7, **kwargs)
    x2, y2 = fn(jr.key(0), 7, **kwargs)
    x3, y3 = fn(jr.key(1), 7, **kwargs)
    assert jnp.array_equal(x1, x2) and jnp.array_equal(y1, y2)
    # Labels may coincide by construction (balanced classes), the inputs may not.
    assert not jnp.array_equal(x1, x3)


@pytest.mark.parametrize("fn, kwargs, x_spec, y_spec", _CASES, ids=_IDS)
def test_jit_vmap(fn, kwargs, x_spec, y_spec):
    # One compilation per case: `jit` of `vmap` over keys, compared with eager calls.
    keys = jr.split(jr.key(0), 2)
    xv, yv = jax.jit(jax.vmap(lambda k: fn(k, 7, **kwargs)))(keys)
    assert xv.shape == (2, *x_spec[0]) and yv.shape == (2, *y_spec[0])
    for i in range(2):
        x, y = fn(keys[i], 7, **kwargs)
        assert jnp.allclose(xv[i], x, atol=1e-5) and jnp.allclose(yv[i], y, atol=1e-5)


def test_jit_static_size():
    x, y = jmd.two_moons(jr.key(0), 7)
    xj, yj = jax.jit(jmd.two_moons, static_argnums=1)(jr.key(0), 7)
    assert jnp.allclose(x, xj, atol=1e-6) and jnp.array_equal(y, yj)


@pytest.mark.parametrize(
    "fn, kwargs, classes",
    [
        (jmd.blobs, dict(classes=5, dim=1), 5),
        (jmd.two_spirals, {}, 2),
        (jmd.two_moons, {}, 2),
        (jmd.parity, dict(length=4), 2),
    ],
)
@pytest.mark.parametrize("n", [1, 11])
def test_class_balance(fn, kwargs, classes, n):
    _, y = fn(jr.key(3), n, **kwargs)
    counts = np.bincount(np.asarray(y), minlength=classes)
    assert len(counts) == classes
    assert counts.sum() == n
    assert counts.max() - counts.min() <= 1


def test_blobs_geometry():
    # The sizes of `_CASES` reuse compiled operations.
    x, y = jmd.blobs(jr.key(0), 7, classes=4, dim=3, std=0.0, spread=2.0)
    x, y = np.asarray(x), np.asarray(y)
    centres = np.stack([x[y == c][0] for c in range(4)])
    np.testing.assert_array_equal(x, centres[y])
    assert np.all(np.abs(centres) <= 2.0)
    assert len(np.unique(centres, axis=0)) == 4

    x, y = jmd.blobs(jr.key(0), 6000, classes=4, dim=3, std=0.5)
    x, y = np.asarray(x), np.asarray(y)
    within = np.concatenate([x[y == c] - x[y == c].mean(0) for c in range(4)])
    assert within.std() == pytest.approx(0.5, rel=0.03)


def test_two_spirals_geometry():
    turns = 1.5
    x, y = jmd.two_spirals(jr.key(0), 400, noise=0.0, turns=turns)
    x, y = np.asarray(x, np.float64), np.asarray(y)
    radius = np.linalg.norm(x, axis=1)
    assert radius.max() <= turns + 1e-5
    # Spiral 0 is r (cos 2 pi r, sin 2 pi r); spiral 1 is its rotation by pi.
    sign = np.where(y == 0, 1.0, -1.0)[:, None]
    angle = 2 * math.pi * radius
    expected = sign * radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], 1)
    np.testing.assert_allclose(x, expected, atol=1e-5)
    for c in (0, 1):
        points = x[y == c][np.argsort(radius[y == c])]
        theta = np.unwrap(np.arctan2(points[:, 1], points[:, 0]))
        assert np.all(np.diff(theta) > 0)
        r = np.sort(radius[y == c])
        np.testing.assert_allclose(
            theta - theta[0], 2 * math.pi * (r - r[0]), atol=1e-4
        )

    x_noisy, _ = jmd.two_spirals(jr.key(0), 400, noise=0.1, turns=turns)
    residual = np.asarray(x_noisy) - x
    assert residual.std() == pytest.approx(0.1, rel=0.15)


def test_two_moons_geometry():
    x, y = jmd.two_moons(jr.key(0), 200, noise=0.0)
    x, y = np.asarray(x, np.float64), np.asarray(y)
    upper, lower = x[y == 0], x[y == 1]
    np.testing.assert_allclose(np.linalg.norm(upper, axis=1), 1.0, atol=1e-6)
    assert np.all(upper[:, 1] >= -1e-6)
    np.testing.assert_allclose(
        np.linalg.norm(lower - np.array([1.0, 0.5]), axis=1), 1.0, atol=1e-6
    )
    assert np.all(lower[:, 1] <= 0.5 + 1e-6)

    x_noisy, _ = jmd.two_moons(jr.key(0), 200, noise=0.1)
    radius = np.linalg.norm(np.asarray(x_noisy)[y == 0], axis=1)
    assert not np.allclose(radius, 1.0, atol=1e-3)


_NUMPY_1D = {
    "sin": np.sin,
    "cubic": lambda x: x**3 / 10,
    "step": lambda x: (x >= 0).astype(x.dtype),
    "sinc": np.sinc,
}


@pytest.mark.parametrize("name", sorted(_NUMPY_1D))
def test_regression_1d_noise_level(name):
    x, y = jmd.regression_1d(jr.key(0), 20_000, fn=name, noise=0.3, domain=(-2, 4))
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    assert x.min() >= -2 and x.max() <= 4
    residual = y - _NUMPY_1D[name](x)
    assert residual.std() == pytest.approx(0.3, rel=0.03)
    assert abs(residual.mean()) < 0.01

    x0, y0 = jmd.regression_1d(jr.key(0), 20_000, fn=name, noise=0.0, domain=(-2, 4))
    np.testing.assert_array_equal(x0, x)
    np.testing.assert_allclose(y0, _NUMPY_1D[name](np.asarray(x0)), atol=1e-5)


def test_regression_1d_callable():
    x, y = jmd.regression_1d(jr.key(0), 20, fn=jnp.tanh, noise=0.0)
    np.testing.assert_allclose(y, np.tanh(np.asarray(x)), atol=1e-6)


@functools.cache
def _regression_nd(fn, dim, noise):
    return jmd.regression_nd(jr.key(0), 20_000, dim=dim, fn=fn, noise=noise)


@pytest.mark.parametrize("fn, dim", [("teacher", 3), ("friedman", 6)])
def test_regression_nd_noise_level(fn, dim):
    x0, y0 = _regression_nd(fn, dim, 0.0)
    x1, y1 = _regression_nd(fn, dim, 0.5)
    assert jnp.array_equal(x0, x1)
    residual = np.asarray(y1, np.float64) - np.asarray(y0, np.float64)
    assert residual.std() == pytest.approx(0.5, rel=0.03)
    assert abs(residual.mean()) < 0.02


def test_teacher_scale():
    # The 1/sqrt(fan-in) scaling keeps the teacher's output O(1) at any size.
    _, y = _regression_nd("teacher", 3, 0.0)
    _, y_wide = jmd.regression_nd(jr.key(0), 500, dim=200, width=300, noise=0.0)
    for target in (y, y_wide):
        assert 0.2 < float(jnp.std(target)) < 2.0


def test_friedman():
    # Hand evaluation: 10 sin(pi / 4) + 0 + 5 + 2.5, and 10 sin(pi / 2) + 5 + 2 + 5.
    x = jnp.array([[0.5] * 5 + [0.9], [1.0, 0.5, 0.0, 0.2, 1.0, 0.3]])
    y = _friedman1(x)
    np.testing.assert_allclose(y, [[5 * math.sqrt(2) + 7.5], [22.0]], rtol=1e-6)

    x, y = _regression_nd("friedman", 6, 0.0)
    x = np.asarray(x, np.float64)
    assert x.min() >= 0 and x.max() <= 1
    expected = (
        10 * np.sin(np.pi * x[:, 0] * x[:, 1])
        + 20 * (x[:, 2] - 0.5) ** 2
        + 10 * x[:, 3]
        + 5 * x[:, 4]
    )
    np.testing.assert_allclose(np.asarray(y)[:, 0], expected, rtol=1e-5)


def test_sine_sequences():
    x, y = jmd.sine_sequences(jr.key(0), 6, length=12)
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])

    x, freq = jmd.sine_sequences(
        jr.key(0), 6, length=12, noise=0.0, freq_range=(0.05, 0.2), target="frequency"
    )
    x, freq = np.asarray(x[..., 0], np.float64), np.asarray(freq, np.float64)
    assert np.all((freq >= 0.05) & (freq <= 0.2))
    assert np.all(np.abs(x) <= 1 + 1e-6)
    # A pure sinusoid of frequency f obeys s[t+1] + s[t-1] = 2 cos(2 pi f) s[t].
    np.testing.assert_allclose(
        x[:, 2:] + x[:, :-2], 2 * np.cos(2 * np.pi * freq) * x[:, 1:-1], atol=1e-5
    )


def test_copy_task():
    length, vocab, delay = 4, 3, 2
    x, y = jmd.copy_task(jr.key(0), 20, length=length, vocab=vocab, delay=delay)
    x, y = np.asarray(x), np.asarray(y)
    np.testing.assert_array_equal(y[:, -length:], x[:, :length])
    assert np.all((x[:, :length] >= 2) & (x[:, :length] < vocab + 2))
    assert len(np.unique(x[:, :length])) == vocab
    np.testing.assert_array_equal(x[:, length + delay], 1)
    np.testing.assert_array_equal(x[:, length : length + delay], 0)
    np.testing.assert_array_equal(x[:, length + delay + 1 :], 0)
    np.testing.assert_array_equal(y[:, :-length], 0)


@pytest.mark.parametrize("length", [1, 2, 7])
def test_parity(length):
    x, y = jmd.parity(jr.key(0), 64, length=length)
    bits = np.asarray(x[..., 0]).astype(np.int64)
    np.testing.assert_array_equal(np.asarray(x[..., 0]), bits)
    assert set(np.unique(bits)) <= {0, 1}
    np.testing.assert_array_equal(np.asarray(y), np.bitwise_xor.reduce(bits, axis=1))
    if length > 2:
        # Every bit position is used: none is constant over the data set.
        assert np.all(bits.min(0) == 0) and np.all(bits.max(0) == 1)


def test_train_test_split():
    n = 10
    ids = jnp.arange(n)
    data = {
        "x": jnp.stack([ids, -ids], axis=1),
        "y": np.arange(n) * 2,
        "note": None,
    }
    train, test = jmd.train_test_split(jr.key(0), data, test_fraction=0.3)
    assert train["x"].shape == (7, 2) and test["x"].shape == (3, 2)
    assert train["note"] is None and test["note"] is None
    everything = np.concatenate([train["x"][:, 0], test["x"][:, 0]])
    np.testing.assert_array_equal(np.sort(everything), np.arange(n))
    for part in (train, test):
        np.testing.assert_array_equal(part["y"], 2 * part["x"][:, 0])
        np.testing.assert_array_equal(part["x"][:, 1], -part["x"][:, 0])

    other, _ = jmd.train_test_split(jr.key(1), data, test_fraction=0.3)
    assert not jnp.array_equal(other["x"], train["x"])
    jitted, _ = jax.jit(jmd.train_test_split)(jr.key(0), data)
    assert jitted["x"].shape == (8, 2)
    # Halves round up: 0.5 * 9 = 4.5 test samples becomes 5.
    train, test = jmd.train_test_split(jr.key(0), jnp.arange(9), test_fraction=0.5)
    assert train.shape == (4,) and test.shape == (5,)


@pytest.mark.parametrize(
    "data, kwargs, name",
    [
        ((jnp.zeros((5, 2)), jnp.zeros(4)), {}, "data"),
        ((jnp.zeros(1),), {}, "data"),
        ({"a": jnp.zeros(())}, {}, "data"),
        ({"a": None}, {}, "data"),
        (jnp.zeros(5), dict(test_fraction=0.0), "test_fraction"),
        (jnp.zeros(5), dict(test_fraction=1.0), "test_fraction"),
    ],
)
def test_train_test_split_errors(data, kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        jmd.train_test_split(jr.key(0), data, **kwargs)


def test_standardise():
    x = jnp.stack([jnp.arange(6.0) ** 2, jnp.full(6, 3.0)], axis=1)
    z, mean, std = jmd.standardise(x)
    assert z.shape == x.shape and mean.shape == (1, 2) and std.shape == (1, 2)
    np.testing.assert_allclose(z[:, 0].mean(), 0.0, atol=1e-6)
    np.testing.assert_allclose(z[:, 0].std(), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(z[:, 1], 0.0)
    np.testing.assert_allclose(z * std + mean, x, rtol=1e-6)
    z_rows, _, _ = jmd.standardise(x, axis=1)
    np.testing.assert_allclose(z_rows.mean(axis=1), 0.0, atol=1e-6)


_BAD = [
    (jmd.blobs, dict(n=0), "n"),
    (jmd.blobs, dict(classes=1), "classes"),
    (jmd.blobs, dict(dim=0), "dim"),
    (jmd.blobs, dict(std=-1.0), "std"),
    (jmd.blobs, dict(spread=-0.5), "spread"),
    (jmd.two_spirals, dict(n=-3), "n"),
    (jmd.two_spirals, dict(noise=-0.1), "noise"),
    (jmd.two_spirals, dict(turns=0.0), "turns"),
    (jmd.two_moons, dict(noise=-0.1), "noise"),
    (jmd.two_moons, dict(noise=float("nan")), "noise"),
    (jmd.regression_1d, dict(n=0), "n"),
    (jmd.regression_1d, dict(noise=-1), "noise"),
    (jmd.regression_1d, dict(fn="cosh"), "fn"),
    (jmd.regression_1d, dict(fn=lambda x: x[:, 0]), "fn"),
    (jmd.regression_1d, dict(domain=(1.0, 1.0)), "domain"),
    (jmd.regression_nd, dict(fn="friedman", dim=4), "dim"),
    (jmd.regression_nd, dict(fn="linear"), "fn"),
    (jmd.regression_nd, dict(dim=0), "dim"),
    (jmd.regression_nd, dict(noise=-0.2), "noise"),
    (jmd.regression_nd, dict(width=0), "width"),
    (jmd.sine_sequences, dict(length=0), "length"),
    (jmd.sine_sequences, dict(noise=-0.1), "noise"),
    (jmd.sine_sequences, dict(freq_range=(0.1, 0.6)), "freq_range"),
    (jmd.sine_sequences, dict(freq_range=(0.2, 0.1)), "freq_range"),
    (jmd.sine_sequences, dict(target="phase"), "target"),
    (jmd.copy_task, dict(n=0), "n"),
    (jmd.copy_task, dict(vocab=0), "vocab"),
    (jmd.copy_task, dict(delay=-1), "delay"),
    (jmd.parity, dict(length=0), "length"),
]


@pytest.mark.parametrize(
    "fn, kwargs, name", _BAD, ids=[f"{f.__name__}-{a}" for f, _, a in _BAD]
)
def test_bad_inputs(fn, kwargs, name):
    kwargs = dict(kwargs)
    n = kwargs.pop("n", 4)
    with pytest.raises(ValueError, match=f"`{name}`"):
        fn(jr.key(0), n, **kwargs)


def test_traced_noise_is_checked():
    @eqx.filter_jit
    def moons(key, noise):
        return jmd.two_moons(key, 4, noise=noise)

    moons(jr.key(0), jnp.array(0.2))
    with pytest.raises(eqx.EquinoxRuntimeError, match="noise"):
        moons(jr.key(0), jnp.array(-0.2))


def test_irregular_spirals():
    (ts, xs), y = jmd.irregular_spirals(jr.key(0), 400, length=24, missing_rate=0.4)
    assert ts.shape == (400, 24) and xs.shape == (400, 24, 2) and y.shape == (400,)
    assert ts.dtype == xs.dtype == jnp.float32 and y.dtype == jnp.int32
    assert bool(jnp.all(ts[:, 0] == 0)) and bool(jnp.all(jnp.diff(ts, axis=1) > 0))
    assert bool(jnp.all(ts[:, -1] == 10.0))
    missing = jnp.isnan(xs)
    # Whole observations are dropped, never the first, at the requested rate.
    assert bool(jnp.all(missing[..., 0] == missing[..., 1]))
    assert not bool(jnp.any(missing[:, 0]))
    rate = float(jnp.mean(missing[:, 1:, 0]))
    assert abs(rate - 0.4) < 0.02, rate
    assert int(y.sum()) == 200
    # The label is the sense of rotation: the sign of the cross product of successive
    # noiseless points (checked without noise or gaps).
    (ts, xs), y = jmd.irregular_spirals(jr.key(1), 50, missing_rate=0.0, noise=0.0)
    cross = xs[:, :-1, 0] * xs[:, 1:, 1] - xs[:, :-1, 1] * xs[:, 1:, 0]
    small_step = jnp.diff(ts, axis=1) < 1.0  # under half a turn at speed <= 1.5
    sense = jnp.where(small_step, jnp.sign(cross), 0.0).sum(axis=1)
    assert bool(jnp.all((sense > 0) == (y == 1)))


def test_damped_sines():
    ts, xs = jmd.damped_sines(jr.key(0), 64, length=30, t1=8.0)
    assert ts.shape == (64, 30) and xs.shape == (64, 30, 1)
    assert bool(jnp.all(ts[:, 0] == 0)) and bool(jnp.all(jnp.diff(ts, axis=1) > 0))
    assert bool(jnp.all(ts[:, -1] == 8.0))
    # The envelope a exp(-d t) with a <= 1.5 and d >= 0.05 bounds every value.
    assert bool(jnp.all(jnp.abs(xs[..., 0]) <= 1.5 * jnp.exp(-0.05 * ts) + 1e-6))
    ts2, xs2 = jmd.damped_sines(jr.key(0), 64, length=30, t1=8.0)
    assert bool(jnp.all(ts == ts2)) and bool(jnp.all(xs == xs2))
    _, noisy = jmd.damped_sines(jr.key(0), 64, length=30, t1=8.0, noise=0.1)
    assert 0.08 < float(jnp.std(noisy - xs)) < 0.12


@pytest.mark.parametrize(
    "fn, kwargs, name",
    [
        (jmd.irregular_spirals, {"length": 1}, "length"),
        (jmd.irregular_spirals, {"missing_rate": 1.0}, "missing_rate"),
        (jmd.irregular_spirals, {"t1": 0.0}, "t1"),
        (jmd.damped_sines, {"noise": -1.0}, "noise"),
        (jmd.damped_sines, {"length": 1}, "length"),
    ],
)
def test_irregular_bad_inputs(fn, kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        fn(jr.key(0), 4, **kwargs)
