"""Scale mixtures of NNGPs: the Student-t posterior against SciPy, the general mixture
against direct quadrature, Monte Carlo of wide ReLU networks with an inverse-gamma
last-layer variance against the Student t (KS and tails), jit/vmap/grad, bad inputs."""

import functools as ft

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.integrate
import scipy.stats as st

from jaxmodels.kernels import (
    DiscreteScale,
    InverseGammaScale,
    LogNormalScale,
    sample_scale_mixture,
    scale_mixture_process,
    student_t_cdf,
    student_t_process,
)

from .helpers import jaxtyping_off


A, B = 2.0, 1.5


@ft.cache
def _problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3))
    k = np.exp(-0.5 * ((x[:, None] - x[None]) ** 2).sum(-1)) + 1e-3 * np.eye(8)
    y = np.sin(x[:6, 0]) + 0.3 * x[:6, 1]
    return k[:6, :6], k[6:, :6], k[6:, 6:], y


def test_student_t_posterior_matches_scipy(x64):
    ktr, kst, kss, y = _problem()
    tp = student_t_process(jnp.asarray(ktr), jnp.asarray(y), a=A, b=B)
    lml = st.multivariate_t.logpdf(y, np.zeros(6), B / A * ktr, df=2 * A)
    assert float(tp.log_marginal_likelihood()) == pytest.approx(lml, rel=1e-10)
    dof, mean, scale = tp.predict(jnp.asarray(kst), jnp.asarray(kss))
    kinv_y = np.linalg.solve(ktr, y)
    ref_mean = kst @ kinv_y
    ref_scale = (
        (2 * B + y @ kinv_y) / (2 * A + 6) * (kss - kst @ np.linalg.solve(ktr, kst.T))
    )
    assert float(dof) == 2 * A + 6
    assert np.allclose(mean, ref_mean, rtol=1e-9) and np.allclose(
        scale, ref_scale, rtol=1e-8
    )
    y_test = np.array([0.2, -0.4])
    lpd = st.multivariate_t.logpdf(y_test, ref_mean, ref_scale, df=2 * A + 6)
    got = tp.log_predictive_density(
        jnp.asarray(y_test), jnp.asarray(kst), jnp.asarray(kss)
    )
    assert float(got) == pytest.approx(lpd, rel=1e-9)
    lo, hi = tp.interval(jnp.asarray(kst), jnp.asarray(np.diag(kss)), level=0.9)
    half = st.t.ppf(0.95, 2 * A + 6) * np.sqrt(np.diag(ref_scale))
    assert np.allclose(lo, ref_mean - half, atol=1e-5)
    assert np.allclose(hi, ref_mean + half, atol=1e-5)
    x = np.linspace(-4, 4, 9)
    assert np.allclose(student_t_cdf(jnp.asarray(x), 3.5), st.t.cdf(x, 3.5), atol=1e-12)


def test_general_mixtures_match_direct_integrals(x64):
    ktr, kst, kss, y = _problem()
    # The quadrature version of the inverse-gamma prior agrees with the closed form.
    tp = student_t_process(jnp.asarray(ktr), jnp.asarray(y), a=A, b=B)
    ig = scale_mixture_process(
        jnp.asarray(ktr), jnp.asarray(y), InverseGammaScale(A, B)
    )
    assert float(ig.log_marginal_likelihood()) == pytest.approx(
        float(tp.log_marginal_likelihood()), abs=1e-8
    )
    # Student t covariance = scale * dof / (dof - 2).
    dof, _, scale = tp.predict(jnp.asarray(kst), jnp.asarray(kss))
    _, cov = ig.predict(jnp.asarray(kst), jnp.asarray(kss))
    assert np.allclose(cov, scale * dof / (dof - 2), rtol=1e-7)
    # Discrete prior: an exact mixture of SciPy Gaussians.
    variances, probs = np.array([0.3, 1.0, 4.0]), np.array([0.2, 0.5, 0.3])
    disc = scale_mixture_process(
        jnp.asarray(ktr), jnp.asarray(y), DiscreteScale(variances, probs)
    )
    ref = np.log(
        sum(
            p * st.multivariate_normal.pdf(y, cov=v * ktr)
            for v, p in zip(variances, probs)
        )
    )
    assert float(disc.log_marginal_likelihood()) == pytest.approx(ref, rel=1e-10)
    # Log-normal prior: Gauss-Hermite against adaptive quadrature of the integral.
    lognormal = LogNormalScale(0.2, 0.8, num_nodes=40)
    ln = scale_mixture_process(jnp.asarray(ktr), jnp.asarray(y), lognormal)

    def integrand(s):
        return st.norm.pdf(s, 0.2, 0.8) * st.multivariate_normal.pdf(
            y, cov=np.exp(s) * ktr
        )

    ref, _ = scipy.integrate.quad(integrand, -8, 8, epsabs=0, epsrel=1e-12, limit=200)
    assert float(ln.log_marginal_likelihood()) == pytest.approx(np.log(ref), rel=1e-8)
    y_test = jnp.asarray([0.2, -0.4])
    lpd = float(ln.log_predictive_density(y_test, jnp.asarray(kst), jnp.asarray(kss)))
    r = np.asarray(y_test) - kst @ np.linalg.solve(ktr, y)
    base = kss - kst @ np.linalg.solve(ktr, kst.T)
    joint, _ = scipy.integrate.quad(
        lambda s: integrand(s) * st.multivariate_normal.pdf(r, cov=np.exp(s) * base),
        -8,
        8,
        epsabs=0,
        epsrel=1e-12,
        limit=200,
    )
    assert lpd == pytest.approx(np.log(joint / ref), rel=1e-7)


WIDTH, NETS = 1024, 4000


@ft.cache
def _network_outputs():
    """Outputs at one input of `NETS` one-hidden-layer ReLU networks of width 1024
    whose last-layer variance is drawn from InvGamma(A, B) (one vmapped program)."""
    x = jnp.asarray([0.6, -0.8, 1.2])

    @jax.jit
    def outputs(keys):
        def one(key):
            wkey, vkey, skey = jr.split(key, 3)
            w = jr.normal(wkey, (WIDTH, 3))
            v = jr.normal(vkey, (WIDTH,))
            sigma2 = B / jr.gamma(skey, A)
            return jnp.sqrt(sigma2 / WIDTH) * v @ jax.nn.relu(w @ x)

        return jax.vmap(one)(keys)

    kernel = float(x @ x) / 2  # E[relu(w.x)^2] for w ~ N(0, I)
    return np.asarray(outputs(jr.split(jr.key(0), NETS)), np.float64), kernel


def test_wide_networks_with_inverse_gamma_scale_are_student_t():
    f, kernel = _network_outputs()
    t_scale = np.sqrt(B / A * kernel)
    critical = st.kstwo.ppf(0.99, NETS)
    ks_t = st.kstest(f, st.t(2 * A, scale=t_scale).cdf).statistic
    gauss_sd = np.sqrt(B / (A - 1) * kernel)  # the t's variance
    ks_gauss = st.kstest(f, st.norm(scale=gauss_sd).cdf).statistic
    print(f"KS t {ks_t:.4f} < 1% critical {critical:.4f} < KS Gaussian {ks_gauss:.4f}")
    assert ks_t < critical < ks_gauss, (ks_t, critical, ks_gauss)
    # Tails at 3 Gaussian standard deviations: binomial standard errors.
    c = 3 * gauss_sd
    tail = np.mean(np.abs(f) > c)
    p_t = 2 * st.t.sf(c / t_scale, 2 * A)
    p_gauss = 2 * st.norm.sf(3.0)
    se = np.sqrt(p_t * (1 - p_t) / NETS)
    print(f"P(|f| > c): MC {tail:.4f}, t {p_t:.4f} (se {se:.4f}), Gauss {p_gauss:.4f}")
    assert abs(tail - p_t) < 4 * se, (tail, p_t, se)
    assert tail > p_gauss + 4 * np.sqrt(p_gauss / NETS), (tail, p_gauss)
    # The library's sampler has the same law.
    draws = sample_scale_mixture(
        jr.key(3), jnp.asarray([[kernel]]), a=A, b=B, num_samples=NETS
    )[:, 0]
    assert (
        st.kstest(np.asarray(draws), st.t(2 * A, scale=t_scale).cdf).statistic
        < critical
    )


def test_jit_vmap_grad():
    ktr, kst, kss, y = (jnp.asarray(v, jnp.float32) for v in _problem())

    @jax.jit
    def lml(a, b, y):
        return student_t_process(ktr, y, a=a, b=b).log_marginal_likelihood()

    eps = 1e-2
    g = jax.grad(lml)(A, B, y)
    fd = (lml(A + eps, B, y) - lml(A - eps, B, y)) / (2 * eps)
    assert float(g) == pytest.approx(float(fd), rel=1e-2)
    ys = jnp.stack([y, 2 * y, -y])
    batched = jax.vmap(lml, in_axes=(None, None, 0))(A, B, ys)
    assert np.allclose(batched[2], batched[0], rtol=1e-5)
    assert np.allclose(batched[0], lml(A, B, y), rtol=1e-5)


def test_bad_inputs():
    ktr, _, _, y = (jnp.asarray(v, jnp.float32) for v in _problem())
    with pytest.raises(ValueError, match="`a`"):
        student_t_process(ktr, y, a=0.0, b=1.0)
    with pytest.raises(ValueError, match="`b`"):
        student_t_process(ktr, y, a=1.0, b=-1.0)
    with pytest.raises(ValueError, match="`num_samples`"):
        sample_scale_mixture(jr.key(0), ktr, a=1.0, b=1.0, num_samples=0)
    tp = student_t_process(ktr, y, a=1.0, b=1.0)
    with jaxtyping_off():
        with pytest.raises(ValueError, match="`y_train`"):
            student_t_process(ktr, y[:3], a=1.0, b=1.0)
        with pytest.raises(ValueError, match="`k_train_train`"):
            student_t_process(ktr[:3], y, a=1.0, b=1.0)
        with pytest.raises(ValueError, match="`k_test_train`"):
            tp.predict(jnp.ones((2, 5)), jnp.eye(2))
        with pytest.raises(ValueError, match="`k_test_test`"):
            tp.predict(jnp.ones((2, 6)), jnp.eye(3))
    not_psd = jnp.asarray([[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(eqx.EquinoxRuntimeError, match="positive definite"):
        student_t_process(not_psd, jnp.ones(2), a=1.0, b=1.0)
    with pytest.raises(eqx.EquinoxRuntimeError, match="`a`"):
        eqx.filter_jit(
            lambda a: student_t_process(ktr, y, a=a, b=1.0).log_marginal_likelihood()
        )(jnp.asarray(-1.0))
    with jaxtyping_off(), pytest.raises(ValueError, match="`variances`"):
        DiscreteScale(jnp.asarray([1.0, 2.0]), jnp.asarray([1.0]))
