"""`jaxmodels.operators.FNO` against neuraloperator's `FNO`, training steps side by side.

The configuration of the issue: a 2-D FNO with 12 x 12 modes, width 32, 4 layers, one
input and one output channel (plus the two grid channels both add), on a 64 x 64 grid,
batch 16, float32, Adam (lr 1e-3) on the relative L2 loss. Both models hold the same
weights (ours are copied into neuraloperator's), and both have 357217 parameters
(torch's count, a complex entry once; checked as real scalars). Before timing, the two
forward passes are compared on the same batch.

- Time: one training step (forward, backward, Adam update), median over `--repeats`
  steps after a warm-up; JAX's compilation (the first call) is reported separately.
  torch runs eagerly with as many threads as this process may use (XLA:CPU's default).
- Memory: ours is XLA's own account of the compiled step,
  `jit(step).lower(...).compile().memory_analysis()`: the temporary buffers (live
  activations, gradients, workspace) divided by the batch. neuraloperator's is the peak
  of torch's CPU allocator during one step (`torch.profiler` with `profile_memory`),
  above what was allocated before it, divided by the batch. Both count the
  activations kept for the backward pass; they are different accountings (XLA's
  planned buffer assignment against the eager allocator's observed peak), so the ratio
  is indicative, not exact.

- The C library's allocator matters on CPU, to both sides alike. XLA:CPU allocates a
  step's temporaries as one block (here about 270 MB), which glibc's malloc maps fresh
  with `mmap` on every call and the kernel then faults in page by page (68000 faults a
  step on our test VM, over a third of its time); torch's many smaller tensors mostly
  reuse the heap. With `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` (glibc 2.35+) malloc asks
  for transparent huge pages and the faults almost vanish. Both peers run in this one
  process, so a run measures both under the same setting; the `malloc` entry of the
  report's machine line says which. Record one run of each:

    python bench/operators.py [--quick] [--repeats N] [--json PATH] [--record]
    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python bench/operators.py --record
"""

import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from _common import cores, machine, median, parse_args, report, set_torch_threads

import jaxmodels.operators as jmo
from jaxmodels._core import tree_size


MODES, WIDTH, DEPTH, RES, BATCH, LR = (12, 12), 32, 4, 64, 16, 1e-3


def _relative_l2(pred, target):
    """Per-sample relative L2 error; works on JAX arrays and torch tensors alike."""
    return (((pred - target) ** 2).sum((1, 2, 3)) / (target**2).sum((1, 2, 3))) ** 0.5


def data(seed: int = 0):
    rng = np.random.default_rng(seed)
    grid = np.arange(RES) / RES

    # Smooth random inputs and targets (a few Fourier modes), float32.
    def field(n):
        out = np.zeros((n, 1, RES, RES))
        for kx in range(4):
            for ky in range(4):
                c = rng.standard_normal((n, 1, 1, 1)) / (1 + kx + ky)
                out += c * np.cos(2 * np.pi * (kx * grid[:, None] + ky * grid[None, :]) + rng.uniform(0, 6.3))  # fmt: skip
        return out.astype(np.float32)

    return field(BATCH), field(BATCH)


# --- jaxmodels ------------------------------------------------------------------------


def ours(model, x, y, repeats):
    optim = optax.adam(LR)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    state = optim.init(params)

    def loss(params, x, y):
        pred = jax.vmap(eqx.combine(params, static))(x)
        return jnp.mean(_relative_l2(pred, y))

    @jax.jit
    def step(params, state, x, y):
        value, grads = jax.value_and_grad(loss)(params, x, y)
        updates, state = optim.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    x, y = jnp.asarray(x), jnp.asarray(y)
    t0 = time.perf_counter()
    compiled = step.lower(params, state, x, y).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    temp = getattr(mem, "temp_size_in_bytes", float("nan"))
    jax.block_until_ready(compiled(params, state, x, y))
    times, losses = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        params, state, value = compiled(params, state, x, y)
        jax.block_until_ready(value)
        times.append(time.perf_counter() - t0)
        losses.append(float(value))
    return {
        "ms": 1e3 * median(times),
        "compile_s": compile_s,
        "mem_mb_per_sample": temp / BATCH / 2**20,
        "loss": losses[-1],
    }


# --- neuraloperator -------------------------------------------------------------------


def to_torch(model):
    """neuraloperator's FNO with the same configuration, holding `model`'s weights."""
    import torch
    from neuralop.models import FNO

    net = FNO(n_modes=MODES, in_channels=1, out_channels=1, hidden_channels=WIDTH, n_layers=DEPTH)  # fmt: skip
    sd = {}

    def linear(prefix, layer):
        sd[prefix + ".weight"] = np.asarray(layer.weight)[..., None]
        if layer.bias is not None:
            sd[prefix + ".bias"] = np.asarray(layer.bias)

    linear("lifting.fcs.0", model.lifting.first)
    linear("lifting.fcs.1", model.lifting.second)
    linear("projection.fcs.0", model.projection.first)
    linear("projection.fcs.1", model.projection.second)
    b, d = model.blocks, len(MODES)
    for i in range(DEPTH):
        sd[f"fno_blocks.convs.{i}.weight.tensor"] = np.asarray(
            b.conv.weight.weight.value[i]
        )
        sd[f"fno_blocks.convs.{i}.bias"] = np.asarray(b.conv.bias[i]).reshape((-1,) + (1,) * d)  # fmt: skip
        sd[f"fno_blocks.fno_skips.{i}.conv.weight"] = np.asarray(b.skip.weight[i])[..., None]  # fmt: skip
        for j, layer in enumerate([b.mlp.first, b.mlp.second]):
            sd[f"fno_blocks.channel_mlp.{i}.fcs.{j}.weight"] = np.asarray(layer.weight[i])[..., None]  # fmt: skip
            sd[f"fno_blocks.channel_mlp.{i}.fcs.{j}.bias"] = np.asarray(layer.bias[i])
        sd[f"fno_blocks.channel_mlp_skips.{i}.weight"] = np.asarray(b.gate[i]).reshape((1, -1) + (1,) * d)  # fmt: skip
    own = net.state_dict()
    missing = {k for k in own if "_metadata" not in k} - set(sd)
    assert not missing, f"weights not transferred: {sorted(missing)}"
    with torch.no_grad():
        for k, v in sd.items():
            own[k].copy_(torch.from_numpy(np.array(v)))
    return net


def peer(net, x, y, repeats):
    import torch
    from torch.profiler import ProfilerActivity, profile

    optim = torch.optim.Adam(net.parameters(), lr=LR)
    x, y = torch.from_numpy(x), torch.from_numpy(y)

    def step():
        optim.zero_grad(set_to_none=True)
        value = _relative_l2(net(x), y).mean()
        value.backward()
        optim.step()
        return value.detach()

    for _ in range(2):  # warm-up (Adam state allocated)
        step()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    # The allocator's running total over the step's events: its peak above the start.
    events = sorted(
        (e for e in prof.events() if e.cpu_memory_usage != 0),
        key=lambda e: e.time_range.start,
    )
    running = peak = 0
    for e in events:
        running += e.cpu_memory_usage
        peak = max(peak, running)
    times, losses = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = step()
        times.append(time.perf_counter() - t0)
        losses.append(float(value))
    return {
        "ms": 1e3 * median(times),
        "mem_mb_per_sample": peak / BATCH / 2**20,
        "loss": losses[-1],
    }


def main():
    args = parse_args(
        __doc__.splitlines()[0],
        lambda p: p.add_argument("--repeats", type=int, default=None),
    )
    repeats = args.repeats or (5 if args.quick else 30)
    info = machine()
    import neuralop
    import torch

    set_torch_threads(cores())
    model = jmo.FNO(1, 1, modes=MODES, width=WIDTH, depth=DEPTH, key=jr.key(0))
    net = to_torch(model)
    # Real scalars: ours stores a complex weight as two real arrays; torch's `numel`
    # counts a complex entry once (357217 parameters by its count).
    n_ours = tree_size(model)
    n_peer = sum(p.numel() * (2 if p.is_complex() else 1) for p in net.parameters())
    assert n_ours == n_peer, (n_ours, n_peer)
    x, y = data()
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    out = np.asarray(eqx.filter_jit(lambda m, v: jax.vmap(m)(v))(model, jnp.asarray(x)))
    fwd_diff = float(np.abs(out - ref).max() / np.abs(ref).max())
    print(f"real scalars: ours {n_ours}, neuraloperator {n_peer}")
    print(f"forward max |ours - theirs| / max |theirs| = {fwd_diff:.2e}")

    a = ours(model, x, y, repeats)
    b = peer(net, x, y, repeats)
    rows = [
        {
            "task": f"FNO-2D train step, {RES}x{RES}, batch {BATCH}",
            "peer": f"neuraloperator {neuralop.__version__} (torch eager)",
            "ours_ms": a["ms"],
            "peer_ms": b["ms"],
            "speedup": b["ms"] / a["ms"],
            "compile_s": a["compile_s"],
            "ours_mb_per_sample": a["mem_mb_per_sample"],
            "peer_mb_per_sample": b["mem_mb_per_sample"],
            "parameters": n_ours,
            "fwd_rel_diff": fwd_diff,
            "ours_loss": a["loss"],
            "peer_loss": b["loss"],
        }
    ]
    columns = list(rows[0])
    report(
        "operators (bench/operators.py)",
        rows,
        columns,
        args,
        settings={
            "modes": MODES,
            "width": WIDTH,
            "layers": DEPTH,
            "grid": f"{RES}x{RES}",
            "batch": BATCH,
            "dtype": "float32",
            "optimiser": f"Adam {LR}",
            "loss": "relative L2",
            "repeats": repeats,
            "torch_threads": torch.get_num_threads(),
        },
        notes=[
            "ms: median wall time of one training step (forward, backward, Adam), "
            "after a warm-up; compile_s: JAX's compilation, excluded",
            "mb_per_sample: ours = XLA temp buffers of the compiled step / batch; "
            "peer = torch profiler's peak CPU allocation during one step / batch "
            "(different accountings: indicative only)",
            "ours_loss, peer_loss: after the timed steps from the same weights (the "
            "same number of steps on both sides)",
        ],
        info=info,
    )


if __name__ == "__main__":
    main()
