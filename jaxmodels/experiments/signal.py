"""Experiments of the `signal` family: deep self-normalising networks."""

import functools as ft
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree

from .. import data as jmd, signal as jms
from ._registry import Experiment, Task, register


def _sizes(quick: bool) -> dict[str, int]:
    if quick:
        return {"n": 1500, "width": 64, "depth": 16, "steps": 1500}
    return {"n": 4000, "width": 128, "depth": 32, "steps": 6000}


def _logits(
    model: PyTree, x: Float[Array, "batch dim"]
) -> Float[Array, "batch classes"]:
    return jax.vmap(eqx.nn.inference_mode(model))(x)


def _loss(
    model: PyTree,
    batch: tuple[Float[Array, "batch dim"], Int[Array, " batch"]],
    key: PRNGKeyArray,
) -> Float[Array, ""]:
    x, y = batch
    # One dropout key per example: the model sees one example per call.
    logits = jax.vmap(lambda xi, k: model(xi, key=k))(x, jr.split(key, x.shape[0]))
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _accuracy(
    model: PyTree, x: Float[Array, "n dim"], y: Int[Array, " n"]
) -> Float[Array, ""]:
    return jnp.mean(jnp.argmax(_logits(model, x), axis=-1) == y)


def _plot(model: PyTree, ax: Any, *, x: np.ndarray, y: np.ndarray) -> None:
    lo, hi = x.min(axis=0) - 0.3, x.max(axis=0) + 0.3
    g0, g1 = np.meshgrid(np.linspace(lo[0], hi[0], 150), np.linspace(lo[1], hi[1], 150))
    grid = jnp.asarray(np.stack([g0.ravel(), g1.ravel()], axis=-1), jnp.float32)
    probs = jax.nn.softmax(eqx.filter_jit(_logits)(model, grid), axis=-1)[:, 1]
    probs = np.asarray(probs).reshape(g0.shape)
    ax.contourf(g0, g1, probs, levels=20, cmap="RdBu_r", alpha=0.35, vmin=0, vmax=1)
    ax.contour(g0, g1, probs, levels=[0.5], colors="k", linewidths=0.8)
    colours = np.where(y == 1, "tab:red", "tab:blue")
    ax.scatter(x[:, 0], x[:, 1], c=colours, s=10, edgecolors="w", linewidths=0.3)
    ax.set_title("SNN decision regions (test points)")
    ax.set_aspect("equal")


def _setup(quick: bool, key: PRNGKeyArray) -> Task:
    sizes = _sizes(quick)
    data_key, split_key = jr.split(key)
    x, y = jmd.two_spirals(data_key, sizes["n"], noise=0.1, turns=2.5)
    (x_train, y_train), (x_test, y_test) = jmd.train_test_split(
        split_key, (x, y), test_fraction=0.2
    )
    # Inputs with zero mean and unit variance, as self-normalisation assumes.
    x_train, mean, std = jmd.standardise(x_train)
    x_test = (x_test - mean) / std
    width, depth = sizes["width"], sizes["depth"]

    def make_snn(hparams: dict[str, Any], key: PRNGKeyArray) -> jms.SNN:
        del hparams
        return jms.SNN(2, 2, width, depth, key=key)

    def make_relu(hparams: dict[str, Any], key: PRNGKeyArray) -> jms.ReLUMLP:
        del hparams
        return jms.ReLUMLP(2, 2, width, depth, key=key)

    return Task(
        data=(x_train, y_train),
        make_model=make_snn,
        loss=_loss,
        make_optim=lambda h, steps: optax.adam(
            optax.cosine_decay_schedule(h["lr"], steps, alpha=0.1)
        ),
        hparams={"lr": 3e-4},
        steps=sizes["steps"],
        batch_size=128,
        evaluate=ft.partial(_accuracy, x=x_test, y=y_test),
        baselines={"relu": make_relu},
        report=lambda model: {
            "train_accuracy": float(eqx.filter_jit(_accuracy)(model, x_train, y_train))
        },
        plot=ft.partial(_plot, x=np.asarray(x_test), y=np.asarray(y_test)),
    )


selu_deep_classify = register(
    Experiment(
        name="selu-deep-classify",
        family="signal",
        description=(
            "A deep self-normalising network (SELU, LeCun init; 16 layers quick, 32 "
            "full) vs a ReLU/He MLP of the same depth on two spirals."
        ),
        metric="test_accuracy",
        target=0.9,
        higher_is_better=True,
        setup=_setup,
    )
)
