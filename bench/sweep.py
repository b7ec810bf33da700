"""`jaxmodels.sweep` of 64 seeds against a loop of 64 `fit` calls and a PyTorch loop.

One regression problem (4096 samples, 8 inputs, a 2-hidden-layer tanh MLP of width
32, MSE, Adam 1e-3, batch 64, 1000 steps) trained from 64 seeds by

- one `jaxmodels.sweep(..., seeds=64)`;
- a Python loop of 64 `jaxmodels.fit` calls, seed `s` built from
  `jaxmodels.sweep.seed_key(key, s)` (so it is the sweep's configuration `s`), the
  optax optimiser created once (so `fit` compiles once and reuses the executable);
- a PyTorch loop of 64 trainings from the same initial weights on the same
  minibatches (pre-built index tensors), eager, a new module and optimiser per seed,
  with `torch.set_num_threads` = the cores, and with 1 thread (on a shared machine
  two threads can collapse when another process takes a core); and `torch.compile`
  of the step (1 thread), one module and optimiser reused, each seed's weights
  loaded and Adam's state zeroed in place, so it compiles once. The best is the
  peer.

Times are the wall clock the user waits for, compilation included. Each side runs in
a fresh Python process (imports, JAX's backend start-up and the data are done before
the clock starts), so no side profits from another's warm caches; with several
repeats the best is kept.

    python bench/sweep.py [--quick] [--json PATH] [--record]
"""

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import (
    TorchTrainer,
    block,
    cores,
    fit_indices,
    machine,
    mlp_weights,
    mse_loss,
    parse_args,
    regression_data,
    report,
    set_torch_threads,
    torch_full_mse,
)


N, D_IN, WIDTH, DEPTH, BATCH, LR, KEY = 4096, 8, 32, 2, 64, 1e-3, 0
SIDES = (
    "sweep",
    "fit loop",
    "jax vmap scan",
    "torch",
    "torch 1 thread",
    "torch.compile 1 thread",
)
TORCH_SIDES = SIDES[3:]
SIDE_TIMEOUT_S = 240


def make_model(hparams, key):
    import equinox as eqx
    import jax.numpy as jnp

    return eqx.nn.MLP(D_IN, 1, WIDTH, DEPTH, activation=jnp.tanh, key=key)


def jax_setup():
    import jax.numpy as jnp
    import jax.random as jr
    import optax

    x_np, y_np = regression_data(N, D_IN)
    x, y = jnp.asarray(x_np), jnp.asarray(y_np)
    (x + 1).block_until_ready()  # start the backend before the clock
    return (x, y), optax.adam(LR), jr.key(KEY)


def run_sweep(seeds: int, steps: int) -> dict:
    import equinox as eqx

    import jaxmodels

    data, optim, key = jax_setup()
    t0 = time.perf_counter()
    res = jaxmodels.sweep(
        make_model,
        mse_loss,
        data,
        optim=optim,
        grid={},
        seeds=seeds,
        steps=steps,
        key=key,
        batch_size=BATCH,
        progress=False,
    )
    block(res.models)
    wall = time.perf_counter() - t0
    mse = eqx.filter_vmap(lambda m: mse_loss(m, data, None))(res.models[0])
    return {
        "wall_s": wall,
        "compile_s": res.compile_time,
        "final_loss": res.loss_history[:, -1].tolist(),
        "history0": res.loss_history[0].tolist(),
        "mse": np.asarray(mse).tolist(),
    }


def run_fit_loop(seeds: int, steps: int) -> dict:
    import jax

    import jaxmodels
    from jaxmodels.sweep import seed_key

    data, optim, key = jax_setup()
    results = []
    t0 = time.perf_counter()
    for s in range(seeds):
        model_key, fit_key = seed_key(key, s)
        model = make_model({}, model_key)
        res = jaxmodels.fit(
            mse_loss,
            model,
            data,
            optim=optim,
            steps=steps,
            key=fit_key,
            batch_size=BATCH,
            progress=False,
        )
        results.append(res)
    jax.block_until_ready(jax.tree_util.tree_leaves(results[-1].model))
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "compile_s": sum(r.compile_time for r in results),
        "final_loss": [float(r.loss_history[-1]) for r in results],
        "history0": results[0].loss_history.tolist(),
        "mse": [float(mse_loss(r.model, data, None)) for r in results],
    }


def run_vmap_scan(seeds: int, steps: int) -> dict:
    """Diagnostic: the same trainings as one hand-written `jit(vmap(...))` program.

    Per seed: the keys of `seed_key`, the model, `fit`'s minibatches and a `lax.scan`
    of Adam steps (without `fit`'s chunking and non-finite guard). What a JAX user
    would write by hand; the floor `sweep` can approach on this machine.
    """
    import equinox as eqx
    import jax
    import jax.lax as lax
    import jax.numpy as jnp
    import optax

    from jaxmodels.sweep import seed_key

    (x, y), optim, key = jax_setup()
    static = eqx.partition(make_model({}, key), eqx.is_inexact_array)[1]

    def one(seed):
        model_key, fit_key = seed_key(key, seed)
        params = eqx.filter(make_model({}, model_key), eqx.is_inexact_array)
        idx = fit_indices(fit_key, N, BATCH, steps)

        def value(p, ix):
            return mse_loss(eqx.combine(p, static), (x[ix], y[ix]), None)

        def step(carry, ix):
            p, o = carry
            loss, grads = jax.value_and_grad(value)(p, ix)
            updates, o = optim.update(grads, o, p)
            return (optax.apply_updates(p, updates), o), loss

        (params, _), losses = lax.scan(step, (params, optim.init(params)), idx)
        return params, losses

    seed_arr = jnp.arange(seeds)
    t0 = time.perf_counter()
    compiled = jax.jit(jax.vmap(one)).lower(seed_arr).compile()
    compile_s = time.perf_counter() - t0
    params, losses = block(compiled(seed_arr))
    wall = time.perf_counter() - t0
    mse = eqx.filter_vmap(lambda p: mse_loss(eqx.combine(p, static), (x, y), None))(
        params
    )
    losses = np.asarray(losses, dtype=np.float64)
    return {
        "wall_s": wall,
        "compile_s": compile_s,
        "final_loss": losses[:, -1].tolist(),
        "history0": losses[0].tolist(),
        "mse": np.asarray(mse).tolist(),
    }


def run_torch(seeds: int, steps: int, threads: int, compiled: bool) -> dict:
    import jax.random as jr
    import torch

    from jaxmodels.sweep import seed_key

    set_torch_threads(threads)
    x_np, y_np = regression_data(N, D_IN)
    X, Y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    # Untimed: each seed's initial weights and minibatches, as the JAX sides draw them.
    key = jr.key(KEY)
    weights, indices = [], []
    for s in range(seeds):
        model_key, fit_key = seed_key(key, s)
        weights.append(mlp_weights(make_model({}, model_key)))
        idx = np.asarray(fit_indices(fit_key, N, BATCH, steps)).astype(np.int64)
        indices.append(list(torch.from_numpy(idx)))
    final, history0, mse = [], None, []
    eval_s = 0.0
    t0 = time.perf_counter()
    trainer = TorchTrainer(weights[0], LR, compiled=True) if compiled else None
    for s in range(seeds):
        if trainer is not None:  # one compiled step, reused
            net, losses = trainer.run(X, Y, indices[s], weights[s])
        else:  # eager: a new module and optimiser per seed, as usual
            net, losses = TorchTrainer(weights[s], LR, compiled=False).run(
                X, Y, indices[s]
            )
        t1 = time.perf_counter()  # the evaluation below is not timed
        final.append(float(losses[-1]))
        mse.append(torch_full_mse(net, X, Y))
        if s == 0:
            history0 = losses.numpy().astype(np.float64).tolist()
        eval_s += time.perf_counter() - t1
    wall = time.perf_counter() - t0 - eval_s
    return {
        "wall_s": wall,
        "compile_s": None,
        "final_loss": final,
        "history0": history0,
        "mse": mse,
    }


def run_side(side: str, seeds: int, steps: int) -> dict:
    if side == "sweep":
        return run_sweep(seeds, steps)
    if side == "fit loop":
        return run_fit_loop(seeds, steps)
    if side == "jax vmap scan":
        return run_vmap_scan(seeds, steps)
    if side == "torch":
        return run_torch(seeds, steps, threads=cores(), compiled=False)
    if side == "torch 1 thread":
        return run_torch(seeds, steps, threads=1, compiled=False)
    if side == "torch.compile 1 thread":
        return run_torch(seeds, steps, threads=1, compiled=True)
    raise ValueError(side)


def in_subprocess(side: str, seeds: int, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        cmd = [sys.executable, __file__, "--side", side, "--side-out", str(out)]
        cmd += ["--seeds", str(seeds), "--steps", str(steps)]
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=SIDE_TIMEOUT_S
            )
        except subprocess.TimeoutExpired:
            print(f"{side}: over {SIDE_TIMEOUT_S}s, stopped")
            return {"timed_out": True, "wall_s": float(SIDE_TIMEOUT_S)}
        if proc.returncode != 0 or not out.exists():
            tail = "\n".join(proc.stderr.splitlines()[-15:])
            print(f"{side}: failed (exit {proc.returncode})\n{tail}")
            return {}
        return json.loads(out.read_text())


def extra_args(parser):
    parser.add_argument("--side", choices=SIDES, help="(internal) run one side")
    parser.add_argument("--side-out", help="(internal) where --side writes")
    parser.add_argument("--seeds", type=int, help="(internal) seeds of --side")
    parser.add_argument("--steps", type=int, help="(internal) steps of --side")


def main():
    args = parse_args(__doc__.splitlines()[0], extra_args)
    if args.side:
        out = run_side(args.side, args.seeds, args.steps)
        Path(args.side_out).write_text(json.dumps(out))
        return

    info = machine()
    seeds = 8 if args.quick else 64
    steps = 200 if args.quick else 1000
    repeats = 1 if args.quick else 2
    torch_repeats = 1  # a torch loop takes minutes; one run each keeps this short
    print(
        f"sweep benchmark: {seeds} seeds x MLP {D_IN}-{WIDTH}x{DEPTH}-1, n={N}, "
        f"batch={BATCH}, Adam {LR}, {steps} steps, {repeats} repeat(s), "
        f"{cores()} cores, load {info['load_avg_1min']}"
    )
    runs: dict[str, list[dict]] = {side: [] for side in SIDES}
    timeouts = dict.fromkeys(SIDES, 0)
    for r in range(repeats):
        for side in SIDES:
            if side in TORCH_SIDES and r >= torch_repeats:
                continue
            out = in_subprocess(side, seeds, steps)
            if out.get("timed_out"):
                timeouts[side] += 1
            elif out:
                runs[side].append(out)
                extra = (
                    f" (compiling {out['compile_s']:.2f}s)" if out["compile_s"] else ""
                )
                print(f"repeat {r}: {side:22s} {out['wall_s']:7.2f}s{extra}")
    best = {side: min(v, key=lambda o: o["wall_s"]) for side, v in runs.items() if v}
    if "sweep" not in best:
        raise SystemExit("the sweep failed; nothing to compare")

    ours = best["sweep"]
    print()
    for side, out in best.items():
        fl = np.asarray(out["final_loss"])
        print(
            f"{side:22s} mean over seeds: final-step loss {fl.mean():.6f}, "
            f"full-data MSE {np.mean(out['mse']):.6f}"
        )
    checks = []
    if "fit loop" in best:
        fit = best["fit loop"]
        d0 = abs(ours["final_loss"][0] - fit["final_loss"][0])
        dmax = float(np.max(np.abs(np.subtract(ours["final_loss"], fit["final_loss"]))))
        dhist = float(np.max(np.abs(np.subtract(ours["history0"], fit["history0"]))))
        ok = "OK" if d0 <= 1e-5 else "MISMATCH"
        print(
            f"seed 0 final loss: sweep {ours['final_loss'][0]:.8f}, fit "
            f"{fit['final_loss'][0]:.8f}, |diff| {d0:.2e} ({ok}); max over seeds "
            f"{dmax:.2e}; max over seed 0's history {dhist:.2e}"
        )
        checks.append(
            f"sweep seed 0 final loss {ours['final_loss'][0]:.8f} vs fit loop "
            f"{fit['final_loss'][0]:.8f}: |diff| {d0:.1e} ({ok}, tolerance 1e-5); "
            f"max |diff| over all seeds' final losses {dmax:.1e}"
        )

    for side, out in best.items():
        if side != "sweep":
            d = np.max(np.abs(np.subtract(ours["final_loss"], out["final_loss"])))
            print(f"max |final loss - sweep's| over seeds, {side}: {d:.2e}")

    task = f"{seeds} seeds x MLP {D_IN}-{WIDTH}x{DEPTH}-1, {steps} steps, batch {BATCH}"
    torch_sides = [s for s in TORCH_SIDES if s in best]
    best_torch = min(torch_sides, key=lambda s: best[s]["wall_s"], default=None)
    rows = []
    for side in SIDES[1:]:
        if side in best:
            peer = best[side]
        elif timeouts[side]:  # stopped every time: the timeout is a lower bound
            peer = {"wall_s": float(SIDE_TIMEOUT_S), "compile_s": None, "mse": [np.nan]}
        else:
            continue
        peer_name = {
            "fit loop": f"loop of {seeds} jaxmodels.fit",
            "jax vmap scan": "hand-written jit(vmap(lax.scan)) (diagnostic)",
            "torch": f"torch eager loop, {cores()} threads",
            "torch 1 thread": "torch eager loop, 1 thread",
            "torch.compile 1 thread": "torch.compile loop, 1 thread",
        }[side]
        if side == best_torch:
            peer_name += " (best torch)"
        if side not in best:
            peer_name += f" (stopped at {SIDE_TIMEOUT_S}s: a lower bound)"
        rows.append(
            {
                "task": task,
                "peer": peer_name,
                "ours_ms": ours["wall_s"] * 1e3,
                "peer_ms": peer["wall_s"] * 1e3,
                "speedup": peer["wall_s"] / ours["wall_s"],
                "compile_s": ours["compile_s"],
                "peer_compile_s": peer["compile_s"],
                "ours_loss": float(np.mean(ours["mse"])),
                "peer_loss": float(np.mean(peer["mse"])),
                "ours_run_s": ours["wall_s"] - ours["compile_s"],
                "seeds": seeds,
                "steps": steps,
                "repeats": len(runs[side]),
                "timeouts": timeouts[side],
            }
        )
    goals = []
    for row in rows:
        if "fit" in row["peer"] or "best torch" in row["peer"]:
            met = "met" if row["speedup"] >= 10 else "MISSED"
            goals.append(f"{row['peer']}: {row['speedup']:.1f}x ({met})")
    fit_row = next((r for r in rows if "fit" in r["peer"]), None)
    notes = [
        "times: wall clock in ms including compilation, each side in a fresh process, "
        f"best of {repeats} runs for the JAX sides, {torch_repeats} for torch; "
        f"a side still running after {SIDE_TIMEOUT_S}s is stopped; "
        "`compile_s` is the sweep's compile time, "
        "`peer_compile_s` the sum of the fit calls' compile times, or the "
        "hand-written program's",
        f"the sweep without its compilation: {ours['wall_s'] - ours['compile_s']:.2f}s"
        + (
            f"; the fit loop less the compile time its fit calls report: "
            f"{fit_row['peer_ms'] / 1e3 - fit_row['peer_compile_s']:.2f}s"
            if fit_row
            else ""
        ),
        "losses: mean over seeds of the trained models' full-data MSE; every side "
        "starts each seed from the same weights and draws the same minibatches",
        *checks,
        "goal sweep >= 10x faster than both loops: " + "; ".join(goals),
    ]
    columns = [
        "task",
        "peer",
        "ours_ms",
        "peer_ms",
        "speedup",
        "compile_s",
        "peer_compile_s",
        "ours_loss",
        "peer_loss",
    ]
    settings = {
        "n": N,
        "d_in": D_IN,
        "width": WIDTH,
        "depth": DEPTH,
        "batch": BATCH,
        "adam_lr": LR,
        "steps": steps,
        "seeds": seeds,
        "repeats": repeats,
        "torch_repeats": torch_repeats,
    }
    report(
        "sweep (bench/sweep.py)",
        rows,
        columns,
        args,
        settings=settings,
        notes=notes,
        info=info,
    )


if __name__ == "__main__":
    main()
