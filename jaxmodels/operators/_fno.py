"""Fourier neural operators: spectral convolutions and the FNO in one to three dimensions."""

from collections.abc import Callable, Sequence
from typing import Literal

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Complex, Float, PRNGKeyArray

from .._core import check_positive, check_positive_int


@jax.custom_jvp
def _exact_gelu(x: Array) -> Array:
    # The erf form, `x Phi(x)` with `Phi(x) = (1 + erf(x / sqrt 2)) / 2`, as torch's
    # F.gelu (neuraloperator's default), not the tanh form. Written with `erf` rather
    # than `jax.nn.gelu(approximate=False)`'s `erfc`, which XLA:CPU evaluates about
    # 2.5x slower, and with its derivative `Phi(x) + x phi(x)` given directly.
    return x * _normal_cdf(x)


def _normal_cdf(x: Array) -> Array:
    return 0.5 * (1 + lax.erf(x * np.sqrt(0.5).astype(x.dtype)))


@_exact_gelu.defjvp
def _exact_gelu_jvp(primals, tangents):
    ((x,), (dx,)) = primals, tangents
    cdf = _normal_cdf(x)
    pdf = jnp.exp(-0.5 * x * x) * np.sqrt(0.5 / np.pi).astype(x.dtype)
    return x * cdf, (cdf + x * pdf) * dx


def _check_modes(modes: Sequence[int] | int) -> tuple[int, ...]:
    if isinstance(modes, int):
        modes = (modes,)
    modes = tuple(modes)
    if not 1 <= len(modes) <= 3:
        raise ValueError(
            f"`modes` must give one to three spatial dimensions; got {modes!r}."
        )
    for m in modes:
        check_positive_int(m, "modes")
    return modes


def _kept_sizes(modes: tuple[int, ...]) -> tuple[int, ...]:
    """The weight tensor's mode axes: `m` on full-FFT axes, `m // 2 + 1` on the last."""
    return (*modes[:-1], modes[-1] // 2 + 1)


class _Complex(eqx.Module):
    """A complex parameter stored as its real and imaginary parts, two real arrays.

    `jax.grad` of a real loss with respect to a complex leaf is the *conjugate* of the
    steepest-descent direction, so an optimiser that treats it as a gradient (every
    optax one) climbs along the imaginary parts: measured, `optax.adam` on
    `|z - (1 + i)|^2` from 0 ends at `0.98 - 14.1i`. Stored as two real leaves, the
    parameter gets real gradients that any optimiser (and weight decay) handles
    correctly.
    """

    real: Float[Array, "..."]
    imag: Float[Array, "..."]

    @property
    def value(self) -> Complex[Array, "..."]:
        return lax.complex(self.real, self.imag)


def _complex_normal(key: PRNGKeyArray, shape: tuple[int, ...], std: float) -> _Complex:
    # A complex normal of variance std^2 (real and imaginary parts std / sqrt 2), as
    # torch's `normal_` on a complex tensor.
    z = std * jr.normal(key, shape, jnp.complex64)
    return _Complex(jnp.real(z), jnp.imag(z))


def _uniform(key: PRNGKeyArray, shape: tuple[int, ...], fan_in: int) -> Array:
    bound = fan_in**-0.5
    return jr.uniform(key, shape, minval=-bound, maxval=bound)


# --- the spectral weight ---------------------------------------------------------------


class _DenseWeight(eqx.Module):
    weight: _Complex  # (in, out, *kept)

    def tensor(self) -> Complex[Array, "in out *kept"]:
        return self.weight.value

    def contract(self, x: Complex[Array, " in *kept"]) -> Complex[Array, " out *kept"]:
        return jnp.einsum("i...,io...->o...", x, self.weight.value)


class _CPWeight(eqx.Module):
    rank_weights: _Complex  # (rank,)
    factor_parts: tuple[_Complex, ...]  # (n, rank) each

    @property
    def weights(self) -> Complex[Array, " rank"]:
        return self.rank_weights.value

    @property
    def factors(self) -> tuple[Complex[Array, "_ rank"], ...]:
        return tuple(f.value for f in self.factor_parts)

    def tensor(self) -> Complex[Array, "in out *kept"]:
        factors = self.factors
        letters = "abcdefgh"[: len(factors)]
        operands = ",".join(f"{c}r" for c in letters)
        return jnp.einsum(f"r,{operands}->{letters}", self.weights, *factors)

    def contract(self, x: Complex[Array, " in *kept"]) -> Complex[Array, " out *kept"]:
        # Contract the input with the factors directly, never forming the full tensor
        # ("factorized" in neuraloperator).
        d = x.ndim - 1
        space = "xyz"[:d]
        factors = ",".join(["ir", "or", *(f"{c}r" for c in space)])
        return jnp.einsum(
            f"i{space},r,{factors}->o{space}", x, self.weights, *self.factors
        )


# --- spectral convolution --------------------------------------------------------------


class SpectralConv(eqx.Module):
    """A spectral convolution: a learned multiplier on the lowest Fourier modes.

    The input (one example, channels first, one to three periodic spatial axes) is
    transformed to Fourier coefficients as a real FFT with `norm="forward"` would (so
    the coefficients are those of the underlying periodic function, independent of the
    grid; by default only the kept ones are computed, see `transform`), the lowest modes are
    multiplied by a complex tensor that mixes channels mode by mode, the other modes are
    dropped, and the result is transformed back to the input's grid. The weights belong
    to Fourier modes, not to grid points, so one layer applies at any resolution that
    holds its modes (zero-shot super-resolution). Li et al., "Fourier neural operator
    for parametric partial differential equations" (ICLR 2021).

    `modes = (m1, ..., md)` follows neuraloperator 2.0: `mk` is the number of modes
    kept along axis `k`, the frequencies `-(mk // 2), ..., (mk - 1) // 2` on the full-FFT
    axes, and `0, ..., md // 2` (that is `md // 2 + 1` modes) on the last, real-FFT
    axis. The dense weight has shape `(in_channels, out_channels, m1, ..., md // 2 + 1)`,
    complex64. With `factorisation="cp"` it is a sum of `rank` complex rank-one tensors
    (a CP decomposition, as in Kossaifi et al., "Multi-grid tensorized Fourier neural
    operator for high-resolution PDEs", TMLR 2024), contracted factor by factor.
    """

    weight: _DenseWeight | _CPWeight
    bias: Float[Array, " out"] | None
    in_channels: int = eqx.field(static=True)
    out_channels: int = eqx.field(static=True)
    modes: tuple[int, ...] = eqx.field(static=True)
    transform: str = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        modes: Sequence[int] | int,
        *,
        factorisation: Literal["cp"] | None = None,
        rank: int | None = None,
        use_bias: bool = True,
        transform: Literal["dft", "fft"] = "dft",
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `in_channels`, `out_channels`: the channel counts.
        - `modes`: the number of modes kept along each spatial axis, one to three ints
            (an int for one dimension); see the class docstring.
        - `factorisation`: `None` for a dense weight, `"cp"` for a CP-factorised one.
        - `rank`: the CP rank (number of rank-one terms); only with `"cp"`.
        - `use_bias`: add a learned per-channel constant after the transform.
        - `transform`: how the kept coefficients are computed. `"dft"` (the default):
            truncated DFTs as matrix products, axis by axis, never touching the dropped
            modes, which on CPU is several times faster than `"fft"` (a full real FFT,
            then slicing, then padding and an inverse FFT) when the modes are few
            relative to the grid. The two agree to float rounding.
        - `key`: a JAX random key.

        The weights start complex normal with standard deviation
        `sqrt(2 / (in_channels + out_channels))` (neuraloperator's "auto"); for CP, the
        rank weights start at one and each factor so that the reconstructed tensor has
        that variance.

        **Raises:** `ValueError` for non-positive channel counts or modes, more than
        three spatial axes, an unknown `factorisation`, or a `rank` that is missing
        with `"cp"` or given without it.
        """
        check_positive_int(in_channels, "in_channels")
        check_positive_int(out_channels, "out_channels")
        modes = _check_modes(modes)
        kept = _kept_sizes(modes)
        std = (2 / (in_channels + out_channels)) ** 0.5
        wkey, bkey = jr.split(key)
        shape = (in_channels, out_channels, *kept)
        if factorisation is None:
            if rank is not None:
                raise ValueError("`rank` is only used with `factorisation='cp'`.")
            self.weight = _DenseWeight(_complex_normal(wkey, shape, std))
        elif factorisation == "cp":
            if rank is None:
                raise ValueError("`factorisation='cp'` needs an integer `rank`.")
            check_positive_int(rank, "rank")
            # Each entry is a sum of `rank` products of len(shape) factor entries; this
            # per-factor scale gives the entries variance std^2.
            scale = (std**2 / rank) ** (1 / (2 * len(shape)))
            fkeys = jr.split(wkey, len(shape))
            factors = tuple(
                _complex_normal(k, (n, rank), scale) for k, n in zip(fkeys, shape)
            )
            ones = _Complex(jnp.ones(rank), jnp.zeros(rank))
            self.weight = _CPWeight(ones, factors)
        else:
            raise ValueError(
                f"`factorisation` must be None or 'cp'; got {factorisation!r}."
            )
        self.bias = std * jr.normal(bkey, (out_channels,)) if use_bias else None
        if transform not in ("dft", "fft"):
            raise ValueError(f"`transform` must be 'dft' or 'fft'; got {transform!r}.")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.modes = modes
        self.transform = transform

    def weight_tensor(self) -> Complex[Array, "{self.in_channels} {self.out_channels} *kept"]:  # fmt: skip
        """The full complex weight, `(in_channels, out_channels, *kept_modes)` (for CP,
        reconstructed from its factors)."""
        return self.weight.tensor()

    def check_input(self, shape: tuple[int, ...]) -> None:
        """Check an input shape `(in_channels, *spatial)`.

        **Raises:** `ValueError` for the wrong number of spatial axes or channels, or a
        spatial size smaller than its `modes`.
        """
        d = len(self.modes)
        if len(shape) != d + 1:
            raise ValueError(
                f"The input must have shape (channels, *spatial) with {d} spatial "
                f"axes (as `modes` = {self.modes}); got shape {shape}."
            )
        if shape[0] != self.in_channels:
            raise ValueError(
                f"The input has {shape[0]} channels; `in_channels` is "
                f"{self.in_channels}."
            )
        if any(n < m for n, m in zip(shape[1:], self.modes)):
            raise ValueError(
                f"The spatial shape {shape[1:]} is too coarse for `modes` = "
                f"{self.modes}: each axis needs at least as many points as modes."
            )

    def __call__(
        self,
        x: Float[Array, " {self.in_channels} *spatial"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, " {self.out_channels} *spatial"]:
        """**Arguments:**

        - `x`: one input function on a uniform periodic grid, `(in_channels, *spatial)`.
        - `key`: ignored.

        **Returns:** the output on the same grid, `(out_channels, *spatial)`.

        **Raises:** `ValueError` as `check_input`.
        """
        del key
        self.check_input(x.shape)
        spatial = x.shape[1:]
        if self.transform == "fft":
            axes = tuple(range(1, x.ndim))
            xf = jnp.fft.rfftn(x, axes=axes, norm="forward")
            out = self.weight.contract(_gather(xf, self.modes))
            out = _scatter(out, self.modes, xf.shape[1:])
            y = jnp.fft.irfftn(out, s=spatial, axes=axes, norm="forward")
        else:
            y = _dft_conv(x, self.modes, self.weight.contract)
        if self.bias is not None:
            y = y + self.bias.reshape((-1,) + (1,) * len(spatial))
        return y.astype(x.dtype)


def _dft_matrices(n: int, m: int, last: bool):
    """NumPy (float64) matrices of the truncated DFT along one axis of `n` points.

    Full axes: `(forward, inverse)` complex, `forward[k, j] = exp(-2 pi i f_k j / n) / n`
    for the kept frequencies `f`, `inverse[j, k] = exp(2 pi i f_k j / n)`. The last,
    real axis: `forward` real `(n, 2K)`, cosines then minus sines over `n`, giving
    the real and imaginary parts of frequencies `0..K-1`; `inverse` real `(2K, n)`
    with the real-FFT inverse's weights (2 for a frequency that stands for a conjugate
    pair, 1 for zero and Nyquist).
    """
    j = np.arange(n)
    if not last:
        f = np.arange(-(m // 2), m - m // 2)
        phase = 2 * np.pi * np.outer(f, j) / n
        return np.exp(-1j * phase) / n, np.exp(1j * phase).T
    f = np.arange(m // 2 + 1)
    phase = 2 * np.pi * np.outer(j, f) / n
    forward = np.concatenate([np.cos(phase), -np.sin(phase)], axis=1) / n
    weight = np.where((f == 0) | (2 * f == n), 1.0, 2.0)
    inverse = np.concatenate(
        [weight * np.cos(phase), -weight * np.sin(phase)], axis=1
    ).T
    return forward, inverse


def _dft_conv(x: Array, modes: tuple[int, ...], contract: Callable) -> Array:
    """The spectral convolution with truncated DFTs as matrix products."""
    d = len(modes)
    spatial = x.shape[1:]
    real = jnp.float32 if x.dtype != jnp.float64 else jnp.float64
    cplx = jnp.complex64 if real == jnp.float32 else jnp.complex128
    mats = [_dft_matrices(n, m, ax == d - 1) for ax, (n, m) in enumerate(zip(spatial, modes))]  # fmt: skip
    letters = "xyz"[:d]
    # Last (real) axis first: real input to real and imaginary parts.
    fwd_last, inv_last = mats[-1]
    k = modes[-1] // 2 + 1
    z = jnp.tensordot(x, jnp.asarray(fwd_last, real), axes=1)
    z = lax.complex(z[..., :k], z[..., k:])
    for ax in range(d - 1):
        src = "c" + letters
        dst = src.replace(letters[ax], "f")
        z = jnp.einsum(f"{src},f{letters[ax]}->{dst}", z, jnp.asarray(mats[ax][0], cplx))  # fmt: skip
    z = contract(z)
    for ax in range(d - 1):
        dst = "c" + letters
        src = dst.replace(letters[ax], "f")
        z = jnp.einsum(f"{src},{letters[ax]}f->{dst}", z, jnp.asarray(mats[ax][1], cplx))  # fmt: skip
    z = jnp.concatenate([jnp.real(z), jnp.imag(z)], axis=-1)
    return jnp.tensordot(z, jnp.asarray(inv_last, real), axes=1)


def _gather(xf: Array, modes: tuple[int, ...]) -> Array:
    """The kept coefficients, negative frequencies first on each full-FFT axis."""
    for ax, m in enumerate(modes[:-1], start=1):
        neg, pos = m // 2, m - m // 2
        lo = lax.slice_in_dim(xf, 0, pos, axis=ax)
        if neg:
            hi = lax.slice_in_dim(xf, xf.shape[ax] - neg, xf.shape[ax], axis=ax)
            lo = jnp.concatenate([hi, lo], axis=ax)
        xf = lo
    return lax.slice_in_dim(xf, 0, modes[-1] // 2 + 1, axis=xf.ndim - 1)


def _scatter(out: Array, modes: tuple[int, ...], full: tuple[int, ...]) -> Array:
    """Put the kept coefficients back into a zero spectrum of shape `(c, *full)`."""
    last = out.ndim - 1
    pad = [(0, 0)] * out.ndim
    pad[last] = (0, full[-1] - out.shape[last])
    out = jnp.pad(out, pad)
    for ax, m in enumerate(modes[:-1], start=1):
        neg = m // 2
        n = full[ax - 1]
        pos = lax.slice_in_dim(out, neg, m, axis=ax)
        neg_part = lax.slice_in_dim(out, 0, neg, axis=ax)
        shape = list(out.shape)
        shape[ax] = n - m
        zeros = jnp.zeros(shape, out.dtype)
        out = jnp.concatenate([pos, zeros, neg_part], axis=ax)
    return out


# --- the FNO -------------------------------------------------------------------------


class _ChannelLinear(eqx.Module):
    """A pointwise linear map over the last (channel) axis (a 1x1 convolution).

    Inside the FNO the hidden function is stored channels-last, `(*spatial, c)`: the
    channel maps are then plain matrix products over all points (and the batch, under
    vmap), which XLA:CPU runs as one GEMM; channels-first, the same maps (and above
    all their gradients) ran several times slower.
    """

    weight: Float[Array, "out in"]
    bias: Float[Array, " out"] | None

    def __init__(self, n_in: int, n_out: int, *, use_bias: bool, key: PRNGKeyArray):
        # torch's Conv1d initialisation: uniform in +-1/sqrt(fan_in).
        wkey, bkey = jr.split(key)
        self.weight = _uniform(wkey, (n_out, n_in), n_in)
        self.bias = _uniform(bkey, (n_out,), n_in) if use_bias else None

    def __call__(self, x: Array) -> Array:
        y = x @ self.weight.T
        if self.bias is None:
            return y
        return y + self.bias.reshape((1,) * (x.ndim - 1) + (-1,))


class _ChannelMLP(eqx.Module):
    first: _ChannelLinear
    second: _ChannelLinear

    def __init__(self, n_in: int, hidden: int, n_out: int, *, key: PRNGKeyArray):
        k1, k2 = jr.split(key)
        self.first = _ChannelLinear(n_in, hidden, use_bias=True, key=k1)
        self.second = _ChannelLinear(hidden, n_out, use_bias=True, key=k2)

    def __call__(self, x: Array, activation: Callable) -> Array:
        return self.second(activation(self.first(x)))


class _FNOBlock(eqx.Module):
    conv: SpectralConv
    skip: _ChannelLinear
    mlp: _ChannelMLP | None
    gate: Float[Array, " width"] | None

    def __init__(
        self,
        width: int,
        modes: tuple[int, ...],
        *,
        channel_mlp: bool,
        expansion: float,
        factorisation: Literal["cp"] | None,
        rank: int | None,
        transform: Literal["dft", "fft"],
        key: PRNGKeyArray,
    ):
        ckey, skey, mkey = jr.split(key, 3)
        self.conv = SpectralConv(
            width,
            width,
            modes,
            factorisation=factorisation,
            rank=rank,
            transform=transform,
            key=ckey,
        )
        self.skip = _ChannelLinear(width, width, use_bias=False, key=skey)
        if channel_mlp:
            hidden = max(1, round(width * expansion))
            self.mlp = _ChannelMLP(width, hidden, width, key=mkey)
            self.gate = jnp.ones(width)
        else:
            self.mlp = None
            self.gate = None

    def __call__(self, x: Array, last: Array, activation: Callable) -> Array:
        def act(y):
            # neuraloperator applies no activation after the last block.
            return jnp.where(last, y, activation(y))

        # `x` is channels-last; the spectral convolution takes channels first.
        conv = jnp.moveaxis(self.conv(jnp.moveaxis(x, -1, 0)), 0, -1)
        y = act(conv + self.skip(x))
        if self.mlp is not None and self.gate is not None:
            gate = self.gate.reshape((1,) * (x.ndim - 1) + (-1,))
            y = act(self.mlp(y, activation) + gate * x)
        return y


class FNO(eqx.Module):
    """A Fourier neural operator in one, two or three dimensions.

    Grid coordinates are appended to the input, a channel MLP lifts it to `width`
    channels, `depth` Fourier blocks act on it, and a channel MLP projects to the output
    channels. Each block is a spectral convolution plus a linear skip, then (by default)
    a channel MLP with a soft-gated skip, GELU after each half except in the last block.
    This is neuraloperator 2.0's `FNO` with its defaults, parameter for parameter
    (neuraloperator's 2-D FNO with 12x12 modes, width 32 and 4 layers has 357217
    parameters, and so does this one, a complex weight counting once; each complex
    weight is stored as two real arrays, so that `jax.grad` and any optax optimiser
    descend along it). With
    `channel_mlp=False` a block is the original paper's `sigma(W v + K v)`. Li et al.,
    "Fourier neural operator for parametric partial differential equations" (ICLR 2021);
    Kovachki et al., "Neural operator: learning maps between function spaces" (JMLR
    2023).

    The blocks are stacked at construction and run with `lax.scan`, so compilation
    time does not grow with `depth`. The input is one function on a uniform grid of the
    unit cube, `(in_channels, *spatial)`, periodic for the spectral convolutions; any
    resolution with at least `modes[k]` points along axis `k` is accepted, the same
    weights at every resolution.
    """

    lifting: _ChannelMLP
    blocks: _FNOBlock
    projection: _ChannelMLP
    activation: Callable
    in_channels: int = eqx.field(static=True)
    out_channels: int = eqx.field(static=True)
    modes: tuple[int, ...] = eqx.field(static=True)
    width: int = eqx.field(static=True)
    depth: int = eqx.field(static=True)
    positional_embedding: bool = eqx.field(static=True)
    domain_padding: float = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        modes: Sequence[int] | int,
        width: int,
        depth: int = 4,
        lifting_ratio: float = 2,
        projection_ratio: float = 2,
        channel_mlp: bool = True,
        channel_mlp_expansion: float = 0.5,
        positional_embedding: bool = True,
        domain_padding: float = 0.0,
        factorisation: Literal["cp"] | None = None,
        rank: int | None = None,
        transform: Literal["dft", "fft"] = "dft",
        activation: Callable = _exact_gelu,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `in_channels`, `out_channels`: channels of the input and output functions.
        - `modes`: Fourier modes kept per spatial axis (see
            [`jaxmodels.operators.SpectralConv`][]); its length is the dimension.
        - `width`: the hidden channels.
        - `depth`: the number of Fourier blocks.
        - `lifting_ratio`, `projection_ratio`: the hidden size of the lifting and
            projection MLPs, as a multiple of `width`.
        - `channel_mlp`: whether each block has neuraloperator's channel MLP (the
            default) or is the original paper's `sigma(W v + K v)`.
        - `channel_mlp_expansion`: the channel MLP's hidden size over `width`.
        - `positional_embedding`: append the grid coordinates `i / n` per axis to the
            input.
        - `domain_padding`: for non-periodic problems, zero-pad the lifted function by
            `round(domain_padding * n)` points on both ends of each axis before the
            Fourier blocks and crop after them (neuraloperator's `domain_padding`), so
            that the spectral convolutions do not wrap one boundary onto the other.
        - `factorisation`, `rank`, `transform`: CP-factorised spectral weights and
            how the Fourier coefficients are computed (see
            [`jaxmodels.operators.SpectralConv`][]).
        - `activation`: the nonlinearity; default exact (erf) GELU.
        - `key`: a JAX random key.

        **Raises:** `ValueError` for non-positive sizes, ratios or modes, or as
        [`jaxmodels.operators.SpectralConv`][] for `factorisation` and `rank`.
        """
        check_positive_int(in_channels, "in_channels")
        check_positive_int(out_channels, "out_channels")
        check_positive_int(width, "width")
        check_positive_int(depth, "depth")
        check_positive(lifting_ratio, "lifting_ratio")
        check_positive(projection_ratio, "projection_ratio")
        check_positive(channel_mlp_expansion, "channel_mlp_expansion")
        if not 0 <= domain_padding < 1:
            raise ValueError(
                f"`domain_padding` must be in [0, 1); got {domain_padding!r}."
            )
        modes = _check_modes(modes)
        d = len(modes)
        lkey, bkey, pkey = jr.split(key, 3)
        n_in = in_channels + (d if positional_embedding else 0)
        make = lambda k: _FNOBlock(  # noqa: E731
            width,
            modes,
            channel_mlp=channel_mlp,
            expansion=channel_mlp_expansion,
            factorisation=factorisation,
            rank=rank,
            transform=transform,
            key=k,
        )

        def build(lkey, bkey, pkey):
            lifting = _ChannelMLP(n_in, int(lifting_ratio * width), width, key=lkey)
            blocks = eqx.filter_vmap(make)(jr.split(bkey, depth))
            projection = _ChannelMLP(
                width, int(projection_ratio * width), out_channels, key=pkey
            )
            return lifting, blocks, projection

        # One compiled initialiser: run eagerly, every random draw of a new shape
        # compiled a kernel of its own (40 of them, 10 s or more on a CPU).
        self.lifting, self.blocks, self.projection = eqx.filter_jit(build)(
            lkey, bkey, pkey
        )
        self.activation = activation
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.modes = modes
        self.width = width
        self.depth = depth
        self.positional_embedding = positional_embedding
        self.domain_padding = float(domain_padding)

    def __call__(
        self,
        x: Float[Array, " {self.in_channels} *spatial"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, " {self.out_channels} *spatial"]:
        """**Arguments:**

        - `x`: one input function, `(in_channels, *spatial)`, on the grid
            `x_i = i / n` along each axis.
        - `key`: ignored.

        **Returns:** the output function on the same grid, `(out_channels, *spatial)`.

        **Raises:** `ValueError` for the wrong number of channels or spatial axes, or a
        grid coarser than `modes`.
        """
        del key
        d = len(self.modes)
        if x.ndim != d + 1:
            raise ValueError(
                f"`x` must have shape (in_channels, *spatial) with {d} spatial axes "
                f"(as `modes` = {self.modes}); got shape {x.shape}."
            )
        if x.shape[0] != self.in_channels:
            raise ValueError(
                f"`x` has {x.shape[0]} channels; `in_channels` is {self.in_channels}."
            )
        spatial = x.shape[1:]
        if any(n < m for n, m in zip(spatial, self.modes)):
            raise ValueError(
                f"The grid {spatial} of `x` is too coarse for `modes` = "
                f"{self.modes}: each axis needs at least as many points as modes."
            )
        x = jnp.moveaxis(x, 0, -1)
        if self.positional_embedding:
            coords = [jnp.arange(n, dtype=x.dtype) / n for n in spatial]
            grid = jnp.stack(jnp.meshgrid(*coords, indexing="ij"), axis=-1)
            x = jnp.concatenate([x, grid.astype(x.dtype)], axis=-1)
        h = self.lifting(x, self.activation)
        pads = [round(self.domain_padding * n) for n in spatial]
        h = jnp.pad(h, [(p, p) for p in pads] + [(0, 0)])
        dynamic, static = eqx.partition(self.blocks, eqx.is_array)
        last = jnp.arange(self.depth) == self.depth - 1

        def body(h, xs):
            params, is_last = xs
            block = eqx.combine(params, static)
            return block(h, is_last, self.activation), None

        h, _ = lax.scan(body, h, (dynamic, last))
        h = h[tuple(slice(p, p + n) for p, n in zip(pads, spatial))]
        return jnp.moveaxis(self.projection(h, self.activation), -1, 0)
