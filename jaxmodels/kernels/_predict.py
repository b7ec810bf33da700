"""Predictions of kernel regimes: GP posteriors and linearised gradient flow on MSE.

After "Wide Neural Networks of Any Depth Evolve as Linear Models Under Gradient
Descent" (Lee, Xiao, Schoenholz, Bahri, Novak, Sohl-Dickstein and Pennington, NeurIPS
2019) and "Neural Tangent Kernel: Convergence and Generalization in Neural Networks"
(Jacot, Gabriel and Hongler, NeurIPS 2018). A network linearised around its
initialisation and trained by gradient flow on `0.5 * mean((f - y)^2)` (the mean over
all `n = y_train.size` entries, neural-tangents' convention) with learning rate `lr`
evolves in function space as `df/dt = -(lr / n) Theta (f - y)`, so that
`f(t) - y = exp(-lr t Theta / n) (f_0 - y)` on the training set and the test outputs
follow through `Theta_test_train Theta^{-1}`. Averaged over random initialisations
of infinitely wide networks, the outputs are Gaussian, with the mean and covariance
of Lee et al. (2019), equation (16); the NNGP regime is the Bayesian posterior.

Names, arguments and kernel layouts follow `neural_tangents.predict`: kernels have
the shape `(N1, N2, X, X, Y, Y, ...)` over the untraced output axes, and along
`trace_axes` the kernel is the identity times the given one.
"""

import collections
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, ArrayLike, Float, Shaped


class Gaussian(NamedTuple):
    """A `(mean, covariance)` pair: the mean has the outputs' shape, the covariance
    the kernel's."""

    mean: Array
    covariance: Array


# Shapes and flattening -------------------------------------------------------------


def _trace_axes(trace_axes: Any, y: Array) -> tuple[int, ...]:
    try:
        axes = tuple(int(a) for a in trace_axes)
    except (TypeError, ValueError):
        raise ValueError(
            f"`trace_axes` must be a tuple of integers; got {trace_axes!r}."
        ) from None
    if not all(-y.ndim <= a < y.ndim for a in axes):
        raise ValueError(
            f"`trace_axes` {trace_axes!r} is out of range for `y_train` of shape "
            f"{y.shape}."
        )
    axes = tuple(sorted({a % y.ndim for a in axes}))
    if 0 in axes:
        raise ValueError("`trace_axes` cannot contain the batch axis 0 of `y_train`.")
    return axes


class _Layout(NamedTuple):
    """How outputs `(N, ...)` flatten to `(N * m, c)`: `m` untraced, `c` traced."""

    trace: tuple[int, ...]
    traced_shape: tuple[int, ...]

    def flatten(self, y: Array) -> Array:
        last = tuple(range(y.ndim - len(self.trace), y.ndim))
        return jnp.moveaxis(y, self.trace, last).reshape(-1, _size(self.traced_shape))

    def unflatten(
        self, y: Array, lead: tuple[int, ...], rows: tuple[int, ...]
    ) -> Array:
        """`(*lead, n, c)` to `(*lead, *outputs)`, the traced axes put back."""
        y = y.reshape(lead + rows + self.traced_shape)
        last = tuple(range(y.ndim - len(self.trace), y.ndim))
        return jnp.moveaxis(y, last, tuple(len(lead) + a for a in self.trace))


def _size(shape: tuple[int, ...]) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


def _to_2d(k: Array) -> Array:
    """`(N1, N2, X, X, ...)` to the matrix `(N1 * X * ..., N2 * X * ...)`."""
    k = jnp.transpose(k, tuple(range(0, k.ndim, 2)) + tuple(range(1, k.ndim, 2)))
    half = k.ndim // 2
    return k.reshape(_size(k.shape[:half]), _size(k.shape[half:]))


def _from_2d(k: Array, rows: tuple[int, ...], lead: tuple[int, ...] = ()) -> Array:
    """`(*lead, n, n)` to `(*lead, N, N, X, X, ...)` for `rows = (N, X, ...)`."""
    k = k.reshape(lead + rows + rows)
    r, s = len(rows), len(lead)
    zipped = [s + i + j * r for i in range(r) for j in range(2)]
    return jnp.transpose(k, tuple(range(s)) + tuple(zipped))


def _regularise(k: Array, diag_reg: Any, absolute: bool) -> Array:
    n = k.shape[0]
    scale = diag_reg if absolute else diag_reg * jnp.trace(k) / n
    return k + scale * jnp.eye(n, dtype=k.dtype)


def _check_kernel(k: Array, rows: tuple[int, ...], name: str) -> None:
    if k.ndim != 2 * len(rows) or k.shape[::2] != rows or k.shape[1::2] != rows:
        raise ValueError(
            f"`{name}` must have shape {_from_2d_shape(rows)} (pairs of the untraced "
            f"axes of `y_train`, each zipped); got {k.shape}."
        )


def _from_2d_shape(rows: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d for r in rows for d in (r, r))


# Linear algebra --------------------------------------------------------------------


_NOT_PD = (
    "`k_train_train` (plus `diag_reg`) is not positive definite, or not finite, so "
    "the solve failed; increase `diag_reg` or check the kernel."
)


@eqx.filter_jit
def _cholesky_solve(k: Array, b: Array, diag_reg: Any, absolute: bool) -> Array:
    """`(k + reg I)^{-1} b` by Cholesky, for `b` of shape `(n, c)`."""
    operator = lx.MatrixLinearOperator(
        _regularise(k, diag_reg, absolute),
        (lx.symmetric_tag, lx.positive_semidefinite_tag),
    )
    solver = lx.Cholesky()
    state = solver.init(operator, {})

    def column(v):
        return lx.linear_solve(operator, v, solver, state=state, throw=False).value

    x = jax.vmap(column, in_axes=1, out_axes=1)(b)
    return eqx.error_if(x, ~jnp.all(jnp.isfinite(x)), _NOT_PD)


@eqx.filter_jit
def _eigh(k: Array, diag_reg: Any, absolute: bool) -> tuple[Array, Array]:
    # lineax offers no eigendecomposition; functions of the kernel at finite times
    # (matrix exponentials) use `jnp.linalg.eigh` directly.
    evals, evecs = jnp.linalg.eigh(_regularise(k, diag_reg, absolute))
    tol = jnp.sqrt(jnp.finfo(k.dtype).eps) * jnp.max(jnp.abs(evals))
    bad = ~jnp.all(jnp.isfinite(evals)) | (jnp.min(evals) < -tol)
    evals = eqx.error_if(
        evals,
        bad,
        "`k_train_train` (plus `diag_reg`) has a negative eigenvalue or is not "
        "finite; a kernel must be positive semidefinite (increase `diag_reg`).",
    )
    # Round-off can leave eigenvalues slightly below zero: the flow does not move there.
    return jnp.maximum(evals, 0), evecs


def _decay(evals: Array, s: Array) -> Array:
    """`exp(-lambda s) - 1`, shape `(times, n)`."""
    return jnp.expm1(-evals[None] * s)


def _decay_over_lambda(evals: Array, s: Array) -> Array:
    """`(exp(-lambda s) - 1) / lambda`, with its limit `-s` at `lambda = 0`."""
    positive = evals[None] > 0
    safe = jnp.where(positive, evals[None], 1)
    return jnp.where(positive, jnp.expm1(-evals[None] * s) / safe, -s)


def _times(t: Any, learning_rate: Any, size: int) -> tuple[Array, tuple[int, ...]]:
    t = jnp.asarray(t)
    return (t.reshape(-1, 1) * learning_rate / size), t.shape


def _check_lr(learning_rate: Any) -> None:
    if isinstance(learning_rate, int | float) and not learning_rate > 0:
        raise ValueError(f"`learning_rate` must be positive; got {learning_rate!r}.")


def _check_diag_reg(diag_reg: Any) -> None:
    if isinstance(diag_reg, int | float) and not diag_reg >= 0:
        raise ValueError(f"`diag_reg` must be non-negative; got {diag_reg!r}.")


class _Lazy:
    """A value computed on first use and kept when concrete (a value computed under
    a trace is recomputed at each call, so that no tracer outlives its trace)."""

    def __init__(self, make: Callable[[], Any]):
        self._make, self._value = make, None

    def __call__(self) -> Any:
        if self._value is not None:
            return self._value
        value = self._make()
        if not any(isinstance(a, jax.core.Tracer) for a in jax.tree.leaves(value)):
            self._value = value
        return value


# gradient_descent_mse ---------------------------------------------------------------


def gradient_descent_mse(
    k_train_train: Float[ArrayLike, "n n ..."],
    y_train: Float[ArrayLike, "n ..."],
    learning_rate: float | Float[ArrayLike, ""] = 1.0,
    diag_reg: float | Float[ArrayLike, ""] = 0.0,
    diag_reg_absolute_scale: bool = False,
    trace_axes: tuple[int, ...] = (-1,),
) -> Callable[..., Any]:
    """The outputs of a linearised network under gradient flow on MSE, at any time.

    Closed form of `df/dt = -(lr / n) Theta (f - y)` with `n = y_train.size`: on the
    training set `f(t) = y + exp(-lr t Theta / n) (f_0 - y)`, on a test set
    `f(t) = f_0 + Theta_* Theta^{-1} (exp(-lr t Theta / n) - I) (f_0 - y)`. Finite
    times use an eigendecomposition of `Theta`, `t = None` (infinity) a Cholesky
    solve; both are computed once, on first use.

    **Arguments:**

    - `k_train_train`: the kernel on the training set, `(N, N, ...)` (neural-tangents'
        layout, without the `trace_axes` pairs).
    - `y_train`: the targets, `(N, ...)`.
    - `learning_rate`: the learning rate; time is in units of steps (`lr * t`).
    - `diag_reg`: a ridge `diag_reg * I` added to the kernel, scaled by the mean of
        its diagonal unless `diag_reg_absolute_scale`.
    - `diag_reg_absolute_scale`: whether `diag_reg` is in absolute units.
    - `trace_axes`: output axes along which the kernel is the identity.

    **Returns:** `predict_fn(t=None, fx_train_0=0.0, fx_test_0=None,
    k_test_train=None)`, returning `fx_train_t`, `fx_test_t` or both (a tuple, when
    both initial outputs are given), with leading axes `t.shape`; `t = None` is
    infinity.

    **Raises:** `ValueError` naming the argument for mismatched shapes or a
    non-positive `learning_rate`; `equinox.EquinoxRuntimeError` naming
    `k_train_train` if the kernel is not positive (semi)definite.
    """
    _check_lr(learning_rate)
    _check_diag_reg(diag_reg)
    k_train_train, y_train = jnp.asarray(k_train_train), jnp.asarray(y_train)
    trace = _trace_axes(trace_axes, y_train)
    layout = _Layout(trace, tuple(y_train.shape[a] for a in trace))
    rows = tuple(d for i, d in enumerate(y_train.shape) if i not in trace)
    _check_kernel(k_train_train, rows, "k_train_train")
    k2d = _to_2d(k_train_train)
    y2d = layout.flatten(y_train)
    eig = _Lazy(lambda: _eigh(k2d, diag_reg, diag_reg_absolute_scale))

    def predict_fn(t=None, fx_train_0=0.0, fx_test_0=None, k_test_train=None):
        if fx_train_0 is None and fx_test_0 is None:
            raise ValueError(
                "Both `fx_train_0` and `fx_test_0` are None: nothing to predict."
            )
        if fx_test_0 is not None and k_test_train is None:
            raise ValueError("Test predictions (`fx_test_0`) need `k_test_train`.")
        f0 = 0.0 if fx_train_0 is None else fx_train_0
        f0 = layout.flatten(jnp.broadcast_to(jnp.asarray(f0), y_train.shape))
        residual = f0 - y2d
        out = []
        if k_test_train is not None:
            k_test_train = jnp.asarray(k_test_train)
            test_rows = k_test_train.shape[::2]
            if k_test_train.shape[1::2] != rows:
                raise ValueError(
                    "`k_test_train` must pair test outputs with the training set, "
                    f"with second axes {rows}; got shape {k_test_train.shape}."
                )
            ktd = _to_2d(k_test_train)
        if t is None:
            if fx_train_0 is not None:
                out.append(y_train.astype(k2d.dtype))
            if fx_test_0 is not None:
                delta = ktd @ _cholesky_solve(
                    k2d, -residual, diag_reg, diag_reg_absolute_scale
                )
                out.append(_test_out(fx_test_0, delta, (), test_rows, layout))
        else:
            evals, evecs = eig()
            s, t_shape = _times(t, learning_rate, y_train.size)
            coef = evecs.T @ residual
            if fx_train_0 is not None:
                delta = jnp.einsum("ji,ti,ic->tjc", evecs, _decay(evals, s), coef)
                fx0 = layout.unflatten(f0, (), rows)
                fx = layout.unflatten(delta, t_shape, rows) + jnp.expand_dims(
                    fx0, tuple(range(len(t_shape)))
                )
                out.append(fx)
            if fx_test_0 is not None:
                delta = jnp.einsum(
                    "li,ti,ic->tlc", ktd @ evecs, _decay_over_lambda(evals, s), coef
                )
                out.append(_test_out(fx_test_0, delta, t_shape, test_rows, layout))
        return out[0] if len(out) == 1 else tuple(out)

    return predict_fn


def _test_out(fx_test_0, delta, lead, test_rows, layout):
    delta = layout.unflatten(delta, lead, test_rows)
    fx0 = jnp.broadcast_to(jnp.asarray(fx_test_0), delta.shape[len(lead) :])
    return jnp.expand_dims(fx0, tuple(range(len(lead)))) + delta


# gp_inference ----------------------------------------------------------------------


def _attr(k: Any, g: str, name: str) -> Array:
    if isinstance(k, jax.Array | float | int) or hasattr(k, "__array__"):
        return jnp.asarray(k)
    value = getattr(k, g, None)
    if value is None:
        raise ValueError(f"`{name}` has no `{g}` kernel, which `get` needs.")
    return jnp.asarray(value)


def _gets(get: Any, allowed: tuple[str, ...]) -> tuple[str, ...]:
    names = ("nngp", "ntk") if get is None else get
    names = (names,) if isinstance(names, str) else tuple(names)
    if not names or any(g not in allowed for g in names):
        raise ValueError(
            f"`get` must be one of {allowed}, a tuple or None; got {get!r}."
        )
    return names


def _pack(get: Any, names: tuple[str, ...], values: list) -> Any:
    if isinstance(get, str):
        return values[0]
    return collections.namedtuple("Gaussians", names)(*values)


def gp_inference(
    k_train_train: Any,
    y_train: Float[ArrayLike, "n ..."],
    diag_reg: float | Float[ArrayLike, ""] = 0.0,
    diag_reg_absolute_scale: bool = False,
    trace_axes: tuple[int, ...] = (-1,),
) -> Callable[..., Any]:
    """The Gaussian posterior of the NNGP, NTK and NTK-GP regimes.

    `"nngp"` and `"ntkgp"`: the posterior of a GP with the NNGP (resp. NTK) kernel,
    mean `K_* K^{-1} y`, covariance `K_** - K_* K^{-1} K_*^T`. `"ntk"`: the
    distribution of infinitely wide networks trained to convergence by gradient
    flow, mean `Theta_* Theta^{-1} y` and covariance (Lee et al., 2019)
    `K_** + Theta_* Theta^{-1} K Theta^{-1} Theta_*^T
    - (Theta_* Theta^{-1} K_*^T + transpose)`, with `K` the NNGP kernel.

    **Arguments:**

    - `k_train_train`: the train kernel: an array, or a namedtuple (or object) with
        `nngp` and/or `ntk` attributes (both for the `"ntk"` covariance).
    - `y_train`: the targets, `(N, ...)`.
    - `diag_reg`, `diag_reg_absolute_scale`, `trace_axes`: as
        `gradient_descent_mse`.

    **Returns:** `predict_fn(get=None, k_test_train=None, k_test_test=None)`: for
    `get` a string, the mean (or a `Gaussian` when `k_test_test` is given); for a
    tuple (`None` means `("nngp", "ntk")`) a namedtuple of them. Without
    `k_test_train` the training set's `N(y_train, 0)` is returned.

    **Raises:** `ValueError` naming the argument for a bad `get` or a missing
    kernel; `equinox.EquinoxRuntimeError` naming `k_train_train` if a solve fails.
    """
    _check_diag_reg(diag_reg)
    y_train = jnp.asarray(y_train)
    trace = _trace_axes(trace_axes, y_train)
    layout = _Layout(trace, tuple(y_train.shape[a] for a in trace))
    rows = tuple(d for i, d in enumerate(y_train.shape) if i not in trace)
    y2d = layout.flatten(y_train)

    def train(g):
        k = _attr(k_train_train, g, "k_train_train")
        _check_kernel(k, rows, "k_train_train")
        return _to_2d(k)

    def solve(g, b):
        return _cholesky_solve(train(g), b, diag_reg, diag_reg_absolute_scale)

    def predict_fn(get=None, k_test_train=None, k_test_test=None):
        names = _gets(get, ("nngp", "ntk", "ntkgp"))
        values = []
        for g in names:
            k = "ntk" if g == "ntkgp" else g
            kdd = train(k)
            if k_test_train is None:
                mean = y_train.astype(kdd.dtype)
                cov = jnp.zeros_like(_attr(k_train_train, k, "k_train_train"))
                values.append(mean if k_test_test is None else Gaussian(mean, cov))
                continue
            ktd_full = _attr(k_test_train, k, "k_test_train")
            test_rows = ktd_full.shape[::2]
            ktd = _to_2d(ktd_full)
            mean = layout.unflatten(ktd @ solve(k, y2d), (), test_rows)
            if k_test_test is None:
                values.append(mean)
                continue
            init = "ntk" if g == "ntkgp" else "nngp"
            ktt = _to_2d(_attr(k_test_test, init, "k_test_test"))
            ktd_init = _to_2d(_attr(k_test_train, init, "k_test_train"))
            if g in ("nngp", "ntkgp"):
                cov = ktt - ktd @ solve(k, ktd_init.T)
            else:
                nngp = train("nngp")
                term_1 = solve("ntk", ktd.T)
                term_2 = ktd @ solve("ntk", ktd_init.T)
                cov = ktt + term_1.T @ nngp @ term_1 - term_2 - term_2.T
            values.append(Gaussian(mean, _from_2d(cov, test_rows)))
        return _pack(get, names, values)

    return predict_fn


# gradient_descent_mse_ensemble -------------------------------------------------------


def gradient_descent_mse_ensemble(
    kernel_fn: Callable[..., Any],
    x_train: Shaped[ArrayLike, "n ..."],
    y_train: Float[ArrayLike, "n ..."],
    learning_rate: float | Float[ArrayLike, ""] = 1.0,
    diag_reg: float | Float[ArrayLike, ""] = 0.0,
    diag_reg_absolute_scale: bool = False,
    trace_axes: tuple[int, ...] = (-1,),
    **kernel_fn_train_train_kwargs: Any,
) -> Callable[..., Any]:
    """Mean and covariance over initialisations of infinitely wide networks trained
    by gradient flow on MSE, at any time.

    In the `"ntk"` regime all layers train: the mean is
    `Theta_* Theta^{-1} (I - exp(-lr t Theta / n)) y` and the covariance Lee et al.
    (2019)'s equation (16). In the `"nngp"` regime only the readout trains and the
    outputs at `t = infinity` are the NNGP posterior.

    **Arguments:**

    - `kernel_fn`: `kernel_fn(x1, x2, get, **kwargs)` returning the kernel array
        for `get` `"nngp"` or `"ntk"` (a neural-tangents-style kernel function).
    - `x_train`, `y_train`: the training set.
    - `learning_rate`, `diag_reg`, `diag_reg_absolute_scale`, `trace_axes`: as
        `gradient_descent_mse`.
    - `**kernel_fn_train_train_kwargs`: passed to every call of `kernel_fn`.

    **Returns:** `predict_fn(t=None, x_test=None, get=None, compute_cov=False,
    **kernel_fn_test_test_kwargs)`: for `get` a string, the mean (or a `Gaussian`
    with `compute_cov`) on `x_test` (on the training set when `None`), with leading
    axes `t.shape`; for a tuple (`None` means both) a namedtuple of them.

    **Raises:** `ValueError` naming the argument for a bad `get`, mismatched shapes
    or a non-positive `learning_rate`; `equinox.EquinoxRuntimeError` naming
    `k_train_train` if the train kernel is not positive (semi)definite.
    """
    _check_lr(learning_rate)
    _check_diag_reg(diag_reg)
    y_train = jnp.asarray(y_train)
    trace = _trace_axes(trace_axes, y_train)
    layout = _Layout(trace, tuple(y_train.shape[a] for a in trace))
    rows = tuple(d for i, d in enumerate(y_train.shape) if i not in trace)
    y2d = layout.flatten(y_train)
    train_kwargs = kernel_fn_train_train_kwargs
    cache: dict = {}

    def k_dd(g):
        if g not in cache:
            k = jnp.asarray(kernel_fn(x_train, None, g, **train_kwargs))
            _check_kernel(k, rows, "kernel_fn(x_train, None, get)")
            cache[g] = k
        return cache[g]

    eig = {
        g: _Lazy(lambda g=g: _eigh(_to_2d(k_dd(g)), diag_reg, diag_reg_absolute_scale))
        for g in ("nngp", "ntk")
    }

    def predict_fn(t=None, x_test=None, get=None, compute_cov=False, **test_kwargs):
        names = _gets(get, ("nngp", "ntk"))
        needed = set(names) | ({"nngp"} if compute_cov else set())
        kwargs = {**train_kwargs, **test_kwargs}
        kdd = collections.namedtuple("Kernel", sorted(needed))(
            *(k_dd(g) for g in sorted(needed))
        )
        if x_test is None:
            ktd, ktt = None, (True if compute_cov else None)
        else:
            ktd = collections.namedtuple("Kernel", sorted(needed))(
                *(
                    jnp.asarray(kernel_fn(x_test, x_train, g, **kwargs))
                    for g in sorted(needed)
                )
            )
            ktt = (
                jnp.asarray(kernel_fn(x_test, None, "nngp", **kwargs))
                if compute_cov
                else None
            )
        if t is None:
            posterior = gp_inference(
                kdd, y_train, diag_reg, diag_reg_absolute_scale, trace_axes
            )
            return posterior(names if not isinstance(get, str) else get, ktd, ktt)
        s, t_shape = _times(t, learning_rate, y_train.size)
        values = []
        for g in names:
            evals, evecs = eig[g]()
            coef = evecs.T @ y2d
            test_rows = rows if ktd is None else getattr(ktd, g).shape[::2]
            if ktd is None:
                mean = jnp.einsum("ji,ti,ic->tjc", evecs, -_decay(evals, s), coef)
            else:
                ktd_g = _to_2d(getattr(ktd, g)) @ evecs
                mean = jnp.einsum(
                    "li,ti,ic->tlc", ktd_g, -_decay_over_lambda(evals, s), coef
                )
            mean = layout.unflatten(mean, t_shape, test_rows)
            if not compute_cov:
                values.append(mean)
                continue
            nngp_dd = _to_2d(kdd.nngp)
            if ktd is None:
                if g == "nngp":
                    cov = jnp.einsum(
                        "ji,ti,ki->tjk",
                        evecs,
                        evals[None] * jnp.exp(-2 * evals[None] * s),
                        evecs,
                    )
                else:
                    decay = jnp.einsum(
                        "ji,ti,ki->tjk", evecs, jnp.exp(-evals[None] * s), evecs
                    )
                    cov = jnp.einsum("tjk,kl,tml->tjm", decay, nngp_dd, decay)
            else:
                ktt2d = _to_2d(ktt)
                kv = _to_2d(getattr(ktd, g)) @ evecs
                if g == "nngp":
                    cov = ktt2d[None] - jnp.einsum(
                        "li,ti,mi->tlm", kv, -_decay_over_lambda(evals, 2 * s), kv
                    )
                else:
                    # Theta^{-1} (I - exp(-Theta s)) Theta_*^T, then equation (16).
                    term_1 = jnp.einsum(
                        "ji,ti,li->tjl", evecs, -_decay_over_lambda(evals, s), kv
                    )
                    nngp_td = _to_2d(ktd.nngp)
                    term_2 = jnp.einsum("mj,tjl->tml", nngp_td, term_1)
                    cov = (
                        ktt2d[None]
                        + jnp.einsum("tjm,jk,tkl->tml", term_1, nngp_dd, term_1)
                        - term_2
                        - jnp.swapaxes(term_2, 1, 2)
                    )
            values.append(Gaussian(mean, _from_2d(cov, test_rows, t_shape)))
        return _pack(get, names, values)

    return predict_fn
