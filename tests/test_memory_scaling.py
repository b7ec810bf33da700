"""Scaling laws of outer-product associative memories: the exact error against Monte
Carlo, the infinite-memory error against its closed-form expectation, the fitted
exponents in T and d against the paper's laws, overloading, jit/vmap/grad, bad inputs."""

import functools as ft

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from jaxmodels.memory import (
    OuterProductMemory,
    build_memory,
    expected_unseen_mass,
    fit_power_law,
    memory_error,
    predicted_exponent,
    random_embeddings,
    sample_frequencies,
    scaling_curve,
    token_weights,
    zipf_probabilities,
)

from .helpers import jaxtyping_off


N, M, D = 64, 4, 8


@ft.cache
def _small():
    kt, ki, ko, ks = jr.split(jr.key(0), 4)
    p = zipf_probabilities(N, 1.5)
    targets = jr.randint(kt, (N,), 0, M)
    inputs = random_embeddings(ki, N, D)
    outputs = random_embeddings(ko, M, D)
    q = token_weights(sample_frequencies(ks, p, 100), "frequency")
    return p, targets, inputs, outputs, q


def test_zipf_and_embeddings():
    p = np.asarray(zipf_probabilities(5, 2.0))
    expect = np.arange(1, 6) ** -2.0
    assert np.allclose(p, expect / expect.sum(), rtol=1e-6)
    e = random_embeddings(jr.key(1), 3, 6, active_dim=2)
    assert np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-6)
    assert np.all(np.asarray(e)[:, 2:] == 0) and np.all(np.asarray(e)[:, :2] != 0)


def test_memory_matches_numpy_and_exact_error_matches_monte_carlo():
    p, targets, inputs, outputs, q = _small()
    qn, un, en = (np.asarray(a, np.float64) for a in (q, outputs[targets], inputs))
    w = sum(qn[x] * np.outer(un[x], en[x]) for x in range(N))
    assert np.allclose(build_memory(q, targets, inputs, outputs), w, atol=1e-5)
    memory = OuterProductMemory(q, targets, inputs, outputs)
    exact = float(memory_error(q, targets, p, inputs, outputs))
    assert exact == pytest.approx(float(memory.error(p, targets)), abs=1e-6)
    assert 0.05 < exact < 0.95  # neither trivial nor hopeless
    # Monte Carlo over tokens drawn from p, answered one at a time by the module.
    tokens = jr.categorical(jr.key(5), jnp.log(p), shape=(20_000,))
    wrong = jax.jit(jax.vmap(memory))(tokens) != targets[tokens]
    mc = float(jnp.mean(wrong))
    se = np.sqrt(mc * (1 - mc) / tokens.shape[0])
    assert abs(mc - exact) < 4 * se, (mc, exact, se)


@ft.partial(jax.jit, static_argnums=2)
def _orthonormal_errors(keys, probabilities, num_samples):
    def one(key):
        qkey, ikey, okey, skey = jr.split(key, 4)
        # Signed permutations of the standard basis: orthonormal with exact zeros, so
        # that an unstored token scores exactly 0 everywhere (argmax says 0; the
        # answers avoid 0). A rotated basis leaves round-off that argmax would read.
        signs = jnp.where(jr.bernoulli(qkey, 0.5, (N, 1)), 1.0, -1.0)
        basis = signs * jnp.eye(N)
        inputs = basis[jr.permutation(ikey, N)]
        outputs = basis[jr.permutation(okey, N)[:M]]
        targets = jr.randint(okey, (N,), 1, M)
        freq = sample_frequencies(skey, probabilities, num_samples)
        errors = [
            memory_error(
                token_weights(freq, e), targets, probabilities, inputs, outputs
            )
            for e in ("frequency", "seen")
        ]
        return jnp.stack(errors), jnp.sum(jnp.where(freq > 0, 0.0, probabilities))

    return jax.vmap(one)(keys)


def test_orthonormal_memory_recalls_every_seen_token(x64):
    p = zipf_probabilities(N, 1.5)
    errors, unseen = _orthonormal_errors(jr.split(jr.key(2), 400), p, 40)
    errors, unseen = np.asarray(errors), np.asarray(unseen)
    # Every seen token is recalled, for both estimators: the error is the unseen mass.
    assert np.allclose(errors, unseen[:, None], atol=1e-12)
    expect = float(expected_unseen_mass(p, 40))
    se = unseen.std() / np.sqrt(unseen.size)
    assert abs(unseen.mean() - expect) < 4 * se, (unseen.mean(), expect, se)
    # The closed form against a direct sum.
    pn = np.asarray(p)
    assert expect == pytest.approx(float(np.sum(pn * (1 - pn) ** 40)), rel=1e-12)


def test_fit_power_law_is_least_squares():
    xs = np.array([1.0, 2.0, 5.0, 10.0, 30.0])
    ys = 3.0 * xs**-0.7 * np.exp(0.05 * np.sin(xs))
    a, c = fit_power_law(xs, ys)
    slope, intercept = np.polyfit(np.log(xs), np.log(ys), 1)
    assert float(a) == pytest.approx(-slope, rel=1e-5)
    assert float(c) == pytest.approx(np.exp(intercept), rel=1e-5)


@pytest.mark.parametrize("alpha", [1.5, 2.0])
def test_sample_exponent_with_infinite_memory(alpha):
    curve = scaling_curve(
        jr.key(0),
        [100, 300, 1000, 3000, 10000],
        axis="samples",
        alpha=alpha,
        num_tokens=2**14,
        num_outputs=4,
        estimator="seen",
        seeds=6,
    )
    expect = predicted_exponent(alpha, "samples")
    assert abs(float(curve.exponent) - expect) < 0.1, (float(curve.exponent), expect)


def test_dim_exponent_with_infinite_data():
    kwargs = dict(axis="dim", alpha=2.0, num_tokens=2**11, num_outputs=8, seeds=3)
    dims = [16, 32, 64, 128]
    top = scaling_curve(jr.key(0), dims, estimator="top", **kwargs)
    # The optimal rate d^-(alpha - 1) of the thresholded memory (measured ~0.98).
    assert abs(float(top.exponent) - predicted_exponent(2.0, "dim", "top")) < 0.1, (
        float(top.exponent)
    )
    assert np.all(np.diff(np.asarray(top.mean_error)) < 0)


@jax.jit
def _overload(key):
    n, m, d = 2**11, 8, 24
    p = zipf_probabilities(n, 2.0)
    tkey, ikey, okey, skey = jr.split(key, 4)
    targets = jr.randint(tkey, (n,), 0, m)
    inputs = random_embeddings(ikey, n, d)
    outputs = random_embeddings(okey, m, d)

    def errors(t):
        freq = sample_frequencies(skey, p, t, max_samples=10000)
        qs = [token_weights(freq, "seen"), token_weights(freq, "top", capacity=d // 4)]
        return jnp.stack([memory_error(q, targets, p, inputs, outputs) for q in qs])

    return jax.vmap(errors)(jnp.array([300, 10000]))


def test_finite_memory_is_overloaded_by_storing_every_seen_token():
    errors = np.asarray(jax.vmap(_overload)(jr.split(jr.key(0), 2)).mean(axis=0))
    (seen_few, top_few), (seen_many, top_many) = errors
    # More data hurts the memory that stores every seen token (d = 24 cannot hold the
    # ~100 seen), not the thresholded one.
    assert seen_many > seen_few and top_many <= top_few, errors


def test_grad_vmap_jit():
    p, targets, inputs, outputs, q = _small()
    probe = jr.normal(jr.key(9), (D, D))
    grad = jax.jit(
        jax.grad(lambda q: jnp.sum(probe * build_memory(q, targets, inputs, outputs)))
    )(q)
    expect = jnp.einsum("xi,ij,xj->x", outputs[targets], probe, inputs)
    assert np.allclose(grad, expect, atol=1e-5)
    keys = jr.split(jr.key(3), 4)
    freqs = jax.vmap(lambda k: sample_frequencies(k, p, 50))(keys)
    assert np.allclose(jnp.sum(freqs, axis=1), 1.0, atol=1e-6)
    errs = jax.jit(jax.vmap(lambda f: memory_error(f, targets, p, inputs, outputs)))(
        freqs
    )
    assert errs.shape == (4,)
    # "power" interpolates "seen" (rho = 0) and "frequency" (rho = 1); "top" keeps k.
    f = freqs[0]
    assert np.allclose(token_weights(f, "power", rho=0.0), token_weights(f, "seen"))
    assert np.allclose(token_weights(f, "power", rho=1.0), f, atol=1e-7)
    top = token_weights(p, "top", capacity=5)
    assert np.array_equal(np.asarray(top), (np.arange(N) < 5).astype(np.float32))


def test_bad_inputs():
    p, targets, inputs, outputs, q = _small()
    with pytest.raises(ValueError, match="alpha"):
        zipf_probabilities(10, 0.0)
    with pytest.raises(ValueError, match="num_tokens"):
        zipf_probabilities(0, 2.0)
    with pytest.raises(ValueError, match="alpha"):
        predicted_exponent(1.0, "samples")
    with pytest.raises(ValueError, match="alpha"):
        scaling_curve(
            jr.key(0), [1, 2], axis="dim", alpha=0.9, num_tokens=8, num_outputs=2
        )
    with pytest.raises(ValueError, match="dim"):
        random_embeddings(jr.key(0), 4, 0)
    with pytest.raises(ValueError, match="values"):
        scaling_curve(
            jr.key(0), [0, 2], axis="dim", alpha=2.0, num_tokens=8, num_outputs=2
        )
    with pytest.raises(ValueError, match="estimator"):
        token_weights(p, "hebb")
    with pytest.raises(ValueError, match="capacity"):
        token_weights(p, "top")
    with pytest.raises(ValueError, match="axis"):
        scaling_curve(
            jr.key(0), [1, 2], axis="d", alpha=2.0, num_tokens=8, num_outputs=2
        )
    with jaxtyping_off():
        with pytest.raises(ValueError, match="output_embeddings"):
            memory_error(q, targets, p, inputs, outputs[:, :3])
        with pytest.raises(eqx.EquinoxRuntimeError, match="num_samples"):
            sample_frequencies(jr.key(0), p, 0, max_samples=10)
