"""Infinite-depth NTK classifiers: the dual recursion against Monte Carlo of wide
networks, the taxonomy, depth-1000 predictions against 1-NN and majority vote,
stability at depth 5000, jit/vmap/grad, bad inputs."""

import functools as ft

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from jaxmodels.kernels import (
    classify_activation,
    deep_kernel,
    deep_ntk,
    deep_ntk_classifier,
    hermite_activation,
    nearest_neighbour_activation,
    relu_activation,
    singular_activation,
    singular_exponent,
)

from .helpers import jaxtyping_off


def _sphere(key, n, d=3):
    x = jr.normal(key, (n, d))
    return x / jnp.linalg.norm(x, axis=1, keepdims=True)


@ft.cache
def _data():
    x_train, x_test = _sphere(jr.key(0), 60), _sphere(jr.key(1), 300)
    y_train = jnp.where(x_train[:, 0] + 0.3 * x_train[:, 1] > 0.2, 1.0, -1.0)
    nearest = y_train[jnp.argmax(x_test @ x_train.T, axis=1)]
    return x_train, y_train, x_test, nearest


def test_taxonomy():
    assert classify_activation(relu_activation()) == "majority-vote"
    assert classify_activation(nearest_neighbour_activation()) == "nearest-neighbour"
    assert classify_activation(hermite_activation([0.5, 1.0, 0.5])) == "majority-vote"
    assert classify_activation(hermite_activation([0.0, 1.0])) == "linear"
    for dim in (3, 4, 7):
        act = singular_activation(dim)
        assert classify_activation(act) == "singular"
        assert singular_exponent(act) == pytest.approx(dim, rel=1e-6)
    # The depth-L kernel of a singular activation: Theta_L(rho) / Theta_L(rho') for
    # rho, rho' near 1 tends to ((1 - rho') / (1 - rho))^(alpha / 2).
    act = singular_activation(4)
    k = deep_kernel(jnp.asarray([1 - 1e-4, 1 - 4e-4]), activation=act, depth=400)
    ratio = float(k.ntk_log[0] - k.ntk_log[1])
    assert ratio == pytest.approx(np.log(4.0) * 4 / 2, rel=0.03), ratio


@ft.cache
def _monte_carlo():
    """NNGP and NTK of 64 two-hidden-layer networks of width 512 at three inputs."""
    x = _sphere(jr.key(2), 3)
    width = 512

    def net(params, act, x):
        w1, w2, v = params
        h = act(w1 @ x)
        h = act(w2 @ h / jnp.sqrt(width))
        return v @ h / jnp.sqrt(width)

    def init(key):
        k1, k2, k3 = jr.split(key, 3)
        return (
            jr.normal(k1, (width, 3)),
            jr.normal(k2, (width, width)),
            jr.normal(k3, (width,)),
        )

    out = {}
    for name, act in (
        ("relu", relu_activation()),
        ("hermite", hermite_activation([0.3, 0.8, 0.5])),
    ):

        @jax.jit
        def kernels(keys, act=act):
            def one(key):
                params = init(key)
                f = jax.vmap(lambda xi: net(params, act, xi))(x)
                jac = jax.vmap(lambda xi: jax.grad(net)(params, act, xi))(x)
                flat = jnp.concatenate(
                    [j.reshape(3, -1) for j in jax.tree.leaves(jac)], axis=1
                )
                return jnp.outer(f, f), flat @ flat.T

            return jax.vmap(one)(keys)

        nngp, ntk = kernels(jr.split(jr.key(3), 64))
        out[name] = (act, np.asarray(nngp), np.asarray(ntk))
    return np.asarray(x @ x.T), out


@pytest.mark.parametrize("name", ["relu", "hermite"])
def test_recursion_matches_wide_networks(name):
    rho, results = _monte_carlo()
    act, nngp, ntk = results[name]
    k = deep_kernel(jnp.asarray(rho), activation=act, depth=2)
    for samples, log, sign in (
        (nngp, k.nngp_log, k.nngp_sign),
        (ntk, k.ntk_log, k.ntk_sign),
    ):
        analytic = np.asarray(sign * jnp.exp(log))
        mean = samples.mean(0)
        se = samples.std(0) / np.sqrt(samples.shape[0])
        # 4 standard errors plus the O(1/width) finite-width bias.
        assert np.all(np.abs(mean - analytic) < 4 * se + 0.01 * np.abs(analytic)), (
            mean,
            analytic,
            se,
        )


def test_deep_classifiers_are_nearest_neighbour_and_majority_vote():
    x_train, y_train, x_test, nearest = _data()
    nn_act = nearest_neighbour_activation()
    pred = deep_ntk_classifier(x_train, y_train, x_test, activation=nn_act, depth=1000)
    agreement = float(jnp.mean(pred == nearest))
    assert agreement >= 0.99, agreement
    # Not a coincidence of the data: 1-NN and the majority differ on many points.
    majority = jnp.sign(jnp.sum(y_train))
    assert float(jnp.mean(nearest == majority)) < 0.8
    pred = deep_ntk_classifier(
        x_train, y_train, x_test, activation=relu_activation(), depth=1000
    )
    assert float(jnp.mean(pred == majority)) >= 0.99


def test_stable_at_depth_5000():
    rho = jnp.asarray([1.0, 0.99, 0.5, 0.0, -0.5, -1.0])
    for act in (
        relu_activation(),
        nearest_neighbour_activation(),
        singular_activation(3),
        hermite_activation([0.5, 1.0, 0.5]),
    ):
        k = jax.jit(ft.partial(deep_kernel, activation=act, depth=5000))(rho)
        for leaf in jax.tree.leaves(k):
            assert np.all(np.isfinite(np.asarray(leaf)))
        # Theta_L(1) = L + 1 for ReLU and grows like dual'(1)^L otherwise.
        if act.kind == "relu":
            assert float(k.ntk_log[0]) == pytest.approx(np.log(5001.0), rel=1e-4)
        normalised = deep_ntk(jnp.eye(3)[:2], jnp.eye(3), activation=act, depth=5000)
        assert np.all(np.isfinite(np.asarray(normalised)))
        assert np.allclose(np.diagonal(np.asarray(normalised)), 1.0, atol=1e-4)


def test_jit_vmap_grad():
    act = singular_activation(3)

    def log_ntk(rho):
        return deep_kernel(rho, activation=act, depth=20).ntk_log

    rhos = jnp.asarray([0.2, 0.7, 0.95])
    vmapped = jax.vmap(jax.jit(log_ntk))(rhos)
    assert np.allclose(vmapped, log_ntk(rhos), rtol=1e-6)
    g = jax.vmap(jax.grad(log_ntk))(rhos)
    eps = 1e-3
    fd = (log_ntk(rhos + eps) - log_ntk(rhos - eps)) / (2 * eps)
    assert np.allclose(g, fd, rtol=2e-2), (g, fd)


def test_bad_inputs():
    x_train, y_train, x_test, _ = _data()
    act = relu_activation()
    with pytest.raises(ValueError, match="`depth`"):
        deep_kernel(jnp.zeros(3), activation=act, depth=-1)
    with pytest.raises(ValueError, match="`coefficients`"):
        hermite_activation([0.0, 0.0])
    with pytest.raises(ValueError, match="`dim`"):
        singular_activation(2)
    with pytest.raises(ValueError, match="`activation`"):
        singular_exponent(act)
    with jaxtyping_off():
        with pytest.raises(ValueError, match="`y_train`"):
            deep_ntk_classifier(x_train, y_train[:5], x_test, activation=act, depth=3)
        with pytest.raises(ValueError, match="`x_test`"):
            deep_ntk_classifier(
                x_train, y_train, x_test[:, :2], activation=act, depth=3
            )
