"""Adaptive grids for spline KANs: grid update from data and grid extension."""

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, Float

from ._basis import BSpline, uniform_grid
from ._layer import KAN, KANLayer


def _spline_layers(model: KAN, x: Array, name: str) -> None:
    if not isinstance(model, KAN):
        raise ValueError(f"`model` must be a KAN, got {type(model).__name__}.")
    for i, layer in enumerate(model.layers):
        if not (isinstance(layer, KANLayer) and isinstance(layer.basis, BSpline)):
            raise ValueError(
                f"`{name}` needs B-spline layers, but `model.layers[{i}]` is a "
                f"{type(layer).__name__}"
                + (
                    f" with a {type(layer.basis).__name__} basis."
                    if isinstance(layer, KANLayer)
                    else "."
                )
            )
    n = model.layers[0].in_features
    if x.ndim != 2 or x.shape[1] != n:
        raise ValueError(
            f"`x` must be a batch of inputs of shape (batch, {n}), got {x.shape}."
        )


def _extend(interior: Array, order: int) -> Array:
    # pykan's extend_grid: `order` knots beyond each end at the mean interior spacing.
    g = interior.shape[-1] - 1
    h = (interior[:, -1:] - interior[:, :1]) / g
    steps = jnp.arange(1, order + 1, dtype=interior.dtype)[None, :]
    left = interior[:, :1] - h * steps[:, ::-1]
    right = interior[:, -1:] + h * steps
    return jnp.concatenate([left, interior, right], axis=-1)


def _refit(
    layer: KANLayer, basis: BSpline, points: Float[Array, "n in"], values: Array
) -> KANLayer:
    """Coefficients on `basis` whose splines match `values` (shape `(n, out, in)`) at
    `points` in the least-squares sense, one solve per edge, by SVD with lineax (which
    also gives the minimum-norm fit if some spline sees no point)."""
    design = jax.vmap(basis)(points)  # (n, in, size)

    def solve(a, b):
        return lx.linear_solve(
            lx.MatrixLinearOperator(a), b, lx.SVD(), throw=False
        ).value

    # vmap over inputs (operator batched), then outputs (the same operator).
    per_input = jax.vmap(jax.vmap(solve, in_axes=(None, 1)), in_axes=(1, 2))
    coef = per_input(design, values)  # (in, out, size)
    coef = jnp.swapaxes(coef, 0, 1)
    return eqx.tree_at(lambda m: (m.basis, m.coef), layer, (basis, coef))


@eqx.filter_jit
def update_grid(
    model: KAN,
    x: Float[Array, "batch in_features"],
    *,
    grid_eps: float | Float[Array, ""] = 0.02,
) -> KAN:
    """Move every layer's knots to the percentiles of its inputs, keeping the function.

    pykan's `update_grid_from_samples` (Liu et al., "KAN: Kolmogorov-Arnold Networks",
    2024): for each layer in turn, its `G + 1` interior knots per input become a mix of
    the sample percentiles and a uniform grid on the sample range,
    `grid_eps * uniform + (1 - grid_eps) * adaptive`, extended by `order` knots each side
    at the mean interior spacing (as pykan); the coefficients are then refitted by least
    squares (lineax, SVD) so that every edge's spline part keeps its old values at the
    samples. The samples are propagated through the updated layers. The grid size is
    unchanged. Non-spline parts (base activation, scales, mask) are untouched.

    **Arguments:**

    - `model`: a KAN whose layers are all `KANLayer`s with a `BSpline` basis.
    - `x`: input samples, shape `(batch, widths[0])`; at least `G + order` samples are
        needed for a unique fit.
    - `grid_eps`: the weight of the uniform grid (0: pure percentiles, 1: uniform).

    **Returns:** the updated KAN.

    **Raises:** `ValueError` if a layer is not a B-spline `KANLayer` or `x` has the
    wrong shape.
    """
    _spline_layers(model, x, "update_grid")
    h = x
    layers = []
    for layer in model.layers:
        basis = layer.basis
        g, k = basis.grid_size, basis.order
        batch = h.shape[0]
        values = jax.vmap(layer.spline)(h)
        xs = jnp.sort(h, axis=0)
        ids = np.array([int(batch / g * i) for i in range(g)] + [batch - 1])
        adaptive = xs[ids].T  # (in, g + 1)
        lo, hi = adaptive[:, 0], adaptive[:, -1]
        uniform = uniform_grid(lo, hi, g, 0)
        interior = grid_eps * uniform + (1 - grid_eps) * adaptive
        # A constant input has no range: give it the unit interval around its value.
        flat = (hi - lo) <= 0
        interior = jnp.where(
            flat[:, None], uniform_grid(lo - 1.0, lo + 1.0, g, 0), interior
        )
        new_basis = BSpline(
            layer.in_features, grid_size=g, order=k, grid=_extend(interior, k)
        )
        layer = _refit(layer, new_basis, h, values)
        layers.append(layer)
        h = jax.vmap(layer)(h)
    return eqx.tree_at(lambda m: m.layers, model, tuple(layers))


@eqx.filter_jit
def extend_grid(
    model: KAN,
    x: Float[Array, "batch in_features"],
    grid_size: int,
    *,
    dense: bool = True,
) -> KAN:
    """Refine every layer's spline grid to `grid_size` intervals, keeping the function.

    The grid extension of Liu et al., "KAN: Kolmogorov-Arnold Networks" (2024): a
    coarse spline is fitted by a finer one by least squares, so that training can go on
    at a finer resolution. The new interior knots subdivide the old ones (piecewise
    linear interpolation of the old knots, as current pykan does), so the old grid's
    range and data adaptivity are kept, and when `grid_size` is a multiple of the old
    size every old knot is a new knot: the fine spline space contains the coarse one
    and the function is reproduced exactly on the grid. (Call `update_grid` first to
    move the grid to the data.) The coefficients are the least-squares fit (lineax,
    SVD) of each edge's old spline part at the fitting points.

    The fitting points are the samples `x` propagated to each layer and, with
    `dense=True`, also `2 (grid_size + order)` uniform points on each input's grid
    range: with them the fit is unique and the function is kept on the whole grid even
    where the samples are few (a choice of this implementation; pykan fits the samples
    only).

    **Arguments:**

    - `model`: a KAN whose layers are all `KANLayer`s with a `BSpline` basis.
    - `x`: input samples, shape `(batch, widths[0])`.
    - `grid_size`: the new number of grid intervals, at least every layer's current
        one.
    - `dense`: whether to add the uniform fitting points.

    **Returns:** the KAN on the finer grid.

    **Raises:** `ValueError` if a layer is not a B-spline `KANLayer`, `x` has the wrong
    shape, or `grid_size` is smaller than a layer's current grid size.
    """
    _spline_layers(model, x, "extend_grid")
    if isinstance(grid_size, bool) or not isinstance(grid_size, int):
        raise ValueError(f"`grid_size` must be an int, got {grid_size!r}.")
    for i, layer in enumerate(model.layers):
        if grid_size < layer.basis.grid_size:
            raise ValueError(
                f"`grid_size` ({grid_size}) is smaller than the grid size "
                f"{layer.basis.grid_size} of `model.layers[{i}]`; grid extension only "
                "refines."
            )
    h = x
    layers = []
    for layer in model.layers:
        old = layer.basis
        k = old.order
        old_interior = old.grid[:, k : old.grid.shape[1] - k]
        t_old = jnp.linspace(0.0, 1.0, old.grid_size + 1, dtype=old.grid.dtype)
        t_new = jnp.linspace(0.0, 1.0, grid_size + 1, dtype=old.grid.dtype)
        interior = jax.vmap(lambda g: jnp.interp(t_new, t_old, g))(old_interior)
        new_basis = BSpline(
            layer.in_features,
            grid_size=grid_size,
            order=k,
            grid=_extend(interior, k),
        )
        points = h
        if dense:
            n = 2 * (grid_size + k)
            s = jnp.linspace(0.0, 1.0, n, dtype=h.dtype)
            lo, hi = old_interior[:, :1], old_interior[:, -1:]
            points = jnp.concatenate([h, (lo + (hi - lo) * s[None, :]).T], axis=0)
        values = jax.vmap(layer.spline)(points)
        new = _refit(layer, new_basis, points, values)
        layers.append(new)
        h = jax.vmap(new)(h)
    return eqx.tree_at(lambda m: m.layers, model, tuple(layers))
