"""The training chunk shared by `fit` and `sweep`: one pure function of one configuration.

`fit` jits it; `sweep` vmaps it over configurations and then jits it. Keeping one
definition is what makes a sweep's configuration equal to the same `fit` run.
"""

import collections
import functools as ft
import time
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import optax
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree

from .._core import tree_allfinite, tree_where


LossFn = Callable[..., Any]


def _descent_direction(g: Array) -> Array:
    return jnp.conj(g) if jnp.iscomplexobj(g) else g


def loss_value(out: Any) -> Array:
    """The scalar loss of `loss(model, batch, key)`'s output: a scalar or `(scalar, aux)`.

    Decided at trace time, so it costs nothing at run time.

    **Raises:** `ValueError` if the output is neither.
    """
    if isinstance(out, tuple) and len(out) == 2:
        out = out[0]
    if not (eqx.is_array_like(out) and jnp.shape(out) == ()):
        raise ValueError(
            "`loss(model, batch, key)` must return a scalar or a pair (scalar, aux); "
            f"got {jax.tree_util.tree_map(lambda x: getattr(x, 'shape', x), out)}."
        )
    return out


def batch_plan(n: int, batch_size: int | None) -> int:
    """Steps per epoch: minibatches are drawn without replacement, last partial dropped."""
    if batch_size is None:
        return 1
    return n // batch_size


def train_chunk(
    params: PyTree,
    opt_state: PyTree,
    perm: Int[Array, " n"],
    data_key: PRNGKeyArray,
    loss_key: PRNGKeyArray,
    start: Int[Array, ""],
    end: Int[Array, ""],
    bad_step: Int[Array, ""],
    data: PyTree,
    hparams: PyTree,
    *,
    static: PyTree,
    loss: LossFn,
    make_optim: Callable[[PyTree], optax.GradientTransformation],
    length: int,
    n: int,
    batch_size: int | None,
    batch_sharding: jax.sharding.Sharding | None,
    guarded: bool = True,
) -> tuple[PyTree, PyTree, Int[Array, " n"], Float[Array, " length"], Int[Array, ""]]:
    """Run optimiser steps `start .. end - 1` (one configuration).

    Minibatch `s` is slice `s mod E` of the permutation `epoch_permutation(data_key,
    s // E, n)`, with `E` steps per epoch, and the loss key at step `s` is
    `fold_in(loss_key, s)`: every step is a function of the absolute step number, so a
    run cut into chunks anywhere (and resumed from a checkpoint) takes exactly the
    same steps as an uncut one. The current epoch's permutation `perm` is carried from
    chunk to chunk and drawn once per epoch, at its first step (drawing one costs as
    much as several steps of a small model).

    With `guarded=True` the scan has a fixed `length >= end - start`; steps past `end`
    leave the state untouched, and so does every step from the first one that meets a
    non-finite loss or gradient (recorded in `bad_step`). One compilation then serves
    chunks of every size. With `guarded=False` the scan runs exactly `length` plain
    steps (`end` is ignored) and `bad_step` is -1 if the losses and the final
    parameters are finite, else `length` (meaning: replay this chunk guarded to find
    the step). The select of the guard costs about 40% of the step time of a small
    model on CPU, so `fit` runs unguarded and replays the rare chunk that went wrong.

    **Returns:** `(params, opt_state, perm, losses, bad_step)`: `losses` has `length`
    entries, of which the first `end - start` are meaningful; `bad_step` is -1 while
    every loss has been finite.
    """
    optim = make_optim(hparams)
    steps_per_epoch = batch_plan(n, batch_size)

    def get_batch(s, perm, active):
        if batch_size is None:
            return data, perm
        pos = s % steps_per_epoch
        perm = lax.cond(
            (pos == 0) & active,
            lambda: epoch_permutation(data_key, s // steps_per_epoch, n),
            lambda: perm,
        )
        idx = lax.dynamic_slice_in_dim(perm, pos * batch_size, batch_size)
        batch = jtu.tree_map(lambda x: jnp.take(x, idx, axis=0), data)
        if batch_sharding is not None:
            batch = constrain(batch, batch_sharding)
        return batch, perm

    def value(p, batch, key):
        return loss_value(loss(eqx.combine(p, static), batch, key))

    def step(params, opt_state, perm, s, active):
        batch, perm = get_batch(s, perm, active)
        step_loss, grads = jax.value_and_grad(value)(
            params, batch, jr.fold_in(loss_key, s)
        )
        # For a complex parameter, `jax.grad` gives the conjugate of the descent
        # direction; optax expects the direction itself.
        grads = jtu.tree_map(_descent_direction, grads)
        updates, new_opt_state = optim.update(grads, opt_state, params)
        new_params = eqx.apply_updates(params, updates)
        return step_loss, grads, new_params, new_opt_state, perm

    steps = start + jnp.arange(length)
    if not guarded:

        def plain(carry, s):
            step_loss, _, params, opt_state, perm = step(*carry, s, True)
            return (params, opt_state, perm), step_loss

        carry, losses = lax.scan(plain, (params, opt_state, perm), steps)
        params, opt_state, perm = carry
        finite = jnp.all(jnp.isfinite(losses)) & tree_allfinite(params)
        return params, opt_state, perm, losses, jnp.where(finite, bad_step, length)

    def body(carry, s):
        params, opt_state, perm, bad = carry
        active = s < end
        step_loss, grads, new_params, new_opt_state, perm = step(
            params, opt_state, perm, s, active
        )
        finite = jnp.isfinite(step_loss) & tree_allfinite(grads)
        take = finite & (bad < 0) & active
        params = tree_where(take, new_params, params)
        opt_state = tree_where(take, new_opt_state, opt_state)
        bad = jnp.where((bad < 0) & ~finite & active, s, bad)
        return (params, opt_state, perm, bad), step_loss

    carry, losses = lax.scan(body, (params, opt_state, perm, bad_step), steps)
    params, opt_state, perm, bad_step = carry
    return params, opt_state, perm, losses, bad_step


def epoch_permutation(
    data_key: PRNGKeyArray, epoch: Int[Array, ""] | int, n: int
) -> Int[Array, " n"]:
    """The order in which epoch `epoch` visits the `n` samples."""
    return jr.permutation(jr.fold_in(data_key, epoch), n).astype(jnp.int32)


def initial_permutation(
    data_key: PRNGKeyArray, start: int, n: int, batch_size: int | None
) -> Int[Array, " n"]:
    """The permutation to carry into a run that starts at step `start`.

    A run starting at an epoch boundary draws its own at the first step; one resumed
    in the middle of an epoch needs that epoch's.
    """
    if batch_size is None:
        return jnp.zeros((1,), jnp.int32)
    spe = batch_plan(n, batch_size)
    if start % spe == 0:
        return jnp.zeros((n,), jnp.int32)
    return jax.jit(epoch_permutation, static_argnums=2)(data_key, start // spe, n)


def auto_mesh(n: int, name: str) -> jax.sharding.Mesh:
    """A one-axis mesh named `name` over the first `n` devices, with an Auto axis."""
    return jax.make_mesh(
        (n,),
        (name,),
        axis_types=(jax.sharding.AxisType.Auto,),
        devices=jax.devices()[:n],
    )


def constrain(tree: PyTree, sharding: jax.sharding.NamedSharding) -> PyTree:
    """Shard `tree` inside a traced computation, on Auto or Explicit mesh axes alike."""
    if all(t == jax.sharding.AxisType.Explicit for t in sharding.mesh.axis_types):
        return jax.sharding.reshard(tree, sharding)
    return lax.with_sharding_constraint(tree, sharding)


def split_fit_key(key: PRNGKeyArray) -> tuple[PRNGKeyArray, PRNGKeyArray]:
    """`(data_key, loss_key)` from the key given to `fit`."""
    data_key, loss_key = jr.split(key)
    return data_key, loss_key


def chunk_length(steps: int, chunk: int, every: tuple[int | None, ...]) -> int:
    """The scan length for a run of `steps` steps cut at multiples of `every`.

    At most `chunk`, and balanced so that the chunks between two cuts are about equal:
    500 steps with `chunk=200` run as three scans of 167, not 200 + 200 + 100 (which
    would waste 100 masked steps in the last one).
    """
    span = min([steps] + [p for p in every if p])
    length = min(chunk, span)
    return -(-span // -(-span // length))


def chunk_bounds(
    start: int, steps: int, chunk: int, every: tuple[int | None, ...]
) -> list[tuple[int, int]]:
    """Cut `[start, steps)` into chunks of at most `chunk` steps.

    Cuts fall at absolute multiples of `chunk` and of each period in `every` (evaluation,
    checkpointing), so a run resumed from any checkpoint is cut exactly like an
    uninterrupted one.
    """
    periods = [chunk] + [p for p in every if p]
    bounds = []
    s = start
    while s < steps:
        nxt = min([steps] + [(s // p + 1) * p for p in periods])
        bounds.append((s, nxt))
        s = nxt
    return bounds


_COMPILED: "collections.OrderedDict[Any, Any]" = collections.OrderedDict()
_MAX_COMPILED = 32


def _static_key(value: Any) -> Any:
    """A hashable stand-in for a static argument: the value itself, or else its tree
    structure and leaves (a model holding a dict or a list is unhashable as a whole,
    but its structure and its static leaves are not)."""
    try:
        hash(value)
        return value
    except TypeError:
        leaves, treedef = jtu.tree_flatten(value)
        return treedef, tuple(leaves)


def compiled_call(
    fn: Callable[..., Any],
    static_kwargs: dict[str, Any],
    args: tuple[Any, ...],
    donate_argnums: tuple[int, ...] = (),
) -> tuple[Any, float]:
    """Call `jax.jit(fn)` on `args`, compiling ahead of time and timing the compilation.

    Executables are kept (least recently used first out) by `fn`, the
    `static_kwargs` (by value, or by tree structure and leaves when unhashable, as a
    model holding a dict is) and the shapes, dtypes and shardings of `args`, so the
    chunks of one `fit`, and repeated `fit` calls on the same problem, compile once.
    Static arguments with unhashable leaves disable the cache for that call.

    **Returns:** `(output, compile_seconds)`; `compile_seconds` is 0 on a cache hit.
    """
    leaves, treedef = jtu.tree_flatten(args)
    avals = tuple(
        (jnp.shape(x), jnp.result_type(x), getattr(x, "sharding", None)) for x in leaves
    )
    try:
        statics = tuple((k, _static_key(v)) for k, v in sorted(static_kwargs.items()))
        key: Any = (fn, statics, treedef, avals, donate_argnums)
        hash(key)
    except TypeError:
        key = None
    seconds = 0.0
    if key is not None and key in _COMPILED:
        _COMPILED.move_to_end(key)
        exe = _COMPILED[key]
    else:
        t0 = time.perf_counter()
        jitted = jax.jit(ft.partial(fn, **static_kwargs), donate_argnums=donate_argnums)
        exe = jitted.lower(*args).compile()
        seconds = time.perf_counter() - t0
        if key is not None:
            _COMPILED[key] = exe
            if len(_COMPILED) > _MAX_COMPILED:
                _COMPILED.popitem(last=False)
    return exe(*args), seconds
