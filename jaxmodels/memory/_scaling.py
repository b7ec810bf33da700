"""Scaling laws of outer-product associative memories.

After "Scaling Laws for Associative Memories" (Cabannes, Dohmatob and Bietti, ICLR
2024). Input tokens `x in {0, ..., N - 1}` follow a Zipf law `p(x) ~ (x + 1)^-alpha`
and each has a deterministic answer `f(x) in {0, ..., M - 1}`. Tokens and answers are
embedded by random unit vectors `e_x`, `u_y` in `R^d`, and the memory is the matrix
`W = sum_x q(x) u_{f(x)} e_x^T`, whose weights `q` are estimated from `T` samples; it
answers `argmax_y u_y^T W e_x`. The generalisation error
`E = sum_x p(x) 1[prediction(x) != f(x)]` is computed exactly over the token law.

The scaling laws (Zipf exponent `alpha > 1`, up to logarithmic factors): with infinite
memory every seen token is recalled and the error is the unseen mass, whose expectation
`sum_x p(x) (1 - p(x))^T` decays as `T^-(1 - 1/alpha)`; with infinite data, storing
only the `k ~ d` most frequent tokens (`estimator="top"`) leaves the tail mass
`k^-(alpha - 1)`, so the error decays as `d^-(alpha - 1)`, the best rate of any
memory of size `d`; weighting by frequency (`q = p`) lets the frequent tokens drown
the rare ones and decays only as `d^-(alpha - 1) / (2 alpha)` (see
`predicted_exponent`).
"""

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Real

from .._core import check_positive, check_positive_int


_ESTIMATORS = ("frequency", "seen", "power", "top")


def _check_alpha(alpha: float, *, above_one: bool) -> float:
    alpha = check_positive(alpha, "alpha")
    if above_one and not alpha > 1:
        raise ValueError(
            "`alpha` must be greater than 1 for the scaling laws (a Zipf law with "
            f"alpha <= 1 has no infinite-vocabulary limit); got {alpha!r}."
        )
    return alpha


def zipf_probabilities(
    num_tokens: int, alpha: float, *, dtype=None
) -> Float[Array, " {num_tokens}"]:
    """The Zipf law `p(x) = (x + 1)^-alpha / sum_z (z + 1)^-alpha` over `num_tokens`.

    **Arguments:**

    - `num_tokens`: the vocabulary size `N`, a positive integer.
    - `alpha`: the Zipf exponent, positive (greater than 1 for the scaling laws).
    - `dtype`: the floating dtype (JAX's default float if `None`).

    **Returns:** the probabilities, shape `(num_tokens,)`, decreasing and summing to 1.

    **Raises:** `ValueError` naming the argument if `num_tokens` is not a positive
    integer or `alpha` is not positive.
    """
    check_positive_int(num_tokens, "num_tokens")
    alpha = _check_alpha(alpha, above_one=False)
    ranks = jnp.arange(1, num_tokens + 1, dtype=dtype or jnp.result_type(float))
    weights = ranks**-alpha
    return weights / jnp.sum(weights)


def random_embeddings(
    key: PRNGKeyArray,
    num: int,
    dim: int,
    *,
    active_dim: Int[ArrayLike, ""] | None = None,
) -> Float[Array, "{num} {dim}"]:
    """`num` independent embeddings uniform on the unit sphere (normalised Gaussians).

    With `active_dim = k` only the first `k` coordinates are used (the rest are zero):
    the rows are then uniform on the unit sphere of `R^k`. `k` may be a traced integer,
    so that memories of several sizes share one shape and can be vmapped over.

    **Arguments:**

    - `key`: a PRNG key.
    - `num`: the number of embeddings, a positive integer.
    - `dim`: the embedding dimension, a positive integer.
    - `active_dim`: the number of coordinates used, `1 <= k <= dim` (all if `None`).

    **Returns:** the embeddings, one per row, shape `(num, dim)`.

    **Raises:** `ValueError` naming the argument if `num` or `dim` is not a positive
    integer.
    """
    check_positive_int(num, "num")
    check_positive_int(dim, "dim")
    g = jr.normal(key, (num, dim))
    if active_dim is not None:
        active = jnp.asarray(active_dim)
        active = eqx.error_if(
            active, (active < 1) | (active > dim), "`active_dim` must be in [1, dim]."
        )
        g = jnp.where(jnp.arange(dim) < active, g, 0.0)
    return g / jnp.linalg.norm(g, axis=1, keepdims=True)


def sample_frequencies(
    key: PRNGKeyArray,
    probabilities: Float[Array, " num_tokens"],
    num_samples: Int[ArrayLike, ""],
    *,
    max_samples: int | None = None,
) -> Float[Array, " num_tokens"]:
    """Empirical token frequencies `p_hat(x) = count(x) / T` from `T` i.i.d. samples.

    `max_samples` tokens are drawn and the first `T = num_samples` are counted, so
    that `num_samples` may be traced and, for one `key`, larger `T` extend the same
    data (the online setting of the paper).

    **Arguments:**

    - `key`: a PRNG key.
    - `probabilities`: the token law `p`, shape `(num_tokens,)`.
    - `num_samples`: the number of samples `T`, at least 1.
    - `max_samples`: how many tokens to draw; `num_samples` if `None` (which must
        then be a Python integer).

    **Returns:** `p_hat`, shape `(num_tokens,)`.

    **Raises:** `ValueError` naming the argument if `max_samples` (or a concrete
    `num_samples`) is not a positive integer; `equinox.EquinoxRuntimeError` if
    `num_samples` is outside `[1, max_samples]`.
    """
    if max_samples is None:
        check_positive_int(num_samples, "num_samples")
        max_samples = int(num_samples)  # pyright: ignore
    check_positive_int(max_samples, "max_samples")
    t = jnp.asarray(num_samples)
    t = eqx.error_if(
        t, (t < 1) | (t > max_samples), "`num_samples` must be in [1, max_samples]."
    )
    # Inverse-CDF sampling: O(T log N), where `jr.categorical` would draw T x N Gumbels.
    cdf = jnp.cumsum(probabilities)
    uniform = jr.uniform(key, (max_samples,), cdf.dtype) * cdf[-1]
    tokens = jnp.minimum(
        jnp.searchsorted(cdf, uniform, side="right"), probabilities.shape[0] - 1
    )
    counted = (jnp.arange(max_samples) < t).astype(probabilities.dtype)
    counts = jnp.zeros_like(probabilities).at[tokens].add(counted)
    return counts / t.astype(probabilities.dtype)


def token_weights(
    frequencies: Float[Array, " num_tokens"],
    estimator: str = "top",
    *,
    rho: Float[ArrayLike, ""] = 1.0,
    capacity: Int[ArrayLike, ""] | None = None,
) -> Float[Array, " num_tokens"]:
    """The weights `q(x)` of the memory `W = sum_x q(x) u_{f(x)} e_x^T`.

    The estimators of Cabannes, Dohmatob and Bietti (2024), from the empirical
    frequencies `p_hat` (or the true `p`, for infinite data):

    - `"frequency"`: `q = p_hat`, what a Hebbian sum over the samples stores.
    - `"seen"`: `q = 1[p_hat > 0]`, every seen token with the same weight.
    - `"power"`: `q = p_hat^rho` on seen tokens (`rho = 0` is `"seen"`, `rho = 1`
        is `"frequency"`).
    - `"top"`: `q = 1` on the `capacity` most frequent seen tokens, 0 elsewhere (ties
        broken towards lower token ids): the thresholded scheme that keeps the memory
        from being overloaded and attains the `d^-(alpha - 1)` rate when
        `capacity ~ d`.

    **Arguments:**

    - `frequencies`: `p_hat`, shape `(num_tokens,)`, non-negative.
    - `estimator`: one of the names above.
    - `rho`: the power of `"power"`, non-negative.
    - `capacity`: the number of tokens `"top"` stores (may be traced).

    **Returns:** `q`, shape `(num_tokens,)`.

    **Raises:** `ValueError` naming the argument for an unknown `estimator` or a
    `"top"` estimator without `capacity`.
    """
    if estimator not in _ESTIMATORS:
        raise ValueError(
            f"`estimator` must be one of {_ESTIMATORS}; got {estimator!r}."
        )
    seen = frequencies > 0
    dtype = frequencies.dtype
    if estimator == "frequency":
        return frequencies
    if estimator == "seen":
        return seen.astype(dtype)
    if estimator == "power":
        rho = jnp.asarray(rho, dtype)
        rho = eqx.error_if(rho, rho < 0, "`rho` must be non-negative.")
        return jnp.where(seen, jnp.where(seen, frequencies, 1.0) ** rho, 0.0)
    if capacity is None:
        raise ValueError('`capacity` is needed by `estimator="top"`.')
    order = jnp.argsort(-frequencies, stable=True)
    rank = (
        jnp.zeros(frequencies.shape, jnp.int32)
        .at[order]
        .set(jnp.arange(frequencies.shape[0], dtype=jnp.int32))
    )
    return (seen & (rank < capacity)).astype(dtype)


def _check_memory(q: Array, targets: Array, inputs: Array, outputs: Array) -> None:
    num = q.shape[0]
    if targets.shape != (num,) or inputs.ndim != 2 or inputs.shape[0] != num:
        raise ValueError(
            "`weights`, `targets` and `input_embeddings` must have shapes (N,), (N,) "
            f"and (N, d); got {q.shape}, {targets.shape} and {inputs.shape}."
        )
    if outputs.ndim != 2 or outputs.shape[1] != inputs.shape[1]:
        raise ValueError(
            "`output_embeddings` must have shape (M, d) with the same d as "
            f"`input_embeddings`; got {outputs.shape} and {inputs.shape}."
        )


class OuterProductMemory(eqx.Module):
    """The associative memory `W = sum_x q(x) u_{f(x)} e_x^T` and its readout.

    From "Scaling Laws for Associative Memories" (Cabannes, Dohmatob and Bietti, ICLR
    2024). `__call__` answers one token, `argmax_y u_y^T W e_x`; `error` is the exact
    generalisation error under a token law.
    """

    weight: Float[Array, "dim dim"]
    input_embeddings: Float[Array, "num_tokens dim"]
    output_embeddings: Float[Array, "num_outputs dim"]

    def __init__(
        self,
        weights: Float[Array, " num_tokens"],
        targets: Int[Array, " num_tokens"],
        input_embeddings: Float[Array, "num_tokens dim"],
        output_embeddings: Float[Array, "num_outputs dim"],
    ):
        """**Arguments:**

        - `weights`: `q`, shape `(N,)` (see `token_weights`).
        - `targets`: the answers `f(x)`, integers in `[0, M)`, shape `(N,)`.
        - `input_embeddings`: `e_x`, one per row, shape `(N, d)`.
        - `output_embeddings`: `u_y`, one per row, shape `(M, d)`.

        **Raises:** `ValueError` if the shapes disagree.
        """
        _check_memory(weights, targets, input_embeddings, output_embeddings)
        self.weight = build_memory(
            weights, targets, input_embeddings, output_embeddings
        )
        self.input_embeddings = input_embeddings
        self.output_embeddings = output_embeddings

    def scores(self, token: Int[ArrayLike, ""]) -> Float[Array, " num_outputs"]:
        """`u_y^T W e_x` for every answer `y`, shape `(M,)`."""
        return self.output_embeddings @ (self.weight @ self.input_embeddings[token])

    def __call__(
        self, token: Int[ArrayLike, ""], *, key: PRNGKeyArray | None = None
    ) -> Int[Array, ""]:
        """The answer `argmax_y u_y^T W e_x` to one token `x`."""
        del key
        return jnp.argmax(self.scores(token))

    def error(
        self,
        probabilities: Float[Array, " num_tokens"],
        targets: Int[Array, " num_tokens"],
    ) -> Float[Array, ""]:
        """The exact error `sum_x p(x) 1[argmax_y u_y^T W e_x != f(x)]`."""
        scores = (self.input_embeddings @ self.weight.T) @ self.output_embeddings.T
        wrong = jnp.argmax(scores, axis=1) != targets
        return jnp.sum(jnp.where(wrong, probabilities, 0.0))


def build_memory(
    weights: Float[Array, " num_tokens"],
    targets: Int[Array, " num_tokens"],
    input_embeddings: Float[Array, "num_tokens dim"],
    output_embeddings: Float[Array, "num_outputs dim"],
) -> Float[Array, "dim dim"]:
    """The memory matrix `W = sum_x q(x) u_{f(x)} e_x^T`, shape `(d, d)`.

    **Arguments:** as `OuterProductMemory`.

    **Raises:** `ValueError` if the shapes disagree.
    """
    _check_memory(weights, targets, input_embeddings, output_embeddings)
    return (output_embeddings[targets] * weights[:, None]).T @ input_embeddings


def memory_error(
    weights: Float[Array, " num_tokens"],
    targets: Int[Array, " num_tokens"],
    probabilities: Float[Array, " num_tokens"],
    input_embeddings: Float[Array, "num_tokens dim"],
    output_embeddings: Float[Array, "num_outputs dim"],
) -> Float[Array, ""]:
    """The exact generalisation error of the memory with weights `q`.

    `E = sum_x p(x) 1[argmax_y u_y^T W e_x != f(x)]`, a sum over the whole vocabulary
    (no sampling). The scores are computed without forming `W`, as
    `E (E^T diag(q) U_f U^T)`, in `O(N d M)` operations instead of `O(N d^2)`.

    **Arguments:**

    - `weights`, `targets`, `input_embeddings`, `output_embeddings`: as
        `OuterProductMemory`.
    - `probabilities`: the token law `p`, shape `(N,)`.

    **Returns:** the error, a scalar in `[0, 1]`.

    **Raises:** `ValueError` if the shapes disagree.
    """
    _check_memory(weights, targets, input_embeddings, output_embeddings)
    gram = output_embeddings[targets] @ output_embeddings.T
    readout = input_embeddings.T @ (weights[:, None] * gram)
    scores = input_embeddings @ readout
    wrong = jnp.argmax(scores, axis=1) != targets
    return jnp.sum(jnp.where(wrong, probabilities, 0.0))


def unstored_mass(
    weights: Float[Array, " num_tokens"], probabilities: Float[Array, " num_tokens"]
) -> Float[Array, ""]:
    """`sum_x p(x) 1[q(x) = 0]`: the error of a memory of infinite size.

    With `d -> infinity` (or orthonormal embeddings, `d >= N`) every stored token is
    recalled exactly, and a token that is not stored has no association: as in the
    paper it counts as an error.
    """
    return jnp.sum(jnp.where(weights > 0, 0.0, probabilities))


def expected_unseen_mass(
    probabilities: Float[Array, " num_tokens"], num_samples: Real[ArrayLike, ""]
) -> Float[Array, ""]:
    """`E[sum_x p(x) 1[x unseen in T samples]] = sum_x p(x) (1 - p(x))^T`.

    The expected error of an infinite memory storing every seen token; for a Zipf law
    it decays as `T^-(1 - 1/alpha)`.
    """
    return jnp.sum(probabilities * jnp.exp(num_samples * jnp.log1p(-probabilities)))


def fit_power_law(
    xs: Float[ArrayLike, " n"], ys: Float[ArrayLike, " n"]
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """Least squares on log-log axes: `y ~ C x^-exponent`.

    Solves `min |log y - (log C - exponent log x)|^2` with `lineax` (QR).

    **Arguments:**

    - `xs`, `ys`: positive values, shape `(n,)`, `n >= 2`.

    **Returns:** `(exponent, C)`.

    **Raises:** `ValueError` if the shapes differ or `n < 2`;
    `equinox.EquinoxRuntimeError` if a value is not positive.
    """
    xs, ys = jnp.asarray(xs), jnp.asarray(ys)
    if xs.ndim != 1 or xs.shape != ys.shape or xs.shape[0] < 2:
        raise ValueError(
            f"`xs` and `ys` must be 1-D of the same length >= 2; got {xs.shape} and "
            f"{ys.shape}."
        )
    bad = jnp.any(~(xs > 0)) | jnp.any(~(ys > 0))
    xs = eqx.error_if(xs, bad, "`xs` and `ys` must be positive for a log-log fit.")
    dtype = jnp.result_type(xs.dtype, ys.dtype, float)
    design = jnp.stack([jnp.ones_like(xs), jnp.log(xs)], axis=1).astype(dtype)
    sol = lx.linear_solve(
        lx.MatrixLinearOperator(design), jnp.log(ys).astype(dtype), lx.QR()
    )
    intercept, slope = sol.value
    return -slope, jnp.exp(intercept)


def predicted_exponent(
    alpha: float, axis: str, estimator: str = "top", *, rho: float = 1.0
) -> float:
    """The exponent `a` of the scaling law `E ~ x^-a` (up to logarithmic factors).

    - `axis="samples"` (infinite memory, any estimator that stores every seen token):
        `a = 1 - 1/alpha`.
    - `axis="dim"` (infinite data): `a = alpha - 1` for `"top"` with capacity
        proportional to `d` (the optimal rate); `a = (alpha - 1) / (2 rho alpha)` for
        `"power"` with `rho alpha > 1/2` (`"frequency"` is `rho = 1`). This follows
        from the signal-to-noise argument of the paper: token `x` is recalled while
        `q(x) > sqrt(sum_z q(z)^2 / d)`, i.e. for `x < d^(1 / (2 rho alpha))`.

    **Raises:** `ValueError` if `alpha <= 1`, `axis` is unknown, or no law is known
    for the estimator (`"seen"` with infinite data stores every token and has none).
    """
    alpha = _check_alpha(alpha, above_one=True)
    if axis == "samples":
        return 1.0 - 1.0 / alpha
    if axis != "dim":
        raise ValueError(f'`axis` must be "dim" or "samples"; got {axis!r}.')
    if estimator == "top":
        return alpha - 1.0
    if estimator == "frequency":
        rho = 1.0
    if estimator in ("frequency", "power") and rho * alpha > 0.5:
        return (alpha - 1.0) / (2.0 * rho * alpha)
    raise ValueError(
        f"No scaling law in `d` is known for `estimator={estimator!r}` "
        f"(with rho={rho!r}) with infinite data."
    )


class ScalingCurve(eqx.Module):
    """A measured scaling curve and its fitted power law.

    **Fields:**

    - `values`: the memory sizes `d` or sample sizes `T`, shape `(n,)`.
    - `errors`: the exact errors, shape `(seeds, n)`.
    - `mean_error`: their mean over seeds, shape `(n,)`.
    - `exponent`, `prefactor`: the least-squares fit `mean_error ~ C x^-exponent`.
    """

    values: Float[Array, " n"]
    errors: Float[Array, "seeds n"]
    mean_error: Float[Array, " n"]
    exponent: Float[Array, ""]
    prefactor: Float[Array, ""]


def scaling_curve(
    key: PRNGKeyArray,
    values: Sequence[int],
    *,
    axis: str,
    alpha: float,
    num_tokens: int,
    num_outputs: int,
    estimator: str = "top",
    rho: float = 1.0,
    capacity_ratio: float = 0.25,
    dim: int | None = None,
    num_samples: int | None = None,
    seeds: int = 8,
) -> ScalingCurve:
    """The exact error of outer-product memories against `d` or `T`, over seeds.

    Each seed draws the answers `f` (uniform over `num_outputs`), the embeddings and
    the samples. `axis="dim"` sweeps the memory size `d` over `values` with
    `num_samples` samples (`None`: infinite data, `p_hat = p`); memories of every size
    are computed at the largest size with the extra coordinates zeroed (the same law
    as a smaller `d`), so that the sweep compiles once. `axis="samples"` sweeps `T`
    over `values` with memory size `dim` (`None`: infinite memory, the error is the
    unstored mass); the samples are nested (larger `T` extend the same data). The
    `"top"` estimator stores `max(1, floor(capacity_ratio d))` tokens.

    **Arguments:**

    - `key`: a PRNG key.
    - `values`: the swept sizes, positive integers, at least two.
    - `axis`: `"dim"` or `"samples"`.
    - `alpha`: the Zipf exponent, `> 1`.
    - `num_tokens`, `num_outputs`: `N` and `M`.
    - `estimator`, `rho`: see `token_weights`.
    - `capacity_ratio`: the number of stored tokens per dimension for `"top"`.
    - `dim`: the memory size when sweeping `T` (`None`: infinite).
    - `num_samples`: the sample size when sweeping `d` (`None`: infinite).
    - `seeds`: the number of independent draws.

    **Returns:** a `ScalingCurve`.

    **Raises:** `ValueError` naming the argument for a non-positive size, `alpha <= 1`,
    fewer than two `values`, an unknown `axis` or `estimator`, or a `"top"` estimator
    with infinite memory (which has no capacity).
    """
    _check_alpha(alpha, above_one=True)
    check_positive_int(num_tokens, "num_tokens")
    check_positive_int(num_outputs, "num_outputs")
    check_positive_int(seeds, "seeds")
    check_positive(capacity_ratio, "capacity_ratio")
    check_positive_int(dim, "dim", allow_none=True)
    check_positive_int(num_samples, "num_samples", allow_none=True)
    values = list(values)
    if len(values) < 2:
        raise ValueError(f"`values` needs at least two sizes; got {values!r}.")
    for v in values:
        check_positive_int(v, "values")
    if estimator not in _ESTIMATORS:
        raise ValueError(
            f"`estimator` must be one of {_ESTIMATORS}; got {estimator!r}."
        )
    if axis == "dim":
        sizes = jnp.asarray(values)
        width = max(values)
    elif axis == "samples":
        if dim is None and estimator == "top":
            raise ValueError('`estimator="top"` needs a finite `dim` (its capacity).')
        sizes = jnp.asarray(values)
        width = dim
    else:
        raise ValueError(f'`axis` must be "dim" or "samples"; got {axis!r}.')
    errors = _curve(
        key,
        sizes,
        jnp.asarray(rho, float),
        axis=axis,
        alpha=alpha,
        num_tokens=num_tokens,
        num_outputs=num_outputs,
        estimator=estimator,
        capacity_ratio=capacity_ratio,
        width=width,
        num_samples=num_samples,
        max_samples=max(values) if axis == "samples" else num_samples,
        seeds=seeds,
    )
    mean = jnp.mean(errors, axis=0)
    exponent, prefactor = fit_power_law(sizes.astype(mean.dtype), mean)
    return ScalingCurve(
        values=sizes.astype(mean.dtype),
        errors=errors,
        mean_error=mean,
        exponent=exponent,
        prefactor=prefactor,
    )


@eqx.filter_jit
def _curve(
    key,
    sizes,
    rho,
    *,
    axis,
    alpha,
    num_tokens,
    num_outputs,
    estimator,
    capacity_ratio,
    width,
    num_samples,
    max_samples,
    seeds,
):
    probabilities = zipf_probabilities(num_tokens, alpha)

    def one_seed(key):
        tkey, ikey, okey, skey = jr.split(key, 4)
        targets = jr.randint(tkey, (num_tokens,), 0, num_outputs)

        def one_size(size):
            if axis == "dim":
                active, t = size, num_samples
            else:
                active, t = width, size
            if t is None:
                freq = probabilities
            else:
                freq = sample_frequencies(
                    skey, probabilities, t, max_samples=max_samples
                )
            capacity = None
            if estimator == "top":
                capacity = jnp.maximum(1, jnp.floor(capacity_ratio * active)).astype(
                    int
                )
            q = token_weights(freq, estimator, rho=rho, capacity=capacity)
            if width is None:
                return unstored_mass(q, probabilities)
            inputs = random_embeddings(ikey, num_tokens, width, active_dim=active)
            outputs = random_embeddings(okey, num_outputs, width, active_dim=active)
            return memory_error(q, targets, probabilities, inputs, outputs)

        return jax.lax.map(one_size, sizes)

    # Seeds one at a time: the embeddings of all seeds at once may not fit in memory.
    return jax.lax.map(one_seed, jr.split(key, seeds))
