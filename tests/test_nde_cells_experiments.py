"""The wiring of the continuous-time-cell experiments (the tour runs their quick modes)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from jaxmodels.experiments import get_experiment
from jaxmodels.experiments.nde.cells import (
    GRUForecaster,
    LTCForecaster,
    ODERNNForecaster,
    forecast_inputs,
    parameter_count,
)


@pytest.mark.parametrize(
    "name, metric, higher, target",
    [
        ("ltc-forecast", "mse_ratio_ltc_gru", False, 1.0),
        ("wilson-cowan-classify", "accuracy_gain_over_linear", True, 0.01),
    ],
)
def test_registered(name, metric, higher, target):
    exp = get_experiment(name)
    assert exp.family == "nde" and exp.metric == metric
    assert exp.higher_is_better == higher and exp.target == target


def _series(n=3, length=7):
    gaps = jr.uniform(jr.key(0), (n, length - 1), minval=0.1, maxval=0.5)
    ts = jnp.concatenate([jnp.zeros((n, 1)), jnp.cumsum(gaps, axis=1)], axis=1)
    xs = jnp.sin(ts)[..., None]
    us = jr.normal(jr.key(1), (n, length, 2))
    return ts, us, xs


def test_forecast_inputs_are_causal():
    ts, us, xs = _series(1)
    features = forecast_inputs(ts[0], us[0], xs[0])
    assert features.shape == (7, 4)
    np.testing.assert_array_equal(features[1:, 0], xs[0, :-1, 0])
    np.testing.assert_array_equal(
        features[0], jnp.concatenate([jnp.zeros(1), us[0, 0], jnp.zeros(1)])
    )
    np.testing.assert_allclose(features[1:, 3], jnp.diff(ts[0]), rtol=1e-6)


@pytest.mark.parametrize("kind", ["gru", "ode_rnn", "ltc"])
def test_forecasters_jit_vmap_grad_and_causality(kind):
    key = jr.key(2)
    model = {
        "gru": lambda: GRUForecaster(1, 2, 5, key=key),
        "ode_rnn": lambda: ODERNNForecaster(1, 2, 3, 4, steps=2, key=key),
        "ltc": lambda: LTCForecaster(1, 2, 5, unfolds=2, key=key),
    }[kind]()
    ts, us, xs = _series()

    def loss(m):
        pred = jax.vmap(m)(ts, us, xs)
        return jnp.mean((pred - xs) ** 2), pred

    (value, pred), grads = eqx.filter_jit(
        eqx.filter_value_and_grad(loss, has_aux=True)
    )(model)
    assert pred.shape == xs.shape and bool(jnp.all(jnp.isfinite(pred)))
    leaves = jax.tree_util.tree_leaves(eqx.filter(grads, eqx.is_array))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert sum(float(jnp.abs(g).sum()) for g in leaves) > 0
    # Causal: changing the last observation changes no prediction.
    changed = xs.at[:, -1].add(10.0)
    pred2 = eqx.filter_jit(lambda m, x: jax.vmap(m)(ts, us, x))(model, changed)
    np.testing.assert_allclose(pred2, pred, rtol=1e-6, atol=1e-6)
    assert parameter_count(model) == sum(
        a.size for a in jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array))
    )


def test_forecast_task_shapes_and_times():
    task = get_experiment("ltc-forecast").setup(True, jr.key(0))
    (ts, us), xs = task.data
    assert ts.shape == xs.shape[:2] and us.shape == (*ts.shape, 0)
    assert bool(jnp.all(jnp.diff(ts, axis=1) > 0))
    again = get_experiment("ltc-forecast").setup(True, jr.key(0)).data
    assert all(
        np.array_equal(a, b)
        for a, b in zip(
            jax.tree_util.tree_leaves(task.data), jax.tree_util.tree_leaves(again)
        )
    )
    panel = task.make_model(task.hparams, jr.key(0))
    counts = {n: parameter_count(m) for n, m in panel.models.items()}
    # About equal sizes: within 10% of each other.
    assert max(counts.values()) < 1.1 * min(counts.values()), counts
