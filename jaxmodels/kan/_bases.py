"""Bases of KAN edges beyond B-splines, AF-KAN's layer and the selectable basis.

Each basis is a final `AbstractBasis` whose hyperparameters are static ints and whose
data (knots, centres, windows, selection logits) are array leaves, so that one class
covers one shape of computation: ChebyKAN's Chebyshev polynomials, FourierKAN's
harmonics, FastKAN's Gaussian radial functions, ReLU-KAN's squared ReLU windows and
AF-KAN's windows built from other activation functions. `Selectable` mixes several
bases with learned weights per input node.
"""

import math
from collections.abc import Callable, Sequence
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ._basis import AbstractBasis
from ._layer import KAN, AbstractKANLayer


def _int_at_least(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}.")
    return value


def _interval(grid_range) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in grid_range)
    except (TypeError, ValueError):
        raise ValueError(
            f"`grid_range` must be a pair (lo, hi) of numbers, got {grid_range!r}."
        ) from None
    if not lo < hi:
        raise ValueError(
            f"`grid_range` must be (lo, hi) with lo < hi, got {grid_range!r}."
        )
    return lo, hi


def _check_x(x: Array, in_features: int) -> None:
    if x.shape != (in_features,):
        raise ValueError(
            f"`x` must have shape (in_features,) = ({in_features},), got {x.shape}."
        )


class Chebyshev(AbstractBasis):
    """Chebyshev polynomials `T_0, ..., T_d` of `tanh(x)` (ChebyKAN).

    As in ChebyKAN (SynodicMonth, "ChebyKAN", 2024; see also SS et al.,
    "Chebyshev Polynomial-Based Kolmogorov-Arnold Networks", 2024): the input is first
    squashed by `tanh`, because the Chebyshev polynomials are bounded (by 1) and
    well-conditioned only on `[-1, 1]`, and a hidden layer's inputs can leave any fixed
    interval during training; `tanh` keeps the argument in `(-1, 1)` without a grid
    update. The polynomials are evaluated by the three-term recurrence
    `T_{n+1}(t) = 2 t T_n(t) - T_{n-1}(t)`, which unlike `cos(n arccos t)` has a finite
    derivative at `t = +-1` (where `tanh` rounds for large `|x|`).
    """

    in_features: int = eqx.field(static=True)
    degree: int = eqx.field(static=True)

    def __init__(self, in_features: int, *, degree: int = 5):
        """**Arguments:**

        - `in_features`: the number of input coordinates.
        - `degree`: the highest degree `d`; the basis has `d + 1` functions.

        **Raises:** `ValueError` for `in_features < 1` or `degree < 0`.
        """
        self.in_features = _int_at_least(in_features, "in_features", 1)
        self.degree = _int_at_least(degree, "degree", 0)

    @property
    def size(self) -> int:
        return self.degree + 1

    def __call__(
        self, x: Float[Array, " {self.in_features}"]
    ) -> Float[Array, "{self.in_features} {self.size}"]:
        """**Arguments:**

        - `x`: one input vector, shape `(in_features,)`.

        **Returns:** `T_n(tanh(x_i))` for `n = 0, ..., degree`, shape
        `(in_features, degree + 1)`.

        **Raises:** `ValueError` if `x` does not have shape `(in_features,)`.
        """
        _check_x(x, self.in_features)
        t = jnp.tanh(x)
        polys = [jnp.ones_like(t), t]
        for _ in range(2, self.degree + 1):
            polys.append(2 * t * polys[-1] - polys[-2])
        return jnp.stack(polys[: self.degree + 1], axis=-1)


class Fourier(AbstractBasis):
    """The harmonics `cos(k x), sin(k x)`, `k = 1, ..., K` (FourierKAN).

    As in FourierKAN (GistNoesis, "FourierKAN", 2024): every edge is a truncated Fourier
    series `sum_k a_k cos(k x) + b_k sin(k x)` (the constant term is left to the layer's
    other edges and the base activation). The functions are ordered
    `cos(x), ..., cos(K x), sin(x), ..., sin(K x)`. They are periodic with period
    `2 pi`, so inputs are best kept within an interval shorter than that (such as
    `[-1, 1]`, or `[-pi, pi]` for a fully periodic target).
    """

    in_features: int = eqx.field(static=True)
    frequencies: int = eqx.field(static=True)

    def __init__(self, in_features: int, *, frequencies: int = 5):
        """**Arguments:**

        - `in_features`: the number of input coordinates.
        - `frequencies`: the number `K` of harmonics; the basis has `2 K` functions.

        **Raises:** `ValueError` for `in_features < 1` or `frequencies < 1`.
        """
        self.in_features = _int_at_least(in_features, "in_features", 1)
        self.frequencies = _int_at_least(frequencies, "frequencies", 1)

    @property
    def size(self) -> int:
        return 2 * self.frequencies

    def __call__(
        self, x: Float[Array, " {self.in_features}"]
    ) -> Float[Array, "{self.in_features} {self.size}"]:
        """**Arguments:**

        - `x`: one input vector, shape `(in_features,)`.

        **Returns:** `cos(k x_i)` for `k = 1..K` then `sin(k x_i)` for `k = 1..K`, shape
        `(in_features, 2 K)`.

        **Raises:** `ValueError` if `x` does not have shape `(in_features,)`.
        """
        _check_x(x, self.in_features)
        k = jnp.arange(1, self.frequencies + 1, dtype=x.dtype)
        kx = x[:, None] * k[None, :]
        return jnp.concatenate([jnp.cos(kx), jnp.sin(kx)], axis=-1)


class GaussianRBF(AbstractBasis):
    """Gaussian radial functions `exp(-((x - c_i) / h)^2)` on uniform centres (FastKAN).

    Li, "Kolmogorov-Arnold Networks are Radial Basis Function Networks" (FastKAN, 2024):
    a Gaussian of width `h` replaces each cubic B-spline, which it approximates closely.
    The `G` centres `c_i` are uniform on `grid_range` (its ends included) and `h` is
    their spacing, `(hi - lo) / (G - 1)` (for `G = 1`, `hi - lo`). FastKAN also
    layer-normalises the inputs of each layer; that is not part of the basis. The
    centres and the width are data, not trained (read under `stop_gradient`).
    """

    centres: Float[Array, "in_features grid_size"]
    width: Float[Array, ""]
    in_features: int = eqx.field(static=True)
    grid_size: int = eqx.field(static=True)

    def __init__(
        self,
        in_features: int,
        *,
        grid_size: int = 8,
        grid_range: tuple[float, float] = (-1.0, 1.0),
    ):
        """**Arguments:**

        - `in_features`: the number of input coordinates.
        - `grid_size`: the number `G` of centres (and of functions).
        - `grid_range`: `(lo, hi)`, the span of the centres.

        **Raises:** `ValueError` for `in_features < 1`, `grid_size < 1` or
        `grid_range` with `lo >= hi`.
        """
        self.in_features = _int_at_least(in_features, "in_features", 1)
        self.grid_size = _int_at_least(grid_size, "grid_size", 1)
        lo, hi = _interval(grid_range)
        centres = jnp.linspace(lo, hi, grid_size) if grid_size > 1 else jnp.array([lo])
        self.centres = jnp.tile(centres, (in_features, 1))
        self.width = jnp.asarray((hi - lo) / max(grid_size - 1, 1))

    @property
    def size(self) -> int:
        return self.grid_size

    def __call__(
        self, x: Float[Array, " {self.in_features}"]
    ) -> Float[Array, "{self.in_features} {self.size}"]:
        """**Arguments:**

        - `x`: one input vector, shape `(in_features,)`.

        **Returns:** `exp(-((x_i - c_{i,m}) / h)^2)`, shape `(in_features, grid_size)`.

        **Raises:** `ValueError` if `x` does not have shape `(in_features,)`.
        """
        _check_x(x, self.in_features)
        c = jax.lax.stop_gradient(self.centres)
        h = jax.lax.stop_gradient(self.width)
        return jnp.exp(-(((x[:, None] - c) / h) ** 2))


def _windows(
    in_features: int, grid_size: int, order: int, grid_range
) -> tuple[Array, Array]:
    """ReLU-KAN's `G + k` windows `[s_i, e_i]` of `k + 1` grid cells each, per input."""
    lo, hi = _interval(grid_range)
    h = (hi - lo) / grid_size
    starts = lo + h * jnp.arange(-order, grid_size, dtype=float)
    ends = starts + (order + 1) * h
    return jnp.tile(starts, (in_features, 1)), jnp.tile(ends, (in_features, 1))


class ReLUKAN(AbstractBasis):
    """ReLU-KAN's windows `R_i(x) = [ReLU(e_i - x) ReLU(x - s_i)]^2 16 / (e_i - s_i)^4`.

    Qiu, Zhu, Sun, Jiang, Yang, "ReLU-KAN: New Kolmogorov-Arnold Networks that Only
    Need Matrix Addition, Dot Multiplication, and ReLU" (2024). Each function is a
    smooth bump (a piecewise quartic, `C^1`) supported on `[s_i, e_i]`, zero outside,
    and the factor `16 / (e_i - s_i)^4` makes its peak, at the midpoint, exactly 1
    (ReLU-KAN's `r = 4 G^2 / (k + 1)^2` squared). As in the paper's code, the `G` grid
    cells of width `h` split `grid_range`, and the `G + k` windows span `k + 1` cells
    each, with starts `lo - k h, ..., hi - h`, so that every point of `grid_range` lies
    in `k + 1` windows, as it would for B-splines of order `k`. The paper's code can
    train the window ends (`train_ab`); here they are fixed data (read under
    `stop_gradient`), like the knots of `BSpline`.
    """

    starts: Float[Array, "in_features size"]
    ends: Float[Array, "in_features size"]
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
    ):
        """**Arguments:**

        - `in_features`: the number of input coordinates.
        - `grid_size`: the number `G` of grid cells on `grid_range`.
        - `order`: `k`: each window spans `k + 1` cells; the basis has `G + k`
            functions.
        - `grid_range`: `(lo, hi)`, the interval the grid cells split.

        **Raises:** `ValueError` for `in_features < 1`, `grid_size < 1`, `order < 0` or
        `grid_range` with `lo >= hi`.
        """
        self.in_features = _int_at_least(in_features, "in_features", 1)
        self.grid_size = _int_at_least(grid_size, "grid_size", 1)
        self.order = _int_at_least(order, "order", 0)
        self.starts, self.ends = _windows(in_features, grid_size, order, grid_range)

    @property
    def size(self) -> int:
        return self.grid_size + self.order

    def __call__(
        self, x: Float[Array, " {self.in_features}"]
    ) -> Float[Array, "{self.in_features} {self.size}"]:
        """**Arguments:**

        - `x`: one input vector, shape `(in_features,)`.

        **Returns:** `R_i(x_j)` for every window, shape `(in_features, G + k)`.

        **Raises:** `ValueError` if `x` does not have shape `(in_features,)`.
        """
        _check_x(x, self.in_features)
        s = jax.lax.stop_gradient(self.starts)
        e = jax.lax.stop_gradient(self.ends)
        x = x[:, None]
        bump = jax.nn.relu(e - x) * jax.nn.relu(x - s) * (4 / (e - s) ** 2)
        return bump**2


# AF-KAN's "function combinations" f(a, b) of a = act(x - s) and b = act(e - x), named
# as in the paper's code (All-KAN, models/af_kan.py).
_COMBINATIONS: dict[str, Callable[[Array, Array], Array]] = {
    "quad1": lambda a, b: (a * b) ** 2,
    "quad2": lambda a, b: a * b + a**2 + b**2,
    "sum": lambda a, b: a + b,
    "prod": lambda a, b: a * b,
    "sum_prod": lambda a, b: a + b + a * b,
    "cubic1": lambda a, b: (a + b) * (a**2 + b**2),
    "cubic2": lambda a, b: (a * b) ** 3,
}

Combination = Literal["quad1", "quad2", "sum", "prod", "sum_prod", "cubic1", "cubic2"]


class AFKAN(AbstractBasis):
    """AF-KAN's windows: `f(act(x - s_i), act(e_i - x))`, normalised to 1 at the centre.

    Ta and Tran, "AF-KAN: Activation Function-Based Kolmogorov-Arnold Networks for
    Efficient Representation Learning" (2025) replace the ReLUs of ReLU-KAN by other
    activation functions `act` (SiLU, GELU, ...) and the square of the product by other
    "function combinations" `f(a, b)`: `quad1 = (ab)^2` (ReLU-KAN's), `quad2 = ab + a^2
    + b^2`, `sum = a + b`, `prod = ab`, `sum_prod = a + b + ab`, `cubic1 = (a + b)(a^2 +
    b^2)`, `cubic2 = (ab)^3`. The windows `[s_i, e_i]` are ReLU-KAN's (see `ReLUKAN`).
    With `act = relu` and `quad1` this basis is exactly `ReLUKAN`.

    Departure from the paper: its code normalises the features of a whole batch (an L2
    normalisation then a min-max scaling to `[0, 1]` over the batch, every input and
    every function), which makes one example's output depend on the rest of the batch.
    Here each function is divided instead by its value at the centre of its window,
    `f(act(w/2), act(w/2))` with `w = e_i - s_i`, a per-example normalisation that
    reduces to ReLU-KAN's `16 / w^4`. AF-KAN's attention-like combination of these
    functions, with its layer normalisation, is `AFKANLayer`; with `KANLayer` this basis
    gets a full coefficient vector per edge instead.
    """

    starts: Float[Array, "in_features size"]
    ends: Float[Array, "in_features size"]
    in_features: int = eqx.field(static=True)
    grid_size: int = eqx.field(static=True)
    order: int = eqx.field(static=True)
    activation: Callable[[Array], Array] = eqx.field(static=True)
    combination: str = eqx.field(static=True)

    def __init__(
        self,
        in_features: int,
        *,
        grid_size: int = 5,
        order: int = 3,
        grid_range: tuple[float, float] = (-1.0, 1.0),
        activation: Callable[[Array], Array] = jax.nn.silu,
        combination: Combination = "quad1",
    ):
        """**Arguments:**

        - `in_features`: the number of input coordinates.
        - `grid_size`, `order`, `grid_range`: the windows, as for `ReLUKAN`.
        - `activation`: the elementwise activation `act` (SiLU, the default of the
            paper's layer code).
        - `combination`: the function combination `f`, one of `"quad1"`, `"quad2"`,
            `"sum"`, `"prod"`, `"sum_prod"`, `"cubic1"`, `"cubic2"`.

        **Raises:** `ValueError` for `in_features < 1`, `grid_size < 1`, `order < 0`,
        `grid_range` with `lo >= hi`, an unknown `combination`, or an `activation`
        whose combination is zero or not finite at the window centre (nothing to
        normalise by).
        """
        self.in_features = _int_at_least(in_features, "in_features", 1)
        self.grid_size = _int_at_least(grid_size, "grid_size", 1)
        self.order = _int_at_least(order, "order", 0)
        if combination not in _COMBINATIONS:
            raise ValueError(
                f"`combination` must be one of {sorted(_COMBINATIONS)}, got "
                f"{combination!r}."
            )
        self.starts, self.ends = _windows(in_features, grid_size, order, grid_range)
        lo, hi = _interval(grid_range)
        half = (order + 1) * (hi - lo) / grid_size / 2
        with jax.ensure_compile_time_eval():
            a = activation(jnp.asarray(half))
            peak = float(_COMBINATIONS[combination](a, a))
        if not (math.isfinite(peak) and peak != 0):
            raise ValueError(
                f"`activation` with combination {combination!r} gives {peak} at the "
                "window centre, so the functions cannot be normalised; use an "
                "activation that is non-zero for positive inputs."
            )
        self.activation = activation
        self.combination = combination

    @property
    def size(self) -> int:
        return self.grid_size + self.order

    def __call__(
        self, x: Float[Array, " {self.in_features}"]
    ) -> Float[Array, "{self.in_features} {self.size}"]:
        """**Arguments:**

        - `x`: one input vector, shape `(in_features,)`.

        **Returns:** every window function at every coordinate, shape
        `(in_features, G + k)`.

        **Raises:** `ValueError` if `x` does not have shape `(in_features,)`.
        """
        _check_x(x, self.in_features)
        s = jax.lax.stop_gradient(self.starts)
        e = jax.lax.stop_gradient(self.ends)
        f = _COMBINATIONS[self.combination]
        act = self.activation
        centre = act((e - s) / 2)
        x = x[:, None]
        return f(act(x - s), act(e - x)) / f(centre, centre)


class AFKANLayer(AbstractKANLayer):
    """AF-KAN's layer: windows of activation functions, combined by global attention.

    Ta and Tran, "AF-KAN: Activation Function-Based Kolmogorov-Arnold Networks for
    Efficient Representation Learning" (2025), with the paper's default "global
    attention" reduction (its code's `global_attn`). For an input `x`:

    1. `B = basis(x)`, the `AFKAN` window functions, shape `(in, size)`;
    2. scores `s_i = w . B_i + b` with one vector `w` of `size` weights shared by all
        inputs, and attention weights `a = softmax(s / max(T, 1))` over the inputs,
        with a learned temperature `T` (initially `sqrt(in)`);
    3. `z_i = a_i sum_k B_{i,k}`, layer-normalised over the inputs (learned gain and
        bias): `u = LayerNorm(z)`;
    4. `edges[j, i] = W_{j,i} act(u_i)`, so `y = W act(u)`.

    This is AF-KAN's parameter reduction: `out * in + size + 2 + 2 in` parameters
    instead of a `KANLayer`'s `out * in * (size + 2)`. Because the softmax and the
    layer norm mix the inputs, an edge is not a function of its own input alone; the
    layer is a valid `AbstractKANLayer` (edges sum to the output), but per-edge
    analyses (symbolic snapping, grid updates) do not apply to it. The paper's other
    reductions (self, multi-head, local and spatial attention, "multistep") are not
    implemented; neither is its stacking of several methods.
    """

    basis: AFKAN
    score_weight: Float[Array, " size"]
    score_bias: Float[Array, ""]
    temperature: Float[Array, ""]
    norm: eqx.nn.LayerNorm
    weight: Float[Array, "out_features in_features"]
    in_features: int = eqx.field(static=True)
    out_features: int = eqx.field(static=True)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        basis: AFKAN | None = None,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `in_features`, `out_features`: the number of input and output nodes;
            `in_features >= 2`, since the attention and the layer norm act across the
            inputs (with one input the normalised value is always zero).
        - `basis`: the window functions, with `basis.in_features == in_features`;
            default `AFKAN(in_features)` (SiLU, `quad1`, 5 cells, order 3 on
            `[-1, 1]`). Its `activation` is also the layer's `act`, as in the paper.
        - `key`: a JAX random key.

        Initialisation as in the paper's code (PyTorch defaults): `W` uniform on
        `[-1, 1] / sqrt(in)`, `w` and `b` uniform on `[-1, 1] / sqrt(size)`.

        **Raises:** `ValueError` for `in_features < 2`, `out_features < 1`, or a basis
        for a different number of inputs.
        """
        _int_at_least(in_features, "in_features", 2)
        _int_at_least(out_features, "out_features", 1)
        if basis is None:
            basis = AFKAN(in_features)
        elif not isinstance(basis, AFKAN):
            raise ValueError(f"`basis` must be an `AFKAN` basis, got {type(basis)}.")
        elif basis.in_features != in_features:
            raise ValueError(
                f"`basis` is for {basis.in_features} inputs but `in_features` is "
                f"{in_features}."
            )
        wkey, skey, bkey = jr.split(key, 3)
        lim_w = 1 / math.sqrt(in_features)
        lim_s = 1 / math.sqrt(basis.size)
        self.basis = basis
        self.weight = jr.uniform(
            wkey, (out_features, in_features), minval=-lim_w, maxval=lim_w
        )
        self.score_weight = jr.uniform(skey, (basis.size,), minval=-lim_s, maxval=lim_s)
        self.score_bias = jr.uniform(bkey, (), minval=-lim_s, maxval=lim_s)
        self.temperature = jnp.asarray(math.sqrt(in_features))
        self.norm = eqx.nn.LayerNorm(in_features)
        self.in_features = in_features
        self.out_features = out_features

    def edges(
        self, x: Float[Array, " {self.in_features}"]
    ) -> Float[Array, "{self.out_features} {self.in_features}"]:
        """**Arguments:**

        - `x`: one input vector, shape `(in_features,)`.

        **Returns:** `W_{j,i} act(u_i)`, shape `(out_features, in_features)`.

        **Raises:** `ValueError` if `x` does not have shape `(in_features,)`.
        """
        _check_x(x, self.in_features)
        b = self.basis(x)
        scores = b @ self.score_weight + self.score_bias
        attention = jax.nn.softmax(scores / jnp.maximum(self.temperature, 1.0))
        u = self.norm(attention * b.sum(-1))
        return self.weight * self.basis.activation(u)[None, :]

    def __call__(
        self,
        x: Float[Array, " {self.in_features}"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, " {self.out_features}"]:
        """**Arguments:**

        - `x`: one input vector, shape `(in_features,)`.
        - `key`: unused; for the uniform model signature.

        **Returns:** `sum_i W_{j,i} act(u_i)`, shape `(out_features,)`.
        """
        del key
        return self.edges(x).sum(-1)


def af_kan(
    widths: Sequence[int],
    *,
    grid_size: int = 5,
    order: int = 3,
    grid_range: tuple[float, float] = (-1.0, 1.0),
    activation: Callable[[Array], Array] = jax.nn.silu,
    combination: Combination = "quad1",
    key: PRNGKeyArray,
) -> KAN:
    """An AF-KAN network: a `KAN` whose layers are `AFKANLayer`s.

    **Arguments:**

    - `widths`: the number of nodes of each layer, inputs first; every layer's input
        width must be at least 2 (see `AFKANLayer`).
    - `grid_size`, `order`, `grid_range`, `activation`, `combination`: every layer's
        `AFKAN` basis.
    - `key`: a JAX random key.

    **Returns:** a `KAN` (so `activations`, `regularisation` and plots apply).

    **Raises:** `ValueError` for fewer than two widths, a width below 1, or an input
    width below 2.
    """
    widths = tuple(widths)
    if len(widths) < 2:
        raise ValueError(f"`widths` must list at least two widths, got {widths!r}.")
    for w in widths[:-1]:
        if isinstance(w, bool) or not isinstance(w, int) or w < 2:
            raise ValueError(
                f"`widths` must hold input widths >= 2 for AF-KAN layers, got {widths!r}."
            )
    _int_at_least(widths[-1], "widths[-1]", 1)
    kan_key, *keys = jr.split(key, len(widths))
    # The shape of a KAN of the right widths (nothing computed); its layers replaced.
    model = eqx.filter_eval_shape(
        KAN, widths, basis=lambda n: Chebyshev(n, degree=0), key=kan_key
    )
    layers = tuple(
        AFKANLayer(
            n_in,
            n_out,
            basis=AFKAN(
                n_in,
                grid_size=grid_size,
                order=order,
                grid_range=grid_range,
                activation=activation,
                combination=combination,
            ),
            key=k,
        )
        for n_in, n_out, k in zip(widths[:-1], widths[1:], keys)
    )
    return eqx.tree_at(lambda m: m.layers, model, layers)


class Selectable(AbstractBasis):
    """A softmax-weighted mixture of bases, its weights learned per input node (S-KAN).

    Yang et al., "Activation Space Selectable Kolmogorov-Arnold Networks" (2024): a
    single activation space (B-splines, Fourier, ...) suits some tasks and not others,
    so S-KAN lets each node choose among several. Here node `i` holds logits `a_i`, one
    per basis `m`, and its functions are those of every basis, scaled by
    `softmax(a_i)_m`: `[p_{i,1} B^1(x_i), ..., p_{i,M} B^M(x_i)]`. With a `KANLayer`
    on top, every edge from node `i` is then
    `phi(x) = sum_m softmax(a_i)_m phi_m(x)`, `phi_m` a learned combination of basis
    `m`'s functions with its own coefficients. Training the logits with the rest
    selects the activation space; a one-hot selection (one logit finite, the others
    `-inf`) is exactly the layer of that single basis.

    Departure from the paper (whose code we could not consult): the selection is per
    input node (shared by that node's outgoing edges), soft (a mixture, not a hard
    choice) and trained by gradient descent with everything else; `selection` gives the
    current argmax for a hard choice.
    """

    bases: tuple[AbstractBasis, ...]
    logits: Float[Array, "in_features num_bases"]
    in_features: int = eqx.field(static=True)

    def __init__(
        self,
        in_features: int,
        bases: Sequence[AbstractBasis],
        *,
        logits: Float[Array, "in_features num_bases"] | None = None,
    ):
        """**Arguments:**

        - `in_features`: the number of input coordinates.
        - `bases`: the candidate bases, at least one, each with `in_features` inputs.
        - `logits`: the initial selection logits, shape `(in_features, len(bases))`;
            default zeros (a uniform mixture).

        **Raises:** `ValueError` for `in_features < 1`, an empty `bases`, an entry of
        `bases` that is not an `AbstractBasis` for `in_features` inputs, or `logits` of
        the wrong shape.
        """
        self.in_features = _int_at_least(in_features, "in_features", 1)
        bases = tuple(bases)
        if not bases:
            raise ValueError("`bases` must hold at least one basis, got none.")
        for m, basis in enumerate(bases):
            if not isinstance(basis, AbstractBasis):
                raise ValueError(
                    f"`bases[{m}]` must be an `AbstractBasis`, got {type(basis)}."
                )
            if basis.in_features != in_features:
                raise ValueError(
                    f"`bases[{m}]` is for {basis.in_features} inputs but "
                    f"`in_features` is {in_features}."
                )
        if logits is None:
            logits = jnp.zeros((in_features, len(bases)))
        elif jnp.shape(logits) != (in_features, len(bases)):
            raise ValueError(
                f"`logits` must have shape (in_features, len(bases)) = "
                f"{(in_features, len(bases))}, got {jnp.shape(logits)}."
            )
        self.bases = bases
        self.logits = jnp.asarray(logits)

    @property
    def size(self) -> int:
        return sum(basis.size for basis in self.bases)

    @property
    def weights(self) -> Float[Array, "in_features num_bases"]:
        """The mixture weights `softmax(a_i)`, shape `(in_features, len(bases))`."""
        return jax.nn.softmax(self.logits, axis=-1)

    @property
    def selection(self) -> Int[Array, " in_features"]:
        """The index of the heaviest basis of each input node, shape `(in_features,)`."""
        return jnp.argmax(self.logits, axis=-1)

    def __call__(
        self, x: Float[Array, " {self.in_features}"]
    ) -> Float[Array, "{self.in_features} {self.size}"]:
        """**Arguments:**

        - `x`: one input vector, shape `(in_features,)`.

        **Returns:** every basis's functions, each scaled by its weight at that node,
        concatenated in the order of `bases`, shape `(in_features, size)`.

        **Raises:** `ValueError` if `x` does not have shape `(in_features,)`.
        """
        _check_x(x, self.in_features)
        p = self.weights
        return jnp.concatenate(
            [p[:, m, None] * basis(x) for m, basis in enumerate(self.bases)], axis=-1
        )
