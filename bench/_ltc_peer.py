"""`jaxmodels.nde.ltc_scan` against the `ncps` PyTorch LTC (Hasani/Lechner), issue 4.

Both sides run the same network, the fully-connected LTC of Hasani et al. with the
conductance synapses of Lechner et al., advanced by the paper's fused semi-implicit
step (`ode_unfolds = 6` sub-steps per observation, elapsed time 1 per observation),
over the same float32 batch of sequences, in one process on the same machine:

- ours: `jax.jit` of `jax.vmap(lambda us: ltc_scan(cell, ts, us, solve="fused"))`,
  returning the states at every observation, `(batch, time, hidden)`;
- peer: `ncps.torch.LTC(input, FullyConnected(hidden), input_mapping=None,
  output_mapping=None, ode_unfolds=6, implicit_param_constraints=True)`, which also
  returns the states at every observation (all neurons are motor neurons, the affine
  input and output maps are switched off: `ltc_scan` has none, so the work per step
  is the same).

Parameter mapping (ours -> ncps; ncps indexes synapses `[source, target]`, ours
`[target, source]`, hence the transposes): `sensory_w.T -> sensory_w`,
`sensory_mu.T -> sensory_mu`, `sensory_gamma.T -> sensory_sigma`,
`sensory_erev.T -> sensory_erev`, `w.T -> w`, `mu.T -> mu`, `gamma.T -> sigma`,
`erev.T -> erev`, `gleak -> gleak`, `vleak -> vleak`, `cm -> cm`. Both apply softplus
to `w`, `sensory_w`, `gleak` and `cm` (ncps's `implicit_param_constraints=True`, the
default of `ncps.torch.LTC`); the fully-connected sparsity masks are all ones. The
fused step is the same algebra: ours `(x + h b) / (1 - h a)` with `a = -G / c`,
`b = D / c` equals ncps's `(c/h x + D) / (c/h + G + eps)` (eps = 1e-8).

Time alignment: `ltc_scan` returns `x0` at `ts[0]` (a zero gap: the cell is still
evaluated, 6 sub-steps of length 0, so the work is the same `time` cell calls as
ncps's `time` steps of length 1); ncps returns the state *after* each input. So the
agreement check compares ours on `(ts, us)` from row 1 on with ncps on `us[:, 1:]`.

Tasks: `forward` (states over the sequence; torch under `torch.no_grad()`) and
`forward+backward` (the gradient of `mean(states**2)` with respect to every parameter
of the cell; torch `loss.backward()` after `zero_grad(set_to_none=True)`). Times are
medians of repeats after a warm-up, the two sides interleaved; torch threads left at
torch's default. `compile_s` = first jitted call minus the median call.

    python bench/_ltc_peer.py [--quick] [--json PATH] [--record]
"""

import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np


if __package__:
    from ._common import machine, median, parse_args, report, timed
else:  # run as a script: bench/ is on sys.path
    from _common import machine, median, parse_args, report, timed

from jaxmodels.nde import LTCCell, ltc_scan


UNFOLDS = 6
BATCH = 64
INPUTS = 8
HIDDENS = (32, 128)

# ours -> ncps parameter names; True where ncps stores the transpose
_MAP = {
    "sensory_w": ("sensory_w", True),
    "sensory_mu": ("sensory_mu", True),
    "sensory_gamma": ("sensory_sigma", True),
    "sensory_erev": ("sensory_erev", True),
    "w": ("w", True),
    "mu": ("mu", True),
    "gamma": ("sigma", True),
    "erev": ("erev", True),
    "gleak": ("gleak", False),
    "vleak": ("vleak", False),
    "cm": ("cm", False),
}


def ncps_version() -> str:
    from importlib.metadata import version

    return version("ncps")


def make_pair(input_size: int, hidden: int, seed: int = 0):
    """`(cell, peer)`: our `LTCCell` and an `ncps.torch.LTC` holding its parameters.

    Our cell's `vleak` starts at 0 and ncps's is drawn in (-0.2, 0.2); a nonzero
    `vleak` is drawn here (and `cm` perturbed) so the check exercises every term.
    """
    import ncps.torch
    import ncps.wirings
    import torch

    kc, kv, km = jr.split(jr.key(seed), 3)
    cell = LTCCell(input_size, hidden, key=kc)
    cell = eqx.tree_at(
        lambda c: (c.vleak, c.cm),
        cell,
        (
            jr.uniform(kv, (hidden,), minval=-0.2, maxval=0.2),
            jr.uniform(km, (hidden,), minval=0.4, maxval=0.6),
        ),
    )
    torch.manual_seed(seed)
    peer = ncps.torch.LTC(
        input_size,
        ncps.wirings.FullyConnected(hidden),
        return_sequences=True,
        batch_first=True,
        input_mapping=None,
        output_mapping=None,
        ode_unfolds=UNFOLDS,
        implicit_param_constraints=True,
    )
    params = dict(peer.rnn_cell.named_parameters())
    assert not any(k.startswith(("input_", "output_")) for k in params), params.keys()
    assert bool((params["sparsity_mask"] == 1).all())
    assert bool((params["sensory_sparsity_mask"] == 1).all())
    with torch.no_grad():
        for ours, (theirs, transpose) in _MAP.items():
            value = np.array(getattr(cell, ours), np.float32)
            value = value.T if transpose else value
            assert params[theirs].shape == value.shape, (ours, theirs)
            params[theirs].copy_(torch.from_numpy(np.ascontiguousarray(value)))
    return cell, peer


def our_forward(ts):
    @eqx.filter_jit
    def forward(cell, us):
        return jax.vmap(lambda u: ltc_scan(cell, ts, u, unfolds=UNFOLDS))(us)

    return forward


def our_grad(ts):
    forward = our_forward(ts)

    @eqx.filter_jit
    @eqx.filter_value_and_grad
    def grad(cell, us):
        return jnp.mean(forward(cell, us) ** 2)

    return grad


def peer_forward(peer, x):
    import torch

    with torch.no_grad():
        out, _ = peer(x)
    return out


def peer_grad(peer, x):
    peer.zero_grad(set_to_none=True)
    out, _ = peer(x)
    loss = (out**2).mean()
    loss.backward()
    return loss.detach(), [p.grad for p in peer.parameters() if p.requires_grad]


def data(batch: int, length: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    us = rng.uniform(-1.0, 1.0, (batch, length, INPUTS)).astype(np.float32)
    ts = np.arange(length, dtype=np.float32)
    return ts, us


def agreement(hidden: int = 16, batch: int = 4, length: int = 12) -> dict:
    """Outputs and gradients of the two sides from the same parameters and inputs.

    **Returns:** the largest absolute differences (states, and each gradient relative
    to its largest entry). Raises `AssertionError` if states differ by more than 1e-5.
    """
    import torch

    cell, peer = make_pair(INPUTS, hidden, seed=3)
    ts, us = data(batch, length, seed=4)
    ours = np.asarray(our_forward(jnp.asarray(ts))(cell, jnp.asarray(us)))[:, 1:]
    x = torch.from_numpy(us[:, 1:].copy())
    theirs = peer_forward(peer, x).numpy()
    state_err = float(np.max(np.abs(ours - theirs)))
    # gradients of the same loss over the aligned rows
    ts_j, us_j = jnp.asarray(ts), jnp.asarray(us)

    @eqx.filter_grad
    def g(c):
        out = jax.vmap(lambda u: ltc_scan(c, ts_j, u, unfolds=UNFOLDS))(us_j)
        return jnp.mean(out[:, 1:] ** 2)

    ours_g = g(cell)
    peer.zero_grad(set_to_none=True)
    out, _ = peer(x)
    (out**2).mean().backward()
    params = dict(peer.rnn_cell.named_parameters())
    grad_err = {}
    for name, (theirs_name, transpose) in _MAP.items():
        a = np.asarray(getattr(ours_g, name))
        a = a.T if transpose else a
        b = params[theirs_name].grad.numpy()
        scale = max(float(np.max(np.abs(b))), 1e-30)
        grad_err[name] = float(np.max(np.abs(a - b))) / scale
    assert state_err < 1e-5, f"states differ by {state_err:.3g}"
    return {
        "hidden": hidden,
        "batch": batch,
        "length": length - 1,
        "state_max_abs_err": state_err,
        "state_max_abs": float(np.max(np.abs(theirs))),
        "grad_max_rel_err": max(grad_err.values()),
        "grad_rel_err": grad_err,
    }


# Reverse mode keeps about this many `(batch, hidden, hidden)` float32 tensors per
# observation on either side (measured: ~2.3 GB peak RSS per side at hidden 128,
# length 16, batch 64); forward+backward is skipped where that would not fit.
_TENSORS_PER_STEP = 28


def _mem_available() -> float:
    """Bytes of memory available now (`/proc/meminfo`), or infinity if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float("inf")


def _grad_bytes(hidden: int, length: int) -> float:
    return _TENSORS_PER_STEP * 4.0 * BATCH * hidden * hidden * length


def peer_device() -> str:
    """Where the peer runs: on the GPU when JAX runs on one (and torch sees it), so
    that both sides use the same hardware; else on the CPU."""
    import torch

    if jax.default_backend() == "gpu" and torch.cuda.is_available():
        return "cuda"
    return "cpu"


def _bench_one(task: str, hidden: int, length: int, warmup: int, repeats: int):
    import torch

    device = peer_device()

    def sync(out):
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    row = {
        "task": task,
        "batch": BATCH,
        "length": length,
        "hidden": hidden,
        "inputs": INPUTS,
        "unfolds": UNFOLDS,
        "peer_device": device,
    }
    if device == "cuda":
        torch.cuda.empty_cache()
    if task != "forward":
        need, have = _grad_bytes(hidden, length), _mem_available()
        if device == "cuda":
            # Both sides hold their tapes on the one GPU: half of it each.
            have = torch.cuda.mem_get_info()[1] / 2
        if need > 0.8 * have:
            return {
                **row,
                "ours_s": None,
                "peer_s": None,
                "ratio": None,
                "compile_s": None,
                "repeats": 0,
                "skipped": f"needs ~{need / 2**30:.0f} GiB per side, "
                f"{have / 2**30:.0f} GiB available",
            }

    cell, peer = make_pair(INPUTS, hidden)
    peer = peer.to(device)
    ts, us = data(BATCH, length)
    ts_j, us_j = jnp.asarray(ts), jnp.asarray(us)
    x = torch.from_numpy(us).to(device)
    if task == "forward":
        fn = our_forward(ts_j)

        def ours():
            return fn(cell, us_j)

        def theirs():
            return sync(peer_forward(peer, x))
    else:
        fn = our_grad(ts_j)

        def ours():
            return fn(cell, us_j)

        def theirs():
            return sync(peer_grad(peer, x))

    _, first = timed(ours)
    for _ in range(warmup):
        timed(ours)
        timed(theirs)
    ours_t, peer_t = [], []
    for _ in range(repeats):  # interleaved rounds
        ours_t.append(timed(ours)[1])
        peer_t.append(timed(theirs)[1])
    ours_s, peer_s = median(ours_t), median(peer_t)
    return {
        **row,
        "ours_s": ours_s,
        "peer_s": peer_s,
        "ratio": peer_s / ours_s,
        "compile_s": max(first - ours_s, 0.0),
        "repeats": repeats,
    }


def bench_ltc(*, quick: bool) -> list[dict]:
    """Time forward and forward+backward of `ltc_scan` against `ncps.torch.LTC`.

    Batch 64, input 8, hidden 32 and 128, length 64 (`quick`) or 256, float32,
    6 fused unfolds per observation. Checks first that both sides compute the same
    states from the same parameters (within 1e-5).

    **Returns:** one dict per (task, hidden): `task`, the sizes, `ours_s` and `peer_s`
    (median seconds per call), `ratio = peer_s / ours_s` (above 1: jaxmodels is
    faster), `compile_s` (jaxmodels' first call minus its median), `repeats` (and
    `skipped`, with the times None, where forward+backward would not fit in memory:
    reverse mode through 6 unfolds keeps ~28 `(batch, hidden, hidden)` tensors per
    observation on either side, ~30 GiB at hidden 128, length 256); then a last dict with `task = "agreement"` and the differences found.
    """
    check = agreement()
    length = 64 if quick else 256
    warmup, repeats = (1, 3) if quick else (1, 5)
    rows = []
    for task in ("forward", "forward+backward"):
        for hidden in HIDDENS:
            t0 = time.perf_counter()
            rows.append(_bench_one(task, hidden, length, warmup, repeats))
            print(
                f"{task} hidden {hidden}: {rows[-1]}, {time.perf_counter() - t0:.1f}s",
                flush=True,
            )
    rows.append({"task": "agreement", **check})
    return rows


COLUMNS = [
    "task",
    "batch",
    "length",
    "hidden",
    "ours_s",
    "peer_s",
    "ratio",
    "compile_s",
    "repeats",
    "skipped",
]


def main(args=None):
    import torch

    if args is None:
        args = parse_args("jaxmodels.nde.ltc_scan against ncps.torch.LTC")
    info = machine()
    rows = bench_ltc(quick=args.quick)
    check = rows[-1]
    report(
        "ltc vs ncps (bench/_ltc_peer.py)",
        rows[:-1],
        COLUMNS,
        args,
        settings={
            "batch": BATCH,
            "inputs": INPUTS,
            "hidden": HIDDENS,
            "unfolds": UNFOLDS,
            "ncps": ncps_version(),
            "torch_threads": torch.get_num_threads(),
            "float": "float32",
        },
        notes=[
            "seconds: median per call (forward: states over the whole sequence; "
            "forward+backward: gradient of mean(states**2) w.r.t. all cell "
            "parameters); `ratio` = peer_s / ours_s (above 1: jaxmodels faster); "
            "`compile_s` = first jitted call minus the median",
            "peer: ncps.torch.LTC, FullyConnected wiring, input/output mappings off, "
            "implicit_param_constraints=True, eager PyTorch, default threads, on "
            f"{peer_device()} (the GPU when JAX runs on one)",
            f"agreement (hidden {check['hidden']}, batch {check['batch']}, length "
            f"{check['length']}): states max abs err {check['state_max_abs_err']:.3g}"
            f", gradients max rel err {check['grad_max_rel_err']:.3g}",
        ],
        info=info,
    )


if __name__ == "__main__":
    main()
