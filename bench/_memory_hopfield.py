"""`jaxmodels.memory.Hopfield` forward + backward against PyTorch, side by side.

The layer of the issue: batch 32 sets, 64 state patterns and 64 stored patterns per
set (and 256/256, the second size), dimension 128, 4 heads, one Hopfield update of the
queries before the readout, no dropout, no LayerNorm, no biases; the loss is the sum of
squares of the output, differentiated with respect to every parameter. Both sides hold
the same float32 weights and their outputs are checked to agree first.

- jaxmodels: `jax.vmap` of the layer over the batch, `eqx.filter_jit` of
  `filter_value_and_grad`.
- "torch MHA": the same computation built on `torch.nn.MultiheadAttention`, which
  always projects its inputs: the update step is an MHA with identity in/out
  projections (its scale `1/sqrt(head dim)` is the layer's default beta) on the
  projected queries and keys, the readout an MHA with identity query/key projections,
  `W_V` and the output projection. The identity projections are extra matmuls.
- "torch SDPA": the same with `F.scaled_dot_product_attention` on per-head tensors,
  without those extra matmuls (the fairer peer).

Times are the median of repeats after warm-up, milliseconds per forward + backward;
`compile_s` is jaxmodels' first call minus one step (torch is eager).
"""

import time

import numpy as np


BATCH, DIM, HEADS = 32, 128, 4


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    scale = DIM**-0.5
    return {
        name: (scale * rng.standard_normal((DIM, DIM))).astype(np.float32)
        for name in ("q", "k", "v", "o")
    }


def _data(size: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    r = rng.standard_normal((BATCH, size, DIM)).astype(np.float32)
    y = rng.standard_normal((BATCH, size, DIM)).astype(np.float32)
    return r, y


def _jax_side(w, r, y, repeats):
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import jax.random as jr

    from jaxmodels.memory import Hopfield

    layer = Hopfield(
        DIM,
        num_heads=HEADS,
        update_steps=1,
        normalize_state=False,
        normalize_stored=False,
        normalize_projection=False,
        key=jr.key(0),
    )
    layer = eqx.tree_at(
        lambda h: (
            h.state_proj.weight,
            h.stored_proj.weight,
            h.value_proj.weight,
            h.output_proj.weight,
        ),
        layer,
        tuple(jnp.asarray(w[n]) for n in ("q", "k", "v", "o")),
    )
    r, y = jnp.asarray(r), jnp.asarray(y)

    @eqx.filter_jit
    def step(layer, r, y):
        def loss(layer):
            return jnp.sum(jax.vmap(layer)(r, y) ** 2)

        return eqx.filter_value_and_grad(loss)(layer)

    out = np.asarray(jax.vmap(layer)(r, y))
    t0 = time.perf_counter()
    jax.block_until_ready(step(layer, r, y))
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        value, grads = step(layer, r, y)
        jax.block_until_ready((value, grads))
        times.append(time.perf_counter() - t0)
    ms = 1e3 * float(np.median(times))
    grad_q = np.asarray(grads.state_proj.weight)
    return out, float(value), grad_q, ms, first - ms / 1e3


class _TorchMHA:
    """The layer on `torch.nn.MultiheadAttention` (identity projections where the
    layer has none)."""

    def __init__(self, w):
        import torch

        eye = torch.eye(DIM)
        self.wq = torch.nn.Linear(DIM, DIM, bias=False)
        self.wk = torch.nn.Linear(DIM, DIM, bias=False)
        self.update = torch.nn.MultiheadAttention(
            DIM, HEADS, bias=False, batch_first=True
        )
        self.read = torch.nn.MultiheadAttention(
            DIM, HEADS, bias=False, batch_first=True
        )
        with torch.no_grad():
            self.wq.weight.copy_(torch.from_numpy(w["q"]))
            self.wk.weight.copy_(torch.from_numpy(w["k"]))
            self.update.in_proj_weight.copy_(torch.cat([eye, eye, eye]))
            self.update.out_proj.weight.copy_(eye)
            vw = torch.from_numpy(w["v"])
            self.read.in_proj_weight.copy_(torch.cat([eye, eye, vw]))
            self.read.out_proj.weight.copy_(torch.from_numpy(w["o"]))
        # The identity projections are fixed; W_V and W_O are trained through `read`.
        self.update.requires_grad_(False)
        self.params = [
            self.wq.weight,
            self.wk.weight,
            self.read.in_proj_weight,
            self.read.out_proj.weight,
        ]

    def __call__(self, r, y):
        q, k = self.wq(r), self.wk(y)
        q = self.update(q, k, k, need_weights=False)[0]
        return self.read(q, k, y, need_weights=False)[0]

    def grad_q(self):
        return self.wq.weight.grad


class _TorchSDPA:
    """The layer on `F.scaled_dot_product_attention`, per head."""

    def __init__(self, w):
        import torch

        self.ws = {n: torch.nn.Parameter(torch.from_numpy(w[n].copy())) for n in "qkvo"}
        self.params = list(self.ws.values())

    def __call__(self, r, y):
        import torch.nn.functional as F

        b, n = r.shape[0], y.shape[1]

        def heads(x, name):
            return (
                (x @ self.ws[name].T).view(b, -1, HEADS, DIM // HEADS).transpose(1, 2)
            )

        q, k, v = heads(r, "q"), heads(y, "k"), heads(y, "v")
        q = F.scaled_dot_product_attention(q, k, k)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(b, -1, DIM)
        del n
        return out @ self.ws["o"].T

    def grad_q(self):
        return self.ws["q"].grad


def _torch_side(model, r, y, repeats):
    import torch

    r, y = torch.from_numpy(r), torch.from_numpy(y)
    with torch.no_grad():
        out = model(r, y).numpy()

    def step():
        for p in model.params:
            p.grad = None
        loss = (model(r, y) ** 2).sum()
        loss.backward()
        return loss.detach()

    for _ in range(3):
        step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = step()
        times.append(time.perf_counter() - t0)
    return out, float(value), model.grad_q().numpy(), 1e3 * float(np.median(times))


def bench_hopfield_layer(quick: bool) -> list[dict]:
    """Forward + backward of the `Hopfield` layer against PyTorch.

    **Returns:** one row per size and implementation: `impl`, `size` (state and
    stored patterns per set), `ms_per_step`, `compile_s` (jaxmodels only),
    `max_abs_diff` (output against jaxmodels'), `loss`.
    """
    from _common import cores, set_torch_threads

    set_torch_threads(cores())
    repeats = 20 if quick else 50
    rows = []
    for size in (64, 256):
        w, (r, y) = _weights(), _data(size)
        out, loss, grad_q, ms, compile_s = _jax_side(w, r, y, repeats)
        rows.append(
            {"impl": "jaxmodels", "size": size, "ms_per_step": ms,
             "compile_s": compile_s, "max_abs_diff": 0.0, "loss": loss}
        )  # fmt: skip
        for name, model in (("torch MHA", _TorchMHA(w)), ("torch SDPA", _TorchSDPA(w))):
            t_out, t_loss, t_grad, t_ms = _torch_side(model, r, y, repeats)
            diff = float(np.abs(t_out - out).max())
            scale = float(np.abs(out).max())
            if diff > 1e-4 * max(scale, 1.0) or not np.allclose(
                t_grad, grad_q, rtol=1e-3, atol=1e-3 * float(np.abs(grad_q).max())
            ):
                raise AssertionError(
                    f"{name} disagrees with jaxmodels at size {size}: output "
                    f"max |diff| {diff:.2e} (scale {scale:.2e})"
                )
            rows.append(
                {"impl": name, "size": size, "ms_per_step": t_ms, "compile_s": None,
                 "max_abs_diff": diff, "loss": t_loss}
            )  # fmt: skip
    return rows


if __name__ == "__main__":
    import sys

    from _common import format_table

    rows = bench_hopfield_layer("--quick" in sys.argv)
    print(format_table(rows, list(rows[0])))
