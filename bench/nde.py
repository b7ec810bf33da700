"""`jaxmodels.nde.NeuralODE` against torchdiffeq on a batch of neural ODE solves.

Three tasks on the same MLP vector field (2 -> 64 -> 64 -> 2, softplus, tanh output)
and the same batch of initial states, with the same solver (Dormand-Prince 5(4)), the
same tolerances and the same RMS error norm on both sides:

- forward solve (no gradient);
- forward + backward through the solver (discretise-then-optimise:
  `RecursiveCheckpointAdjoint` against autograd through `torchdiffeq.odeint`);
- forward + backward by the continuous adjoint (`BacksolveAdjoint` against
  `torchdiffeq.odeint_adjoint`).

torchdiffeq solves the batch as one state, with one step size for all examples.
jaxmodels is timed twice: the same way (the batch flattened into one state), and the
idiomatic way (`jax.vmap` over examples, each with its own steps). Times are steady
state, compilation excluded and reported separately.
"""

import time

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from _common import cores, machine, parse_args, report, set_torch_threads

import jaxmodels.nde as nde


DATA, WIDTH, DEPTH = 2, 64, 2


class BatchField(eqx.Module):
    """The MLP vector field applied to a batch flattened into one state."""

    field: nde.MLPVectorField
    batch: int = eqx.field(static=True)

    def __call__(self, t, y, args):
        ys = y.reshape(self.batch, DATA)
        return jax.vmap(lambda yi: self.field(t, yi, args))(ys).reshape(-1)


def torch_field(field: nde.MLPVectorField):
    import torch

    layers = []
    for i, lin in enumerate(field.mlp.layers):
        t = torch.nn.Linear(lin.in_features, lin.out_features, dtype=torch.float32)
        with torch.no_grad():
            t.weight.copy_(torch.from_numpy(np.array(lin.weight)))
            t.bias.copy_(torch.from_numpy(np.array(lin.bias)))
        layers.append(t)
        last = i == len(field.mlp.layers) - 1
        layers.append(torch.nn.Tanh() if last else torch.nn.Softplus())
    net = torch.nn.Sequential(*layers)

    class Func(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net
            self.nfe = 0

        def forward(self, t, y):
            self.nfe += 1
            return self.net(y)

    return Func()


def best_time(fn, repeats):
    out = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        jax.block_until_ready(out) if not hasattr(out, "detach") else None
        times.append(time.perf_counter() - t0)
    return min(times), out


def main():
    args = parse_args(__doc__.splitlines()[0])
    info = machine()
    batch = 64 if args.quick else 256
    repeats = 3 if args.quick else 7
    rtol, atol = 1e-5, 1e-7
    ts = jnp.linspace(0.0, 5.0, 10)
    field = nde.MLPVectorField(DATA, WIDTH, DEPTH, key=jr.key(0))
    y0 = jr.normal(jr.key(1), (batch, DATA))

    def make(adjoint, vf):
        return nde.NeuralODE(
            vf,
            solver=dfx.Dopri5(),
            stepsize_controller=dfx.PIDController(rtol=rtol, atol=atol),
            adjoint=adjoint,
            max_steps=100_000,
        )

    def loss_flat(model, y0):
        return jnp.mean(model(ts, y0.reshape(-1)) ** 2)

    def loss_vmap(model, y0):
        return jnp.mean(jax.vmap(lambda y: model(ts, y))(y0) ** 2)

    rca, bsa = dfx.RecursiveCheckpointAdjoint(), dfx.BacksolveAdjoint()
    flat_field = BatchField(field, batch)
    ours = {
        ("forward", "flat"): (eqx.filter_jit(lambda m, y: m(ts, y.reshape(-1))), rca),
        ("forward", "vmap"): (
            eqx.filter_jit(lambda m, y: jax.vmap(lambda yi: m(ts, yi))(y)),
            rca,
        ),
        ("backprop", "flat"): (eqx.filter_jit(eqx.filter_grad(loss_flat)), rca),
        ("backprop", "vmap"): (eqx.filter_jit(eqx.filter_grad(loss_vmap)), rca),
        ("adjoint", "flat"): (eqx.filter_jit(eqx.filter_grad(loss_flat)), bsa),
        ("adjoint", "vmap"): (eqx.filter_jit(eqx.filter_grad(loss_vmap)), bsa),
    }
    our_ms, our_compile, our_out = {}, {}, {}
    for (task, layout), (fn, adjoint) in ours.items():
        model = make(adjoint, flat_field if layout == "flat" else field)
        t0 = time.perf_counter()
        fn.lower(model, y0).compile()
        our_compile[task, layout] = time.perf_counter() - t0
        t, out = best_time(lambda: fn(model, y0), repeats)
        our_ms[task, layout] = 1000 * t
        our_out[task, layout] = out
    steps = int(make(rca, flat_field).solve(ts, y0.reshape(-1)).stats["num_steps"])

    import torch
    import torchdiffeq

    y0_t = torch.from_numpy(np.array(y0))
    ts_t = torch.from_numpy(np.array(ts))
    peer_ms, peer_threads, peer_out, nfe = {}, {}, {}, {}
    for threads in sorted({1, cores()}):
        set_torch_threads(threads)
        func = torch_field(field)
        opts = dict(rtol=rtol, atol=atol, method="dopri5")

        def forward():
            with torch.no_grad():
                return torchdiffeq.odeint(func, y0_t, ts_t, **opts)

        def backprop(odeint=torchdiffeq.odeint):
            func.zero_grad(set_to_none=True)
            loss = torch.mean(odeint(func, y0_t, ts_t, **opts) ** 2)
            loss.backward()
            return [p.grad for p in func.parameters()]

        def adjoint():
            return backprop(torchdiffeq.odeint_adjoint)

        for task, fn in (
            ("forward", forward),
            ("backprop", backprop),
            ("adjoint", adjoint),
        ):
            fn()
            times = []
            for _ in range(max(1, repeats // 2)):
                func.nfe = 0
                t0 = time.perf_counter()
                out = fn()
                times.append(time.perf_counter() - t0)
            ms = 1000 * min(times)
            if task not in peer_ms or ms < peer_ms[task]:
                peer_ms[task], peer_threads[task], peer_out[task] = ms, threads, out
                nfe[task] = func.nfe

    # Both sides solve the same problem: compare solutions and gradients.
    ys_ours = np.asarray(our_out["forward", "flat"]).reshape(len(ts), batch, DATA)
    ys_peer = peer_out["forward"].numpy()
    sol_diff = float(np.max(np.abs(ys_ours - ys_peer)))
    g_ours = [
        np.asarray(x)
        for x in jax.tree_util.tree_leaves(
            eqx.filter(our_out["backprop", "flat"], eqx.is_array)
        )
    ]
    g_peer = [g.numpy() for g in peer_out["backprop"]]
    g_ours_flat = np.concatenate([g.ravel() for g in g_ours])
    g_peer_flat = np.concatenate([g.ravel() for g in g_peer])
    grad_rel = float(
        np.linalg.norm(np.sort(g_ours_flat) - np.sort(g_peer_flat))
        / np.linalg.norm(g_peer_flat)
    )

    rows = []
    for task in ("forward", "backprop", "adjoint"):
        for layout in ("flat", "vmap"):
            label = {
                "flat": "jaxmodels, batch as one state",
                "vmap": "jaxmodels, vmap (per-example steps)",
            }[layout]
            rows.append(
                {
                    "task": f"{task}, batch {batch}",
                    "ours": label,
                    "peer": f"torchdiffeq, {peer_threads[task]} thread(s)",
                    "ours_ms": our_ms[task, layout],
                    "peer_ms": peer_ms[task],
                    "speedup": peer_ms[task] / our_ms[task, layout],
                    "compile_s": our_compile[task, layout],
                    "peer_nfe": nfe[task],
                }
            )
    columns = [
        "task",
        "ours",
        "peer",
        "ours_ms",
        "peer_ms",
        "speedup",
        "compile_s",
        "peer_nfe",
    ]
    import diffrax

    notes = [
        f"solver Dopri5 / dopri5, rtol={rtol}, atol={atol}, 10 save times on [0, 5]; "
        f"steps taken by jaxmodels (batch as one state): {steps}; `peer_nfe` counts "
        "torchdiffeq's vector-field calls (Dopri5 makes 6 per step, FSAL)",
        f"max |ys ours - ys torchdiffeq| = {sol_diff:.2e}; relative difference of the "
        f"sorted gradient entries (backprop) = {grad_rel:.2e}",
        f"diffrax {diffrax.__version__}, torchdiffeq {torchdiffeq.__version__}",
        "times: steady state, best of the repeats, compilation excluded (`compile_s`)",
    ]
    report(
        "nde (bench/nde.py)",
        rows,
        columns,
        args,
        settings={"batch": batch, "width": WIDTH, "depth": DEPTH, "repeats": repeats},
        notes=notes,
        info=info,
    )


if __name__ == "__main__":
    main()
