"""The `deep-ntk-classify` experiment: the depth-L NTK classifier against 1-NN and the
majority vote, per activation, as the depth grows.

"Wide and Deep Neural Networks Achieve Optimality for Classification" (Radhakrishnan,
Belkin and Uhler, 2023): as the depth of an infinitely wide network tends to infinity
its NTK classifier `sign(sum_i y_i Theta_L(x, x_i))` becomes 1-NN, the majority vote or
a singular kernel classifier depending on the activation's dual. Inputs uniform on the
sphere of `R^3`, labels from a tilted half-space with label noise; the agreement of
each activation's classifier with 1-NN and with the majority vote is measured at depths
up to 1000 (quick) or 5000.
"""

from typing import Any

import jax.numpy as jnp
import jax.random as jr
from jaxtyping import PRNGKeyArray

from ... import kernels
from .._registry import Experiment, Study, register


def _setup(quick: bool, key: PRNGKeyArray) -> Study:
    depths = (
        [1, 3, 10, 30, 100, 1000] if quick else [1, 3, 10, 30, 100, 300, 1000, 5000]
    )
    num_train, num_test = (60, 300) if quick else (200, 2000)
    activations = {
        "nearest-neighbour (rho^2+rho^3)/2": kernels.nearest_neighbour_activation(),
        "ReLU": kernels.relu_activation(),
        "singular (alpha = 3)": kernels.singular_activation(3),
    }

    def measure(key: PRNGKeyArray) -> dict[str, Any]:
        tkey, skey, nkey = jr.split(key, 3)
        x = jr.normal(tkey, (num_train + num_test, 3))
        x = x / jnp.linalg.norm(x, axis=1, keepdims=True)
        flip = jr.bernoulli(nkey, 0.1, (num_train + num_test,))
        y = jnp.where((x[:, 0] + 0.3 * x[:, 1] > 0.2) ^ flip, 1.0, -1.0)
        x_train, y_train, x_test = x[:num_train], y[:num_train], x[num_train:]
        nearest = y_train[jnp.argmax(x_test @ x_train.T, axis=1)]
        majority = jnp.sign(jnp.sum(y_train))
        out: dict[str, Any] = {"depths": depths, "curves": {}}
        for name, act in activations.items():
            nn_curve, mv_curve = [], []
            for depth in depths:
                pred = kernels.deep_ntk_classifier(
                    x_train, y_train, x_test, activation=act, depth=depth
                )
                nn_curve.append(float(jnp.mean(pred == nearest)))
                mv_curve.append(float(jnp.mean(pred == majority)))
            out["curves"][name] = {
                "class": kernels.classify_activation(act),
                "nearest_neighbour": nn_curve,
                "majority_vote": mv_curve,
            }
        first = next(iter(activations))
        out["nn_agreement"] = out["curves"][first]["nearest_neighbour"][-1]
        out["relu_majority_agreement"] = out["curves"]["ReLU"]["majority_vote"][-1]
        out["one_nn_majority_overlap"] = float(jnp.mean(nearest == majority))
        return out

    return Study(measure=measure, plot=_plot)


def _plot(results: dict[str, Any], ax: Any) -> None:
    depths = results["depths"]
    for i, (name, curve) in enumerate(results["curves"].items()):
        ax.semilogx(
            depths,
            curve["nearest_neighbour"],
            "o-",
            color=f"C{i}",
            label=f"{name}: vs 1-NN",
        )
        ax.semilogx(
            depths,
            curve["majority_vote"],
            "s--",
            color=f"C{i}",
            label=f"{name}: vs majority",
        )
    ax.set_xlabel("depth L")
    ax.set_ylabel("agreement with the classifier")
    ax.legend(fontsize="x-small")


deep_ntk_classify = register(
    Experiment(
        name="deep-ntk-classify",
        family="kernels",
        description=(
            "Depth-L NTK classifiers on the sphere of R^3 (Radhakrishnan, Belkin and "
            "Uhler, 2023): agreement with 1-NN and with the majority vote per "
            "activation as L grows to 5000 (quick: 1000); metric: the agreement of "
            "the nearest-neighbour-class activation (dual (rho^2 + rho^3)/2) with "
            "1-NN at the largest depth. ReLU's agreement with the majority vote and "
            "the singular activation's curves are reported beside it."
        ),
        metric="nn_agreement",
        target=0.99,
        higher_is_better=True,
        setup=_setup,
    )
)
