from typing import Any

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, Bool, PyTree


def tree_where(pred: Bool[Array, ""], true: PyTree, false: PyTree) -> PyTree:
    """`jnp.where(pred, t, f)` leaf by leaf over two pytrees of the same structure.

    Leaves that are `None` in both trees stay `None`.
    """
    return jtu.tree_map(lambda t, f: jnp.where(pred, t, f), true, false)


def tree_size(tree: PyTree) -> int:
    """Number of scalars in the inexact-array leaves of `tree` (a parameter count)."""
    leaves = jtu.tree_leaves(eqx.filter(tree, eqx.is_inexact_array))
    return sum(int(x.size) for x in leaves)


def tree_allfinite(tree: PyTree) -> Bool[Array, ""]:
    """Whether every inexact-array leaf of `tree` is finite."""
    leaves = jtu.tree_leaves(eqx.filter(tree, eqx.is_inexact_array))
    if not leaves:
        return jnp.array(True)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def check_positive_int(value: Any, name: str, *, allow_none: bool = False) -> None:
    """Check that a size, count or period is a positive Python (or NumPy) integer.

    **Raises:** `ValueError` naming `name` otherwise (`None` passes with `allow_none`).
    """
    if value is None and allow_none:
        return
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")


def check_positive(value: Any, name: str) -> float:
    """Check that a scale, rate or tolerance is a positive real number.

    **Returns:** the value as a Python float.

    **Raises:** `ValueError` naming `name` otherwise.
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = None
    if isinstance(value, bool) or number is None:
        raise ValueError(f"`{name}` must be a positive number; got {value!r}.")
    if not number > 0:
        raise ValueError(f"`{name}` must be positive; got {value!r}.")
    return number


def leading_size(tree: PyTree, name: str) -> int:
    """The common size of the leading axis of every array leaf of `tree`.

    **Raises:** `ValueError` naming `name` when the tree has no array leaves, a leaf is
    a scalar, or the leading sizes disagree.
    """
    leaves = [x for x in jtu.tree_leaves(tree) if eqx.is_array_like(x)]
    if not leaves:
        raise ValueError(
            f"`{name}` must be a pytree of arrays; it has no array leaves."
        )
    sizes = {jnp.shape(x)[0] if jnp.ndim(x) > 0 else None for x in leaves}
    if None in sizes:
        raise ValueError(
            f"Every leaf of `{name}` needs a leading sample axis; found a scalar leaf."
        )
    if len(sizes) != 1:
        raise ValueError(
            f"Every leaf of `{name}` must have the same leading (sample) size; "
            f"found sizes {sorted(sizes)}."
        )
    return sizes.pop()


def tree_index(tree: PyTree, index: Any) -> PyTree:
    """`x[index]` for every array leaf of `tree`; other leaves are kept."""
    return jtu.tree_map(lambda x: x[index] if eqx.is_array(x) else x, tree)
