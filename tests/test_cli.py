import json

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
import pytest

from jaxmodels.cli import main
from jaxmodels.experiments import Experiment, Task, _registry


def _tiny_experiment(name, target):
    def setup(quick, key):
        x = jnp.linspace(-1, 1, 32)[:, None]
        y = 2 * x

        def loss(model, batch, key):
            xb, yb = batch
            return jnp.mean((jax.vmap(model)(xb) - yb) ** 2)

        return Task(
            data=(x, y),
            make_model=lambda h, k: eqx.nn.Linear(1, 1, key=k),
            loss=loss,
            make_optim=lambda h, steps: optax.adam(h["lr"]),
            hparams={"lr": 0.1, "width": 4},
            steps=100 if quick else 200,
            evaluate=lambda m: loss(m, (x, y), None),
        )

    return Experiment(
        name=name,
        family="testfamily",
        description="a linear fit, for the CLI tests",
        metric="mse",
        target=target,
        higher_is_better=False,
        setup=setup,
    )


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setitem(
        _registry._REGISTRY, "tiny-pass", _tiny_experiment("tiny-pass", 1e-2)
    )
    monkeypatch.setitem(
        _registry._REGISTRY, "tiny-fail", _tiny_experiment("tiny-fail", -1.0)
    )


def test_list(registry, capsys):
    assert main(["list", "--family", "testfamily"]) == 0
    out = capsys.readouterr().out
    assert "tiny-pass" in out and "tiny-fail" in out and "selu" not in out


def test_run_writes_metrics(registry, tmp_path, capsys):
    assert (
        main(["run", "tiny-pass", "--quick", "--out", str(tmp_path), "--seed", "2"])
        == 0
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in (
        "experiment",
        "family",
        "metric",
        "value",
        "target",
        "passed",
        "seconds",
        "compile_seconds",
        "history",
    ):
        assert key in metrics
    assert metrics["passed"] and metrics["value"] <= 1e-2 and metrics["seed"] == 2
    assert len(metrics["history"]["loss"]) == 100
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
    # --steps and --set reach the training.
    assert (
        main(
            [
                "run",
                "tiny-pass",
                "--steps",
                "7",
                "--set",
                "lr=0.0",
                "--out",
                str(tmp_path),
            ]
        )
        == 1
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert len(metrics["history"]["loss"]) == 7 and metrics["hparams"]["lr"] == 0.0
    assert len(set(metrics["history"]["loss"])) == 1  # lr 0: nothing moves


def test_sweep_prints_table(registry, tmp_path, capsys):
    code = main(
        [
            "sweep",
            "tiny-pass",
            "--seeds",
            "2",
            "--set",
            "lr=0.01,0.1",
            "--quick",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "mse mean" in out and "4 trainings" in out
    rows = json.loads((tmp_path / "sweep.json").read_text())["rows"]
    assert [r["lr"] for r in rows] == [0.1, 0.01] and rows[0]["seeds"] == 2


def test_tour_exit_status_and_json(registry, tmp_path, capsys):
    path = tmp_path / "tour.json"
    code = main(["tour", "--quick", "--family", "testfamily", "--json", str(path)])
    assert code == 1  # tiny-fail misses its target
    rows = {r["experiment"]: r for r in json.loads(path.read_text())}
    assert rows["tiny-pass"]["passed"] and not rows["tiny-fail"]["passed"]
    out = capsys.readouterr().out
    assert "tiny-fail" in out and "False" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "required"),
        (["frobnicate"], "invalid choice"),
        (["run", "no-such-experiment"], "unknown experiment"),
        (["run", "tiny-pass", "--set", "lr"], "NAME=VALUE"),
        (["run", "tiny-pass", "--set", "lr=fast"], "not a number"),
        (["run", "tiny-pass", "--set", "lr=1,2"], "one value"),
        (["run", "tiny-pass", "--set", "depth=3"], "unknown hyperparameter"),
        (["run", "tiny-pass", "--steps", "0"], "positive integer"),
        (["sweep", "tiny-pass", "--set", "lr=1e-3,"], "empty value"),
        (["sweep", "tiny-pass", "--seeds", "x"], "positive integer"),
        (["tour", "--family", "nope"], "unknown family"),
        (["list", "--family", "nope"], "unknown family"),
    ],
)
def test_bad_input_is_one_line_and_status_2(registry, capsys, argv, message):
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxmodels: error:")
    assert message in lines[0]


# Quick modes that miss their target because the paper's claim does not reproduce
# here (see README's "Results that do not match the papers"). Strict: if one starts
# passing, the test fails, so that this list is kept true.
_NOT_REPRODUCED = {
    "ltc-forecast": "P118: LTC test MSE is 1.6-2.1x the GRU's at seeds 0-2",
}


def _registered() -> list:
    from jaxmodels.experiments import list_experiments

    return [
        pytest.param(
            e.name,
            marks=pytest.mark.xfail(reason=_NOT_REPRODUCED[e.name], strict=True),
        )
        if e.name in _NOT_REPRODUCED
        else e.name
        for e in list_experiments()
    ]


# One test per experiment (what `jaxmodels tour --quick` runs, whose own wiring is
# tested above), so that pytest-xdist spreads the experiments over the workers.
@pytest.mark.slow
@pytest.mark.parametrize("name", _registered())
def test_quick_mode_meets_its_target(name, tmp_path, capsys):
    code = main(["run", name, "--quick", "--out", str(tmp_path)])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert code == 0 and metrics["passed"], {
        k: metrics[k] for k in ("value", "target", "extras") if k in metrics
    }


def test_run_seed_equals_sweep_seed(registry):
    from jaxmodels.experiments import get_experiment, run_experiment, sweep_experiment

    exp = get_experiment("tiny-pass")
    swept = sweep_experiment(exp, seeds=2, quick=True)
    for seed in (0, 1):
        alone = run_experiment(exp, quick=True, seed=seed)
        assert alone["history"]["loss"] == pytest.approx(
            list(swept.loss_history[seed]), rel=1e-5, abs=1e-7
        )
        assert alone["value"] == pytest.approx(float(swept.metric[seed]), rel=1e-5)


def test_quick_target_applies_to_the_quick_mode_only(monkeypatch, tmp_path, capsys):
    import dataclasses

    # The fit reaches an MSE near 0: a quick target of 1e-2 passes, a full one of -1
    # (impossible) fails, and each run reports the target of its own mode.
    exp = dataclasses.replace(_tiny_experiment("tiny-quick", -1.0), quick_target=1e-2)
    monkeypatch.setitem(_registry._REGISTRY, "tiny-quick", exp)
    assert exp.passed(0.0, quick=True) and not exp.passed(0.0, quick=False)
    assert main(["run", "tiny-quick", "--quick", "--out", str(tmp_path / "q")]) == 0
    quick = json.loads((tmp_path / "q" / "metrics.json").read_text())
    assert quick["target"] == 1e-2 and quick["passed"]
    main(["run", "tiny-quick", "--out", str(tmp_path / "f")])
    full = json.loads((tmp_path / "f" / "metrics.json").read_text())
    assert full["target"] == -1.0 and not full["passed"]
    assert main(["list", "--family", "testfamily"]) == 0
    assert "(quick 0.01)" in capsys.readouterr().out


def _tiny_study(name):
    import jax.random as jr

    from jaxmodels.experiments import Study

    # A Monte Carlo mean of 4000 uniforms: 0.5 within a few 1/sqrt(12 * 4000).
    def measure(key):
        draws = jr.uniform(key, (4000,))
        return {"mean": float(jnp.mean(draws)), "draws": 4000}

    def plot(results, ax):
        ax.bar(["mean"], [results["mean"]])

    return Experiment(
        name=name,
        family="testfamily",
        description="a Monte Carlo mean, for the CLI tests of a Study",
        metric="mean",
        target=0.02,
        higher_is_better=False,
        setup=lambda quick, key: Study(
            measure=lambda k: {**measure(k), "mean": abs(measure(k)["mean"] - 0.5)},
            plot=plot,
        ),
    )


def test_a_study_is_measured_not_trained(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(_registry._REGISTRY, "tiny-study", _tiny_study("tiny-study"))
    assert (
        main(["run", "tiny-study", "--quick", "--out", str(tmp_path), "--seed", "3"])
        == 0
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["passed"] and metrics["value"] < 0.02 and metrics["steps"] == 0
    assert metrics["extras"] == {"draws": 4000} and metrics["seed"] == 3
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
    # Different seeds, different draws; the same seed, the same measurement.
    other = json.loads(
        (
            main(["run", "tiny-study", "--out", str(tmp_path / "b"), "--seed", "4"]),
            (tmp_path / "b" / "metrics.json").read_text(),
        )[1]
    )
    again = json.loads(
        (
            main(["run", "tiny-study", "--out", str(tmp_path / "c"), "--seed", "3"]),
            (tmp_path / "c" / "metrics.json").read_text(),
        )[1]
    )
    assert other["value"] != metrics["value"] and again["value"] == metrics["value"]
    capsys.readouterr()
    for argv, message in (
        (["run", "tiny-study", "--steps", "5"], "a measurement"),
        (["run", "tiny-study", "--set", "lr=1"], "a measurement"),
        (["sweep", "tiny-study", "--seeds", "2"], "cannot be swept"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
