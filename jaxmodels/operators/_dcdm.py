"""The deep conjugate direction method: a learned iterative solver for SPD systems."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
from jaxtyping import Array, Float, Int, PRNGKeyArray, Scalar

from .._core import RESULTS, check_positive_int


# --- the network ----------------------------------------------------------------------


def _convs(width: int, depth: int, key: PRNGKeyArray) -> tuple[eqx.nn.Conv2d, ...]:
    return tuple(
        eqx.nn.Conv2d(width, width, 3, padding=1, use_bias=False, key=k)
        for k in jr.split(key, depth)
    )


def _restrict(h: Array) -> Array:
    c, height, width = h.shape
    return h.reshape(c, height // 2, 2, width // 2, 2).mean(axis=(2, 4))


def _prolong(h: Array) -> Array:
    # Bilinear interpolation between cell centres: nearest-neighbour upsampling, then
    # the stencil (1, 2, 1) / 4 along each axis, zero outside (the Dirichlet boundary).
    h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
    p = jnp.pad(h, ((0, 0), (1, 1), (0, 0)))
    h = (p[:, :-2] + 2 * p[:, 1:-1] + p[:, 2:]) / 4
    p = jnp.pad(h, ((0, 0), (0, 0), (1, 1)))
    return (p[:, :, :-2] + 2 * p[:, :, 1:-1] + p[:, :, 2:]) / 4


class DCDMNetwork(eqx.Module):
    """The direction network of the deep conjugate direction method: a learned V-cycle.

    Maps a residual `r` on the 2-D grid of unknowns to a search direction that should
    approximate `A^{-1} r` up to a scale, as the convolutional network of Kaneda et
    al., "A Deep Conjugate Direction Method for Iteratively Solving Linear Systems"
    (ICML 2023). Unlike the paper's U-Net, whose every level has its own weights and
    whose depth is fixed, this one is recursive, like a multigrid V-cycle: a 3x3 lift
    to `width` channels, then at every level `depth` residual blocks
    `h <- h + act(conv(h))` (pre-smoothing), 2x2 average pooling, the same cycle on the
    coarse grid, bilinear prolongation of its output times a learned `coarse_scale`
    added back, `depth` residual blocks (post-smoothing); `depth` blocks of their own
    on the coarsest grid; a 1x1 projection to one channel, added to the input. The
    SAME weights serve every level, and the levels recurse until the grid is at most
    `coarsest` points a side, so their number grows with the grid (4 for 30^2
    unknowns, 5 for 62^2, with the default `coarsest=2`) and one set of parameters
    applies at every resolution, with a receptive field that spans the whole grid
    (3x3 convolutions on a 2x2 coarsest grid couple all of it), as a multigrid cycle
    needs to act like `A^{-1}` on the lowest frequencies. `coarse_scale` starts at 4, the
    ratio between the coarse- and fine-grid inverses of a second-order operator in
    grid units (`(2h)^2 / h^2`).

    The convolutions have no bias and the activation should be positively homogeneous
    (ReLU, the default), so that `network(c r) = c network(r)` for `c > 0`: the
    network does not depend on the scale of its input. The projection starts at zero,
    so the untrained network is the identity and the solver starts out as the conjugate
    gradient method (the paper's network has no input skip): training only learns a
    correction. The input is zero-padded (the homogeneous Dirichlet boundary of the
    unknowns) to a multiple of `2**levels` and the output cropped back. `__call__`
    takes one grid of shape `(height, width)`; it computes in the dtype of its
    parameters and returns the dtype of its input.
    """

    lift: eqx.nn.Conv2d
    pre: tuple[eqx.nn.Conv2d, ...]
    coarse: tuple[eqx.nn.Conv2d, ...]
    post: tuple[eqx.nn.Conv2d, ...]
    project: eqx.nn.Conv2d
    coarse_scale: Array
    activation: Callable[[Array], Array]
    width: int = eqx.field(static=True)
    depth: int = eqx.field(static=True)
    coarsest: int = eqx.field(static=True)

    def __init__(
        self,
        *,
        width: int = 8,
        depth: int = 1,
        coarsest: int = 2,
        activation: Callable[[Array], Array] = jax.nn.relu,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `width`: the number of channels.
        - `depth`: residual blocks per level, before and after the coarse correction.
        - `coarsest`: the recursion stops at the first grid with at most this many
            points a side.
        - `activation`: the nonlinearity of the residual blocks.
        - `key`: a JAX random key.

        **Raises:** `ValueError` if `width`, `depth` or `coarsest` is not a positive
        integer.
        """
        check_positive_int(width, "width")
        check_positive_int(depth, "depth")
        check_positive_int(coarsest, "coarsest")
        lkey, prekey, ckey, postkey, pkey = jr.split(key, 5)
        self.lift = eqx.nn.Conv2d(1, width, 3, padding=1, use_bias=False, key=lkey)
        self.pre = _convs(width, depth, prekey)
        self.coarse = _convs(width, depth, ckey)
        self.post = _convs(width, depth, postkey)
        project = eqx.nn.Conv2d(width, 1, 1, use_bias=False, key=pkey)
        self.project = eqx.tree_at(
            lambda c: c.weight, project, jnp.zeros_like(project.weight)
        )
        self.coarse_scale = jnp.asarray(4.0)
        self.activation = activation
        self.width = width
        self.depth = depth
        self.coarsest = coarsest

    def levels(self, height: int, width: int) -> int:
        """The number of coarsenings on a grid of `height x width` unknowns: the least
        `L >= 0` with `ceil(max(height, width) / 2**L) <= coarsest`."""
        size, levels = max(height, width), 0
        while size > self.coarsest:
            size, levels = -(-size // 2), levels + 1
        return levels

    def _blocks(self, convs: tuple[eqx.nn.Conv2d, ...], h: Array) -> Array:
        for conv in convs:
            h = h + self.activation(conv(h))
        return h

    def _cycle(self, h: Array, level: int) -> Array:
        # A recursion over the static number of levels, unrolled at trace time.
        if level == 0:
            return self._blocks(self.coarse, h)
        h = self._blocks(self.pre, h)
        h = h + self.coarse_scale * _prolong(self._cycle(_restrict(h), level - 1))
        return self._blocks(self.post, h)

    def __call__(
        self,
        r: Float[Array, "height width"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "height width"]:
        """**Arguments:**

        - `r`: a residual on the grid of unknowns, shape `(height, width)`.
        - `key`: unused; for the uniform model signature.

        **Returns:** the search direction, the same shape and dtype as `r`.

        **Raises:** `ValueError` if `r` is not two-dimensional.
        """
        del key
        if r.ndim != 2:
            raise ValueError(
                f"`r` must be one grid of shape (height, width); got shape {r.shape}."
            )
        height, width = r.shape
        levels = self.levels(height, width)
        m = 2**levels
        pad_h, pad_w = -height % m, -width % m
        pads = ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2))
        x = jnp.pad(r.astype(self.lift.weight.dtype), pads)[None]
        h = self._cycle(self.lift(x), levels)
        out = (x + self.project(h))[0]
        out = out[pads[0][0] : pads[0][0] + height, pads[1][0] : pads[1][0] + width]
        return out.astype(r.dtype)


# --- checks ---------------------------------------------------------------------------


def _check_grid(vector: Array, name: str) -> None:
    if not eqx.is_array(vector) or vector.ndim != 2:
        shape = getattr(vector, "shape", type(vector).__name__)
        raise ValueError(
            f"`{name}` must be one 2-D grid of unknowns, shape (height, width); got "
            f"{shape}. Batch with `jax.vmap`."
        )
    if not jnp.issubdtype(vector.dtype, jnp.floating):
        raise ValueError(f"`{name}` must be a floating array; got {vector.dtype}.")


def _check_operator(operator: lx.AbstractLinearOperator, vector: Array) -> None:
    if not isinstance(operator, lx.AbstractLinearOperator):
        raise ValueError(
            "`operator` must be a lineax `AbstractLinearOperator`; got "
            f"{type(operator).__name__}."
        )
    want = jax.ShapeDtypeStruct(vector.shape, vector.dtype)
    for what, structure in (
        ("in", operator.in_structure()),
        ("out", operator.out_structure()),
    ):
        if not isinstance(structure, jax.ShapeDtypeStruct) or (
            structure.shape != want.shape
        ):
            raise ValueError(
                f"`operator` must act on one grid of shape {vector.shape} (the shape "
                f"of `vector`); its {what}_structure is {structure}."
            )


def _check_network(network: Callable, vector: Array) -> None:
    try:
        out = eqx.filter_eval_shape(network, vector)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"`network(r)` fails on a grid of shape {vector.shape}: {e}"
        ) from e
    if not isinstance(out, jax.ShapeDtypeStruct) or out.shape != vector.shape:
        raise ValueError(
            f"`network(r)` must return one grid of shape {vector.shape}; got {out}."
        )


def _check_nonnegative(value: float, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"`{name}` must be a non-negative number; got {value!r}.")


def _vdot(x: Array, y: Array) -> Array:
    return jnp.sum(x * y)


def _rms_normalised(r: Array, norm: Array) -> Array:
    # The network sees the residual scaled to unit root mean square, not unit norm:
    # per-point values then do not shrink as the grid grows (a unit-norm grid of N^2
    # points has values of size 1/N), so the statistics a network learns on one grid
    # size hold on another.
    return r * (jnp.sqrt(jnp.asarray(r.size, r.dtype)) / norm)


# --- the loss -------------------------------------------------------------------------


def dcdm_loss(
    network: Callable,
    operator: lx.AbstractLinearOperator,
    vector: Float[Array, "height width"],
) -> Scalar:
    """The scale-invariant training loss of the deep conjugate direction method.

    For `u = b / |b|` and `f = network(sqrt(n) u)` (`n` the number of unknowns: the
    network sees the right-hand side at unit root mean square, as in the solver), the
    squared norm of the residual left after
    the best multiple of `f`: `|u - alpha A f|^2` with `alpha = u . A f / |A f|^2`,
    that is `1 - cos^2` of the angle between `u` and `A f` (after Kaneda et al., "A Deep
    Conjugate Direction Method for Iteratively Solving Linear Systems", ICML 2023). It
    lies in `[0, 1]`, is unchanged when `f` or `b` is scaled by a nonzero constant, so
    the network only has to learn the direction of `A^{-1} b`, and is zero exactly when
    `network(u) = c A^{-1} u`. Unsupervised: no solution is needed. (Scaling by the
    solver's A-optimal step `f . u / f . A f` instead gives a loss that is not bounded
    by 1: on Poisson right-hand sides the identity network scores about 10 on it, and
    training then collapsed onto directions orthogonal to `u`, which score exactly 1
    and make no progress in the solver.)

    **Arguments:**

    - `network`: the search-direction network, `network(r) -> d` on one grid.
    - `operator`: the symmetric positive-definite lineax operator `A`, acting on grids
        of the shape of `vector`.
    - `vector`: one right-hand side `b`, shape `(height, width)`, nonzero.

    **Returns:** a scalar in `[0, 1]` (NaN if `b = 0` or `A f = 0`).

    **Raises:** `ValueError` if `vector` is not a 2-D floating array, or `operator` or
    `network` does not act on grids of its shape.
    """
    _check_grid(vector, "vector")
    _check_operator(operator, vector)
    _check_network(network, vector)
    norm = jnp.linalg.norm(vector)
    u = vector / norm
    f = network(_rms_normalised(vector, norm))
    af = operator.mv(f)
    alpha = _vdot(u, af) / _vdot(af, af)
    return jnp.sum((u - alpha * af) ** 2)


# --- the solver -----------------------------------------------------------------------


class DCDMSolution(eqx.Module):
    """The output of [`jaxmodels.operators.dcdm_solve`][].

    **Fields:**

    - `value`: the approximate solution `x`, shape `(height, width)`.
    - `result`: a `RESULTS` code: `successful`, `max_steps_reached`, or `breakdown` (a
        search direction with `d . A d <= 0` or non-finite: the operator is not
        positive definite on it or the network returned NaN).
    - `num_steps`: the number of search directions taken.
    - `num_fallbacks`: how many of them were the residual instead of the network's
        proposal (see `min_cosine` in [`jaxmodels.operators.dcdm_solve`][]).
    - `residual`: the relative residual `|b - A x| / |b|`, recomputed from `x`.
    - `residual_history`: shape `(max_steps + 1,)`, the relative residual before the
        first step and after each step; NaN after the last step taken.
    - `directions`: the last `n_orthogonal` search directions, oldest first (zeros for
        slots never filled), shape `(n_orthogonal, height, width)`.
    """

    value: Float[Array, "height width"]
    result: RESULTS
    num_steps: Int[Array, ""]
    num_fallbacks: Int[Array, ""]
    residual: Scalar
    residual_history: Float[Array, " steps_plus_one"]
    directions: Float[Array, "n_orthogonal height width"]


@eqx.filter_jit
def dcdm_solve(
    operator: lx.AbstractLinearOperator,
    vector: Float[Array, "height width"],
    network: Callable,
    *,
    y0: Float[Array, "height width"] | None = None,
    rtol: float = 1e-6,
    atol: float = 0.0,
    max_steps: int = 200,
    n_orthogonal: int = 2,
    min_cosine: float = 1e-4,
    throw: bool = True,
) -> DCDMSolution:
    """Solve `A x = b` by the deep conjugate direction method.

    Kaneda et al., "A Deep Conjugate Direction Method for Iteratively Solving Linear
    Systems" (ICML 2023). At each step the network proposes a direction from the
    residual, `f = network(r / rms(r))` (`rms(r) = |r| / sqrt(n)`, `n` the number of
    unknowns); it is A-orthogonalised against the
    last `n_orthogonal` directions, `d = f - sum_i (d_i . A f / d_i . A d_i) d_i`, and
    the iterate moves by the A-optimal step `x <- x + (d . r / d . A d) d`, so the
    error's A-norm never increases. With `network(r) = r` this is the conjugate
    gradient method. One matrix-vector product per step (`A d` is assembled from the
    stored `A d_i`); the loop is one `lax.while_loop`. It stops when
    `|r| <= atol + rtol |b|`; the recursively updated residual is then replaced by
    `b - A x`, and the iteration goes on if that true residual has not converged
    (float rounding makes the two drift apart).

    A safeguard, not in the paper: if the proposal is nearly orthogonal to the
    residual, `|f . r| < min_cosine |f| |r|`, the residual itself is used instead (a
    conjugate gradient step). The step along `d` reduces the squared A-norm of the
    error by `(d . r)^2 / d . A d`, and `d . r = f . r` (the residual is orthogonal to
    the directions `f` is orthogonalised against, in exact arithmetic), so a useless
    proposal would stall the solve; with the fallback each step makes at least the
    progress of a (locally) conjugate gradient step. `min_cosine=0` disables it.

    **Arguments:**

    - `operator`: a symmetric positive-definite lineax operator whose input and output
        are one grid of the shape of `vector` (e.g.
        `jaxmodels.data.diffusion_operator_2d(a)`).
    - `vector`: the right-hand side `b`, shape `(height, width)`.
    - `network`: the direction network, `network(r) -> d` on one grid, e.g. a trained
        [`jaxmodels.operators.DCDMNetwork`][].
    - `y0`: the initial guess; zeros by default.
    - `rtol`, `atol`: the stopping rule `|b - A x| <= atol + rtol |b|` (two-norms).
    - `max_steps`: the iteration budget.
    - `n_orthogonal`: how many previous directions each new one is A-orthogonalised
        against (the paper uses 2).
    - `min_cosine`: the threshold of the fallback to the residual, in `[0, 1)`.
    - `throw`: raise if the solve does not succeed (the default); otherwise return the
        last iterate with its `result` code.

    **Returns:** a [`jaxmodels.operators.DCDMSolution`][]. Not reverse-differentiable
    (a while loop); train the network with [`jaxmodels.operators.dcdm_loss`][].

    **Raises:** `ValueError` for a `vector` that is not a 2-D floating array, an
    `operator`, `network` or `y0` that does not match its shape, non-positive
    `max_steps` or `n_orthogonal`, negative tolerances or `min_cosine` outside
    `[0, 1)`; an `EquinoxRuntimeError` if
    `vector` or `y0` is not finite, or if the solve fails and `throw=True`.
    """
    _check_grid(vector, "vector")
    _check_operator(operator, vector)
    _check_network(network, vector)
    check_positive_int(max_steps, "max_steps")
    check_positive_int(n_orthogonal, "n_orthogonal")
    _check_nonnegative(rtol, "rtol")
    _check_nonnegative(atol, "atol")
    _check_nonnegative(min_cosine, "min_cosine")
    if min_cosine >= 1:
        raise ValueError(f"`min_cosine` must be in [0, 1); got {min_cosine!r}.")
    b = eqx.error_if(
        vector, ~jnp.all(jnp.isfinite(vector)), "`vector` contains NaN or inf."
    )
    dtype = b.dtype
    if y0 is None:
        x = jnp.zeros_like(b)
        r = b
    else:
        if not eqx.is_array(y0) or y0.shape != b.shape:
            raise ValueError(
                f"`y0` must have the shape of `vector`, {b.shape}; got "
                f"{getattr(y0, 'shape', type(y0).__name__)}."
            )
        x = eqx.error_if(
            y0.astype(dtype), ~jnp.all(jnp.isfinite(y0)), "`y0` contains NaN or inf."
        )
        r = b - operator.mv(x)
    b_norm = jnp.linalg.norm(b)
    scale = jnp.where(b_norm > 0, b_norm, 1)
    tol = atol + rtol * b_norm
    r_norm = jnp.linalg.norm(r)
    history = jnp.full(max_steps + 1, jnp.nan, dtype).at[0].set(r_norm / scale)
    zeros = jnp.zeros((n_orthogonal,) + b.shape, dtype)
    init = (
        jnp.array(0),
        x,
        r,
        r_norm,
        zeros,
        zeros,
        jnp.zeros(n_orthogonal, dtype),
        history,
        jnp.array(0),
        jnp.array(False),
    )

    def cond_fun(state):
        step, _, _, r_norm, *_, broken = state
        return (step < max_steps) & (r_norm > tol) & ~broken

    def body_fun(state):
        step, x, r, r_norm, dirs, a_dirs, curvatures, history, fallbacks, _ = state
        f = network(_rms_normalised(r, r_norm)).astype(dtype)
        fallback = jnp.abs(_vdot(f, r)) < min_cosine * jnp.linalg.norm(f) * r_norm
        f = jnp.where(fallback, r, f)
        af = operator.mv(f)
        filled = curvatures > 0
        coef = jnp.where(
            filled,
            jnp.tensordot(a_dirs, f, axes=2) / jnp.where(filled, curvatures, 1),
            0,
        )
        d = f - jnp.tensordot(coef, dirs, axes=1)
        ad = af - jnp.tensordot(coef, a_dirs, axes=1)
        curvature = _vdot(d, ad)
        ok = jnp.isfinite(curvature) & (curvature > 0)
        alpha = jnp.where(ok, _vdot(d, r) / jnp.where(ok, curvature, 1), 0)
        x = x + alpha * d
        r = r - alpha * ad
        r_norm = jnp.linalg.norm(r)

        # Residual replacement: converge on b - A x, not on the recursive residual.
        def true_residual():
            r_true = b - operator.mv(x)
            return r_true, jnp.linalg.norm(r_true)

        r, r_norm = lax.cond(r_norm <= tol, true_residual, lambda: (r, r_norm))
        slot = step % n_orthogonal
        dirs = dirs.at[slot].set(d)
        a_dirs = a_dirs.at[slot].set(ad)
        curvatures = curvatures.at[slot].set(jnp.where(ok, curvature, 0))
        history = history.at[step + 1].set(r_norm / scale)
        fallbacks = fallbacks + fallback
        return (
            step + 1,
            x,
            r,
            r_norm,
            dirs,
            a_dirs,
            curvatures,
            history,
            fallbacks,
            ~ok,
        )

    step, x, _, r_norm, dirs, _, _, history, fallbacks, broken = lax.while_loop(
        cond_fun, body_fun, init
    )
    residual = jnp.linalg.norm(b - operator.mv(x)) / scale
    result = RESULTS.where(
        broken,
        RESULTS.breakdown,
        RESULTS.where(r_norm > tol, RESULTS.max_steps_reached, RESULTS.successful),
    )
    if throw:
        x = result.error_if(x, result != RESULTS.successful)
    # Oldest first: the next slot to be overwritten holds the oldest direction.
    dirs = jnp.roll(dirs, -(step % n_orthogonal), axis=0)
    return DCDMSolution(
        value=x,
        result=result,
        num_steps=step,
        num_fallbacks=fallbacks,
        residual=residual,
        residual_history=history,
        directions=dirs,
    )


# --- baselines ------------------------------------------------------------------------


def jacobi_preconditioner(
    operator: lx.AbstractLinearOperator, *, stencil_radius: int = 1
) -> lx.AbstractLinearOperator:
    """The Jacobi preconditioner `D^{-1}` (`D` the diagonal of `A`) of a grid operator.

    The diagonal is read off `(2 stencil_radius + 1)^2` products with `A` by probing:
    each probe is the indicator of the grid points of one colour of a periodic
    colouring in which points of the same colour are more than `stencil_radius` apart,
    so it is exact for any operator that couples each unknown only to unknowns within
    that distance (5- and 9-point stencils: radius 1), without forming the matrix.
    Tagged positive semidefinite, so that it can be passed to `lineax.CG` as
    `options={"preconditioner": ...}` (lineax 0.1.1 does not consider a bare
    `DiagonalLinearOperator` positive semidefinite).

    **Arguments:**

    - `operator`: a lineax operator acting on one 2-D grid, with a positive diagonal.
    - `stencil_radius`: the coupling radius of the stencil, in grid points.

    **Returns:** a lineax operator on the same grid, `r -> r / diag(A)`.

    **Raises:** `ValueError` if `operator` does not act on one 2-D grid or
    `stencil_radius` is not a positive integer; an `EquinoxRuntimeError` if a diagonal
    entry is not positive.
    """
    check_positive_int(stencil_radius, "stencil_radius")
    structure = (
        operator.in_structure()
        if isinstance(operator, lx.AbstractLinearOperator)
        else None
    )
    if not isinstance(structure, jax.ShapeDtypeStruct) or len(structure.shape) != 2:
        raise ValueError(
            "`operator` must be a lineax operator acting on one 2-D grid; got "
            f"{type(operator).__name__} with input structure {structure}."
        )
    height, width = structure.shape
    period = 2 * stencil_radius + 1
    colour = (jnp.arange(height)[:, None] % period) * period + (
        jnp.arange(width)[None, :] % period
    )
    probes = (colour[None] == jnp.arange(period**2)[:, None, None]).astype(
        structure.dtype
    )
    diagonal = jnp.sum(jax.vmap(operator.mv)(probes) * probes, axis=0)
    diagonal = eqx.error_if(
        diagonal,
        ~jnp.all(diagonal > 0),
        "`operator` has a non-positive diagonal entry: Jacobi preconditioning needs "
        "a positive diagonal.",
    )
    return lx.TaggedLinearOperator(
        lx.DiagonalLinearOperator(1 / diagonal),
        (lx.symmetric_tag, lx.positive_semidefinite_tag),
    )
