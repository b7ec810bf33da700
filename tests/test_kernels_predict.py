"""Kernel predictions: gradient flow against a diffrax integration of the linear ODE,
infinite time against kernel regression, GP posteriors and the ensemble (Lee et al.,
2019) against NumPy, and the issue's key test: actually training a wide network
against the empirical-NTK and the analytic (arc-cosine) NTK predictions."""

import functools as ft

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.linalg
from jaxtyping import Array

from jaxmodels.kernels import empirical_ntk
from jaxmodels.kernels.predict import (
    Gaussian,
    gp_inference,
    gradient_descent_mse,
    gradient_descent_mse_ensemble,
)

from .helpers import jaxtyping_off


N, T, K = 5, 3, 2  # train points, test points, outputs


@ft.cache
def _kernels():
    """A joint PSD kernel over train + test points, and data (float64 NumPy)."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(N + T, 12))
    b = rng.normal(size=(N + T, 12))
    ntk, nngp = a @ a.T / 12 + 0.1 * np.eye(N + T), b @ b.T / 12 + 0.1 * np.eye(N + T)
    y, f0, g0 = (
        rng.normal(size=(N, K)),
        rng.normal(size=(N, K)),
        rng.normal(size=(T, K)),
    )
    return ntk, nngp, y, f0, g0


def test_gradient_descent_mse_matches_ode_and_kernel_regression(x64):
    ntk, _, y, f0, g0 = _kernels()
    kdd, ktd = ntk[:N, :N], ntk[N:, :N]
    lr = 0.7
    predict = gradient_descent_mse(jnp.asarray(kdd), jnp.asarray(y), learning_rate=lr)
    ts = jnp.array([0.0, 1.0, 4.0, 20.0])
    train_t, test_t = predict(ts, jnp.asarray(f0), jnp.asarray(g0), jnp.asarray(ktd))
    assert train_t.shape == (4, N, K) and test_t.shape == (4, T, K)

    # df/dt = -(lr / n) K (f - y), n = y.size, integrated by diffrax.
    def field(t, state, args):
        residual = state[0] - y
        return (-lr / y.size * kdd @ residual, -lr / y.size * ktd @ residual)

    sol = dfx.diffeqsolve(
        dfx.ODETerm(field),
        dfx.Tsit5(),
        0.0,
        20.0,
        0.01,
        (jnp.asarray(f0), jnp.asarray(g0)),
        saveat=dfx.SaveAt(ts=ts),
        stepsize_controller=dfx.PIDController(rtol=1e-11, atol=1e-11),
        max_steps=10_000,
    )
    assert np.abs(np.asarray(train_t - sol.ys[0])).max() < 1e-8
    assert np.abs(np.asarray(test_t - sol.ys[1])).max() < 1e-8
    # t = infinity: the training targets and the kernel-regression interpolant.
    train_inf, test_inf = predict(
        None, jnp.asarray(f0), jnp.asarray(g0), jnp.asarray(ktd)
    )
    regression = g0 + ktd @ np.linalg.solve(kdd, y - f0)
    assert np.allclose(train_inf, y, atol=1e-12)
    assert np.abs(np.asarray(test_inf) - regression).max() < 1e-10
    late = predict(1e7, jnp.asarray(f0), jnp.asarray(g0), jnp.asarray(ktd))
    assert np.abs(np.asarray(late[1]) - regression).max() < 1e-8
    # trace_axes=(): the kernel as (N, N, K, K) with identity output blocks agrees.
    full = np.einsum("ab,kl->abkl", kdd, np.eye(K))
    untraced = gradient_descent_mse(
        jnp.asarray(full), jnp.asarray(y), lr, trace_axes=()
    )
    ktd_full = jnp.asarray(np.einsum("ab,kl->abkl", ktd, np.eye(K)))
    assert np.allclose(
        untraced(ts, jnp.asarray(f0), jnp.asarray(g0), ktd_full)[1], test_t, atol=1e-10
    )
    # diag_reg scaled by the mean of the diagonal (neural-tangents' convention).
    ridge = gradient_descent_mse(jnp.asarray(kdd), jnp.asarray(y), diag_reg=0.3)
    reg = kdd + 0.3 * np.trace(kdd) / N * np.eye(N)
    got = ridge(None, None, jnp.zeros((T, K)), jnp.asarray(ktd))
    assert np.abs(np.asarray(got) - ktd @ np.linalg.solve(reg, y)).max() < 1e-10


def test_jit_vmap_grad(x64):
    ntk, _, y, f0, g0 = _kernels()
    kdd, y, f0 = jnp.asarray(ntk[:N, :N]), jnp.asarray(y), jnp.asarray(f0)

    @jax.jit
    def train_at(t, k):
        return gradient_descent_mse(k, y, learning_rate=2.0)(t, f0)

    # The time derivative is the ODE's right-hand side (jit + grad via jacfwd).
    t = 3.0
    dfdt = jax.jacfwd(train_at)(t, kdd)
    expect = -2.0 / y.size * kdd @ (train_at(t, kdd) - y)
    assert np.abs(np.asarray(dfdt - expect)).max() < 1e-10
    # vmap over times equals the array-of-times call; grad through the kernel runs.
    ts = jnp.array([0.5, 1.5])
    assert np.allclose(
        jax.vmap(train_at, (0, None))(ts, kdd), train_at(ts, kdd), atol=1e-12
    )
    g = jax.grad(lambda k: jnp.sum(train_at(1.0, k) ** 2))(kdd)
    assert np.all(np.isfinite(np.asarray(g)))


def test_gp_inference_matches_numpy(x64):
    ntk, nngp, y, _, _ = _kernels()
    kernel = lambda m, a, b: jnp.asarray(m[a][:, b])  # noqa: E731
    tr, te = slice(0, N), slice(N, N + T)
    from collections import namedtuple

    Kern = namedtuple("Kern", "nngp ntk")
    k_dd = Kern(kernel(nngp, tr, tr), kernel(ntk, tr, tr))
    k_td = Kern(kernel(nngp, te, tr), kernel(ntk, te, tr))
    k_tt = Kern(kernel(nngp, te, te), kernel(ntk, te, te))
    predict = gp_inference(k_dd, jnp.asarray(y))
    out = predict(("nngp", "ntk", "ntkgp"), k_td, k_tt)
    kd, kt, ktt = nngp[tr, tr], nngp[te, tr], nngp[te, te]
    td, tt_, ttt = ntk[tr, tr], ntk[te, tr], ntk[te, te]
    assert np.abs(np.asarray(out.nngp.mean) - kt @ np.linalg.solve(kd, y)).max() < 1e-10
    nngp_cov = ktt - kt @ np.linalg.solve(kd, kt.T)
    assert np.abs(np.asarray(out.nngp.covariance) - nngp_cov).max() < 1e-10
    ntkgp_cov = ttt - tt_ @ np.linalg.solve(td, tt_.T)
    assert np.abs(np.asarray(out.ntkgp.covariance) - ntkgp_cov).max() < 1e-10
    a = tt_ @ np.linalg.inv(td)
    lee = ktt + a @ kd @ a.T - (a @ kt.T + kt @ a.T)
    assert np.abs(np.asarray(out.ntk.covariance) - lee).max() < 1e-10
    assert np.abs(np.asarray(out.ntk.mean) - a @ y).max() < 1e-10
    assert isinstance(predict("nngp", k_td, k_tt), Gaussian)
    assert np.allclose(predict("ntk"), y)  # train set: N(y, 0)


def _kernel_fn_from(ntk, nngp, x_all):
    """A neural-tangents-style `kernel_fn(x1, x2, get)` over indices into fixed
    kernels (inputs are indices, shape (n, 1))."""

    def kernel_fn(x1, x2, get):
        x2 = x1 if x2 is None else x2
        m = {"ntk": ntk, "nngp": nngp}[get]
        i, j = np.asarray(x1[:, 0], int), np.asarray(x2[:, 0], int)
        return jnp.asarray(m[np.ix_(i, j)])

    return kernel_fn


def test_ensemble_matches_lee_et_al(x64):
    ntk, nngp, y, _, _ = _kernels()
    x_all = np.arange(N + T)[:, None]
    kernel_fn = _kernel_fn_from(ntk, nngp, x_all)
    predict = gradient_descent_mse_ensemble(
        kernel_fn, x_all[:N], jnp.asarray(y), learning_rate=1.5
    )
    x_test = x_all[N:]
    td, tt_ = ntk[:N, :N], ntk[N:, :N]
    kd, kt, ktt = nngp[:N, :N], nngp[N:, :N], nngp[N:, N:]
    inf = predict(None, x_test, "ntk", compute_cov=True)
    assert np.abs(np.asarray(inf.mean) - tt_ @ np.linalg.solve(td, y)).max() < 1e-10
    assert np.linalg.eigvalsh(np.asarray(inf.covariance)).min() > -1e-10
    # Finite time, equation (16) of Lee et al. with scipy's matrix exponential.
    t, n = 4.0, y.size
    e = scipy.linalg.expm(-1.5 * t / n * td)
    a = tt_ @ np.linalg.solve(td, np.eye(N) - e)
    mean = a @ y
    cov = ktt + a @ kd @ a.T - (a @ kt.T + kt @ a.T)
    fin = predict(jnp.array([t]), x_test, "ntk", compute_cov=True)
    assert fin.mean.shape == (1, T, K) and fin.covariance.shape == (1, T, T)
    assert np.abs(np.asarray(fin.mean[0]) - mean).max() < 1e-10
    assert np.abs(np.asarray(fin.covariance[0]) - cov).max() < 1e-10
    assert np.linalg.eigvalsh(cov).min() > 0
    # NNGP regime: finite time tends to the GP posterior; tuple `get` packs both.
    both = predict(1e8, x_test, None, compute_cov=True)
    post = ktt - kt @ np.linalg.solve(kd, kt.T)
    assert np.abs(np.asarray(both.nngp.covariance) - post).max() < 1e-8
    assert np.abs(np.asarray(both.ntk.mean) - np.asarray(inf.mean)).max() < 1e-8
    # Training set at finite time: (I - exp(-Theta t)) y.
    train = predict(t, None, "ntk")
    assert np.abs(np.asarray(train) - (np.eye(N) - e) @ y).max() < 1e-10


def test_not_positive_definite_raises(x64):
    _, _, y, _, _ = _kernels()
    bad = jnp.asarray(np.diag([1.0, 1.0, -1.0, 1.0, 1.0]))
    predict = gradient_descent_mse(bad, jnp.asarray(y))
    with pytest.raises(eqx.EquinoxRuntimeError, match="k_train_train"):
        predict(1.0, jnp.zeros((N, K)))
    with pytest.raises(eqx.EquinoxRuntimeError, match="k_train_train"):
        predict(None, 0.0, jnp.zeros((N, K)), bad)
    with pytest.raises(eqx.EquinoxRuntimeError, match="diag_reg"):
        gp_inference(bad, jnp.asarray(y))("nngp", bad)


def test_bad_inputs():
    k, y = jnp.eye(3), jnp.ones((3, 2))
    with jaxtyping_off():
        with pytest.raises(ValueError, match="k_train_train"):
            gradient_descent_mse(jnp.eye(4), y)
        with pytest.raises(ValueError, match="learning_rate"):
            gradient_descent_mse(k, y, learning_rate=-1.0)
        with pytest.raises(ValueError, match="diag_reg"):
            gradient_descent_mse(k, y, diag_reg=-1.0)
        with pytest.raises(ValueError, match="trace_axes"):
            gradient_descent_mse(k, y, trace_axes=(0,))
        with pytest.raises(ValueError, match="k_test_train"):
            gradient_descent_mse(k, y)(1.0, 0.0, jnp.zeros((2, 2)))
        with pytest.raises(ValueError, match="get"):
            gp_inference(k, y)("cov", k)
        with pytest.raises(ValueError, match="get"):
            gradient_descent_mse_ensemble(lambda a, b, g: k, y, y)(get="ntkgp")


# The key test: a wide network trained by gradient descent. ---------------

WIDTH, SEEDS, LR, STEPS = 2048, 16, 0.02, 600
TIMES = (100, 300, 600)


class WideReLU(eqx.Module):
    """`f(x) = v . relu(W x + b) / sqrt(n)` with N(0, 1) parameters (NTK
    parameterisation); one output, shape (1,)."""

    w: Array
    b: Array
    v: Array

    def __init__(self, key):
        kw, kb, kv = jr.split(key, 3)
        self.w = jr.normal(kw, (WIDTH, 1))
        self.b = jr.normal(kb, (WIDTH,))
        self.v = jr.normal(kv, (1, WIDTH))

    def __call__(self, x):
        return self.v @ jax.nn.relu(self.w @ x + self.b) / np.sqrt(WIDTH)


def _arccos_kernel_fn(x1, x2, get):
    """The infinite-width NNGP / NTK of `WideReLU` (arc-cosine kernel of degree 1,
    Cho and Saul 2009): pre-activation covariance `x.x' + 1`."""
    x2 = x1 if x2 is None else x2
    s12 = x1 @ x2.T + 1
    s11, s22 = jnp.sum(x1**2, 1) + 1, jnp.sum(x2**2, 1) + 1
    norm = jnp.sqrt(s11[:, None] * s22[None, :])
    theta = jnp.arccos(jnp.clip(s12 / norm, -1, 1))
    nngp = norm * (jnp.sin(theta) + (jnp.pi - theta) * jnp.cos(theta)) / (2 * jnp.pi)
    if get == "nngp":
        return nngp
    return nngp + s12 * (jnp.pi - theta) / (2 * jnp.pi)


@ft.cache
def _data():
    x_train = jnp.linspace(-1.0, 1.0, 8)[:, None]
    y_train = jnp.sin(3.0 * x_train)
    x_test = jnp.array([[-0.9], [-0.35], [0.1], [0.55], [1.2]])
    return x_train, y_train, x_test


@eqx.filter_jit
def _train_many(keys, x_train, y_train, x_test):
    x_all = jnp.concatenate([x_train, x_test])

    def one(key):
        model = WideReLU(key)
        params, static = eqx.partition(model, eqx.is_inexact_array)

        def loss(p):
            f = jax.vmap(eqx.combine(p, static))(x_train)
            return 0.5 * jnp.mean((f - y_train) ** 2)

        def step(p, _):
            g = jax.grad(loss)(p)
            p = jax.tree.map(lambda a, b: a - LR * b, p, g)
            return p, jax.vmap(eqx.combine(p, static))(x_all)

        _, outputs = jax.lax.scan(step, params, None, length=STEPS)
        f0 = jax.vmap(model)(x_all)
        return f0, outputs[jnp.array(TIMES) - 1], empirical_ntk(model, x_all)

    return jax.vmap(one)(keys)


def test_wide_network_training_matches_ntk_predictions(x64):
    x_train, y_train, x_test = _data()
    n = x_train.shape[0]
    f0, trained, k_emp = _train_many(
        jr.split(jr.key(0), SEEDS), x_train, y_train, x_test
    )
    ts = jnp.array(TIMES, float)
    k_dd_a = _arccos_kernel_fn(x_train, None, "ntk")
    k_td_a = _arccos_kernel_fn(x_test, x_train, "ntk")

    def predicted(f0_s, k_s, k_dd, k_td):
        del k_s
        predict = gradient_descent_mse(k_dd, y_train, learning_rate=LR)
        return predict(ts, f0_s[:n], f0_s[n:], k_td)

    # (a) the empirical NTK at initialisation, seed by seed.
    def with_empirical(f0_s, k_s):
        return predicted(f0_s, k_s, k_s[:n, :n], k_s[n:, :n])

    emp_train, emp_test = jax.vmap(with_empirical)(f0, k_emp)
    net_train, net_test = trained[:, :, :n], trained[:, :, n:]
    moved = float(jnp.max(jnp.abs(trained - f0[:, None])))
    err_a = float(
        jnp.max(
            jnp.abs(jnp.concatenate([emp_train - net_train, emp_test - net_test], 2))
        )
    )
    # (b) the analytic arc-cosine NTK, seed by seed (each seed's own f0).
    ana_train, ana_test = jax.vmap(lambda f, k: predicted(f, k, k_dd_a, k_td_a))(
        f0, k_emp
    )
    err_b = float(
        jnp.max(
            jnp.abs(jnp.concatenate([ana_train - net_train, ana_test - net_test], 2))
        )
    )
    # (c) the mean over initialisations against the infinite ensemble's mean.
    ensemble = gradient_descent_mse_ensemble(
        _arccos_kernel_fn, x_train, y_train, learning_rate=LR
    )
    ens = ensemble(ts, x_test, "ntk", compute_cov=True)
    mean = jnp.mean(net_test, 0)
    se = jnp.std(net_test, 0, ddof=1) / np.sqrt(SEEDS)
    z = float(jnp.max(jnp.abs(mean - ens.mean) / se))
    print(
        f"moved {moved:.3f}  (a) empirical NTK {err_a:.2e}  (b) analytic {err_b:.2e}  (c) z {z:.2f}"
    )
    assert moved > 0.3  # the networks really trained
    # Finite width: the kernel moves by O(1/sqrt(width)) of the distance travelled;
    # the analytic kernel also differs from the initial one by O(1/sqrt(width)).
    assert err_a < moved / np.sqrt(WIDTH), (err_a, moved)
    assert err_b < 3 * moved / np.sqrt(WIDTH), (err_b, moved)
    assert z < 4, z
