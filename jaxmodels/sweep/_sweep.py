import functools as ft
import itertools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
import optax
from jaxtyping import Array, Int, PRNGKeyArray, PyTree
from tqdm.auto import tqdm

from .._core import check_positive_int, leading_size
from ..train._step import (
    auto_mesh,
    chunk_bounds,
    chunk_length,
    initial_permutation,
    split_fit_key,
    train_chunk,
)


def seed_key(
    key: PRNGKeyArray, seed: int | Int[Array, ""]
) -> tuple[PRNGKeyArray, PRNGKeyArray]:
    """`(model_key, fit_key)` of seed `seed`: what `sweep` uses for that seed.

    To reproduce one configuration of a sweep alone, build the model with
    `make_model(hparams, model_key)` and call `fit(..., key=fit_key)`.
    """
    model_key, fit_key = jr.split(jr.fold_in(key, seed))
    return model_key, fit_key


class SweepResult(eqx.Module):
    """What `sweep` returns.

    **Fields:**

    - `configs`: one dict per trained configuration: its hyperparameters and `seed`.
    - `metric`: NumPy array, the final metric of each configuration (NaN where training
        met a non-finite loss).
    - `loss_history`: NumPy array of shape `(configurations, steps)`.
    - `bad_step`: NumPy array, the step of the first non-finite loss per configuration,
        or -1.
    - `models`: one stacked model per shape group (leading axis: that group's
        configurations); `model(i)` picks configuration `i`.
    - `groups`: for each configuration, `(group index, index within the group)`.
    - `metric_name`, `higher_is_better`: how `table` sorts.
    - `wall_time`, `compile_time`: seconds, compile time included in wall time.
    """

    configs: list[dict[str, Any]]
    metric: np.ndarray
    loss_history: np.ndarray
    bad_step: np.ndarray
    models: list[PyTree]
    groups: list[tuple[int, int]]
    metric_name: str
    higher_is_better: bool
    wall_time: float
    compile_time: float

    def model(self, i: int) -> PyTree:
        """The trained model of configuration `i`."""
        g, j = self.groups[i]
        return jtu.tree_map(lambda x: x[j] if eqx.is_array(x) else x, self.models[g])

    def table(self) -> list[dict[str, Any]]:
        """One row per hyperparameter setting: mean and std of the metric over seeds.

        Sorted best first; rows with a diverged seed sort last. Each row holds the
        hyperparameters, `mean`, `std`, `seeds` and `diverged` (seeds that met a
        non-finite loss, excluded from mean and std).
        """
        rows: dict[tuple, dict[str, Any]] = {}
        for cfg, value, bad in zip(self.configs, self.metric, self.bad_step):
            h = {k: v for k, v in cfg.items() if k != "seed"}
            row = rows.setdefault(tuple(sorted(h.items())), {**h, "_v": [], "_d": 0})
            if bad >= 0 or not np.isfinite(value):
                row["_d"] += 1
            else:
                row["_v"].append(float(value))
        out = []
        for row in rows.values():
            vals = np.asarray(row.pop("_v"))
            diverged = row.pop("_d")
            row["mean"] = float(vals.mean()) if len(vals) else math.nan
            row["std"] = float(vals.std()) if len(vals) else math.nan
            row["seeds"] = len(vals) + diverged
            row["diverged"] = diverged
            out.append(row)
        sign = -1.0 if self.higher_is_better else 1.0

        def order(r):
            bad = r["diverged"] > 0 or not math.isfinite(r["mean"])
            return (bad, sign * r["mean"] if not bad else 0.0)

        return sorted(out, key=order)

    def format_table(self) -> str:
        """`table()` as aligned text."""
        rows = self.table()
        if not rows:
            return "(empty sweep)"
        hkeys = [k for k in rows[0] if k not in ("mean", "std", "seeds", "diverged")]
        header = hkeys + [f"{self.metric_name} mean", "std", "seeds", "diverged"]
        body = [
            [_fmt(r[k]) for k in hkeys]
            + [_fmt(r["mean"]), _fmt(r["std"]), str(r["seeds"]), str(r["diverged"])]
            for r in rows
        ]
        widths = [max(len(x) for x in col) for col in zip(header, *body)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in body]
        return "\n".join(lines)


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def _is_static_value(v: Any) -> bool:
    return isinstance(v, int | str | bool | np.integer) and not isinstance(v, float)


def sweep(
    make_model: Callable[[dict[str, Any], PRNGKeyArray], PyTree],
    loss: Callable[..., Any],
    data: PyTree,
    *,
    optim: optax.GradientTransformation
    | Callable[[dict], optax.GradientTransformation],
    grid: dict[str, Sequence[Any]],
    seeds: int | Sequence[int],
    steps: int,
    key: PRNGKeyArray | None = None,
    batch_size: int | None = None,
    metric: Callable[[PyTree], Any] | None = None,
    metric_name: str = "metric",
    higher_is_better: bool = False,
    static: Sequence[str] = (),
    loss_takes_hparams: bool = False,
    chunk: int = 200,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool | None = None,
) -> SweepResult:
    """Train seeds x a grid of hyperparameters as one vmapped, sharded program.

    Every configuration runs exactly the steps of `fit` (the same chunk function,
    vmapped), so configuration `i` equals `fit` run alone with the keys of
    `seed_key(key, seed)`. Array-valued hyperparameters (learning rates, loss weights,
    initialisation scales) are batched and compiled once; hyperparameters that change
    shapes (widths, depths: every value a Python `int`, `str` or `bool`, or named in
    `static`) split the grid into groups, each compiled once. The configuration axis
    is sharded over `mesh` (default: every device).

    **Arguments:**

    - `make_model`: `make_model(hparams, key)` returning a model; `hparams` maps each
        grid name to a value (a traced scalar for array-valued ones).
    - `loss`: `loss(model, batch, key)`, or `loss(model, batch, key, hparams)` with
        `loss_takes_hparams=True`; a scalar or `(scalar, aux)`.
    - `data`: a pytree of arrays with a leading sample axis, shared by every
        configuration.
    - `optim`: an optax transformation, or `optim(hparams)` returning one.
    - `grid`: hyperparameter name to the list of its values; the sweep takes the
        Cartesian product.
    - `seeds`: the number of seeds (`0 .. seeds - 1`) or the seeds themselves.
    - `steps`, `batch_size`, `chunk`: as in `fit`.
    - `key`: the base key (default `jax.random.key(0)`).
    - `metric`: `metric(model)` returning a scalar, evaluated for every configuration
        after training (vmapped). Default: the mean training loss over the last 10
        steps.
    - `metric_name`, `higher_is_better`: how the results table names and sorts it.
    - `static`: names of grid entries to treat as shape-changing even if not ints.
    - `mesh`: a one-axis mesh to shard configurations over.
    - `progress`: show a progress bar per group; default: when stderr is a terminal.

    **Returns:** a `SweepResult`; `.format_table()` prints the table.

    **Raises:** `ValueError` for an empty or malformed grid, bad sizes or seeds.
    """
    wall_start = time.perf_counter()
    if not isinstance(grid, dict) or not all(
        isinstance(v, Sequence) and not isinstance(v, str) and len(v) > 0
        for v in grid.values()
    ):
        raise ValueError(
            "`grid` must be a dict from hyperparameter name to a non-empty list of "
            f"values; got {grid!r}."
        )
    if isinstance(seeds, int):
        check_positive_int(seeds, "seeds")
        seed_list = list(range(seeds))
    else:
        seed_list = [int(s) for s in seeds]
        if not seed_list:
            raise ValueError("`seeds` must not be empty.")
    check_positive_int(steps, "steps")
    check_positive_int(chunk, "chunk")
    unknown = set(static) - set(grid)
    if unknown:
        raise ValueError(f"`static` names {sorted(unknown)}, which are not in `grid`.")
    data = jtu.tree_map(jnp.asarray, data)
    n = leading_size(data, "data")
    if batch_size is not None and not (0 < batch_size <= n):
        raise ValueError(
            f"`batch_size` must be in 1..{n} (the number of samples); got {batch_size}."
        )
    key = jr.key(0) if key is None else key
    make_optim = (
        optim
        if not isinstance(optim, optax.GradientTransformation)
        else (lambda _h, _o=optim: _o)
    )
    static_names = [
        k
        for k, vs in grid.items()
        if k in static or all(_is_static_value(v) for v in vs)
    ]
    array_names = [k for k in grid if k not in static_names]
    mesh = _config_mesh() if mesh is None else mesh
    if progress is None:
        import sys

        progress = sys.stderr.isatty()

    configs: list[dict[str, Any]] = []
    metrics: list[np.ndarray] = []
    histories: list[np.ndarray] = []
    bads: list[np.ndarray] = []
    models: list[PyTree] = []
    groups: list[tuple[int, int]] = []
    compile_time = 0.0
    static_combos = list(itertools.product(*(grid[k] for k in static_names)))
    array_combos = list(itertools.product(*(grid[k] for k in array_names)))
    for g, svals in enumerate(static_combos):
        h_static = dict(zip(static_names, svals))
        group_cfgs = [
            {**h_static, **dict(zip(array_names, avals)), "seed": s}
            for avals in array_combos
            for s in seed_list
        ]
        model_g, metric_g, hist_g, bad_g, ctime = _run_group(
            make_model,
            loss,
            data,
            make_optim=make_optim,
            h_static=h_static,
            array_names=array_names,
            cfgs=group_cfgs,
            key=key,
            steps=steps,
            n=n,
            batch_size=batch_size,
            metric=metric,
            loss_takes_hparams=loss_takes_hparams,
            chunk=chunk,
            mesh=mesh,
            progress=progress,
            label=", ".join(f"{k}={v}" for k, v in h_static.items()) or "sweep",
        )
        compile_time += ctime
        groups += [(g, j) for j in range(len(group_cfgs))]
        configs += group_cfgs
        models.append(model_g)
        metrics.append(metric_g)
        histories.append(hist_g)
        bads.append(bad_g)
    return SweepResult(
        configs=configs,
        metric=np.concatenate(metrics),
        loss_history=np.concatenate(histories),
        bad_step=np.concatenate(bads),
        models=models,
        groups=groups,
        metric_name=metric_name if metric is not None else "final_loss",
        higher_is_better=higher_is_better,
        wall_time=time.perf_counter() - wall_start,
        compile_time=compile_time,
    )


def _on_cpu() -> bool:
    return jax.default_backend() == "cpu"


def _config_mesh() -> jax.sharding.Mesh | None:
    if jax.device_count() == 1:
        return None
    return auto_mesh(jax.device_count(), "config")


def _run_group(
    make_model,
    loss,
    data,
    *,
    make_optim,
    h_static,
    array_names,
    cfgs,
    key,
    steps,
    n,
    batch_size,
    metric,
    loss_takes_hparams,
    chunk,
    mesh,
    progress,
    label,
):
    size = len(cfgs)
    ndev = 1 if mesh is None else mesh.size
    padded = -(-size // ndev) * ndev
    # Pad the configuration axis to a multiple of the device count by repeating the
    # last configuration; the copies are dropped at the end.
    pad_cfgs = cfgs + [cfgs[-1]] * (padded - size)
    h_arr = {
        k: jnp.asarray([float(c[k]) for c in pad_cfgs], dtype=jnp.result_type(float))
        for k in array_names
    }
    seeds = jnp.asarray([c["seed"] for c in pad_cfgs])

    def full_h(h):
        return {**h_static, **h}

    def build(h, seed, key):
        model_key, fit_key = seed_key(key, seed)
        model = make_model(full_h(h), model_key)
        arrays, pystatic = eqx.partition(model, eqx.is_array)
        params, frozen = eqx.partition(arrays, eqx.is_inexact_array)
        opt_state = make_optim(full_h(h)).init(params)
        dk, lk = split_fit_key(fit_key)
        perm = initial_permutation(dk, 0, n, batch_size)
        return params, frozen, opt_state, perm, jr.key_data(dk), jr.key_data(lk)

    # Only the non-array part of one model is needed as the shared static structure.
    one_model = eqx.filter_eval_shape(
        make_model, full_h({k: v[0] for k, v in h_arr.items()}), key
    )
    pystatic = eqx.filter(one_model, lambda x: not isinstance(x, jax.ShapeDtypeStruct))

    if loss_takes_hparams:

        def loss_for(h):
            return lambda m, b, k: loss(m, b, k, full_h(h))
    else:

        def loss_for(h):
            return loss

    def one_chunk(
        params,
        frozen,
        opt_state,
        perm,
        dk,
        lk,
        start,
        end,
        bad,
        data,
        h,
        *,
        length,
        guarded,
    ):
        return train_chunk(
            params,
            opt_state,
            perm,
            jr.wrap_key_data(dk),
            jr.wrap_key_data(lk),
            start,
            end,
            bad,
            data,
            h,
            static=eqx.combine(frozen, pystatic),
            loss=loss_for(h),
            make_optim=lambda h: make_optim(full_h(h)),
            length=length,
            n=n,
            batch_size=batch_size,
            batch_sharding=None,
            guarded=guarded,
        )

    cfg_sharding = None
    if mesh is not None and ndev > 1:
        cfg_sharding = jax.sharding.NamedSharding(
            mesh, jax.sharding.PartitionSpec(mesh.axis_names[0])
        )
        h_arr, seeds = jax.device_put((h_arr, seeds), cfg_sharding)
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        data = jax.device_put(data, replicated)

    t0 = time.perf_counter()
    lowered = jax.jit(jax.vmap(build, in_axes=(0, 0, None))).lower(h_arr, seeds, key)
    # Building runs once, but its random initialisers take seconds to optimise on
    # CPU; unoptimised, it compiles in about a third of the time and still runs in
    # milliseconds.
    options = {"xla_backend_optimization_level": 0} if _on_cpu() else None
    build_exe = lowered.compile(compiler_options=options)
    params, frozen, opt_state, perm, dks, lks = build_exe(h_arr, seeds, key)
    bad = np.full((padded,), -1, dtype=np.int32)
    if cfg_sharding is not None:
        bad = jax.device_put(bad, cfg_sharding)
    compile_time = time.perf_counter() - t0

    length = chunk_length(steps, chunk, ())
    compiled = {}

    def run(guarded, args):
        nonlocal compile_time
        if guarded not in compiled:
            t1 = time.perf_counter()
            fn = jax.vmap(
                ft.partial(one_chunk, length=length, guarded=guarded),
                in_axes=(0, 0, 0, 0, 0, 0, None, None, 0, None, 0),
            )
            # The unguarded chunk keeps its inputs, to replay them guarded if needed.
            donate = (0, 2, 3) if guarded else ()
            compiled[guarded] = (
                jax.jit(fn, donate_argnums=donate).lower(*args).compile()
            )
            compile_time += time.perf_counter() - t1
        return compiled[guarded](*args)

    hist = np.full((padded, steps), np.nan, dtype=np.float64)
    bar = tqdm(total=steps, disable=not progress, desc=label, unit="step")
    any_bad = False
    for lo, hi in chunk_bounds(0, steps, length, ()):
        args = (params, frozen, opt_state, perm, dks, lks, np.int32(lo), np.int32(hi))
        args = args + (bad, data, h_arr)
        out = None
        if not any_bad and hi - lo == length:
            out = run(False, args)
            if np.any(np.asarray(out[4]) >= 0):
                out = None
        if out is None:
            out = run(True, args)
        params, opt_state, perm, losses, bad = out
        any_bad = any_bad or bool(np.any(np.asarray(bad) >= 0))
        hist[:, lo:hi] = np.asarray(losses)[:, : hi - lo]
        bar.update(hi - lo)
    bar.close()

    bad_np = np.asarray(bad)[:size]
    models = eqx.combine(params, frozen, pystatic)
    if metric is None:
        values = hist[:size, max(0, steps - 10) :].mean(axis=1)
    else:
        t1 = time.perf_counter()
        values = np.asarray(eqx.filter_jit(eqx.filter_vmap(metric))(models))
        compile_time += time.perf_counter() - t1
        values = values[:size].astype(np.float64)
    values = np.where(bad_np >= 0, np.nan, values)
    models = jtu.tree_map(lambda x: x[:size] if eqx.is_array(x) else x, models)
    return models, values, hist[:size], bad_np, compile_time
