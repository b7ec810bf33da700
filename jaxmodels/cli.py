"""The `jaxmodels` command: `list`, `run`, `sweep` and `tour` over registered experiments."""

import argparse
import json
import sys
from pathlib import Path
from typing import Any, NoReturn


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    # One line and exit status 2 for every usage error, never a usage dump.
    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="jaxmodels",
        description="Run the experiments of jaxmodels' model families.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("list", help="list the registered experiments")
    p.add_argument("--family", help="only this family's experiments")

    p = sub.add_parser("run", help="train and evaluate one experiment")
    p.add_argument("name")
    p.add_argument("--quick", action="store_true", help="the small mode")
    p.add_argument("--steps", type=_positive_int, help="override the number of steps")
    p.add_argument("--seed", type=_nonnegative_int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--out", default=None, help="folder for metrics.json and plot.png")

    p = sub.add_parser("sweep", help="run one experiment as a sweep")
    p.add_argument("name")
    p.add_argument("--seeds", type=_positive_int, default=4)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=V1,V2,...",
        help="hyperparameter values to sweep over (repeatable)",
    )
    p.add_argument("--quick", action="store_true")
    p.add_argument("--steps", type=_positive_int)
    p.add_argument("--out", default=None, help="folder for sweep.json")

    p = sub.add_parser("tour", help="run every experiment and check its target")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--family", help="only this family's experiments")
    p.add_argument("--json", default=None, metavar="PATH", help="write the rows here")
    p.add_argument("--out", default=None, help="folder for each experiment's outputs")
    return parser


def _int_at_least(low: int, what: str):
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            v = low - 1
        if v < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}")
        return v

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_nonnegative_int = _int_at_least(0, "an integer >= 0")


def _parse_value(name: str, text: str) -> float | int:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise _UsageError(f"--set {name}: {text!r} is not a number") from None


def _parse_sets(items: list[str], multi: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        name, sep, values = item.partition("=")
        name = name.strip()
        if not sep or not name or not values.strip():
            raise _UsageError(
                f"--set expects NAME=VALUE{',...' if multi else ''}, got {item!r}"
            )
        parts = [v.strip() for v in values.split(",")]
        if any(not p for p in parts):
            raise _UsageError(f"--set {name}: empty value in {values!r}")
        if not multi and len(parts) > 1:
            raise _UsageError(
                f"--set {name}: `run` takes one value; use `sweep` for several"
            )
        parsed = [_parse_value(name, p) for p in parts]
        out[name] = parsed if multi else parsed[0]
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    body = [[_fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max([len(c)] + [len(b[i]) for b in body]) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(x.ljust(w) for x, w in zip(b, widths)) for b in body]
    return "\n".join(lines)


def _cmd_list(args) -> int:
    from .experiments import list_experiments

    exps = list_experiments(args.family)
    rows = [
        {
            "experiment": e.name,
            "family": e.family,
            "metric": e.metric,
            "target": ("≥ " if e.higher_is_better else "≤ ")
            + _fmt(e.target)
            + ("" if e.quick_target is None else f" (quick {_fmt(e.quick_target)})"),
            "description": e.description,
        }
        for e in exps
    ]
    print(_table(rows, ["experiment", "family", "metric", "target", "description"]))
    return 0


def _summary_row(m: dict[str, Any]) -> dict[str, Any]:
    return {
        "experiment": m["experiment"],
        "family": m["family"],
        "metric": m["metric"],
        "value": m["value"],
        "target": m["target"],
        "passed": m["passed"],
        "seconds": m["seconds"],
        "compile_seconds": m["compile_seconds"],
    }


def _cmd_run(args) -> int:
    from .experiments import get_experiment, run_experiment

    exp = get_experiment(args.name)
    hparams = _parse_sets(args.set, multi=False)
    metrics = run_experiment(
        exp,
        quick=args.quick,
        steps=args.steps,
        seed=args.seed,
        hparams=hparams,
        out=args.out,
        progress=None,
    )
    print(_table([_summary_row(metrics)], list(_summary_row(metrics))))
    for name, b in metrics["baselines"].items():
        print(f"baseline {name}: {exp.metric} = {_fmt(b[exp.metric])}")
    if args.out:
        print(f"wrote {Path(args.out) / 'metrics.json'}")
    return 0 if metrics["passed"] else 1


def _cmd_sweep(args) -> int:
    from .experiments import get_experiment, sweep_experiment

    exp = get_experiment(args.name)
    grid = _parse_sets(args.set, multi=True)
    result = sweep_experiment(
        exp,
        seeds=args.seeds,
        grid=grid,
        quick=args.quick,
        steps=args.steps,
        out=args.out,
        progress=None,
    )
    print(result.format_table())
    print(
        f"{len(result.configs)} trainings in {result.wall_time:.1f} s "
        f"({result.compile_time:.1f} s compiling)"
    )
    return 0


def _cmd_tour(args) -> int:
    from .experiments import list_experiments, run_experiment

    exps = list_experiments(args.family)
    rows = []
    for exp in exps:
        out = None if args.out is None else Path(args.out) / exp.name
        try:
            m = run_experiment(exp, quick=args.quick, out=out, progress=False)
            row = _summary_row(m)
        except Exception as e:  # one broken experiment must not hide the others
            row = {
                "experiment": exp.name,
                "family": exp.family,
                "metric": exp.metric,
                "value": None,
                "target": exp.target_for(args.quick),
                "passed": False,
                "seconds": None,
                "compile_seconds": None,
                "error": f"{type(e).__name__}: {e}",
            }
        rows.append(row)
        print(
            f"{row['experiment']}: {row['metric']} = {_fmt(row['value'])} "
            f"(target {_fmt(row['target'])}) {'pass' if row['passed'] else 'FAIL'}",
            file=sys.stderr,
        )
    cols = ["experiment", "family", "metric", "value", "target", "passed", "seconds"]
    print(_table(rows, cols))
    for row in rows:
        if "error" in row:
            print(f"{row['experiment']}: {row['error']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if all(r["passed"] for r in rows) else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `jaxmodels` command; returns the exit status."""
    from .experiments._registry import NotTrainedError, UnknownNameError

    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
        command = {
            "list": _cmd_list,
            "run": _cmd_run,
            "sweep": _cmd_sweep,
            "tour": _cmd_tour,
        }[args.command]
        return command(args)
    except _UsageError as e:
        print(f"jaxmodels: error: {e}", file=sys.stderr)
        return 2
    except UnknownNameError as e:  # unknown experiment, family or hyperparameter
        print(f"jaxmodels: error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    except NotTrainedError as e:  # --steps, --set or sweep given to a measurement
        print(f"jaxmodels: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
