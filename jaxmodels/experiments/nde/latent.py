"""Experiments of the `nde` family: latent ODEs on irregularly sampled series."""

import functools as ft
from typing import Any

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from ... import data as jmd, nde
from .._registry import Experiment, Task, register


_T1 = 10.0
_LENGTH = 40
_KEEP = 0.5


def _sizes(quick: bool) -> dict[str, int]:
    if quick:
        return {"n_train": 512, "n_test": 256, "steps": 1200, "hidden": 32, "width": 32}
    return {"n_train": 2000, "n_test": 500, "steps": 5000, "hidden": 64, "width": 64}


def _split(
    key: PRNGKeyArray, ts: np.ndarray, xs: np.ndarray
) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
    """The observed part of each series, compacted, and the mask of observed points.

    A point is observed if it lies in the first half of the window `[0, t1 / 2]` and
    survives subsampling at rate `_KEEP` (the first point, at 0, always does). The
    observed rows come first in the encoder's arrays, padded with all-`NaN` rows at
    times after the half-window, which the encoder skips: so the scan length is the
    most observed points of any series, and no padding row costs a solver step.
    """
    n = ts.shape[0]
    keep = np.array(jr.bernoulli(key, _KEEP, ts.shape))
    keep[:, 0] = True
    observed = keep & (ts <= _T1 / 2)
    size = int(observed.sum(axis=1).max())
    pad = _T1 / 2 + 0.01 * np.arange(1, size + 1, dtype=np.float32)
    ts_obs = np.tile(pad, (n, 1))
    xs_obs = np.full((n, size, xs.shape[-1]), np.nan, np.float32)
    for i in range(n):
        rows = np.flatnonzero(observed[i])
        ts_obs[i, : rows.size] = ts[i, rows]
        xs_obs[i, : rows.size] = xs[i, rows]
    return (ts_obs, xs_obs), observed


def _loss(
    model: nde.LatentODE,
    batch: tuple[Array, Array, Array, Array],
    key: PRNGKeyArray,
    *,
    kl_weight: float,
) -> Float[Array, ""]:
    ts_obs, xs_obs, ts, xs = batch
    keys = jr.split(key, ts.shape[0])

    def elbo(t_obs, x_obs, t, x, k):
        return model.elbo(
            t_obs, x_obs, key=k, ts_target=t, xs_target=x, kl_weight=kl_weight
        )

    # The negative ELBO per target point: every series of the batch, whole window.
    return -jnp.mean(jax.vmap(elbo)(ts_obs, xs_obs, ts, xs, keys)) / ts.shape[1]


def _predict(model: nde.LatentODE, ts_obs, xs_obs, ts) -> Array:
    return jax.vmap(model)(ts_obs, xs_obs, ts)


def _mses(
    model: nde.LatentODE, test: tuple[Array, Array, Array, Array], observed: Array
) -> dict[str, Array]:
    ts_obs, xs_obs, ts, xs = test
    error = (_predict(model, ts_obs, xs_obs, ts) - xs)[..., 0] ** 2
    inside = (ts <= _T1 / 2) & ~observed
    beyond = ts > _T1 / 2
    return {
        "interpolation_mse": jnp.sum(jnp.where(inside, error, 0)) / jnp.sum(inside),
        "extrapolation_mse": jnp.sum(jnp.where(beyond, error, 0)) / jnp.sum(beyond),
    }


def _report(model: PyTree, *, test, observed, baselines) -> dict[str, Any]:
    mses = eqx.filter_jit(_mses)(model, test, observed)
    out = {name: float(value) for name, value in mses.items()}
    out.update(baselines)
    out["obs_std"] = float(model.obs_std)
    return out


def _plot(model: PyTree, ax: Any, *, test, observed) -> None:
    ts_obs, xs_obs, ts, xs = (np.asarray(a) for a in test)
    fine = np.linspace(0.0, _T1, 200, dtype=np.float32)
    preds = eqx.filter_jit(_predict)(
        model,
        jnp.asarray(ts_obs[:3]),
        jnp.asarray(xs_obs[:3]),
        jnp.tile(jnp.asarray(fine), (3, 1)),
    )
    for i in range(3):
        colour = f"C{i}"
        ax.plot(ts[i], xs[i, :, 0], color=colour, lw=0.6, alpha=0.4, ls="--")
        ax.plot(fine, np.asarray(preds[i, :, 0]), color=colour, lw=1.2)
        held_out = ~observed[i]
        ax.scatter(ts[i, held_out], xs[i, held_out, 0], color=colour, s=8, alpha=0.4)
        ax.scatter(ts[i, observed[i]], xs[i, observed[i], 0], color=colour, s=18)
    ax.axvline(_T1 / 2, color="k", lw=0.8, ls=":")
    ax.set_xlabel("t")
    ax.set_title("latent ODE: observed (dots), truth (dashed), prediction")


def _setup(quick: bool, key: PRNGKeyArray) -> Task:
    sizes = _sizes(quick)
    train_key, test_key, train_split_key, test_split_key = jr.split(key, 4)
    train_ts, train_xs = (
        np.asarray(a) for a in jmd.damped_sines(train_key, sizes["n_train"])
    )
    test_ts, test_xs = (
        np.asarray(a) for a in jmd.damped_sines(test_key, sizes["n_test"])
    )
    (train_ts_obs, train_xs_obs), _ = _split(train_split_key, train_ts, train_xs)
    (test_ts_obs, test_xs_obs), test_observed = _split(test_split_key, test_ts, test_xs)
    test = tuple(jnp.asarray(a) for a in (test_ts_obs, test_xs_obs, test_ts, test_xs))
    test_observed = jnp.asarray(test_observed)
    # The trivial baseline: predict zero (the mean of the process) everywhere.
    inside = (test_ts <= _T1 / 2) & ~np.asarray(test_observed)
    beyond = test_ts > _T1 / 2
    sq = test_xs[..., 0] ** 2
    # A stronger one inside the window: linear interpolation of the observed points.
    linear = np.concatenate(
        [
            np.interp(test_ts[i, row], test_ts[i, obs], test_xs[i, obs, 0])
            for i, (row, obs) in enumerate(zip(inside, np.asarray(test_observed)))
        ]
    )
    baselines = {
        "zero_interpolation_mse": float(sq[inside].mean()),
        "zero_extrapolation_mse": float(sq[beyond].mean()),
        "linear_interpolation_mse": float(
            np.mean((linear - test_xs[..., 0][inside]) ** 2)
        ),
    }
    hidden, width = sizes["hidden"], sizes["width"]

    def make_model(hparams: dict[str, Any], key: PRNGKeyArray) -> nde.LatentODE:
        return nde.LatentODE(
            1,
            hparams["latent_size"],
            hidden,
            width,
            1,
            encoder=hparams["encoder"],
            obs_std=hparams["obs_std"],
            solver=dfx.Tsit5(),
            key=key,
        )

    return Task(
        data=(
            jnp.asarray(train_ts_obs),
            jnp.asarray(train_xs_obs),
            jnp.asarray(train_ts),
            jnp.asarray(train_xs),
        ),
        make_model=make_model,
        loss=ft.partial(_loss, kl_weight=1.0),
        make_optim=lambda h, steps: optax.adam(
            optax.cosine_decay_schedule(h["lr"], steps, alpha=0.1)
        ),
        hparams={"lr": 1e-2, "latent_size": 8, "obs_std": 0.05, "encoder": "gru"},
        steps=sizes["steps"],
        batch_size=64,
        evaluate=lambda model: _mses(model, test, test_observed)["extrapolation_mse"],
        report=ft.partial(
            _report, test=test, observed=test_observed, baselines=baselines
        ),
        plot=ft.partial(_plot, test=test, observed=np.asarray(test_observed)),
    )


latent_ode_sines = register(
    Experiment(
        name="latent-ode-sines",
        family="nde",
        description=(
            "A latent ODE (Rubanova et al. 2019) on irregularly sampled damped sines: "
            "observe half the points of [0, 5], reconstruct them and extrapolate to "
            "(5, 10]."
        ),
        metric="extrapolation_mse",
        target=0.05,
        higher_is_better=False,
        setup=_setup,
    )
)
