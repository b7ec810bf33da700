import math
from collections.abc import Callable, Sequence

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
from jaxtyping import Array, Float, PRNGKeyArray, PyTree


Initialiser = Callable[[PRNGKeyArray, tuple[int, ...], jnp.dtype], Array]


def _fan_in(shape: Sequence[int]) -> int:
    if len(shape) < 1 or shape[-1] < 1:
        raise ValueError(
            f"`shape` needs a positive last axis (the fan-in); got {tuple(shape)}."
        )
    return shape[-1]


def lecun_normal(
    key: PRNGKeyArray, shape: Sequence[int], dtype=jnp.float32
) -> Float[Array, "..."]:
    """LeCun-normal weights: independent `N(0, 1 / fan_in)` entries.

    The initialisation that self-normalising networks need (Klambauer et al.,
    "Self-Normalizing Neural Networks", 2017): with it, `omega = n * mean(w)` is about 0
    and `tau = n * mean(w^2)` about 1 for every unit, the regime where the moment map
    of SELU has its stable fixed point `(0, 1)`. Unlike
    `jax.nn.initializers.lecun_normal` the normal is not truncated, and the fan-in is
    the *last* axis, as in the `(out, in)` weights of `eqx.nn.Linear`.

    **Arguments:**

    - `key`: a PRNG key.
    - `shape`: the weight shape, fan-in last (leading axes, e.g. a stack of layers,
        are allowed).
    - `dtype`: a floating dtype.

    **Returns:** an array of `shape` and `dtype`.

    **Raises:** `ValueError` naming `shape` if its last axis is missing or empty.
    """
    std = 1 / math.sqrt(_fan_in(shape))
    return std * jr.normal(key, tuple(shape), dtype)


def he_normal(
    key: PRNGKeyArray, shape: Sequence[int], dtype=jnp.float32
) -> Float[Array, "..."]:
    """He-normal weights: independent `N(0, 2 / fan_in)` entries, fan-in last.

    The initialisation of He et al., "Delving Deep into Rectifiers" (2015), that keeps
    the second moment of ReLU pre-activations constant with depth (but not their mean
    or variance). Arguments, returns and errors as `lecun_normal`.
    """
    std = math.sqrt(2 / _fan_in(shape))
    return std * jr.normal(key, tuple(shape), dtype)


def _is_linear(x) -> bool:
    return isinstance(x, eqx.nn.Linear)


def reinit_linear(
    model: PyTree, *, key: PRNGKeyArray, init: Initialiser = lecun_normal
) -> PyTree:
    """Re-initialise the weights of every `eqx.nn.Linear` in `model`; zero the biases.

    Works for any pytree holding linear layers, e.g. an `eqx.nn.MLP`, and for stacks of
    layers made with `jax.vmap` (the weights' fan-in is their last axis). Each layer
    gets its own subkey.

    **Arguments:**

    - `model`: a pytree, usually an `eqx.Module`.
    - `key`: a PRNG key.
    - `init`: `init(key, shape, dtype)` returning new weights; default `lecun_normal`.

    **Returns:** a copy of `model` with new weights and zero biases.

    **Raises:** `ValueError` if `model` has no `eqx.nn.Linear`.
    """
    linears = [x for x in jtu.tree_leaves(model, is_leaf=_is_linear) if _is_linear(x)]
    if not linears:
        raise ValueError("`model` holds no `eqx.nn.Linear` layer to re-initialise.")
    keys = jr.split(key, len(linears))
    weights = [
        init(k, layer.weight.shape, layer.weight.dtype)
        for k, layer in zip(keys, linears)
    ]
    model = eqx.tree_at(
        lambda m: [
            x.weight for x in jtu.tree_leaves(m, is_leaf=_is_linear) if _is_linear(x)
        ],
        model,
        weights,
    )
    return eqx.tree_at(
        lambda m: [
            x.bias
            for x in jtu.tree_leaves(m, is_leaf=_is_linear)
            if _is_linear(x) and x.bias is not None
        ],
        model,
        replace_fn=jnp.zeros_like,
    )
