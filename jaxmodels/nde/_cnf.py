import math
from collections.abc import Callable

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray, PyTree, Real

from .._core import check_positive_int
from ._vector_field import AbstractVectorField, check_dt0


_TRACES = ("exact", "hutchinson")
_PROBES = ("rademacher", "gaussian")


class _AugmentedField(eqx.Module):
    """`(dz/dt, da/dt) = (f(t, z), tr(df/dz))`, exactly or by Hutchinson's estimator.

    A module rather than a closure, so that the parameters of `vector_field` are
    leaves of the diffrax term and every adjoint (backsolve included) sees them.
    """

    vector_field: Callable[..., Array]
    trace: str = eqx.field(static=True)

    def __call__(
        self,
        t: Real[Array, ""],
        y: tuple[Float[Array, " data"], Float[Array, ""]],
        args: Float[Array, " data"] | None,
    ) -> tuple[Float[Array, " data"], Float[Array, ""]]:
        z, _ = y

        def f(z):
            return self.vector_field(t, z, None)

        def f_aux(z):
            dz = f(z)
            return dz, dz

        if self.trace == "exact":
            jac, dz = jax.jacfwd(f_aux, has_aux=True)(z)
            tr = jnp.trace(jac)
        else:
            assert args is not None
            # One Jacobian-vector product: eps^T (df/dz) eps has expectation
            # tr(df/dz) for any probe with identity covariance.
            dz, jvp = jax.jvp(f, (z,), (args,))
            tr = jnp.dot(args, jvp)
        return dz, tr.astype(z.dtype)


class CNF(eqx.Module):
    """A continuous normalising flow: a density transported by a neural ODE.

    From Chen et al., "Neural Ordinary Differential Equations" (2018), with the
    free-form estimator of Grathwohl et al., "FFJORD: Free-form Continuous Dynamics
    for Scalable Reversible Generative Models" (2019). A base sample `z0 ~ N(0, I)` at
    time `0` flows along `dz/dt = f(t, z)` to a data point `x = z(t1)`. By the
    instantaneous change of variables `d log p(z(t))/dt = -tr(df/dz)`, so

    `log p(x) = log N(z(0); 0, I) - ∫_0^t1 tr(df/dz)(t, z(t)) dt`,

    computed by one backward solve of the augmented state `(z, a)` from `t1` to `0`.
    The trace is exact (`jax.jacfwd`, `data_size` forward passes: for small
    dimension) or Hutchinson's estimate `eps^T (df/dz) eps` (one `jax.jvp`) with one
    probe `eps` held fixed for the whole solve, as in FFJORD; the estimate of the
    log-density is then unbiased.
    """

    vector_field: Callable[..., Array]
    solver: dfx.AbstractSolver
    stepsize_controller: dfx.AbstractStepSizeController
    adjoint: dfx.AbstractAdjoint
    # A solver option, not a parameter: a Python float, so no gradient reaches it.
    t1: float
    dt0: float | None
    max_steps: int = eqx.field(static=True)
    trace: str = eqx.field(static=True)
    probe: str = eqx.field(static=True)
    data_size: int | None = eqx.field(static=True)

    def __init__(
        self,
        vector_field: Callable[..., Array],
        *,
        solver: dfx.AbstractSolver = dfx.Tsit5(),
        stepsize_controller: dfx.AbstractStepSizeController = dfx.PIDController(
            rtol=1e-5, atol=1e-5
        ),
        adjoint: dfx.AbstractAdjoint = dfx.RecursiveCheckpointAdjoint(),
        t1: float = 1.0,
        dt0: float | None = None,
        max_steps: int = 4096,
        trace: str = "exact",
        probe: str = "rademacher",
        data_size: int | None = None,
    ):
        """**Arguments:**

        - `vector_field`: an Equinox module (or other callable) `f(t, z, args)`
            returning `dz/dt` of the same shape as `z`, such as
            `MLPVectorField(..., time_dependent=True)`. It is called with
            `args=None`.
        - `solver`: a diffrax ODE solver.
        - `stepsize_controller`: a diffrax step-size controller. Adaptive ones need
            a solver with an error estimate; the default tolerances are tight
            because the log-density inherits the solver's error.
        - `adjoint`: how to differentiate through the solves, a diffrax adjoint.
        - `t1`: the time at which the flow reaches the data; positive.
        - `dt0`: the initial step size (positive; backward solves take `-dt0`);
            `None` lets an adaptive controller choose it. Required (and then the
            fixed step) with `ConstantStepSize`.
        - `max_steps`: the most steps one solve may take.
        - `trace`: `"exact"` (the Jacobian by `jax.jacfwd`) or `"hutchinson"` (a
            stochastic estimate; `log_prob` then needs a `key`).
        - `probe`: the distribution of Hutchinson's probe, `"rademacher"` (lower
            variance) or `"gaussian"`. Unused with `trace="exact"`.
        - `data_size`: the size of a data point. Taken from `vector_field` when it
            is an `AbstractVectorField`; otherwise needed by `sample` only.

        **Raises:** `ValueError` naming the argument if `vector_field` is not
        callable, `t1` or `dt0` is not positive, `dt0` is `None` with
        `ConstantStepSize`, `max_steps` is not a positive integer,
        `trace` or `probe` is not one of the names above, or `data_size` is not a
        positive integer or disagrees with `vector_field.data_size`.
        """
        if not callable(vector_field):
            raise ValueError(
                "`vector_field` must be a callable `f(t, z, args)`, such as "
                f"`MLPVectorField`; got {vector_field!r}."
            )
        t1 = float(t1)
        if not t1 > 0:
            raise ValueError(f"`t1` must be positive; got {t1}.")
        dt0 = check_dt0(dt0, stepsize_controller)
        check_positive_int(max_steps, "max_steps")
        if trace not in _TRACES:
            raise ValueError(
                f"`trace` must be one of {_TRACES}; got {trace!r}. Use 'exact' for "
                "small data sizes and 'hutchinson' for large ones."
            )
        if probe not in _PROBES:
            raise ValueError(f"`probe` must be one of {_PROBES}; got {probe!r}.")
        check_positive_int(data_size, "data_size", allow_none=True)
        if isinstance(vector_field, AbstractVectorField):
            if data_size is not None and data_size != vector_field.data_size:
                raise ValueError(
                    f"`data_size` ({data_size}) disagrees with "
                    f"`vector_field.data_size` ({vector_field.data_size}); leave it "
                    "out to use the vector field's."
                )
            data_size = vector_field.data_size
        self.vector_field = vector_field
        self.solver = solver
        self.stepsize_controller = stepsize_controller
        self.adjoint = adjoint
        self.t1 = t1
        self.dt0 = dt0
        self.max_steps = max_steps
        self.trace = trace
        self.probe = probe
        self.data_size = data_size

    def _check(self, x: Array, name: str) -> None:
        if self.data_size is None:
            expected = jnp.shape(x)[:1]
            message = "a 1-D array"
        else:
            expected = (self.data_size,)
            message = f"of shape {expected}"
        if jnp.ndim(x) != 1 or jnp.shape(x) != expected:
            raise ValueError(
                f"`{name}` must be one example, {message}; got shape "
                f"{jnp.shape(x)}. Batch with `jax.vmap`."
            )

    def _solve(self, term: dfx.ODETerm, t0: float, t1: float, y0: PyTree, args: PyTree):
        sol = dfx.diffeqsolve(
            term,
            self.solver,
            t0=t0,
            t1=t1,
            dt0=None if self.dt0 is None else math.copysign(self.dt0, t1 - t0),
            y0=y0,
            args=args,
            stepsize_controller=self.stepsize_controller,
            adjoint=self.adjoint,
            max_steps=self.max_steps,
        )
        return jax.tree.map(lambda y: y[-1], sol.ys)

    def _flow(self, z: Array, t0: float, t1: float) -> Array:
        return self._solve(dfx.ODETerm(self.vector_field), t0, t1, z, None)

    def transform(self, z0: Float[Array, " data"]) -> Float[Array, " data"]:
        """Push a base point forward to the data: solve from `0` to `t1`.

        **Arguments:**

        - `z0`: one base point, of shape `(data_size,)`; batch with `jax.vmap`.

        **Returns:** the data point `z(t1)`, of shape `(data_size,)`.

        **Raises:** `ValueError` naming `z0` if its shape is wrong;
        `equinox.EquinoxRuntimeError` if the solve fails.
        """
        self._check(z0, "z0")
        return self._flow(z0, 0.0, self.t1)

    def inverse(self, x: Float[Array, " data"]) -> Float[Array, " data"]:
        """Pull a data point back to the base: solve from `t1` to `0`.

        **Arguments:**

        - `x`: one data point, of shape `(data_size,)`; batch with `jax.vmap`.

        **Returns:** the base point `z(0)`, of shape `(data_size,)`.

        **Raises:** `ValueError` naming `x` if its shape is wrong;
        `equinox.EquinoxRuntimeError` if the solve fails.
        """
        self._check(x, "x")
        return self._flow(x, self.t1, 0.0)

    def log_prob(
        self, x: Float[Array, " data"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, ""]:
        """The log-density of the flow at one data point.

        **Arguments:**

        - `x`: one data point, of shape `(data_size,)`; batch with `jax.vmap`.
        - `key`: a PRNG key for Hutchinson's probe, drawn once for the whole solve.
            Required with `trace="hutchinson"`, unused with `trace="exact"`.

        **Returns:** `log p(x)`, a scalar: exact up to the solver's error with
        `trace="exact"`, an unbiased estimate with `trace="hutchinson"`.

        **Raises:** `ValueError` naming `x` if its shape is wrong, or `key` if it is
        missing with `trace="hutchinson"`; `equinox.EquinoxRuntimeError` if the solve
        fails.
        """
        self._check(x, "x")
        if self.trace == "hutchinson":
            if key is None:
                raise ValueError(
                    "`key` is required with `trace='hutchinson'`: it draws the "
                    "probe. Pass `key=...`, or use `trace='exact'`."
                )
            if self.probe == "rademacher":
                eps = jr.rademacher(key, x.shape, x.dtype)
            else:
                eps = jr.normal(key, x.shape, x.dtype)
        else:
            eps = None
        term = dfx.ODETerm(_AugmentedField(self.vector_field, self.trace))
        # Backwards from the data: a(0) = -∫_0^t1 tr(df/dz) dt, the log-determinant.
        z0, a0 = self._solve(term, self.t1, 0.0, (x, jnp.zeros((), x.dtype)), eps)
        base = -0.5 * jnp.sum(z0**2) - 0.5 * z0.size * math.log(2 * math.pi)
        return base + a0

    def sample(self, key: PRNGKeyArray) -> Float[Array, " data"]:
        """Draw one sample: `z0 ~ N(0, I)`, pushed forward by `transform`.

        **Arguments:**

        - `key`: a PRNG key for the base point; batch with `jax.vmap` over keys.

        **Returns:** one sample, of shape `(data_size,)`, in the default float dtype.

        **Raises:** `ValueError` naming `data_size` if it is unknown (pass it to the
        constructor when `vector_field` is not an `AbstractVectorField`).
        """
        if self.data_size is None:
            raise ValueError(
                "`data_size` is unknown, so `sample` cannot draw a base point: pass "
                "`data_size=...` to `CNF`, or use `transform` on your own draws."
            )
        return self.transform(jr.normal(key, (self.data_size,)))
