"""Experiments of the `nde` family.

Neural ODEs, CDEs and continuous normalising flows here; the stable neural SDEs in
`sde.py`, the latent ODE in `latent.py`.
"""

import functools as ft
import math
from typing import Any

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree, Real

from ... import data as jmd, nde
from .._registry import Experiment, Task, register
from . import cells as cells, latent as latent, regularised as regularised, sde as sde


# --- ode-spiral ---------------------------------------------------------------------

_SPIRAL_A = ((-0.1, 2.0), (-2.0, -0.1))


class CubicField(nde.AbstractVectorField):
    """The vector field of the spiral demo of Chen et al. (2018): an MLP of `y^3`.

    `f(y) = W2 tanh(W1 y^3 + b1) + b2`, the model of torchdiffeq's `ode_demo.py`, whose
    true dynamics `y' = y^3 A` it can represent exactly in the limit of width.
    """

    hidden: eqx.nn.Linear
    out: eqx.nn.Linear
    data_size: int = eqx.field(static=True)

    def __init__(self, width: int = 50, *, key: PRNGKeyArray):
        hkey, okey = jr.split(key)
        self.hidden = eqx.nn.Linear(2, width, key=hkey)
        self.out = eqx.nn.Linear(width, 2, key=okey)
        self.data_size = 2

    def __call__(
        self, t: Real[Array, ""], y: Float[Array, " 2"], args: PyTree
    ) -> Float[Array, " 2"]:
        return self.out(jnp.tanh(self.hidden(y**3)))


@ft.cache
def spiral_trajectory(
    n_times: int = 1000,
) -> tuple[Float[Array, " time"], Float[Array, "time 2"]]:
    """The true spiral `y' = y^3 A`, `y(0) = (2, 0)`, on `n_times` points of `[0, 25]`.

    Solved with Dopri5 at rtol 1e-7, atol 1e-9, the tolerances of the demo.
    """
    A = jnp.asarray(_SPIRAL_A)
    ts = jnp.linspace(0.0, 25.0, n_times)
    sol = dfx.diffeqsolve(
        dfx.ODETerm(lambda t, y, args: (y**3) @ A),
        dfx.Dopri5(),
        t0=0.0,
        t1=25.0,
        dt0=None,
        y0=jnp.array([2.0, 0.0]),
        saveat=dfx.SaveAt(ts=ts),
        stepsize_controller=dfx.PIDController(rtol=1e-7, atol=1e-9),
        max_steps=100_000,
    )
    return ts, sol.ys


def _relative_l2(
    model: nde.NeuralODE, ts: Float[Array, " time"], ys: Float[Array, "time 2"]
) -> Float[Array, ""]:
    pred = model.solve(ts, ys[0], throw=False)
    error = jnp.linalg.norm(pred.ys - ys) / jnp.linalg.norm(ys)
    # A failed solve (max steps, a collapsed step) scores infinity, not a number.
    return jnp.where(pred.result == dfx.RESULTS.successful, error, jnp.inf)


def _window_loss(
    model: nde.NeuralODE,
    batch: tuple[Float[Array, "batch 2"], Float[Array, "batch window 2"]],
    key: PRNGKeyArray | None,
    *,
    window_ts: Float[Array, " window"],
) -> Float[Array, ""]:
    del key
    y0, target = batch
    pred = jax.vmap(lambda y: model(window_ts, y))(y0)
    return jnp.mean(jnp.abs(pred - target))


def _spiral_plot(model: nde.NeuralODE, ax: Any, *, ts: Array, ys: np.ndarray) -> None:
    pred = np.asarray(
        eqx.filter_jit(lambda m: m.solve(ts, jnp.asarray(ys[0]), throw=False).ys)(model)
    )
    ax.plot(ys[:, 0], ys[:, 1], "k-", lw=1.5, label="true")
    ax.plot(pred[:, 0], pred[:, 1], "r--", lw=1.2, label="neural ODE")
    ax.set_title("spiral: y' = y^3 A, t in [0, 25]")
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=8)


def _spiral_setup(quick: bool, key: PRNGKeyArray) -> Task:
    del key  # the data are deterministic, the initial weights come from the runner
    window = 10
    ts, ys = spiral_trajectory()
    starts = jnp.arange(ts.shape[0] - window)
    windows = ys[starts[:, None] + jnp.arange(window)[None, :]]
    window_ts = ts[:window]

    def make_model(hparams: dict[str, Any], key: PRNGKeyArray) -> nde.NeuralODE:
        del hparams
        # Tsit5 at the sampling interval: its error (~1e-8 a step on this smooth field)
        # is far below the fit's, and a fixed step compiles and runs faster than an
        # adaptive one. The same solver scores the full trajectory.
        return nde.NeuralODE(
            CubicField(50, key=key),
            stepsize_controller=dfx.ConstantStepSize(),
            dt0=float(ts[1] - ts[0]),
        )

    return Task(
        data=(windows[:, 0], windows),
        make_model=make_model,
        loss=ft.partial(_window_loss, window_ts=window_ts),
        make_optim=lambda h, steps: optax.adam(
            optax.cosine_decay_schedule(h["lr"], steps, alpha=0.05)
        ),
        hparams={"lr": 5e-3},
        steps=1000 if quick else 4000,
        batch_size=200,
        evaluate=ft.partial(_relative_l2, ts=ts, ys=ys),
        report=lambda model: {
            "window_loss": float(
                eqx.filter_jit(_window_loss)(
                    model, (windows[:, 0], windows), None, window_ts=window_ts
                )
            )
        },
        plot=ft.partial(_spiral_plot, ts=ts, ys=np.asarray(ys)),
    )


ode_spiral = register(
    Experiment(
        name="ode-spiral",
        family="nde",
        description=(
            "The spiral of Chen et al. (2018): learn y' = y^3 A from 10-point windows "
            "(batch 20), scored on the full trajectory over [0, 25]."
        ),
        metric="relative_l2",
        target=0.05,
        higher_is_better=False,
        setup=_spiral_setup,
        # The windows pin the field to about 1%, which over the spiral's ~5 turns is a
        # phase drift of a few tenths of a radian: quick runs of seeds 0, 1, 2 score
        # 0.46, 0.35, 0.51 (predicting 0 scores 1; the untrained field 5 to 19), and
        # sharper fits of the windows do not lower it (see the README).
        quick_target=0.6,
    )
)


# --- cde-irregular-spirals ----------------------------------------------------------


def _cde_logits(
    model: nde.NeuralCDE, ts: Float[Array, "n time"], xs: Float[Array, "n time 2"]
) -> Float[Array, " n"]:
    return jax.vmap(model)(ts, xs)[:, 0]


def _cde_loss(
    model: nde.NeuralCDE,
    batch: tuple[tuple[Array, Array], Int[Array, " batch"]],
    key: PRNGKeyArray,
) -> Float[Array, ""]:
    del key
    (ts, xs), y = batch
    logits = _cde_logits(model, ts, xs)
    return optax.sigmoid_binary_cross_entropy(logits, y.astype(logits.dtype)).mean()


def _cde_accuracy(
    model: nde.NeuralCDE, ts: Array, xs: Array, y: Int[Array, " n"]
) -> Float[Array, ""]:
    return jnp.mean((_cde_logits(model, ts, xs) > 0) == (y == 1))


def _cde_plot(
    model: nde.NeuralCDE, ax: Any, *, ts: Array, xs: np.ndarray, y: np.ndarray
) -> None:
    logits = np.asarray(eqx.filter_jit(_cde_logits)(model, ts[:8], jnp.asarray(xs[:8])))
    for i in range(8):
        obs = ~np.isnan(np.asarray(xs[i, :, 0]))
        colour = "tab:red" if int(y[i]) == 1 else "tab:blue"
        style = "-" if (logits[i] > 0) == (int(y[i]) == 1) else ":"
        ax.plot(xs[i, obs, 0], xs[i, obs, 1], style, color=colour, lw=1, marker=".")
    ax.set_title(
        "test series: red anticlockwise, blue clockwise\n(dotted: misclassified)"
    )
    ax.set_aspect("equal")


def _cde_setup(quick: bool, key: PRNGKeyArray) -> Task:
    n_train, n_test = (512, 512) if quick else (2048, 1024)
    train_key, test_key = jr.split(key)
    train = jmd.irregular_spirals(train_key, n_train, missing_rate=0.3)
    (ts, xs), y = jmd.irregular_spirals(test_key, n_test, missing_rate=0.3)

    def make_model(hparams: dict[str, Any], key: PRNGKeyArray) -> nde.NeuralCDE:
        del hparams
        # Heun's method with a step of a quarter time unit (40 steps over [0, 10]);
        # the cubic path is smooth, and a classifier needs no tight tolerance.
        return nde.NeuralCDE(
            2,
            16,
            1,
            32,
            1,
            solver=dfx.Heun(),
            stepsize_controller=dfx.ConstantStepSize(),
            dt0=0.25,
            key=key,
        )

    return Task(
        data=train,
        make_model=make_model,
        loss=_cde_loss,
        make_optim=lambda h, steps: optax.adam(
            optax.cosine_decay_schedule(h["lr"], steps, alpha=0.1)
        ),
        hparams={"lr": 1e-2},
        steps=300 if quick else 1500,
        batch_size=64,
        evaluate=ft.partial(_cde_accuracy, ts=ts, xs=xs, y=y),
        report=lambda model: {
            "train_accuracy": float(
                eqx.filter_jit(_cde_accuracy)(model, *train[0], train[1])
            ),
            "missing_rate": 0.3,
        },
        plot=ft.partial(_cde_plot, ts=ts, xs=np.asarray(xs), y=np.asarray(y)),
    )


cde_irregular_spirals = register(
    Experiment(
        name="cde-irregular-spirals",
        family="nde",
        description=(
            "A neural CDE tells clockwise from anticlockwise spirals sampled at "
            "irregular times with 30% of observations dropped."
        ),
        metric="test_accuracy",
        target=0.95,
        higher_is_better=True,
        setup=_cde_setup,
    )
)


# --- cnf-two-moons ------------------------------------------------------------------


def _gaussian_nll(
    train: Float[Array, "n 2"], test: Float[Array, "m 2"]
) -> Float[Array, ""]:
    """The mean test NLL of the maximum-likelihood Gaussian of the training set."""
    mean = train.mean(axis=0)
    cov = jnp.cov(train, rowvar=False, bias=True)
    chol = jnp.linalg.cholesky(cov)
    white = jax.scipy.linalg.solve_triangular(
        chol, (test - mean[None, :]).T, lower=True
    )
    logdet = 2 * jnp.sum(jnp.log(jnp.diag(chol)))
    return 0.5 * (jnp.mean(jnp.sum(white**2, axis=0)) + logdet) + math.log(2 * math.pi)


def _cnf_nll(model: nde.CNF, x: Float[Array, "n 2"]) -> Float[Array, ""]:
    return -jnp.mean(jax.vmap(model.log_prob)(x))


def _cnf_loss(model: nde.CNF, batch: Float[Array, "batch 2"], key: PRNGKeyArray):
    del key
    return _cnf_nll(model, batch)


def _cnf_plot(model: nde.CNF, ax: Any, *, x: np.ndarray) -> None:
    g0, g1 = np.meshgrid(np.linspace(-2.5, 2.5, 60), np.linspace(-2.5, 2.5, 60))
    grid = jnp.asarray(np.stack([g0.ravel(), g1.ravel()], axis=-1), jnp.float32)
    logp = eqx.filter_jit(lambda m, g: jax.vmap(m.log_prob)(g))(model, grid)
    ax.contourf(g0, g1, np.exp(np.asarray(logp)).reshape(g0.shape), levels=30)
    samples = eqx.filter_jit(lambda m, k: jax.vmap(m.sample)(jr.split(k, 400)))(
        model, jr.key(0)
    )
    ax.scatter(*np.asarray(samples).T, s=3, c="w", alpha=0.6, label="samples")
    ax.set_title("CNF density (standardised two moons) and samples")
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=8)


def _cnf_setup(quick: bool, key: PRNGKeyArray) -> Task:
    n_train, n_test = (1024, 1024) if quick else (4096, 2048)
    train_key, test_key = jr.split(key)
    train, _ = jmd.two_moons(train_key, n_train, noise=0.05)
    test, _ = jmd.two_moons(test_key, n_test, noise=0.05)
    train, mean, std = jmd.standardise(train)
    test = (test - mean) / std
    gaussian = float(_gaussian_nll(train, test))

    def make_model(hparams: dict[str, Any], key: PRNGKeyArray) -> nde.CNF:
        del hparams
        field = nde.MLPVectorField(
            2, 32, 2, final_activation=lambda y: y, time_dependent=True, key=key
        )
        # Exact trace (two Jacobian columns in 2-D); tolerances loose enough to train
        # fast, tight enough that the log-density's solver error is ~1e-3.
        return nde.CNF(
            field, stepsize_controller=dfx.PIDController(rtol=1e-3, atol=1e-4)
        )

    return Task(
        data=train,
        make_model=make_model,
        loss=_cnf_loss,
        make_optim=lambda h, steps: optax.adam(
            optax.cosine_decay_schedule(h["lr"], steps, alpha=0.1)
        ),
        hparams={"lr": 1e-2},
        steps=400 if quick else 3000,
        batch_size=128,
        evaluate=lambda model: _cnf_nll(model, test) - gaussian,
        report=lambda model: {
            "test_nll": float(eqx.filter_jit(_cnf_nll)(model, test)),
            "gaussian_test_nll": gaussian,
        },
        plot=ft.partial(_cnf_plot, x=np.asarray(test)),
    )


cnf_two_moons = register(
    Experiment(
        name="cnf-two-moons",
        family="nde",
        description=(
            "A continuous normalising flow (exact trace) on standardised two moons; "
            "metric: its test NLL minus that of the best Gaussian fit (must be < 0)."
        ),
        metric="nll_minus_gaussian",
        target=0.0,
        higher_is_better=False,
        setup=_cnf_setup,
    )
)
