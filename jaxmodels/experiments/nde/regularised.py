"""Experiments of the `nde` family: solver-heuristic regularisation.

Pal et al., "Opening the Blackbox" (2021): regularising the adaptive solver's own error
estimates makes neural ODEs cheaper to solve; Pal et al., "Locally Regularized Neural
Differential Equations" (2023): the same at one random time per example.
"""

import functools as ft
from typing import Any

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree

from ... import data as jmd, nde
from .._registry import Experiment, Task, register
from . import latent


_AUGMENT = 2
_TS = (0.0, 1.0)
# Tight tolerances, so that the cost of a solve follows the learned dynamics rather
# than the floor of a few steps that any smooth field gets at loose ones.
_RTOL = _ATOL = 1e-5
_MATCH = 1.05  # a regularised model's test loss must be within 5% of the baseline's
# Two spirals of 3/4 turn with noise: the classes overlap a little, so no classifier
# reaches zero loss and "within 5% of the test loss" compares models at a loss they
# can all approach.
_NOISE = 0.15
_TURNS = 0.75
_REGULARISED = ("global", "local")


def _sizes(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "n_train": 128,
            "n_test": 1024,
            "steps": 300,
            "width": 32,
            "tasks": {"classifier": ("none", "global", "local")},
        }
    return {
        "n_train": 256,
        "n_test": 1024,
        "steps": 600,
        "width": 32,
        "tasks": {
            "classifier": ("none", "global", "local", "biased", "kinetic"),
            "latent": ("none", "global", "local"),
            "sde": ("none", "global", "local"),
        },
    }


class _Classifier(eqx.Module):
    """A neural ODE classifier (Dupont et al. 2019's augmented form): the input padded
    with zeros, flowed over `[0, 1]`, read out linearly."""

    ode: nde.NeuralODE
    readout: eqx.nn.Linear

    def __init__(self, width: int, *, key: PRNGKeyArray):
        fkey, rkey = jr.split(key)
        field = nde.MLPVectorField(2 + _AUGMENT, width, 2, key=fkey)
        controller = dfx.PIDController(rtol=_RTOL, atol=_ATOL)
        self.ode = nde.NeuralODE(field, stepsize_controller=controller, max_steps=1024)
        self.readout = eqx.nn.Linear(2 + _AUGMENT, 1, key=rkey)

    def lift(self, x: Float[Array, " 2"]) -> Float[Array, " dim"]:
        return jnp.concatenate([x, jnp.zeros(_AUGMENT, x.dtype)])

    def logit(self, y1: Float[Array, " dim"]) -> Float[Array, ""]:
        return self.readout(y1)[0]


class _Diffusion(eqx.Module):
    """A small learned diagonal diffusion, `0.1 * sigmoid(MLP(y))`."""

    mlp: nde.MLPVectorField

    def __call__(self, t: Array, y: Array, args: PyTree) -> Array:
        return 0.1 * jax.nn.sigmoid(self.mlp(t, y, args))


class _SDEClassifier(eqx.Module):
    """The classifier with a neural SDE flow (Stratonovich, Heun with adaptive steps)."""

    sde: nde.NeuralSDE
    readout: eqx.nn.Linear

    def __init__(self, width: int, *, key: PRNGKeyArray):
        fkey, gkey, rkey = jr.split(key, 3)
        dim = 2 + _AUGMENT
        dt0 = 2**-4
        self.sde = nde.NeuralSDE(
            nde.MLPVectorField(dim, width, 2, key=fkey),
            _Diffusion(nde.MLPVectorField(dim, 16, 1, key=gkey)),
            noise="diagonal",
            solver=dfx.Heun(),
            # Steps stop at the Brownian tree's resolution, dt0 / 8.
            stepsize_controller=dfx.PIDController(rtol=1e-3, atol=1e-3, dtmin=dt0 / 8),
            dt0=dt0,
            max_steps=1024,
        )
        self.readout = eqx.nn.Linear(dim, 1, key=rkey)

    def lift(self, x: Float[Array, " 2"]) -> Float[Array, " dim"]:
        return jnp.concatenate([x, jnp.zeros(_AUGMENT, x.dtype)])

    def logit(self, y1: Float[Array, " dim"]) -> Float[Array, ""]:
        return self.readout(y1)[0]


class _Panel(eqx.Module):
    """The variants compared, trained side by side on the same minibatches.

    `models[task][kind]`. Parameters are disjoint and Adam is per-parameter, so
    training them in one `fit` on the sum of their losses is training each alone, in
    one compiled step.
    """

    models: dict[str, dict[str, PyTree]]
    weights: dict[str, dict[str, float]] = eqx.field(static=True)


def _ts() -> Float[Array, " 2"]:
    return jnp.asarray(_TS)


def _cross_entropy(logits: Array, y: Int[Array, " n"]) -> Array:
    return optax.sigmoid_binary_cross_entropy(logits, y.astype(logits.dtype)).mean()


def _classifier_loss(
    kind: str, model: _Classifier, weight: float, batch: PyTree, key: PRNGKeyArray
) -> Array:
    x, y = batch
    ts = _ts()
    y0 = jax.vmap(model.lift)(x)
    keys = jr.split(key, x.shape[0])
    if kind == "global":
        reg = jax.vmap(
            lambda z: nde.regularised_solve(model.ode, ts, z, error_weight=weight)
        )(y0)
        logits = jax.vmap(model.logit)(reg.solution.ys[:, -1])
        return _cross_entropy(logits, y) + jnp.mean(reg.penalty)
    if kind == "kinetic":
        out = jax.vmap(lambda z, k: nde.kinetic_solve(model.ode, ts, z, key=k))(
            y0, keys
        )
        penalty = weight * jnp.mean(out.kinetic + out.jacobian)
        return (
            _cross_entropy(jax.vmap(model.logit)(out.solution.ys[:, -1]), y) + penalty
        )
    ys = jax.vmap(lambda z: model.ode(ts, z))(y0)
    loss = _cross_entropy(jax.vmap(model.logit)(ys[:, -1]), y)
    if kind in ("local", "biased"):
        # The biased strategy steps from the saved states the loss already solved for.
        penalty = jax.vmap(
            lambda z, k, ys: nde.local_regulariser(
                model.ode,
                ts,
                z,
                key=k,
                strategy="unbiased" if kind == "local" else "biased",
                ys=ys,
                error_weight=weight,
            )
        )(y0, keys, ys if kind == "biased" else None)
        loss = loss + jnp.mean(penalty)
    return loss


def _sde_loss(
    kind: str, model: _SDEClassifier, weight: float, batch: PyTree, key: PRNGKeyArray
) -> Array:
    x, y = batch
    ts = _ts()
    y0 = jax.vmap(model.lift)(x)
    path_keys, local_keys = (jr.split(k, x.shape[0]) for k in jr.split(key))
    if kind == "global":
        reg = jax.vmap(
            lambda z, k: nde.regularised_solve(
                model.sde, ts, z, key=k, error_weight=weight
            )
        )(y0, path_keys)
        logits = jax.vmap(model.logit)(reg.solution.ys[:, -1])
        return _cross_entropy(logits, y) + jnp.mean(reg.penalty)
    ys = jax.vmap(lambda z, k: model.sde(ts, z, key=k))(y0, path_keys)
    loss = _cross_entropy(jax.vmap(model.logit)(ys[:, -1]), y)
    if kind == "local":
        penalty = jax.vmap(
            lambda z, k, p: nde.local_regulariser(
                model.sde, ts, z, key=k, path_key=p, error_weight=weight
            )
        )(y0, local_keys, path_keys)
        loss = loss + jnp.mean(penalty)
    return loss


def _latent_loss(
    kind: str, model: nde.LatentODE, weight: float, batch: PyTree, key: PRNGKeyArray
) -> Array:
    ts_obs, xs_obs, ts, xs = batch
    elbo_key, local_key = jr.split(key)
    loss = latent._loss(model, batch, elbo_key, kl_weight=1.0)
    if kind == "none":
        return loss
    # The decoder's dynamics are regularised from the posterior means of `z0`.
    z0 = jax.vmap(model.encode)(ts_obs, xs_obs)[0]
    if kind == "global":
        penalty = jax.vmap(
            lambda t, z: (
                nde.regularised_solve(model.decoder, t, z, error_weight=weight).penalty
            )
        )(ts, z0)
    else:
        keys = jr.split(local_key, ts.shape[0])
        penalty = jax.vmap(
            lambda t, z, k: nde.local_regulariser(
                model.decoder, t, z, key=k, error_weight=weight
            )
        )(ts, z0, keys)
    return loss + jnp.mean(penalty)


_LOSSES = {"classifier": _classifier_loss, "sde": _sde_loss, "latent": _latent_loss}


def _loss(panel: _Panel, batch: PyTree, key: PRNGKeyArray) -> Float[Array, ""]:
    total = jnp.zeros(())
    for task, models in panel.models.items():
        keys = jr.split(jr.fold_in(key, len(task)), len(models))
        for k, (kind, model) in zip(keys, models.items()):
            weight = panel.weights[task][kind]
            total = total + _LOSSES[task](kind, model, weight, batch[task], k)
    return total


def _classifier_test(model: _Classifier, test: PyTree) -> dict[str, Array]:
    x, y = test
    sols = jax.vmap(lambda z: model.ode.solve(_ts(), model.lift(z), throw=False))(x)
    logits = jax.vmap(model.logit)(sols.ys[:, -1])
    ok = jnp.all(sols.result == dfx.RESULTS.successful)
    return {
        "loss": jnp.where(ok, _cross_entropy(logits, y), jnp.inf),
        "accuracy": jnp.mean((logits > 0) == (y == 1)),
        "nfe": jnp.mean(sols.stats["num_function_evaluations"].astype(jnp.float32)),
        # A vmapped solve runs as long as its costliest example.
        "nfe_max": jnp.max(sols.stats["num_function_evaluations"]).astype(jnp.float32),
    }


def _sde_test(model: _SDEClassifier, test: PyTree) -> dict[str, Array]:
    x, y = test
    keys = jr.split(jr.key(1234), x.shape[0])
    sols = jax.vmap(
        lambda z, k: model.sde.solve(_ts(), model.lift(z), key=k, throw=False)
    )(x, keys)
    logits = jax.vmap(model.logit)(sols.ys[:, -1])
    ok = jnp.all(sols.result == dfx.RESULTS.successful)
    steps = sols.stats["num_steps"].astype(jnp.float32)
    return {
        "loss": jnp.where(ok, _cross_entropy(logits, y), jnp.inf),
        "accuracy": jnp.mean((logits > 0) == (y == 1)),
        # Heun evaluates the drift and the diffusion twice a step (no FSAL).
        "nfe": 2 * jnp.mean(steps),
    }


def _latent_test(model: nde.LatentODE, test: PyTree) -> dict[str, Array]:
    (ts_obs, xs_obs, ts, xs), observed = test
    mses = latent._mses(model, (ts_obs, xs_obs, ts, xs), observed)
    z0 = jax.vmap(model.encode)(ts_obs, xs_obs)[0]
    sols = jax.vmap(lambda t, z: model.decoder.solve(t, z, throw=False))(ts, z0)
    return {
        "loss": mses["extrapolation_mse"],
        "interpolation_mse": mses["interpolation_mse"],
        "nfe": jnp.mean(sols.stats["num_function_evaluations"].astype(jnp.float32)),
    }


_TESTS = {"classifier": _classifier_test, "sde": _sde_test, "latent": _latent_test}


@eqx.filter_jit
def _evaluate_all(panel: _Panel, tests: PyTree) -> dict[str, dict[str, dict]]:
    return {
        task: {kind: _TESTS[task](m, tests[task]) for kind, m in models.items()}
        for task, models in panel.models.items()
    }


def _ratio(panel: _Panel, *, tests: PyTree) -> Float[Array, ""]:
    """The worst function-evaluation ratio, over the tasks and the two regularisers,
    of a regularised model to the unregularised one, infinite for one whose test loss
    is not within 5% of the unregularised model's."""
    results = _evaluate_all(panel, tests)
    ratios = []
    for task, by_kind in results.items():
        base = by_kind["none"]
        for kind in _REGULARISED:
            r = by_kind[kind]
            matched = r["loss"] <= _MATCH * base["loss"]
            ratios.append(jnp.where(matched, r["nfe"] / base["nfe"], jnp.inf))
    return jnp.max(jnp.stack(ratios))


def _report(panel: _Panel, *, tests: PyTree) -> dict[str, Any]:
    results = jax.tree.map(float, _evaluate_all(panel, tests))
    out: dict[str, Any] = {"variants": results, "weights": panel.weights}
    for task, by_kind in results.items():
        base = by_kind["none"]
        out[f"{task}_nfe_ratio"] = {
            k: r["nfe"] / base["nfe"] for k, r in by_kind.items()
        }
        out[f"{task}_loss_ratio"] = {
            k: r["loss"] / base["loss"] for k, r in by_kind.items()
        }
    return out


def _plot(panel: _Panel, ax: Any, *, tests: PyTree) -> None:
    results = jax.tree.map(float, _evaluate_all(panel, tests))
    by_kind = results["classifier"]
    kinds = list(by_kind)
    colours = ["grey", "tab:blue", "tab:orange", "tab:red", "tab:green"]
    bars = ax.bar(
        kinds, [by_kind[k]["nfe"] for k in kinds], color=colours[: len(kinds)]
    )
    for bar, k in zip(bars, kinds):
        ax.annotate(
            f"loss {by_kind[k]['loss']:.3f}\nacc {by_kind[k]['accuracy']:.3f}",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=7,
        )
    ax.set_ylabel("test function evaluations per example")
    ax.set_title("neural ODE classifier: cost of a test solve (Tsit5, tol 1e-5)")


def spirals(key: PRNGKeyArray, n: int) -> tuple[Array, Array]:
    """The classification data: noisy two spirals."""
    return jmd.two_spirals(key, n, noise=_NOISE, turns=_TURNS)


def _latent_data(key: PRNGKeyArray, n_train: int, n_test: int) -> tuple[PyTree, PyTree]:
    train_key, test_key, train_split, test_split = jr.split(key, 4)
    ts, xs = (np.asarray(a) for a in jmd.damped_sines(train_key, n_train))
    (ts_obs, xs_obs), _ = latent._split(train_split, ts, xs)
    train = tuple(jnp.asarray(a) for a in (ts_obs, xs_obs, ts, xs))
    ts, xs = (np.asarray(a) for a in jmd.damped_sines(test_key, n_test))
    (ts_obs, xs_obs), observed = latent._split(test_split, ts, xs)
    test = tuple(jnp.asarray(a) for a in (ts_obs, xs_obs, ts, xs))
    return train, (test, jnp.asarray(observed))


def _setup(quick: bool, key: PRNGKeyArray) -> Task:
    sizes = _sizes(quick)
    tasks = sizes["tasks"]
    train_key, test_key, latent_key = jr.split(key, 3)
    n_train, n_test = sizes["n_train"], sizes["n_test"]
    spirals_train = spirals(train_key, n_train)
    spirals_test = spirals(test_key, n_test)
    data: dict[str, PyTree] = {"classifier": spirals_train}
    tests: dict[str, PyTree] = {"classifier": spirals_test}
    if "sde" in tasks:
        data["sde"], tests["sde"] = spirals_train, spirals_test
    if "latent" in tasks:
        data["latent"], tests["latent"] = _latent_data(latent_key, n_train, n_test)
    width = sizes["width"]

    def make(task: str, key: PRNGKeyArray) -> PyTree:
        if task == "classifier":
            return _Classifier(width, key=key)
        if task == "sde":
            return _SDEClassifier(width, key=key)
        return nde.LatentODE(
            1,
            8,
            32,
            width,
            1,
            encoder="gru",
            obs_std=0.05,
            solver=dfx.Tsit5(),
            stepsize_controller=dfx.PIDController(rtol=_RTOL, atol=_ATOL),
            max_steps=1024,
            key=key,
        )

    def make_panel(hparams: dict[str, Any], key: PRNGKeyArray) -> _Panel:
        weight = {
            "none": 0.0,
            "global": hparams["error_weight"],
            "local": hparams["error_weight"],
            "biased": hparams["error_weight"],
            "kinetic": hparams["kinetic_weight"],
        }
        models, weights = {}, {}
        for i, (task, kinds) in enumerate(tasks.items()):
            # One initialisation for every variant of a task: the comparison is of
            # the training alone.
            task_key = jr.fold_in(key, i)
            models[task] = {kind: make(task, task_key) for kind in kinds}
            weights[task] = {kind: weight[kind] for kind in kinds}
        return _Panel(models, weights)

    return Task(
        data=data,
        make_model=make_panel,
        loss=_loss,
        make_optim=lambda h, steps: optax.adam(h["lr"]),
        hparams={"lr": 1e-2, "error_weight": 0.1, "kinetic_weight": 0.01},
        steps=sizes["steps"],
        batch_size=None,
        evaluate=ft.partial(_ratio, tests=tests),
        report=ft.partial(_report, tests=tests),
        plot=ft.partial(_plot, tests=tests),
    )


ode_spiral_regularised = register(
    Experiment(
        name="ode-spiral-regularised",
        family="nde",
        description=(
            "Solver-heuristic regularisation (global, Pal et al. 2021; local, Pal et "
            "al. 2023) against none on a neural ODE classifier of noisy two spirals "
            "(quick), plus a latent ODE on damped sines and a neural SDE classifier "
            "(full; with the biased local strategy and kinetic+Jacobian as well): the "
            "worst ratio of test function evaluations, regularised to unregularised, "
            "where the test loss is within 5%."
        ),
        metric="nfe_ratio",
        target=0.8,
        higher_is_better=False,
        setup=_setup,
    )
)
