"""The analytic NNGP/NTK of convolutional layers, with neural-tangents' `stax.Conv`.

After "Bayesian Deep Convolutional Networks with Many Channels are Gaussian
Processes" (Novak, Xiao, Lee, Bahri, Yang, Hron, Abolafia, Pennington and
Sohl-Dickstein, ICLR 2019) and "On Exact Computation with an Infinitely Wide Neural
Net" (Arora, Du, Hu, Li, Salakhutdinov and Wang, NeurIPS 2019). A convolution with
filter `F` and i.i.d. weights maps the location-location covariance `K(p, q)` of its
inputs to `W_std^2 / |F| sum_{d in F} K(p s + d, q s + d) + b_std^2`: the same map
acts on the NTK, plus the new NNGP. It is separable over spatial axes, so each pair
of axes `(p, q)` is processed in turn by summing `|F|` strided shifted slices.
"""

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import jax.random as jr
from jax import lax

from .._core import check_positive_int
from ._kernel import Kernel, map_covariances, replace
from ._stax import Layer, _layer, check_parameterization, check_s, check_stds


_PADDINGS = ("VALID", "SAME", "CIRCULAR")


def _pads(size: int, f: int, s: int, padding: str) -> tuple[int, int]:
    if padding == "VALID":
        return 0, 0
    return tuple(lax.padtype_to_pads((size,), (f,), (s,), "SAME")[0])


def _out_size(size: int, f: int, s: int, padding: str) -> int:
    lo, hi = _pads(size, f, s, padding)
    return (size + lo + hi - f) // s + 1


def _conv_pair(x: jax.Array, axis: int, f: int, s: int, padding: str) -> jax.Array:
    """`out(p, q) = mean_{d < f} X(p s + d - lo, q s + d - lo)` over axes `axis, +1`."""
    size = x.shape[axis]
    lo, hi = _pads(size, f, s, padding)
    widths = [(0, 0)] * x.ndim
    widths[axis] = widths[axis + 1] = (lo, hi)
    mode = "wrap" if padding == "CIRCULAR" else "constant"
    x = jnp.pad(x, widths, mode=mode)
    m = _out_size(size, f, s, padding)
    total = None
    for d in range(f):
        piece = lax.slice_in_dim(x, d, d + s * (m - 1) + 1, s, axis)
        piece = lax.slice_in_dim(piece, d, d + s * (m - 1) + 1, s, axis + 1)
        total = piece if total is None else total + piece
    return total / f


def Conv(
    out_chan: int,
    filter_shape: Sequence[int],
    strides: Sequence[int] | None = None,
    padding: str = "VALID",
    W_std: float = 1.0,
    b_std: float | None = None,
    dimension_numbers: Any = None,
    parameterization: str = "ntk",
    s: tuple[int, int] = (1, 1),
) -> Layer:
    """A convolution with shared weights over 1-D (`NWC`) or 2-D (`NHWC`) inputs.

    The kernels carry the full location-location covariance (neural-tangents'
    `diagonal_spatial=False`), shape `(n1, n2, h, h, w, w)` for images. The
    parameterisations are those of `Dense`, with fan-in `channels * prod(filter)`.

    **Arguments:**

    - `out_chan`: the number of output channels (ignored by `kernel_fn` under "ntk").
    - `filter_shape`: the spatial filter shape, one positive integer per spatial
        axis (1 or 2 of them).
    - `strides`: the strides, one per spatial axis (all 1 if `None`).
    - `padding`: `"VALID"`, `"SAME"` (zeros) or `"CIRCULAR"` (periodic).
    - `W_std`, `b_std`: the weight and bias standard deviations (`b_std=None`: no
        bias).
    - `dimension_numbers`: only `None` (channels last, as neural-tangents' default).
    - `parameterization`: `"ntk"` or `"standard"`.
    - `s`: under `"standard"`, the width multipliers of the input and output.

    **Returns:** `(init_fn, apply_fn, kernel_fn)`.

    **Raises:** `ValueError` naming the argument for a bad one, and from the returned
    functions for inputs whose rank does not match `filter_shape`.
    """
    check_positive_int(out_chan, "out_chan")
    if not isinstance(filter_shape, Sequence) or len(filter_shape) not in (1, 2):
        raise ValueError(
            "`filter_shape` must be a tuple of 1 or 2 positive integers; got "
            f"{filter_shape!r}."
        )
    for i, f in enumerate(filter_shape):
        check_positive_int(f, f"filter_shape[{i}]")
    filter_shape = tuple(int(f) for f in filter_shape)
    spatial = len(filter_shape)
    strides = (1,) * spatial if strides is None else tuple(strides)
    if len(strides) != spatial:
        raise ValueError(
            f"`strides` must have one entry per spatial axis ({spatial}); got "
            f"{strides!r}."
        )
    for i, st in enumerate(strides):
        check_positive_int(st, f"strides[{i}]")
    if not isinstance(padding, str) or padding.upper() not in _PADDINGS:
        raise ValueError(f"`padding` must be one of {_PADDINGS}; got {padding!r}.")
    padding = padding.upper()
    if dimension_numbers is not None:
        raise ValueError(
            "`dimension_numbers` must be None (channels last: `NWC` / `NHWC`); got "
            f"{dimension_numbers!r}."
        )
    W_std, b_std = check_stds(W_std, b_std)
    parameterization = check_parameterization(parameterization)
    s = check_s(s)
    width = out_chan if parameterization == "ntk" else out_chan * s[1]
    b_var = 0.0 if b_std is None else b_std**2
    letters = "HW"[-spatial:] if spatial == 2 else "W"
    numbers = ("N" + letters + "C", letters + "IO", "N" + letters + "C")

    def check_rank(name, shape):
        if len(shape) != spatial + 2:
            raise ValueError(
                f"`{name}` must have rank {spatial + 2} (batch, {spatial} spatial "
                f"axes, channels) for a filter of shape {filter_shape}; got shape "
                f"{tuple(shape)}."
            )

    def out_shape(shape):
        sizes = tuple(
            _out_size(n, f, st, padding)
            for n, f, st in zip(shape[1:-1], filter_shape, strides)
        )
        for n, size in zip(shape[1:-1], sizes):
            if size < 1:
                raise ValueError(
                    f"The input's spatial shape {tuple(shape[1:-1])} is smaller than "
                    f"`filter_shape` {filter_shape} under 'VALID' padding."
                )
        return (shape[0],) + sizes + (width,)

    def init_fn(rng, input_shape):
        check_rank("input_shape", input_shape)
        in_chan = input_shape[-1]
        wkey, bkey = jr.split(rng)
        W = jr.normal(wkey, filter_shape + (in_chan, width))
        b = None if b_std is None else jr.normal(bkey, (1,) * (spatial + 1) + (width,))
        if parameterization == "standard":
            W = W * (W_std / math.sqrt(in_chan * math.prod(filter_shape) / s[0]))
            b = None if b is None else b * b_std
        return out_shape(input_shape), (W, b)

    def apply_fn(params, inputs, **kwargs):
        check_rank("inputs", inputs.shape)
        W, b = params
        conv_padding = padding
        if padding == "CIRCULAR":
            widths = [(0, 0)] + [
                _pads(n, f, st, "SAME")
                for n, f, st in zip(inputs.shape[1:-1], filter_shape, strides)
            ]
            inputs = jnp.pad(inputs, widths + [(0, 0)], mode="wrap")
            conv_padding = "VALID"
        out = lax.conv_general_dilated(
            inputs,
            W,
            strides,
            conv_padding,
            dimension_numbers=numbers,
            precision=lax.Precision.HIGHEST,
        )
        if parameterization == "ntk":
            fan_in = inputs.shape[-1] * math.prod(filter_shape)
            out = out * (W_std / math.sqrt(fan_in))
            return out if b is None else out + b_std * b
        out = out / math.sqrt(s[0])
        return out if b is None else out + b

    def conv(x, batch_ndim):
        for i, (f, st) in enumerate(zip(filter_shape, strides)):
            x = _conv_pair(x, batch_ndim + 2 * i, f, st, padding)
        return x

    def transform(k: Kernel) -> Kernel:
        check_rank("x1", k.shape1)
        shape1, shape2 = out_shape(k.shape1), out_shape(k.shape2)

        def affine_conv(x):
            batch_ndim = k.batch_ndim if x.ndim == k.nngp.ndim else 1
            return W_std**2 * conv(x, batch_ndim) + b_var

        new = map_covariances(
            k, affine_conv, shape1=shape1, shape2=shape2, is_gaussian=True
        )
        if k.ntk is None:
            return new
        ntk_conv = conv(k.ntk, k.batch_ndim)
        if parameterization == "ntk":
            ntk = new.nngp + W_std**2 * ntk_conv
        else:
            fan_in = k.shape1[-1] * math.prod(filter_shape) / s[0]
            ntk = fan_in * conv(k.nngp, k.batch_ndim) + W_std**2 * ntk_conv
            if b_std is not None:
                ntk = ntk + 1.0
        return replace(new, ntk=ntk)

    return _layer(init_fn, apply_fn, transform)
