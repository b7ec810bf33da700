"""Shared helpers of the benchmarks in `bench/`.

Every benchmark is run as `python bench/<name>.py [--quick] [--json PATH] [--record]`:
it prints a table, writes its rows as a JSON list with `--json`, and appends the table
with the date, the machine and the library versions to `bench/RESULTS.md` with
`--record`.
"""

import argparse
import datetime
import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


BENCH_DIR = Path(__file__).resolve().parent
RESULTS_MD = BENCH_DIR / "RESULTS.md"

RESULTS_HEADER = """\
# Benchmark results

Each section is one run of one benchmark, appended by
`python bench/<name>.py --record` (add `--quick` for a short run, marked as such).
It gives the date, the machine (CPU model from `/proc/cpuinfo`, the cores this process
may use, the load average when the run started: other jobs on a shared machine slow
both sides), the library versions (jaxmodels with a digest of its source files: the
code changes between runs, and a run during which it changed is not recorded), the
exact settings, then one row per comparison:

- `task`: what is trained; `peer`: what jaxmodels is compared with.
- `ours_ms`, `peer_ms`: milliseconds. Which milliseconds (steady state per 1000 steps,
  or the whole wall clock including compilation) is stated by the benchmark's notes.
- `speedup` = `peer_ms / ours_ms` (above 1: jaxmodels is faster).
- `compile_s`: seconds jaxmodels spent compiling (not included in steady-state
  times); `peer_compile_s`: the same for the peer where it compiles (JAX baselines,
  `torch.compile`), blank otherwise.
- `ours_loss`, `peer_loss`: the final loss each side reaches, to show that both did the
  same training.

The JSON written by `--json` holds the same rows (plus any extra fields).
"""


def parse_args(
    description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None
) -> argparse.Namespace:
    """`--quick`, `--json PATH`, `--record`, and what `extra(parser)` adds."""
    parser = argparse.ArgumentParser(description=description)
    if extra is not None:
        extra(parser)
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--json", metavar="PATH", help="write the rows as JSON here")
    parser.add_argument(
        "--record", action="store_true", help="append the results to bench/RESULTS.md"
    )
    return parser.parse_args()


def cores() -> int:
    """The number of CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def source_digest() -> str:
    """A short hash of jaxmodels' source files, to tell which code a result measured.

    jaxmodels is edited while benchmarks run; `report` compares this at the start and
    at the end of a run and refuses to record a run that straddled an edit.
    """
    import jaxmodels

    root = Path(jaxmodels.__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def versions() -> dict[str, str]:
    import equinox
    import jax
    import jaxlib
    import optax

    import jaxmodels

    out = {
        "jaxmodels": f"{jaxmodels.__version__} (source {source_digest()})",
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "equinox": equinox.__version__,
        "optax": optax.__version__,
    }
    try:
        import torch

        out["torch"] = torch.__version__
    except ImportError:
        out["torch"] = "not installed"
    return out


def machine() -> dict[str, Any]:
    import jax

    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    return {
        "cpu": cpu_model(),
        "cores": cores(),
        "jax_backend": jax.default_backend(),
        "load_avg_1min": round(load, 2),
        # glibc's allocator setting: XLA:CPU's per-call temporaries can cost page faults
        # by the tens of thousands under the default (bench/operators.py's docstring).
        "malloc": os.environ.get("GLIBC_TUNABLES", "glibc default"),
        "source": source_digest(),
    }


def block(tree: Any) -> Any:
    """Wait until every JAX array in `tree` is computed; other leaves pass through."""
    import equinox as eqx
    import jax

    arrays = [x for x in jax.tree_util.tree_leaves(tree) if eqx.is_array(x)]
    jax.block_until_ready(arrays)
    return tree


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """`(fn(), seconds)`, waiting for any JAX arrays in the output."""
    t0 = time.perf_counter()
    out = block(fn())
    return out, time.perf_counter() - t0


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def set_torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)
    torch.autograd.set_detect_anomaly(False)


def regression_data(
    n: int, d_in: int, seed: int = 0, noise: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """A fixed smooth regression problem (NumPy float32), shared by every side.

    Inputs standard normal, targets `sin(x @ w1) @ w2 / sqrt(h) + noise`, a random
    two-layer teacher, so the problem is learnable but not trivially linear.
    """
    rng = np.random.default_rng(seed)
    hidden = 16
    x = rng.standard_normal((n, d_in)).astype(np.float32)
    w1 = rng.standard_normal((d_in, hidden)) / np.sqrt(d_in)
    w2 = rng.standard_normal((hidden, 1))
    y = np.sin(x @ w1) @ w2 / np.sqrt(hidden)
    y = y + noise * rng.standard_normal((n, 1))
    return x, y.astype(np.float32)


# --- the problem every side trains ---------------------------------------------


def mse_loss(model, batch, key):
    """`jaxmodels.fit`'s loss signature: mean squared error of a per-sample model."""
    import jax
    import jax.numpy as jnp

    x, y = batch
    pred = jax.vmap(model)(x)
    return jnp.mean((pred - y) ** 2)


def fit_indices(key, n: int, batch_size: int, steps: int):
    """The minibatch indices `jaxmodels.fit(..., key=key)` draws: `(steps, batch)`.

    Mirrors `jaxmodels.train._step`: `(data_key, loss_key) = split(key)`, epoch `e` is
    `permutation(fold_in(data_key, e), n)`, cut into `n // batch_size` batches (the
    last partial one dropped). Traceable, so a jitted baseline can draw them in-graph.
    """
    import jax
    import jax.numpy as jnp
    import jax.random as jr

    data_key, _ = jr.split(key)
    per_epoch = n // batch_size
    n_epochs = -(-steps // per_epoch)
    perms = jax.vmap(lambda e: jr.permutation(jr.fold_in(data_key, e), n))(
        jnp.arange(n_epochs)
    )
    idx = perms[:, : per_epoch * batch_size].reshape(n_epochs * per_epoch, batch_size)
    return idx[:steps]


def mlp_weights(model) -> list[np.ndarray]:
    """An `eqx.nn.MLP`'s weights and biases, in the order of a torch MLP's parameters."""
    out = []
    for lin in model.layers:
        out += [np.array(lin.weight), np.array(lin.bias)]
    return out


def torch_mlp(weights: Sequence[np.ndarray]):
    """A torch tanh MLP (Linear, Tanh, ..., Linear) holding `weights` (`mlp_weights`)."""
    import torch

    layers = []
    n_layers = len(weights) // 2
    for i in range(n_layers):
        w, b = weights[2 * i], weights[2 * i + 1]
        lin = torch.nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w))
            lin.bias.copy_(torch.from_numpy(b))
        layers.append(lin)
        if i < n_layers - 1:
            layers.append(torch.nn.Tanh())
    return torch.nn.Sequential(*layers)


class TorchTrainer:
    """PyTorch MSE training with Adam: plain Python loop over pre-built index tensors.

    The network, optimiser and step function are built once; `run(X, Y, idx, weights)`
    first loads `weights` (default: the initial ones) and zeroes Adam's state in
    place, so a `torch.compile`d step stays valid across runs (a new module or
    optimiser would make it recompile).
    """

    def __init__(self, weights: Sequence[np.ndarray], lr: float, compiled: bool):
        import torch
        import torch.nn.functional as F

        self.net = torch_mlp(weights)
        self.weights = list(weights)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=lr)
        net, opt = self.net, self.opt

        def step(xb, yb):
            opt.zero_grad(set_to_none=True)
            loss = F.mse_loss(net(xb), yb)
            loss.backward()
            opt.step()
            return loss.detach()

        self.step = torch.compile(step) if compiled else step

    def reset(self, weights: Sequence[np.ndarray] | None = None) -> None:
        import torch

        weights = self.weights if weights is None else weights
        with torch.no_grad():
            for p, w in zip(self.net.parameters(), weights):
                p.copy_(torch.from_numpy(w))
            for state in self.opt.state.values():
                for v in state.values():
                    if isinstance(v, torch.Tensor):
                        v.zero_()

    def run(self, X, Y, idx, weights=None):
        """Train from `weights` on minibatches `X[i], Y[i]` for `i` in `idx`.

        **Returns:** `(net, losses)`.
        """
        import torch

        self.reset(weights)
        losses = [self.step(X[ix], Y[ix]) for ix in idx]
        return self.net, torch.stack(losses)


def torch_full_mse(net, X, Y) -> float:
    import torch

    with torch.no_grad():
        return float(torch.nn.functional.mse_loss(net(X), Y))


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int | np.integer):
        return str(v)
    if isinstance(v, float | np.floating):
        v = float(v)
        if v != v:
            return "nan"
        if abs(v) >= 100:
            return f"{v:.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        if abs(v) >= 0.01 or v == 0:
            return f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}"
        return f"{v:.3g}"
    return str(v)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A Markdown table of `rows` over `columns` (aligned, so also readable as text)."""
    body = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(columns, *body)]
    line = "| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    lines = [line, sep]
    lines += [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in body
    ]
    return "\n".join(lines)


def write_json(path: str | os.PathLike, rows: Sequence[dict[str, Any]]) -> None:
    def default(o):
        if isinstance(o, np.generic):
            return o.item()
        raise TypeError(f"not JSON serialisable: {type(o).__name__}")

    Path(path).write_text(json.dumps(list(rows), indent=2, default=default) + "\n")


def record(
    name: str,
    table: str,
    *,
    quick: bool,
    settings: dict[str, Any],
    notes: Sequence[str] = (),
    info: dict[str, Any] | None = None,
) -> None:
    """Append one section to `bench/RESULTS.md` (creating it with its header)."""
    info = machine() if info is None else info
    vers = versions()
    if not RESULTS_MD.exists() or not RESULTS_MD.read_text().strip():
        RESULTS_MD.write_text(RESULTS_HEADER)
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    mode = " (--quick)" if quick else ""
    lines = [
        "",
        f"## {name}{mode}, {now}",
        "",
        f"- machine: {info['cpu']}, {info['cores']} cores, JAX backend "
        f"{info['jax_backend']}, load average {info['load_avg_1min']} at start, "
        f"malloc: {info['malloc']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()),
        "- settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()),
    ]
    lines += [f"- {n}" for n in notes]
    lines += ["", table, ""]
    with RESULTS_MD.open("a") as f:
        f.write("\n".join(lines))


def report(
    name: str,
    rows: Sequence[dict[str, Any]],
    columns: Sequence[str],
    args: argparse.Namespace,
    *,
    settings: dict[str, Any],
    notes: Sequence[str] = (),
    info: dict[str, Any] | None = None,
) -> None:
    """Print the table, and write the JSON / append to RESULTS.md as asked.

    `info` is `machine()` taken when the run started; if jaxmodels' source changed
    since, the run is not recorded (it may have measured two versions).
    """
    info = machine() if info is None else info
    changed = info["source"] != source_digest()
    if changed:
        notes = [
            *notes,
            f"WARNING: jaxmodels' source changed during the run (digest "
            f"{info['source']} at the start, {source_digest()} at the end)",
        ]
    table = format_table(rows, columns)
    print()
    print(table)
    for n in notes:
        print("-", n)
    if args.json:
        write_json(args.json, rows)
        print(f"wrote {args.json}")
    if args.record and changed:
        print("not recorded: jaxmodels' source changed during the run; run it again")
    elif args.record:
        record(name, table, quick=args.quick, settings=settings, notes=notes, info=info)
        print(f"appended to {RESULTS_MD}")
