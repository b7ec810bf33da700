import math
from collections.abc import Callable

import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Real

from ._split import _check_at_least, _check_scale


_FUNCTIONS_1D: dict[str, Callable[[Array], Array]] = {
    "sin": jnp.sin,
    "cubic": lambda x: x**3 / 10,
    "step": lambda x: jnp.where(x >= 0, 1.0, 0.0),
    "sinc": jnp.sinc,
}


def regression_1d(
    key: PRNGKeyArray,
    n: int,
    *,
    fn: str | Callable[[Float[Array, "n 1"]], Float[Array, "n 1"]] = "sin",
    noise: Real[ArrayLike, ""] = 0.1,
    domain: tuple[float | int, float | int] = (-3.0, 3.0),
) -> tuple[Float[Array, "{n} 1"], Float[Array, "{n} 1"]]:
    """Noisy samples of a scalar function of one variable.

    The inputs `x` are uniform on `domain` and the targets are `y = f(x) + noise * eps`
    with `eps` standard normal, independent of `x`. The named targets are

    - `"sin"`: `sin(x)`;
    - `"cubic"`: `x**3 / 10`;
    - `"step"`: the Heaviside step, `0` for `x < 0` and `1` for `x >= 0`;
    - `"sinc"`: the normalised sinc, `sin(pi x) / (pi x)` (and `1` at `0`).

    The inputs and the noise come from separate subkeys of `key`, so two calls with the
    same key and different `noise` differ by exactly the scaled noise.

    **Arguments:**

    - `key`: a PRNG key (`jax.random.key`).
    - `n`: the number of samples, at least 1.
    - `fn`: one of the names above, or a callable mapping inputs of shape `(n, 1)` to
        targets of shape `(n, 1)` (any elementwise `jnp` function qualifies).
    - `noise`: the standard deviation of the additive Gaussian noise, non-negative.
    - `domain`: the interval `(low, high)` the inputs are drawn from, with
        `low < high`.

    **Returns:**

    A tuple `(x, y)` of float32 arrays, both of shape `(n, 1)`, in random order.

    **Raises:**

    `ValueError` naming the argument if `n < 1`, `noise < 0`, `domain` is not an
    interval with `low < high`, or `fn` is an unknown name or a callable returning the
    wrong shape.
    """
    _check_at_least(n, "n", 1)
    noise = _check_scale(noise, "noise")
    low, high = domain
    if not low < high:
        raise ValueError(
            f"`domain` must be an interval (low, high) with low < high; got {domain}."
        )
    if isinstance(fn, str):
        if fn not in _FUNCTIONS_1D:
            names = sorted(_FUNCTIONS_1D)
            raise ValueError(f"`fn` must be one of {names} or a callable; got {fn!r}.")
        fn = _FUNCTIONS_1D[fn]
    xkey, nkey = jr.split(key)
    x = jr.uniform(xkey, (n, 1), minval=low, maxval=high)
    fx = fn(x)
    if jnp.shape(fx) != (n, 1):
        raise ValueError(
            f"`fn` must map inputs of shape {(n, 1)} to targets of the same shape; "
            f"it returned shape {jnp.shape(fx)}."
        )
    y = fx + noise * jr.normal(nkey, (n, 1))
    return x.astype(jnp.float32), y.astype(jnp.float32)


def _teacher(
    key: PRNGKeyArray, x: Float[Array, "n dim"], width: int
) -> Float[Array, "n 1"]:
    wkey, bkey, akey = jr.split(key, 3)
    dim = x.shape[-1]
    w = jr.normal(wkey, (dim, width))
    b = jr.normal(bkey, (1, width))
    a = jr.normal(akey, (width, 1))
    # 1/sqrt(fan-in) scaling keeps the pre-activations and the output O(1) whatever
    # `dim` and `width`.
    return jnp.tanh(x @ w / math.sqrt(dim) + b) @ a / math.sqrt(width)


def _friedman1(x: Float[Array, "n dim"]) -> Float[Array, "n 1"]:
    x1, x2, x3, x4, x5 = (x[:, i] for i in range(5))
    y = 10 * jnp.sin(math.pi * x1 * x2) + 20 * (x3 - 0.5) ** 2 + 10 * x4 + 5 * x5
    return y[:, None]


def regression_nd(
    key: PRNGKeyArray,
    n: int,
    *,
    dim: int = 8,
    noise: Real[ArrayLike, ""] = 0.1,
    fn: str = "teacher",
    width: int = 32,
) -> tuple[Float[Array, "{n} {dim}"], Float[Array, "{n} 1"]]:
    """Noisy samples of a scalar function of several variables.

    The targets are `y = f(x) + noise * eps` with `eps` standard normal. The choices
    of `f` are

    - `"teacher"`: a random one-hidden-layer network
        `f(x) = a . tanh(W x / sqrt(dim) + b) / sqrt(width)` with `W`, `b` and `a` of
        independent standard normal entries, drawn once from `key`: the target of
        teacher-student experiments. The inputs are standard normal.
    - `"friedman"`: Friedman's first function,
        `f(x) = 10 sin(pi x_1 x_2) + 20 (x_3 - 1/2)^2 + 10 x_4 + 5 x_5`, from
        "Multivariate adaptive regression splines" (Friedman, 1991). The inputs are
        uniform on `[0, 1]^dim`, and the coordinates after the fifth are irrelevant
        distractors (Friedman used `dim = 10`).

    The inputs, the teacher and the noise come from separate subkeys of `key`, so two
    calls with the same key and different `noise` differ by exactly the scaled noise.

    **Arguments:**

    - `key`: a PRNG key (`jax.random.key`).
    - `n`: the number of samples, at least 1.
    - `dim`: the input dimension, at least 1 (at least 5 for `"friedman"`).
    - `noise`: the standard deviation of the additive Gaussian noise, non-negative.
    - `fn`: `"teacher"` or `"friedman"`.
    - `width`: the hidden width of the teacher network, at least 1; only used by
        `"teacher"`.

    **Returns:**

    A tuple `(x, y)` of float32 arrays, of shapes `(n, dim)` and `(n, 1)`.

    **Raises:**

    `ValueError` naming the argument if `n < 1`, `dim < 1` (or `dim < 5` for
    `"friedman"`), `noise < 0`, `width < 1`, or `fn` is an unknown name.
    """
    _check_at_least(n, "n", 1)
    _check_at_least(dim, "dim", 1)
    _check_at_least(width, "width", 1)
    noise = _check_scale(noise, "noise")
    xkey, fkey, nkey = jr.split(key, 3)
    if fn == "teacher":
        x = jr.normal(xkey, (n, dim))
        fx = _teacher(fkey, x, width)
    elif fn == "friedman":
        if dim < 5:
            raise ValueError(
                f"`dim` must be at least 5 for `fn='friedman'`, which uses the first "
                f"five inputs; got {dim}."
            )
        x = jr.uniform(xkey, (n, dim))
        fx = _friedman1(x)
    else:
        raise ValueError(f"`fn` must be 'teacher' or 'friedman'; got {fn!r}.")
    y = fx + noise * jr.normal(nkey, (n, 1))
    return x.astype(jnp.float32), y.astype(jnp.float32)
