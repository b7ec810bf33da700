"""`jaxmodels.implicit` DEQ training steps against torchdeq, side by side in one run.

The cell of the issue, `z = tanh(W z + U x)` with width 256, input size 64, batch 64,
`W` rescaled to spectral norm 0.5 and shared (the same float32 weights) by both sides,
a linear readout to 10 classes and cross-entropy on a fixed random batch, Adam 1e-3.

- Forward: Anderson acceleration, memory 6 on both sides (torchdeq's default `m`, also
  its backward solver's),
  stopping when `||f(z) - z||_2 < tol` (torchdeq's `stop_mode="abs"`; ours
  `Anderson(rtol=0, atol=tol, norm=optx.two_norm)`: the same test), at most 50
  iterations. torchdeq stops when the worst example of the batch passes; ours is
  vmapped, each example stops on its own and the batch runs as long as its slowest.
- Backward: implicit differentiation. torchdeq solves the adjoint fixed point
  `g = J^T g + dL/dz` with its Anderson solver (`b_solver="anderson"`,
  `stop_mode="abs"`, `b_tol = tol`); ours solves `(I - J)^T g = dL/dz` with
  `AndersonLinearSolver` (the same Anderson iteration on `g = J^T g + dL/dz`, memory 6)
  at `atol = tol`, `rtol = 0`: the same residual, `|J^T g + dL/dz - g|`. (Before
  2026-11-23 ours used lineax GMRES with restart 50, which always takes 50 products.)
- Iterations: forward function evaluations, the batch's worst example (torchdeq counts
  the same: its loop stops on the worst example).

Also the forward iterations of fixed-point iteration, Anderson and Broyden (ours and
torchdeq's), from the same weights, at the same tolerance.

    python bench/implicit.py [--quick] [--json PATH] [--record]
"""

import functools as ft
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import optimistix as optx
from _common import cores, machine, median, parse_args, report, set_torch_threads

import jaxmodels.implicit as im


WIDTH, DATA, BATCH, CLASSES, LR, MAX_ITER, MEMORY = 256, 64, 64, 10, 1e-3, 50, 6


def weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((WIDTH, WIDTH)).astype(np.float32)
    w *= 0.5 / np.linalg.norm(w, 2)
    return {
        "W": w,
        "U": (rng.standard_normal((WIDTH, DATA)) / DATA**0.5).astype(np.float32),
        "R": (rng.standard_normal((CLASSES, WIDTH)) / WIDTH**0.5).astype(np.float32),
        "x": rng.standard_normal((BATCH, DATA)).astype(np.float32),
        "y": rng.integers(0, CLASSES, BATCH),
    }


# --- jaxmodels ------------------------------------------------------------------------


class Cell(eqx.Module):
    W: jax.Array
    U: jax.Array

    def __call__(self, z, x):
        return jnp.tanh(self.W @ z + self.U @ x)


class Model(eqx.Module):
    deq: im.DEQ
    R: jax.Array

    def __call__(self, x):
        sol = self.deq(x)
        return self.R @ sol.value, sol.num_steps


def _loss(model, x, y):
    """Mean cross-entropy over the batch, and the worst example's forward iterations."""
    logits, iters = jax.vmap(model)(x)
    xent = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return xent, jnp.max(iters)


def jax_model(w, tol, solver="anderson"):
    solvers = {
        "anderson": im.Anderson(0.0, tol, norm=optx.two_norm, memory=MEMORY),
        "broyden": im.Broyden(0.0, tol, norm=optx.two_norm, memory=MAX_ITER),
        "fixed_point": optx.FixedPointIteration(0.0, tol, norm=optx.two_norm),
    }
    gradient = im.ImplicitGradient(
        im.AndersonLinearSolver(0.0, tol, memory=MEMORY, max_steps=MAX_ITER)
    )
    cell = Cell(jnp.asarray(w["W"]), jnp.asarray(w["U"]))
    deq = im.DEQ(
        cell,
        WIDTH,
        solver=solvers[solver],
        gradient=gradient,
        max_steps=MAX_ITER,
        throw=False,
    )
    return Model(deq, jnp.asarray(w["R"]))


def bench_jax(w, tol, steps):
    model = jax_model(w, tol)
    optim = optax.adam(LR)
    x, y = jnp.asarray(w["x"]), jnp.asarray(w["y"])

    loss = ft.partial(_loss, x=x, y=y)

    @eqx.filter_jit(donate="all-except-first")
    def step(model, opt_state):
        (value, iters), grads = eqx.filter_value_and_grad(loss, has_aux=True)(model)
        updates, opt_state = optim.update(grads, opt_state, model)
        return eqx.apply_updates(model, updates), opt_state, value, iters

    opt_state = optim.init(eqx.filter(model, eqx.is_inexact_array))
    t0 = time.perf_counter()
    model, opt_state, value, iters = step(model, opt_state)
    jax.block_until_ready(value)
    first = time.perf_counter() - t0
    times, its = [], [int(iters)]
    for _ in range(steps):
        t0 = time.perf_counter()
        model, opt_state, value, iters = step(model, opt_state)
        jax.block_until_ready(value)
        times.append(time.perf_counter() - t0)
        its.append(int(iters))
    ms = 1e3 * median(times)
    return {"ms": ms, "compile_s": first - ms / 1e3, "iters": float(np.mean(its)), "loss": float(value)}  # fmt: skip


def _jax_grad_w(w, tol, linear_solver=None):
    model = jax_model(w, tol)
    if linear_solver is not None:
        model = eqx.tree_at(
            lambda m: m.deq.gradient, model, im.ImplicitGradient(linear_solver)
        )
    x, y = jnp.asarray(w["x"]), jnp.asarray(w["y"])

    grad = eqx.filter_grad(ft.partial(_loss, x=x, y=y), has_aux=True)
    return np.asarray(eqx.filter_jit(grad)(model)[0].deq.cell.W)


def reference_gradient(w):
    """dL/dW at the initial weights with both solves far tighter than any tested."""
    tight = im.AndersonLinearSolver(rtol=1e-6, atol=0.0, max_steps=300)
    return _jax_grad_w(w, 1e-6, tight)


def _relative_error(g, reference):
    return float(np.linalg.norm(g - reference) / np.linalg.norm(reference))


def jax_forward_iterations(w, tol):
    x = jnp.asarray(w["x"])
    out = {}
    for solver in ("fixed_point", "anderson", "broyden"):
        model = jax_model(w, tol, solver)
        _, iters = eqx.filter_jit(lambda m: jax.vmap(m)(x))(model)
        out[solver] = int(jnp.max(iters))
    return out


# --- torchdeq -------------------------------------------------------------------------


def torch_parts(w, tol, solver="anderson"):
    import torch
    from torchdeq import get_deq

    W = torch.nn.Parameter(torch.from_numpy(w["W"].copy()))
    U = torch.nn.Parameter(torch.from_numpy(w["U"].copy()))
    R = torch.nn.Parameter(torch.from_numpy(w["R"].copy()))
    x = torch.from_numpy(w["x"])
    y = torch.from_numpy(w["y"]).long()
    count = [0]

    def func(z, ux):
        count[0] += 1
        return torch.tanh(z @ W.T + ux)

    names = {"anderson": "anderson", "broyden": "broyden", "fixed_point": "fixed_point_iter"}  # fmt: skip
    deq = get_deq(
        f_solver=names[solver],
        b_solver="anderson",
        f_max_iter=MAX_ITER,
        b_max_iter=MAX_ITER,
        f_tol=tol,
        b_tol=tol,
        f_stop_mode="abs",
        b_stop_mode="abs",
        ift=True,
    )
    return W, U, R, x, y, deq, func, count


def bench_torch(w, tol, steps):
    import torch
    import torch.nn.functional as F

    W, U, R, x, y, deq, func, count = torch_parts(w, tol)
    opt = torch.optim.Adam([W, U, R], lr=LR)

    def step():
        opt.zero_grad(set_to_none=True)
        ux = x @ U.T
        count[0] = 0
        z_out, _ = deq(lambda z: func(z, ux), torch.zeros(BATCH, WIDTH))
        forward_evals = count[0]
        loss = F.cross_entropy(z_out[-1] @ R.T, y)
        loss.backward()
        opt.step()
        return loss.detach(), forward_evals

    step()
    times, its = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        value, n = step()
        times.append(time.perf_counter() - t0)
        its.append(n)
    return {"ms": 1e3 * median(times), "iters": float(np.mean(its)), "loss": float(value)}  # fmt: skip


def torch_gradient(w, tol):
    """dL/dW at the initial weights, one torchdeq forward and backward."""
    import torch
    import torch.nn.functional as F

    W, U, R, x, y, deq, func, count = torch_parts(w, tol)
    ux = x @ U.T
    z_out, _ = deq(lambda z: func(z, ux), torch.zeros(BATCH, WIDTH))
    F.cross_entropy(z_out[-1] @ R.T, y).backward()
    return W.grad.numpy()


def torch_forward_iterations(w, tol):
    import torch

    out = {}
    for solver in ("fixed_point", "anderson", "broyden"):
        W, U, R, x, y, deq, func, count = torch_parts(w, tol, solver)
        deq.eval()
        with torch.no_grad():
            ux = x @ U.T
            count[0] = 0
            deq(lambda z: func(z, ux), torch.zeros(BATCH, WIDTH))
        out[solver] = count[0]
    return out


def main():
    args = parse_args(__doc__.splitlines()[0])
    info = machine()
    set_torch_threads(cores())
    steps = 10 if args.quick else 50
    w = weights()
    reference = reference_gradient(w)
    rows = []
    for tol in (1e-3, 1e-4):
        ours = bench_jax(w, tol, steps)
        peer = bench_torch(w, tol, steps)
        ours_fwd = jax_forward_iterations(w, tol)
        peer_fwd = torch_forward_iterations(w, tol)
        rows.append(
            {
                "task": f"train step, tol {tol:g}",
                "ours": "jaxmodels DEQ (Anderson + Anderson implicit)",
                "peer": "torchdeq 0.1.0 (Anderson + Anderson IFT)",
                "ours_ms": ours["ms"],
                "peer_ms": peer["ms"],
                "speedup": peer["ms"] / ours["ms"],
                "compile_s": ours["compile_s"],
                "ours_iters": ours["iters"],
                "peer_iters": peer["iters"],
                "ours_grad_err": _relative_error(_jax_grad_w(w, tol), reference),
                "peer_grad_err": _relative_error(torch_gradient(w, tol), reference),
                "ours_loss": ours["loss"],
                "peer_loss": peer["loss"],
                "fwd_iters_fp/anderson/broyden_ours": "{fixed_point}/{anderson}/{broyden}".format(
                    **ours_fwd
                ),  # fmt: skip
                "fwd_iters_fp/anderson/broyden_peer": "{fixed_point}/{anderson}/{broyden}".format(
                    **peer_fwd
                ),  # fmt: skip
            }
        )
    columns = list(rows[0])
    report(
        "implicit DEQ (bench/implicit.py)",
        rows,
        columns,
        args,
        settings={
            "cell": f"z = tanh(W z + U x), width {WIDTH}, input {DATA}, batch {BATCH}, "
            f"||W||_2 = 0.5, linear readout to {CLASSES} classes, cross-entropy, "
            f"Adam {LR}",
            "solvers": f"Anderson m={MEMORY}, at most {MAX_ITER} iterations both ways",
            "float": "float32",
        },
        notes=[
            f"ours_ms/peer_ms: median wall clock of a full training step over {steps} "
            "steps after a warm-up step; compile_s = first step minus the median",
            "ours_iters/peer_iters: mean over the steps of the forward function "
            "evaluations of the batch's worst example",
            "ours_grad_err/peer_grad_err: relative error of dL/dW at the initial "
            "weights against a solve with forward tol 1e-6 and backward rtol 1e-6 "
            "(ours, float32). Each of our vmapped examples stops when its own "
            "residual passes `tol`; torchdeq iterates the whole batch until its worst "
            "example passes, so most of its examples end far below `tol`",
            "fwd_iters_*: forward evaluations of fixed-point iteration / Anderson / "
            "Broyden from the initial weights (batch's worst example)",
        ],
        info=info,
    )


if __name__ == "__main__":
    main()
