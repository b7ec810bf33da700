"""From a convolutional network to a discretisation-consistent neural operator."""

import math
from collections.abc import Callable, Sequence

import equinox as eqx
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray


_PAD_MODES = {
    "ZEROS": "constant",
    "CIRCULAR": "wrap",
    "REFLECT": "reflect",
    "REPLICATE": "edge",
}


def _int_tuple(value: int | Sequence[int], n: int, name: str) -> tuple[int, ...]:
    out = (value,) * n if isinstance(value, int) else tuple(value)
    if len(out) != n or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in out
    ):
        raise ValueError(
            f"`{name}` must be a positive int or {n} positive ints, got {value!r}."
        )
    return out


def _interpolation(
    size: int, offset: int, reference: int, resolution: int
) -> tuple[np.ndarray, int]:
    """The hat-function interpolation of one kernel axis onto a grid of `resolution`.

    Node `j` of the kernel sits at `(j - offset) / reference`; tap `l` of the new grid
    at `l / resolution`. Returns the matrix `P[l - first, j] = phi((l / resolution -
    (j - offset) / reference) * reference)` (with `phi` the hat function of width one)
    times the ratio of quadrature weights `reference / resolution`, and `first`, the
    offset of the first tap. Integer arithmetic keeps the support exact.
    """
    if size == 1:
        # A kernel of size one acts pointwise (a delta, not a hat): it stays as it is.
        return np.ones((1, 1)), 0
    first = (-offset - 1) * resolution // reference + 1
    last = -((-(size - offset) * resolution) // reference) - 1
    taps = np.arange(first, last + 1)[:, None] * reference
    nodes = (np.arange(size) - offset)[None, :] * resolution
    hats = np.maximum(0.0, 1.0 - np.abs(taps - nodes) / resolution)
    return hats * (reference / resolution), first


class IntegralConv(eqx.Module):
    """A convolution defined as an integral operator, evaluable at any resolution.

    The layer is `(K u)(x) = integral kappa(z) u(x + z) dz + bias` on the unit domain
    `[0, 1)^d`, sampled on the grid `x_i = i / N` (per axis). The kernel `kappa` is a
    continuous function on a fixed physical support: the piecewise-(multi)linear
    interpolant of its values at the `kernel_size` nodes `z_j = (j - offset) / N_ref`,
    `N_ref` being `reference_resolution`. At resolution `N` the layer evaluates
    `kappa` at the grid's offsets `l / N` and sums with the quadrature weight `N^-d`,
    so the same parameters define the same operator at every resolution, and the
    outputs converge as the grid is refined (second order in `1 / N` for smooth
    inputs and circular padding; the boundary of zero, reflect or replicate padding
    costs a first-order term). `weight` holds `N_ref^-d kappa(z_j)`, so at the
    reference resolution this is exactly `eqx.nn.Conv` with that weight (with
    `'SAME'` padding). An axis with kernel size one is pointwise at every resolution.
    This is the recipe of Berner, Liu-Schiaffini, Kossaifi, Duruisseaux, Bonev,
    Azizzadenesheli and Anandkumar, "Principled approaches for extending neural
    architectures to function spaces for operator learning" (2025).

    `padding_mode` extends the function outside the domain: `'CIRCULAR'` (periodic),
    `'ZEROS'`, `'REFLECT'` or `'REPLICATE'`, as in `eqx.nn.Conv`.
    """

    weight: Float[Array, "out in_per_group *kernel"]
    bias: Float[Array, " out *ones"] | None
    num_spatial_dims: int = eqx.field(static=True)
    in_channels: int = eqx.field(static=True)
    out_channels: int = eqx.field(static=True)
    kernel_size: tuple[int, ...] = eqx.field(static=True)
    reference_resolution: tuple[int, ...] = eqx.field(static=True)
    offset: tuple[int, ...] = eqx.field(static=True)
    padding_mode: str = eqx.field(static=True)
    groups: int = eqx.field(static=True)

    def __init__(
        self,
        num_spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        *,
        reference_resolution: int | Sequence[int],
        padding_mode: str = "CIRCULAR",
        offset: int | Sequence[int] | None = None,
        use_bias: bool = True,
        groups: int = 1,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `num_spatial_dims`: the dimension `d` of the domain.
        - `in_channels`, `out_channels`: the channel counts.
        - `kernel_size`: the number of kernel nodes per axis (an int or `d` ints).
        - `reference_resolution`: the grid size `N_ref` (an int or `d` ints) at which
            the nodes are one grid step apart; the kernel's physical support is
            `kernel_size + 1` steps of that grid.
        - `padding_mode`: `'CIRCULAR'` (the default), `'ZEROS'`, `'REFLECT'` or
            `'REPLICATE'`.
        - `offset`: the index of the node at offset zero per axis; the default
            `(kernel_size - 1) // 2` is `eqx.nn.Conv`'s `padding='SAME'`.
        - `use_bias`: whether to add a bias.
        - `groups`: channel groups, as in `eqx.nn.Conv`.
        - `key`: a JAX random key; the weight and bias start as in `eqx.nn.Conv`.

        **Raises:** `ValueError` for a non-positive size, an unknown `padding_mode`,
        an `offset` outside the kernel, or channels not divisible by `groups`.
        """
        if num_spatial_dims not in (1, 2, 3):
            raise ValueError(
                f"`num_spatial_dims` must be 1, 2 or 3, got {num_spatial_dims!r}."
            )
        d = num_spatial_dims
        kernel_size = _int_tuple(kernel_size, d, "kernel_size")
        reference_resolution = _int_tuple(
            reference_resolution, d, "reference_resolution"
        )
        if offset is None:
            offset = tuple((k - 1) // 2 for k in kernel_size)
        else:
            offset = (offset,) * d if isinstance(offset, int) else tuple(offset)
            if len(offset) != d or not all(
                0 <= o < k for o, k in zip(offset, kernel_size)
            ):
                raise ValueError(
                    f"`offset` must be {d} ints in [0, kernel_size), got {offset!r}."
                )
        if padding_mode.upper() not in _PAD_MODES:
            raise ValueError(
                f"`padding_mode` must be one of {sorted(_PAD_MODES)}, got "
                f"{padding_mode!r}."
            )
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):  # fmt: skip
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"`in_channels` ({in_channels}) and `out_channels` ({out_channels}) "
                f"must be divisible by `groups` ({groups})."
            )
        wkey, bkey = jr.split(key)
        fan_in = in_channels // groups * math.prod(kernel_size)
        lim = fan_in**-0.5
        shape = (out_channels, in_channels // groups) + kernel_size
        self.weight = jr.uniform(wkey, shape, minval=-lim, maxval=lim)
        self.bias = (
            jr.uniform(bkey, (out_channels,) + (1,) * d, minval=-lim, maxval=lim)
            if use_bias
            else None
        )
        self.num_spatial_dims = d
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.reference_resolution = reference_resolution
        self.offset = offset
        self.padding_mode = padding_mode.upper()
        self.groups = groups

    def kernel_at(
        self, resolution: int | Sequence[int]
    ) -> tuple[Float[Array, "out in_per_group *taps"], tuple[int, ...]]:
        """The discrete kernel at a resolution: `N^-d kappa(l / N)` on every offset
        `l / N` of the kernel's support.

        **Arguments:**

        - `resolution`: the grid size `N` (an int or `d` ints).

        **Returns:** the kernel, shape `(out_channels, in_channels / groups, *taps)`, and
        per axis the (non-positive) grid offset `first` of its first tap: output `i`
        sums kernel tap `t` times input `i + first + t`.

        **Raises:** `ValueError` for a non-positive resolution.
        """
        resolution = _int_tuple(resolution, self.num_spatial_dims, "resolution")
        weight, firsts = self.weight, []
        for axis, (k, o, ref, n) in enumerate(
            zip(self.kernel_size, self.offset, self.reference_resolution, resolution)
        ):
            matrix, first = _interpolation(k, o, ref, n)
            matrix = jnp.asarray(matrix, weight.dtype)
            weight = jnp.moveaxis(
                jnp.tensordot(weight, matrix, axes=((2 + axis,), (1,))), -1, 2 + axis
            )
            firsts.append(first)
        return weight, tuple(firsts)

    def __call__(
        self,
        x: Float[Array, " {self.in_channels} *grid"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, " {self.out_channels} *grid"]:
        """**Arguments:**

        - `x`: the input function on the grid `i / N` of `[0, 1)^d`, shape
            `(in_channels, N_1, ..., N_d)`, at any resolution.
        - `key`: unused; for the uniform model signature.

        **Returns:** the output function on the same grid, shape
        `(out_channels, N_1, ..., N_d)`.

        **Raises:** `ValueError` if `x` does not have `in_channels` channels and
        `num_spatial_dims` spatial axes.
        """
        del key
        if x.ndim != 1 + self.num_spatial_dims or x.shape[0] != self.in_channels:
            raise ValueError(
                f"`x` must have shape (in_channels={self.in_channels}, *grid) with "
                f"{self.num_spatial_dims} spatial axes, got {x.shape}."
            )
        weight, firsts = self.kernel_at(x.shape[1:])
        taps = weight.shape[2:]
        pads = [(0, 0)] + [(-f, t - 1 + f) for f, t in zip(firsts, taps)]
        x = jnp.pad(x, pads, mode=_PAD_MODES[self.padding_mode])
        out = lax.conv_general_dilated(
            x[None],
            weight,
            window_strides=(1,) * self.num_spatial_dims,
            padding="VALID",
            feature_group_count=self.groups,
        )[0]
        return out if self.bias is None else out + self.bias


class GlobalMeanPool(eqx.Module):
    """The mean over all spatial axes: shape `(channels, *grid)` to `(channels,)`.

    The rectangle rule for `integral_{[0, 1)^d} u(x) dx`, so it means the same at every
    resolution; use it in a CNN (in `eqx.nn.Sequential`) in place of flattening, before
    the dense head, to make the CNN convertible by
    [`jaxmodels.operators.to_operator`][].
    """

    def __call__(
        self, x: Float[Array, " channels *grid"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, " channels"]:
        del key
        if x.ndim < 2:
            raise ValueError(
                f"`x` must have shape (channels, *grid) with at least one spatial "
                f"axis, got {x.shape}."
            )
        return jnp.mean(x, axis=tuple(range(1, x.ndim)))


class DiscretisationConsistentCNN(eqx.Module):
    """A CNN turned into a neural operator: the same layers, with each convolution an
    [`jaxmodels.operators.IntegralConv`][], so that it accepts a function sampled at
    any resolution and its outputs converge under refinement.

    Built by [`jaxmodels.operators.to_operator`][]. Pointwise layers (activations as
    `eqx.nn.Lambda`, kernel-size-one convolutions) are unchanged; a global mean pool
    is the integral over the domain; dense layers after it act on a fixed-size vector.
    """

    layers: tuple[Callable, ...]
    num_spatial_dims: int = eqx.field(static=True)
    in_channels: int = eqx.field(static=True)

    def __init__(
        self, layers: Sequence[Callable], num_spatial_dims: int, in_channels: int
    ):
        """**Arguments:**

        - `layers`: the layers, applied in order.
        - `num_spatial_dims`: the dimension of the domain.
        - `in_channels`: the number of input channels.
        """
        self.layers = tuple(layers)
        self.num_spatial_dims = num_spatial_dims
        self.in_channels = in_channels

    def __call__(
        self,
        x: Float[Array, " {self.in_channels} *grid"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "..."]:
        """**Arguments:**

        - `x`: the input function on the grid `i / N` of `[0, 1)^d`, shape
            `(in_channels, N_1, ..., N_d)`, at any resolution.
        - `key`: unused; for the uniform model signature.

        **Returns:** what the CNN returns: a function on the same grid, or after a
        global pool a vector.

        **Raises:** `ValueError` if `x` has the wrong channels or spatial axes.
        """
        del key
        if x.ndim != 1 + self.num_spatial_dims or x.shape[0] != self.in_channels:
            raise ValueError(
                f"`x` must have shape (in_channels={self.in_channels}, *grid) with "
                f"{self.num_spatial_dims} spatial axes, got {x.shape}."
            )
        for layer in self.layers:
            x = layer(x)
        return x


def _flatten(model: Callable) -> list[Callable]:
    if isinstance(model, eqx.nn.Sequential):
        return [leaf for layer in model.layers for leaf in _flatten(layer)]
    return [model]


def _same_offset(conv: eqx.nn.Conv) -> tuple[int, ...]:
    """The `IntegralConv` offset of an `eqx.nn.Conv` whose output has its input's size."""
    d = conv.num_spatial_dims
    if isinstance(conv.padding, str):
        if conv.padding == "SAME":
            return tuple((k - 1) // 2 for k in conv.kernel_size)
        if conv.padding == "SAME_LOWER":
            return tuple(k - 1 - (k - 1) // 2 for k in conv.kernel_size)
        pads = ((0, 0),) * d
    else:
        pads = conv.padding
    if any(lo + hi != k - 1 for (lo, hi), k in zip(pads, conv.kernel_size)):
        raise ValueError(
            "`model` has an `eqx.nn.Conv` whose padding does not keep the grid's size "
            f"(padding={conv.padding!r}, kernel_size={conv.kernel_size}); only "
            "'SAME' (or an explicit padding summing to kernel_size - 1) is supported."
        )
    return tuple(lo for lo, _ in pads)


def _convert_conv(
    conv: eqx.nn.Conv, reference_resolution: tuple[int, ...]
) -> IntegralConv:
    if any(s != 1 for s in conv.stride):
        raise ValueError(
            f"`model` has an `eqx.nn.Conv` with stride {conv.stride}; a strided "
            "convolution is tied to the grid, only stride 1 is supported."
        )
    if any(r != 1 for r in conv.dilation):
        raise ValueError(
            f"`model` has an `eqx.nn.Conv` with dilation {conv.dilation}; only "
            "dilation 1 is supported."
        )
    offset = _same_offset(conv)
    # Only the structure: the parameters are the convolution's own.
    layer = eqx.filter_eval_shape(
        IntegralConv,
        conv.num_spatial_dims,
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        reference_resolution=reference_resolution,
        padding_mode=conv.padding_mode,
        offset=offset,
        use_bias=conv.use_bias,
        groups=conv.groups,
        key=jr.key(0),
    )
    return eqx.tree_at(
        lambda c: (c.weight, c.bias),
        layer,
        (conv.weight, conv.bias),
        is_leaf=lambda x: x is None,
    )


def _is_global_pool(layer: Callable) -> bool:
    if isinstance(layer, GlobalMeanPool):
        return True
    return isinstance(
        layer,
        (eqx.nn.AdaptiveAvgPool1d, eqx.nn.AdaptiveAvgPool2d, eqx.nn.AdaptiveAvgPool3d),
    ) and all(t == 1 for t in layer.target_shape)


def to_operator(
    model: Callable, *, reference_resolution: int | Sequence[int]
) -> DiscretisationConsistentCNN:
    """Convert a convolutional network into a discretisation-consistent neural operator.

    Each convolution is replaced by its function-space counterpart, an
    [`jaxmodels.operators.IntegralConv`][] with the same parameters: the kernel becomes a
    continuous function on the physical support it has at `reference_resolution`,
    interpolated at the offsets of whatever grid the input comes on and summed with the
    quadrature weight `N^-d`. Activations stay (they are pointwise), as do kernel-size-
    one convolutions; a global mean pool is the integral over the domain; dense layers
    after it are unchanged. At `reference_resolution` the operator reproduces the CNN
    (to rounding); at other resolutions it approximates one operator between function
    spaces, where the plain CNN's receptive field would shrink or grow with the grid.
    Berner et al., "Principled approaches for extending neural architectures to
    function spaces for operator learning" (2025).

    Supported layers, in an `eqx.nn.Sequential` (nested ones are flattened):
    `eqx.nn.Conv` / `Conv1d` / `Conv2d` / `Conv3d` with stride 1, dilation 1 and
    'SAME' padding (any kernel size, any padding mode); `eqx.nn.Lambda` (assumed
    pointwise, such as an activation) and `eqx.nn.Identity`; a global mean pool
    ([`jaxmodels.operators.GlobalMeanPool`][] or an `eqx.nn.AdaptiveAvgPool*d` to
    shape one); and `eqx.nn.Linear` after that pool.

    **Arguments:**

    - `model`: an `eqx.nn.Sequential` (or a single convolution).
    - `reference_resolution`: the grid size (an int, or one per spatial axis) the CNN
        was designed for, on the unit domain `[0, 1)^d`.

    **Returns:** a [`jaxmodels.operators.DiscretisationConsistentCNN`][].

    **Raises:** `ValueError` naming an unsupported layer type (or convolution setting),
    a dense layer before the global pool, a convolution after it, convolutions of
    different dimensions, or a model without a convolution.
    """
    layers = _flatten(model)
    convs = [layer for layer in layers if isinstance(layer, eqx.nn.Conv)]
    if not convs:
        raise ValueError("`model` has no `eqx.nn.Conv` layer to convert.")
    d = convs[0].num_spatial_dims
    if any(c.num_spatial_dims != d for c in convs):
        raise ValueError("`model` mixes convolutions of different dimensions.")
    reference = _int_tuple(reference_resolution, d, "reference_resolution")
    out, pooled = [], False
    for layer in layers:
        name = f"{type(layer).__module__}.{type(layer).__qualname__}"
        if isinstance(layer, eqx.nn.Conv):
            if pooled:
                raise ValueError(
                    "`model` has an `eqx.nn.Conv` after the global pool; convolutions "
                    "must act on the function, before pooling."
                )
            out.append(_convert_conv(layer, reference))
        elif isinstance(layer, (eqx.nn.Lambda, eqx.nn.Identity)):
            out.append(layer)
        elif _is_global_pool(layer):
            if pooled:
                raise ValueError("`model` pools over space twice.")
            pooled = True
            out.append(layer)
        elif isinstance(layer, eqx.nn.Linear):
            if not pooled:
                raise ValueError(
                    "`model` has an `eqx.nn.Linear` before a global pool: a dense layer "
                    "on a flattened grid is tied to its resolution. Put a "
                    "`GlobalMeanPool` (the integral over the domain) before it."
                )
            out.append(layer)
        else:
            raise ValueError(
                f"`model` has a layer of unsupported type {name}; supported: "
                "eqx.nn.Conv (stride 1, 'SAME' padding), eqx.nn.Lambda (pointwise), "
                "eqx.nn.Identity, GlobalMeanPool / AdaptiveAvgPool to shape 1, and "
                "eqx.nn.Linear after the pool."
            )
    return DiscretisationConsistentCNN(out, d, convs[0].in_channels)
