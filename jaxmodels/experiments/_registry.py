import dataclasses
from collections.abc import Callable
from typing import Any

import optax
from jaxtyping import PRNGKeyArray, PyTree


@dataclasses.dataclass(frozen=True)
class Task:
    """Everything that `fit` and `sweep` need to train one experiment.

    **Fields:**

    - `data`: the training data, a pytree of arrays with a leading sample axis.
    - `make_model`: `make_model(hparams, key)` returning a model. It is vmapped over
        configurations by `sweep`, so it must only use `hparams` as arrays (or, for
        hyperparameters that change shapes, as Python ints).
    - `loss`: `loss(model, batch, key)` returning a scalar or `(scalar, aux)`.
    - `make_optim`: `make_optim(hparams, steps)` returning an optax transformation;
        traceable in the array-valued hyperparameters (e.g. `optax.adam(hparams["lr"])`).
        `steps` is the length of the run (which `--steps` may change), for schedules.
    - `hparams`: the default hyperparameters; `jaxmodels run/sweep --set` override them.
    - `steps`: optimiser steps.
    - `batch_size`: minibatch size, or `None` for full batch.
    - `evaluate`: `evaluate(model)` returning the experiment's metric as a scalar
        array, on held-out data; jittable and vmappable (a sweep vmaps it).
    - `baselines`: named `make_model`s trained with the same recipe, whose metric is
        reported beside the model's (e.g. a ReLU network beside a SELU one).
    - `report`: `report(model)` returning extra JSON-able numbers for `metrics.json`.
    - `plot`: `plot(model, ax)` drawing what the trained model does on a matplotlib
        axis, beside the loss curve in the experiment's PNG.
    """

    data: PyTree
    make_model: Callable[[dict[str, Any], PRNGKeyArray], PyTree]
    loss: Callable[..., Any]
    make_optim: Callable[[dict[str, Any], int], optax.GradientTransformation]
    hparams: dict[str, Any]
    steps: int
    evaluate: Callable[[PyTree], Any]
    batch_size: int | None = None
    baselines: dict[str, Callable[[dict[str, Any], PRNGKeyArray], PyTree]] = (
        dataclasses.field(default_factory=dict)
    )
    report: Callable[[PyTree], dict[str, Any]] | None = None
    plot: Callable[[PyTree, Any], None] | None = None


@dataclasses.dataclass(frozen=True)
class Study:
    """A measurement instead of a training run: a Monte Carlo estimate, a capacity
    curve, a fitted scaling exponent.

    **Fields:**

    - `measure`: `measure(key)` returning a dict of JSON-able values (floats, ints,
        strings and lists of them) that holds the experiment's metric under its name;
        the other entries are reported as `extras`.
    - `plot`: `plot(results, ax)` drawing the measurement (the dict `measure`
        returned) on a matplotlib axis.
    """

    measure: Callable[[PRNGKeyArray], dict[str, Any]]
    plot: Callable[[dict[str, Any], Any], None] | None = None


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A named, runnable recipe: a family, a task, a metric and a target.

    **Fields:**

    - `name`: unique, kebab-case (`selu-deep-classify`).
    - `family`: the family's subpackage name (`signal`).
    - `description`: one line.
    - `metric`: the metric's name (`test_accuracy`).
    - `target`: the value the metric must reach (in the full mode).
    - `higher_is_better`: whether the metric must be `>= target` (else `<= target`).
    - `quick_target`: the value the quick mode must reach, where the full mode's target
        is out of a quick run's reach (its justification belongs in `description`);
        `None` means `target` for both modes.
    - `setup`: `setup(quick, key)` returning a `Task` (a model to train) or a `Study`
        (a measurement); `quick=True` is the small mode that must meet the target on 2
        CPU cores in about a minute.
    """

    name: str
    family: str
    description: str
    metric: str
    target: float
    higher_is_better: bool
    setup: Callable[[bool, PRNGKeyArray], Task | Study]
    quick_target: float | None = None

    def target_for(self, quick: bool) -> float:
        """The target of the quick or the full mode."""
        if quick and self.quick_target is not None:
            return self.quick_target
        return self.target

    def passed(self, value: float, quick: bool = False) -> bool:
        """Whether `value` meets the target of the mode (a NaN never does)."""
        if value != value:
            return False
        target = self.target_for(quick)
        return value >= target if self.higher_is_better else value <= target


class UnknownNameError(KeyError):
    """An unknown experiment, family or hyperparameter name (the CLI's exit status 2)."""


class NotTrainedError(ValueError):
    """A training option (steps, hyperparameters, a sweep) given to an experiment that
    is a `Study`, a measurement (the CLI's exit status 2)."""


_REGISTRY: dict[str, Experiment] = {}


def register(experiment: Experiment) -> Experiment:
    """Add `experiment` to the registry that `jaxmodels list/run/sweep/tour` read.

    **Raises:** `ValueError` if the name is taken.
    """
    if experiment.name in _REGISTRY and _REGISTRY[experiment.name] is not experiment:
        raise ValueError(f"An experiment named {experiment.name!r} already exists.")
    _REGISTRY[experiment.name] = experiment
    return experiment


def get_experiment(name: str) -> Experiment:
    """The registered experiment called `name`.

    **Raises:** `UnknownNameError` (a `KeyError`) with the known names if there is none.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise UnknownNameError(
            f"unknown experiment {name!r} (known: {known})"
        ) from None


def list_experiments(family: str | None = None) -> list[Experiment]:
    """Registered experiments, sorted by family then name; optionally one family's.

    **Raises:** `UnknownNameError` (a `KeyError`) if `family` has no experiments.
    """
    out = sorted(_REGISTRY.values(), key=lambda e: (e.family, e.name))
    if family is not None:
        out = [e for e in out if e.family == family]
        if not out:
            known = ", ".join(sorted({e.family for e in _REGISTRY.values()}))
            raise UnknownNameError(f"unknown family {family!r} (known: {known})")
    return out
