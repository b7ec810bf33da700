"""The neural-tangents side of `bench/kernels.py`, run in neural-tangents' own
environment (its last release, 0.6.5, needs jax 0.4.x; see
`bench/kernels_reference/requirements.txt`).

    .nt-env/bin/python bench/_kernels_peer.py OUT.npz [--quick]

Times, in one process, in float32 on the CPU:

- the analytic NTK (and NNGP) of a 5-layer ReLU MLP on N x N inputs:
  `jax.jit(kernel_fn, static_argnames="get")` of `stax.serial` of four
  `Dense(512, W_std=1.5, b_std=0.05)` + `Relu()` blocks and a `Dense(1, ...)` readout;
- the empirical NTK (traced over the 10 outputs) of an MLP
  `Dense(512)-Relu-Dense(512)-Relu-Dense(10)` in NTK parameterisation, with each of
  neural-tangents' three implementations (Jacobian contraction, NTK-vector products,
  structured derivatives), so that the peer's best is the one compared.

It writes the inputs, the MLP's parameters, the kernels and the timings (medians of
repeats after a warm-up call, whose excess over one call is reported as compile time)
to `OUT.npz`, which `bench/kernels.py` reads to time jaxmodels on identical inputs and
to check that the values agree.
"""

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np


WIDTH, W_STD, B_STD = 512, 1.5, 0.05


def analytic_layers(stax):
    layers = []
    for _ in range(4):
        layers += [stax.Dense(WIDTH, W_std=W_STD, b_std=B_STD), stax.Relu()]
    layers.append(stax.Dense(1, W_std=W_STD, b_std=B_STD))
    return layers


def mlp_layers(stax):
    return [
        stax.Dense(WIDTH),
        stax.Relu(),
        stax.Dense(WIDTH),
        stax.Relu(),
        stax.Dense(10),
    ]


def inputs(quick: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    n_analytic = 200 if quick else 1000
    n_empirical = 32 if quick else 128
    return {
        "x_analytic": rng.standard_normal((n_analytic, 64)).astype(np.float32),
        "x_empirical": rng.standard_normal((n_empirical, 64)).astype(np.float32),
    }


def time_call(fn, repeats: int) -> tuple[object, float, float]:
    """`(output, median seconds, compile seconds)` of a jitted `fn()`."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return out, med, max(first - med, 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()

    import neural_tangents as nt
    from neural_tangents import stax

    repeats = 3 if args.quick else 10
    data = inputs(args.quick)
    timings = {}
    result = dict(data)

    _, _, kernel_fn = stax.serial(*analytic_layers(stax))
    x = jnp.asarray(data["x_analytic"])
    for get in ("ntk", "nngp"):
        kfn = jax.jit(kernel_fn, static_argnames="get")
        k, sec, comp = time_call(lambda: kfn(x, None, get), repeats)
        result[f"analytic_{get}"] = np.asarray(k)
        timings[f"analytic_{get}"] = {"seconds": sec, "compile_s": comp}

    init_fn, apply_fn, _ = stax.serial(*mlp_layers(stax))
    xe = jnp.asarray(data["x_empirical"])
    _, params = init_fn(jax.random.PRNGKey(1), xe.shape)
    flat, _ = jax.tree_util.tree_flatten(params)
    for i, leaf in enumerate(flat):
        result[f"param_{i}"] = np.asarray(leaf)
    for impl in nt.NtkImplementation:
        if impl == nt.NtkImplementation.AUTO:
            continue
        ntk_fn = jax.jit(
            nt.empirical_ntk_fn(
                apply_fn, trace_axes=(-1,), vmap_axes=0, implementation=impl
            )
        )
        k, sec, comp = time_call(lambda: ntk_fn(xe, None, params), repeats)
        result[f"empirical_{impl.name.lower()}"] = np.asarray(k)
        timings[f"empirical_{impl.name.lower()}"] = {"seconds": sec, "compile_s": comp}

    result["timings"] = np.asarray(json.dumps(timings))
    result["versions"] = np.asarray(
        json.dumps({"neural_tangents": nt.__version__, "jax": jax.__version__})
    )
    np.savez(args.out, **result)


if __name__ == "__main__":
    main()
