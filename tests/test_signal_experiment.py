"""The `selu-deep-classify` experiment's wiring (the full run is the runner's job)."""

import functools as ft

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import jaxmodels
import jaxmodels.signal as jms
from jaxmodels.experiments import get_experiment


@ft.cache
def _task():
    return get_experiment("selu-deep-classify").setup(True, jr.key(0))


def test_registered():
    exp = get_experiment("selu-deep-classify")
    assert exp.family == "signal" and exp.metric == "test_accuracy"
    assert exp.higher_is_better and 0.5 < exp.target <= 1


def test_models_are_deep_and_matched():
    task = _task()
    snn = task.make_model(task.hparams, jr.key(0))
    relu = task.baselines["relu"](task.hparams, jr.key(0))
    assert isinstance(snn, jms.SNN) and isinstance(relu, jms.ReLUMLP)
    assert snn.depth == relu.depth >= 16 and snn.width == relu.width
    x, y = task.data
    assert x.shape[1] == snn.in_size and int(y.max()) + 1 == snn.out_size


def test_loss_and_evaluate_under_sweep_transformations():
    task = _task()
    # As `sweep` does: hyperparameters as traced arrays, models stacked by vmap.
    lrs = jnp.array([1e-3, 3e-3])
    make = eqx.filter_vmap(lambda lr, k: task.make_model({"lr": lr}, k))
    models = make(lrs, jr.split(jr.key(0), 2))
    accuracy = eqx.filter_jit(eqx.filter_vmap(task.evaluate))(models)
    assert accuracy.shape == (2,)
    assert bool(jnp.all((accuracy >= 0) & (accuracy <= 1)))
    batch = jax.tree_util.tree_map(lambda a: a[:16], task.data)
    model = task.make_model(task.hparams, jr.key(0))
    loss = eqx.filter_jit(task.loss)(model, batch, jr.key(1))
    assert loss.shape == () and bool(jnp.isfinite(loss))
    # The optimiser is traceable in `lr`, as a sweep needs.
    jax.eval_shape(
        lambda lr: task.make_optim({"lr": lr}, 100).init(jnp.zeros(3)), lrs[0]
    )


def test_short_fit_learns():
    task = _task()
    result = jaxmodels.fit(
        task.loss,
        task.make_model(task.hparams, jr.key(0)),
        task.data,
        optim=task.make_optim(task.hparams, 200),
        steps=200,
        batch_size=task.batch_size,
        key=jr.key(1),
    )
    assert np.mean(result.loss_history[-20:]) < 0.8 * np.mean(result.loss_history[:20])
    assert float(task.evaluate(result.model)) > 0.6


def test_plot_and_report():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    task = _task()
    model = task.make_model(task.hparams, jr.key(0))
    fig, ax = plt.subplots()
    task.plot(model, ax)
    assert ax.collections  # the regions and the test points were drawn
    plt.close(fig)
    extras = task.report(model)
    assert 0 <= extras["train_accuracy"] <= 1
