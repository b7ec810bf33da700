"""Continuous normalising flows: an analytic density, normalisation, Hutchinson's
estimator, inverses and gradients, a short fit, errors."""

import math

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.scipy.linalg as jsl
import jax.scipy.stats as jss
import jax.tree_util as jtu
import numpy as np
import optax
import pytest
from jaxtyping import Array, Float, PyTree

import jaxmodels as jm
from jaxmodels.nde._cnf import CNF
from jaxmodels.nde._vector_field import MLPVectorField

from .helpers import jaxtyping_off


class _Linear(eqx.Module):
    """`f(t, z) = A z`: a plain module, not an `AbstractVectorField`."""

    A: Float[Array, "n n"]

    def __call__(self, t, z: Float[Array, " n"], args: PyTree) -> Float[Array, " n"]:
        return self.A @ z


def _tight():
    return dfx.PIDController(rtol=1e-10, atol=1e-10)


def _mlp_cnf(**kwargs):
    vf = MLPVectorField(2, 16, 1, time_dependent=True, key=jr.key(0))
    return CNF(vf, **kwargs)


def test_linear_field_matches_analytic_density(x64):
    A = jnp.array([[0.3, 1.0, 0.0], [-0.5, -0.2, 0.4], [0.1, -0.6, 0.5]])
    cnf = CNF(_Linear(A), stepsize_controller=_tight())
    xs = jr.normal(jr.key(0), (4, 3), jnp.float64)
    expected = jax.vmap(
        lambda x: jnp.sum(jss.norm.logpdf(jsl.expm(-A) @ x)) - jnp.trace(A)
    )(xs)
    got = jax.vmap(cnf.log_prob)(xs)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    # Not vacuous: the volume change is far larger than the tolerance.
    assert abs(float(jnp.trace(A))) > 0.5
    np.testing.assert_allclose(
        jax.vmap(cnf.inverse)(xs), xs @ jsl.expm(-A).T, rtol=0, atol=1e-8
    )


def test_density_integrates_to_one():
    cnf = _mlp_cnf()
    n, lo, hi = 100, -6.0, 6.0
    h = (hi - lo) / n
    # Cell midpoints: the midpoint rule on a smooth density.
    grid = lo + h * (jnp.arange(n) + 0.5)
    points = jnp.stack(jnp.meshgrid(grid, grid), axis=-1).reshape(-1, 2)
    logp = eqx.filter_jit(lambda c, p: jax.vmap(c.log_prob)(p))(cnf, points)
    mass = float(jnp.sum(jnp.exp(logp)) * h**2)
    assert abs(mass - 1.0) < 1e-2, mass
    # Not vacuous: the flow is far from the identity.
    base = jnp.sum(jss.norm.logpdf(points), axis=-1)
    inner = jnp.all(jnp.abs(points) < 2.0, axis=-1)
    assert float(jnp.max(jnp.where(inner, jnp.abs(logp - base), 0.0))) > 0.1


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased_and_deterministic(probe):
    exact = _mlp_cnf()
    hutch = _mlp_cnf(trace="hutchinson", probe=probe)
    x = jnp.array([0.7, -0.4])
    n = 400

    @eqx.filter_jit
    def run(exact, hutch, keys):
        estimates = jax.vmap(lambda k: hutch.log_prob(x, key=k))(keys)
        again = jax.vmap(lambda k: hutch.log_prob(x, key=k))(keys[:2])
        return estimates, again, exact.log_prob(x)

    estimates, again, target = run(exact, hutch, jr.split(jr.key(1), n))
    mean = float(jnp.mean(estimates))
    stderr = float(jnp.std(estimates)) / math.sqrt(n)
    # Not vacuous: the probes disagree, so the estimator has real variance.
    assert stderr > 1e-3, stderr
    # Measured: |mean - exact| is about one standard error for both probes.
    assert abs(mean - float(target)) < 4 * stderr + 1e-4, (mean, target, stderr)
    # One fixed key: one fixed probe, so the same answer when recomputed in another
    # batch (to rounding: batches of other sizes vectorise differently), while the
    # answers for different keys spread by far more (the standard error above).
    np.testing.assert_allclose(again, estimates[:2], rtol=1e-6, atol=0)
    assert float(jnp.std(estimates)) > 1e3 * 1e-6 * abs(mean)


def test_inverse_transform_and_sample():
    cnf = _mlp_cnf()
    z0 = jr.normal(jr.key(1), (5, 2))
    keys = jr.split(jr.key(2), 6)

    @eqx.filter_jit
    def run(cnf, z0, keys):
        # The base draws of `sample`, transformed in the same batch as `z0`.
        draws = jax.vmap(lambda k: jr.normal(k, (2,)))(keys)
        xs = jax.vmap(cnf.transform)(jnp.concatenate([z0, draws]))
        samples = jax.vmap(cnf.sample)(keys)
        return xs[:5], jax.vmap(cnf.inverse)(xs[:5]), samples, xs[5:]

    xs, back, samples, direct = run(cnf, z0, keys)
    assert float(jnp.max(jnp.abs(xs - z0))) > 0.1
    np.testing.assert_allclose(back, z0, rtol=0, atol=1e-4)
    assert samples.shape == (6, 2)
    np.testing.assert_allclose(samples, direct, rtol=0, atol=1e-5)
    assert float(jnp.min(jnp.std(samples, axis=0))) > 0.1


def _nll(cnf, xs):
    return -jnp.mean(jax.vmap(cnf.log_prob)(xs))


def test_grad_matches_finite_differences(x64):
    vf = MLPVectorField(2, 4, 1, time_dependent=True, key=jr.key(0))
    cnf = CNF(vf, stepsize_controller=dfx.PIDController(rtol=1e-9, atol=1e-9))
    xs = jr.normal(jr.key(1), (3, 2), jnp.float64)
    params, static = eqx.partition(cnf, eqx.is_inexact_array)
    grads = eqx.filter_jit(eqx.filter_grad(_nll))(cnf, xs)
    leaves, treedef = jtu.tree_flatten(params)
    keys = jr.split(jr.key(2), len(leaves))
    direction = jtu.tree_unflatten(
        treedef, [jr.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    )
    eps = 1e-5

    nll = eqx.filter_jit(_nll)

    def shifted(sign):
        p = jtu.tree_map(lambda x, d: x + sign * eps * d, params, direction)
        return nll(eqx.combine(p, static), xs)

    fd = (shifted(1.0) - shifted(-1.0)) / (2 * eps)
    g_dot_d = sum(
        jnp.vdot(g, d)
        for g, d in zip(jtu.tree_leaves(grads), jtu.tree_leaves(direction))
    )
    assert abs(float(fd)) > 1e-3
    np.testing.assert_allclose(g_dot_d, fd, rtol=1e-5)


def test_fit_lowers_nll_towards_entropy():
    cov = jnp.array([[0.25, 0.2], [0.2, 0.25]])
    chol = jnp.linalg.cholesky(cov)
    entropy = math.log(2 * math.pi * math.e) + 0.5 * float(jnp.linalg.slogdet(cov)[1])
    train = jr.normal(jr.key(0), (512, 2)) @ chol.T
    test = jr.normal(jr.key(1), (512, 2)) @ chol.T
    vf = MLPVectorField(
        2, 16, 1, final_activation=lambda y: y, time_dependent=True, key=jr.key(2)
    )
    cnf = CNF(vf, stepsize_controller=dfx.PIDController(rtol=1e-3, atol=1e-3))

    def loss(cnf, batch, key):
        del key
        return _nll(cnf, batch)

    before = float(eqx.filter_jit(_nll)(cnf, test))
    out = jm.fit(
        loss,
        cnf,
        train,
        optim=optax.adam(1e-2),
        steps=200,
        batch_size=64,
        key=jr.key(3),
        progress=False,
    )
    after = float(eqx.filter_jit(_nll)(out.model, test))
    # N(0, I) scores these data at log(2 pi) + tr(cov) / 2, about 1.15 above entropy.
    assert before - entropy > 0.9, (before, entropy)
    assert after < entropy + 0.4 * (before - entropy), (before, after, entropy)
    # A held-out NLL cannot beat the entropy by more than its sampling noise.
    assert after > entropy - 0.15, (after, entropy)


def test_bad_inputs():
    cnf = _mlp_cnf()
    with pytest.raises(ValueError, match="`x`"):
        cnf.log_prob(jnp.ones(3))
    with pytest.raises(ValueError, match="`x`"):
        cnf.inverse(jnp.ones(3))
    with pytest.raises(ValueError, match="`z0`"):
        cnf.transform(jnp.ones(3))
    with jaxtyping_off(), pytest.raises(ValueError, match="`x`"):
        cnf.log_prob(jnp.ones((4, 2)))
    with pytest.raises(ValueError, match="`key`"):
        _mlp_cnf(trace="hutchinson").log_prob(jnp.ones(2))
    vf = MLPVectorField(2, 4, 1, key=jr.key(0))
    with pytest.raises(ValueError, match="`trace`"):
        CNF(vf, trace="hutchinsn")
    with pytest.raises(ValueError, match="`probe`"):
        CNF(vf, trace="hutchinson", probe="uniform")
    with pytest.raises(ValueError, match="`t1`"):
        CNF(vf, t1=0.0)
    with pytest.raises(ValueError, match="`max_steps`"):
        CNF(vf, max_steps=0)
    with pytest.raises(ValueError, match="`dt0`"):
        CNF(vf, stepsize_controller=dfx.ConstantStepSize())
    with pytest.raises(ValueError, match="`dt0`"):
        CNF(vf, dt0=-0.1)
    with pytest.raises(ValueError, match="`data_size`"):
        CNF(vf, data_size=3)
    with jaxtyping_off(), pytest.raises(ValueError, match="`vector_field`"):
        CNF(jnp.ones(2))  # pyright: ignore[reportArgumentType]
    # Without a declared size, sampling needs `data_size`; the density does not.
    linear = CNF(_Linear(-jnp.eye(2)))
    with pytest.raises(ValueError, match="`data_size`"):
        linear.sample(jr.key(0))
    assert CNF(_Linear(-jnp.eye(2)), data_size=2).sample(jr.key(0)).shape == (2,)


def test_fixed_step_solves_backwards():
    # `log_prob` solves from `t1` back to `0`, with the step `-dt0`.
    cnf = _mlp_cnf(stepsize_controller=dfx.ConstantStepSize(), dt0=0.125)
    x = jnp.array([0.3, -1.2])
    run = eqx.filter_jit(lambda a, b, x: (a.log_prob(x), b.log_prob(x)))
    fixed, adaptive = run(cnf, _mlp_cnf(), x)
    np.testing.assert_allclose(fixed, adaptive, rtol=0, atol=1e-4)
    base = float(jnp.sum(jss.norm.logpdf(x)))
    assert abs(float(adaptive) - base) > 0.05
