"""Latent ODEs: the KL term, the ELBO against an exact likelihood, missing values,
the two encoders, transformations, gradients, training, errors, the experiment."""

import functools as ft

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.scipy.stats as jss
import jax.tree_util as jtu
import numpy as np
import pytest

import jaxmodels.nde as nde

from .helpers import jaxtyping_off, tree_allclose


def _series(key, length=6, data_size=2, t1=3.0):
    tkey, xkey = jr.split(key)
    gaps = jr.uniform(tkey, (length - 1,), minval=0.2, maxval=1.0)
    ts = jnp.concatenate([jnp.zeros(1), jnp.cumsum(gaps)]) * t1 / jnp.sum(gaps)
    return ts, jr.normal(xkey, (length, data_size))


def _model(encoder="gru", *, data_size=2, latent_size=2, key=jr.key(0), **kwargs):
    return nde.LatentODE(
        data_size, latent_size, 4, 8, 1, encoder=encoder, key=key, **kwargs
    )


def _still(model):
    """`model` with a zero decoder field (`z(t) = z0`) and an identity readout."""
    last = model.decoder.vector_field.mlp.layers[-1]
    linear = model.readout.layers[0]
    return eqx.tree_at(
        lambda m: (
            m.decoder.vector_field.mlp.layers[-1].weight,
            m.decoder.vector_field.mlp.layers[-1].bias,
            m.readout.layers[0].weight,
            m.readout.layers[0].bias,
        ),
        model,
        (
            jnp.zeros_like(last.weight),
            jnp.zeros_like(last.bias),
            jnp.eye(linear.weight.shape[0], dtype=linear.weight.dtype),
            jnp.zeros_like(linear.bias),
        ),
    )


def _fixed_posterior(model, mean, log_std):
    """`model` whose encoder ignores the data and returns `N(mean, exp(log_std)^2)`."""
    # A GRU cell with all weights zero keeps the hidden state at zero.
    cell = jtu.tree_map(jnp.zeros_like, model.cell)
    return eqx.tree_at(
        lambda m: (m.cell, m.posterior.weight, m.posterior.bias),
        model,
        (
            cell,
            jnp.zeros_like(model.posterior.weight),
            jnp.concatenate([mean, log_std]),
        ),
    )


@eqx.filter_jit
def _sample_elbos(model, ts, xs, keys, kl_weight):
    return jax.vmap(lambda k: model.elbo(ts, xs, key=k, kl_weight=kl_weight))(keys)


def test_kl_matches_monte_carlo(x64):
    ts, xs = _series(jr.key(1), length=5)
    mean = jnp.array([0.8, -0.5])
    log_std = jnp.array([-0.7, 0.2])
    model = _fixed_posterior(_still(_model(key=jr.key(3))), mean, log_std)
    got_mean, got_log_std = model.encode(ts, xs)
    np.testing.assert_allclose(got_mean, mean, atol=1e-12)
    np.testing.assert_allclose(got_log_std, log_std, atol=1e-12)
    # The same key draws the same z0, so the difference is exactly the KL term.
    keys = jr.split(jr.key(2), 2)
    kls = _sample_elbos(model, ts, xs, keys, jnp.array(0.0)) - _sample_elbos(
        model, ts, xs, keys, jnp.array(1.0)
    )
    np.testing.assert_allclose(kls[0], kls[1], rtol=1e-12)
    kl = float(kls[0])
    std = jnp.exp(log_std)
    z = mean[None] + std[None] * jr.normal(jr.key(4), (200_000, 2))
    log_ratio = jnp.sum(
        jss.norm.logpdf(z, mean[None], std[None]) - jss.norm.logpdf(z), axis=1
    )
    mc, se = float(jnp.mean(log_ratio)), float(jnp.std(log_ratio)) / np.sqrt(200_000)
    assert kl > 0.3, kl
    assert abs(kl - mc) < 5 * se, (kl, mc, se)


def _linear_gaussian(ts, xs, obs_std):
    """The exact evidence and posterior of `x_i = z0 + noise`, `z0 ~ N(0, I)`."""
    log_evidence, post_mean, post_std = 0.0, [], []
    for c in range(xs.shape[1]):
        values = xs[:, c][~np.isnan(xs[:, c])]
        n = values.size
        cov = obs_std**2 * np.eye(n) + np.ones((n, n))
        log_evidence += float(jss.multivariate_normal.logpdf(values, np.zeros(n), cov))
        precision = 1 + n / obs_std**2
        post_mean.append(values.sum() / obs_std**2 / precision)
        post_std.append(precision**-0.5)
    return log_evidence, np.array(post_mean), np.array(post_std)


def test_elbo_bounds_exact_likelihood(x64):
    obs_std = 0.5
    model = _still(_model(obs_std=obs_std, key=jr.key(5)))
    ts, xs = _series(jr.key(6), length=5)
    xs = np.array(xs) + np.array([1.0, -0.5])
    xs[2] = np.nan
    xs[3, 1] = np.nan
    xs = jnp.asarray(xs)
    log_evidence, post_mean, post_std = _linear_gaussian(ts, np.asarray(xs), obs_std)
    keys = jr.split(jr.key(7), 4000)

    def mc_elbo(model):
        elbos = _sample_elbos(model, ts, xs, keys, jnp.array(1.0))
        return float(jnp.mean(elbos)), float(jnp.std(elbos)) / np.sqrt(keys.shape[0])

    # q the exact posterior: the ELBO is the log-evidence.
    exact = _fixed_posterior(model, jnp.asarray(post_mean), jnp.log(post_std))
    value, se = mc_elbo(exact)
    assert abs(value - log_evidence) < 5 * se + 1e-8, (value, log_evidence, se)
    # Any other q: short of it by KL(q || posterior).
    mean, std = post_mean + np.array([0.7, -0.4]), post_std * np.array([1.8, 0.6])
    gap = float(
        np.sum(
            np.log(post_std / std)
            + (std**2 + (mean - post_mean) ** 2) / (2 * post_std**2)
            - 0.5
        )
    )
    other = _fixed_posterior(model, jnp.asarray(mean), jnp.log(std))
    value, se = mc_elbo(other)
    assert gap > 20 * se, (gap, se)
    assert abs(value - (log_evidence - gap)) < 5 * se, (value, log_evidence - gap, se)
    assert value < log_evidence


@pytest.mark.parametrize("encoder", ["gru", "ode-rnn"])
def test_missing_values_are_ignored(encoder):
    model = _model(encoder, key=jr.key(8))
    encode = eqx.filter_jit(model.encode)
    ts, xs = _series(jr.key(9), length=7)
    missing = np.array(xs)
    missing[[2, 6]] = np.nan  # an interior and the last row: fully missing
    missing[4, 1] = np.nan  # partly missing: the mask tells the GRU
    missing = jnp.asarray(missing)
    keep = jnp.array([0, 1, 3, 4, 5])
    full = encode(ts, missing)
    dropped = encode(ts[keep], missing[keep])
    assert tree_allclose(full, dropped, rtol=1e-5, atol=1e-6)
    # Not vacuous: the rows that are now missing did change the posterior.
    assert not tree_allclose(full, encode(ts, xs), rtol=1e-3, atol=1e-3)
    if encoder == "ode-rnn":
        return  # the likelihood does not depend on the encoder

    z0 = full[0]
    means = np.asarray(model.decode(ts, z0))
    observed = ~np.isnan(np.asarray(missing))
    std = float(model.obs_std)
    expected = np.sum(
        jss.norm.logpdf(np.asarray(missing)[observed], means[observed], std)
    )
    log_likelihood = eqx.filter_jit(model.log_likelihood)
    np.testing.assert_allclose(log_likelihood(ts, missing, z0), expected, rtol=1e-5)
    np.testing.assert_allclose(
        log_likelihood(ts[keep], missing[keep], z0, t0=ts[0]), expected, rtol=1e-5
    )


def test_ode_rnn_with_still_field_is_gru_with_no_time_input():
    ode_rnn = _model("ode-rnn", key=jr.key(10))
    last = ode_rnn.encoder_field.mlp.layers[-1]
    still = eqx.tree_at(
        lambda m: (
            m.encoder_field.mlp.layers[-1].weight,
            m.encoder_field.mlp.layers[-1].bias,
        ),
        ode_rnn,
        (jnp.zeros_like(last.weight), jnp.zeros_like(last.bias)),
    )

    def as_gru(time_weight):
        gru = _model("gru", key=jr.key(11))
        column = jnp.full((ode_rnn.cell.weight_ih.shape[0], 1), time_weight)
        return eqx.tree_at(
            lambda m: (m.cell, m.posterior, m.decoder, m.readout),
            gru,
            (
                eqx.tree_at(
                    lambda c: c.weight_ih,
                    ode_rnn.cell,
                    jnp.concatenate([ode_rnn.cell.weight_ih, column], axis=1),
                ),
                ode_rnn.posterior,
                ode_rnn.decoder,
                ode_rnn.readout,
            ),
        )

    ts, xs = _series(jr.key(12), length=6)
    xs = xs.at[3].set(jnp.nan)
    expected = still.encode(ts, xs)
    assert tree_allclose(as_gru(0.0).encode(ts, xs), expected, rtol=1e-5, atol=1e-6)
    # Not vacuous: the ODE between observations, or a time input, changes the result.
    assert not tree_allclose(ode_rnn.encode(ts, xs), expected, rtol=1e-3, atol=1e-3)
    assert not tree_allclose(as_gru(0.5).encode(ts, xs), expected, rtol=1e-3, atol=1e-3)


def test_decode_from_earlier_t0_and_call():
    model = _model("gru", key=jr.key(13))
    ts, xs = _series(jr.key(14), length=5)
    z0, _ = model.encode(ts, xs)
    query = jnp.array([0.5, 2.0, 4.0, 7.0])  # beyond the observed window, up to 7
    full = model.decode(jnp.concatenate([jnp.zeros(1), query]), z0)
    np.testing.assert_allclose(model.decode(query, z0, t0=0.0), full[1:], rtol=1e-5)
    np.testing.assert_allclose(model(ts, xs, query), full[1:], rtol=1e-5)
    sampled = model(ts, xs, query, key=jr.key(0))
    assert sampled.shape == (4, 2)
    assert not np.allclose(sampled, full[1:], atol=1e-4)


def _loss(model, ts, xs, key):
    return -model.elbo(ts, xs, key=key)


def _batched_loss(model, ts, xs, keys):
    return jax.vmap(_loss, in_axes=(None, 0, 0, 0))(model, ts, xs, keys)


def test_jit_vmap_grad_and_per_example_grids():
    model = _model("gru", key=jr.key(15))
    keys = jr.split(jr.key(16), 3)
    ts, xs = jax.vmap(ft.partial(_series, length=5))(keys)
    ts = ts * jnp.array([0.5, 1.0, 2.0])[:, None]
    xs = xs.at[1, 2].set(jnp.nan)
    loss_keys = jr.split(jr.key(17), 3)

    def mean_loss(model, ts, xs, keys):
        losses = _batched_loss(model, ts, xs, keys)
        return jnp.mean(losses), losses

    batched = eqx.filter_jit(
        eqx.debug.assert_max_traces(
            eqx.filter_value_and_grad(mean_loss, has_aux=True), max_traces=1
        )
    )
    (_, losses), grads = batched(model, ts, xs, loss_keys)
    batched(model, ts + 0.0, xs * 1.0, loss_keys)
    one = eqx.filter_jit(eqx.filter_value_and_grad(_loss))
    each = [one(model, ts[i], xs[i], loss_keys[i]) for i in range(3)]
    np.testing.assert_allclose(losses, jnp.stack([v for v, _ in each]), rtol=1e-5)
    mean = jtu.tree_map(lambda *g: sum(g) / 3, *[g for _, g in each])
    # The gradients are O(100): float32 sums in a different order.
    assert tree_allclose(grads, mean, rtol=1e-4, atol=1e-3)
    # A missing value leaks no NaN into the gradient.
    leaves = jtu.tree_leaves(eqx.filter(grads, eqx.is_inexact_array))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)


def test_gradient_matches_finite_differences(x64):
    # A fixed step, so that the solution is a smooth function of the parameters;
    # `learn_obs_std` so that every parameter has its true gradient.
    model = _model(
        "ode-rnn",
        key=jr.key(18),
        stepsize_controller=dfx.ConstantStepSize(),
        dt0=0.1,
        learn_obs_std=True,
    )
    ts, xs = _series(jr.key(19), length=4)
    xs = xs.at[2, 0].set(jnp.nan)
    key = jr.key(20)
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def loss(params):
        return _loss(eqx.combine(params, static), ts, xs, key)

    grads = jax.jit(jax.grad(loss))(params)
    leaves, treedef = jtu.tree_flatten(params)
    dkeys = jr.split(jr.key(21), len(leaves))
    direction = jtu.tree_unflatten(
        treedef, [jr.normal(k, x.shape, x.dtype) for k, x in zip(dkeys, leaves)]
    )
    eps = 1e-5

    def shift(sign):
        return jtu.tree_map(lambda p, d: p + sign * eps * d, params, direction)

    loss = jax.jit(loss)
    fd = (loss(shift(1.0)) - loss(shift(-1.0))) / (2 * eps)
    ad = sum(
        jnp.sum(g * d)
        for g, d in zip(jtu.tree_leaves(grads), jtu.tree_leaves(direction))
    )
    assert abs(float(ad)) > 1e-2
    np.testing.assert_allclose(ad, fd, rtol=1e-5)


def test_obs_std_learned_only_when_asked():
    for learn in (False, True):
        model = _model(key=jr.key(23), obs_std=0.3, learn_obs_std=learn)
        np.testing.assert_allclose(model.obs_std, 0.3, rtol=1e-6)
        grads = eqx.filter_grad(lambda m: m.obs_std)(model)
        assert (float(grads.log_obs_std) != 0) == learn


def test_bad_inputs():
    model = _model("gru", key=jr.key(27))
    ts, xs = _series(jr.key(28), length=4)
    with jaxtyping_off():
        with pytest.raises(ValueError, match="`ts`"):
            model.encode(ts[None], xs)
        with pytest.raises(ValueError, match="`ts`"):
            model.encode(ts[:1], xs[:1])
        with pytest.raises(ValueError, match="`xs`"):
            model.encode(ts, xs[:3])
        with pytest.raises(ValueError, match="`xs`"):
            model.encode(ts, jnp.ones((4, 3)))
        with pytest.raises(ValueError, match="`z0`"):
            model.decode(ts, jnp.ones(3))
        with pytest.raises(ValueError, match="`xs`"):
            model.log_likelihood(ts, xs[:3], jnp.ones(2))
        with pytest.raises(ValueError, match="`xs_target`"):
            model.elbo(ts, xs, key=jr.key(0), ts_target=ts, xs_target=xs[:2])
    with pytest.raises(ValueError, match="`ts_target`"):
        model.elbo(ts, xs, key=jr.key(0), ts_target=ts)
    for bad in (jnp.array([0.0, 1.0, 0.5, 2.0]), jnp.array([0.0, 1.0, 1.0, 2.0])):
        for call in (model.encode, eqx.filter_jit(model.encode)):
            with pytest.raises(eqx.EquinoxRuntimeError, match="`ts` must be strictly"):
                call(bad, xs)
    with pytest.raises(eqx.EquinoxRuntimeError, match="before `t0`"):
        model.decode(jnp.array([0.5, 1.0]), jnp.ones(2), t0=1.0)
    with pytest.raises(eqx.EquinoxRuntimeError, match="before `t0`"):
        model(ts + 1.0, xs, jnp.array([0.5, 2.0]))


def test_bad_construction():
    for kwargs, name in [
        ({"data_size": 0}, "data_size"),
        ({"latent_size": 0}, "latent_size"),
        ({"hidden_size": 2.0}, "hidden_size"),
        ({"encoder": "lstm"}, "encoder"),
        ({"readout_depth": -1}, "readout_depth"),
        ({"obs_std": 0.0}, "obs_std"),
        ({"learn_obs_std": 1}, "learn_obs_std"),
        ({"stepsize_controller": dfx.ConstantStepSize()}, "dt0"),
        ({"max_steps": 0}, "max_steps"),
    ]:
        args = {"data_size": 1, "latent_size": 2, "hidden_size": 3, **kwargs}
        with jaxtyping_off(), pytest.raises(ValueError, match=f"`{name}`"):
            nde.LatentODE(
                args.pop("data_size"),
                args.pop("latent_size"),
                args.pop("hidden_size"),
                4,
                1,
                **args,
                key=jr.key(0),
            )


@ft.cache
def _task():
    from jaxmodels.experiments import get_experiment

    return get_experiment("latent-ode-sines").setup(True, jr.key(0))


def test_experiment_wiring():
    from jaxmodels.experiments import get_experiment

    task = _task()
    experiment = get_experiment("latent-ode-sines")
    assert experiment.family == "nde" and not experiment.higher_is_better
    assert experiment.metric == "extrapolation_mse"
    extras = task.report(task.make_model(task.hparams, jr.key(0)))
    # The target is a fraction of the trivial (predict zero) baseline.
    assert experiment.target < 0.5 * extras["zero_extrapolation_mse"]
    batch = jtu.tree_map(lambda a: a[:8], task.data)
    model = task.make_model(task.hparams, jr.key(0))
    # Traced, not compiled: composition is a property of tracing; the values are the
    # quick mode's test (test_cli trains and evaluates this task).
    loss = eqx.filter_eval_shape(task.loss, model, batch, jr.key(1))
    assert loss.shape == ()
    # As `sweep` does: float hyperparameters traced, models stacked by vmap.
    stds = jnp.array([0.05, 0.1])
    make = eqx.filter_vmap(
        lambda s, k: task.make_model({**task.hparams, "obs_std": s}, k)
    )
    models = make(stds, jr.split(jr.key(2), 2))
    values = eqx.filter_eval_shape(eqx.filter_vmap(task.evaluate), models)
    assert values.shape == (2,)
    jax.eval_shape(
        lambda lr: task.make_optim({**task.hparams, "lr": lr}, 100).init(jnp.zeros(3)),
        jnp.array(1e-3),
    )
