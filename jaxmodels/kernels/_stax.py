"""Analytic NNGP/NTK layers with neural-tangents' `stax` API: dense layers,
activations, combinators, pooling.

The kernel maps are the closed forms of "Deep Neural Networks as Gaussian Processes"
(Lee, Bahri, Novak, Schoenholz, Pennington and Sohl-Dickstein, ICLR 2018) and "Neural
Tangent Kernel: Convergence and Generalization in Neural Networks" (Jacot, Gabriel and
Hongler, NeurIPS 2018): for jointly Gaussian pre-activations `(u, v)` with variances
`s1`, `s2` and covariance `c`, an activation `phi` maps the NNGP `c` to
`E[phi(u) phi(v)]` and multiplies the NTK by `E[phi'(u) phi'(v)]`; an affine layer
maps the NNGP `K` to `W_std^2 K + b_std^2` and the NTK `T` to `W_std^2 T + (new NNGP)`.
The ReLU family uses the arc-cosine kernels ("Kernel Methods for Deep Learning", Cho
and Saul, NeurIPS 2009), `Erf` the arcsine kernel (Williams, NeurIPS 1996), `Gelu`
the closed form of "Avoiding Kernel Fixed Points: Computing with ELU and GELU Infinite
Networks" (Tsuchida, Pearce, van der Heide, Roosta and Gallagher, AAAI 2021).

Every layer returns `(init_fn, apply_fn, kernel_fn)` as neural-tangents does, so that
`from jaxmodels.kernels import stax` replaces `from neural_tangents import stax`.
"""

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, PRNGKeyArray

from .._core import check_positive, check_positive_int
from ._kernel import (
    Kernel,
    apply_pair_fn,
    make_kernel_fn,
    map_covariances,
    replace,
    safe_sqrt,
)


Layer = tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]
_PARAMETERIZATIONS = ("ntk", "standard")


def check_parameterization(parameterization: Any) -> str:
    if not isinstance(parameterization, str) or (
        parameterization.lower() not in _PARAMETERIZATIONS
    ):
        raise ValueError(
            f"`parameterization` must be one of {_PARAMETERIZATIONS}; got "
            f"{parameterization!r}."
        )
    return parameterization.lower()


def check_stds(W_std: Any, b_std: Any) -> tuple[float, float | None]:
    W_std = check_positive(W_std, "W_std")
    if b_std is not None:
        try:
            b_std = float(b_std)
        except (TypeError, ValueError):
            b_std = -1.0
        if not b_std >= 0:
            raise ValueError(f"`b_std` must be None or non-negative; got {b_std!r}.")
    return W_std, b_std


def check_s(s: Any) -> tuple[int, int]:
    if not (isinstance(s, tuple | list) and len(s) == 2):
        raise ValueError(f"`s` must be a pair of positive integers; got {s!r}.")
    check_positive_int(s[0], "s[0]")
    check_positive_int(s[1], "s[1]")
    return int(s[0]), int(s[1])


def _check_axes(name: str, value: Any, allowed: tuple[int, ...]) -> None:
    if value not in allowed:
        raise ValueError(
            f"`{name}` must be one of {allowed} (batch first, channels last, as in "
            f"neural-tangents' defaults); got {value!r}."
        )


def _unchanged_init(rng: PRNGKeyArray, input_shape: Any) -> tuple[Any, tuple]:
    return input_shape, ()


def _layer(init_fn, apply_fn, transform) -> Layer:
    return init_fn, apply_fn, make_kernel_fn(transform)


def _channel_check(name: str, input_shape: Sequence[int]) -> None:
    if len(input_shape) < 2:
        raise ValueError(
            f"`{name}` must be batched, `(batch, ..., channels)`; got {input_shape}."
        )


# ---------------------------------------------------------------------- Dense


def Dense(
    out_dim: int,
    W_std: float = 1.0,
    b_std: float | None = None,
    batch_axis: int = 0,
    channel_axis: int = -1,
    parameterization: str = "ntk",
    s: tuple[int, int] = (1, 1),
) -> Layer:
    """A fully-connected layer acting on the last (channel) axis.

    Under the `"ntk"` parameterisation the weights and biases are standard normal and
    the layer computes `W_std / sqrt(fan_in) x W + b_std b`; under `"standard"` the
    weights have standard deviation `W_std / sqrt(fan_in / s[0])`, the biases `b_std`,
    and the layer computes `x W / sqrt(s[0]) + b` ("On the infinite width limit of
    neural networks with a standard parameterization", Sohl-Dickstein, Novak,
    Schoenholz and Lee, 2020). The NNGP is the same in both; the NTK differs.

    **Arguments:**

    - `out_dim`: the number of output channels (ignored by `kernel_fn` under `"ntk"`).
    - `W_std`: the weight standard deviation, positive.
    - `b_std`: the bias standard deviation; `None` for no bias.
    - `batch_axis`, `channel_axis`: only neural-tangents' defaults `0` and `-1`.
    - `parameterization`: `"ntk"` or `"standard"`.
    - `s`: under `"standard"`, the width multipliers of the input and output.

    **Returns:** `(init_fn, apply_fn, kernel_fn)`.

    **Raises:** `ValueError` naming the argument for a bad one.
    """
    check_positive_int(out_dim, "out_dim")
    W_std, b_std = check_stds(W_std, b_std)
    parameterization = check_parameterization(parameterization)
    s = check_s(s)
    _check_axes("batch_axis", batch_axis, (0,))
    _check_axes("channel_axis", channel_axis, (-1,))
    width = out_dim if parameterization == "ntk" else out_dim * s[1]
    b_var = 0.0 if b_std is None else b_std**2

    def init_fn(rng, input_shape):
        _channel_check("input_shape", input_shape)
        in_dim = input_shape[-1]
        wkey, bkey = jr.split(rng)
        W = jr.normal(wkey, (in_dim, width))
        bias_shape = (1,) * (len(input_shape) - 1) + (width,)
        b = None if b_std is None else jr.normal(bkey, bias_shape)
        if parameterization == "standard":
            W = W * (W_std / math.sqrt(in_dim / s[0]))
            b = None if b is None else b * b_std
        return tuple(input_shape[:-1]) + (width,), (W, b)

    def apply_fn(params, inputs, **kwargs):
        W, b = params
        out = jnp.matmul(inputs, W, precision=jax.lax.Precision.HIGHEST)
        if parameterization == "ntk":
            out = out * (W_std / math.sqrt(inputs.shape[-1]))
            return out if b is None else out + b_std * b
        out = out / math.sqrt(s[0])
        return out if b is None else out + b

    def transform(k: Kernel) -> Kernel:
        shape1 = k.shape1[:-1] + (width,)
        shape2 = k.shape2[:-1] + (width,)
        new = map_covariances(
            k,
            lambda x: W_std**2 * x + b_var,
            shape1=shape1,
            shape2=shape2,
            is_gaussian=True,
        )
        if k.ntk is None:
            return new
        if parameterization == "ntk":
            ntk = new.nngp + W_std**2 * k.ntk
        else:
            fan_in = k.shape1[-1] / s[0]
            ntk = fan_in * k.nngp + W_std**2 * k.ntk
            if b_std is not None:
                ntk = ntk + 1.0
        return replace(new, ntk=ntk)

    return _layer(init_fn, apply_fn, transform)


# ----------------------------------------------------------------- activations


def _elementwise(fn: Callable[[Array], Array], pair_fn) -> Layer:
    def apply_fn(params, inputs, **kwargs):
        return fn(inputs)

    return _layer(_unchanged_init, apply_fn, lambda k: apply_pair_fn(k, pair_fn))


def _angle(c: Array, s1: Array, s2: Array) -> tuple[Array, Array]:
    """`sqrt(s1 s2 - c^2)` and the angle `arccos(c / sqrt(s1 s2))` between `u`, `v`.

    Computed as `arctan2`, which needs no clipping of a cosine that rounding could
    push past 1; a zero-variance input gets the angle pi/2 (uncorrelated).
    """
    r = safe_sqrt(s1 * s2 - c**2)
    degenerate = (r == 0) & (c == 0)
    theta = jnp.arctan2(r, jnp.where(degenerate, 1.0, c))
    return r, jnp.where(degenerate, jnp.pi / 2, theta)


def ABRelu(a: float, b: float, do_stabilize: bool = False) -> Layer:
    """`a min(x, 0) + b max(x, 0)`, with the arc-cosine kernel of degree 1.

    **Arguments:**

    - `a`: the slope for `x < 0`.
    - `b`: the slope for `x > 0`.
    - `do_stabilize`: accepted for neural-tangents compatibility; the closed form
        here is scale-free, so it has no effect.

    **Returns:** `(init_fn, apply_fn, kernel_fn)`.
    """
    a, b = float(a), float(b)
    factor = (a - b) ** 2 / (2 * jnp.pi)
    mean_square = (a**2 + b**2) / 2

    def pair_fn(c, s1, s2, want_dot):
        r, theta = _angle(c, s1, s2)
        dot = mean_square - factor * theta
        return factor * r + dot * c, dot if want_dot else None

    return _elementwise(
        lambda x: a * jnp.minimum(x, 0) + b * jnp.maximum(x, 0), pair_fn
    )


def Relu(do_stabilize: bool = False) -> Layer:
    """The ReLU `max(x, 0)` (`ABRelu(0, 1)`)."""
    return ABRelu(0.0, 1.0, do_stabilize)


def LeakyRelu(alpha: float, do_stabilize: bool = False) -> Layer:
    """The leaky ReLU `alpha min(x, 0) + max(x, 0)` (`ABRelu(alpha, 1)`)."""
    return ABRelu(alpha, 1.0, do_stabilize)


def Abs(do_stabilize: bool = False) -> Layer:
    """The absolute value `|x|` (`ABRelu(-1, 1)`)."""
    return ABRelu(-1.0, 1.0, do_stabilize)


def Sign() -> Layer:
    """The sign function; its NTK contribution is zero (zero derivative a.e.)."""

    def pair_fn(c, s1, s2, want_dot):
        _, theta = _angle(c, s1, s2)
        return 1 - 2 * theta / jnp.pi, jnp.zeros_like(c) if want_dot else None

    return _elementwise(jnp.sign, pair_fn)


def Erf(a: float = 1.0, b: float = 1.0, c: float = 0.0) -> Layer:
    """`a erf(b x) + c`, with the arcsine kernel of Williams (1996).

    **Arguments:**

    - `a`: the output scale.
    - `b`: the input scale.
    - `c`: the output shift.

    **Returns:** `(init_fn, apply_fn, kernel_fn)`.
    """
    a, b, shift = float(a), float(b), float(c)

    def pair_fn(cov, s1, s2, want_dot):
        cov, s1, s2 = b**2 * cov, b**2 * s1, b**2 * s2
        prod = (1 + 2 * s1) * (1 + 2 * s2)
        sine = jnp.clip(2 * cov / jnp.sqrt(prod), -1.0, 1.0)
        nngp = a**2 * (2 / jnp.pi) * jnp.arcsin(sine) + shift**2
        if not want_dot:
            return nngp, None
        # `prod - 4 cov^2 >= 1 + 2 (s1 + s2) > 0` for a valid covariance.
        det = jnp.maximum(prod - 4 * cov**2, 1.0)
        return nngp, a**2 * b**2 * (4 / jnp.pi) / jnp.sqrt(det)

    return _elementwise(lambda x: a * jax.scipy.special.erf(b * x) + shift, pair_fn)


def Gelu(approximate: bool = False) -> Layer:
    """The GELU `x Phi(x)`, with the closed-form kernel of Tsuchida et al. (2021).

    **Arguments:**

    - `approximate`: for `apply_fn` only, use the `tanh` approximation (the kernel is
        always that of the exact GELU, as in neural-tangents).

    **Returns:** `(init_fn, apply_fn, kernel_fn)`.
    """

    def pair_fn(c, s1, s2, want_dot):
        prod, prod1 = s1 * s2, (1 + s1) * (1 + s2)
        # `prod1 - c^2 >= 1 + s1 + s2 > 0` for a valid covariance: never singular.
        delta2 = jnp.maximum(prod1 - c**2, 1.0)
        delta = jnp.sqrt(delta2)
        angle = jnp.arctan2(c, delta)
        nngp = c / 4 + (c * angle + (c**2 + prod * delta2) / (prod1 * delta)) / (
            2 * jnp.pi
        )
        if not want_dot:
            return nngp, None
        first = (1 / delta2 + (1 - prod) / prod1 + 1) * c / (2 * jnp.pi * delta)
        return nngp, first + 0.25 + angle / (2 * jnp.pi)

    return _elementwise(lambda x: jax.nn.gelu(x, approximate=approximate), pair_fn)


def Identity() -> Layer:
    """The identity layer (kernels unchanged)."""
    return _layer(_unchanged_init, lambda params, inputs, **kwargs: inputs, lambda k: k)


# ----------------------------------------------------------------- combinators


def serial(*layers: Layer) -> Layer:
    """Compose layers in sequence, as `jax.example_libraries.stax.serial`.

    **Arguments:** the `(init_fn, apply_fn, kernel_fn)` triples, first layer first.

    **Returns:** `(init_fn, apply_fn, kernel_fn)` of the composition.
    """
    if len(layers) == 0:
        raise ValueError("`layers` must hold at least one layer.")
    init_fns, apply_fns, kernel_fns = zip(*layers)

    def init_fn(rng, input_shape):
        params = []
        for fn, key in zip(init_fns, jr.split(rng, len(layers))):
            input_shape, p = fn(key, input_shape)
            params.append(p)
        return input_shape, tuple(params)

    def apply_fn(params, inputs, **kwargs):
        for fn, p in zip(apply_fns, params):
            inputs = fn(p, inputs, **kwargs)
        return inputs

    def transform(k):
        for fn in kernel_fns:
            k = fn(k)
        return k

    return _layer(init_fn, apply_fn, transform)


def parallel(*layers: Layer) -> Layer:
    """Apply layer `i` to input `i` of a list (after `FanOut`).

    **Returns:** `(init_fn, apply_fn, kernel_fn)` acting on lists of inputs/kernels.
    """
    if len(layers) == 0:
        raise ValueError("`layers` must hold at least one layer.")
    init_fns, apply_fns, kernel_fns = zip(*layers)

    def _check(xs, name):
        if not isinstance(xs, list | tuple) or len(xs) != len(layers):
            raise ValueError(
                f"`{name}` of `parallel` must be a list of {len(layers)} entries "
                "(one per branch; use `FanOut` first)."
            )

    def init_fn(rng, input_shape):
        _check(input_shape, "input_shape")
        keys = jr.split(rng, len(layers))
        out = [fn(key, shape) for fn, key, shape in zip(init_fns, keys, input_shape)]
        return [o[0] for o in out], tuple(o[1] for o in out)

    def apply_fn(params, inputs, **kwargs):
        _check(inputs, "inputs")
        return [fn(p, x, **kwargs) for fn, p, x in zip(apply_fns, params, inputs)]

    def transform(ks):
        _check(ks, "x1")
        return [fn(k) for fn, k in zip(kernel_fns, ks)]

    return _layer(init_fn, apply_fn, transform)


def FanOut(num: int) -> Layer:
    """Copy the input into a list of `num` branches."""
    check_positive_int(num, "num")
    return _layer(
        lambda rng, input_shape: ([input_shape] * num, ()),
        lambda params, inputs, **kwargs: [inputs] * num,
        lambda k: [k] * num,
    )


def FanInSum() -> Layer:
    """Sum a list of branches (a residual connection with `FanOut` and `parallel`).

    The kernel of a sum of independent mean-zero Gaussian branches is the sum of the
    branches' kernels; every branch must end in an affine layer (or `Identity` of one).
    """

    def init_fn(rng, input_shape):
        if len({tuple(s) for s in input_shape}) != 1:
            raise ValueError(f"`FanInSum` needs equal shapes; got {input_shape}.")
        return input_shape[0], ()

    def apply_fn(params, inputs, **kwargs):
        out = inputs[0]
        for x in inputs[1:]:
            out = out + x
        return out

    def transform(ks):
        if not all(k.is_gaussian for k in ks) and len(ks) > 1:
            raise ValueError(
                "`FanInSum` needs every branch to be mean-zero Gaussian: end each "
                "branch in `Dense`/`Conv` (or `Identity` after one)."
            )
        if len({(k.shape1, k.shape2) for k in ks}) != 1:
            raise ValueError("`FanInSum` needs branches of equal shapes.")

        def total(xs):
            out = xs[0]
            for x in xs[1:]:
                out = out + x
            return out

        first = ks[0]
        nngp = total([k.nngp for k in ks])
        ntk = None if first.ntk is None else total([k.ntk for k in ks])
        if first.diagonal:
            cov1, cov2 = nngp, None
        else:
            cov1 = total([k.cov1 for k in ks])
            cov2 = None if first.cov2 is None else total([k.cov2 for k in ks])
        return replace(first, nngp=nngp, ntk=ntk, cov1=cov1, cov2=cov2)

    return _layer(init_fn, apply_fn, transform)


# --------------------------------------------------------------------- pooling


def _reduce(k: Kernel, fn: Callable[[Array, int], Array], **changes: Any) -> Kernel:
    nngp = fn(k.nngp, k.batch_ndim)
    ntk = None if k.ntk is None else fn(k.ntk, k.batch_ndim)
    if k.diagonal:
        cov1, cov2 = nngp, None
    else:
        cov1 = fn(k.cov1, 1)
        cov2 = None if k.cov2 is None else fn(k.cov2, 1)
    return replace(k, nngp=nngp, ntk=ntk, cov1=cov1, cov2=cov2, **changes)


def GlobalAvgPool(batch_axis: int = 0, channel_axis: int = -1) -> Layer:
    """Average over all spatial locations: `(n, ..., c) -> (n, c)`.

    The kernel is the mean of the location-location covariance over all pairs.
    """
    _check_axes("batch_axis", batch_axis, (0,))
    _check_axes("channel_axis", channel_axis, (-1,))

    def init_fn(rng, input_shape):
        _channel_check("input_shape", input_shape)
        return (input_shape[0], input_shape[-1]), ()

    def apply_fn(params, inputs, **kwargs):
        return jnp.mean(inputs, axis=tuple(range(1, inputs.ndim - 1)))

    def transform(k):
        def pool(x, batch_ndim):
            return jnp.mean(x, axis=tuple(range(batch_ndim, x.ndim)))

        shape1 = (k.shape1[0], k.shape1[-1])
        shape2 = (k.shape2[0], k.shape2[-1])
        return _reduce(k, pool, shape1=shape1, shape2=shape2)

    return _layer(init_fn, apply_fn, transform)


def Flatten(batch_axis: int = 0, batch_axis_out: int = 0) -> Layer:
    """Flatten all non-batch axes: `(n, h, w, c) -> (n, h w c)`.

    As in neural-tangents, the kernel of the flattened (infinite) feature vector is
    the mean over locations of the same-location covariance (the spatial trace
    divided by the number of locations); the outputs are no longer Gaussian in the
    limit sense used here, so an affine layer must follow before an activation.
    """
    _check_axes("batch_axis", batch_axis, (0,))
    _check_axes("batch_axis_out", batch_axis_out, (0,))

    def init_fn(rng, input_shape):
        _channel_check("input_shape", input_shape)
        return (input_shape[0], math.prod(input_shape[1:])), ()

    def apply_fn(params, inputs, **kwargs):
        return inputs.reshape(inputs.shape[0], -1)

    def transform(k):
        def trace(x, batch_ndim):
            while x.ndim > batch_ndim:
                x = jnp.trace(x, axis1=-2, axis2=-1) / x.shape[-1]
            return x

        shape1 = (k.shape1[0], math.prod(k.shape1[1:]))
        shape2 = (k.shape2[0], math.prod(k.shape2[1:]))
        return _reduce(k, trace, shape1=shape1, shape2=shape2, is_gaussian=False)

    return _layer(init_fn, apply_fn, transform)
