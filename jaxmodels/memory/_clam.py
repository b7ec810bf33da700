import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import optimistix as optx
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray, Real

from .._core import RESULTS, check_positive, check_positive_int


def _sq_distances(
    x: Float[Array, "*batch dim"], prototypes: Float[Array, "k dim"]
) -> Float[Array, "*batch k"]:
    diff = x[..., None, :] - prototypes.reshape((1,) * (x.ndim - 1) + prototypes.shape)
    return jnp.sum(diff * diff, axis=-1)


class ClAMSolution(eqx.Module):
    """The end of `T` steps of the ClAM attractor dynamics from one point.

    **Fields:**

    - `value`: the final state `x^T`, of shape `(dim,)`.
    - `assignment`: the index of the prototype nearest to `x^T` (the hard cluster).
    - `energies`: the energy `E(x^t)` for `t = 0, ..., T`, of shape `(T + 1,)`.
    - `step_norm`: `|x^T - x^{T-1}|`, how far the dynamics still were from a fixed
        point.
    - `result`: a `jaxmodels._core.RESULTS`; `nonlinear_divergence` if the state
        became non-finite.
    """

    value: Float[Array, " dim"]
    assignment: Int[Array, ""]
    energies: Float[Array, " steps_plus_one"]
    step_norm: Float[Array, ""]
    result: RESULTS


class ClAM(eqx.Module):
    """Clustering with associative memories (ClAM).

    From "End-to-end Differentiable Clustering with Associative Memories" (Saha,
    Krotov, Zaki and Ram, ICML 2023). `k` learned prototypes `rho_mu` are the memories
    of a dense associative memory with energy
    `E(x) = -1/beta log sum_mu exp(-beta |x - rho_mu|^2)`. A point evolves by `T`
    discrete steps of the attractor dynamics

    `x^{t+1} = x^t + eta sum_mu softmax_mu(-beta |x^t - rho_mu|^2) (rho_mu - x^t)`,

    that is gradient descent on `E` with step `eta / 2`, which lowers `E` at every step
    for `0 < eta < 2` (the Hessian of `E` is at most `2 I`). A point belongs to the
    prototype its trajectory ends nearest to: a discrete assignment reached by a
    differentiable map, so the prototypes can be trained end to end with the
    self-supervised pattern-completion loss of the paper (`completion_loss`).

    `beta`, `eta` and `mask_ratio` are array leaves (so they can be swept) but only
    `beta` can be trained, and only with `learn_beta=True`: the paper treats the
    inverse temperature as a hyperparameter, as is the default here.

    Where this may differ from the paper (only its abstract was at hand): masked
    coordinates start at zero (standardise the data), each coordinate is masked
    independently, there is no annealing of `beta`, and prototypes are seeded by
    k-means++ from the data (or drawn from a standard normal without data).
    """

    prototypes: Float[Array, "k dim"]
    beta: Float[Array, ""]
    eta: Float[Array, ""]
    mask_ratio: Float[Array, ""]
    k: int = eqx.field(static=True)
    dim: int = eqx.field(static=True)
    steps: int = eqx.field(static=True)
    learn_beta: bool = eqx.field(static=True)

    def __init__(
        self,
        k: int,
        dim: int,
        *,
        data: Float[Array, "n {dim}"] | None = None,
        init: str = "kmeans++",
        beta: Real[ArrayLike, ""] = 1.0,
        eta: Real[ArrayLike, ""] = 1.0,
        steps: int = 8,
        mask_ratio: Real[ArrayLike, ""] = 0.2,
        learn_beta: bool = False,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `k`: the number of prototypes (clusters), at least 1.
        - `dim`: the dimension of the points.
        - `data`: points of shape `(n, dim)`, `n >= k`, to draw the initial prototypes
            from; `None` draws them from a standard normal distribution instead.
        - `init`: how prototypes are drawn from `data`: `"kmeans++"` (k-means++
            seeding, `kmeans_plusplus`) or `"forgy"` (`k` distinct rows, uniformly).
            Gradient descent cannot move a prototype across another cluster, so
            two Forgy prototypes in one cluster usually stay there.
        - `beta`: the inverse temperature, positive; set it on the scale of the
            inverse squared distance between clusters.
        - `eta`: the step size of the dynamics, positive (`eta = 1` makes one step the
            modern-Hopfield update `x <- sum_mu p_mu rho_mu`; the energy is guaranteed
            to decrease for `eta < 2`).
        - `steps`: the number `T` of steps of the dynamics.
        - `mask_ratio`: the probability that a coordinate is masked in the
            pattern-completion loss, strictly between 0 and 1.
        - `learn_beta`: whether `beta` receives gradients.
        - `key`: a PRNG key for the initial prototypes.

        **Raises:** `ValueError` naming the argument if `k`, `dim` or `steps` is not a
        positive integer, `beta` or `eta` is not positive, `mask_ratio` is not strictly
        between 0 and 1, or `data` is not of shape `(n, dim)` with `n >= k`.
        """
        check_positive_int(k, "k")
        check_positive_int(dim, "dim")
        check_positive_int(steps, "steps")
        # Traced values (a sweep vmapping the constructor) are checked where used.
        if not isinstance(beta, jax.core.Tracer):
            check_positive(beta, "beta")
        if not isinstance(eta, jax.core.Tracer):
            check_positive(eta, "eta")
        if not isinstance(mask_ratio, jax.core.Tracer):
            _check_ratio(mask_ratio)
        if init not in ("kmeans++", "forgy"):
            raise ValueError(f'`init` must be "kmeans++" or "forgy"; got {init!r}.')
        if data is None:
            prototypes = jr.normal(key, (k, dim))
        else:
            data = jnp.asarray(data)
            if data.ndim != 2 or data.shape[1] != dim:
                raise ValueError(
                    f"`data` must have shape (n, dim={dim}); got {data.shape}."
                )
            if data.shape[0] < k:
                raise ValueError(
                    f"`data` needs at least k={k} rows to draw the prototypes from; "
                    f"got {data.shape[0]}."
                )
            if init == "kmeans++":
                prototypes = kmeans_plusplus(data, k, key=key)
            else:
                prototypes = data[jr.choice(key, data.shape[0], (k,), replace=False)]
        self.prototypes = prototypes
        dtype = prototypes.dtype
        self.beta = jnp.asarray(beta, dtype=dtype)
        self.eta = jnp.asarray(eta, dtype=dtype)
        self.mask_ratio = jnp.asarray(mask_ratio, dtype=dtype)
        self.k = k
        self.dim = dim
        self.steps = steps
        self.learn_beta = learn_beta

    def _beta(self) -> Float[Array, ""]:
        beta = self.beta if self.learn_beta else jax.lax.stop_gradient(self.beta)
        return eqx.error_if(beta, ~(beta > 0), "`beta` must be positive.")

    def _check_point(self, x: Array, name: str) -> None:
        if jnp.shape(x) != (self.dim,):
            raise ValueError(
                f"`{name}` must be one point of shape (dim={self.dim},); got "
                f"{jnp.shape(x)}. Batch with `jax.vmap`."
            )

    def energy(self, x: Float[Array, " {self.dim}"]) -> Float[Array, ""]:
        """The energy `E(x) = -1/beta log sum_mu exp(-beta |x - rho_mu|^2)`."""
        self._check_point(x, "x")
        beta = self._beta()
        d2 = _sq_distances(x, self.prototypes)
        return -jax.nn.logsumexp(-beta * d2) / beta

    def soft_assignment(self, x: Float[Array, " {self.dim}"]) -> Float[Array, " k"]:
        """The attention `softmax_mu(-beta |x - rho_mu|^2)` of a point on the
        prototypes (the weights of one step of the dynamics)."""
        self._check_point(x, "x")
        return jax.nn.softmax(-self._beta() * _sq_distances(x, self.prototypes))

    def _run(self, x, free, stats):
        """`T` steps from `x` by `lax.scan`; `stats(y, delta)` is recorded after each
        (`None`: nothing, for the loss)."""
        beta = self._beta()
        eta = jax.lax.stop_gradient(self.eta)
        eta = eqx.error_if(eta, ~(eta > 0), "`eta` must be positive.")
        prototypes = self.prototypes

        def step(y, _):
            p = jax.nn.softmax(-beta * _sq_distances(y, prototypes))
            delta = eta * (p @ prototypes - y)
            if free is not None:
                delta = jnp.where(free, delta, 0.0)
            y_next = y + delta
            return y_next, None if stats is None else stats(y_next, delta)

        return jax.lax.scan(step, x, None, length=self.steps)

    def dynamics(
        self,
        x: Float[Array, " {self.dim}"],
        *,
        free: Bool[Array, " {self.dim}"] | None = None,
        throw: bool = True,
    ) -> ClAMSolution:
        """Run the `T` steps of the attractor dynamics from `x` (`lax.scan`).

        **Arguments:**

        - `x`: the initial state `x^0`, of shape `(dim,)`.
        - `free`: which coordinates evolve (all by default); the others stay at their
            values in `x`. The pattern-completion loss lets only the masked ones evolve.
        - `throw`: whether a non-finite state raises.

        **Returns:** a `ClAMSolution`.

        **Raises:** `ValueError` naming `x` or `free` if its shape is not `(dim,)`;
        `equinox.EquinoxRuntimeError` with `throw=True` if the state is not finite.
        """
        self._check_point(x, "x")
        if free is not None:
            self._check_point(free, "free")
        beta = self._beta()
        prototypes = self.prototypes

        def energy(y):
            return -jax.nn.logsumexp(-beta * _sq_distances(y, prototypes)) / beta

        def stats(y, delta):
            return energy(y), jnp.sqrt(jnp.sum(delta * delta))

        value, (energies, norms) = self._run(x, free, stats)
        energies = jnp.concatenate([energy(x)[None], energies])
        assignment = jnp.argmin(_sq_distances(value, prototypes)).astype(jnp.int32)
        finite = jnp.all(jnp.isfinite(value))
        result = RESULTS.where(finite, RESULTS.successful, RESULTS.nonlinear_divergence)
        if throw:
            value = result.error_if(value, result != RESULTS.successful)
        return ClAMSolution(
            value=value,
            assignment=assignment,
            energies=energies,
            step_norm=norms[-1],
            result=result,
        )

    def __call__(
        self, x: Float[Array, " {self.dim}"], *, key: PRNGKeyArray | None = None
    ) -> Int[Array, ""]:
        """The hard cluster of one point: the prototype nearest to where its `T`-step
        trajectory ends.

        **Arguments:**

        - `x`: a point of shape `(dim,)`.
        - `key`: unused (the assignment is deterministic).

        **Returns:** an int32 scalar in `{0, ..., k - 1}`.
        """
        del key
        return self.dynamics(x).assignment

    def random_mask(self, key: PRNGKeyArray) -> Bool[Array, " {self.dim}"]:
        """A mask with each coordinate masked independently with probability
        `mask_ratio`."""
        ratio = jax.lax.stop_gradient(self.mask_ratio)
        ratio = eqx.error_if(
            ratio,
            ~((ratio > 0) & (ratio < 1)),
            "`mask_ratio` must be strictly between 0 and 1.",
        )
        return jr.bernoulli(key, ratio, (self.dim,))

    def completion_loss(
        self, x: Float[Array, " {self.dim}"], mask: Bool[Array, " {self.dim}"]
    ) -> Float[Array, ""]:
        """The pattern-completion loss of one point for a given mask.

        The masked coordinates of `x` are set to zero (the mean of standardised data),
        only they evolve under the dynamics, and the loss is the squared error of the
        completed coordinates: `sum_i mask_i (x^T_i - x_i)^2`. A mask with nothing
        masked gives zero.

        **Arguments:**

        - `x`: a point of shape `(dim,)`.
        - `mask`: the masked coordinates, a boolean array of shape `(dim,)`.

        **Returns:** a scalar, differentiable in the prototypes (and in `beta` with
        `learn_beta=True`).
        """
        self._check_point(x, "x")
        self._check_point(mask, "mask")
        probe = jnp.where(mask, 0.0, x)
        completed, _ = self._run(probe, mask, None)
        err = jnp.where(mask, completed - x, 0.0)
        return jnp.sum(err * err)


def _check_ratio(mask_ratio: float) -> None:
    try:
        ratio = float(mask_ratio)
    except (TypeError, ValueError):
        ratio = None
    if ratio is None or not 0 < ratio < 1:
        raise ValueError(
            f"`mask_ratio` must be strictly between 0 and 1; got {mask_ratio!r}."
        )


def clam_loss(
    model: ClAM, x: Float[Array, "batch dim"], key: PRNGKeyArray
) -> Float[Array, ""]:
    """The self-supervised ClAM loss of a batch: the mean pattern-completion loss over
    the points, each with its own random mask (`ClAM.random_mask`).

    Fits the `loss(model, batch, key)` signature of `jaxmodels.fit` for data `x`.

    **Arguments:**

    - `model`: a `ClAM`.
    - `x`: points of shape `(batch, dim)`.
    - `key`: a PRNG key for the masks.

    **Returns:** a scalar.
    """
    masks = jax.vmap(model.random_mask)(jr.split(key, x.shape[0]))
    return jnp.mean(jax.vmap(model.completion_loss)(x, masks))


class KMeansSolution(eqx.Module):
    """The best of several runs of Lloyd's algorithm.

    **Fields:**

    - `value`: the centres, of shape `(k, dim)`.
    - `labels`: the nearest centre of every point, of shape `(n,)`.
    - `inertia`: the sum of squared distances of the points to their centres.
    - `num_steps`: the Lloyd iterations of the best run.
    - `result`: a `jaxmodels._core.RESULTS`; `max_steps_reached` if the best run did
        not converge.
    """

    value: Float[Array, "k dim"]
    labels: Int[Array, " n"]
    inertia: Float[Array, ""]
    num_steps: Int[Array, ""]
    result: RESULTS


def _check_points(x: Array, k: int) -> None:
    if jnp.ndim(x) != 2:
        raise ValueError(f"`x` must have shape (n, dim); got {jnp.shape(x)}.")
    check_positive_int(k, "k")
    if x.shape[0] < k:
        raise ValueError(f"`x` needs at least k={k} points; got {x.shape[0]}.")


def kmeans_plusplus(
    x: Float[Array, "n dim"], k: int, *, key: PRNGKeyArray
) -> Float[Array, "{k} dim"]:
    """k-means++ seeding: the first centre uniformly among the points, each next one
    with probability proportional to the squared distance to the nearest centre so far.

    From "k-means++: the advantages of careful seeding" (Arthur and Vassilvitskii,
    2007).

    **Arguments:**

    - `x`: points of shape `(n, dim)`, `n >= k`.
    - `k`: the number of centres, at least 1.
    - `key`: a PRNG key.

    **Returns:** the centres, `k` of the points, of shape `(k, dim)`.

    **Raises:** `ValueError` naming `x` or `k` if `x` is not 2-D, `k < 1` or `n < k`.
    """
    _check_points(x, k)
    first_key, rest_key = jr.split(key)
    first = x[jr.randint(first_key, (), 0, x.shape[0])]
    centres = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(first)
    d2 = jnp.sum((x - first[None, :]) ** 2, axis=-1)

    def pick(carry, inputs):
        centres, d2 = carry
        i, subkey = inputs
        total = jnp.sum(d2)
        # All points on the centres already (duplicates): pick uniformly.
        logits = jnp.where(total > 0, jnp.log(d2), 0.0)
        new = x[jr.categorical(subkey, logits)]
        d2 = jnp.minimum(d2, jnp.sum((x - new[None, :]) ** 2, axis=-1))
        return (centres.at[i].set(new), d2), None

    if k > 1:
        inputs = (jnp.arange(1, k), jr.split(rest_key, k - 1))
        (centres, _), _ = jax.lax.scan(pick, (centres, d2), inputs)
    return centres


def kmeans(
    x: Float[Array, "n dim"],
    k: int,
    *,
    key: PRNGKeyArray,
    restarts: int = 10,
    max_steps: int = 300,
    atol: float = 1e-6,
    throw: bool = True,
) -> KMeansSolution:
    """Lloyd's k-means from k-means++ seeds, several restarts (vmapped), best inertia.

    Each run iterates the Lloyd map (assign every point to its nearest centre, move
    every centre to the mean of its points; an empty cluster keeps its centre) to a
    fixed point with `optimistix.fixed_point`. Lloyd's algorithm, "Least squares
    quantization in PCM" (1957/1982).

    **Arguments:**

    - `x`: points of shape `(n, dim)`, `n >= k`.
    - `k`: the number of clusters, at least 1.
    - `key`: a PRNG key for the seeds.
    - `restarts`: the number of independent runs, at least 1.
    - `max_steps`: the most Lloyd iterations of a run.
    - `atol`: a run stops when no centre moves by more than `atol` (Lloyd's algorithm
        reaches an exact fixed point in finitely many steps).
    - `throw`: whether the best run not converging raises.

    **Returns:** a `KMeansSolution`.

    **Raises:** `ValueError` naming the argument if `x` is not 2-D, `k`, `restarts` or
    `max_steps` is not a positive integer, or `n < k`.
    """
    _check_points(x, k)
    check_positive_int(restarts, "restarts")
    check_positive_int(max_steps, "max_steps")
    check_positive(atol, "atol")

    def lloyd(centres, _):
        labels = jnp.argmin(_sq_distances(x, centres), axis=-1)
        onehot = jax.nn.one_hot(labels, k, dtype=x.dtype)
        counts = jnp.sum(onehot, axis=0)
        sums = onehot.T @ x
        means = sums / jnp.maximum(counts, 1)[:, None]
        return jnp.where((counts > 0)[:, None], means, centres)

    def run(subkey):
        init = kmeans_plusplus(x, k, key=subkey)
        sol = optx.fixed_point(
            lloyd,
            optx.FixedPointIteration(rtol=0.0, atol=atol),
            init,
            max_steps=max_steps,
            throw=False,
            adjoint=optx.RecursiveCheckpointAdjoint(),
        )
        centres = sol.value
        d2 = _sq_distances(x, centres)
        labels = jnp.argmin(d2, axis=-1).astype(jnp.int32)
        inertia = jnp.sum(jnp.min(d2, axis=-1))
        return centres, labels, inertia, sol.stats["num_steps"], sol.result

    centres, labels, inertia, num_steps, results = jax.vmap(run)(
        jr.split(key, restarts)
    )
    best = jnp.argmin(inertia)
    result = RESULTS.promote(jtu.tree_map(lambda r: r[best], results))
    centres = centres[best]
    if throw:
        centres = result.error_if(centres, result != RESULTS.successful)
    return KMeansSolution(
        value=centres,
        labels=labels[best],
        inertia=inertia[best],
        num_steps=num_steps[best],
        result=result,
    )


def _check_labels(labels: Array, name: str, n: int, num_labels: int) -> Array:
    if jnp.shape(labels) != (n,):
        raise ValueError(f"`{name}` must have shape (n={n},); got {jnp.shape(labels)}.")
    if not jnp.issubdtype(jnp.asarray(labels).dtype, jnp.integer):
        raise ValueError(f"`{name}` must be integer labels; got {labels.dtype}.")
    bad = jnp.any((labels < 0) | (labels >= num_labels))
    return eqx.error_if(
        labels, bad, f"`{name}` must lie in {{0, ..., num_labels - 1}}."
    )


def _entropy(counts: Array, n: Array) -> Array:
    p = counts / n
    return -jnp.sum(jnp.where(counts > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))


def normalised_mutual_info(
    labels_true: Int[ArrayLike, " n"],
    labels_pred: Int[ArrayLike, " n"],
    *,
    num_labels: int,
) -> Float[Array, ""]:
    """Normalised mutual information of two clusterings, `I(a; b) / ((H(a) + H(b)) / 2)`.

    The arithmetic-mean normalisation of scikit-learn's
    `normalized_mutual_info_score` (its default), natural logarithms; it is invariant
    under relabelling, 1 for identical partitions and 0 for independent ones. Two
    partitions that both have a single cluster score 1 (scikit-learn's convention).

    **Arguments:**

    - `labels_true`, `labels_pred`: integer labels of shape `(n,)` in
        `{0, ..., num_labels - 1}`.
    - `num_labels`: a bound on the labels of both (it fixes the contingency table's
        shape); unused labels are allowed.

    **Returns:** a scalar in `[0, 1]`.

    **Raises:** `ValueError` naming the argument if the labels are not integer arrays
    of one shape `(n,)` or `num_labels < 1`; `equinox.EquinoxRuntimeError` if a label
    is outside `{0, ..., num_labels - 1}`.
    """
    check_positive_int(num_labels, "num_labels")
    a = jnp.asarray(labels_true)
    b = jnp.asarray(labels_pred)
    if a.ndim != 1:
        raise ValueError(f"`labels_true` must have shape (n,); got {a.shape}.")
    n = a.shape[0]
    a = _check_labels(a, "labels_true", n, num_labels)
    b = _check_labels(b, "labels_pred", n, num_labels)
    table = jnp.zeros((num_labels, num_labels)).at[a, b].add(1.0)
    total = jnp.asarray(n, table.dtype)
    rows = jnp.sum(table, axis=1)
    cols = jnp.sum(table, axis=0)
    outer = rows[:, None] * cols[None, :]
    safe = jnp.where(table > 0, table * total / jnp.where(outer > 0, outer, 1.0), 1.0)
    mi = jnp.sum(jnp.where(table > 0, table / total * jnp.log(safe), 0.0))
    mi = jnp.maximum(mi, 0.0)
    h_a, h_b = _entropy(rows, total), _entropy(cols, total)
    single = (jnp.sum(rows > 0) == 1) & (jnp.sum(cols > 0) == 1)
    normaliser = jnp.maximum((h_a + h_b) / 2, jnp.finfo(table.dtype).eps)
    return jnp.where(single, 1.0, mi / normaliser)


def silhouette_score(
    x: Real[Array, "n dim"], labels: Int[ArrayLike, " n"], *, num_labels: int
) -> Float[Array, ""]:
    """The mean silhouette coefficient of a clustering, with Euclidean distances.

    From "Silhouettes: a graphical aid to the interpretation and validation of cluster
    analysis" (Rousseeuw, 1987). For point `i` with mean distance `a_i` to the other
    points of its cluster and smallest mean distance `b_i` to the points of another
    cluster, `s_i = (b_i - a_i) / max(a_i, b_i)`, and `s_i = 0` in a cluster of one
    (scikit-learn's `silhouette_score`). Builds the `n x n` distance matrix.

    **Arguments:**

    - `x`: points of shape `(n, dim)`.
    - `labels`: integer labels of shape `(n,)` in `{0, ..., num_labels - 1}`.
    - `num_labels`: a bound on the labels (unused labels are allowed).

    **Returns:** a scalar in `[-1, 1]`.

    **Raises:** `ValueError` naming the argument if `x` is not 2-D, `labels` is not
    an integer array of shape `(n,)` or `num_labels < 1`; `equinox.EquinoxRuntimeError`
    if a label is out of range or the number of non-empty clusters is not between 2 and
    `n - 1` (the silhouette is undefined there).
    """
    check_positive_int(num_labels, "num_labels")
    if jnp.ndim(x) != 2:
        raise ValueError(f"`x` must have shape (n, dim); got {jnp.shape(x)}.")
    n = x.shape[0]
    labels = _check_labels(jnp.asarray(labels), "labels", n, num_labels)
    # The Gram expansion: an (n, n) matrix, not the (n, n, dim) differences.
    sq = jnp.sum(x * x, axis=-1)
    d2 = sq[:, None] + sq[None, :] - 2 * (x @ x.T)
    # Exact zeros on the diagonal (the expansion leaves rounding there, and its
    # square root would be of order sqrt(eps)).
    d2 = jnp.where(jnp.eye(n, dtype=bool), 0.0, d2)
    dist = jnp.sqrt(jnp.maximum(d2, 0.0))
    onehot = jax.nn.one_hot(labels, num_labels, dtype=dist.dtype)
    counts = jnp.sum(onehot, axis=0)
    used = jnp.sum(counts > 0)
    counts = eqx.error_if(
        counts,
        (used < 2) | (used > n - 1),
        "The silhouette needs between 2 and n - 1 non-empty clusters in `labels`.",
    )
    sums = dist @ onehot
    own = counts[labels]
    a = jnp.sum(sums * onehot, axis=1) / jnp.maximum(own - 1, 1)
    nonempty = (counts > 0)[None, :]
    mean_other = jnp.where(
        (onehot == 0) & nonempty, sums / jnp.maximum(counts, 1)[None, :], jnp.inf
    )
    b = jnp.min(mean_other, axis=1)
    s = (b - a) / jnp.maximum(jnp.maximum(a, b), jnp.finfo(dist.dtype).tiny)
    return jnp.mean(jnp.where(own > 1, s, 0.0))
