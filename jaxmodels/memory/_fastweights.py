"""Fast-weight programmers and linear transformers.

After "Linear Transformers Are Secretly Fast Weight Programmers" (Schlag, Irie and
Schmidhuber, ICML 2021) and "Fast weight programming and linear transformers: from
machine learning to neurobiology" (Irie and Gershman, 2025). A slow network (input
projections) programs a fast weight matrix `W_t` that serves as a short-term memory:

- sum rule: `W_t = W_{t-1} + v_t phi(k_t)^T`, which is causal linear attention;
- delta rule: `W_t = W_{t-1} + beta_t (v_t - W_{t-1} phi(k_t)) phi(k_t)^T`, which
    replaces the value stored under a key instead of adding to it;

and the output is `y_t = W_t phi(q_t)`, optionally divided by `z_t . phi(q_t)` with
`z_t = sum_{s <= t} phi(k_s)`. One example is a sequence of shape `(time, features)`.
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from .._core import check_positive_int


_RULES = ("sum", "delta")


def elu_plus_one(x: Float[Array, " size"]) -> Float[Array, " size"]:
    """`elu(x) + 1`, the positive feature map of Katharopoulos et al. (2020)."""
    return jax.nn.elu(x) + 1.0


def dpfp(x: Float[Array, " size"], nu: int = 1) -> Float[Array, " features"]:
    """Deterministic parameter-free projection (Schlag et al., 2021), `2 nu size` features.

    With `r = [relu(x), relu(-x)]` (length `2 size`), the features are the products
    `r_i r_{(i + j) mod 2 size}` for `j = 1, ..., nu`.
    """
    r = jnp.concatenate([jax.nn.relu(x), jax.nn.relu(-x)])
    return jnp.concatenate([r * jnp.roll(r, -j) for j in range(1, nu + 1)])


def _feature_map(name: str, nu: int) -> Callable[[Array], Array]:
    if name == "identity":
        return lambda x: x
    if name == "elu+1":
        return elu_plus_one
    if name == "dpfp":
        return lambda x: dpfp(x, nu)
    raise ValueError(
        f'`feature_map` must be "identity", "elu+1" or "dpfp"; got {name!r}.'
    )


def _check_sequences(phi_q: Array, phi_k: Array, v: Array) -> None:
    if phi_q.ndim != 2 or phi_q.shape != phi_k.shape:
        raise ValueError(
            "`phi_q` and `phi_k` must have the same shape (time, features); got "
            f"{phi_q.shape} and {phi_k.shape}."
        )
    if v.ndim != 2 or v.shape[0] != phi_k.shape[0]:
        raise ValueError(
            "`v` must have shape (time, value_size) with the time of `phi_k`; got "
            f"{v.shape} and {phi_k.shape}."
        )


def fast_weight_recurrent(
    phi_q: Float[Array, "time features"],
    phi_k: Float[Array, "time features"],
    v: Float[Array, "time value_size"],
    beta: Float[Array, " time"] | None = None,
    *,
    rule: str = "sum",
    normalise: bool = False,
    eps: float = 1e-6,
) -> tuple[Float[Array, "time value_size"], Float[Array, "value_size features"]]:
    """Run the fast-weight recurrence with `lax.scan`.

    From "Linear Transformers Are Secretly Fast Weight Programmers" (Schlag, Irie and
    Schmidhuber, 2021). Starting from `W_0 = 0`, at each step the sum rule adds
    `v_t phi(k_t)^T`; the delta rule adds `beta_t (v_t - W_{t-1} phi(k_t)) phi(k_t)^T`;
    then `y_t = W_t phi(q_t)`. With `normalise=True`, `y_t` is divided by
    `z_t . phi(q_t) + eps`, `z_t = sum_{s <= t} phi(k_s)` (linear attention's
    denominator; meaningful for positive feature maps).

    **Arguments:**

    - `phi_q`, `phi_k`: the feature-mapped queries and keys, shape `(time, features)`.
    - `v`: the values, shape `(time, value_size)`.
    - `beta`: the write strengths of the delta rule, shape `(time,)` (ignored by the
        sum rule; required by the delta rule).
    - `rule`: `"sum"` or `"delta"`.
    - `normalise`: divide by `z_t . phi(q_t)`.
    - `eps`: added to the denominator.

    **Returns:** `(y, W_T)`: the outputs, shape `(time, value_size)`, and the final fast
    weights, shape `(value_size, features)`.

    **Raises:** `ValueError` for an unknown `rule`, a delta rule without `beta`, or
    shapes that disagree.
    """
    _check_sequences(phi_q, phi_k, v)
    if rule not in _RULES:
        raise ValueError(f'`rule` must be "sum" or "delta"; got {rule!r}.')
    if rule == "delta" and (beta is None or beta.shape != v.shape[:1]):
        raise ValueError(
            "The delta rule needs `beta` of shape (time,); got "
            f"{None if beta is None else beta.shape}."
        )
    if beta is None:
        beta = jnp.ones(v.shape[:1], v.dtype)
    dtype = jnp.result_type(phi_q, phi_k, v)
    w0 = jnp.zeros((v.shape[1], phi_k.shape[1]), dtype)
    z0 = jnp.zeros(phi_k.shape[1], dtype)

    def step(carry, inputs):
        w, z = carry
        q, k, value, b = inputs
        if rule == "sum":
            w = w + jnp.outer(value, k)
        else:
            w = w + b * jnp.outer(value - w @ k, k)
        z = z + k
        y = w @ q
        if normalise:
            y = y / (z @ q + eps)
        return (w, z), y

    (w, _), ys = jax.lax.scan(step, (w0, z0), (phi_q, phi_k, v, beta))
    return ys, w


def linear_attention(
    phi_q: Float[Array, "time features"],
    phi_k: Float[Array, "time features"],
    v: Float[Array, "time value_size"],
    *,
    normalise: bool = False,
    eps: float = 1e-6,
) -> Float[Array, "time value_size"]:
    """Causal linear attention in parallel form: `Y = tril(phi(Q) phi(K)^T) V`.

    The same outputs as the sum-rule fast-weight recurrence (`fast_weight_recurrent`
    with `rule="sum"`), in `O(time^2)` work instead of `O(time)` sequential steps.
    With `normalise=True` each row is divided by its attention mass plus `eps`.

    **Arguments:** as `fast_weight_recurrent`.

    **Returns:** the outputs, shape `(time, value_size)`.

    **Raises:** `ValueError` if the shapes disagree.
    """
    _check_sequences(phi_q, phi_k, v)
    scores = jnp.tril(phi_q @ phi_k.T)
    y = scores @ v
    if normalise:
        y = y / (jnp.sum(scores, axis=1, keepdims=True) + eps)
    return y


class FastWeightLayer(eqx.Module):
    """A multi-head fast-weight layer (a linear transformer's attention layer).

    From "Linear Transformers Are Secretly Fast Weight Programmers" (Schlag, Irie and
    Schmidhuber, 2021) and the review of Irie and Gershman (2025). Each head projects
    the input `x_t` to a query, key and value, maps queries and keys through the
    feature map `phi`, and reads from and writes to its own fast weight matrix with
    the sum rule (linear attention) or the delta rule, whose write strength is
    `beta_t = sigmoid(w_beta . x_t + b_beta)`, one per head. The heads' outputs are
    concatenated and projected to `out_size`. With the sum rule, `parallel=True`
    computes the same outputs in linear attention's parallel form.
    """

    query: eqx.nn.Linear
    key: eqx.nn.Linear
    value: eqx.nn.Linear
    beta: eqx.nn.Linear | None
    output: eqx.nn.Linear
    num_heads: int = eqx.field(static=True)
    key_size: int = eqx.field(static=True)
    value_size: int = eqx.field(static=True)
    feature_map: str = eqx.field(static=True)
    nu: int = eqx.field(static=True)
    rule: str = eqx.field(static=True)
    normalise: bool = eqx.field(static=True)
    normalise_keys: bool = eqx.field(static=True)
    parallel: bool = eqx.field(static=True)

    def __init__(
        self,
        in_size: int,
        out_size: int,
        *,
        num_heads: int = 1,
        key_size: int = 16,
        value_size: int = 16,
        feature_map: str = "elu+1",
        nu: int = 1,
        rule: str = "delta",
        normalise: bool = False,
        normalise_keys: bool = True,
        parallel: bool = False,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `in_size`, `out_size`: the input and output feature sizes.
        - `num_heads`: the number of heads, each with its own fast weights.
        - `key_size`, `value_size`: the per-head query/key and value sizes.
        - `feature_map`: `"identity"`, `"elu+1"` or `"dpfp"` (`2 nu key_size` features).
        - `nu`: the order of `"dpfp"`.
        - `rule`: `"sum"` or `"delta"`.
        - `normalise`: divide each output by `z_t . phi(q_t)` (linear attention).
        - `normalise_keys`: divide `phi(k)` and `phi(q)` by the sum of their entries,
            as Schlag et al. (2021) do to keep the delta rule stable (positive feature
            maps only).
        - `parallel`: compute the sum rule in parallel form.
        - `key`: a PRNG key for the projections.

        **Raises:** `ValueError` naming the argument for a non-positive size, an
        unknown `feature_map` or `rule`, `parallel=True` with the delta rule, or
        `normalise_keys` with the identity feature map.
        """
        for name, size in (
            ("in_size", in_size),
            ("out_size", out_size),
            ("num_heads", num_heads),
            ("key_size", key_size),
            ("value_size", value_size),
            ("nu", nu),
        ):
            check_positive_int(size, name)
        _feature_map(feature_map, nu)
        if rule not in _RULES:
            raise ValueError(f'`rule` must be "sum" or "delta"; got {rule!r}.')
        if parallel and rule != "sum":
            raise ValueError("`parallel=True` needs `rule='sum'` (no parallel delta).")
        if normalise_keys and feature_map == "identity":
            raise ValueError(
                "`normalise_keys` needs a positive `feature_map` ('elu+1' or 'dpfp')."
            )
        qkey, kkey, vkey, bkey, okey = jr.split(key, 5)
        self.query = eqx.nn.Linear(in_size, num_heads * key_size, key=qkey)
        self.key = eqx.nn.Linear(in_size, num_heads * key_size, key=kkey)
        self.value = eqx.nn.Linear(in_size, num_heads * value_size, key=vkey)
        self.beta = (
            eqx.nn.Linear(in_size, num_heads, key=bkey) if rule == "delta" else None
        )
        self.output = eqx.nn.Linear(num_heads * value_size, out_size, key=okey)
        self.num_heads = num_heads
        self.key_size = key_size
        self.value_size = value_size
        self.feature_map = feature_map
        self.nu = nu
        self.rule = rule
        self.normalise = normalise
        self.normalise_keys = normalise_keys
        self.parallel = parallel

    def _features(self, x: Array) -> Array:
        phi = jax.vmap(jax.vmap(_feature_map(self.feature_map, self.nu)))(x)
        if self.normalise_keys:
            phi = phi / jnp.sum(phi, axis=-1, keepdims=True)
        return phi

    def heads(
        self, x: Float[Array, "time in_size"]
    ) -> tuple[Array, Array, Array, Array | None]:
        """The per-head `phi(q)`, `phi(k)`, `v` (shape `(heads, time, size)`) and
        `beta` (shape `(heads, time)`, or `None` for the sum rule)."""
        h = self.num_heads

        def split(linear: eqx.nn.Linear, size: int) -> Array:
            return jax.vmap(linear)(x).reshape(x.shape[0], h, size).transpose(1, 0, 2)

        phi_q = self._features(split(self.query, self.key_size))
        phi_k = self._features(split(self.key, self.key_size))
        v = split(self.value, self.value_size)
        beta = None
        if self.beta is not None:
            beta = jax.nn.sigmoid(jax.vmap(self.beta)(x)).T
        return phi_q, phi_k, v, beta

    def __call__(
        self, x: Float[Array, "time in_size"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "time out_size"]:
        """The layer's outputs for one sequence `x` of shape `(time, in_size)`."""
        del key
        if x.ndim != 2:
            raise ValueError(
                f"`x` must have shape (time, in_size), one sequence; got {x.shape}."
            )
        phi_q, phi_k, v, beta = self.heads(x)
        if self.parallel:
            ys = jax.vmap(
                lambda q, k, vv: linear_attention(q, k, vv, normalise=self.normalise)
            )(phi_q, phi_k, v)
        else:
            ys = jax.vmap(
                lambda q, k, vv, b: fast_weight_recurrent(
                    q, k, vv, b, rule=self.rule, normalise=self.normalise
                )[0]
            )(phi_q, phi_k, v, beta)
        ys = ys.transpose(1, 0, 2).reshape(x.shape[0], -1)
        return jax.vmap(self.output)(ys)
