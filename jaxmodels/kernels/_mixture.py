"""Scale mixtures of neural network Gaussian processes.

After "Scale Mixtures of Neural Network Gaussian Processes" (Lee, Yun, Yang and Lee,
ICLR 2022). Putting a prior on the variance `sigma^2` of the last-layer parameters of an
infinitely wide network turns its NNGP `f | sigma^2 ~ GP(0, sigma^2 K)` into a scale
mixture of Gaussian processes. With `sigma^2 ~ InvGamma(a, b)` the mixture is a
Student-t process with `nu = 2a` degrees of freedom and scale `(b / a) K`; conditioned
on `n` observations `y` it is again a Student-t process, with `nu + n` degrees of
freedom, mean `K_*^T K^-1 y` and scale
`((2b + y^T K^-1 y) / (2a + n)) (K_** - K_*^T K^-1 K_*)` (`student_t_process`). Other
priors on `sigma^2` (`LogNormalScale`, `DiscreteScale`) give mixtures whose marginal
likelihood and predictive are integrals over `sigma^2`, computed here by quadrature
(`scale_mixture_process`). The same construction applies to the NTK-GP of a network
trained by gradient flow: pass the NTK-GP mean and covariance in place of `K`.
"""

import abc
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
import optimistix as optx
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Real

from .._core import check_positive, check_positive_int


def _check_nonneg(value, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a non-negative number; got {value!r}.")
    if not number >= 0:
        raise ValueError(f"`{name}` must be non-negative; got {value!r}.")
    return number


def _check_square(k: Array, name: str) -> None:
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"`{name}` must be a square matrix; got shape {k.shape}.")


def _cholesky(k: Array, diag_reg: float, name: str) -> Array:
    """The lower Cholesky factor of `k + diag_reg I`, erroring if it is not PSD."""
    n = k.shape[0]
    k = 0.5 * (k + k.T) + diag_reg * jnp.eye(n, dtype=k.dtype)
    chol = jnp.linalg.cholesky(k)
    return eqx.error_if(
        chol,
        ~jnp.all(jnp.isfinite(chol)) | jnp.any(jnp.diagonal(chol) <= 0),
        f"`{name}` (plus `diag_reg` on its diagonal) is not positive definite; raise "
        "`diag_reg`.",
    )


def _cho_solve(chol: Array, rhs: Array) -> Array:
    """`K^-1 rhs` from the Cholesky factor of `K`, by lineax triangular solves."""
    lower = lx.MatrixLinearOperator(chol, lx.lower_triangular_tag)
    upper = lx.MatrixLinearOperator(chol.T, lx.upper_triangular_tag)
    solver = lx.Triangular()

    def one(b):
        z = lx.linear_solve(lower, b, solver).value
        return lx.linear_solve(upper, z, solver).value

    return one(rhs) if rhs.ndim == 1 else jax.vmap(one, 1, 1)(rhs)


def _half_logdet(chol: Array) -> Array:
    return jnp.sum(jnp.log(jnp.diagonal(chol)))


def _t_logpdf(quad: Array, half_logdet: Array, dim: int, dof: Array) -> Array:
    """Log density of a multivariate t given the Mahalanobis `quad` and `log|S|^1/2`."""
    return (
        jax.scipy.special.gammaln((dof + dim) / 2)
        - jax.scipy.special.gammaln(dof / 2)
        - 0.5 * dim * jnp.log(dof * jnp.pi)
        - half_logdet
        - 0.5 * (dof + dim) * jnp.log1p(quad / dof)
    )


def _check_ab(a, b) -> tuple[Array, Array]:
    for value, name in ((a, "a"), (b, "b")):
        if isinstance(value, int | float):
            check_positive(value, name)
    a, b = jnp.asarray(a, float), jnp.asarray(b, float)
    a = eqx.error_if(a, a <= 0, "`a` must be positive.")
    b = eqx.error_if(b, b <= 0, "`b` must be positive.")
    return a, b


def student_t_cdf(
    x: Real[ArrayLike, "*shape"],
    dof: Real[ArrayLike, ""],
    loc: Real[ArrayLike, "*#shape"] = 0.0,
    scale: Real[ArrayLike, "*#shape"] = 1.0,
) -> Float[Array, "*shape"]:
    """The CDF of the univariate Student t with `dof` degrees of freedom.

    Computed from the regularised incomplete beta function:
    `P(T <= t) = 1 - I_{nu / (nu + t^2)}(nu / 2, 1 / 2) / 2` for `t >= 0`.

    **Arguments:**

    - `x`: where to evaluate it.
    - `dof`: the degrees of freedom `nu > 0`.
    - `loc`, `scale`: location and (positive) scale, broadcast against `x`.

    **Returns:** the CDF, the shape of `x`.
    """
    t = (jnp.asarray(x, float) - loc) / scale
    dof = jnp.asarray(dof, t.dtype)
    tail = 0.5 * jax.scipy.special.betainc(dof / 2, 0.5, dof / (dof + t**2))
    return jnp.where(t >= 0, 1 - tail, tail)


def _t_quantile(q: Array, dof: Array) -> Array:
    """The standard t quantile, by bisection on `student_t_cdf` (optimistix)."""

    def fn(t, args):
        return student_t_cdf(t, dof) - q

    # |t_q| <= 1e4 covers every level used for intervals at dof >= 1.
    solver = optx.Bisection(rtol=1e-6, atol=1e-6)
    sol = optx.root_find(
        fn,
        solver,
        jnp.zeros_like(q),
        options={"lower": -1e4, "upper": 1e4},
        max_steps=256,
        throw=False,
    )
    return sol.value


class StudentTProcess(eqx.Module):
    """The posterior of a Student-t process (a GP with an inverse-gamma scale).

    Made by `student_t_process`. The prior is `sigma^2 ~ InvGamma(a, b)`,
    `f | sigma^2 ~ GP(0, sigma^2 K)`; observations `y_train` are noiseless (add noise
    with `diag_reg`).
    """

    a: Float[Array, ""]
    b: Float[Array, ""]
    chol: Float[Array, "n n"]
    alpha: Float[Array, " n"]
    y_train: Float[Array, " n"]

    @property
    def num_train(self) -> int:
        return self.y_train.shape[0]

    @property
    def quad(self) -> Float[Array, ""]:
        """`y^T K^-1 y`."""
        return jnp.dot(self.y_train, self.alpha)

    @property
    def dof(self) -> Float[Array, ""]:
        """The predictive degrees of freedom `2a + n`."""
        return 2 * self.a + self.num_train

    def log_marginal_likelihood(self) -> Float[Array, ""]:
        """`log p(y)`: a multivariate t with `2a` dof, location 0, scale `(b/a) K`."""
        n = self.num_train
        dof = 2 * self.a
        ratio = self.b / self.a
        half_logdet = _half_logdet(self.chol) + 0.5 * n * jnp.log(ratio)
        return _t_logpdf(self.quad / ratio, half_logdet, n, dof)

    def predict(
        self,
        k_test_train: Float[Array, "m n"],
        k_test_test: Float[Array, "m m"],
    ) -> tuple[Float[Array, ""], Float[Array, " m"], Float[Array, "m m"]]:
        """The posterior predictive at `m` test points.

        **Arguments:**

        - `k_test_train`: the kernel between test and training points, `(m, n)`.
        - `k_test_test`: the kernel among the test points, `(m, m)`.

        **Returns:** `(dof, mean, scale)`: the multivariate t with `2a + n` degrees of
        freedom, mean `K_*^T K^-1 y` and scale matrix
        `((2b + y^T K^-1 y) / (2a + n)) (K_** - K_*^T K^-1 K_*)`.

        **Raises:** `ValueError` naming the argument if the shapes do not match.
        """
        self._check_test(k_test_train, k_test_test)
        mean = k_test_train @ self.alpha
        v = _cho_solve(self.chol, k_test_train.T)
        cov = k_test_test - k_test_train @ v
        cov = 0.5 * (cov + cov.T)
        factor = (2 * self.b + self.quad) / self.dof
        return self.dof, mean, factor * cov

    def log_predictive_density(
        self,
        y_test: Float[Array, " m"],
        k_test_train: Float[Array, "m n"],
        k_test_test: Float[Array, "m m"],
        *,
        diag_reg: float = 0.0,
    ) -> Float[Array, ""]:
        """The joint log density of `y_test` under the posterior predictive t.

        `diag_reg` is added to the diagonal of the predictive scale (observation
        noise on the test targets; needed at noiseless duplicates of training points).
        """
        _check_nonneg(diag_reg, "diag_reg")
        m = self._check_test(k_test_train, k_test_test)
        if y_test.shape != (m,):
            raise ValueError(f"`y_test` must have shape ({m},); got {y_test.shape}.")
        dof, mean, scale = self.predict(k_test_train, k_test_test)
        chol = _cholesky(scale, diag_reg, "the predictive scale")
        r = y_test - mean
        quad = jnp.dot(r, _cho_solve(chol, r))
        return _t_logpdf(quad, _half_logdet(chol), m, dof)

    def interval(
        self,
        k_test_train: Float[Array, "m n"],
        k_test_test_diag: Float[Array, " m"],
        *,
        level: float = 0.95,
    ) -> tuple[Float[Array, " m"], Float[Array, " m"]]:
        """Central marginal predictive intervals of probability `level`.

        **Arguments:**

        - `k_test_train`: the kernel between test and training points, `(m, n)`.
        - `k_test_test_diag`: the kernel's diagonal at the test points, `(m,)`.
        - `level`: the interval's probability, in `(0, 1)`.

        **Returns:** `(lower, upper)`, each of shape `(m,)`.
        """
        if not 0 < level < 1:
            raise ValueError(f"`level` must be in (0, 1); got {level!r}.")
        if k_test_test_diag.shape != k_test_train.shape[:1]:
            raise ValueError(
                "`k_test_test_diag` must have one entry per row of `k_test_train`; "
                f"got {k_test_test_diag.shape} and {k_test_train.shape}."
            )
        mean = k_test_train @ self.alpha
        v = _cho_solve(self.chol, k_test_train.T)
        var = k_test_test_diag - jnp.sum(k_test_train * v.T, axis=1)
        var = jnp.maximum(var, 0.0) * (2 * self.b + self.quad) / self.dof
        t = _t_quantile(jnp.asarray(0.5 + level / 2, mean.dtype), self.dof)
        half = t * jnp.sqrt(var)
        return mean - half, mean + half

    def _check_test(self, k_test_train: Array, k_test_test: Array) -> int:
        return _check_test_kernels(k_test_train, k_test_test, self.num_train)


def student_t_process(
    k_train_train: Float[Array, "n n"],
    y_train: Float[Array, " n"],
    *,
    a: Real[ArrayLike, ""],
    b: Real[ArrayLike, ""],
    diag_reg: float = 0.0,
) -> StudentTProcess:
    """Condition the Student-t process `sigma^2 ~ InvGamma(a, b)`,
    `f | sigma^2 ~ GP(0, sigma^2 K)` on noiseless observations.

    The Cholesky factor of `K + diag_reg I` and `K^-1 y` are computed once (lineax
    triangular solves); the returned module predicts, scores and gives intervals.

    **Arguments:**

    - `k_train_train`: the kernel (NNGP or NTK-GP covariance) on the training inputs,
        `(n, n)`, symmetric positive definite.
    - `y_train`: the training targets, `(n,)`.
    - `a`, `b`: shape and scale of the inverse-gamma prior on `sigma^2`, positive.
    - `diag_reg`: added to the kernel's diagonal (observation noise variance, or jitter).

    **Returns:** a `StudentTProcess`.

    **Raises:** `ValueError` naming the argument for non-positive (concrete) `a`, `b`,
    a negative `diag_reg` or mismatched shapes; `equinox.EquinoxRuntimeError` for
    traced non-positive `a`, `b` or a kernel that is not positive definite.
    """
    a, b = _check_ab(a, b)
    diag_reg = _check_nonneg(diag_reg, "diag_reg")
    _check_square(k_train_train, "k_train_train")
    n = k_train_train.shape[0]
    if y_train.shape != (n,):
        raise ValueError(
            f"`y_train` must have shape ({n},) to match `k_train_train`; got "
            f"{y_train.shape}."
        )
    chol = _cholesky(k_train_train, diag_reg, "k_train_train")
    alpha = _cho_solve(chol, y_train)
    return StudentTProcess(a=a, b=b, chol=chol, alpha=alpha, y_train=y_train)


def sample_scale_mixture(
    key: PRNGKeyArray,
    kernel_matrix: Float[Array, "n n"],
    *,
    a: Real[ArrayLike, ""],
    b: Real[ArrayLike, ""],
    num_samples: int,
    diag_reg: float = 0.0,
) -> Float[Array, "{num_samples} n"]:
    """Prior samples of the Student-t process: `sigma^2 ~ InvGamma(a, b)`, then
    `f ~ N(0, sigma^2 K)`.

    **Arguments:**

    - `key`: a PRNG key.
    - `kernel_matrix`: `K` at `n` points, `(n, n)`, positive definite (add `diag_reg`
        for a semi-definite one).
    - `a`, `b`: the inverse-gamma shape and scale, positive.
    - `num_samples`: the number of functions drawn.

    **Returns:** the samples, `(num_samples, n)`.

    **Raises:** as `student_t_process`, and `ValueError` if `num_samples` is not a
    positive integer.
    """
    a, b = _check_ab(a, b)
    return sample_mixture_prior(
        key,
        kernel_matrix,
        InverseGammaScale(a, b),
        num_samples=num_samples,
        diag_reg=diag_reg,
    )


class AbstractScalePrior(eqx.Module):
    """A prior on the last-layer variance `sigma^2` of a scale mixture of GPs.

    Subclasses sample it and give quadrature nodes `(variances, log_weights)` with
    `E[g(sigma^2)] ~ sum_j exp(log_weights_j) g(variances_j)`.
    """

    @abc.abstractmethod
    def sample(self, key: PRNGKeyArray, shape: tuple[int, ...]) -> Array:
        """Draws of `sigma^2` of the given shape."""

    @abc.abstractmethod
    def nodes(self) -> tuple[Float[Array, " q"], Float[Array, " q"]]:
        """Quadrature nodes: the variances and their log weights (summing to 1)."""


def _gauss_hermite(num: int) -> tuple[Array, Array]:
    """Nodes and weights of Gauss-Hermite quadrature for `N(0, 1)` (Golub-Welsch)."""
    k = jnp.arange(1, num, dtype=float)
    jacobi = jnp.diag(jnp.sqrt(k), 1) + jnp.diag(jnp.sqrt(k), -1)
    nodes, vectors = jnp.linalg.eigh(jacobi)
    return nodes, vectors[0] ** 2


class InverseGammaScale(AbstractScalePrior):
    """`sigma^2 ~ InvGamma(a, b)` (density `b^a / Gamma(a) s^-(a+1) exp(-b / s)`); the
    mixture is a Student-t process. Its nodes are a trapezoid rule in
    `log sigma^2` with `num_nodes` points (the integrand is smooth and decays
    doubly exponentially, so the rule converges fast); `student_t_process` is the
    exact version."""

    a: Float[Array, ""]
    b: Float[Array, ""]
    num_nodes: int = eqx.field(static=True)

    def __init__(
        self, a: Real[ArrayLike, ""], b: Real[ArrayLike, ""], *, num_nodes: int = 96
    ):
        check_positive_int(num_nodes, "num_nodes")
        self.a, self.b = _check_ab(a, b)
        self.num_nodes = num_nodes

    def sample(self, key: PRNGKeyArray, shape: tuple[int, ...]) -> Array:
        return self.b / jr.gamma(key, self.a, shape)

    def nodes(self) -> tuple[Float[Array, " q"], Float[Array, " q"]]:
        # sigma^-2 ~ Gamma(a, rate b): quadrature on log-precision over a wide grid,
        # weighted by the exact log density (trapezoid in log space).
        u = jnp.linspace(-14.0, 4.0, self.num_nodes) + jnp.log(self.a)
        logp = self.a * u - jnp.exp(u) - jax.scipy.special.gammaln(self.a)
        logw = logp - jax.nn.logsumexp(logp)
        return self.b * jnp.exp(-u), logw


class LogNormalScale(AbstractScalePrior):
    """`log sigma^2 ~ N(loc, scale^2)`; integrated by Gauss-Hermite quadrature with
    `num_nodes` points."""

    loc: Float[Array, ""]
    scale: Float[Array, ""]
    num_nodes: int = eqx.field(static=True)

    def __init__(
        self,
        loc: Real[ArrayLike, ""],
        scale: Real[ArrayLike, ""],
        *,
        num_nodes: int = 32,
    ):
        if isinstance(scale, int | float):
            check_positive(scale, "scale")
        check_positive_int(num_nodes, "num_nodes")
        self.loc = jnp.asarray(loc, float)
        self.scale = jnp.asarray(scale, float)
        self.num_nodes = num_nodes

    def sample(self, key: PRNGKeyArray, shape: tuple[int, ...]) -> Array:
        return jnp.exp(self.loc + self.scale * jr.normal(key, shape))

    def nodes(self) -> tuple[Float[Array, " q"], Float[Array, " q"]]:
        z, w = _gauss_hermite(self.num_nodes)
        return jnp.exp(self.loc + self.scale * z), jnp.log(w)


class DiscreteScale(AbstractScalePrior):
    """`sigma^2` takes the values `variances` with probabilities `probs`."""

    variances: Float[Array, " q"]
    probs: Float[Array, " q"]

    def __init__(
        self,
        variances: Sequence[float] | Real[ArrayLike, " q"],
        probs: Sequence[float] | Real[ArrayLike, " q"],
    ):
        variances = jnp.asarray(variances, float)
        probs = jnp.asarray(probs, float)
        if variances.ndim != 1 or probs.shape != variances.shape:
            raise ValueError(
                "`variances` and `probs` must be 1-D of the same length; got "
                f"{variances.shape} and {probs.shape}."
            )
        variances = eqx.error_if(
            variances, jnp.any(variances <= 0), "`variances` must be positive."
        )
        probs = eqx.error_if(probs, jnp.any(probs < 0), "`probs` must be >= 0.")
        self.variances = variances
        self.probs = probs / jnp.sum(probs)

    def sample(self, key: PRNGKeyArray, shape: tuple[int, ...]) -> Array:
        index = jr.categorical(key, jnp.log(self.probs), shape=shape)
        return self.variances[index]

    def nodes(self) -> tuple[Float[Array, " q"], Float[Array, " q"]]:
        return self.variances, jnp.log(self.probs)


def sample_mixture_prior(
    key: PRNGKeyArray,
    kernel_matrix: Float[Array, "n n"],
    prior: AbstractScalePrior,
    *,
    num_samples: int,
    diag_reg: float = 0.0,
) -> Float[Array, "{num_samples} n"]:
    """Prior samples of a scale mixture of GPs: `sigma^2 ~ prior`, `f ~ N(0, sigma^2 K)`.

    **Arguments:**

    - `key`: a PRNG key.
    - `kernel_matrix`: `K` at `n` points, `(n, n)`, positive definite (add `diag_reg`
        for a semi-definite one).
    - `prior`: the prior on `sigma^2`, an `AbstractScalePrior`.
    - `num_samples`: the number of functions drawn.

    **Returns:** the samples, `(num_samples, n)`.

    **Raises:** `ValueError` naming the argument for a bad `num_samples`, `diag_reg`
    or a non-square kernel; `equinox.EquinoxRuntimeError` for a kernel that is not
    positive definite.
    """
    check_positive_int(num_samples, "num_samples")
    diag_reg = _check_nonneg(diag_reg, "diag_reg")
    _check_square(kernel_matrix, "kernel_matrix")
    chol = _cholesky(kernel_matrix, diag_reg, "kernel_matrix")
    skey, zkey = jr.split(key)
    variances = prior.sample(skey, (num_samples,))
    z = jr.normal(zkey, (num_samples, kernel_matrix.shape[0]), chol.dtype)
    return jnp.sqrt(variances)[:, None] * (z @ chol.T)


class ScaleMixtureProcess(eqx.Module):
    """The posterior of a scale mixture of GPs under a general prior on `sigma^2`.

    Made by `scale_mixture_process`. Given `y`, the posterior of `sigma^2` has weights
    `w_j p(y | sigma_j^2)` on the prior's quadrature nodes; every component shares the
    predictive mean `K_*^T K^-1 y` and covariance shape `K_** - K_*^T K^-1 K_*`.
    """

    chol: Float[Array, "n n"]
    alpha: Float[Array, " n"]
    y_train: Float[Array, " n"]
    variances: Float[Array, " q"]
    log_prior_weights: Float[Array, " q"]

    @property
    def num_train(self) -> int:
        return self.alpha.shape[0]

    def _component_loglik(self) -> Float[Array, " q"]:
        quad = jnp.dot(self.y_train, self.alpha)
        return _gauss_loglik(
            quad, _half_logdet(self.chol), self.num_train, self.variances
        )

    def log_marginal_likelihood(self) -> Float[Array, ""]:
        """`log p(y) = log E_{sigma^2}[N(y; 0, sigma^2 K)]`, by quadrature."""
        return jax.nn.logsumexp(self.log_prior_weights + self._component_loglik())

    def posterior_log_weights(self) -> Float[Array, " q"]:
        """The log posterior weights of the nodes `variances` given `y`."""
        logits = self.log_prior_weights + self._component_loglik()
        return logits - jax.nn.logsumexp(logits)

    def predict(
        self,
        k_test_train: Float[Array, "m n"],
        k_test_test: Float[Array, "m m"],
    ) -> tuple[Float[Array, " m"], Float[Array, "m m"]]:
        """The predictive mean and covariance `E[sigma^2 | y] (K_** - K_*^T K^-1 K_*)`
        at `m` test points (the predictive is a mixture of Gaussians with these
        moments, not a Gaussian)."""
        base = self._base(k_test_train, k_test_test)
        mean = k_test_train @ self.alpha
        weight = jnp.sum(jnp.exp(self.posterior_log_weights()) * self.variances)
        return mean, weight * base

    def log_predictive_density(
        self,
        y_test: Float[Array, " m"],
        k_test_train: Float[Array, "m n"],
        k_test_test: Float[Array, "m m"],
        *,
        diag_reg: float = 0.0,
    ) -> Float[Array, ""]:
        """The joint log density of `y_test` under the predictive mixture; `diag_reg`
        is added to the diagonal of `K_** - K_*^T K^-1 K_*`."""
        _check_nonneg(diag_reg, "diag_reg")
        base = self._base(k_test_train, k_test_test)
        m = base.shape[0]
        if y_test.shape != (m,):
            raise ValueError(f"`y_test` must have shape ({m},); got {y_test.shape}.")
        chol = _cholesky(base, diag_reg, "the predictive covariance")
        r = y_test - k_test_train @ self.alpha
        quad = jnp.dot(r, _cho_solve(chol, r))
        logs = _gauss_loglik(quad, _half_logdet(chol), m, self.variances)
        return jax.nn.logsumexp(self.posterior_log_weights() + logs)

    def _base(self, k_test_train: Array, k_test_test: Array) -> Array:
        _check_test_kernels(k_test_train, k_test_test, self.num_train)
        cov = k_test_test - k_test_train @ _cho_solve(self.chol, k_test_train.T)
        return 0.5 * (cov + cov.T)


def _check_test_kernels(k_test_train: Array, k_test_test: Array, n: int) -> int:
    """The number of test points, after checking the test kernels' shapes against
    `n` training points."""
    if k_test_train.ndim != 2 or k_test_train.shape[1] != n:
        raise ValueError(
            f"`k_test_train` must have shape (m, {n}); got {k_test_train.shape}."
        )
    m = k_test_train.shape[0]
    if k_test_test.shape != (m, m):
        raise ValueError(
            f"`k_test_test` must have shape ({m}, {m}); got {k_test_test.shape}."
        )
    return m


def _gauss_loglik(quad: Array, half_logdet: Array, dim: int, variances: Array) -> Array:
    """`log N(y; 0, s K)` for each variance `s`, from `y^T K^-1 y` and `log|K|^1/2`."""
    return (
        -0.5 * quad / variances
        - 0.5 * dim * jnp.log(2 * jnp.pi * variances)
        - half_logdet
    )


def scale_mixture_process(
    k_train_train: Float[Array, "n n"],
    y_train: Float[Array, " n"],
    prior: AbstractScalePrior,
    *,
    diag_reg: float = 0.0,
) -> ScaleMixtureProcess:
    """Condition a scale mixture of GPs, `sigma^2 ~ prior`,
    `f | sigma^2 ~ GP(0, sigma^2 K)`, on noiseless observations.

    The integral over `sigma^2` uses the prior's quadrature nodes (`prior.nodes()`):
    exact for `DiscreteScale`, Gauss-Hermite for `LogNormalScale`, a trapezoid rule
    in `log sigma^2` for `InverseGammaScale` (whose exact form is
    `student_t_process`).

    **Arguments:**

    - `k_train_train`: the kernel on the training inputs, `(n, n)`, positive definite.
    - `y_train`: the training targets, `(n,)`.
    - `prior`: the prior on `sigma^2`, an `AbstractScalePrior`.
    - `diag_reg`: added to the kernel's diagonal.

    **Returns:** a `ScaleMixtureProcess`.

    **Raises:** `ValueError` naming the argument for mismatched shapes or a negative
    `diag_reg`; `equinox.EquinoxRuntimeError` for a kernel that is not positive
    definite.
    """
    diag_reg = _check_nonneg(diag_reg, "diag_reg")
    _check_square(k_train_train, "k_train_train")
    n = k_train_train.shape[0]
    if y_train.shape != (n,):
        raise ValueError(
            f"`y_train` must have shape ({n},) to match `k_train_train`; got "
            f"{y_train.shape}."
        )
    chol = _cholesky(k_train_train, diag_reg, "k_train_train")
    variances, log_weights = prior.nodes()
    return ScaleMixtureProcess(
        chol=chol,
        alpha=_cho_solve(chol, y_train),
        y_train=y_train,
        variances=variances,
        log_prior_weights=log_weights,
    )
