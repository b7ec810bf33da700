"""MgNO: neural operator layers whose linear maps are multigrid V-cycles."""

import functools as ft
import math
from collections.abc import Callable
from typing import Literal

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from .._core import check_positive_int, tree_size


Boundary = Literal["dirichlet", "neumann", "periodic"]

# How each boundary condition enters: the padding of every convolution. Neumann uses
# even reflection about the boundary node (the ghost value u[-1] = u[1] of a centred
# zero-derivative condition), PyTorch's "reflect".
_PAD_MODES = {"dirichlet": "constant", "neumann": "reflect", "periodic": "wrap"}


def _check_boundary(boundary: str) -> None:
    if boundary not in _PAD_MODES:
        raise ValueError(
            "`boundary` must be 'dirichlet' (zero padding), 'neumann' (reflect "
            f"padding) or 'periodic' (circular padding); got {boundary!r}."
        )


def _check_dims(num_spatial_dims: int) -> None:
    if num_spatial_dims not in (1, 2) or isinstance(num_spatial_dims, bool):
        raise ValueError(
            f"`num_spatial_dims` must be 1 or 2; got {num_spatial_dims!r}."
        )


def _pad(u: Array, boundary: str) -> Array:
    """Pad every spatial axis of a channels-first `u` by one cell, as `boundary` says."""
    return jnp.pad(u, [(0, 0)] + [(1, 1)] * (u.ndim - 1), mode=_PAD_MODES[boundary])


# Per boundary condition, `delta`: a grid of `n` points per axis is coarsened to
# `(n + delta) / 2 - delta` points, the coarse points being the fine points
# `offset, offset + 2, ...`. This is vertex-centred multigrid on a node grid of `2**k`
# cells: Dirichlet keeps the `2**k - 1` interior nodes (the boundary values are the zero
# padding), Neumann all `2**k + 1` nodes, periodic the `2**k` nodes of one period; the
# coarse grid is every other node, so its boundary is the fine grid's boundary.
_DELTA = {"dirichlet": 1, "neumann": -1, "periodic": 0}
_OFFSET = {"dirichlet": 1, "neumann": 0, "periodic": 0}


def _conv(u: Array, weight: Array, boundary: str) -> Array:
    """A 3-point (3x3) cross-correlation of a channels-first `u` with the boundary's
    padding."""
    out = lax.conv_general_dilated(
        _pad(u, boundary)[None], weight, (1,) * (u.ndim - 1), "VALID"
    )
    return out[0]


def _restrict(u: Array, weight: Array, boundary: str) -> Array:
    """A stride-2 3-point (3x3) convolution centred on the coarse points."""
    d = u.ndim - 1
    o = _OFFSET[boundary]
    padded = _pad(u, boundary)[(slice(None),) + (slice(o, None),) * d]
    return lax.conv_general_dilated(padded[None], weight, (2,) * d, "VALID")[0]


def _prolong(u: Array, weight: Array, boundary: str, shape: tuple[int, ...]) -> Array:
    """A stride-2 transposed convolution onto the fine grid of spatial `shape`: coarse
    point `i` is put at its fine point, zeros in between, then a 3-point (3x3)
    convolution with the boundary's padding fills the gaps (with weights
    `[1/2, 1, 1/2]`: linear interpolation)."""
    o = _OFFSET[boundary]
    # Interior padding inserts the zeros (its transpose, in the backward pass, is a
    # strided slice; a scatter was much slower on CPU).
    config = [(0, 0, 0)] + [
        (o, n - (2 * m - 1) - o, 1) for n, m in zip(shape, u.shape[1:])
    ]
    fine = lax.pad(u, jnp.zeros((), u.dtype), config)
    return _conv(fine, weight, boundary)


@ft.partial(jax.jit, static_argnums=1)
def _init(
    key: PRNGKeyArray, specs: tuple[tuple[tuple[int, ...], int], ...]
) -> tuple[Array, ...]:
    """Arrays of the given `(shape, fan_in)`s, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as
    PyTorch's and Equinox's convolutions."""
    # One draw sliced up, in one compiled program: compiling a random-number kernel
    # per array (or per operation, eagerly) dominated the construction time.
    sizes = [math.prod(shape) for shape, _ in specs]
    flat = jr.uniform(key, (sum(sizes),), minval=-1.0, maxval=1.0)
    out, start = [], 0
    for size, (shape, fan_in) in zip(sizes, specs):
        out.append(fan_in**-0.5 * flat[start : start + size].reshape(shape))
        start += size
    return tuple(out)


def _check_grid(
    x: Array, channels: int, num_spatial_dims: int, levels: int, boundary: str
) -> None:
    if x.ndim != num_spatial_dims + 1:
        raise ValueError(
            f"`x` must have shape (channels, *grid) with {num_spatial_dims} spatial "
            f"axes (one example; batch with `jax.vmap`); got shape {x.shape}."
        )
    if x.shape[0] != channels:
        raise ValueError(
            f"`x` must have {channels} channels (`in_channels`) on its first axis; "
            f"got shape {x.shape}."
        )
    factor = 2 ** (levels - 1)
    delta = _DELTA[boundary]
    for n in x.shape[1:]:
        # The coarsest grid keeps one interior node (Dirichlet) or two nodes.
        coarsest = (n + delta) // factor - delta
        if (n + delta) % factor != 0 or coarsest < (
            1 if boundary == "dirichlet" else 2
        ):
            raise ValueError(
                f"`x` has spatial shape {x.shape[1:]}, which cannot be coarsened "
                f"`levels - 1` = {levels - 1} times with `boundary={boundary!r}`: every "
                f"grid size plus {delta} must be a multiple of 2**(levels - 1) = "
                f"{factor} (a node grid of 2**k cells has "
                + {
                    "dirichlet": "2**k - 1 interior nodes",
                    "neumann": "2**k + 1 nodes",
                    "periodic": "2**k nodes per period",
                }[boundary]
                + "), with at least two cells left on the coarsest grid. Use fewer "
                "`levels` or such a grid size."
            )


class VCycle(eqx.Module):
    """A linear operator between channel fields parameterised by one multigrid V-cycle.

    This is the linear map `W` of an MgNO layer (He, Liu and Xu, "MgNO: efficient
    parameterization of linear operators via multigrid", ICLR 2024), built as MgNet's
    V-cycle (He and Xu, "MgNet: a unified framework of multigrid and convolutional
    neural network", 2019). The input `f` (with `in_channels`) is the right-hand side;
    the output `u` (with `out_channels`) is the approximate "solution". On level `l`
    (level 0 the input grid, level `l` coarsened `l` times by two), starting from
    `u = 0`:

    - pre-smoothing, `pre` times: `u <- u + B (f - A u)`, with the level's data-space
      operator `A` (3-point or 3x3 convolution, `out_channels -> in_channels`) shared by
      all the level's steps, and a learned smoother `B` (`in_channels ->
      out_channels`) per step;
    - restriction of the residual: `f_coarse = R (f - A u)`, a stride-2 convolution;
    - the coarser level's V-cycle from `f_coarse`, prolonged back and added:
      `u <- u + P u_coarse`, a stride-2 transposed convolution;
    - post-smoothing, `post` times, as the pre-smoothing (new `B`s, the same `A`).

    On the coarsest level only the smoothing steps run. No convolution has a bias, so
    the map is linear. Boundary conditions enter through the padding of every
    convolution: zeros for `"dirichlet"`, even reflection for `"neumann"`, circular for
    `"periodic"` (which makes the map translation-equivariant by multiples of
    `2**(levels - 1)` points).

    Grid convention (vertex-centred multigrid): the grid is the node grid of `2**k`
    cells per axis, the coarse grid every other node, so both share their boundary.
    With `boundary="dirichlet"` the grid holds the `2**k - 1` interior nodes (the zero
    boundary values are the padding); with `"neumann"` all `2**k + 1` nodes; with
    `"periodic"` the `2**k` nodes of one period. `levels` grids need `k >= levels` (and
    `k > levels` unless Dirichlet). With `R` full weighting `[1/4, 1/2, 1/4]`, `P`
    linear interpolation `[1/2, 1, 1/2]` (tensor products in 2-D), `A` the
    finite-difference Laplacian with mesh size `2**l h` and `B` damped Jacobi, the
    V-cycle is classical geometric multigrid, whose convergence rate does not depend
    on the grid. Difference from the MgNO code, which uses grids of `2**k` points and
    a 4x4 transposed convolution: that cell-centred-like hierarchy misplaces the
    coarse Dirichlet boundary (with classical weights the V-cycle diverged on 64
    points), so both transfer operators here are 3-point (3x3) stencils on the
    vertex-centred hierarchy.

    `__call__` takes one example of shape `(in_channels, *grid)`.
    """

    a: Float[Array, "levels cin cout *kernel"]
    b: Float[Array, "levels steps cout cin *kernel"]
    r: Float[Array, "levels_1 cin cin *kernel"]
    p: Float[Array, "levels_1 cout cout *kernel"]
    in_channels: int = eqx.field(static=True)
    out_channels: int = eqx.field(static=True)
    levels: int = eqx.field(static=True)
    pre_steps: int = eqx.field(static=True)
    post_steps: int = eqx.field(static=True)
    boundary: str = eqx.field(static=True)
    num_spatial_dims: int = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        levels: int,
        smoothing_steps: int | tuple[int, int] = (1, 1),
        boundary: Boundary = "dirichlet",
        num_spatial_dims: int = 2,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `in_channels`: the channels of the input (the right-hand side `f`).
        - `out_channels`: the channels of the output (the solution `u`).
        - `levels`: the number of grids, the input's included (1: smoothing only).
        - `smoothing_steps`: `(pre, post)` smoothing steps on every level, or an int
            `s` for `(s, s)`; `pre` must be positive, `post` may be zero.
        - `boundary`: `"dirichlet"`, `"neumann"` or `"periodic"`.
        - `num_spatial_dims`: 1 or 2.
        - `key`: a JAX random key.

        **Raises:** `ValueError` for a non-positive size, `levels` or `pre` steps, a
        negative `post`, an unknown `boundary` or `num_spatial_dims` not 1 or 2.
        """
        check_positive_int(in_channels, "in_channels")
        check_positive_int(out_channels, "out_channels")
        check_positive_int(levels, "levels")
        _check_boundary(boundary)
        _check_dims(num_spatial_dims)
        pre, post = _smoothing(smoothing_steps)
        kernel = (3,) * num_spatial_dims
        taps = 3**num_spatial_dims
        cin, cout = in_channels, out_channels
        self.a, self.b, self.r, self.p = _init(
            key,
            (
                ((levels, cin, cout) + kernel, cout * taps),
                ((levels, pre + post, cout, cin) + kernel, cin * taps),
                ((levels - 1, cin, cin) + kernel, cin * taps),
                ((levels - 1, cout, cout) + kernel, cout * taps),
            ),
        )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.levels = levels
        self.pre_steps = pre
        self.post_steps = post
        self.boundary = boundary
        self.num_spatial_dims = num_spatial_dims

    def _smooth(self, u: Array, f: Array, a: Array, bs: Array) -> Array:
        def step(u, b):
            return u + _conv(f - _conv(u, a, self.boundary), b, self.boundary), None

        u, _ = lax.scan(step, u, bs)
        return u

    def _cycle(self, f: Array, level: int) -> Array:
        a, bs = self.a[level], self.b[level]
        # The first step from u = 0 is u = B f (no product with A).
        u = _conv(f, bs[0], self.boundary)
        if self.pre_steps > 1:
            u = self._smooth(u, f, a, bs[1 : self.pre_steps])
        if level < self.levels - 1:
            residual = f - _conv(u, a, self.boundary)
            coarse = _restrict(residual, self.r[level], self.boundary)
            fine = _prolong(
                self._cycle(coarse, level + 1),
                self.p[level],
                self.boundary,
                f.shape[1:],
            )
            u = u + fine
        if self.post_steps > 0:
            u = self._smooth(u, f, a, bs[self.pre_steps :])
        return u

    def __call__(
        self,
        x: Float[Array, " {self.in_channels} *grid"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, " {self.out_channels} *grid"]:
        """**Arguments:**

        - `x`: one input field, shape `(in_channels, *grid)`.
        - `key`: unused; for the uniform model signature.

        **Returns:** the output field, shape `(out_channels, *grid)`.

        **Raises:** `ValueError` if `x` has the wrong number of axes or channels, or a
        grid size that cannot be halved `levels - 1` times.
        """
        del key
        _check_grid(
            x, self.in_channels, self.num_spatial_dims, self.levels, self.boundary
        )
        # The levels have different shapes, so the recursion unrolls (levels is small).
        return self._cycle(x, 0)


def _smoothing(smoothing_steps: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(smoothing_steps, int) and not isinstance(smoothing_steps, bool):
        pre, post = smoothing_steps, smoothing_steps
    elif isinstance(smoothing_steps, tuple) and len(smoothing_steps) == 2:
        pre, post = smoothing_steps
    else:
        raise ValueError(
            "`smoothing_steps` must be an int or a pair (pre, post) of ints; got "
            f"{smoothing_steps!r}."
        )
    for value in (pre, post):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(
                f"`smoothing_steps` must hold ints; got {smoothing_steps!r}."
            )
    if pre < 1 or post < 0:
        raise ValueError(
            "`smoothing_steps` needs at least one pre-smoothing step and a "
            f"non-negative number of post-smoothing steps; got {smoothing_steps!r}."
        )
    return pre, post


class MgNOLayer(eqx.Module):
    """One MgNO layer: `v -> activation(W v + K v + bias)`.

    `W` is a [`jaxmodels.operators.VCycle`][] (the multigrid-parameterised linear
    operator of He, Liu and Xu, "MgNO: efficient parameterization of linear operators
    via multigrid", ICLR 2024) and `K` a pointwise (1x1) linear map, the bias-carrying
    term the MgNO code adds beside the V-cycle (`pointwise=False` drops `K`, keeping
    the paper's `activation(W v + bias)`).
    """

    vcycle: VCycle
    pointwise: Float[Array, "cout cin"] | None
    bias: Float[Array, " cout"]
    activation: Callable = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        levels: int,
        smoothing_steps: int | tuple[int, int] = (1, 1),
        boundary: Boundary = "dirichlet",
        num_spatial_dims: int = 2,
        pointwise: bool = True,
        activation: Callable = jax.nn.gelu,
        key: PRNGKeyArray,
    ):
        """**Arguments:** as [`jaxmodels.operators.VCycle`][], plus

        - `pointwise`: whether to add the pointwise linear term `K v`.
        - `activation`: the elementwise nonlinearity.

        **Raises:** as [`jaxmodels.operators.VCycle`][].
        """
        vkey, lkey = jr.split(key)
        self.vcycle = VCycle(
            in_channels,
            out_channels,
            levels=levels,
            smoothing_steps=smoothing_steps,
            boundary=boundary,
            num_spatial_dims=num_spatial_dims,
            key=vkey,
        )
        weight, self.bias = _init(
            lkey,
            (
                ((out_channels, in_channels), in_channels),
                ((out_channels,), in_channels),
            ),
        )
        self.pointwise = weight if pointwise else None
        self.activation = activation

    def __call__(
        self,
        x: Float[Array, " {self.vcycle.in_channels} *grid"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, " {self.vcycle.out_channels} *grid"]:
        """**Arguments:**

        - `x`: one input field, shape `(in_channels, *grid)`.
        - `key`: unused.

        **Returns:** the output field, shape `(out_channels, *grid)`.

        **Raises:** as [`jaxmodels.operators.VCycle`][].
        """
        del key
        y = self.vcycle(x)
        if self.pointwise is not None:
            y = y + jnp.tensordot(self.pointwise, x, axes=1)
        bias = jnp.expand_dims(self.bias, tuple(range(1, x.ndim)))
        return self.activation(y + bias)


class MgNO(eqx.Module):
    """A multigrid neural operator: a stack of MgNO layers and a pointwise projection.

    He, Liu and Xu, "MgNO: efficient parameterization of linear operators via
    multigrid" (ICLR 2024). Layer `k` maps `v -> activation(W_k v + K_k v + b_k)`, each
    `W_k` a [`jaxmodels.operators.VCycle`][] between all channels at once (the matrix
    of operators `W_ij` of the paper, one multi-channel V-cycle). As in the paper there
    is no lifting: the first layer maps the `in_channels` input to `width` channels; a
    final pointwise (1x1) linear map projects to `out_channels`. The `depth - 1` hidden
    layers share their shapes and run under one `lax.scan` (one compilation).

    Boundary conditions enter through the convolutions' padding (`boundary`), which is
    how MgNO handles Dirichlet, Neumann and periodic problems with one architecture.
    Grids must have, per axis, a multiple of `2**(levels - 1)` points (e.g. a power of
    two; see [`jaxmodels.operators.VCycle`][]). The network is convolutional, so one
    trained model applies to any grid that satisfies this, though its convolution
    stencils are tied to the training grid's spacing.

    `__call__` takes one example of shape `(in_channels, *grid)`.
    """

    first: MgNOLayer
    hidden: MgNOLayer | None
    projection: Float[Array, "out width"]
    projection_bias: Float[Array, " out"]
    in_channels: int = eqx.field(static=True)
    out_channels: int = eqx.field(static=True)
    width: int = eqx.field(static=True)
    depth: int = eqx.field(static=True)
    levels: int = eqx.field(static=True)
    boundary: str = eqx.field(static=True)
    num_spatial_dims: int = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        width: int,
        depth: int = 4,
        levels: int = 4,
        smoothing_steps: int | tuple[int, int] = (1, 1),
        boundary: Boundary = "dirichlet",
        num_spatial_dims: int = 2,
        pointwise: bool = True,
        activation: Callable = jax.nn.gelu,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `in_channels`: channels of the input function (e.g. 1 for a coefficient).
        - `out_channels`: channels of the output function.
        - `width`: channels of the hidden layers.
        - `depth`: the number of MgNO layers.
        - `levels`: grids per V-cycle, the input's included.
        - `smoothing_steps`: `(pre, post)` smoothing steps per level, or an int.
        - `boundary`: `"dirichlet"` (zero padding), `"neumann"` (reflect padding) or
            `"periodic"` (circular padding).
        - `num_spatial_dims`: 1 or 2.
        - `pointwise`: whether each layer adds a pointwise linear term (the MgNO code
            does).
        - `activation`: the nonlinearity after every layer.
        - `key`: a JAX random key.

        **Raises:** `ValueError` for a non-positive size, `depth` or `levels`, bad
        `smoothing_steps`, an unknown `boundary` or `num_spatial_dims` not 1 or 2.
        """
        check_positive_int(in_channels, "in_channels")
        check_positive_int(out_channels, "out_channels")
        check_positive_int(width, "width")
        check_positive_int(depth, "depth")
        check_positive_int(levels, "levels")
        _check_boundary(boundary)
        _check_dims(num_spatial_dims)
        self.first, self.hidden, self.projection, self.projection_bias = _build(
            in_channels,
            out_channels,
            width,
            depth,
            levels,
            _smoothing(smoothing_steps),
            boundary,
            num_spatial_dims,
            pointwise,
            activation,
            key,
        )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.width = width
        self.depth = depth
        self.levels = levels
        self.boundary = boundary
        self.num_spatial_dims = num_spatial_dims

    @property
    def num_parameters(self) -> int:
        """The number of trainable scalars (to compare models at equal size)."""
        return tree_size(self)

    def __call__(
        self,
        x: Float[Array, " {self.in_channels} *grid"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, " {self.out_channels} *grid"]:
        """**Arguments:**

        - `x`: one input function on the grid, shape `(in_channels, *grid)`.
        - `key`: unused; for the uniform model signature.

        **Returns:** the output function, shape `(out_channels, *grid)`.

        **Raises:** `ValueError` if `x` has the wrong number of axes or channels, or a
        grid size that cannot be halved `levels - 1` times.
        """
        del key
        _check_grid(
            x, self.in_channels, self.num_spatial_dims, self.levels, self.boundary
        )
        v = self.first(x)
        if self.hidden is not None:
            params, static = eqx.partition(self.hidden, eqx.is_array)

            def body(v, p):
                return eqx.combine(p, static)(v), None

            v, _ = lax.scan(body, v, params)
        out = jnp.tensordot(self.projection, v, axes=1)
        return out + jnp.expand_dims(self.projection_bias, tuple(range(1, v.ndim)))


@eqx.filter_jit
def _build(
    in_channels: int,
    out_channels: int,
    width: int,
    depth: int,
    levels: int,
    smoothing_steps: tuple[int, int],
    boundary: Boundary,
    num_spatial_dims: int,
    pointwise: bool,
    activation: Callable,
    key: PRNGKeyArray,
) -> tuple[MgNOLayer, MgNOLayer | None, Array, Array]:
    """An MgNO's layers and projection, built in one compiled program."""
    fkey, hkey, pkey = jr.split(key, 3)

    def layer(cin, key):
        return MgNOLayer(
            cin,
            width,
            levels=levels,
            smoothing_steps=smoothing_steps,
            boundary=boundary,
            num_spatial_dims=num_spatial_dims,
            pointwise=pointwise,
            activation=activation,
            key=key,
        )

    first = layer(in_channels, fkey)
    hidden = None
    if depth > 1:
        hidden = eqx.filter_vmap(ft.partial(layer, width))(jr.split(hkey, depth - 1))
    # As eqx.nn.Linear: U(-1/sqrt(width), 1/sqrt(width)) for weight and bias.
    projection, bias = _init(
        pkey, (((out_channels, width), width), ((out_channels,), width))
    )
    return first, hidden, projection, bias
