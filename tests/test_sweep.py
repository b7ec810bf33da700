import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

import jaxmodels as jm
from jaxmodels.sweep import seed_key

from .helpers import tree_max_abs_diff


@pytest.fixture(scope="module")
def problem():
    x = jr.normal(jr.key(0), (128, 2))
    y = jnp.sin(2 * x[:, :1]) * x[:, 1:]
    return x, y


def make_model(h, key):
    # An initialisation scale as an array-valued hyperparameter, a width as a shape one.
    model = eqx.nn.MLP(2, 1, h.get("width", 8), 1, key=key)
    return jax.tree_util.tree_map(
        lambda w: w * h["scale"] if eqx.is_inexact_array(w) else w, model
    )


def loss(model, batch, key):
    x, y = batch
    return jnp.mean((jax.vmap(model)(x) - y) ** 2)


def optim(h):
    return optax.adam(h["lr"])


@pytest.fixture(scope="module")
def result(problem):
    return jm.sweep(
        make_model,
        loss,
        problem,
        optim=optim,
        grid={"lr": [3e-3, 3e-2], "scale": [1.0, 0.5], "width": [4, 8]},
        seeds=2,
        steps=60,
        batch_size=32,
        metric=lambda m: loss(m, problem, None),
        metric_name="mse",
    )


def test_each_configuration_equals_fit_alone(result, problem):
    assert len(result.configs) == 16
    for i in (1, 14):  # different groups, learning rates, scales and seeds
        cfg = result.configs[i]
        model_key, fit_key = seed_key(jr.key(0), cfg["seed"])
        alone = jm.fit(
            loss,
            make_model(cfg, model_key),
            problem,
            optim=optim(cfg),
            steps=60,
            batch_size=32,
            key=fit_key,
        )
        assert tree_max_abs_diff(alone.model, result.model(i)) < 1e-5
        np.testing.assert_allclose(
            alone.loss_history, result.loss_history[i], rtol=1e-5, atol=1e-6
        )
        expected = float(loss(alone.model, problem, None))
        assert result.metric[i] == pytest.approx(expected, rel=1e-5)


def test_table(result):
    rows = result.table()
    assert len(rows) == 8 and all(r["seeds"] == 2 for r in rows)
    means = [r["mean"] for r in rows]
    assert means == sorted(means)
    # Each row's mean is the mean over its seeds' metrics.
    best = rows[0]
    mine = [
        m
        for c, m in zip(result.configs, result.metric)
        if all(c[k] == best[k] for k in ("lr", "scale", "width"))
    ]
    assert best["mean"] == pytest.approx(float(np.mean(mine)))
    text = result.format_table()
    assert "mse mean" in text and len(text.splitlines()) == 9
    # Widths are shape-changing: two groups, each a stacked model of its width.
    assert [m.layers[0].weight.shape for m in result.models] == [(8, 4, 2), (8, 8, 2)]


def test_diverging_configuration_is_reported_not_raised(problem):
    def log_loss(model, batch, key):
        return jnp.log(model.w)

    class W(eqx.Module):
        w: jax.Array

    out = jm.sweep(
        lambda h, k: W(jnp.array(1.0)),
        log_loss,
        problem,
        optim=lambda h: optax.sgd(h["lr"]),
        grid={"lr": [0.01, 0.3]},
        seeds=1,
        steps=10,
    )
    assert list(out.bad_step) == [-1, 3]
    assert np.isfinite(out.metric[0]) and np.isnan(out.metric[1])
    rows = out.table()
    assert rows[0]["lr"] == 0.01 and rows[1]["diverged"] == 1


def test_loss_with_hyperparameters(problem):
    def weighted(model, batch, key, h):
        return h["weight"] * loss(model, batch, key)

    out = jm.sweep(
        make_model,
        weighted,
        problem,
        optim=optax.sgd(1e-2),
        grid={"weight": [0.0, 1.0], "scale": [1.0]},
        seeds=1,
        steps=5,
        loss_takes_hparams=True,
    )
    assert np.all(out.loss_history[0] == 0.0)
    assert np.all(out.loss_history[1] > 0.0)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(grid={"lr": []}), "grid"),
        (dict(seeds=0), "seeds"),
        (dict(steps=0), "steps"),
        (dict(static=("depth",)), "static"),
        (dict(batch_size=1000), "batch_size"),
    ],
)
def test_bad_arguments(problem, kwargs, name):
    full = dict(optim=optim, grid={"lr": [1e-3]}, seeds=1, steps=2) | kwargs
    with pytest.raises(ValueError, match=f"`{name}"):
        jm.sweep(make_model, loss, problem, **full)
