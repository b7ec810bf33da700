"""KAN layers and networks: a learnable univariate function on every edge."""

import abc
import functools as ft
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from .._core import check_positive_int
from ._basis import AbstractBasis, BSpline


class AbstractKANLayer(eqx.Module):
    """A layer of a Kolmogorov-Arnold network: `y_j = sum_i phi_{j,i}(x_i)`.

    Every edge `(j, i)` carries its own univariate function `phi_{j,i}`; the layer sums
    the edges into each output node. A concrete layer owns `in_features` and
    `out_features` and implements `edges`, the value of every edge, and `__call__`,
    their sum over inputs: computed where it can without forming the edge matrix (for
    `KANLayer` a single contraction, one matrix product under `vmap`).
    Wrappers (symbolic edges, compressed layers) subclass this and hold a `KANLayer`.
    """

    in_features: eqx.AbstractVar[int]
    out_features: eqx.AbstractVar[int]

    @abc.abstractmethod
    def edges(
        self, x: Float[Array, " {self.in_features}"]
    ) -> Float[Array, "{self.out_features} {self.in_features}"]:
        """**Arguments:**

        - `x`: one input vector, shape `(in_features,)`.

        **Returns:** `phi_{j,i}(x_i)` for every edge, shape `(out_features, in_features)`.
        """

    @abc.abstractmethod
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


@ft.partial(jax.jit, static_argnums=(1, 2, 3))
def _init_params(key, out_features, in_features, size, noise_scale):
    # One compiled kernel for all random draws of a layer shape (eager jax.random would
    # compile one per draw). The draws use the rbg generator, seeded from the key's
    # bits: XLA:CPU compiles it four times faster than threefry (0.5 s vs 2 s a shape).
    bits = jr.key_data(key).ravel()
    key = jr.wrap_key_data(jnp.concatenate([bits, bits])[:4], impl="rbg")
    ckey, bkey = jr.split(key)
    coef = (jr.uniform(ckey, (out_features, in_features, size)) - 0.5) * noise_scale
    scale_base = jr.uniform(bkey, (out_features, in_features), minval=-1.0, maxval=1.0)
    scale_spline = jnp.full((out_features, in_features), 1 / in_features**0.5)
    mask = jnp.ones((out_features, in_features))
    return coef, scale_base / jnp.sqrt(in_features), scale_spline, mask


class KANLayer(AbstractKANLayer):
    """The KAN layer of Liu et al., "KAN: Kolmogorov-Arnold Networks" (2024).

    Each edge is `phi_{j,i}(x) = m_{j,i} (w^b_{j,i} b(x) + w^s_{j,i} sum_k c_{j,i,k}
    B_k(x))`: a residual base activation `b` (SiLU, as in the paper) plus a linear
    combination of the functions `B_k` of a basis (B-splines by default; any
    `AbstractBasis`), times a fixed mask `m` (1 for a live edge, 0 for a pruned one).

    Initialisation follows pykan: `w^s = 1 / sqrt(in_features)`, `w^b` uniform on
    `[-1, 1] / sqrt(in_features)` (pykan's `scale_base_mu = 0`,
    `scale_base_sigma = 1`), and the coefficients drawn uniformly on
    `[-1/2, 1/2] noise_scale / grid_size` (pykan fits them to noise of that size at the
    grid points instead; for a basis without a grid, `size` takes the place of
    `grid_size`).
    """

    basis: AbstractBasis
    coef: Float[Array, "out_features in_features size"]
    scale_base: Float[Array, "out_features in_features"]
    scale_spline: Float[Array, "out_features in_features"]
    mask: Float[Array, "out_features in_features"]
    in_features: int = eqx.field(static=True)
    out_features: int = eqx.field(static=True)
    base_activation: Callable | None = eqx.field(static=True)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        basis: AbstractBasis | None = None,
        base_activation: Callable | None = jax.nn.silu,
        noise_scale: float = 0.1,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `in_features`, `out_features`: the number of input and output nodes.
        - `basis`: the basis of every edge's function, with `basis.in_features ==
            in_features`; default `BSpline(in_features)` (5 cubic intervals on
            `[-1, 1]`).
        - `base_activation`: the residual activation `b` (SiLU), or `None` for none.
        - `noise_scale`: the scale of the random initial coefficients.
        - `key`: a JAX random key.

        **Raises:** `ValueError` for non-positive sizes or a basis for a different
        number of inputs.
        """
        check_positive_int(in_features, "in_features")
        check_positive_int(out_features, "out_features")
        if basis is None:
            basis = BSpline(in_features)
        elif basis.in_features != in_features:
            raise ValueError(
                f"`basis` is for {basis.in_features} inputs but `in_features` is "
                f"{in_features}."
            )
        divisor = basis.grid_size if isinstance(basis, BSpline) else basis.size
        coef, scale_base, scale_spline, mask = _init_params(
            key, out_features, in_features, basis.size, noise_scale / divisor
        )
        self.basis = basis
        self.coef = coef
        self.scale_base = scale_base
        self.scale_spline = scale_spline
        self.mask = mask
        self.in_features = in_features
        self.out_features = out_features
        self.base_activation = base_activation

    def spline(
        self, x: Float[Array, " {self.in_features}"]
    ) -> Float[Array, "{self.out_features} {self.in_features}"]:
        """The basis part `sum_k c_{j,i,k} B_k(x_i)` of every edge (no scale, no mask),
        shape `(out_features, in_features)`.

        **Raises:** `ValueError` if `x` does not have shape `(in_features,)`.
        """
        if x.shape != (self.in_features,):
            raise ValueError(
                f"`x` must have shape (in_features,) = ({self.in_features},), "
                f"got {x.shape}."
            )
        return jnp.einsum("jik,ik->ji", self.coef, self.basis(x))

    def edges(
        self, x: Float[Array, " {self.in_features}"]
    ) -> Float[Array, "{self.out_features} {self.in_features}"]:
        """**Arguments:**

        - `x`: one input vector, shape `(in_features,)`.

        **Returns:** `phi_{j,i}(x_i)` for every edge, shape `(out_features, in_features)`.

        **Raises:** `ValueError` if `x` does not have shape `(in_features,)`.
        """
        out = self.scale_spline * self.spline(x)
        if self.base_activation is not None:
            out = out + self.scale_base * self.base_activation(x)[None, :]
        return jax.lax.stop_gradient(self.mask) * out

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

        **Raises:** `ValueError` if `x` does not have shape `(in_features,)`.
        """
        del key
        if x.shape != (self.in_features,):
            raise ValueError(
                f"`x` must have shape (in_features,) = ({self.in_features},), "
                f"got {x.shape}."
            )
        # The edges summed in one contraction over (input, basis function): under vmap
        # a single (batch, in * size) x (in * size, out) matrix product, without the
        # (batch, out, in) edge values (5x faster for [16, 32, 32, 1] on one core).
        mask = jax.lax.stop_gradient(self.mask)
        weights = (mask * self.scale_spline)[..., None] * self.coef
        # The per-example operand first: under vmap the product is then
        # (batch, in * size) @ (in * size, out) and XLA lays the basis out as computed;
        # with the weights first it wrote the basis transposed (strided), a third of
        # the step for [16, 32, 32, 1].
        out = jnp.einsum("ik,jik->j", self.basis(x), weights)
        if self.base_activation is not None:
            out = out + self.base_activation(x) @ (mask * self.scale_base).T
        return out


class KAN(eqx.Module):
    """A Kolmogorov-Arnold network: a stack of KAN layers.

    Liu et al., "KAN: Kolmogorov-Arnold Networks" (2024): the Kolmogorov-Arnold
    representation `f(x) = sum_q Phi_q(sum_p phi_{q,p}(x_p))` made deep, every layer a
    matrix of learnable univariate functions (`KANLayer`). `widths = [2, 5, 1]` is the
    paper's `[2, 5, 1]` KAN. A layer can be replaced (by a pruned, symbolic or compressed
    one) with `eqx.tree_at(lambda m: m.layers[i], model, new_layer)`.
    """

    layers: tuple[AbstractKANLayer, ...]

    def __init__(
        self,
        widths: Sequence[int],
        *,
        basis: Callable[[int], AbstractBasis] | None = None,
        base_activation: Callable | None = jax.nn.silu,
        noise_scale: float = 0.1,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `widths`: the number of nodes of each layer, inputs first, at least two.
        - `basis`: `basis(in_features)` builds each layer's basis; default
            `BSpline(in_features)`.
        - `base_activation`: the residual activation of every edge (SiLU), or `None`.
        - `noise_scale`: the scale of the random initial coefficients.
        - `key`: a JAX random key.

        **Raises:** `ValueError` if `widths` has fewer than two entries or a
        non-positive one.
        """
        widths = tuple(widths)
        if len(widths) < 2:
            raise ValueError(
                f"`widths` must list at least an input and an output width, got "
                f"{widths!r}."
            )
        for w in widths:
            if isinstance(w, bool) or not isinstance(w, int) or w < 1:
                raise ValueError(f"`widths` must hold ints >= 1, got {widths!r}.")
        make = BSpline if basis is None else basis
        keys = jr.split(key, len(widths) - 1)
        self.layers = tuple(
            KANLayer(
                n_in,
                n_out,
                basis=make(n_in),
                base_activation=base_activation,
                noise_scale=noise_scale,
                key=k,
            )
            for n_in, n_out, k in zip(widths[:-1], widths[1:], keys)
        )

    @property
    def widths(self) -> tuple[int, ...]:
        """The node counts of the layers, inputs first."""
        return (self.layers[0].in_features,) + tuple(
            layer.out_features for layer in self.layers
        )

    def __call__(
        self, x: Float[Array, " in_features"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, " out_features"]:
        """**Arguments:**

        - `x`: one input vector, shape `(widths[0],)`.
        - `key`: unused; for the uniform model signature.

        **Returns:** the output, shape `(widths[-1],)`.

        **Raises:** `ValueError` if `x` does not have shape `(widths[0],)`.
        """
        del key
        self._check(x)
        for layer in self.layers:
            x = layer(x)
        return x

    def activations(
        self, x: Float[Array, " in_features"]
    ) -> tuple[tuple[Float[Array, " _"], Float[Array, "_ _"]], ...]:
        """Every layer's input and edge values, for regularisation, pruning and plots.

        **Arguments:**

        - `x`: one input vector, shape `(widths[0],)`.

        **Returns:** per layer, the pair (its input vector, shape `(in,)`, its edge
        values `phi_{j,i}(x_i)`, shape `(out, in)`).

        **Raises:** `ValueError` if `x` does not have shape `(widths[0],)`.
        """
        self._check(x)
        out = []
        for layer in self.layers:
            e = layer.edges(x)
            out.append((x, e))
            x = e.sum(-1)
        return tuple(out)

    def _check(self, x):
        n = self.layers[0].in_features
        if x.shape != (n,):
            raise ValueError(
                f"`x` must have shape (widths[0],) = ({n},), got {x.shape}."
            )


def edge_curves(
    layer: AbstractKANLayer,
    x_range: tuple[float, float] | Float[Array, "in_features 2"] | None = None,
    n: int = 100,
) -> tuple[Float[Array, "in_features n"], Float[Array, "out_features in_features n"]]:
    """Every edge's function of a layer on a grid of points, for plots.

    **Arguments:**

    - `layer`: a KAN layer.
    - `x_range`: `(lo, hi)` for every input, or an array of shape `(in_features, 2)` of
        per-input ranges; by default the span of each input's grid for a B-spline
        layer, else `(-1, 1)`.
    - `n`: the number of points per input.

    **Returns:** `(xs, ys)`: the points, shape `(in_features, n)`, and
    `ys[j, i, t] = phi_{j,i}(xs[i, t])`, shape `(out_features, in_features, n)`.

    **Raises:** `ValueError` for `n < 2` or an `x_range` of the wrong shape.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"`n` must be an int >= 2, got {n!r}.")
    n_in = layer.in_features
    if x_range is None:
        if isinstance(layer, KANLayer) and isinstance(layer.basis, BSpline):
            k = layer.basis.order
            grid = layer.basis.grid
            ranges = jnp.stack([grid[:, k], grid[:, -k - 1]], axis=-1)
        else:
            ranges = jnp.tile(jnp.array([-1.0, 1.0]), (n_in, 1))
    else:
        ranges = jnp.asarray(x_range, dtype=float)
        if ranges.shape == (2,):
            ranges = jnp.tile(ranges, (n_in, 1))
        if ranges.shape != (n_in, 2):
            raise ValueError(
                f"`x_range` must be (lo, hi) or of shape (in_features, 2) = "
                f"({n_in}, 2), got shape {ranges.shape}."
            )
    t = jnp.linspace(0.0, 1.0, n, dtype=ranges.dtype)
    xs = ranges[:, :1] + (ranges[:, 1:] - ranges[:, :1]) * t[None, :]
    ys = jax.vmap(layer.edges, in_axes=1, out_axes=2)(xs)
    return xs, ys
