"""Wilson-Cowan metapopulation head: steady state, its readout, training, errors."""

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optax
import optimistix as optx
import pytest

import jaxmodels
import jaxmodels.data as jmd
from jaxmodels.nde import WilsonCowan


def test_readout_is_taken_at_a_steady_state():
    model = WilsonCowan(2, 8, 2, key=jr.key(0))
    x = jnp.array([0.5, -1.0])
    sol = model.steady_state(x)
    assert sol.result == dfx.RESULTS.successful and bool(sol.settled)
    state = (sol.excitatory, sol.inhibitory)
    # The criterion of the event, recomputed independently from the vector field.
    residual = optx.rms_norm(model.vector_field(0.0, state, model.drive(x)))
    assert float(residual) == pytest.approx(float(sol.residual), rel=1e-5)
    assert float(residual) < model.atol + model.rtol * float(optx.rms_norm(state))
    # It stopped early, at the steady state, not at t1.
    assert 0 < float(sol.time) < model.t1
    # A fixed point: integrating on from it barely moves it.
    drive = model.drive(x)
    e, i = state
    for _ in range(200):
        de, di = model.vector_field(0.0, (e, i), drive)
        e, i = e + 0.01 * de, i + 0.01 * di
    assert float(jnp.max(jnp.abs(e - sol.excitatory))) < 1e-3


def test_one_attracting_fixed_point_even_with_large_couplings():
    model = WilsonCowan(2, 6, 2, key=jr.key(0))
    model = eqx.tree_at(lambda m: m.coupling, model, 50.0 * model.coupling)
    assert float(jnp.linalg.norm(model._couplings(), ord=2)) <= 3.0 + 1e-5
    drive = model.drive(jnp.array([1.0, -2.0]))
    ends = []
    for k in range(5):
        e0, i0 = jr.uniform(jr.key(k), (2, 6))
        sol = dfx.diffeqsolve(
            dfx.ODETerm(model.vector_field),
            dfx.Tsit5(),
            0.0,
            100.0,
            None,
            (e0, i0),
            args=drive,
            stepsize_controller=dfx.PIDController(rtol=1e-7, atol=1e-8),
        )
        ends.append(jnp.concatenate([sol.ys[0][-1], sol.ys[1][-1]]))
    spread = jnp.max(jnp.abs(jnp.stack(ends) - ends[0][None, :]))
    assert float(spread) < 1e-5


def test_not_settling_raises_or_reports():
    model = WilsonCowan(2, 4, 2, t1=0.5, key=jr.key(0))
    sol = model.steady_state(jnp.ones(2), throw=False)
    assert not bool(sol.settled) and float(sol.time) == 0.5
    with pytest.raises(Exception, match="no steady state by t1=0.5"):
        model(jnp.ones(2))


def _loss(model, batch, key):
    x, y = batch
    logits = jax.vmap(model)(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def test_trains_past_a_linear_classifier():
    x, y = jmd.two_moons(jr.key(0), 128, noise=0.1)
    x, _, _ = jmd.standardise(x)
    linear = jaxmodels.fit(
        _loss,
        eqx.nn.Linear(2, 2, key=jr.key(1)),
        (x, y),
        optim=optax.adam(3e-2),
        steps=300,
        key=jr.key(2),
        progress=False,
    )
    head = jaxmodels.fit(
        _loss,
        WilsonCowan(2, 8, 2, key=jr.key(1)),
        (x, y),
        optim=optax.adam(3e-2),
        steps=300,
        key=jr.key(2),
        progress=False,
    )

    def accuracy(model):
        return float(jnp.mean(jnp.argmax(jax.vmap(model)(x), -1) == y))

    # Two moons: a linear classifier tops out near 0.85, the head separates them.
    assert accuracy(head.model) > accuracy(linear.model) + 0.1, (
        accuracy(head.model),
        accuracy(linear.model),
    )


def test_bad_construction():
    with pytest.raises(ValueError, match="`nodes`"):
        WilsonCowan(2, 0, 2, key=jr.key(0))
    with pytest.raises(ValueError, match="`t1`"):
        WilsonCowan(2, 3, 2, t1=0.0, key=jr.key(0))
