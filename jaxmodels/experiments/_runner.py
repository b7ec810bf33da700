import json
import math
import time
from pathlib import Path
from typing import Any

import equinox as eqx
import jax.random as jr
import numpy as np

from ..sweep import SweepResult, seed_key, sweep
from ..train import FitResult, fit
from ._registry import Experiment, NotTrainedError, Study, Task, UnknownNameError


# Data are drawn from DATA_KEY and training keys from TRAIN_KEY, so the data do not
# change with the seed, and `jaxmodels run --seed S` equals seed S of a sweep.
DATA_KEY = 0
TRAIN_KEY = 1


def _merge_hparams(task: Task, overrides: dict[str, Any] | None) -> dict[str, Any]:
    h = dict(task.hparams)
    for k, v in (overrides or {}).items():
        if k not in h:
            known = ", ".join(sorted(h)) or "none"
            raise UnknownNameError(f"unknown hyperparameter {k!r} (known: {known})")
        h[k] = type(h[k])(v) if isinstance(h[k], int | float) else v
    return h


def run_experiment(
    experiment: Experiment,
    *,
    quick: bool = False,
    steps: int | None = None,
    seed: int = 0,
    hparams: dict[str, Any] | None = None,
    out: str | Path | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Train an experiment's model (and its baselines), evaluate it, and report; or, for
    a `Study`, make its measurement.

    **Arguments:**

    - `experiment`: a registered `Experiment`.
    - `quick`: the small mode.
    - `steps`: override the task's number of steps.
    - `seed`: the training seed (initialisation and minibatch order); the data are the
        same for every seed.
    - `hparams`: overrides of the task's default hyperparameters.
    - `out`: a folder to write `metrics.json` (and `plot.png` when matplotlib is
        installed) to.
    - `progress`: show progress bars.

    **Returns:** the metrics dict written to `metrics.json`: `experiment`, `family`,
    `metric`, `value`, `target`, `passed`, `seconds`, `compile_seconds`, the loss
    `history`, `baselines` and `extras`, among others.

    **Raises:** `UnknownNameError` (a `KeyError`) for an unknown hyperparameter;
    `NotTrainedError` for `steps` or `hparams` given to a `Study`.
    """
    t0 = time.perf_counter()
    task = experiment.setup(quick, jr.key(DATA_KEY))
    if isinstance(task, Study):
        if steps is not None or hparams:
            raise NotTrainedError(
                f"{experiment.name!r} is a measurement, not a training run: it takes "
                "no `steps` or hyperparameters."
            )
        return _run_study(experiment, task, quick=quick, seed=seed, out=out, t0=t0)
    h = _merge_hparams(task, hparams)
    steps = task.steps if steps is None else steps
    model_key, fit_key = seed_key(jr.key(TRAIN_KEY), seed)
    evaluate = eqx.filter_jit(task.evaluate)

    def train(make_model) -> tuple[FitResult, float]:
        result = fit(
            task.loss,
            make_model(h, model_key),
            task.data,
            optim=task.make_optim(h, steps),
            steps=steps,
            batch_size=task.batch_size,
            key=fit_key,
            progress=progress,
            throw=False,
        )
        value = float(evaluate(result.model)) if result.steps == steps else math.nan
        return result, value

    result, value = train(task.make_model)
    compile_seconds = result.compile_time
    baselines = {}
    baseline_histories = {}
    for name, make_baseline in task.baselines.items():
        b_result, b_value = train(make_baseline)
        compile_seconds += b_result.compile_time
        baselines[name] = {
            experiment.metric: b_value,
            "final_loss": b_result.final_loss,
            "diverged": b_result.steps < steps,
        }
        baseline_histories[name] = b_result.loss_history
    extras = task.report(result.model) if task.report is not None else {}
    seconds = time.perf_counter() - t0
    metrics = {
        **_verdict(experiment, value, quick),
        "seconds": seconds,
        "compile_seconds": compile_seconds,
        "quick": quick,
        "seed": seed,
        "steps": steps,
        "steps_taken": result.steps,
        "hparams": h,
        "final_loss": result.final_loss,
        "history": {"loss": _json_floats(result.loss_history)},
        "baselines": baselines,
        "extras": extras,
    }
    if out is not None:
        out = _write_metrics(out, metrics)
        _plot(experiment, task, result, baseline_histories, out / "plot.png")
    return metrics


def _verdict(experiment: Experiment, value: float, quick: bool) -> dict[str, Any]:
    """The head of `metrics.json`: what was measured, against which target."""
    return {
        "experiment": experiment.name,
        "family": experiment.family,
        "metric": experiment.metric,
        "value": value,
        "target": experiment.target_for(quick),
        "higher_is_better": experiment.higher_is_better,
        "passed": experiment.passed(value, quick),
    }


def _write_metrics(out: str | Path, metrics: dict[str, Any]) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return out


def _pyplot() -> Any:
    """`matplotlib.pyplot` on the Agg backend, or `None` without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _run_study(
    experiment: Experiment,
    study: Study,
    *,
    quick: bool,
    seed: int,
    out: str | Path | None,
    t0: float,
) -> dict[str, Any]:
    _, key = seed_key(jr.key(TRAIN_KEY), seed)
    results = dict(study.measure(key))
    if experiment.metric not in results:
        raise ValueError(
            f"The measurement of {experiment.name!r} did not return its metric "
            f"{experiment.metric!r} (it returned {sorted(results)})."
        )
    value = float(results[experiment.metric])
    extras = {k: v for k, v in results.items() if k != experiment.metric}
    metrics = {
        **_verdict(experiment, value, quick),
        "seconds": time.perf_counter() - t0,
        # A study is one jitted measurement, not a training run with a separate
        # compile: its seconds include compilation.
        "compile_seconds": None,
        "quick": quick,
        "seed": seed,
        "steps": 0,
        "steps_taken": 0,
        "hparams": {},
        "final_loss": None,
        "history": {"loss": []},
        "baselines": {},
        "extras": extras,
    }
    if out is not None:
        out = _write_metrics(out, metrics)
        _plot_study(experiment, study, results, out / "plot.png")
    return metrics


def _plot_study(experiment, study, results, path) -> bool:
    if study.plot is None:
        return False
    plt = _pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(5.5, 4))
    study.plot(results, ax)
    ax.set_title(experiment.name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _json_floats(x: np.ndarray) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in np.asarray(x)]


def _plot(experiment, task, result, baseline_histories, path) -> bool:
    plt = _pyplot()
    if plt is None:
        return False
    ncols = 2 if task.plot is not None else 1
    fig, axes = plt.subplots(1, ncols, figsize=(5.5 * ncols, 4), squeeze=False)
    ax = axes[0, 0]
    curves = {experiment.family: result.loss_history, **baseline_histories}
    for i, (name, hist) in enumerate(curves.items()):
        hist = np.asarray(hist, dtype=np.float64)
        window = max(1, len(hist) // 50)
        smooth = np.convolve(hist, np.ones(window) / window, mode="valid")
        ax.plot(hist, color=f"C{i}", lw=0.5, alpha=0.25)
        ax.plot(np.arange(window - 1, len(hist)), smooth, color=f"C{i}", label=name)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(experiment.name)
    ax.legend()
    if task.plot is not None:
        task.plot(result.model, axes[0, 1])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def sweep_experiment(
    experiment: Experiment,
    *,
    seeds: int,
    grid: dict[str, list[Any]] | None = None,
    quick: bool = False,
    steps: int | None = None,
    out: str | Path | None = None,
    progress: bool | None = None,
) -> SweepResult:
    """Run an experiment as a `sweep` over `seeds` x `grid`.

    Hyperparameters not in `grid` stay at the task's defaults. Seed `s` of the sweep
    equals `run_experiment(..., seed=s)`.

    **Returns:** the `SweepResult`; with `out`, its table is also written to
    `out/sweep.json`.

    **Raises:** `UnknownNameError` (a `KeyError`) for an unknown hyperparameter;
    `NotTrainedError` if the experiment is a `Study` (a measurement: run it per seed).
    """
    task = experiment.setup(quick, jr.key(DATA_KEY))
    if isinstance(task, Study):
        raise NotTrainedError(
            f"{experiment.name!r} is a measurement, not a training run, so it cannot "
            "be swept; run it with `jaxmodels run --seed S` for each seed."
        )
    steps = task.steps if steps is None else steps
    for k in grid or {}:
        _merge_hparams(task, {k: task.hparams.get(k)})  # names must exist
    full_grid = {k: [v] for k, v in task.hparams.items()}
    for k, values in (grid or {}).items():
        default = task.hparams[k]
        full_grid[k] = [type(default)(v) for v in values]
    result = sweep(
        task.make_model,
        task.loss,
        task.data,
        optim=lambda h: task.make_optim(h, steps),
        grid=full_grid,
        seeds=seeds,
        steps=steps,
        key=jr.key(TRAIN_KEY),
        batch_size=task.batch_size,
        metric=task.evaluate,
        metric_name=experiment.metric,
        higher_is_better=experiment.higher_is_better,
        progress=progress,
    )
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        payload = {
            "experiment": experiment.name,
            "metric": experiment.metric,
            "seeds": seeds,
            "rows": result.table(),
            "wall_seconds": result.wall_time,
            "compile_seconds": result.compile_time,
        }
        (out / "sweep.json").write_text(json.dumps(payload, indent=2) + "\n")
    return result
