"""Equilibrium propagation: fixed points, EP vs implicit differentiation, holomorphic EP,
Jacobian homeostasis, composition with jit/vmap/grad, bad inputs."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import pytest

from jaxmodels.implicit import (
    EquilibriumNetwork,
    ep_loss,
    equilibrium_propagation,
    homeostatic_loss,
)

from .helpers import jaxtyping_off, tree_allclose


HIDDEN = 6
X = [0.5, -1.0, 2.0]
Y = 1


def _model(symmetric, key=0):
    return EquilibriumNetwork(
        3,
        HIDDEN,
        3,
        symmetric=symmetric,
        spectral_norm=0.8,
        rtol=1e-11,
        atol=1e-11,
        key=jr.key(key),
    )


def _flat(tree):
    return jnp.concatenate([jnp.ravel(a) for a in jtu.tree_leaves(tree)])


def _recurrent(g):
    return _flat((g.weight, g.input_weight, g.bias))


def _cos(a, b):
    return float(a @ b / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))


def _rel(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def test_fixed_point_energy_and_homeostatic_loss(x64):
    x = jnp.array(X)

    @eqx.filter_jit
    def run(model):
        u = model.free_phase(x).value
        s = jnp.tanh(u)
        return (
            u,
            model.vector_field(u, x),
            jax.grad(model.energy)(s, x),
            model.jacobian(u, x),
            homeostatic_loss(model, x),
            homeostatic_loss(model, x, key=jr.key(1), probes=20000),
        )

    for symmetric in (True, False):
        model = _model(symmetric)
        u, f, de, jac, exact, hutch = run(model)
        assert float(jnp.max(jnp.abs(f))) < 1e-10
        d = 1 - jnp.tanh(u) ** 2
        # Closed form of dF/du = W diag(rho'(u)) - I.
        assert jnp.allclose(jac, model.weight * d[None, :] - jnp.eye(HIDDEN))
        # The symmetrised Jacobian D^{1/2} J D^{-1/2}, built from the autodiff one.
        sym = jnp.sqrt(d)[:, None] * jac / jnp.sqrt(d)[None, :]
        reference = jnp.sum((sym - sym.T) ** 2)
        assert float(exact) == pytest.approx(float(reference), rel=1e-9, abs=1e-20)
        if symmetric:
            # A critical point of the Hopfield energy of the rates; J is functionally
            # symmetric.
            assert float(jnp.max(jnp.abs(de))) < 1e-9
            assert float(exact) < 1e-25 and float(hutch) < 1e-25
        else:
            # No energy: dE/ds does not vanish at the fixed point.
            assert float(jnp.max(jnp.abs(de))) > 1e-3
            assert float(exact) > 1e-2
            # Hutchinson with 20000 Rademacher probes: relative std below ~1%.
            assert float(hutch) == pytest.approx(float(exact), rel=0.05)


@pytest.fixture(scope="module")
def gradients():
    """EP estimates and the implicit-differentiation gradient, in float64, for a
    symmetric and an asymmetric network (one compilation per network)."""
    with jax.enable_x64(True):
        x = jnp.array(X)
        settings = [(1e-3, 2), (0.5, 2), (0.5, 8)]

        @eqx.filter_jit
        def run(model):
            bp = eqx.filter_grad(lambda m: m.loss(x, Y))(model)
            eps = [
                equilibrium_propagation(model, x, Y, beta=b, points=n)
                for b, n in settings
            ]
            # The exact generalised-EP quantities, by a dense linear solve:
            # ds/dbeta = D (I - W D)^{-1} ... = D J^{-1} dC/ds with J = dF/du.
            u = model.free_phase(x).value
            s = jnp.tanh(u)
            d = 1 - s**2
            jac = model.jacobian(u, x)
            error = d * jnp.linalg.solve(jac, model.cost_gradient(s, Y))
            return bp, eps, error, s

        out = {}
        for symmetric in (True, False):
            bp, eps, error, s = run(_model(symmetric))
            out[symmetric] = dict(zip(settings, eps)), bp, error, s
        return out


def test_symmetric_weights_ep_matches_implicit_gradient(gradients, x64):
    eps, bp, _, _ = gradients[True]
    ep = eps[(1e-3, 2)]
    cos = _cos(_recurrent(ep.grads), _recurrent(bp))
    assert cos >= 0.999, cos
    assert _rel(_recurrent(ep.grads), _recurrent(bp)) < 1e-5
    # The readout gradient is exact (local at the free fixed point).
    assert tree_allclose(ep.grads.readout, bp.readout, rtol=1e-8, atol=1e-12)

    # The reference itself, against central finite differences of the loss.
    model, x = _model(True), jnp.array(X)
    direction = jr.normal(jr.key(5), (HIDDEN, HIDDEN))
    h = 1e-5

    def loss_at(t):
        return float(
            eqx.tree_at(lambda m: m.weight, model, model.weight + t * direction).loss(
                x, Y
            )
        )

    fd = (loss_at(h) - loss_at(-h)) / (2 * h)
    assert float(jnp.sum(bp.weight * direction)) == pytest.approx(fd, rel=1e-6)


def test_holomorphic_ep_is_exact_at_finite_nudge(gradients, x64):
    # Symmetric W: at |beta| = 0.5 the +-beta estimate carries the finite-nudge bias,
    # eight points on the circle remove it (error O(|beta|^8)).
    eps, bp, _, _ = gradients[True]
    two, eight = eps[(0.5, 2)], eps[(0.5, 8)]
    assert _rel(_recurrent(two.grads), _recurrent(bp)) > 1e-3
    assert _rel(_recurrent(eight.grads), _recurrent(bp)) < 1e-4

    # Asymmetric W: holomorphic EP still gives the exact derivative ds/dbeta, hence
    # the exact generalised-EP gradient -(dF/dtheta)^T e ...
    eps, bp, error, s = gradients[False]
    eight = eps[(0.5, 8)]
    assert _rel(eight.error, error) < 1e-4
    assert _rel(eight.grads.weight, -error[:, None] * s[None, :]) < 1e-4
    assert _rel(eight.grads.bias, -error) < 1e-4
    # ... which is not backpropagation's: the asymmetry bias remains (cos ~ 0.95).
    assert _cos(_recurrent(eight.grads), _recurrent(bp)) < 0.99
    assert _cos(_recurrent(eps[(1e-3, 2)].grads), _recurrent(bp)) < 0.99


def test_homeostasis_improves_alignment(x64):
    model = _model(False, key=3)
    xs = jr.normal(jr.key(4), (8, 3))
    ys = jnp.arange(8) % 3

    def per_example_cos(model):
        def one(x, y):
            ep = equilibrium_propagation(model, x, y, beta=1e-3, points=2)
            bp = eqx.filter_grad(lambda m: m.loss(x, y))(model)
            a, b = _recurrent(ep.grads), _recurrent(bp)
            return a @ b / (jnp.linalg.norm(a) * jnp.linalg.norm(b))

        return jnp.mean(jax.vmap(one)(xs, ys))

    def homeo(weight, model):
        m = eqx.tree_at(lambda m: m.weight, model, weight)
        return jnp.mean(jax.vmap(lambda x: homeostatic_loss(m, x))(xs))

    @eqx.filter_jit
    def train(model):
        def step(w, _):
            return w - 0.05 * jax.grad(homeo)(w, model), None

        weight, _ = jax.lax.scan(step, model.weight, None, length=20)
        return eqx.tree_at(lambda m: m.weight, model, weight)

    # One compilation of the alignment, used before and after.
    alignment = eqx.filter_jit(per_example_cos)
    trained = train(model)
    before, after = alignment(model), alignment(trained)
    h0, h1 = homeo(model.weight, model), homeo(trained.weight, trained)
    assert float(h1) < float(h0)
    assert float(after) > float(before), (float(before), float(after))


def test_jit_vmap_grad():
    model = EquilibriumNetwork(3, 5, 2, key=jr.key(0))
    xs = jr.normal(jr.key(1), (4, 3))
    ys = jnp.array([0, 1, 1, 0])

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def run(model):
        sols = jax.vmap(
            lambda x, y: equilibrium_propagation(model, x, y, beta=0.1, points=2)
        )(xs, ys)
        grads = eqx.filter_grad(
            lambda m: jnp.mean(
                jax.vmap(lambda x, y: ep_loss(m, x, y, beta=0.1, points=2))(xs, ys)
            )
        )(model)
        hgrad = eqx.filter_grad(
            lambda m: homeostatic_loss(m, xs[0], key=jr.key(2), probes=3)
        )(model)
        logits = jax.vmap(model)(xs)
        return sols, grads, hgrad, logits

    sols, grads, hgrad, logits = run(model)
    run(model)
    assert logits.shape == (4, 2)
    assert sols.error.shape == (4, 5) and sols.num_steps.shape == (4,)
    mean = jtu.tree_map(lambda g: jnp.mean(g, axis=0), sols.grads)
    assert tree_allclose(grads, mean, rtol=1e-4, atol=1e-6)
    assert bool(jnp.all(jnp.isfinite(hgrad.weight)))
    # The homeostatic term only moves the recurrent weights.
    assert float(jnp.max(jnp.abs(hgrad.readout.weight))) == 0.0


def test_bad_inputs():
    model = EquilibriumNetwork(3, 4, 2, key=jr.key(0))
    x = jnp.ones(3)
    with pytest.raises(ValueError, match="`beta`"):
        equilibrium_propagation(model, x, 0, beta=0.0)
    with pytest.raises(ValueError, match="`points`"):
        equilibrium_propagation(model, x, 0, points=1)
    with pytest.raises(ValueError, match="`probes`"):
        homeostatic_loss(model, x, key=jr.key(0), probes=0)
    with pytest.raises(ValueError, match="`hidden`"):
        EquilibriumNetwork(3, 0, 2, key=jr.key(0))
    with pytest.raises(ValueError, match="`spectral_norm`"):
        EquilibriumNetwork(3, 4, 2, spectral_norm=0.0, key=jr.key(0))
    with jaxtyping_off():
        with pytest.raises(ValueError, match="`x`"):
            equilibrium_propagation(model, jnp.ones(2), 0)
        with pytest.raises(ValueError, match="`y`"):
            model.cost(jnp.zeros(4), jnp.array([0, 1]))
        with pytest.raises(ValueError, match="`state`"):
            homeostatic_loss(model, x, state=jnp.zeros(5))
    # A traced zero nudge is caught at run time.
    with pytest.raises(Exception, match="`beta` must be non-zero"):
        eqx.filter_jit(lambda b: equilibrium_propagation(model, x, 0, beta=b).error)(
            jnp.array(0.0)
        )
