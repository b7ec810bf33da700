"""Associative memories: the Hopfield layer against PyTorch, Glauber Monte Carlo against NumPy.

Two comparisons in one run on one machine, as issue 6 asks:

- forward + backward (the gradient of a sum of squares with respect to every parameter)
  of `jaxmodels.memory.Hopfield` (4 heads, dimension 128, one update step, batch 32
  sets) against the same computation in PyTorch, once built on
  `torch.nn.MultiheadAttention` (the issue's peer) and once on
  `torch.nn.functional.scaled_dot_product_attention`; the outputs and gradients are
  checked to agree before anything is timed (`bench/_memory_hopfield.py`);
- asynchronous Glauber (heat-bath) sweeps per second of a Hebbian Hopfield network
  (N = 1000, K = 50, 64 replicas, T = 0.5) against a NumPy reference vectorised over
  replicas with incremental field updates; both sides' mean overlaps are checked to
  agree statistically first (`bench/_memory_glauber.py`).

Goal: at least 2x both. Run `python bench/memory.py [--quick] [--record]`.
"""

from _common import cores, machine, parse_args, report, set_torch_threads
from _memory_glauber import REPLICAS, K, N, T, bench_glauber
from _memory_hopfield import bench_hopfield_layer


def main():
    args = parse_args(__doc__.splitlines()[0])
    info = machine()
    set_torch_threads(cores())
    rows = []
    layer = bench_hopfield_layer(args.quick)
    for size in sorted({r["size"] for r in layer}):
        ours = next(r for r in layer if r["size"] == size and r["impl"] == "jaxmodels")
        for peer in (r for r in layer if r["size"] == size and r is not ours):
            rows.append(
                {
                    "task": f"Hopfield layer fwd+bwd, {size} states x {size} stored",
                    "peer": peer["impl"],
                    "ours": f"{ours['ms_per_step']:.2f} ms",
                    "theirs": f"{peer['ms_per_step']:.2f} ms",
                    "speedup": peer["ms_per_step"] / ours["ms_per_step"],
                    "compile_s": ours["compile_s"],
                    "max_abs_diff": peer["max_abs_diff"],
                }
            )
    glauber = bench_glauber(args.quick)
    ours = next(r for r in glauber if r["impl"] == "jaxmodels")
    peer = next(r for r in glauber if r["impl"] != "jaxmodels")
    rows.append(
        {
            "task": f"Glauber sweeps, N={N} K={K} {REPLICAS} replicas T={T}",
            "peer": "NumPy (vectorised over replicas)",
            "ours": f"{ours['sweeps_per_s']:.1f} sweeps/s",
            "theirs": f"{peer['sweeps_per_s']:.1f} sweeps/s",
            "speedup": ours["sweeps_per_s"] / peer["sweeps_per_s"],
            "compile_s": ours["compile_s"],
            "max_abs_diff": abs(ours["mean_overlap"] - peer["mean_overlap"]),
        }
    )
    report(
        "memory (bench/memory.py)",
        rows,
        list(rows[0]),
        args,
        settings={
            "layer": "batch 32 sets, dimension 128, 4 heads, 1 update step, no "
            "dropout, float32",
            "glauber": "asynchronous heat-bath sweeps in a random order per sweep",
        },
        notes=[
            "speedup: peer time / our time (> 1: jaxmodels faster); medians after a "
            "warm-up, compile_s separate",
            "max_abs_diff: the layer's output difference; for Glauber, the "
            "difference of the mean overlaps",
        ],
        info=info,
    )


if __name__ == "__main__":
    main()
