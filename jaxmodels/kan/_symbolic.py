"""Symbolic snapping of KAN edges: `phi(x) ~ c f(a x + b) + d` from a library of `f`."""

import math
from collections.abc import Callable, Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from ._layer import KAN, AbstractKANLayer, KANLayer


# The library functions are evaluated on any argument (a grid search tries
# `a x + b` far from the data's range, and `SymbolicLayer` evaluates every function and
# selects one), so each is finite, with a finite derivative, everywhere: the singular
# ones are guarded as in pykan's `SYMBOLIC_LIB` singularity-avoiding variants.
_INV_EPS = 1e-4
_SQRT_EPS = 1e-8
_LOG_EPS = 1e-12
_EXP_MAX = 80.0
_TAN_MAX = 1e4
_GAUSS_NEWTON_STEPS = 20


def _identity(z):
    return z


def _square(z):
    return z**2


def _cube(z):
    return z**3


def _fourth(z):
    return z**4


def _inverse(z):
    # 1/z, continued linearly through 0 where |z| < eps (matching 1/z at |z| = eps).
    small = jnp.abs(z) < _INV_EPS
    return jnp.where(small, z / _INV_EPS**2, 1 / jnp.where(small, 1.0, z))


def _sqrt(z):
    # sign(z) sqrt(|z|), pykan's odd extension, linear where |z| < eps.
    small = jnp.abs(z) < _SQRT_EPS
    safe = jnp.where(small, 1.0, jnp.abs(z))
    return jnp.where(small, z / math.sqrt(_SQRT_EPS), jnp.sign(z) * jnp.sqrt(safe))


def _exp(z):
    # Capped below the float32 overflow (e^80 ~ 5.5e34), so values and gradients stay
    # finite for the grid search's extreme arguments.
    return jnp.exp(jnp.minimum(z, _EXP_MAX))


def _log(z):
    return jnp.log(jnp.maximum(jnp.abs(z), _LOG_EPS))


def _tan(z):
    return jnp.clip(jnp.tan(z), -_TAN_MAX, _TAN_MAX)


def _gaussian(z):
    return jnp.exp(-(z**2))


def _zero(z):
    return jnp.zeros_like(z)


SYMBOLIC_LIBRARY: dict[str, Callable[[Array], Array]] = {
    "x": _identity,
    "x^2": _square,
    "x^3": _cube,
    "x^4": _fourth,
    "1/x": _inverse,
    "sqrt": _sqrt,
    "exp": _exp,
    "log": _log,
    "sin": jnp.sin,
    "tan": _tan,
    "tanh": jnp.tanh,
    "abs": jnp.abs,
    "sgn": jnp.sign,
    "arctan": jnp.arctan,
    "gaussian": _gaussian,
    "0": _zero,
}

# pykan's complexities (the "bits" of `suggest_symbolic`'s simplicity preference); a
# function added by the user counts as 3.
_COMPLEXITY = {
    "x": 1,
    "x^2": 2,
    "x^3": 3,
    "x^4": 3,
    "1/x": 2,
    "sqrt": 2,
    "exp": 2,
    "log": 2,
    "sin": 2,
    "tan": 3,
    "tanh": 3,
    "abs": 3,
    "sgn": 3,
    "arctan": 4,
    "gaussian": 3,
    "0": 0,
}

# How `formula` writes each function, in Python/NumPy syntax (so that a formula can be
# evaluated with `numpy`'s names); `{}` is the argument.
_TEMPLATE = {
    "x": "{}",
    "x^2": "({})**2",
    "x^3": "({})**3",
    "x^4": "({})**4",
    "1/x": "1/({})",
    "sqrt": "sqrt({})",
    "exp": "exp({})",
    "log": "log({})",
    "sin": "sin({})",
    "tan": "tan({})",
    "tanh": "tanh({})",
    "abs": "abs({})",
    "sgn": "sign({})",
    "arctan": "arctan({})",
    "gaussian": "exp(-({})**2)",
    "0": "0",
}


Library = Sequence[str] | Mapping[str, Callable[[Array], Array]] | None


def _library(library: Library) -> tuple[tuple[str, ...], tuple[Callable, ...]]:
    """Names and functions of a library: all of `SYMBOLIC_LIBRARY`, a subset of it by
    name, or a mapping of new functions."""
    if library is None:
        return tuple(SYMBOLIC_LIBRARY), tuple(SYMBOLIC_LIBRARY.values())
    if isinstance(library, Mapping):
        names = tuple(library)
        functions = tuple(library.values())
        if not names or not all(callable(f) for f in functions):
            raise ValueError(
                "`library` must map names to functions of one array, with at least "
                f"one entry; got {library!r}."
            )
        return names, functions
    if isinstance(library, str) or not isinstance(library, Sequence) or not library:
        raise ValueError(
            "`library` must be None, a non-empty sequence of names from "
            "`SYMBOLIC_LIBRARY` or a mapping of names to functions; got "
            f"{library!r}."
        )
    names = tuple(library)
    for name in names:
        _check_name(name, "library")
    return names, tuple(SYMBOLIC_LIBRARY[n] for n in names)


def _check_name(name, argument: str) -> None:
    if not isinstance(name, str) or name not in SYMBOLIC_LIBRARY:
        raise ValueError(
            f"`{argument}`: unknown symbolic function {name!r}; the known ones are "
            f"{sorted(SYMBOLIC_LIBRARY)} (add one to `SYMBOLIC_LIBRARY`, or pass a "
            "mapping as `library`)."
        )


def _check_range(value, name: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a pair (lo, hi), got {value!r}.") from None
    if not lo < hi:
        raise ValueError(f"`{name}` must be (lo, hi) with lo < hi, got {value!r}.")
    return lo, hi


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}.")
    return value


def _fit_one(x, y, index, functions, a_range, b_range, grid_number, iterations, polish):
    """Fit `y ~ c f(a x + b) + d` for `f = functions[index]`.

    `index` is traced: `lax.switch` runs one branch. Compilation dominates the cost of
    one fit (one branch per function at each switch), so the function is evaluated at
    two sites only: the grid, and the Gauss-Newton step.
    """
    dtype = x.dtype
    yc = y - y.mean()
    ss_tot = jnp.sum(yc**2)

    def linear(fz):
        # The least-squares (c, d) for given values f(a x + b), and the residual.
        fc = fz - fz.mean(-1, keepdims=True)
        var = jnp.sum(fc**2, -1)
        ok = (var > 0) & jnp.isfinite(var)
        c = jnp.where(ok, jnp.sum(fc * yc, -1) / jnp.where(ok, var, 1.0), 0.0)
        d = y.mean() - c * fz.mean(-1)
        return c, d

    # pykan's `fit_params`: the R^2 of the best linear fit in (c, d) on a grid of
    # (a, b), zoomed `iterations` times onto the best point's neighbours.
    def zoom(_, carry):
        (a_lo, a_hi, b_lo, b_hi), _ = carry
        a_ = jnp.linspace(a_lo, a_hi, grid_number, dtype=dtype)
        b_ = jnp.linspace(b_lo, b_hi, grid_number, dtype=dtype)
        z = a_[:, None, None] * x[None, None, :] + b_[None, :, None]
        fz = jax.lax.switch(index, functions, z)
        fc = fz - fz.mean(-1, keepdims=True)
        num = jnp.sum(fc * yc[None, None, :], -1) ** 2
        den = jnp.sum(fc**2, -1) * ss_tot
        ok = (den > 0) & jnp.isfinite(num) & jnp.isfinite(den)
        r2 = jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)
        ia, ib = jnp.unravel_index(jnp.argmax(r2), r2.shape)
        last = grid_number - 1
        ranges = (
            a_[jnp.maximum(ia - 1, 0)],
            a_[jnp.minimum(ia + 1, last)],
            b_[jnp.maximum(ib - 1, 0)],
            b_[jnp.minimum(ib + 1, last)],
        )
        return ranges, (a_[ia], b_[ib], fz[ia, ib])

    ranges = (a_range[0], a_range[1], b_range[0], b_range[1])
    init = (ranges, (ranges[0], ranges[2], jnp.zeros_like(x)))
    _, (a, b, fz) = jax.lax.fori_loop(0, iterations, zoom, init)
    c, d = linear(fz)
    params = jnp.stack([a, b, c, d])
    ss = _finite_or_inf(jnp.sum((c * fz + d - y) ** 2))

    if polish:
        # Gauss-Newton on all four parameters from the grid's point, each step kept
        # only where it lowers the residual: on clean data the fit becomes exact
        # (quadratic convergence at a zero residual) instead of the grid's resolution.
        # f and f' come from one branch (a jvp of the elementwise function).
        branches = [
            lambda z, g=g: jax.jvp(g, (z,), (jnp.ones_like(z),)) for g in functions
        ]

        def gauss_newton(_, carry):
            p, fz, slope, ss, q = carry
            fq, sq = jax.lax.switch(index, branches, q[0] * x + q[1])
            ssq = _finite_or_inf(jnp.sum((q[2] * fq + q[3] - y) ** 2))
            better = ssq < ss
            p, fz, slope, ss = (
                jnp.where(better, new, old)
                for new, old in ((q, p), (fq, fz), (sq, slope), (ssq, ss))
            )
            r = p[2] * fz + p[3] - y
            jac = jnp.stack([p[2] * slope * x, p[2] * slope, fz, jnp.ones_like(x)], -1)
            # The minimum-norm step: the Jacobian is rank-deficient where parameters
            # are redundant (`c exp(a x + b)`, `c (a x + b)^2`).
            operator = lx.MatrixLinearOperator(jnp.where(jnp.isfinite(jac), jac, 0.0))
            step = lx.linear_solve(operator, -r, lx.SVD(), throw=False).value
            step = jnp.where(jnp.isfinite(step), step, 0.0)
            return p, fz, slope, ss, p + step

        # The first pass evaluates the grid's point itself (`ss = inf` accepts it).
        zero = jnp.zeros_like(x)
        carry = (params, zero, zero, jnp.array(jnp.inf, dtype), params)
        params2, _, _, ss2, _ = jax.lax.fori_loop(
            0, _GAUSS_NEWTON_STEPS + 1, gauss_newton, carry
        )
        better = ss2 < ss
        params = jnp.where(better, params2, params)
        ss = jnp.where(better, ss2, ss)
    r2 = 1 - ss / jnp.maximum(ss_tot, jnp.finfo(dtype).tiny)
    return params, jnp.where(jnp.isfinite(r2), r2, -jnp.inf)


def _finite_or_inf(value):
    return jnp.where(jnp.isfinite(value), value, jnp.inf)


# One compiled fit of one function, the function chosen by a traced index into a static
# library: every fit of one library (any edge, any function) on samples of one size
# reuses one compilation, where a batched fit would compile again for every number of
# edges; callers loop over the fits on the host (asynchronously dispatched).
_fit_jit = eqx.filter_jit(_fit_one)


def _float_dtype(*arrays):
    dtype = jnp.result_type(*arrays)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    return dtype


def fit_symbolic(
    x: Float[Array, " n"],
    y: Float[Array, " n"],
    fn: str | Callable[[Array], Array],
    *,
    a_range: tuple[float, float] = (-10.0, 10.0),
    b_range: tuple[float, float] = (-10.0, 10.0),
    grid_number: int = 101,
    iterations: int = 3,
    polish: bool = True,
) -> tuple[Float[Array, "4"], Float[Array, ""]]:
    """Fit `y ~ c f(a x + b) + d` to samples of a univariate function.

    As pykan's `fit_params` (Liu et al., "KAN: Kolmogorov-Arnold Networks", 2024,
    section 2.5.1): a grid search over `(a, b)` that maximises the `R^2` of the best
    linear fit in `(c, d)` (computed in closed form), zoomed `iterations` times onto the
    best point's neighbours, then `(c, d)` by least squares. Unlike pykan, all four
    parameters are then polished by Levenberg-Marquardt (`optimistix`), so that clean
    data are fitted exactly rather than to the grid's resolution.

    The parameters are not unique where `f` has symmetries (`sin` is periodic,
    `c exp(a x + b) = c e^b exp(a x)`, ...): any minimiser may be returned.

    **Arguments:**

    - `x`, `y`: the samples, shape `(n,)` each.
    - `fn`: the name of a function of `SYMBOLIC_LIBRARY`, or a function of one array
        (finite, with a finite derivative, wherever the grid search evaluates it).
    - `a_range`, `b_range`: the initial search intervals of `a` and `b`.
    - `grid_number`: grid points per parameter.
    - `iterations`: the number of zoomed grid searches.
    - `polish`: whether to refine all four parameters by Levenberg-Marquardt.

    **Returns:** `(params, r2)`: `params = [a, b, c, d]`, shape `(4,)`, and the
    coefficient of determination `1 - sum (y - fit)^2 / sum (y - mean y)^2` (1 for an
    exact fit, also of a constant `y`).

    **Raises:** `ValueError` for `x`, `y` not 1-D of one length `>= 2`, an unknown
    function name, an empty range or a `grid_number < 3`.
    """
    x, y = _check_samples(x, y)
    if callable(fn) and not isinstance(fn, str):
        functions, index = (fn,), 0
    else:
        _check_name(fn, "fn")
        # The whole library, indexed: one compilation for every function by name.
        names, functions = _library(None)
        index = names.index(fn)
    options = _options(a_range, b_range, grid_number, iterations, x.dtype)
    return _fit_jit(x, y, jnp.int32(index), functions, *options, bool(polish))


def _check_samples(x, y):
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    if x.ndim != 1 or x.shape[0] < 2:
        raise ValueError(f"`x` must be 1-D with at least 2 samples, got {x.shape}.")
    if y.shape != x.shape:
        raise ValueError(f"`y` must have the shape of `x`, {x.shape}, got {y.shape}.")
    dtype = _float_dtype(x, y)
    return x.astype(dtype), y.astype(dtype)


def _options(a_range, b_range, grid_number, iterations, dtype):
    a_range = jnp.asarray(_check_range(a_range, "a_range"), dtype)
    b_range = jnp.asarray(_check_range(b_range, "b_range"), dtype)
    return (
        a_range,
        b_range,
        _check_int(grid_number, "grid_number", 3),
        _check_int(iterations, "iterations", 1),
    )


class SymbolicLayer(AbstractKANLayer):
    """A KAN layer some of whose edges are snapped to symbolic functions.

    Liu et al., "KAN: Kolmogorov-Arnold Networks" (2024), section 2.5.1: once an edge's
    learned function looks like a known one, it is replaced by `c f(a x + b) + d` with
    `f` from a library and the affine parameters fitted to the edge; the parameters stay
    trainable, for the fine-tuning the paper does after snapping. Edges not snapped keep
    the wrapped `KANLayer`'s function; the wrapped layer's mask applies to both (a
    pruned edge is zero).

    Built unsnapped with `SymbolicLayer(layer)`; `snap`, `auto_symbolic` and
    `with_edge` snap edges.
    """

    layer: KANLayer
    snapped: Bool[Array, "out_features in_features"]
    function_index: Int[Array, "out_features in_features"]
    params: Float[Array, "out_features in_features 4"]
    library_names: tuple[str, ...] = eqx.field(static=True)
    functions: tuple[Callable, ...] = eqx.field(static=True)

    def __init__(self, layer: KANLayer, *, library: Library = None):
        """**Arguments:**

        - `layer`: the KAN layer to wrap.
        - `library`: the functions edges may be snapped to: `None` (all of
            `SYMBOLIC_LIBRARY`), a sequence of its names, or a mapping of names to
            functions.

        **Raises:** `ValueError` if `layer` is not a `KANLayer` or for a bad `library`.
        """
        if not isinstance(layer, KANLayer):
            raise ValueError(f"`layer` must be a KANLayer, got {type(layer).__name__}.")
        names, functions = _library(library)
        shape = (layer.out_features, layer.in_features)
        self.layer = layer
        self.snapped = jnp.zeros(shape, bool)
        self.function_index = jnp.zeros(shape, jnp.int32)
        identity = jnp.array([1.0, 0.0, 1.0, 0.0], layer.coef.dtype)
        self.params = jnp.broadcast_to(identity, shape + (4,))
        self.library_names = names
        self.functions = functions

    @property
    def in_features(self) -> int:
        return self.layer.in_features

    @property
    def out_features(self) -> int:
        return self.layer.out_features

    def symbolic(
        self, x: Float[Array, " {self.in_features}"]
    ) -> Float[Array, "{self.out_features} {self.in_features}"]:
        """`c f(a x_i + b) + d` on every edge (snapped or not), unmasked, shape
        `(out_features, in_features)`."""
        p = self.params
        z = p[..., 0] * x[None, :] + p[..., 1]
        # Every function on every edge, then a selection: a few cheap elementwise
        # functions, and `vmap` would turn a `lax.switch` into the same selection.
        values = jnp.stack([f(z) for f in self.functions])
        fz = jnp.take_along_axis(values, self.function_index[None], axis=0)[0]
        return p[..., 2] * fz + p[..., 3]

    def edges(
        self, x: Float[Array, " {self.in_features}"]
    ) -> Float[Array, "{self.out_features} {self.in_features}"]:
        """**Arguments:**

        - `x`: one input vector, shape `(in_features,)`.

        **Returns:** `phi_{j,i}(x_i)` for every edge, shape `(out_features,
        in_features)`: the symbolic function on snapped edges, the wrapped layer's
        elsewhere.

        **Raises:** `ValueError` if `x` does not have shape `(in_features,)`.
        """
        numeric = self.layer.edges(x)
        mask = jax.lax.stop_gradient(self.layer.mask)
        return jnp.where(self.snapped, mask * self.symbolic(x), numeric)

    def __call__(
        self,
        x: Float[Array, " {self.in_features}"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, " {self.out_features}"]:
        """**Arguments:**

        - `x`: one input vector, shape `(in_features,)`.
        - `key`: unused; for the uniform model signature.

        **Returns:** `sum_i phi_{j,i}(x_i)`, shape `(out_features,)`.
        """
        del key
        return self.edges(x).sum(-1)

    def with_edge(
        self, out: int, in_: int, name: str, params: Float[Array, "4"]
    ) -> "SymbolicLayer":
        """This layer with edge `(out, in_)` snapped to `params[2] f(params[0] x +
        params[1]) + params[3]`, `f` the library function `name` (looked up in
        `SYMBOLIC_LIBRARY` and appended to this layer's library if it is not there).

        **Raises:** `ValueError` for an index out of range or an unknown name.
        """
        _check_index(out, self.out_features, "out")
        _check_index(in_, self.in_features, "in_")
        layer = self
        if name not in self.library_names:
            _check_name(name, "name")
            layer = _with_library(
                self,
                self.library_names + (name,),
                self.functions + (SYMBOLIC_LIBRARY[name],),
            )
        k = layer.library_names.index(name)
        params = jnp.asarray(params, self.params.dtype)
        return eqx.tree_at(
            lambda s: (s.snapped, s.function_index, s.params),
            layer,
            (
                layer.snapped.at[out, in_].set(True),
                layer.function_index.at[out, in_].set(k),
                layer.params.at[out, in_].set(params),
            ),
        )


def _with_library(layer: SymbolicLayer, names, functions) -> SymbolicLayer:
    # Static fields cannot be set by `eqx.tree_at`; rebuild the instance field by field,
    # as Equinox's own unflattening does.
    new = object.__new__(SymbolicLayer)
    for field in layer.__dataclass_fields__:
        object.__setattr__(new, field, getattr(layer, field))
    object.__setattr__(new, "library_names", names)
    object.__setattr__(new, "functions", functions)
    return new


def _check_index(value, size: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"`{name}` must be an int, got {value!r}.")
    if not 0 <= value < size:
        raise ValueError(
            f"`{name}` = {value} is out of range: it must be in [0, {size})."
        )
    return int(value)


def _check_batch(model: KAN, x) -> Array:
    n = model.layers[0].in_features
    x = jnp.asarray(x)
    if x.ndim != 2 or x.shape[1] != n or x.shape[0] < 2:
        raise ValueError(
            f"`x` must be a batch of at least 2 inputs of shape (batch, {n}), got "
            f"{x.shape}."
        )
    return x


@eqx.filter_jit
def _edge_samples(model: KAN, x):
    """Per layer: the inputs `(batch, in)`, the numeric (unsnapped) edge values `(batch,
    out, in)` and the live mask `(out, in)`."""
    out = []
    for layer, (inputs, _) in zip(model.layers, jax.vmap(model.activations)(x)):
        base = layer.layer if isinstance(layer, SymbolicLayer) else layer
        values = jax.vmap(base.edges)(inputs)
        if isinstance(base, KANLayer):
            live = base.mask != 0
        else:
            live = jnp.ones((layer.out_features, layer.in_features), bool)
        if isinstance(layer, SymbolicLayer):
            live = live & ~layer.snapped
        out.append((inputs, values, live))
    return tuple(out)


def _fit_library(xs, ys, library: Library, a_range, b_range, grid_number, iterations):
    """Fit every function of `library` to every sample set: `xs`, `ys` of shape
    `(edges, n)`; returns names, params `(edges, L, 4)`, r2 `(edges, L)`."""
    names, functions = _library(library)
    dtype = _float_dtype(xs, ys)
    options = _options(a_range, b_range, grid_number, iterations, dtype)
    xs, ys = xs.astype(dtype), ys.astype(dtype)
    fits = [
        [
            _fit_jit(x, y, jnp.int32(k), functions, *options, True)
            for k in range(len(names))
        ]
        for x, y in zip(xs, ys)
    ]
    params = np.asarray([[p for p, _ in row] for row in fits])
    r2 = np.asarray([[r for _, r in row] for row in fits])
    return names, params, r2


def _ranking(names, r2, weight_simple: float) -> list[int]:
    """pykan's ranking: `weight_simple * complexity + (1 - weight_simple) *
    log2(1 + 1e-5 - R^2)`, lowest first; ties to the simpler function."""
    complexity = [_COMPLEXITY.get(n, 3) for n in names]
    bits = np.log2(np.maximum(1 + 1e-5 - np.asarray(r2, np.float64), 1e-300))
    score = weight_simple * np.asarray(complexity) + (1 - weight_simple) * bits
    score = np.where(np.isfinite(score), score, np.inf)
    return sorted(range(len(names)), key=lambda k: (score[k], complexity[k], k))


def _check_weight(weight_simple) -> float:
    try:
        w = float(weight_simple)
    except (TypeError, ValueError):
        w = -1.0
    if not 0 <= w < 1:
        raise ValueError(f"`weight_simple` must be in [0, 1), got {weight_simple!r}.")
    return w


def _check_edge(model: KAN, layer, out, in_) -> None:
    _check_index(layer, len(model.layers), "layer")
    _check_index(out, model.layers[layer].out_features, "out")
    _check_index(in_, model.layers[layer].in_features, "in_")


def suggest_symbolic(
    model: KAN,
    layer: int,
    out: int,
    in_: int,
    x: Float[Array, "batch in_features"],
    *,
    library: Library = None,
    weight_simple: float = 0.0,
    a_range: tuple[float, float] = (-10.0, 10.0),
    b_range: tuple[float, float] = (-10.0, 10.0),
    grid_number: int = 101,
    iterations: int = 3,
) -> list[tuple[str, float, Float[Array, "4"]]]:
    """Rank the library's functions by how well they fit one edge.

    pykan's `suggest_symbolic` (Liu et al., "KAN: Kolmogorov-Arnold Networks", 2024):
    every function is fitted to the edge's samples (its input and its learned function's
    value at the inputs the batch `x` reaches) by `fit_symbolic`. With `weight_simple =
    0` the ranking is by `R^2` (ties to the simpler function); pykan's
    `weight_simple = 0.8` trades `R^2` (as `log2(1 + 1e-5 - R^2)` bits) for
    simplicity (pykan's complexities: 1 for `x`, 2 for `sin`, ...).

    **Arguments:**

    - `model`: the KAN.
    - `layer`, `out`, `in_`: the edge from node `in_` of layer `layer`'s input to its
        output node `out`.
    - `x`: a batch of model inputs, shape `(batch, widths[0])`.
    - `library`: `None` (all of `SYMBOLIC_LIBRARY`), a sequence of its names, or a
        mapping of names to functions.
    - `weight_simple`: the preference for simple functions, in `[0, 1)`.
    - `a_range`, `b_range`, `grid_number`, `iterations`: as for `fit_symbolic`.

    **Returns:** `(name, r2, params)` for every function, best first; `params = [a, b,
    c, d]`.

    **Raises:** `ValueError` for an index out of range, an `x` of the wrong shape or a
    bad `library`.
    """
    _check_edge(model, layer, out, in_)
    x = _check_batch(model, x)
    w = _check_weight(weight_simple)
    inputs, values, _ = _edge_samples(model, x)[layer]
    names, params, r2 = _fit_library(
        inputs[None, :, in_],
        values[None, :, out, in_],
        library,
        a_range,
        b_range,
        grid_number,
        iterations,
    )
    return [
        (names[k], float(r2[0, k]), jnp.asarray(params[0, k]))
        for k in _ranking(names, r2[0], w)
    ]


def _set_edge(model: KAN, layer: int, out: int, in_: int, name: str, params) -> KAN:
    current = model.layers[layer]
    if isinstance(current, KANLayer):
        current = SymbolicLayer(current)
    elif not isinstance(current, SymbolicLayer):
        raise ValueError(
            f"`layer` {layer} is a {type(current).__name__}; only KANLayer and "
            "SymbolicLayer edges can be snapped."
        )
    new = current.with_edge(out, in_, name, jnp.asarray(params, current.params.dtype))
    return eqx.tree_at(lambda m: m.layers[layer], model, new)


def snap(
    model: KAN,
    layer: int,
    out: int,
    in_: int,
    name: str,
    x: Float[Array, "batch in_features"],
    *,
    a_range: tuple[float, float] = (-10.0, 10.0),
    b_range: tuple[float, float] = (-10.0, 10.0),
    grid_number: int = 101,
    iterations: int = 3,
) -> KAN:
    """Snap one edge to a library function fitted to it (pykan's `fix_symbolic`).

    The edge's learned function is sampled at the inputs the batch `x` reaches, `c f(a x
    + b) + d` is fitted to the samples by `fit_symbolic`, and the layer is replaced by a
    `SymbolicLayer` (or the existing one updated) with that edge snapped.

    **Arguments:**

    - `model`: the KAN.
    - `layer`, `out`, `in_`: the edge.
    - `name`: the function, a key of `SYMBOLIC_LIBRARY`.
    - `x`: a batch of model inputs, shape `(batch, widths[0])`.
    - `a_range`, `b_range`, `grid_number`, `iterations`: as for `fit_symbolic`.

    **Returns:** the model with the edge snapped.

    **Raises:** `ValueError` for an index out of range, an unknown `name`, an `x` of the
    wrong shape, or a layer that is neither a `KANLayer` nor a `SymbolicLayer`.
    """
    _check_edge(model, layer, out, in_)
    _check_name(name, "name")
    x = _check_batch(model, x)
    inputs, values, _ = _edge_samples(model, x)[layer]
    params, _ = fit_symbolic(
        inputs[:, in_],
        values[:, out, in_],
        name,
        a_range=a_range,
        b_range=b_range,
        grid_number=grid_number,
        iterations=iterations,
    )
    return _set_edge(model, layer, out, in_, name, params)


def auto_symbolic(
    model: KAN,
    x: Float[Array, "batch in_features"],
    *,
    library: Sequence[str] | None = None,
    r2_threshold: float = 0.99,
    weight_simple: float = 0.8,
    a_range: tuple[float, float] = (-10.0, 10.0),
    b_range: tuple[float, float] = (-10.0, 10.0),
    grid_number: int = 101,
    iterations: int = 3,
) -> KAN:
    """Snap every live, not yet snapped edge to its best library function (pykan's
    `auto_symbolic`).

    All edges are sampled in one forward pass of the batch `x`, every library function
    is fitted to every edge (one compiled computation), and each edge whose best
    function by pykan's ranking (see `suggest_symbolic`) reaches `R^2 >=
    r2_threshold` is snapped; the others keep their learned function. Pruned edges (mask
    0) are left alone.

    **Arguments:**

    - `model`: the KAN.
    - `x`: a batch of model inputs, shape `(batch, widths[0])`.
    - `library`: `None` (all of `SYMBOLIC_LIBRARY`) or a sequence of its names.
    - `r2_threshold`: the `R^2` an edge's best function needs to be snapped.
    - `weight_simple`: the preference for simple functions (pykan's 0.8).
    - `a_range`, `b_range`, `grid_number`, `iterations`: as for `fit_symbolic`.

    **Returns:** the model, its layers with snapped edges replaced by
    `SymbolicLayer`s.

    **Raises:** `ValueError` for an `x` of the wrong shape or a bad `library`.
    """
    x = _check_batch(model, x)
    w = _check_weight(weight_simple)
    if isinstance(library, Mapping):
        raise ValueError(
            "`library` must be None or a sequence of names of `SYMBOLIC_LIBRARY` "
            "(add new functions to `SYMBOLIC_LIBRARY`)."
        )
    names, _ = _library(library)
    samples = _edge_samples(model, x)
    edges, xs, ys = [], [], []
    for k, (inputs, values, live) in enumerate(samples):
        for j, i in zip(*np.nonzero(np.asarray(live))):
            edges.append((k, int(j), int(i)))
            xs.append(inputs[:, i])
            ys.append(values[:, j, i])
    if not edges:
        return model
    names, params, r2 = _fit_library(
        jnp.stack(xs), jnp.stack(ys), names, a_range, b_range, grid_number, iterations
    )
    for e, (k, j, i) in enumerate(edges):
        best = _ranking(names, r2[e], w)[0]
        if r2[e, best] >= r2_threshold:
            model = _set_edge(model, k, j, i, names[best], params[e, best])
    return model


def _number(value: float, precision: int) -> str:
    return f"{value:.{precision}g}"


def _wrap(expr: str) -> str:
    """`expr` in parentheses unless it is a name, a number or a call `f(...)`."""
    if expr.replace("_", "").replace(".", "").isalnum():
        return expr
    head = expr.split("(", 1)[0]
    if head and head.replace("_", "").isalnum() and expr.endswith(")"):
        depth = 0
        for position, char in enumerate(expr[len(head) :]):
            depth += {"(": 1, ")": -1}.get(char, 0)
            if depth == 0:
                break
        if position == len(expr) - len(head) - 1:
            return expr
    return f"({expr})"


def _affine(a: float, b: float, expr: str, precision: int) -> str:
    sa, sb = _number(a, precision), _number(abs(b), precision)
    out = _wrap(expr) if sa == "1" else f"{sa}*{_wrap(expr)}"
    if sa == "-1":
        out = f"-{_wrap(expr)}"
    if sb != "0":
        out = f"{out} {'-' if b < 0 else '+'} {sb}"
    return out


def _edge_string(name: str, p, expr: str, precision: int) -> tuple[str | None, float]:
    """`c f(a x + b)` as a string (None for a zero term) and the constant `d`."""
    a, b, c, d = (float(v) for v in p)
    if name == "0" or _number(c, precision) == "0":
        return None, d
    template = _TEMPLATE.get(name, name + "({})")
    inner = template.format(_affine(a, b, expr, precision))
    sc = _number(c, precision)
    if sc == "1":
        return inner, d
    if sc == "-1":
        return f"-{_wrap(inner)}", d
    return f"{sc}*{_wrap(inner)}", d


def _node_string(terms: list[str], constant: float, precision: int) -> str:
    sc = _number(abs(constant), precision)
    if not terms:
        return _number(constant, precision)
    out = terms[0]
    for t in terms[1:]:
        out = f"{out} - {t[1:]}" if t.startswith("-") else f"{out} + {t}"
    if sc != "0":
        out = f"{out} {'-' if constant < 0 else '+'} {sc}"
    return out


def formula(
    model: KAN, *, precision: int = 4, variables: Sequence[str] | None = None
) -> list[str]:
    """Each output of a (partly) symbolic KAN as a readable expression.

    Composes, layer by layer, `sum_i c f(a x_i + b) + d` over the live edges into each
    node, in Python/NumPy syntax (`**` for powers, `sin`, `exp`, `log`, `sqrt`,
    `sign`, `arctan` as in NumPy), so that a formula can be evaluated with NumPy's
    functions for the variables. `sqrt` and `log` are the library's extensions,
    `sign(z) sqrt(|z|)` and `log|z|`, written as their principal branches. Edges still
    numeric appear as `phi_{layer}_{out}_{in}(...)`; pruned edges are left out. No
    algebraic simplification beyond dropping unit factors and zero terms.

    **Arguments:**

    - `model`: the KAN.
    - `precision`: significant digits of the printed numbers.
    - `variables`: the names of the inputs; default `x_1, ..., x_n`.

    **Returns:** one string per output.

    **Raises:** `ValueError` for a `precision < 1` or a wrong number of `variables`.
    """
    _check_int(precision, "precision", 1)
    n = model.layers[0].in_features
    if variables is None:
        variables = [f"x_{i + 1}" for i in range(n)]
    elif isinstance(variables, str) or len(variables) != n:
        raise ValueError(f"`variables` must name the {n} inputs, got {variables!r}.")
    exprs = list(variables)
    for k, layer in enumerate(model.layers):
        base = layer.layer if isinstance(layer, SymbolicLayer) else layer
        if isinstance(base, KANLayer):
            live = np.asarray(base.mask) != 0
        else:
            live = np.ones((layer.out_features, layer.in_features), bool)
        if isinstance(layer, SymbolicLayer):
            snapped = np.asarray(layer.snapped)
            index = np.asarray(layer.function_index)
            params = np.asarray(layer.params)
        else:
            snapped = np.zeros_like(live)
        new = []
        for j in range(layer.out_features):
            terms, constant = [], 0.0
            for i in range(layer.in_features):
                if not live[j, i]:
                    continue
                if snapped[j, i]:
                    name = layer.library_names[index[j, i]]
                    term, d = _edge_string(name, params[j, i], exprs[i], precision)
                    constant += d
                else:
                    term = f"phi_{k}_{j}_{i}({exprs[i]})"
                if term is not None:
                    terms.append(term)
            new.append(_node_string(terms, constant, precision))
        exprs = new
    return exprs
