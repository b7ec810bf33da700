"""Univariate bases of a KAN edge, and B-splines on a per-input knot vector."""

import abc
import functools as ft

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._core import check_positive_int


class AbstractBasis(eqx.Module):
    """A family of univariate functions, evaluated at every input coordinate.

    A KAN edge `phi_{j,i}` is a linear combination of the functions of a basis evaluated
    at its input `x_i`; a basis says which functions. A concrete basis owns the field
    `in_features` (the number of input coordinates, since a basis may hold data per
    input, such as a spline's knots), the property `size` (functions per input) and
    `__call__`, which evaluates all `size` functions at each of the `in_features`
    coordinates. Array leaves that must not be trained (knots, centres) are wrapped in
    `jax.lax.stop_gradient` where they are used.
    """

    in_features: eqx.AbstractVar[int]

    @property
    @abc.abstractmethod
    def size(self) -> int:
        """The number of basis functions per input coordinate."""

    @abc.abstractmethod
    def __call__(
        self, x: Float[Array, " {self.in_features}"]
    ) -> Float[Array, "{self.in_features} {self.size}"]:
        """**Arguments:**

        - `x`: one input vector, shape `(in_features,)`.

        **Returns:** every basis function at every coordinate, shape
        `(in_features, size)`.
        """


def bspline(
    x: Float[Array, ""], grid: Float[Array, " knots"], order: int
) -> Float[Array, " size"]:
    """All B-splines of one order on one knot vector, at one point.

    The Cox-de Boor recursion, vectorised over the basis index: the order-0 splines are
    the indicators of the half-open knot intervals `[t_i, t_{i+1})`, and
    `B_{i,p}(x) = (x - t_i) / (t_{i+p} - t_i) B_{i,p-1}(x)
    + (t_{i+p+1} - x) / (t_{i+p+1} - t_{i+1}) B_{i+1,p-1}(x)`. A term whose knot
    difference is zero (repeated knots) is taken as zero, the usual convention. Outside
    `[t_0, t_last)` every spline is zero. On the interior of a KAN grid (the knots
    `order, ..., knots - order - 1`) the splines sum to one.

    Differentiable in `x` (to any order), with the closed-form derivative
    `B'_{i,k} = k (B_{i,k-1} / (t_{i+k} - t_i) - B_{i+1,k-1} / (t_{i+k+1} - t_{i+1}))`;
    the knots are constants (read under `jax.lax.stop_gradient`), as in a KAN, where
    they move only by `update_grid`.

    **Arguments:**

    - `x`: the point, a scalar.
    - `grid`: the knot vector `t`, shape `(knots,)`, non-decreasing.
    - `order`: the spline order `k` (polynomial degree), `>= 0`.

    **Returns:** the `knots - order - 1` values `B_{i,k}(x)`.

    **Raises:** `ValueError` if `order` is negative or there are fewer than `order + 2`
    knots.
    """
    if isinstance(order, bool) or not isinstance(order, int) or order < 0:
        raise ValueError(f"`order` must be an int >= 0, got {order!r}.")
    if grid.ndim != 1 or grid.shape[0] < order + 2:
        raise ValueError(
            f"`grid` must be a knot vector of at least `order + 2` = {order + 2} knots, "
            f"got shape {grid.shape}."
        )
    return _bspline(x, jax.lax.stop_gradient(grid), order)


def _reciprocal(den: Array) -> Array:
    # Zero denominators come from repeated knots; the term they divide is taken as 0.
    zero = den == 0
    return jnp.where(zero, 0.0, 1 / jnp.where(zero, 1.0, den))


def _recursion(x: Array, t: Array, order: int) -> tuple[Array, Array]:
    """The order-`order` splines and their derivatives in `x`.

    Written window by window: `T[r][i] = t[i + r]`, `r = 0, ..., order + 1`, are the
    knots that spline `i` depends on, and level `p` of the recursion is kept as the
    `order + 1 - p` arrays `B_{i+r,p}` over `i`, each the size of the output. Every
    array operation is then elementwise over `i`. The textbook form (one array per
    level, shifted by slicing) computes the same numbers, but XLA fuses the whole
    recursion into one loop in which the two slices of each level re-evaluate it: the
    lowest level 2^order times per output, and the loop does not vectorise. For cubic
    splines under a batch of points this form is 11x faster on one CPU core
    (3.4 -> 0.30 ms for 1024 x 32 points).

    The derivative is the closed form `B'_{i,k} = k (B_{i,k-1} / (t_{i+k} - t_i)
    - B_{i+1,k-1} / (t_{i+k+1} - t_{i+1}))`, from the last level's inputs and knot
    differences.
    """
    size = t.shape[-1] - order - 1
    window = [t[r : r + size] for r in range(order + 2)]
    levels = [
        ((x >= window[r]) & (x < window[r + 1])).astype(jnp.result_type(x, t))
        for r in range(order + 1)
    ]
    slope = jnp.zeros_like(levels[0])
    for p in range(1, order + 1):
        left = [_reciprocal(window[r + p] - window[r]) for r in range(order + 1 - p)]
        right = [
            _reciprocal(window[r + p + 1] - window[r + 1]) for r in range(order + 1 - p)
        ]
        if p == order:
            slope = p * (left[0] * levels[0] - right[0] * levels[1])
        levels = [
            (x - window[r]) * left[r] * levels[r]
            + (window[r + p + 1] - x) * right[r] * levels[r + 1]
            for r in range(order + 1 - p)
        ]
    return levels[0], slope


@ft.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _bspline(x: Array, t: Array, order: int) -> Array:
    return _recursion(x, t, order)[0]


@_bspline.defjvp
def _bspline_jvp(order, primals, tangents):
    # The derivative in closed form (see `_recursion`), from the order k - 1 splines
    # the recursion computes anyway: differentiating through the recursion instead
    # cost 40% of a KAN training step. The knots are constants here (stop_gradient'ed
    # by the caller), so their tangent is not used.
    x, t = primals
    dx, _ = tangents
    b, slope = _recursion(x, t, order)
    return b, slope * dx


def uniform_grid(
    lo: Float[Array, " in_features"],
    hi: Float[Array, " in_features"],
    grid_size: int,
    order: int,
) -> Float[Array, "in_features knots"]:
    """Uniform knots on `[lo, hi]` per input, extended by `order` knots each side."""
    steps = jnp.arange(-order, grid_size + order + 1, dtype=lo.dtype)
    h = (hi - lo) / grid_size
    return lo[:, None] + steps[None, :] * h[:, None]


class BSpline(AbstractBasis):
    """B-splines of order `k` on a grid of `G` intervals per input (the KAN basis).

    As in Liu et al., "KAN: Kolmogorov-Arnold Networks" (2024) and pykan: `G + 1` knots
    on `grid_range`, extended by `k` knots of the same spacing beyond each end, give
    `G + k` B-splines per input, which sum to one on `grid_range`. Each input has its
    own knot vector (a row of `grid`), so that `update_grid` can adapt the knots to the
    data per input. The knots are not trained (they are read under
    `jax.lax.stop_gradient`).
    """

    grid: Float[Array, "in_features knots"]
    in_features: int = eqx.field(static=True)
    grid_size: int = eqx.field(static=True)
    order: int = eqx.field(static=True)

    def __init__(
        self,
        in_features: int,
        *,
        grid_size: int = 5,
        order: int = 3,
        grid_range: tuple[float, float] = (-1.0, 1.0),
        grid: Float[Array, "in_features knots"] | None = None,
    ):
        """**Arguments:**

        - `in_features`: the number of input coordinates.
        - `grid_size`: the number `G` of grid intervals.
        - `order`: the spline order `k` (3: cubic splines).
        - `grid_range`: `(lo, hi)`, the interval the uniform grid spans.
        - `grid`: explicit knots, shape `(in_features, grid_size + 2 * order + 1)`,
            already extended (used by `update_grid` and `extend_grid`); overrides
            `grid_range`.

        **Raises:** `ValueError` for `in_features < 1`, `grid_size < 1`, `order < 0`,
        `grid_range` with `lo >= hi`, or a `grid` of the wrong shape.
        """
        check_positive_int(in_features, "in_features")
        check_positive_int(grid_size, "grid_size")
        if isinstance(order, bool) or not isinstance(order, int) or order < 0:
            raise ValueError(f"`order` must be an int >= 0, got {order!r}.")
        knots = grid_size + 2 * order + 1
        if grid is None:
            lo, hi = grid_range
            if not lo < hi:
                raise ValueError(
                    f"`grid_range` must be (lo, hi) with lo < hi, got {grid_range!r}."
                )
            # Built with numpy: eager jnp ops would compile a kernel per shape.
            steps = np.arange(-order, grid_size + order + 1) * (hi - lo) / grid_size
            grid = jnp.asarray(
                np.broadcast_to(lo + steps, (in_features, knots)),
                dtype=jnp.result_type(float),
            )
        elif grid.shape != (in_features, knots):
            raise ValueError(
                f"`grid` must have shape (in_features, grid_size + 2 * order + 1) = "
                f"{(in_features, knots)}, got {grid.shape}."
            )
        self.grid = grid
        self.in_features = in_features
        self.grid_size = grid_size
        self.order = order

    @property
    def size(self) -> int:
        return self.grid_size + self.order

    def __call__(
        self, x: Float[Array, " {self.in_features}"]
    ) -> Float[Array, "{self.in_features} {self.size}"]:
        """**Arguments:**

        - `x`: one input vector, shape `(in_features,)`.

        **Returns:** the `G + k` B-splines at each coordinate, shape
        `(in_features, G + k)`.

        **Raises:** `ValueError` if `x` does not have shape `(in_features,)`.
        """
        if x.shape != (self.in_features,):
            raise ValueError(
                f"`x` must have shape (in_features,) = ({self.in_features},), "
                f"got {x.shape}."
            )
        grid = jax.lax.stop_gradient(self.grid)
        return jax.vmap(lambda xi, gi: bspline(xi, gi, self.order))(x, grid)
