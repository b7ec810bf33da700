"""The `mondeq-completion` experiment: joint completion and classification of masked
8x8 binary patterns by a monotone deep Boltzmann machine, beside an RBM.

Both models are trained the same way: the same loss (cross-entropy of the mean-field
marginals of the masked pixels and of the label, with half the pixels masked at random
at every step), optimiser, steps and batches. The monotone DBM's marginals are its
unique mean-field fixed point (Peaceman-Rachford splitting, implicit gradients); the
RBM's are `sweeps` alternating mean-field updates, differentiated through.
"""

import functools as ft
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optax
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, PyTree

from ... import data as jmd, implicit
from .._registry import Experiment, Task, register


PIXELS = 64
CLASSES = 4
# The initial scale of the DBM's `A` in `W = (1 - m) I - A^T A`. The label is not a
# linear function of the pixels (every pixel is on with probability about 1/2 in every
# class: the class is in which pixels agree), so it can only be read through the
# hidden units, a coupling of order |A|^3 (label-hidden-pixel, each coupling a product
# of two columns of A). From the default scale 0.5 (couplings about 0.025) that path
# has almost no gradient: the label's cross-entropy stayed at 1.33-1.40 (log 4 = 1.39)
# for 200 steps while the pixels were fitted through direct pixel-pixel couplings
# alone (label accuracy 0.31). From scale 2 the hidden units are used from the start.
INIT_SCALE = 2.0


def random_masks(key: PRNGKeyArray, n: int) -> Bool[Array, "n 64"]:
    """`n` masks with exactly half the pixels observed (`True`), drawn uniformly."""
    scores = jr.uniform(key, (n, PIXELS))
    return scores < jnp.median(scores, axis=1, keepdims=True)


def complete(
    model: PyTree, x: Float[Array, " 64"], observed: Bool[Array, " 64"]
) -> tuple[Float[Array, " 64"], Float[Array, " 4"]]:
    """The pixel and label marginals of a `MonotoneDBM` (units: pixels, label, hidden)
    or an `RBM` (visible units: pixels, label), the label unobserved."""
    label = jnp.zeros(CLASSES)
    no = jnp.zeros(CLASSES, dtype=bool)
    if isinstance(model, implicit.MonotoneDBM):
        hidden = model.units - PIXELS - CLASSES
        values = jnp.concatenate([x, label, jnp.zeros(hidden)])
        observed = jnp.concatenate([observed, no, jnp.zeros(hidden, dtype=bool)])
    else:
        values = jnp.concatenate([x, label])
        observed = jnp.concatenate([observed, no])
    q = model(values, observed)
    return q[:PIXELS], q[PIXELS : PIXELS + CLASSES]


def _loss(model: PyTree, batch: PyTree, key: PRNGKeyArray) -> Float[Array, ""]:
    x, y = batch
    masks = random_masks(key, x.shape[0])
    pixels, labels = jax.vmap(ft.partial(complete, model))(x, masks)
    eps = 1e-6
    bce = -(x * jnp.log(pixels + eps) + (1 - x) * jnp.log(1 - pixels + eps))
    pixel_loss = jnp.sum(jnp.where(masks, 0.0, bce)) / jnp.sum(~masks)
    label_loss = -jnp.mean(
        jnp.log(jnp.take_along_axis(labels, y[:, None], axis=1)[:, 0] + eps)
    )
    return pixel_loss + label_loss


def _scores(
    model: PyTree, x: Array, y: Int[Array, " n"], masks: Array
) -> dict[str, Array]:
    pixels, labels = jax.vmap(ft.partial(complete, model))(x, masks)
    hits = (pixels > 0.5) == (x > 0.5)
    return {
        "completion_accuracy": jnp.sum(jnp.where(masks, 0, hits)) / jnp.sum(~masks),
        "label_accuracy": jnp.mean(jnp.argmax(labels, axis=1) == y),
    }


def _report(model: PyTree, *, test: PyTree) -> dict[str, Any]:
    x, y, masks = test
    scores = eqx.filter_jit(_scores)(model, x, y, masks)
    out = {k: float(v) for k, v in scores.items()}
    sols = eqx.filter_jit(
        jax.vmap(
            lambda xi, mi: model.infer(
                jnp.concatenate([xi, jnp.zeros(model.units - PIXELS)]),
                jnp.concatenate([mi, jnp.zeros(model.units - PIXELS, dtype=bool)]),
                throw=False,
            )
        )
    )(x, masks)
    out["max_residual"] = float(jnp.max(sols.residual))
    out["mean_iterations"] = float(jnp.mean(sols.num_steps))
    return out


def _setup(quick: bool, key: PRNGKeyArray) -> Task:
    n_train, n_test, hidden, steps = (
        (512, 256, 32, 200) if quick else (4096, 2048, 64, 3000)
    )
    train_key, test_key, mask_key = jr.split(key, 3)
    x, y = jmd.binary_patterns(train_key, n_train, noise=0.05)
    x_test, y_test = jmd.binary_patterns(test_key, n_test, noise=0.05)
    test = (x_test, y_test, random_masks(mask_key, n_test))
    layers = [(PIXELS, 1), (CLASSES, CLASSES), (hidden, 1)]

    def make_dbm(hparams: dict[str, Any], key: PRNGKeyArray) -> implicit.MonotoneDBM:
        return implicit.MonotoneDBM(
            layers,
            m=hparams["m"],
            scale=INIT_SCALE,
            splitting=implicit.PeacemanRachford(1.0, rtol=1e-4, atol=1e-5),
            key=key,
        )

    def make_rbm(hparams: dict[str, Any], key: PRNGKeyArray) -> implicit.RBM:
        return implicit.RBM(layers[:2], hidden, sweeps=20, key=key)

    def evaluate(model: PyTree) -> Float[Array, ""]:
        return _scores(model, *test)["completion_accuracy"]

    return Task(
        data=(x, y),
        make_model=make_dbm,
        loss=_loss,
        make_optim=lambda h, steps: optax.adam(h["lr"]),
        hparams={"lr": 2e-2, "m": 0.5},
        steps=steps,
        batch_size=64,
        evaluate=evaluate,
        baselines={"rbm": make_rbm},
        report=ft.partial(_report, test=test),
    )


mondeq_completion = register(
    Experiment(
        name="mondeq-completion",
        family="implicit",
        description=(
            "A monotone deep Boltzmann machine completes 8x8 binary patterns with half "
            "the pixels masked and classifies them in one mean-field fixed point; an "
            "RBM trained the same way is the baseline. Metric: masked-pixel accuracy."
        ),
        metric="completion_accuracy",
        # Guessing from the pixel marginals gives about 0.5; the RBM trained the same
        # way reached 0.696 and 0.717 in quick runs at seeds 0 and 1 (reported beside
        # it), the monotone DBM 0.832 and 0.832, with label accuracies (`report`)
        # 0.887 and 0.891 (chance 0.25).
        target=0.8,
        higher_is_better=True,
        setup=_setup,
    )
)
