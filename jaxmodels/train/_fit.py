import collections
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
import optax
from jaxtyping import Array, PRNGKeyArray, PyTree
from tqdm.auto import tqdm

from .._core import RESULTS, check_positive_int, leading_size
from ._checkpoint import load_checkpoint, save_checkpoint
from ._step import (
    auto_mesh,
    chunk_bounds,
    chunk_length,
    compiled_call,
    initial_permutation,
    split_fit_key,
    train_chunk,
)


class NonFiniteLossError(RuntimeError):
    """Raised by `fit` (with `throw=True`) when the loss or a gradient is not finite."""


class FitResult(eqx.Module):
    """What `fit` returns.

    **Fields:**

    - `model`: the trained model.
    - `opt_state`: the optimiser state after the last step taken.
    - `loss_history`: NumPy array of the training loss at every step taken (the loss
      at step `s` is computed before the update of step `s`).
    - `eval_steps`: the steps at which `eval_fn` ran (after that many steps).
    - `eval_history`: a dict from metric name to a NumPy array over `eval_steps`.
    - `steps`: the number of steps taken (the updates applied).
    - `result`: a `RESULTS` code: `successful`, or `nonfinite_loss` when training
      stopped at a non-finite loss (only with `throw=False`).
    - `wall_time`: seconds spent in `fit`, compilation included.
    - `compile_time`: seconds of that spent compiling.
    """

    model: PyTree
    opt_state: PyTree
    loss_history: np.ndarray
    eval_steps: np.ndarray
    eval_history: dict[str, np.ndarray]
    steps: int
    result: RESULTS
    wall_time: float
    compile_time: float

    @property
    def final_loss(self) -> float:
        """The loss of the last step taken."""
        return float(self.loss_history[-1]) if len(self.loss_history) else math.nan


def _eval_dict(out: Any) -> dict[str, Array]:
    if isinstance(out, dict):
        return out
    return {"metric": out}


def fit(
    loss: Callable[..., Any],
    model: PyTree,
    data: PyTree,
    *,
    optim: optax.GradientTransformation,
    steps: int,
    key: PRNGKeyArray,
    batch_size: int | None = None,
    chunk: int = 200,
    eval_fn: Callable[[PyTree], Any] | None = None,
    eval_every: int | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool | None = None,
    throw: bool = True,
) -> FitResult:
    """Train any Equinox model (any pytree) with an optax optimiser.

    Steps run `chunk` at a time inside one jitted `lax.scan`, so a tiny model is not
    bound by Python dispatch: the host is visited once per chunk, to update the
    progress bar, evaluate, checkpoint and check for a non-finite loss, and the next
    chunk is already running while it does. Chunks run without a per-step guard; one
    that met a non-finite loss or gradient is replayed with the guard, to stop at the
    exact step. The parameters are the inexact-array leaves of `model`; everything
    else is held fixed. Executables are cached across calls, keyed by the loss and
    optimiser objects and the shapes: create the optimiser once to reuse them.

    **Arguments:**

    - `loss`: `loss(model, batch, key)` returning a scalar or `(scalar, aux)`. `batch`
        has the structure of `data`; `key` differs at every step.
    - `model`: the model to train (any pytree, usually an `eqx.Module`).
    - `data`: a pytree of arrays sharing a leading sample axis.
    - `optim`: an optax gradient transformation.
    - `steps`: the number of optimiser steps in all (a resumed run counts the steps
        already taken).
    - `key`: drives minibatch shuffling and the loss's key.
    - `batch_size`: minibatch size; minibatches are drawn without replacement, one
        permutation per epoch, the last partial batch dropped. `None`: full batch.
    - `chunk`: the most steps per host call.
    - `eval_fn`: `eval_fn(model)` returning a scalar or a dict of scalars, run (jitted)
        every `eval_every` steps and at the end; kept in `eval_history`.
    - `eval_every`: see `eval_fn`; default: only at the end.
    - `checkpoint`: a file to write the model, optimiser state, step, keys and history
        to, atomically, every `checkpoint_every` steps and at the end.
    - `checkpoint_every`: see `checkpoint`; default: only at the end.
    - `resume`: if `True` and `checkpoint` exists, continue from it. The result is
        bit-identical to an uninterrupted run with the same arguments.
    - `mesh`: a one-axis `jax.sharding.Mesh` to shard each minibatch over (data
        parallel, parameters replicated). Default: all devices when there are several.
    - `progress`: show a tqdm progress bar (loss, steps/s); default: when stderr is a
        terminal.
    - `throw`: raise `NonFiniteLossError` (naming the step) on a non-finite loss or
        gradient; with `False`, stop there and return `result=RESULTS.nonfinite_loss`,
        with the model as it was before that step.

    **Returns:** a `FitResult`.

    **Raises:** `ValueError` for ill-formed arguments (each names the argument);
    `NonFiniteLossError` as above.
    """
    wall_start = time.perf_counter()
    check_positive_int(steps, "steps")
    check_positive_int(chunk, "chunk")
    check_positive_int(batch_size, "batch_size", allow_none=True)
    check_positive_int(eval_every, "eval_every", allow_none=True)
    check_positive_int(checkpoint_every, "checkpoint_every", allow_none=True)
    if not isinstance(optim, optax.GradientTransformation):
        raise ValueError(
            f"`optim` must be an optax.GradientTransformation (e.g. optax.adam(1e-3)); "
            f"got {type(optim).__name__}."
        )
    if resume and checkpoint is None:
        raise ValueError("`resume=True` needs `checkpoint`, the file to resume from.")
    if checkpoint_every is not None and checkpoint is None:
        raise ValueError("`checkpoint_every` needs `checkpoint`, the file to write.")
    n = leading_size(data, "data")
    if batch_size is not None and batch_size > n:
        raise ValueError(
            f"`batch_size` ({batch_size}) is larger than the number of samples in "
            f"`data` ({n})."
        )
    data = jtu.tree_map(jnp.asarray, data)
    mesh = default_mesh() if mesh is None else mesh
    batch_sharding = None
    if mesh is not None and mesh.size > 1:
        if batch_size is None or batch_size % mesh.size:
            raise ValueError(
                f"Data-parallel training over {mesh.size} devices needs `batch_size` "
                f"divisible by {mesh.size}; got {batch_size}. Pass `mesh=` a smaller "
                "mesh, or another batch size."
            )
        batch_sharding = jax.sharding.NamedSharding(
            mesh, jax.sharding.PartitionSpec(mesh.axis_names[0])
        )
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        model, data = eqx.filter_shard((model, data), replicated)

    arrays, pystatic = eqx.partition(model, eqx.is_array)
    params, frozen = eqx.partition(arrays, eqx.is_inexact_array)
    (params, opt_state, data_key, loss_key), compile_time = compiled_call(
        _prepare, {"optim": optim}, (params, key)
    )

    history = np.full(steps, np.nan, dtype=np.float64)
    eval_steps: list[int] = []
    eval_history: dict[str, list[float]] = {}
    start = 0
    bad_step = -1
    if resume and Path(checkpoint).exists():  # pyright: ignore
        like = (params, opt_state, jr.key_data(data_key), jr.key_data(loss_key))
        (params, opt_state, dk, lk), meta = load_checkpoint(checkpoint, like)  # pyright: ignore
        data_key, loss_key = jr.wrap_key_data(dk), jr.wrap_key_data(lk)
        start = int(meta["step"])
        if start > steps:
            raise ValueError(
                f"The checkpoint has taken {start} steps, more than `steps` ({steps})."
            )
        saved = np.asarray(meta["loss_history"], dtype=np.float64)
        history[: len(saved)] = saved
        eval_steps = list(meta["eval_steps"])
        eval_history = {k: list(v) for k, v in meta["eval_history"].items()}

    chunk_kwargs = {
        "pystatic": pystatic,
        "loss": loss,
        "optim": optim,
        "length": chunk_length(steps, chunk, (eval_every, checkpoint_every)),
        "n": n,
        "batch_size": batch_size,
        "batch_sharding": batch_sharding,
    }
    eval_jit = None if eval_fn is None else eqx.filter_jit(eval_fn)

    def current_model(p):
        return eqx.combine(p, frozen, pystatic)

    def evaluate(s, p):
        nonlocal compile_time
        t0 = time.perf_counter()
        out = _eval_dict(eval_jit(current_model(p)))  # pyright: ignore
        values = {k: float(v) for k, v in out.items()}
        if len(eval_steps) == 0:
            compile_time += time.perf_counter() - t0  # first call: mostly compilation
        eval_steps.append(s)
        for k, v in values.items():
            eval_history.setdefault(k, []).append(v)

    def write_checkpoint(s, p, o):
        meta = {
            "step": s,
            "loss_history": history[:s].tolist(),
            "eval_steps": eval_steps,
            "eval_history": eval_history,
        }
        tree = (p, o, jr.key_data(data_key), jr.key_data(loss_key))
        save_checkpoint(checkpoint, tree, meta)  # pyright: ignore

    if progress is None:
        progress = _stderr_isatty()
    perm = initial_permutation(data_key, start, n, batch_size)
    bar = tqdm(total=steps, initial=start, disable=not progress, unit="step")
    result = RESULTS.successful
    taken = start
    bounds = chunk_bounds(
        start, steps, chunk_kwargs["length"], (eval_every, checkpoint_every)
    )
    length = chunk_kwargs["length"]

    def needs_host(hi: int) -> bool:
        return bool(
            (eval_jit is not None and eval_every and hi % eval_every == 0)
            or (
                checkpoint is not None
                and checkpoint_every
                and hi % checkpoint_every == 0
            )
        )

    def dispatch(lo: int, hi: int, state: tuple) -> tuple:
        nonlocal compile_time
        args = (state[0], frozen, *state[1:], data_key, loss_key, np.int32(lo))
        args = args + (np.int32(hi), data)
        # Full chunks run unguarded; their inputs are kept (not donated) so that one
        # which met a non-finite value can be replayed with the guard.
        guarded = hi - lo != length
        out, seconds = compiled_call(
            _fit_chunk, chunk_kwargs | {"guarded": guarded}, args
        )
        compile_time += seconds
        return lo, hi, args, out, guarded

    # Up to two chunks are in flight: the next is dispatched before the host reads
    # the losses of the current one, so the device does not wait on Python.
    in_flight: collections.deque = collections.deque()
    state = (params, opt_state, perm)
    i = 0
    while i < len(bounds) or in_flight:
        t0 = time.perf_counter()
        while i < len(bounds) and len(in_flight) < 2:
            if in_flight and (in_flight[-1][4] or needs_host(in_flight[-1][1])):
                break
            src = in_flight[-1][3][:3] if in_flight else state
            in_flight.append(dispatch(*bounds[i], src))
            i += 1
        lo, hi, args, out, guarded = in_flight.popleft()
        if not guarded and int(out[4]) >= 0:
            in_flight.clear()
            i = bounds.index((lo, hi)) + 1
            out, seconds = compiled_call(
                _fit_chunk,
                chunk_kwargs | {"guarded": True},
                args,
                donate_argnums=(0, 2, 3),
            )
            compile_time += seconds
        params, opt_state, perm, losses, bad = out
        state = (params, opt_state, perm)
        losses = np.asarray(losses)[: hi - lo]
        bad_step = int(bad)
        if bad_step >= 0:
            history[lo : bad_step + 1] = losses[: bad_step + 1 - lo]
            taken = bad_step
            bar.close()
            if throw:
                raise NonFiniteLossError(
                    f"fit: the loss or its gradient became non-finite at step "
                    f"{bad_step} (loss = {losses[bad_step - lo]}). Lower the learning "
                    "rate, clip gradients, or check `data`; pass `throw=False` to get "
                    "the model from before that step."
                )
            result = RESULTS.nonfinite_loss
            break
        history[lo:hi] = losses
        taken = hi
        rate = (hi - lo) / max(time.perf_counter() - t0, 1e-9)
        bar.set_postfix(loss=f"{losses[-1]:.4g}", steps_s=f"{rate:.3g}", refresh=False)
        bar.update(hi - lo)
        if eval_jit is not None and (
            hi == steps or (eval_every and hi % eval_every == 0)
        ):
            evaluate(hi, params)
        if checkpoint is not None and (
            hi == steps or (checkpoint_every and hi % checkpoint_every == 0)
        ):
            write_checkpoint(hi, params, opt_state)
    bar.close()
    if eval_jit is not None and (not eval_steps or eval_steps[-1] != taken):
        evaluate(taken, params)

    return FitResult(
        model=current_model(params),
        opt_state=opt_state,
        loss_history=history[: taken + 1 if result != RESULTS.successful else steps],
        eval_steps=np.asarray(eval_steps, dtype=np.int64),
        eval_history={k: np.asarray(v) for k, v in eval_history.items()},
        steps=taken,
        result=result,
        wall_time=time.perf_counter() - wall_start,
        compile_time=compile_time,
    )


def _prepare(params, key, *, optim):
    # Training donates its buffers; copy, so the caller's model stays usable (and an
    # optimiser state that aliases the parameters is not donated twice).
    params = jtu.tree_map(jnp.copy, params)
    opt_state = jtu.tree_map(jnp.copy, optim.init(params))
    return params, opt_state, *split_fit_key(key)


def _fit_chunk(
    params,
    frozen,
    opt_state,
    perm,
    data_key,
    loss_key,
    start,
    end,
    data,
    *,
    pystatic,
    optim,
    **kwargs,
):
    return train_chunk(
        params,
        opt_state,
        perm,
        data_key,
        loss_key,
        start,
        end,
        jnp.asarray(-1),
        data,
        {},
        static=eqx.combine(frozen, pystatic),
        make_optim=lambda _: optim,
        **kwargs,
    )


def default_mesh() -> jax.sharding.Mesh | None:
    """A one-axis ("data") mesh over every device, or `None` with a single device."""
    if jax.device_count() == 1:
        return None
    return auto_mesh(jax.device_count(), "data")


def _stderr_isatty() -> bool:
    import sys

    return sys.stderr.isatty()
