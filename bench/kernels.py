"""Infinite-width kernels: jaxmodels.kernels against neural-tangents, side by side.

neural-tangents' last release (0.6.5) needs jax 0.4.x, so it runs in its own
environment (`bench/kernels_reference/requirements.txt`; `--nt-python` points at its
interpreter) as a subprocess of this one run, on the same machine, on the same inputs
(`bench/_kernels_peer.py` writes them with its kernels and timings). Two tasks, float32:

- the analytic NTK and NNGP of a 5-layer ReLU MLP (four `Dense(512, W_std=1.5,
  b_std=0.05)` + `Relu()` blocks and a `Dense(1)` readout) on 1000 x 1000 inputs of
  dimension 64: `jax.jit(kernel_fn, static_argnames="get")` on both sides, the same
  `stax` code with the import changed;
- the empirical NTK (traced over the 10 outputs) of an MLP
  `Dense(512)-Relu-Dense(512)-Relu-Dense(10)` (NTK parameterisation, no biases) on 128
  inputs with neural-tangents' parameters: neural-tangents' three implementations
  against ours (`empirical_ntk_fn` of the ported `stax` apply function for Jacobian
  contraction and NTK-vector products; `structured_ntk` of the same network written as
  an Equinox model of `eqx.nn.Linear` layers against NT's structured derivatives).

Goal: at least parity at identical values. Times are medians after a warm-up call;
compile time is reported separately. Run
`python bench/kernels.py --nt-python .nt-env/bin/python [--quick] [--record]`.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from _common import machine, median, parse_args, report, timed


HERE = Path(__file__).parent


def _peer(nt_python: str, quick: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "peer.npz")
        cmd = [nt_python, str(HERE / "_kernels_peer.py"), out]
        env = dict(os.environ, JAX_PLATFORMS="cpu")
        env.pop("JAX_ENABLE_X64", None)
        subprocess.run(cmd + (["--quick"] if quick else []), check=True, env=env)
        with np.load(out) as data:
            return {k: data[k] for k in data.files}


def _time(fn, repeats: int) -> tuple[np.ndarray, float, float]:
    out, first = timed(fn)
    times = [timed(fn)[1] for _ in range(repeats)]
    med = median(times)
    return np.asarray(out), med, max(first - med, 0.0)


def _row(task: str, peer: str, fn, ref: np.ndarray, theirs: dict, repeats: int):
    """Time `fn` and compare its output with the peer's `ref` and timing `theirs`."""
    k, sec, comp = _time(fn, repeats)
    return {
        "task": task,
        "peer": peer,
        "ours": f"{1e3 * sec:.2f} ms",
        "theirs": f"{1e3 * theirs['seconds']:.2f} ms",
        "speedup": theirs["seconds"] / sec,
        "compile_s": comp,
        "peer_compile_s": theirs["compile_s"],
        "max_rel_diff": float(np.max(np.abs(k - ref)) / np.max(np.abs(ref))),
    }


def _ntk_mlp(params: list[np.ndarray]):
    """The peer's MLP as an Equinox model of `eqx.nn.Linear` layers (NTK
    parameterisation: `W x / sqrt(fan_in)`, no biases), with its weights."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import jax.random as jr

    class NTKLinear(eqx.Module):
        linear: eqx.nn.Linear
        scale: float

        def __call__(self, x):
            return self.scale * self.linear(x)

    class MLP(eqx.Module):
        layers: tuple

        def __call__(self, x):
            for layer in self.layers[:-1]:
                x = jax.nn.relu(layer(x))
            return self.layers[-1](x)

    layers = []
    for w in params:
        lin = eqx.nn.Linear(w.shape[0], w.shape[1], use_bias=False, key=jr.key(0))
        lin = eqx.tree_at(lambda m: m.weight, lin, jnp.asarray(w.T))
        layers.append(NTKLinear(lin, float(w.shape[0]) ** -0.5))
    return MLP(tuple(layers))


def main():
    def extra(parser):
        parser.add_argument(
            "--nt-python",
            default=os.environ.get(
                "NT_PYTHON", str(HERE.parent / ".nt-env/bin/python")
            ),
            help="the interpreter of neural-tangents' environment",
        )

    args = parse_args(__doc__.splitlines()[0], extra)
    info = machine()
    peer = _peer(args.nt_python, args.quick)
    peer_t = json.loads(str(peer["timings"]))
    peer_v = json.loads(str(peer["versions"]))
    repeats = 3 if args.quick else 10

    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import jax.random as jr

    sys.path.insert(0, str(HERE))
    from _kernels_peer import analytic_layers, mlp_layers

    from jaxmodels.kernels import empirical_ntk_fn, stax, structured_ntk

    rows = []
    _, _, kernel_fn = stax.serial(*analytic_layers(stax))
    x = jnp.asarray(peer["x_analytic"])
    n = x.shape[0]
    for get in ("ntk", "nngp"):
        kfn = jax.jit(kernel_fn, static_argnames="get")
        rows.append(
            _row(
                f"analytic {get.upper()}, 5-layer ReLU MLP, {n} x {n}",
                "neural-tangents stax",
                lambda: kfn(x, None, get),
                peer[f"analytic_{get}"],
                peer_t[f"analytic_{get}"],
                repeats,
            )
        )

    init_fn, apply_fn, _ = stax.serial(*mlp_layers(stax))
    xe = jnp.asarray(peer["x_empirical"])
    _, ours_params = init_fn(jr.key(1), xe.shape)
    leaves, treedef = jax.tree_util.tree_flatten(ours_params)
    peer_leaves = [jnp.asarray(peer[f"param_{i}"]) for i in range(len(leaves))]
    params = jax.tree_util.tree_unflatten(treedef, peer_leaves)
    m = xe.shape[0]
    cases = [
        ("jacobian_contraction", "Jacobian contraction", "jacobian"),
        ("ntk_vector_products", "NTK-vector products", "ntvp"),
    ]
    for peer_key, label, impl in cases:
        ntk_fn = jax.jit(empirical_ntk_fn(apply_fn, implementation=impl))
        rows.append(
            _row(
                f"empirical NTK, MLP 64-512-512-10, {m} x {m}, {label}",
                f"neural-tangents ({label})",
                lambda: ntk_fn(xe, None, params),
                peer[f"empirical_{peer_key}"],
                peer_t[f"empirical_{peer_key}"],
                repeats,
            )
        )
    model = _ntk_mlp([np.asarray(w) for w in peer_leaves])
    fn = eqx.filter_jit(structured_ntk)
    rows.append(
        _row(
            f"empirical NTK, MLP 64-512-512-10, {m} x {m}, structured",
            "neural-tangents (structured derivatives)",
            lambda: fn(model, xe),
            peer["empirical_structured_derivatives"],
            peer_t["empirical_structured_derivatives"],
            repeats,
        )
    )
    best = min(v["seconds"] for k_, v in peer_t.items() if k_.startswith("empirical"))
    report(
        "kernels (bench/kernels.py)",
        rows,
        list(rows[0]),
        args,
        settings={
            "dtype": "float32",
            "peer": f"neural-tangents {peer_v['neural_tangents']} on jax "
            f"{peer_v['jax']}, its own environment, same process tree",
        },
        notes=[
            "speedup: peer time / our time (> 1: jaxmodels faster); medians after a "
            "warm-up call, compile_s separate",
            "max_rel_diff: max |ours - theirs| / max |theirs| on identical inputs "
            "(and, for the empirical NTK, identical parameters)",
            f"the peer's fastest empirical NTK: {1e3 * best:.2f} ms",
        ],
        info=info,
    )


if __name__ == "__main__":
    main()
