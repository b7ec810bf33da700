from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jax import lax
from jaxtyping import Array, ArrayLike, Bool, Float, PRNGKeyArray

from .._core import check_positive_int
from ._monotone import (
    AbstractMonotoneSplitting,
    AbstractProxActivation,
    MonotoneLinear,
    MonotoneSolution,
    PeacemanRachford,
)


# Iteration counts of the inner solves of the entropic proximal operators: bisection
# halves a bracket of width at most (1 - alpha) / alpha; Newton from an upper bound on
# a convex increasing function converges monotonically (quadratically near the root).
_BISECTIONS = 48
_NEWTON_INNER = 30
_NEWTON_OUTER = 30


def _check_layers(layers: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    out = []
    for layer in layers:
        if len(layer) != 2:
            raise ValueError(
                f"each entry of `layers` must be `(size, group)`; got {layer!r}."
            )
        size, group = int(layer[0]), int(layer[1])
        if size <= 0 or group <= 0 or size % group != 0:
            raise ValueError(
                "each entry of `layers` must be `(size, group)` with positive `size` a "
                f"multiple of the positive `group`; got {layer!r}."
            )
        out.append((size, group))
    if not out:
        raise ValueError("`layers` must name at least one layer.")
    return tuple(out)


def _binary_prox(v: Array, alpha: Array) -> Array:
    """`prox_g^alpha` of `g(z) = z log z + (1 - z) log(1 - z) - z^2 / 2` on `[0, 1]`.

    Its stationarity condition in `t = logit(z)` is `alpha t + (1 - alpha) sigmoid(t) =
    v`, increasing in `t` with the root in `[(v - 1 + alpha) / alpha, v / alpha]`:
    bisection, then one Newton step that carries the implicit derivative.
    """
    c = 1 - alpha

    def h(t: Array) -> Array:
        return alpha * t + c * jax.nn.sigmoid(t) - v

    def bisect(_, bracket: tuple[Array, Array]) -> tuple[Array, Array]:
        lo, hi = bracket
        mid = (lo + hi) / 2
        up = h(mid) > 0
        return jnp.where(up, lo, mid), jnp.where(up, mid, hi)

    v0 = lax.stop_gradient(v)
    a0 = lax.stop_gradient(alpha)
    lo, hi = lax.fori_loop(0, _BISECTIONS, bisect, ((v0 - (1 - a0)) / a0, v0 / a0))
    t = lax.stop_gradient((lo + hi) / 2)
    slope = lax.stop_gradient(alpha + c * jax.nn.sigmoid(t) * jax.nn.sigmoid(-t))
    # At the root h = 0, so this step moves nothing but gives dt = -dh / h'.
    t = t - h(t) / slope
    return jax.nn.sigmoid(t)


def _log_phi(y: Array, alpha: Array) -> Array:
    """`s = log z` solving `(1 - alpha) e^s + alpha s = y`, by Newton from above.

    The left side is convex and increasing in `s`, and `min(y / alpha, max(0,
    log(y / (1 - alpha))))` bounds the root from above, so the iterates decrease
    monotonically to it and never overflow.
    """
    c = 1 - alpha
    tiny = jnp.finfo(y.dtype).tiny
    big = jnp.log(jnp.maximum(y, tiny) / jnp.maximum(c, tiny))
    s0 = jnp.minimum(y / alpha, jnp.maximum(0.0, big))

    def newton(_, s: Array) -> Array:
        e = jnp.exp(s)
        return s - (c * e + alpha * s - y) / (c * e + alpha)

    return lax.fori_loop(0, _NEWTON_INNER, newton, s0)


def _categorical_prox(v: Array, alpha: Array) -> Array:
    """`prox_g^alpha` of `g(z) = sum z log z - |z|^2 / 2` on the simplex, per row.

    The stationarity condition is `(1 - alpha) z_i + alpha log z_i = v_i + nu` with
    `nu` the multiplier of `sum z = 1` (solvable with the Lambert W function, as in
    the paper). `sum_i z_i(nu)` is convex and increasing in `nu`, and
    `nu = 1 - alpha - max v` bounds the root from above: Newton on `nu` per group,
    each `z_i` from `_log_phi`, then one joint Newton step carrying the derivative.
    """
    v0 = lax.stop_gradient(v)
    a0 = lax.stop_gradient(alpha)
    c0 = 1 - a0

    def newton(_, nu: Array) -> Array:
        s = _log_phi(v0 + nu[:, None], a0)
        z = jnp.exp(s)
        excess = jnp.sum(z, axis=-1) - 1
        slope = jnp.sum(z / (c0 * z + a0), axis=-1)
        return nu - excess / slope

    nu0 = c0 - jnp.max(v0, axis=-1)
    nu = lax.fori_loop(0, _NEWTON_OUTER, newton, nu0)
    s = lax.stop_gradient(_log_phi(v0 + nu[:, None], a0))
    nu = lax.stop_gradient(nu)
    # One Newton step on the joint system (s, nu) with its Jacobian held fixed: it
    # moves nothing at the root and gives the implicit derivative of the prox.
    z = jnp.exp(s)
    slope_s = lax.stop_gradient((1 - a0) * z + a0)
    r = (1 - alpha) * z + alpha * s - v - nu[:, None]
    r0 = jnp.sum(z, axis=-1) - 1
    weights = lax.stop_gradient(z / slope_s)
    d_nu = (jnp.sum(weights * r, axis=-1) - r0) / jnp.sum(weights, axis=-1)
    ds = (d_nu[:, None] - r) / slope_s
    return jnp.exp(s + ds)


class MeanFieldActivation(AbstractProxActivation):
    """The mean-field activation of a Boltzmann machine, as a proximal operator.

    Units come in layers `(size, group)`: `group=1` for binary units (`sigmoid`),
    `group=k >= 2` for categorical variables, one-hot over `k` consecutive units
    (`softmax` per group). `sigmoid` and `softmax` are `prox_f^1` of the negative
    entropy minus `|z|^2 / 2` (convex, since the entropy's curvature is at least 1),
    so the mean-field update `q = sigma(W q + b)` is a monotone operator equilibrium
    ("Monotone deep Boltzmann machines", Feng, Winston and Kolter, 2023). The splitting
    methods need `prox_f^alpha` for `0 < alpha <= 1`: found per unit by bisection
    (binary) and per group by a 1-D Newton solve for the normaliser (categorical).
    """

    layers: tuple[tuple[int, int], ...] = eqx.field(static=True)

    def __init__(self, layers: Sequence[tuple[int, int]]):
        """**Arguments:**

        - `layers`: `(size, group)` per layer; `group` divides `size`.

        **Raises:** `ValueError` naming `layers` if an entry is malformed.
        """
        self.layers = _check_layers(layers)

    @property
    def size(self) -> int:
        return sum(size for size, _ in self.layers)

    def prox(
        self, v: Float[Array, " size"], alpha: Float[ArrayLike, ""]
    ) -> Float[Array, " size"]:
        """`prox_f^alpha(v)`, for `0 < alpha <= 1`.

        **Raises:** `equinox.EquinoxRuntimeError` if `alpha` is outside `(0, 1]`.
        """
        alpha = jnp.asarray(alpha, dtype=v.dtype)
        alpha = eqx.error_if(
            alpha,
            (alpha <= 0) | (alpha > 1),
            "the mean-field activation's prox needs a step size `alpha` in (0, 1].",
        )

        def general(v: Array, alpha: Array) -> Array:
            out = []
            start = 0
            for size, group in self.layers:
                part = v[start : start + size]
                if group == 1:
                    out.append(_binary_prox(part, alpha))
                else:
                    parts = part.reshape(-1, group)
                    out.append(_categorical_prox(parts, alpha).ravel())
                start += size
            return jnp.concatenate(out)

        # At alpha = 1 the prox is the activation itself: skip the inner solves.
        return lax.cond(alpha == 1, lambda v, _: self(v), general, v, alpha)

    def __call__(self, v: Float[Array, " size"]) -> Float[Array, " size"]:
        """`sigmoid` on binary units and `softmax` per group, in closed form."""
        out = []
        start = 0
        for size, group in self.layers:
            part = v[start : start + size]
            if group == 1:
                out.append(jax.nn.sigmoid(part))
            else:
                out.append(jax.nn.softmax(part.reshape(-1, group), axis=-1).ravel())
            start += size
        return jnp.concatenate(out)

    def negative_entropy(self, q: Float[Array, " size"]) -> Float[Array, ""]:
        """`sum q log q` over the units' distributions (binary units count both
        states)."""
        total = jnp.zeros((), q.dtype)
        start = 0
        for size, group in self.layers:
            part = q[start : start + size]
            total = total + jnp.sum(jax.scipy.special.xlogy(part, part))
            if group == 1:
                total = total + jnp.sum(jax.scipy.special.xlogy(1 - part, 1 - part))
            start += size
        return total


class MonotoneDBM(eqx.Module):
    """A monotone deep Boltzmann machine: mean-field inference as a monotone DEQ.

    After "Monotone deep Boltzmann machines" (Feng, Winston and Kolter, TMLR 2023). A
    pairwise model over layers of binary and categorical units with fully general
    connections, inside layers as well as between them, through a symmetric
    `W = (1 - m) I - A^T A`. Its mean-field marginals `q = sigma(W q + b)` (`sigma` the
    `MeanFieldActivation`) are the minimiser of the mean-field free energy
    `F(q) = -q^T W q / 2 - b^T q + sum q log q`, strongly convex because `I - W >= m I`,
    so the fixed point exists and is globally unique for every parameter value.
    Conditioning on observed units (clamping them) keeps this true, so completion
    of missing pixels and classification are one fixed-point solve.
    """

    linear: MonotoneLinear
    bias: Float[Array, " units"]
    activation: MeanFieldActivation
    splitting: AbstractMonotoneSplitting

    def __init__(
        self,
        layers: Sequence[tuple[int, int]],
        *,
        m: float = 0.5,
        scale: float = 0.5,
        splitting: AbstractMonotoneSplitting = PeacemanRachford(),
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `layers`: `(size, group)` per layer: `group=1` for `size` binary units,
            `group=k` for `size / k` categorical variables of `k` states (one-hot).
        - `m`: the monotonicity margin, positive.
        - `scale`: the initial scale of `A` (see `MonotoneLinear`).
        - `splitting`: `PeacemanRachford(...)` (default) or `ForwardBackward(...)`, with
            step size at most 1 (the entropic prox is defined for `0 < alpha <= 1`).
        - `key`: a PRNG key for the initial parameters.

        **Raises:** `ValueError` naming the argument if `layers` is malformed or `m` is
        not positive.
        """
        self.activation = MeanFieldActivation(layers)
        units = self.activation.size
        self.linear = MonotoneLinear(units, m=m, symmetric=True, scale=scale, key=key)
        self.bias = jnp.zeros(units)
        self.splitting = splitting

    @property
    def units(self) -> int:
        return self.activation.size

    def infer(
        self,
        values: Float[Array, " units"],
        observed: Bool[Array, " units"],
        *,
        q0: Float[Array, " units"] | None = None,
        throw: bool = True,
    ) -> MonotoneSolution:
        """Mean-field marginals of the unobserved units given the observed ones.

        **Arguments:**

        - `values`: the observed units' values (read where `observed` is true; clamp
            whole categorical groups, one-hot).
        - `observed`: which units are clamped.
        - `q0`: the initial state of the splitting; any start reaches the same point.
        - `throw`: whether running out of iterations raises.

        **Returns:** a `MonotoneSolution` whose `value` is the marginals of all units
        (the observed ones equal to `values`).

        **Raises:** `ValueError` naming the argument if a shape is not `(units,)`.
        """
        for array, name in [(values, "values"), (observed, "observed"), (q0, "q0")]:
            if array is not None and array.shape != (self.units,):
                raise ValueError(
                    f"`{name}` must have shape ({self.units},) (one example; batch "
                    f"with jax.vmap); got {array.shape}."
                )
        return self.splitting.solve(
            self.linear,
            self.activation,
            self.bias,
            z0=q0,
            free=~observed,
            values=values,
            throw=throw,
        )

    def free_energy(self, q: Float[Array, " units"]) -> Float[Array, ""]:
        """The mean-field free energy `-q^T W q / 2 - b^T q + sum q log q` at `q`."""
        return (
            -0.5 * q @ self.linear(q)
            - self.bias @ q
            + self.activation.negative_entropy(q)
        )

    def __call__(
        self,
        values: Float[Array, " units"],
        observed: Bool[Array, " units"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, " units"]:
        """The mean-field marginals given the observed units (see `infer`).

        **Raises:** `equinox.EquinoxRuntimeError` if the splitting runs out of steps.
        """
        del key
        return self.infer(values, observed).value


class RBM(eqx.Module):
    """A restricted Boltzmann machine with mean-field completion: the baseline.

    Visible layers of binary and categorical units (see `MeanFieldActivation`) and one
    hidden layer of binary units, with connections only between visible and hidden.
    Completion runs `sweeps` alternating mean-field updates, `h = sigmoid(V^T q + c)`
    then `q = sigma(V h + b)` on the unobserved visibles, from `q = sigma(b)`. Unlike
    the monotone DBM nothing makes this fixed point unique, so the result is taken
    after a fixed number of sweeps (and is differentiated through them).
    """

    weight: Float[Array, "visible hidden"]
    visible_bias: Float[Array, " visible"]
    hidden_bias: Float[Array, " hidden"]
    activation: MeanFieldActivation
    sweeps: int = eqx.field(static=True)

    def __init__(
        self,
        layers: Sequence[tuple[int, int]],
        hidden: int,
        *,
        sweeps: int = 20,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `layers`: the visible layers, `(size, group)` each (see `MonotoneDBM`).
        - `hidden`: the number of binary hidden units.
        - `sweeps`: the alternating mean-field updates per completion.
        - `key`: a PRNG key for the initial weights.

        **Raises:** `ValueError` naming the argument if one is malformed.
        """
        check_positive_int(hidden, "hidden")
        check_positive_int(sweeps, "sweeps")
        self.activation = MeanFieldActivation(layers)
        visible = self.activation.size
        self.weight = jr.normal(key, (visible, hidden)) / (visible + hidden) ** 0.5
        self.visible_bias = jnp.zeros(visible)
        self.hidden_bias = jnp.zeros(hidden)
        self.sweeps = sweeps

    def __call__(
        self,
        values: Float[Array, " visible"],
        observed: Bool[Array, " visible"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, " visible"]:
        """Mean-field marginals of the visible units given the observed ones."""
        del key

        def sweep(_, q: Array) -> Array:
            h = jax.nn.sigmoid(q @ self.weight + self.hidden_bias)
            new = self.activation(self.weight @ h + self.visible_bias)
            return jnp.where(observed, values, new)

        q0 = jnp.where(observed, values, self.activation(self.visible_bias))
        return lax.fori_loop(0, self.sweeps, sweep, q0)
