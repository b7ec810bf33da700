"""`jaxmodels.kan.KAN` against pykan and jaxkan: training steps and memory side by side.

The configuration of the issue: B-spline KANs of widths [2, 5, 1] and [16, 32, 32, 1],
grid 5, order 3 (cubic), on [-1, 1], SiLU base activation, float32, Adam (lr 1e-3) on
the mean squared error of a fixed smooth regression problem (inputs uniform on
[-1, 1]). The three libraries compute the same function class: every edge is
`w_b silu(x) + w_s sum_k c_k B_k(x)` with the same knots (one knot vector per input,
shared by the edges leaving it) and `grid + order = 8` coefficients, so 10 trained
numbers per edge (checked by counting); before timing, pykan's and jaxkan's models
are loaded with our weights and their forward passes compared with ours.

Each side gets its best documented setting:

- jaxmodels: the CORE `KAN`, trained on its coefficients and scales (the knots and
  the pruning mask are not trained; a filter spec leaves them out of Adam, as pykan
  leaves them out with `requires_grad=False`), one `jax.jit` step (compiled ahead of
  time, as jaxkan's below) with the
  model and Adam's state donated.
- pykan 0.2.8: `MultKAN(..., auto_save=False)` in its documented speed mode
  (`model.speed()`: no symbolic branch, no saved activations, no checkpoints), an
  eager torch step (forward, backward, `torch.optim.Adam`); `--pykan-compile` also
  times `model.speed(compile=True)` (`torch.compile`).
- jaxkan 0.3.7: `KAN(..., layer_type="spline")`, its EfficientKAN-style layer (one
  basis evaluation per input, as ours; the "base" layer evaluates it per edge), without
  the optional output bias (`add_bias=False`: pykan and ours have none), trained with
  the functional Flax NNX step (`nnx.split` / `nnx.merge` inside one `jax.jit` with
  donated parameters and state, the low-overhead pattern of Flax's performance
  notes); the plain `nnx.jit` step over an `nnx.Optimizer` is timed too. jaxkan keeps
  its knots as plain arrays outside its `nnx.State`, so they are compile-time
  constants of its step (ours are arguments).

- Time: one training step on the full batch, median over `--repeats` calls after two
  warm-up steps; JAX's compilation is measured separately (`lower(...).compile()`).
  torch runs with as many threads as this process may use. On a loaded machine
  torch's OpenMP threads spin-wait and its times swing by 10x or more: pin the run to
  one core there (`taskset -c 1 python bench/kan.py ...`, so one thread on every
  side).
- Training loop: one more row per width times each library's own way of running many
  steps. Ours is `jaxmodels.train.fit` (200 steps per host call in one `lax.scan`),
  per step over 2000 steps after its compilation; pykan's is its speed-mode step in a
  Python loop, the time above. The single step stays the headline: it is the same
  unit of work on every side.
- Memory at batch 65536: for every library a fresh process builds the model, the data
  and the optimiser (the JAX ones also compile the step), resets its peak resident
  set size (`/proc/self/clear_refs`, Linux) and runs three training steps. `peak_mb`
  is the peak resident size during the steps (`VmHWM`) minus the resident size
  before them: the memory the steps themselves need (activations kept for the
  backward pass, gradients, the optimiser's state where torch creates it lazily).
  For the JAX libraries XLA's own account of the compiled step's temporary buffers
  (`memory_analysis().temp_size_in_bytes`) is given too.
- The C library's allocator: a JAX step's temporaries are one block, which glibc maps
  fresh (and the kernel faults in page by page) on every call once it passes glibc's
  mmap threshold (at most 32 MB). jaxkan's [16, 32, 32, 1] step crosses it, ours does
  not, and its time then depends on the allocator's history (25 or 44 ms in two runs).
  `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` (glibc 2.35+) removes most of the faults for
  every library in the process; the `malloc` entry of the report's machine line says
  which was used.
  Record a run under it beside the default one.

    python bench/kan.py [--quick] [--repeats N] [--pykan-compile] [--json PATH] [--record]
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
import optax
from _common import cores, machine, median, parse_args, report, set_torch_threads


WIDTHS = ((2, 5, 1), (16, 32, 32, 1))
GRID, ORDER, BATCH, MEM_BATCH, LR = 5, 3, 1024, 65536, 1e-3
LIBRARIES = ("jaxmodels", "pykan", "jaxkan")


def data(d_in: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Inputs uniform on [-1, 1] (the grid's range), a smooth random teacher."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, (n, d_in)).astype(np.float32)
    w1 = rng.standard_normal((d_in, 16)) / np.sqrt(d_in)
    w2 = rng.standard_normal((16, 1)) / 4.0
    return x, (np.sin(2.0 * x @ w1) @ w2).astype(np.float32)


# --- jaxmodels ------------------------------------------------------------------------


def ours_model(widths):
    import jaxmodels.kan as jmk

    return jmk.KAN(list(widths), key=jr.key(0))


def ours_spec(model):
    """The filter spec of the trained leaves: every layer's coefficients and scales."""
    spec = jtu.tree_map(lambda _: False, model)
    return eqx.tree_at(
        lambda m: [
            leaf
            for layer in m.layers
            for leaf in (layer.coef, layer.scale_base, layer.scale_spline)
        ],
        spec,
        replace=[True] * (3 * len(model.layers)),
    )


def ours_setup(model, x, y):
    """`(compiled step, args, compile_s, XLA temp bytes)`; `step(p, s)`.

    The same low-overhead pattern as jaxkan's functional step: the model is split
    once into its trained leaves, its other arrays (knots, mask) and its static
    skeleton; the step is a `jax.jit` of arrays (the knots are arguments, not
    constants), compiled ahead of time. `eqx.filter_jit` would re-partition the model
    on every call, about 0.5 ms of Python per step, which is most of a [2, 5, 1] step.
    """
    params, static = eqx.partition(model, ours_spec(model))
    arrays, skeleton = eqx.partition(static, eqx.is_array)

    def loss(params, arrays, x, y):
        pred = jax.vmap(eqx.combine(params, arrays, skeleton))(x)
        return jnp.mean((pred - y) ** 2)

    return adam_step(loss, params, arrays, x, y)


def adam_step(loss, params, fixed, x, y):
    """The step both JAX libraries are timed with: `loss(params, fixed, x, y)` under
    one `jax.jit` with the parameters and Adam's state donated, compiled ahead of
    time. Returns `(run, (params, state), compile_s, XLA temp bytes)`, where
    `run(params, state)` returns `(params, state, loss)`."""
    optim = optax.adam(LR)
    state = optim.init(params)

    def step(params, state, fixed, x, y):
        value, grads = jax.value_and_grad(loss)(params, fixed, x, y)
        updates, state = optim.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    x, y = jnp.asarray(x), jnp.asarray(y)
    jitted = jax.jit(step, donate_argnums=(0, 1))
    t0 = time.perf_counter()
    compiled = jitted.lower(params, state, fixed, x, y).compile()
    compile_s = time.perf_counter() - t0
    temp = compiled.memory_analysis().temp_size_in_bytes

    def run(params, state):
        return compiled(params, state, fixed, x, y)

    return run, (params, state), compile_s, temp


def ours_count(model) -> int:
    return sum(
        layer.coef.size + layer.scale_base.size + layer.scale_spline.size
        for layer in model.layers
    )


def ours_fit(widths, x, y, steps=2000):
    """Our documented training loop: `(seconds per step, final loss)` of
    `jaxmodels.train.fit` (full batch, Adam), which runs 200 steps per host call in one
    `lax.scan`. It trains every inexact leaf (the knots and the mask too, with zero
    gradients: more work than the single step above). Timed on a second call, whose
    chunk is already compiled; `compile_time` (0 there) is subtracted anyway."""
    from jaxmodels.train import fit

    xs, ys = jnp.asarray(x), jnp.asarray(y)
    optim = optax.adam(LR)

    def loss(model, batch, key):
        del key
        xb, yb = batch
        return jnp.mean((jax.vmap(model)(xb) - yb) ** 2)

    kwargs = dict(optim=optim, key=jr.key(0), progress=False)
    fit(loss, ours_model(widths), (xs, ys), steps=200, **kwargs)
    t0 = time.perf_counter()
    result = fit(loss, ours_model(widths), (xs, ys), steps=steps, **kwargs)
    jax.block_until_ready(result.model)
    wall = time.perf_counter() - t0 - result.compile_time
    return wall / steps, float(result.loss_history[-1])


# --- pykan ----------------------------------------------------------------------------


def pykan():
    """pykan's package `kan` (this file's name shadows it while `bench/` is on the path)."""
    if "kan" not in sys.modules:
        here = Path(__file__).resolve().parent
        saved = sys.path[:]
        sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
        try:
            import kan  # noqa: F401
        finally:
            sys.path[:] = saved
    return sys.modules["kan"]


def pykan_model(widths, compiled=False):
    net = pykan().MultKAN(
        width=list(widths), grid=GRID, k=ORDER, seed=0, auto_save=False
    )
    return net, net.speed(compile=compiled)


def pykan_load(net, model):
    """Copy our weights and knots into pykan's `MultKAN` (it stores edges (in, out))."""
    import torch

    with torch.no_grad():
        for layer, ours in zip(net.act_fun, model.layers):
            layer.coef.copy_(torch.from_numpy(np.array(ours.coef).transpose(1, 0, 2)))
            layer.scale_base.copy_(torch.from_numpy(np.array(ours.scale_base).T))
            layer.scale_sp.copy_(torch.from_numpy(np.array(ours.scale_spline).T))
            layer.grid.copy_(torch.from_numpy(np.array(ours.basis.grid)))


def pykan_count(net) -> int:
    """The trained numbers of the spline KAN (the unused symbolic branch left out)."""
    return sum(p.numel() for p in net.act_fun.parameters() if p.requires_grad)


def pykan_step(net, fwd, x, y):
    import torch

    optim = torch.optim.Adam(net.parameters(), lr=LR)
    x, y = torch.from_numpy(x), torch.from_numpy(y)

    def step():
        optim.zero_grad(set_to_none=True)
        value = torch.mean((fwd(x) - y) ** 2)
        value.backward()
        optim.step()
        return value.detach()

    return step


# --- jaxkan ---------------------------------------------------------------------------


def jaxkan_model(widths):
    from jaxkan.models.KAN import KAN

    params = {"k": ORDER, "G": GRID, "add_bias": False}
    return KAN(list(widths), layer_type="spline", required_parameters=params, seed=0)


def jaxkan_load(net, model):
    """Copy our weights and knots into jaxkan's spline layers (edges (out, in))."""
    for layer, ours in zip(net.layers, model.layers):
        layer.c_basis.value = jnp.array(ours.coef, copy=True)
        layer.c_res.value = jnp.array(ours.scale_base, copy=True)
        layer.c_spl.value = jnp.array(ours.scale_spline, copy=True)
        layer.grid.item = jnp.array(ours.basis.grid, copy=True)


def jaxkan_count(net) -> int:
    from flax import nnx

    return sum(a.size for a in jax.tree.leaves(nnx.state(net, nnx.Param)))


def jaxkan_setup(net, x, y):
    """The functional NNX step: `(compiled step, args, compile_s, XLA temp bytes)`."""
    from flax import nnx

    graphdef, params, rest = nnx.split(net, nnx.Param, ...)

    def loss(params, rest, x, y):
        return jnp.mean((nnx.merge(graphdef, params, rest)(x) - y) ** 2)

    return adam_step(loss, params, rest, x, y)


def jaxkan_nnx_step(net, x, y):
    """The plain `nnx.jit` step over an `nnx.Optimizer` (jaxkan's tutorials' style)."""
    from flax import nnx

    optimizer = nnx.Optimizer(net, optax.adam(LR), wrt=nnx.Param)
    x, y = jnp.asarray(x), jnp.asarray(y)

    @nnx.jit
    def step(net, optimizer, x, y):
        def loss(net):
            return jnp.mean((net(x) - y) ** 2)

        value, grads = nnx.value_and_grad(loss)(net)
        optimizer.update(net, grads)
        return value

    return lambda: step(net, optimizer, x, y)


# --- timing ---------------------------------------------------------------------------


def time_jax(run, carry, repeats):
    """Median seconds of `carry = run(*carry)[:2]`, after two warm-up calls."""
    params, state = carry
    for _ in range(2):
        params, state, value = run(params, state)
    jax.block_until_ready(value)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        params, state, value = run(params, state)
        jax.block_until_ready(value)
        times.append(time.perf_counter() - t0)
    return median(times), float(value)


def time_calls(step, repeats, block=lambda v: v, warmup=2):
    """Median seconds of `step()` after `warmup` warm-up calls, and its last value."""
    for _ in range(warmup):
        block(step())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = block(step())
        times.append(time.perf_counter() - t0)
    return median(times), float(value)


# --- memory (one child process per library and mode) ----------------------------------


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(lib: str, widths: tuple[int, ...]) -> None:
    """Build `lib`'s model, data and optimiser at `MEM_BATCH` (compiling the step for
    the JAX libraries), then run three steps; print a JSON line with the peak resident
    set size during the steps above the resident size before them, and XLA's
    temporary bytes."""
    x, y = data(widths[0], MEM_BATCH)
    temp = None
    if lib == "pykan":
        set_torch_threads(cores())
        net, fwd = pykan_model(widths)
        step = pykan_step(net, fwd, x, y)
    else:
        if lib == "jaxmodels":
            run, carry, _, temp = ours_setup(ours_model(widths), x, y)
        else:
            run, carry, _, temp = jaxkan_setup(jaxkan_model(widths), x, y)

        def step():
            nonlocal carry
            *carry, value = run(*carry)
            jax.block_until_ready(value)

    # Writing 5 to clear_refs resets the peak (VmHWM) to the current resident size.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kib("VmRSS")
    for _ in range(3):
        step()
    peak = _status_kib("VmHWM") - before
    print(json.dumps({"peak_kib": peak, "temp": temp}))


def memory(lib: str, widths: tuple[int, ...]) -> tuple[float, float | None]:
    """`(peak MB of three training steps, XLA temp MB or None)`, in a fresh process."""
    cmd = [sys.executable, __file__, "--child", lib, ",".join(map(str, widths))]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    temp = out["temp"]
    return out["peak_kib"] / 1024, None if temp is None else temp / 2**20


# --- the comparison -------------------------------------------------------------------


def compare(widths, repeats, pykan_compile, with_memory):
    """The rows for one width: jaxkan (two step styles) and pykan (eager, compiled)."""
    import torch

    x, y = data(widths[0], BATCH)
    model = ours_model(widths)
    n_ours = ours_count(model)
    n_edges = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    net, fwd = pykan_model(widths)
    pykan_load(net, model)
    jnet = jaxkan_model(widths)
    jaxkan_load(jnet, model)
    n_pykan, n_jaxkan = pykan_count(net), jaxkan_count(jnet)
    assert n_ours == n_pykan == n_jaxkan == n_edges * (GRID + ORDER + 2), (
        n_ours,
        n_pykan,
        n_jaxkan,
    )

    ref = np.asarray(eqx.filter_jit(lambda m, v: jax.vmap(m)(v))(model, jnp.asarray(x)))
    with torch.no_grad():
        out_pykan = fwd(torch.from_numpy(x)).numpy()
    out_jaxkan = np.asarray(jnet(jnp.asarray(x)))
    scale = np.abs(ref).max()
    diff = {
        "pykan": float(np.abs(out_pykan - ref).max() / scale),
        "jaxkan": float(np.abs(out_jaxkan - ref).max() / scale),
    }
    print(f"widths {list(widths)}: parameters ours {n_ours}, pykan {n_pykan}, jaxkan {n_jaxkan}")  # fmt: skip
    print(f"  forward max |theirs - ours| / max |ours|: {diff}")

    # Ours, on a copy of the model (the step donates its buffers).
    copy = jtu.tree_map(lambda a: jnp.array(a, copy=True) if eqx.is_array(a) else a, model)  # fmt: skip
    run, carry, compile_s, temp = ours_setup(copy, x, y)
    ours_s, ours_loss = time_jax(run, carry, repeats)
    print(f"  jaxmodels: {1e3 * ours_s:.3f} ms/step, compile {compile_s:.2f} s")

    sides = []
    run, carry, jk_compile, jk_temp = jaxkan_setup(jnet, x, y)
    s, loss = time_jax(run, carry, repeats)
    sides.append(("jaxkan", f"jaxkan {jaxkan_version()} spline layer, jax.jit functional step", s, jk_compile, loss))  # fmt: skip
    jnet = jaxkan_model(widths)
    jaxkan_load(jnet, model)
    step = jaxkan_nnx_step(jnet, x, y)
    t0 = time.perf_counter()
    jax.block_until_ready(step())
    first = time.perf_counter() - t0
    s, loss = time_calls(step, repeats, jax.block_until_ready, warmup=1)
    sides.append(("jaxkan", f"jaxkan {jaxkan_version()} spline layer, nnx.jit step", s, first - s, loss))  # fmt: skip

    set_torch_threads(cores())
    s, loss = time_calls(pykan_step(net, fwd, x, y), repeats)
    sides.append(("pykan", f"pykan {kan_version()} speed mode (torch eager)", s, None, loss))  # fmt: skip
    if pykan_compile:
        net, fwd = pykan_model(widths, compiled=True)
        pykan_load(net, model)
        step = pykan_step(net, fwd, x, y)
        t0 = time.perf_counter()
        step()
        first = time.perf_counter() - t0
        s, loss = time_calls(step, repeats, warmup=1)
        sides.append(("pykan", f"pykan {kan_version()} speed mode, torch.compile", s, first - s, loss))  # fmt: skip

    fit_s, _ = ours_fit(widths, x, y)
    print(f"  jaxmodels fit: {1e3 * fit_s:.3f} ms/step")

    mem = {}
    if with_memory:
        for lib in LIBRARIES:
            mem[lib] = memory(lib, widths)
            print(f"  memory {lib}: {mem[lib]}")
    rows, seen = [], set()
    for lib, peer, s, peer_compile, loss in sides:
        # Memory is per library: shown on the first row of each.
        m = mem if lib not in seen else {}
        seen.add(lib)
        rows.append(
            {
                "task": f"KAN {list(widths)} train step, batch {BATCH}",
                "peer": peer,
                "ours_ms": 1e3 * ours_s,
                "peer_ms": 1e3 * s,
                "speedup": s / ours_s,
                "compile_s": compile_s,
                "peer_compile_s": peer_compile,
                "parameters": n_ours,
                "fwd_rel_diff": diff[lib],
                "ours_loss": ours_loss,
                "peer_loss": loss,
                "ours_peak_mb": m["jaxmodels"][0] if m else None,
                "peer_peak_mb": m[lib][0] if m else None,
                "ours_xla_temp_mb": m["jaxmodels"][1] if m else None,
                "peer_xla_temp_mb": m[lib][1] if m else None,
            }
        )
    # Each library's own training loop: ours is `fit`; pykan's fastest is its
    # speed-mode step in a Python loop (the row above).
    pykan_s = next(s for lib, _, s, _, _ in sides if lib == "pykan")
    rows.append(
        {
            "task": f"KAN {list(widths)} training loop, per step, batch {BATCH}",
            "peer": f"pykan {kan_version()} speed-mode step loop; ours: train.fit",
            "ours_ms": 1e3 * fit_s,
            "peer_ms": 1e3 * pykan_s,
            "speedup": pykan_s / fit_s,
            "parameters": n_ours,
        }
    )
    return rows


def jaxkan_version() -> str:
    from importlib.metadata import version

    return version("jaxkan")


def kan_version() -> str:
    from importlib.metadata import version

    return version("pykan")


def main_bench(args):
    repeats = args.repeats or (5 if args.quick else 50)
    info = machine()
    rows = []
    for widths in WIDTHS:
        rows += compare(widths, repeats, args.pykan_compile, not args.no_memory)
    import torch

    report(
        "kan (bench/kan.py)",
        rows,
        list(rows[0]),
        args,
        settings={
            "widths": " and ".join(str(list(w)) for w in WIDTHS),
            "grid": GRID,
            "order": ORDER,
            "batch": BATCH,
            "memory_batch": MEM_BATCH,
            "dtype": "float32",
            "optimiser": f"Adam {LR}",
            "loss": "MSE",
            "repeats": repeats,
            "torch_threads": torch.get_num_threads(),
        },
        notes=[
            "ms: median wall time of one training step (forward, backward, Adam) on a "
            "full batch, after two warm-up steps; compile_s: JAX's compilation "
            "(`lower().compile()`), excluded; for the nnx.jit and torch.compile rows "
            "peer_compile_s is the first call minus the median step",
            "speedup = peer_ms / ours_ms (> 1: jaxmodels faster)",
            "training-loop rows: ours is `jaxmodels.train.fit` (2000 full-batch Adam "
            "steps, 200 per host call in one lax.scan, every inexact leaf trained), "
            "per step after compilation; pykan's is its speed-mode step above (its "
            "loop is Python); the headline comparison is the single step",
            "every side starts from the same weights and knots (ours, copied); "
            "fwd_rel_diff: max |theirs - ours| / max |ours| of the forward pass before "
            "training; parameters: trained numbers, equal on all sides (10 per edge)",
            "peak_mb (batch 65536): in a fresh process per library, after building "
            "(and, for JAX, compiling), the peak RSS during three training steps "
            "minus the RSS before them (VmHWM reset through /proc/self/clear_refs); "
            "xla_temp_mb: XLA's temporary buffers of the compiled step "
            "(memory_analysis); blank where not applicable",
            "the machine is shared with other jobs (see the load average): times are "
            "noisy",
        ],
        info=info,
    )


def main():
    def extra(p: argparse.ArgumentParser) -> None:
        p.add_argument("--repeats", type=int, default=None)
        p.add_argument(
            "--pykan-compile",
            action="store_true",
            help="also time pykan under torch.compile (model.speed(compile=True))",
        )
        p.add_argument("--no-memory", action="store_true", help="skip memory runs")
        p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)

    args = parse_args(__doc__.splitlines()[0], extra)
    if args.child:
        child(args.child[0], tuple(int(w) for w in args.child[1].split(",")))
        return
    main_bench(args)


if __name__ == "__main__":
    main()
