import equinox as eqx
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

import jaxmodels as jm
from jaxmodels.train._step import chunk_bounds, chunk_length

from .helpers import tree_max_abs_diff


class Counts(eqx.Module):
    c: jax.Array


def count_loss(model, batch, key):
    # d/dc of -sum(c[i]) is -1 at every index in the batch: SGD with lr=1 adds one to
    # the count of each sample drawn.
    return -jnp.sum(model.c[batch["i"]])


def test_every_sample_once_per_epoch():
    n, batch_size, epochs = 24, 6, 3
    data = {"i": jnp.arange(n)}
    model = Counts(jnp.zeros(n))
    steps_per_epoch = n // batch_size
    for steps in (steps_per_epoch, epochs * steps_per_epoch):
        out = jm.fit(
            count_loss,
            model,
            data,
            optim=optax.sgd(1.0),
            steps=steps,
            batch_size=batch_size,
            key=jr.key(0),
            chunk=5,  # chunks cut across epoch boundaries
        )
        np.testing.assert_array_equal(out.model.c, steps // steps_per_epoch)


def test_half_epoch_draws_distinct_samples():
    n, batch_size = 20, 5
    out = jm.fit(
        count_loss,
        Counts(jnp.zeros(n)),
        {"i": jnp.arange(n)},
        optim=optax.sgd(1.0),
        steps=2,
        batch_size=batch_size,
        key=jr.key(3),
    )
    assert sorted(np.unique(np.asarray(out.model.c))) == [0.0, 1.0]
    assert float(out.model.c.sum()) == 10.0


def mse(model, batch, key):
    x, y = batch
    return jnp.mean((jax.vmap(model)(x) - y) ** 2)


@pytest.fixture(scope="module")
def regression():
    x = jr.normal(jr.key(1), (256, 3))
    y = jnp.sin(x @ jnp.array([[1.0], [-0.5], [0.25]]))
    return x, y


@pytest.fixture(scope="module")
def mlp():
    return eqx.nn.MLP(3, 1, 16, 2, key=jr.key(0))


def test_matches_hand_written_optax_loop(regression, mlp):
    x, y = regression
    optim = optax.adam(3e-3)
    steps, batch_size, n = 37, 32, x.shape[0]
    out = jm.fit(
        mse,
        mlp,
        (x, y),
        optim=optim,
        steps=steps,
        batch_size=batch_size,
        key=jr.key(5),
        chunk=10,
    )
    # The documented sampling, written out independently.
    data_key, _ = jr.split(jr.key(5))
    params, static = eqx.partition(mlp, eqx.is_inexact_array)
    state = optim.init(params)
    spe = n // batch_size
    losses = []

    @jax.jit
    def step(params, state, s):
        perm = jr.permutation(jr.fold_in(data_key, s // spe), n)
        idx = jax.lax.dynamic_slice_in_dim(perm, (s % spe) * batch_size, batch_size)
        value, grads = jax.value_and_grad(
            lambda p: mse(eqx.combine(p, static), (x[idx], y[idx]), None)
        )(params)
        updates, state = optim.update(grads, state, params)
        return eqx.apply_updates(params, updates), state, value

    for s in range(steps):
        params, state, value = step(params, state, s)
        losses.append(float(value))
    assert tree_max_abs_diff(out.model, eqx.combine(params, static)) < 1e-5
    np.testing.assert_allclose(out.loss_history, losses, rtol=1e-5)


def test_trains_and_reports(regression, mlp):
    x, y = regression
    calls = []

    def evaluate(model):
        return {"mse": mse(model, (x, y), None), "zero": jnp.zeros(())}

    out = jm.fit(
        mse,
        mlp,
        (x, y),
        optim=optax.adam(1e-2),
        steps=300,
        batch_size=64,
        key=jr.key(2),
        eval_fn=evaluate,
        eval_every=100,
    )
    calls.append(out)
    assert out.result == jm.RESULTS.successful
    assert out.steps == 300 and out.loss_history.shape == (300,)
    assert np.all(np.isfinite(out.loss_history))
    initial = float(mse(mlp, (x, y), None))
    final = float(mse(out.model, (x, y), None))
    assert final < 0.2 * initial
    np.testing.assert_array_equal(out.eval_steps, [100, 200, 300])
    assert out.eval_history["mse"][-1] == pytest.approx(final, rel=1e-5)
    assert 0 < out.compile_time <= out.wall_time
    # The caller's model is not donated away.
    assert np.isfinite(np.asarray(mlp.layers[0].weight)).all()


def test_second_call_reuses_compilation(regression, mlp):
    x, y = regression
    optim = optax.adam(1e-3)
    kwargs = dict(optim=optim, steps=20, batch_size=32, key=jr.key(0))
    first = jm.fit(mse, mlp, (x, y), **kwargs)
    second = jm.fit(mse, mlp, (x, y), **kwargs)
    assert first.compile_time > 0
    assert second.compile_time == 0.0
    np.testing.assert_array_equal(first.loss_history, second.loss_history)


class _Panel(eqx.Module):
    # Models held in a dict, as the experiments' side-by-side panels are: the static
    # part of such a model is unhashable as a whole.
    models: dict


def _panel_mse(panel, batch, key):
    return sum(mse(m, batch, key) for m in panel.models.values())


def test_model_with_a_dict_compiles_once(regression, mlp):
    x, y = regression
    panel = _Panel({"a": mlp, "b": mlp})
    kwargs = dict(optim=optax.adam(1e-3), batch_size=32, key=jr.key(0))
    # Three chunks of 10 steps: only the first compiles.
    first = jm.fit(_panel_mse, panel, (x, y), steps=30, chunk=10, **kwargs)
    assert first.compile_time > 0
    second = jm.fit(_panel_mse, panel, (x, y), steps=30, chunk=10, **kwargs)
    assert second.compile_time == 0.0
    np.testing.assert_array_equal(first.loss_history, second.loss_history)


def test_aux_and_full_batch(regression, mlp):
    x, y = regression

    def loss(model, batch, key):
        value = mse(model, batch, key)
        return value, {"rmse": jnp.sqrt(value)}

    out = jm.fit(loss, mlp, (x, y), optim=optax.adam(1e-2), steps=50, key=jr.key(0))
    assert out.loss_history.shape == (50,)
    assert out.loss_history[-1] < out.loss_history[0]


def test_loss_key_changes_every_step():
    class Scalar(eqx.Module):
        w: jax.Array

    def loss(model, batch, key):
        return model.w * jr.normal(key, ())

    out = jm.fit(
        loss,
        Scalar(jnp.array(1.0)),
        jnp.zeros((4, 1)),
        optim=optax.sgd(0.0),
        steps=6,
        key=jr.key(0),
    )
    assert len(np.unique(out.loss_history)) == 6


class LogModel(eqx.Module):
    w: jax.Array


def log_loss(model, batch, key):
    return jnp.log(model.w)


def test_nonfinite_loss_names_the_step():
    # SGD on log(w) with lr 0.3: w = 1, 0.7, 0.2714..., -0.834... -> log is NaN at step 3.
    model = LogModel(jnp.array(1.0))
    with pytest.raises(jm.NonFiniteLossError, match="step 3"):
        jm.fit(
            log_loss,
            model,
            jnp.zeros((2, 1)),
            optim=optax.sgd(0.3),
            steps=10,
            key=jr.key(0),
        )
    out = jm.fit(
        log_loss,
        model,
        jnp.zeros((2, 1)),
        optim=optax.sgd(0.3),
        steps=10,
        key=jr.key(0),
        throw=False,
    )
    assert out.result == jm.RESULTS.nonfinite_loss
    assert out.steps == 3
    w = 1.0
    for _ in range(3):
        w = w - 0.3 / w
    assert float(out.model.w) == pytest.approx(w, rel=1e-5)
    assert np.isnan(out.loss_history[-1]) and len(out.loss_history) == 4


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(steps=0), "steps"),
        (dict(batch_size=0), "batch_size"),
        (dict(batch_size=10_000), "batch_size"),
        (dict(chunk=-1), "chunk"),
        (dict(resume=True), "resume"),
        (dict(checkpoint_every=5), "checkpoint"),
    ],
)
def test_bad_arguments(regression, mlp, kwargs, name):
    x, y = regression
    full = dict(optim=optax.adam(1e-3), steps=5, key=jr.key(0)) | kwargs
    with pytest.raises(ValueError, match=f"`{name}"):
        jm.fit(mse, mlp, (x, y), **full)


def test_wrong_types(regression, mlp):
    # Under the test suite's jaxtyping/beartype hook a wrong type is a TypeError before
    # `fit` runs; without it, `fit`'s own check raises a ValueError naming the argument.
    for kwargs in (dict(steps=2.5), dict(optim=lambda g: g)):
        full = dict(optim=optax.adam(1e-3), steps=5, key=jr.key(0)) | kwargs
        with pytest.raises((TypeError, ValueError)):
            jm.fit(mse, mlp, regression, **full)


def test_mismatched_data(mlp):
    with pytest.raises(ValueError, match="`data`"):
        jm.fit(
            mse,
            mlp,
            (jnp.zeros((8, 3)), jnp.zeros((7, 1))),
            optim=optax.sgd(0.1),
            steps=1,
            key=jr.key(0),
        )


def test_bad_loss_output(regression, mlp):
    with pytest.raises(ValueError, match="scalar"):
        jm.fit(
            lambda m, b, k: jnp.zeros(3),
            mlp,
            regression,
            optim=optax.sgd(0.1),
            steps=1,
            key=jr.key(0),
        )


def test_chunk_bounds_are_absolute():
    assert chunk_bounds(0, 10, 4, (None,)) == [(0, 4), (4, 8), (8, 10)]
    assert chunk_bounds(0, 10, 4, (3,)) == [
        (0, 3),
        (3, 4),
        (4, 6),
        (6, 8),
        (8, 9),
        (9, 10),
    ]
    # A run resumed at step 6 is cut exactly like the uninterrupted one from there on.
    assert chunk_bounds(6, 10, 4, (3,)) == chunk_bounds(0, 10, 4, (3,))[3:]


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(
    steps=st.integers(1, 500),
    chunk=st.integers(1, 300),
    every=st.lists(st.one_of(st.none(), st.integers(1, 200)), max_size=2),
    resume_at=st.integers(0, 500),
)
def test_chunk_plan_properties(steps, chunk, every, resume_at):
    every = tuple(every)
    length = chunk_length(steps, chunk, every)
    assert 0 < length <= chunk
    bounds = chunk_bounds(0, steps, length, every)
    # The chunks tile [0, steps) in order, none longer than the compiled length, and
    # every evaluation/checkpoint step is a cut.
    assert bounds[0][0] == 0 and bounds[-1][1] == steps
    assert all(a < b <= a + length for a, b in bounds)
    assert all(b == c for (_, b), (c, _) in zip(bounds, bounds[1:]))
    cuts = {b for _, b in bounds}
    for p in every:
        if p:
            assert set(range(p, steps, p)) <= cuts
    # A run resumed at any cut is cut exactly like the uninterrupted one.
    start = min(cuts | {0}, key=lambda c: abs(c - resume_at))
    assert chunk_bounds(start, steps, length, every) == [
        (a, b) for a, b in bounds if a >= start
    ]


def test_complex_parameters_descend():
    # `jax.grad` of a real loss in a complex leaf is the conjugate of the descent
    # direction: optax Adam fed it directly drifts along the imaginary part (from 0 to
    # about 0.98 - 14.1i on this loss). `fit` must hand optax the direction itself.
    class Point(eqx.Module):
        z: jax.Array

    target = jnp.array([1.0 + 1.0j, -2.0 + 0.5j], jnp.complex64)

    def loss(model, batch, key):
        del batch, key
        return jnp.sum(jnp.abs(model.z - target) ** 2)

    run = jm.fit(
        loss,
        Point(jnp.zeros(2, jnp.complex64)),
        jnp.zeros((4, 1)),
        optim=optax.adam(0.05),
        steps=400,
        key=jr.key(0),
        progress=False,
    )
    np.testing.assert_allclose(run.model.z, target, atol=1e-3)
    assert run.loss_history[-1] < 1e-5 * run.loss_history[0]
