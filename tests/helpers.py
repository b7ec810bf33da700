import contextlib

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
import jaxtyping
import numpy as np


def tree_allclose(x, y, *, rtol=1e-5, atol=1e-8) -> bool:
    """Whether two pytrees have the same structure and allclose array leaves."""
    xa, xs = eqx.partition(x, eqx.is_array)
    ya, ys = eqx.partition(y, eqx.is_array)
    if jtu.tree_structure(xa) != jtu.tree_structure(ya) or xs != ys:
        return False
    return all(
        np.allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)
        for a, b in zip(jtu.tree_leaves(xa), jtu.tree_leaves(ya))
    )


def tree_max_abs_diff(x, y) -> float:
    """The largest absolute difference between corresponding array leaves."""
    xs = jtu.tree_leaves(eqx.filter(x, eqx.is_array))
    ys = jtu.tree_leaves(eqx.filter(y, eqx.is_array))
    assert len(xs) == len(ys)
    return max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(xs, ys))


def tree_bytes_equal(x, y) -> bool:
    """Whether two pytrees' array leaves are bit-for-bit identical."""
    xs = jtu.tree_leaves(eqx.filter(x, eqx.is_array))
    ys = jtu.tree_leaves(eqx.filter(y, eqx.is_array))
    return len(xs) == len(ys) and all(
        np.asarray(a).tobytes() == np.asarray(b).tobytes() for a, b in zip(xs, ys)
    )


@contextlib.contextmanager
def jaxtyping_off():
    """Turn off the runtime shape checks, to reach the library's own errors."""
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", False)
