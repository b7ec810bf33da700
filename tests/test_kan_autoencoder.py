import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

import jaxmodels.data as jmd
import jaxmodels.kan as kan

from .helpers import jaxtyping_off


# --- the manifold data ------------------------------------------------------------------


# One compilation per configuration (eager op-by-op dispatch compiles every operation).
_manifold = jax.jit(
    jmd.manifold,
    static_argnums=1,
    static_argnames=("kind", "ambient", "intrinsic"),
)


@pytest.mark.parametrize(
    "kind, ambient, intrinsic, coords",
    [("swiss_roll", 5, 2, 2), ("torus", 7, 2, 2), ("sphere", 4, 2, 3)],
)
def test_manifold_shapes_and_determinism(kind, ambient, intrinsic, coords):
    x, u = _manifold(jr.key(0), 9, kind=kind, ambient=ambient, intrinsic=intrinsic)
    assert (x.shape, x.dtype) == ((9, ambient), jnp.float32)
    assert (u.shape, u.dtype) == ((9, coords), jnp.float32)
    x2, u2 = _manifold(jr.key(0), 9, kind=kind, ambient=ambient, intrinsic=intrinsic)
    x3, _ = _manifold(jr.key(1), 9, kind=kind, ambient=ambient, intrinsic=intrinsic)
    assert jnp.array_equal(x, x2) and jnp.array_equal(u, u2)
    assert not jnp.array_equal(x, x3)


def test_manifold_linear_embeddings_are_isometric():
    # warp = 0: x = Q b(u) with orthonormal columns Q, so distances are those of the
    # base embedding, computed here from the returned coordinates.
    x, theta = _manifold(jr.key(2), 30, kind="torus", ambient=9, intrinsic=3, warp=0)
    th = np.asarray(theta, np.float64)
    base = np.concatenate([np.cos(th), np.sin(th)], axis=1) / math.sqrt(3)
    gram = np.asarray(x, np.float64) @ np.asarray(x, np.float64).T
    np.testing.assert_allclose(gram, base @ base.T, atol=2e-6)
    x, u = _manifold(jr.key(3), 30, kind="swiss_roll", ambient=3, warp=0)
    t, h = np.asarray(u, np.float64).T
    np.testing.assert_allclose(
        np.sum(np.asarray(x, np.float64) ** 2, axis=1),
        (t / (4.5 * math.pi)) ** 2 + h**2,
        rtol=1e-5,
    )
    assert np.all((t >= 1.5 * math.pi) & (t <= 4.5 * math.pi))
    _, z = _manifold(jr.key(4), 30, kind="sphere", ambient=4, intrinsic=2)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(z), axis=1), 1.0, rtol=1e-6)


def test_manifold_is_locally_low_dimensional():
    # Warped into R^8: near any point the cloud is flat to first order, so the third
    # principal value of a small neighbourhood is much smaller than the second.
    x, _ = _manifold(jr.key(5), 3000, kind="swiss_roll", ambient=8, warp=0.5)
    x = np.asarray(x, np.float64)
    for i in range(5):
        nearest = np.argsort(np.sum((x - x[i]) ** 2, axis=1))[:30]
        s = np.linalg.svd(x[nearest] - x[nearest].mean(0), compute_uv=False)
        assert s[2] < 0.2 * s[1]
    # And it is curved: the whole cloud needs more than 3 directions.
    s = np.linalg.svd(x - x.mean(0), compute_uv=False)
    assert s[3] > 0.1 * s[0]


def test_manifold_noise_and_jit_vmap():
    clean, _ = _manifold(jr.key(6), 4000, ambient=6, noise=0.0)
    noisy, _ = _manifold(jr.key(6), 4000, ambient=6, noise=0.1)
    assert float(jnp.std(noisy - clean)) == pytest.approx(0.1, rel=0.03)
    keys = jr.split(jr.key(7), 2)
    xs, _ = jax.jit(jax.vmap(lambda k: jmd.manifold(k, 5, ambient=6)))(keys)
    np.testing.assert_allclose(xs[1], _manifold(keys[1], 5, ambient=6)[0], atol=1e-6)


def test_manifold_bad_inputs():
    with pytest.raises(ValueError, match="`kind`"):
        jmd.manifold(jr.key(0), 5, kind="klein_bottle")
    with pytest.raises(ValueError, match="`ambient`"):
        jmd.manifold(jr.key(0), 5, kind="torus", ambient=3, intrinsic=2)
    with pytest.raises(ValueError, match="`intrinsic`"):
        jmd.manifold(jr.key(0), 5, kind="swiss_roll", intrinsic=3)
    with pytest.raises(ValueError, match="`noise`"):
        jmd.manifold(jr.key(0), 5, noise=-1.0)
    with pytest.raises(ValueError, match="`n`"):
        jmd.manifold(jr.key(0), 0)


# --- the autoencoder ------------------------------------------------------------------


@functools.cache
def _model_and_data():
    model = kan.KANAutoencoder(4, 2, hidden=(4,), key=jr.key(0))
    x, _ = _manifold(jr.key(1), 64, kind="swiss_roll", ambient=4, warp=0.3)
    return model, x


def test_autoencoder_structure_and_derivative():
    model, x = _model_and_data()
    assert model.encoder.widths == (4, 4, 2)
    assert model.decoder.widths == (2, 4, 4)
    v = jnp.array([0.5, 0.2, -0.7, 0.3])
    eps = 1e-2

    @eqx.filter_jit
    def run(model, x):
        z = model.encode(x)
        # The encoder is a composition of KAN layers: the layers' edge sums.
        h = x
        for layer in model.encoder.layers:
            h = jnp.sum(layer.edges(h), axis=1)
        _, jvp = jax.jvp(model, (x,), (v,))
        fd = (model(x + eps * v) - model(x - eps * v)) / (2 * eps)
        return z, h, model(x), model.decode(z), jvp, fd

    z, h, out, decoded, jvp, fd = run(model, x[0])
    assert z.shape == (2,) and out.shape == (4,)
    np.testing.assert_allclose(z, h, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(out, decoded, rtol=1e-6, atol=1e-7)
    # Central differences of cubic splines: O(eps^2) truncation in float32.
    np.testing.assert_allclose(
        jvp, fd, rtol=1e-3, atol=1e-4 * float(jnp.abs(jvp).max())
    )
    assert float(jnp.abs(jvp).max()) > 1e-4


@eqx.filter_jit
def _mse(model, x):
    return jnp.mean((jax.vmap(model)(x) - x) ** 2)


def test_autoencoder_jit_vmap_grad_and_training():
    model, x = _model_and_data()
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def loss(params):
        m = eqx.combine(params, static)
        return jnp.mean((jax.vmap(m)(x) - x) ** 2)

    optim = optax.adam(1e-2)

    @jax.jit
    def train(params):
        def step(carry, _):
            params, state = carry
            value, grad = jax.value_and_grad(loss)(params)
            updates, state = optim.update(grad, state)
            return (optax.apply_updates(params, updates), state), value

        (params, _), values = jax.lax.scan(step, (params, optim.init(params)), None, 60)
        return params, values

    trained, values = train(params)
    final = eqx.combine(trained, static)
    # The first loss is the untrained model's error; the trained model's, recomputed
    # outside the scan, is less than half of it.
    assert float(values[0]) == pytest.approx(float(_mse(model, x)), rel=1e-5)
    assert float(_mse(final, x)) < 0.5 * float(values[0])


def test_autoencoder_bad_inputs():
    with pytest.raises(ValueError, match="`data_size`"):
        kan.KANAutoencoder(0, 2, key=jr.key(0))
    with pytest.raises(ValueError, match="`latent_size`"):
        kan.KANAutoencoder(4, 0, key=jr.key(0))
    with jaxtyping_off(), pytest.raises(ValueError, match="`hidden`"):
        kan.KANAutoencoder(4, 2, hidden=(3, 0), key=jr.key(0))
