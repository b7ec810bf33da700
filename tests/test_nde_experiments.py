"""The wiring of the `nde` experiments (the tour checks their targets)."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from jaxmodels.experiments import get_experiment
from jaxmodels.experiments.nde import _gaussian_nll, spiral_trajectory


@pytest.mark.parametrize(
    "name, metric, higher",
    [
        ("ode-spiral", "relative_l2", False),
        ("cde-irregular-spirals", "test_accuracy", True),
        ("cnf-two-moons", "nll_minus_gaussian", False),
    ],
)
def test_registered(name, metric, higher):
    exp = get_experiment(name)
    assert exp.family == "nde" and exp.metric == metric
    assert exp.higher_is_better == higher


def test_spiral_trajectory_solves_the_true_ode():
    ts, ys = spiral_trajectory()
    assert ts.shape == (1000,) and ys.shape == (1000, 2)
    assert float(ts[-1]) == 25.0 and np.allclose(ys[0], [2.0, 0.0])
    # An independent fixed-step RK4 in float64 numpy, 40 substeps per sample.
    A = np.array([[-0.1, 2.0], [-2.0, -0.1]])

    def f(y):
        return (y**3) @ A

    h = float(ts[1] - ts[0]) / 40
    y, reference = np.array([2.0, 0.0]), [np.array([2.0, 0.0])]
    for _ in range(len(ts) - 1):
        for _ in range(40):
            k1 = f(y)
            k2 = f(y + h / 2 * k1)
            k3 = f(y + h / 2 * k2)
            k4 = f(y + h * k3)
            y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        reference.append(y)
    assert np.max(np.abs(np.asarray(ys) - np.stack(reference))) < 1e-4
    # The radius shrinks (the -0.1 on the diagonal damps it).
    radius = jnp.linalg.norm(ys, axis=1)
    assert float(radius[-1]) < 0.5 * float(radius[0])


def test_gaussian_nll_matches_the_entropy():
    cov = jnp.array([[1.0, 0.5], [0.5, 2.0]])
    chol = jnp.linalg.cholesky(cov)
    train = jr.normal(jr.key(0), (20000, 2)) @ chol.T
    test = jr.normal(jr.key(1), (20000, 2)) @ chol.T
    entropy = math.log(2 * math.pi * math.e) + 0.5 * math.log(
        float(jnp.linalg.det(cov))
    )
    assert abs(float(_gaussian_nll(train, test)) - entropy) < 0.02


@pytest.mark.parametrize("name", ["ode-spiral", "cde-irregular-spirals"])
def test_loss_and_evaluate_compose_as_a_sweep_needs(name):
    task = get_experiment(name).setup(True, jr.key(0))
    models = eqx.filter_vmap(lambda k: task.make_model(task.hparams, k))(
        jr.split(jr.key(0), 2)
    )
    # Traced, not compiled: composition is a property of tracing; the values are the
    # quick mode's test (test_cli trains and evaluates these tasks).
    metric = eqx.filter_eval_shape(eqx.filter_vmap(task.evaluate), models)
    assert metric.shape == (2,)
    batch = jax.tree_util.tree_map(lambda a: a[:4], task.data)
    model = task.make_model(task.hparams, jr.key(0))
    loss = eqx.filter_eval_shape(task.loss, model, batch, jr.key(1))
    assert loss.shape == ()


def test_spiral_report_runs():
    # The runner calls `report` after training; under pytest it is type-checked too.
    task = get_experiment("ode-spiral").setup(True, jr.key(0))
    report = task.report(task.make_model(task.hparams, jr.key(0)))
    assert report["window_loss"] > 0
