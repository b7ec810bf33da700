"""The `ntk-regression` experiment: NNGP and NTK predictions against trained wide
networks on a 1-D regression.

"Neural Tangent Kernel: Convergence and Generalization in Neural Networks" (Jacot,
Gabriel and Hongler, NeurIPS 2018) shows that an infinitely wide network trained by
gradient descent on least squares follows a linear ODE in function space driven by a
fixed kernel, the NTK; "Wide Neural Networks of Any Depth Evolve as Linear Models
Under Gradient Descent" (Lee et al., NeurIPS 2019) gives the resulting predictions at
every training time. Here an ensemble of finite ReLU networks in NTK
parameterisation, built with `jaxmodels.kernels.stax`, is trained by full-batch
gradient descent (`jaxmodels.sweep`: one vmapped program over the seeds), and each
network's test outputs are compared with the analytic NTK prediction started from
that network's own initial function, at the same training time.
"""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optax
from jaxtyping import Array, Float, PRNGKeyArray

from ... import kernels
from ...sweep import seed_key, sweep
from .._registry import Experiment, Study, register


_W_STD, _B_STD = 1.5, 0.05


def _target(x: Array) -> Array:
    return jnp.sin(2.0 * x) + 0.3 * x


def _layers(width: int) -> tuple:
    stax = kernels.stax
    return stax.serial(
        stax.Dense(width, W_std=_W_STD, b_std=_B_STD),
        stax.Relu(),
        stax.Dense(width, W_std=_W_STD, b_std=_B_STD),
        stax.Relu(),
        stax.Dense(1, W_std=_W_STD, b_std=_B_STD),
    )


class _StaxNet(eqx.Module):
    """A `stax` network as an Equinox model: its parameters and its apply function."""

    params: Any
    apply_fn: Any = eqx.field(static=True)

    def __call__(self, x: Float[Array, "n 1"]) -> Float[Array, "n 1"]:
        return self.apply_fn(self.params, x)


def _setup(quick: bool, key: PRNGKeyArray) -> Study:
    width = 512 if quick else 2048
    seeds = 8 if quick else 16
    n_train, n_test = 12, 101
    steps = 800 if quick else 2000

    def measure(key: PRNGKeyArray) -> dict[str, Any]:
        dkey, tkey = jr.split(key)
        x_train = jnp.sort(jr.uniform(dkey, (n_train, 1), minval=-1.5, maxval=1.5), 0)
        y_train = _target(x_train)
        x_test = jnp.linspace(-2.0, 2.0, n_test)[:, None]
        init_fn, apply_fn, kernel_fn = _layers(width)
        k_train = kernel_fn(x_train, None, "ntk")
        # Gradient descent on 0.5 * mean((f - y)^2) with steps of lr: each step moves
        # the top NTK mode by lr * lambda_max / n = 0.05, close to the continuous flow
        # that the prediction integrates (at 0.5 the mean deviation grows 3-8 fold).
        lr = 0.05 * n_train / float(jnp.linalg.eigvalsh(k_train)[-1])

        def make(hparams: dict, k: PRNGKeyArray) -> _StaxNet:
            del hparams
            return _StaxNet(init_fn(k, x_train.shape)[1], apply_fn)

        def loss(net: _StaxNet, batch: tuple, k: PRNGKeyArray) -> Array:
            del k
            x, y = batch
            return 0.5 * jnp.mean((net(x) - y) ** 2)

        run = sweep(
            make,
            loss,
            (x_train, y_train),
            optim=optax.sgd(lr),
            grid={},
            seeds=seeds,
            steps=steps,
            key=tkey,
            progress=False,
        )
        # The initial networks, made with the same keys as the sweep's.
        model_keys = jnp.stack([seed_key(tkey, s)[0] for s in range(seeds)])
        initial = eqx.filter_vmap(lambda k: make({}, k))(model_keys)
        f0_train = eqx.filter_vmap(lambda m: m(x_train))(initial)
        f0_test = eqx.filter_vmap(lambda m: m(x_test))(initial)
        f_test = eqx.filter_vmap(lambda m: m(x_test))(run.models[0])
        # The kernel predictions in float64: the NNGP and NTK matrices of a deep ReLU
        # network are ill-conditioned enough to lose float32's digits in the solves.
        with jax.enable_x64(True):
            x64, y64 = (jnp.asarray(a, jnp.float64) for a in (x_train, y_train))
            xt64 = jnp.asarray(x_test, jnp.float64)
            flow = kernels.predict.gradient_descent_mse(
                kernel_fn(x64, None, "ntk"), y64, lr
            )
            k_test_train = kernel_fn(xt64, x64, "ntk")
            lin = jax.vmap(lambda a, b: flow(steps, a, b, k_test_train)[1])(
                jnp.asarray(f0_train, jnp.float64), jnp.asarray(f0_test, jnp.float64)
            )
            ensemble = kernels.predict.gradient_descent_mse_ensemble(
                kernel_fn, x64, y64, learning_rate=lr, diag_reg=1e-10
            )
            nngp = ensemble(None, xt64, "nngp", compute_cov=True)
            ntk_inf = ensemble(None, xt64, "ntk")
            ntk_t = ensemble(float(steps), xt64, "ntk")
            nngp_std = jnp.sqrt(jnp.clip(jnp.diag(nngp.covariance), 0.0))
            nngp_mean, ntk_inf, nngp_std, lin, ntk_t = (
                jnp.asarray(a, jnp.float32)
                for a in (nngp.mean, ntk_inf, nngp_std, lin, ntk_t)
            )
        moved = jnp.linalg.norm((f_test - f0_test)[..., 0], axis=-1)
        error = jnp.linalg.norm((f_test - lin)[..., 0], axis=-1) / moved
        truth = _target(x_test)

        def mse(f: Array) -> float:
            return float(jnp.mean((f - truth) ** 2))

        return {
            "relative_deviation_from_ntk": float(jnp.mean(error)),
            "relative_deviation_per_seed": [float(e) for e in error],
            "width": width,
            "steps": steps,
            "learning_rate": lr,
            "test_mse_trained_mean": mse(jnp.mean(f_test, 0)),
            "test_mse_ntk_infinite_time": mse(ntk_inf),
            "test_mse_nngp_posterior": mse(nngp_mean),
            "x_train": [float(v) for v in x_train[:, 0]],
            "y_train": [float(v) for v in y_train[:, 0]],
            "x_test": [float(v) for v in x_test[:, 0]],
            "truth": [float(v) for v in truth[:, 0]],
            "nngp_mean": [float(v) for v in nngp_mean[:, 0]],
            "nngp_std": [float(v) for v in nngp_std],
            "ntk_mean": [float(v) for v in ntk_inf[:, 0]],
            "ntk_mean_at_t": [float(v) for v in ntk_t[:, 0]],
            "trained": [[float(v) for v in f[:, 0]] for f in f_test[:4]],
            "trained_mean": [float(v) for v in jnp.mean(f_test, 0)[:, 0]],
        }

    return Study(measure=measure, plot=_plot)


def _plot(results: dict[str, Any], ax: Any) -> None:
    import numpy as np

    x = np.asarray(results["x_test"])
    mean, std = np.asarray(results["nngp_mean"]), np.asarray(results["nngp_std"])
    ax.plot(x, results["truth"], "k--", label="target")
    ax.fill_between(x, mean - 2 * std, mean + 2 * std, color="C0", alpha=0.2)
    ax.plot(x, mean, color="C0", label="NNGP posterior mean +- 2 sd")
    ax.plot(x, results["ntk_mean"], color="C1", label="NTK mean, t = infinity")
    ax.plot(
        x,
        results["ntk_mean_at_t"],
        color="C1",
        ls="--",
        label=f"NTK mean, t = {results['steps']} steps",
    )
    for i, f in enumerate(results["trained"]):
        ax.plot(
            x, f, color="C2", lw=0.6, alpha=0.6, label=None if i else "trained nets"
        )
    ax.plot(x, results["trained_mean"], color="C2", lw=2, label="trained, mean")
    ax.plot(results["x_train"], results["y_train"], "ko", ms=4, label="train")
    ax.set_title(
        f"width {results['width']}: trained vs NTK prediction, relative deviation "
        f"{results['relative_deviation_from_ntk']:.3f}",
        fontsize="small",
    )
    ax.set_xlabel("x")
    ax.legend(fontsize="x-small")


ntk_regression = register(
    Experiment(
        name="ntk-regression",
        family="kernels",
        description=(
            "Wide ReLU networks (2 hidden layers, NTK parameterisation) trained by "
            "full-batch gradient descent on a 1-D regression vs the analytic NTK "
            "prediction at the same training time from each network's own initial "
            "function (Jacot et al. 2018; Lee et al. 2019); the NNGP posterior and "
            "the t = infinity NTK mean beside them. Metric: the mean over seeds of "
            "|f_trained - f_NTK| / |f_trained - f_0| on the test grid, which falls "
            "like width^-1/2; full: width 2048, quick: width 512."
        ),
        metric="relative_deviation_from_ntk",
        target=0.05,
        higher_is_better=False,
        setup=_setup,
        quick_target=0.1,
    )
)
