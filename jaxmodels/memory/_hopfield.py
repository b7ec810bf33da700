"""Modern (continuous) Hopfield networks and Hopfield layers.

After "Hopfield Networks is All You Need" (Ramsauer et al., ICLR 2021). Stored patterns
are the rows of `patterns`, shape `(num_patterns, dim)`; a state `xi` has shape
`(dim,)`. The update `xi <- X^T softmax(beta X xi)` never increases the energy
`E(xi) = -lse(beta, X xi) + xi.xi / 2 + log(N) / beta + M^2 / 2`, and for
well-separated patterns it retrieves a stored pattern in one step, with an error
exponentially small in the separation. The update is the attention of transformers:
the layers here are attention layers whose queries may be iterated towards their fixed
point before the readout.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optimistix as optx
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray

from .._core import RESULTS, check_positive, check_positive_int


def _check_beta(beta: ArrayLike) -> Array:
    if isinstance(beta, int | float) and not isinstance(beta, bool):
        check_positive(beta, "beta")
    beta = jnp.asarray(beta)
    if beta.ndim != 0:
        raise ValueError(f"`beta` must be a scalar; got shape {beta.shape}.")
    return eqx.error_if(beta, ~(beta > 0), "`beta` must be positive (and finite).")


def _check(xi: Array, patterns: Array, beta: ArrayLike) -> tuple[Array, Array, Array]:
    if patterns.ndim != 2:
        raise ValueError(
            "`patterns` must have shape (num_patterns, dim), one stored pattern per "
            f"row; got shape {patterns.shape}."
        )
    if xi.shape != patterns.shape[1:]:
        raise ValueError(
            f"`xi` must have shape ({patterns.shape[1]},), the feature size of "
            f"`patterns` (one state; batch with jax.vmap); got shape {xi.shape}."
        )
    beta = _check_beta(beta)
    patterns = eqx.error_if(
        patterns, ~jnp.all(jnp.isfinite(patterns)), "`patterns` contains NaN or inf."
    )
    xi = eqx.error_if(xi, ~jnp.all(jnp.isfinite(xi)), "`xi` contains NaN or inf.")
    return xi, patterns, beta


def _max_norm(y: Array) -> Array:
    # optimistix's FixedPointIteration starts its error at `jnp.array(inf)`, of the
    # default float dtype: a float32 state under x64 would change the loop's carry.
    return optx.max_norm(y).astype(jnp.asarray(jnp.inf).dtype)


def _update(xi: Array, patterns: Array, beta: Array) -> Array:
    return patterns.T @ jax.nn.softmax(beta * (patterns @ xi))


def _energy(xi: Array, patterns: Array, beta: Array) -> Array:
    num = patterns.shape[0]
    lse = jax.nn.logsumexp(beta * (patterns @ xi)) / beta
    max_norm = jnp.max(jnp.sum(patterns**2, axis=1))
    return -lse + 0.5 * xi @ xi + jnp.log(num) / beta + 0.5 * max_norm


def hopfield_energy(
    xi: Float[Array, " dim"],
    patterns: Float[Array, "num_patterns dim"],
    beta: Float[ArrayLike, ""],
) -> Float[Array, ""]:
    """The energy of the modern Hopfield network at the state `xi`.

    `E(xi) = -lse(beta, X xi) + xi.xi / 2 + log(N) / beta + M^2 / 2`, with
    `lse(beta, z) = log(sum exp(beta z)) / beta` and `M` the largest pattern norm
    ("Hopfield Networks is All You Need", Ramsauer et al., 2021, eq. 2). The constants
    make it non-negative; `hopfield_update` never increases it.

    **Arguments:**

    - `xi`: the state, shape `(dim,)`.
    - `patterns`: the stored patterns `X`, one per row, shape `(num_patterns, dim)`.
    - `beta`: the inverse temperature, positive.

    **Returns:** the energy, a scalar.

    **Raises:** `ValueError` naming the argument for a wrong shape or a non-positive
    Python `beta`; `equinox.EquinoxRuntimeError` for a non-positive array `beta` or NaN
    or inf in `xi` or `patterns`.
    """
    xi, patterns, beta = _check(xi, patterns, beta)
    return _energy(xi, patterns, beta)


def hopfield_update(
    xi: Float[Array, " dim"],
    patterns: Float[Array, "num_patterns dim"],
    beta: Float[ArrayLike, ""],
) -> Float[Array, " dim"]:
    """One update of the modern Hopfield network: `X^T softmax(beta X xi)`.

    The concave-convex procedure on `hopfield_energy` ("Hopfield Networks is All You
    Need", Ramsauer et al., 2021, eq. 3): each update lowers the energy (or keeps it),
    and one update from near a well-separated pattern retrieves it up to an error
    exponentially small in its separation. This is one-step retrieval; see
    `hopfield_retrieve` for the fixed point.

    **Arguments:**

    - `xi`: the state (query), shape `(dim,)`.
    - `patterns`: the stored patterns `X`, one per row, shape `(num_patterns, dim)`.
    - `beta`: the inverse temperature, positive.

    **Returns:** the new state, shape `(dim,)`.

    **Raises:** as `hopfield_energy`.
    """
    xi, patterns, beta = _check(xi, patterns, beta)
    return _update(xi, patterns, beta)


class HopfieldSolution(eqx.Module):
    """What `hopfield_retrieve` returns.

    **Fields:**

    - `value`: the fixed point `xi*`, shape `(dim,)`.
    - `result`: a `RESULTS` code; `successful` unless `max_steps` ran out.
    - `steps`: the updates made.
    - `energy`: `hopfield_energy` at `value`.
    """

    value: Float[Array, " dim"]
    result: RESULTS
    steps: Int[Array, ""]
    energy: Float[Array, ""]


def hopfield_retrieve(
    xi: Float[Array, " dim"],
    patterns: Float[Array, "num_patterns dim"],
    beta: Float[ArrayLike, ""],
    *,
    max_steps: int = 256,
    rtol: float = 1e-6,
    atol: float = 1e-6,
    throw: bool = True,
) -> HopfieldSolution:
    """Iterate `hopfield_update` from `xi` to its fixed point.

    The update converges to a stationary point of the energy ("Hopfield Networks is All
    You Need", Ramsauer et al., 2021, Theorem 2): a single stored pattern when `beta`
    is large and the patterns are well separated, a metastable state averaging a
    cluster of similar patterns, or, for small `beta`, the global average. The
    iteration is `optimistix.fixed_point` with `optimistix.FixedPointIteration`, so the
    fixed point is differentiable (implicitly) in `xi`, `patterns` and `beta`.

    **Arguments:**

    - `xi`: the starting state (query), shape `(dim,)`.
    - `patterns`: the stored patterns, one per row, shape `(num_patterns, dim)`.
    - `beta`: the inverse temperature, positive.
    - `max_steps`: the most updates.
    - `rtol`, `atol`: stop when successive states differ by at most
        `atol + rtol |xi|` in every component.
    - `throw`: raise if `max_steps` runs out; with `False` it is reported in `result`.

    **Returns:** a `HopfieldSolution`.

    **Raises:** as `hopfield_energy`; `ValueError` naming `max_steps`, `rtol` or `atol`
    if one is not positive; with `throw=True`, `equinox.EquinoxRuntimeError` if the
    iteration does not converge within `max_steps`.
    """
    check_positive_int(max_steps, "max_steps")
    rtol = check_positive(rtol, "rtol")
    atol = check_positive(atol, "atol")
    xi, patterns, beta = _check(xi, patterns, beta)
    dtype = jnp.result_type(xi, patterns, beta, float)
    xi, patterns, beta = (x.astype(dtype) for x in (xi, patterns, beta))
    sol = optx.fixed_point(
        lambda y, args: _update(y, *args),
        optx.FixedPointIteration(rtol=rtol, atol=atol, norm=_max_norm),
        xi,
        (patterns, beta),
        max_steps=max_steps,
        throw=throw,
    )
    return HopfieldSolution(
        value=sol.value,
        result=RESULTS.promote(sol.result),
        steps=sol.stats["num_steps"],
        energy=_energy(sol.value, patterns, beta),
    )


def _layer_norm(size: int, on: bool) -> eqx.nn.LayerNorm | None:
    return eqx.nn.LayerNorm(size) if on else None


def _apply(layer: eqx.Module | None, x: Array) -> Array:
    return x if layer is None else jax.vmap(layer)(x)


class Hopfield(eqx.Module):
    """A Hopfield layer: associates a set of state patterns with a set of stored ones.

    After "Hopfield Networks is All You Need" (Ramsauer et al., 2021) and its
    `hopfield-layers` library. The state patterns `R` (queries) and stored patterns `Y`
    are projected to `Q = R W_Q`, `K = Y W_K` per head; each query is updated
    `update_steps` times by the Hopfield update with `K` as the stored patterns,
    `Q <- softmax(beta Q K^T) K`, then read out as `softmax(beta Q K^T) V` with the
    values `V = P W_V` (`P`, the pattern projection, defaults to `Y`), and the heads
    are concatenated and projected to the output. With `update_steps=0` this is
    multi-head attention with scale `beta`, by default `1 / sqrt(head size)`.

    Optional LayerNorms act on `R`, `Y` and `P` before their projections (the
    library's `normalize_state_pattern`, `normalize_stored_pattern` and
    `normalize_pattern_projection`, on by default there and here). Dropout acts on the
    association matrix of the readout. `beta` is an array leaf held out of training
    (`lax.stop_gradient`), like the library's fixed scaling.

    One example is one set: `R` of shape `(num_states, state_size)`, `Y` of shape
    `(num_stored, stored_size)`; batch with `jax.vmap`.
    """

    state_norm: eqx.nn.LayerNorm | None
    stored_norm: eqx.nn.LayerNorm | None
    projection_norm: eqx.nn.LayerNorm | None
    state_proj: eqx.nn.Linear | None
    stored_proj: eqx.nn.Linear | None
    value_proj: eqx.nn.Linear | None
    output_proj: eqx.nn.Linear | None
    dropout: eqx.nn.Dropout
    beta: Float[Array, ""]
    state_size: int = eqx.field(static=True)
    stored_size: int = eqx.field(static=True)
    projection_size: int = eqx.field(static=True)
    hidden_size: int = eqx.field(static=True)
    value_hidden_size: int = eqx.field(static=True)
    output_size: int = eqx.field(static=True)
    num_heads: int = eqx.field(static=True)
    update_steps: int = eqx.field(static=True)

    def __init__(
        self,
        state_size: int,
        stored_size: int | None = None,
        projection_size: int | None = None,
        output_size: int | None = None,
        *,
        hidden_size: int | None = None,
        value_hidden_size: int | None = None,
        num_heads: int = 1,
        beta: float | None = None,
        update_steps: int = 0,
        normalize_state: bool = True,
        normalize_stored: bool = True,
        normalize_projection: bool = True,
        project_state: bool = True,
        project_stored: bool = True,
        project_values: bool = True,
        project_output: bool = True,
        use_bias: bool = False,
        dropout: float = 0.0,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `state_size`: the feature size of the state patterns `R` (queries).
        - `stored_size`: that of the stored patterns `Y` (keys); default `state_size`.
        - `projection_size`: that of the pattern projection `P` (values); default
            `stored_size`.
        - `output_size`: the output feature size; default `state_size`.
        - `hidden_size`: the size of the association space, all heads together;
            default `state_size`. Must be a multiple of `num_heads`.
        - `value_hidden_size`: the size of the projected values, all heads together;
            default `hidden_size`. Must be a multiple of `num_heads`.
        - `num_heads`: the number of heads.
        - `beta`: the inverse temperature, positive; default `1 / sqrt(head size)`.
        - `update_steps`: Hopfield updates of the queries before the readout.
        - `normalize_state`, `normalize_stored`, `normalize_projection`: LayerNorm
            (with affine parameters) on `R`, `Y`, `P` before projecting them.
        - `project_state`, `project_stored`, `project_values`, `project_output`:
            whether `W_Q`, `W_K`, `W_V` and the output projection exist; without one,
            the input is used as it is (the sizes must then agree).
        - `use_bias`: biases in the projections.
        - `dropout`: the dropout probability on the association matrix, in `[0, 1)`.
        - `key`: a PRNG key for the projections' initial weights.

        **Raises:** `ValueError` naming the argument if a size is not a positive
        integer, `num_heads` does not divide `hidden_size` or `value_hidden_size`,
        `beta` is not positive, `dropout` is not in `[0, 1)`, or a projection is
        left out while its input and output sizes differ.
        """
        stored_size = state_size if stored_size is None else stored_size
        projection_size = stored_size if projection_size is None else projection_size
        output_size = state_size if output_size is None else output_size
        hidden_size = state_size if hidden_size is None else hidden_size
        value_hidden_size = (
            hidden_size if value_hidden_size is None else value_hidden_size
        )
        for value, name in [
            (state_size, "state_size"),
            (stored_size, "stored_size"),
            (projection_size, "projection_size"),
            (output_size, "output_size"),
            (hidden_size, "hidden_size"),
            (value_hidden_size, "value_hidden_size"),
            (num_heads, "num_heads"),
        ]:
            check_positive_int(value, name)
        if not isinstance(update_steps, int) or update_steps < 0:
            raise ValueError(
                f"`update_steps` must be a non-negative integer; got {update_steps!r}."
            )
        for size, name in [
            (hidden_size, "hidden_size"),
            (value_hidden_size, "value_hidden_size"),
        ]:
            if size % num_heads:
                raise ValueError(
                    f"`num_heads` ({num_heads}) must divide `{name}` ({size}): each "
                    "head takes an equal slice."
                )
        for on, size_in, size_out, name in [
            (project_state, state_size, hidden_size, "project_state"),
            (project_stored, stored_size, hidden_size, "project_stored"),
            (project_values, projection_size, value_hidden_size, "project_values"),
            (project_output, value_hidden_size, output_size, "project_output"),
        ]:
            if not on and size_in != size_out:
                raise ValueError(
                    f"`{name}=False` uses the patterns unprojected, so their size "
                    f"({size_in}) must equal the projected size ({size_out})."
                )
        dropout = float(dropout)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1); got {dropout!r}.")
        head_size = hidden_size // num_heads
        beta = 1.0 / math.sqrt(head_size) if beta is None else beta
        beta = check_positive(beta, "beta")
        qkey, kkey, vkey, okey = jr.split(key, 4)

        def linear(on: bool, n_in: int, n_out: int, k: PRNGKeyArray):
            return eqx.nn.Linear(n_in, n_out, use_bias=use_bias, key=k) if on else None

        self.state_norm = _layer_norm(state_size, normalize_state)
        self.stored_norm = _layer_norm(stored_size, normalize_stored)
        self.projection_norm = _layer_norm(projection_size, normalize_projection)
        self.state_proj = linear(project_state, state_size, hidden_size, qkey)
        self.stored_proj = linear(project_stored, stored_size, hidden_size, kkey)
        self.value_proj = linear(
            project_values, projection_size, value_hidden_size, vkey
        )
        self.output_proj = linear(project_output, value_hidden_size, output_size, okey)
        self.dropout = eqx.nn.Dropout(dropout)
        self.beta = jnp.asarray(beta)
        self.state_size = state_size
        self.stored_size = stored_size
        self.projection_size = projection_size
        self.hidden_size = hidden_size
        self.value_hidden_size = value_hidden_size
        self.output_size = output_size
        self.num_heads = num_heads
        self.update_steps = update_steps

    def __call__(
        self,
        state: Float[Array, "num_states {self.state_size}"],
        stored: Float[Array, "num_stored {self.stored_size}"],
        projection: Float[Array, "num_stored {self.projection_size}"] | None = None,
        *,
        mask: Bool[Array, " num_stored"]
        | Bool[Array, "num_states num_stored"]
        | None = None,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "num_states {self.output_size}"]:
        """Associate the state patterns with the stored patterns.

        **Arguments:**

        - `state`: the state patterns `R` (queries), shape `(num_states, state_size)`.
        - `stored`: the stored patterns `Y` (keys), shape `(num_stored, stored_size)`.
        - `projection`: the pattern projection `P` (values), shape
            `(num_stored, projection_size)`; default `stored`.
        - `mask`: which stored patterns each state may associate with (`True` keeps
            one): a key padding mask of shape `(num_stored,)`, or one per state of
            shape `(num_states, num_stored)`. A state that keeps none reads out the
            average of all values.
        - `key`: a PRNG key for dropout (needed when `dropout > 0` outside
            `equinox.nn.inference_mode`).

        **Returns:** shape `(num_states, output_size)`.

        **Raises:** `ValueError` naming the argument if a shape is wrong.
        """
        if projection is None:
            projection = stored
        _check_set(state, self.state_size, "state")
        _check_set(stored, self.stored_size, "stored")
        _check_set(projection, self.projection_size, "projection")
        if projection.shape[0] != stored.shape[0]:
            raise ValueError(
                f"`projection` must have one row per stored pattern ({stored.shape[0]}"
                f"); got {projection.shape[0]}."
            )
        num_states, num_stored = state.shape[0], stored.shape[0]
        if mask is not None:
            if mask.shape == (num_stored,):
                mask = jnp.broadcast_to(mask[None, :], (num_states, num_stored))
            elif mask.shape != (num_states, num_stored):
                raise ValueError(
                    f"`mask` must have shape ({num_stored},) or ({num_states}, "
                    f"{num_stored}); got {mask.shape}."
                )
        beta = jax.lax.stop_gradient(self.beta)
        beta = eqx.error_if(beta, ~(beta > 0), "`beta` must be positive.")
        q = _apply(self.state_proj, _apply(self.state_norm, state))
        k = _apply(self.stored_proj, _apply(self.stored_norm, stored))
        v = _apply(self.value_proj, _apply(self.projection_norm, projection))
        heads = self.num_heads
        q = q.reshape(num_states, heads, -1)
        k = k.reshape(num_stored, heads, -1)
        v = v.reshape(num_stored, heads, -1)

        def association(q: Array, k: Array) -> Array:
            logits = beta * (q @ k.T)
            if mask is not None:
                logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
            return jax.nn.softmax(logits, axis=-1)

        def head(q: Array, k: Array, v: Array, key: PRNGKeyArray | None) -> Array:
            if self.update_steps:
                q = jax.lax.fori_loop(
                    0, self.update_steps, lambda _, q: association(q, k) @ k, q
                )
            return self.dropout(association(q, k), key=key) @ v

        keys = None if key is None else jr.split(key, heads)
        out = jax.vmap(head, in_axes=(1, 1, 1, 0), out_axes=1)(q, k, v, keys)
        return _apply(self.output_proj, out.reshape(num_states, -1))


def _check_set(x: Array, size: int, name: str) -> None:
    if x.ndim != 2 or x.shape[1] != size:
        raise ValueError(
            f"`{name}` must have shape (set size, {size}) (one set; batch with "
            f"jax.vmap); got shape {x.shape}."
        )


class HopfieldPooling(eqx.Module):
    """Pools a set into a fixed number of vectors with a learned static query.

    The `HopfieldPooling` of "Hopfield Networks is All You Need" (Ramsauer et al.,
    2021): the state patterns are `num_queries` trainable vectors, the stored patterns
    (and values) are the input set, so the output has a fixed size whatever the set's
    size (attention pooling, as in multiple instance learning).
    """

    hopfield: Hopfield
    query: Float[Array, "num_queries query_size"]

    def __init__(
        self,
        input_size: int,
        output_size: int | None = None,
        *,
        num_queries: int = 1,
        query_size: int | None = None,
        hidden_size: int | None = None,
        num_heads: int = 1,
        beta: float | None = None,
        update_steps: int = 0,
        normalize: bool = True,
        dropout: float = 0.0,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `input_size`: the feature size of the set's elements.
        - `output_size`: the size of each pooled vector; default `input_size`.
        - `num_queries`: the number of pooled vectors (learned queries).
        - `query_size`: the size of each learned query; default `input_size`.
        - `hidden_size`, `num_heads`, `beta`, `update_steps`, `dropout`: as
            `Hopfield` (`hidden_size` defaults to `input_size`).
        - `normalize`: LayerNorm on the queries, the set and the values.
        - `key`: a PRNG key for the initial parameters.

        **Raises:** as `Hopfield`, and for a `num_queries` that is not a positive
        integer.
        """
        check_positive_int(num_queries, "num_queries")
        query_size = input_size if query_size is None else query_size
        check_positive_int(query_size, "query_size")
        hkey, qkey = jr.split(key)
        self.hopfield = Hopfield(
            query_size,
            input_size,
            input_size,
            input_size if output_size is None else output_size,
            hidden_size=input_size if hidden_size is None else hidden_size,
            num_heads=num_heads,
            beta=beta,
            update_steps=update_steps,
            normalize_state=normalize,
            normalize_stored=normalize,
            normalize_projection=normalize,
            dropout=dropout,
            key=hkey,
        )
        self.query = jr.normal(qkey, (num_queries, query_size)) / math.sqrt(query_size)

    def __call__(
        self,
        x: Float[Array, "set_size input_size"],
        *,
        mask: Bool[Array, " set_size"] | None = None,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "num_queries output_size"]:
        """Pool one set `x` of shape `(set_size, input_size)`; `mask` marks the
        elements to keep (a padding mask).

        **Returns:** shape `(num_queries, output_size)`.

        **Raises:** `ValueError` naming the argument if a shape is wrong.
        """
        return self.hopfield(self.query, x, mask=mask, key=key)


class HopfieldLayer(eqx.Module):
    """A lookup from the input into a learned memory.

    The `HopfieldLayer` of "Hopfield Networks is All You Need" (Ramsauer et al.,
    2021): the stored patterns (keys) and the values are trainable parameters,
    `num_patterns` of each, used without projection; the input set provides the state
    patterns (queries), projected into the key space. Each input element is thereby
    replaced by a softmax-weighted mix of learned values (a learned, differentiable
    dictionary or prototype layer).
    """

    hopfield: Hopfield
    keys: Float[Array, "num_patterns hidden_size"]
    values: Float[Array, "num_patterns value_size"]

    def __init__(
        self,
        input_size: int,
        output_size: int | None = None,
        *,
        num_patterns: int,
        hidden_size: int | None = None,
        value_size: int | None = None,
        num_heads: int = 1,
        beta: float | None = None,
        update_steps: int = 0,
        normalize: bool = True,
        dropout: float = 0.0,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `input_size`: the feature size of the input elements.
        - `output_size`: the output feature size; default `input_size`.
        - `num_patterns`: the number of learned stored patterns.
        - `hidden_size`: the size of the learned keys (all heads together); default
            `input_size`.
        - `value_size`: the size of the learned values (all heads together); default
            `hidden_size`.
        - `num_heads`, `beta`, `update_steps`, `dropout`: as `Hopfield`.
        - `normalize`: LayerNorm on the input and on the learned keys and values.
        - `key`: a PRNG key for the initial parameters.

        **Raises:** as `Hopfield`, and for a `num_patterns` that is not a positive
        integer.
        """
        check_positive_int(num_patterns, "num_patterns")
        hidden_size = input_size if hidden_size is None else hidden_size
        value_size = hidden_size if value_size is None else value_size
        check_positive_int(hidden_size, "hidden_size")
        check_positive_int(value_size, "value_size")
        hkey, kkey, vkey = jr.split(key, 3)
        self.hopfield = Hopfield(
            input_size,
            hidden_size,
            value_size,
            input_size if output_size is None else output_size,
            hidden_size=hidden_size,
            value_hidden_size=value_size,
            num_heads=num_heads,
            beta=beta,
            update_steps=update_steps,
            normalize_state=normalize,
            normalize_stored=normalize,
            normalize_projection=normalize,
            project_stored=False,
            project_values=False,
            dropout=dropout,
            key=hkey,
        )
        self.keys = jr.normal(kkey, (num_patterns, hidden_size))
        self.values = jr.normal(vkey, (num_patterns, value_size))

    def __call__(
        self,
        x: Float[Array, "set_size input_size"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "set_size output_size"]:
        """Look every element of one set `x`, shape `(set_size, input_size)`, up in
        the memory.

        **Returns:** shape `(set_size, output_size)`.

        **Raises:** `ValueError` naming `x` if its shape is wrong.
        """
        return self.hopfield(x, self.keys, self.values, key=key)
