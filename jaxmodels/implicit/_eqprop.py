"""Equilibrium propagation without weight symmetry: generalised and holomorphic EP,
and the Jacobian-homeostasis objective."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import lineax as lx
import optimistix as optx
from jaxtyping import Array, ArrayLike, Float, Inexact, Int, PRNGKeyArray, PyTree, Real

from .._core import check_positive_int


_SOLVER = optx.Dogleg


def _frozen(tree: Any) -> Any:
    """`tree` with gradients stopped at every array leaf (other leaves untouched)."""
    arrays, rest = eqx.partition(tree, eqx.is_array)
    return eqx.combine(lax.stop_gradient(arrays), rest)


def _rho(u: Inexact[Array, "*shape"]) -> Inexact[Array, "*shape"]:
    return jnp.tanh(u)


class EquilibriumNetwork(eqx.Module):
    """A recurrent network trained by (generalised, holomorphic) equilibrium propagation.

    The state `u` (one pre-activation per hidden unit; rates `s = rho(u)`, `rho = tanh`)
    relaxes along the leaky rate dynamics

    `du/dt = F(u, x) = -u + W rho(u) + U x + b`

    to a fixed point `u*`, and the class scores are a linear readout `V s* + c` of the
    rates, scored by the cross-entropy `C(s, y)`. The nudged phases add the force of the
    cost on the rates, `F(u, x) - beta dC/ds(rho(u), y)`. With a symmetric `W` the
    network is energy-based in the rates (Hopfield, 1984; Scellier and Bengio,
    "Equilibrium propagation", 2017): the fixed points are the critical points of
    `E(s) = sum_i int_0^{s_i} artanh - s.W s / 2 - s.(U x + b)` (`energy`), the nudged
    ones those of `E + beta C`, and EP's gradient is exact as `beta -> 0`. `W` need not
    be symmetric ("generalised EP", Scellier et al., 2018): then EP is biased by the
    asymmetry of the Jacobian at the fixed point, which Laborieux and Zenke penalise
    ("Improving equilibrium propagation without weight symmetry through Jacobian
    homeostasis", ICLR 2024; see `homeostatic_loss`). `tanh` is complex-differentiable,
    so the nudged phases also run at complex nudges (holomorphic EP, Laborieux and
    Zenke, "Holomorphic equilibrium propagation computes exact gradients through finite
    size oscillations", NeurIPS 2022).

    Every phase is a root of a vector field found by optimistix (a trust-region
    Gauss-Newton method, `optimistix.Dogleg`); the free phase is differentiable by the
    implicit function theorem (`optimistix.ImplicitAdjoint`), which gives the
    backpropagation gradient that EP estimates. `W` starts with spectral norm
    `spectral_norm`; below one, `u -> W rho(u) + U x + b` is a contraction, so the fixed
    point exists and is unique.
    """

    weight: Float[Array, "hidden hidden"]
    input_weight: Float[Array, "hidden in_size"]
    bias: Float[Array, " hidden"]
    readout: eqx.nn.Linear
    rtol: float
    atol: float
    max_steps: int = eqx.field(static=True)
    adjoint_solver: lx.AbstractLinearSolver

    def __init__(
        self,
        in_size: int,
        hidden: int,
        out_size: int,
        *,
        spectral_norm: float = 0.5,
        symmetric: bool = False,
        rtol: float = 1e-4,
        atol: float = 1e-5,
        max_steps: int = 64,
        adjoint_solver: lx.AbstractLinearSolver = lx.LU(),
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `in_size`: the size of the input `x`.
        - `hidden`: the number of recurrent units (the size of the state `u`).
        - `out_size`: the number of classes.
        - `spectral_norm`: the spectral norm of `W` at initialisation, positive.
        - `symmetric`: whether `W` starts symmetric (the energy-based case).
        - `rtol`, `atol`: the root finder's tolerances, for every phase (the defaults
            suit single precision; tighten them in double precision).
        - `max_steps`: the most root-finder steps per phase.
        - `adjoint_solver`: the lineax solver of the implicit-differentiation backward
            pass (dense LU by default; `lineax.GMRES` is matrix-free).
        - `key`: a PRNG key for the initial parameters.

        **Raises:** `ValueError` naming the argument if a size or `max_steps` is not a
        positive integer, or `spectral_norm`, `rtol` or `atol` is not positive.
        """
        for value, name in [
            (in_size, "in_size"),
            (hidden, "hidden"),
            (out_size, "out_size"),
            (max_steps, "max_steps"),
        ]:
            check_positive_int(value, name)
        for value, name in [
            (spectral_norm, "spectral_norm"),
            (rtol, "rtol"),
            (atol, "atol"),
        ]:
            if not float(value) > 0:
                raise ValueError(f"`{name}` must be positive; got {value!r}.")
        wkey, ukey, rkey = jr.split(key, 3)
        weight = jr.normal(wkey, (hidden, hidden))
        if symmetric:
            weight = weight + weight.T
        self.weight = spectral_norm * weight / jnp.linalg.norm(weight, ord=2)
        self.input_weight = jr.normal(ukey, (hidden, in_size)) / in_size**0.5
        self.bias = jnp.zeros(hidden)
        self.readout = eqx.nn.Linear(hidden, out_size, key=rkey)
        self.rtol = float(rtol)
        self.atol = float(atol)
        self.max_steps = max_steps
        self.adjoint_solver = adjoint_solver

    @property
    def hidden(self) -> int:
        return self.weight.shape[0]

    @property
    def in_size(self) -> int:
        return self.input_weight.shape[1]

    def _check_x(self, x: Array) -> None:
        if x.shape != (self.in_size,):
            raise ValueError(
                f"`x` must be one input of shape ({self.in_size},), got shape "
                f"{x.shape}; batch with `jax.vmap`."
            )

    def _check_u(self, u: Array, name: str = "u") -> None:
        if u.shape != (self.hidden,):
            raise ValueError(
                f"`{name}` must be one state of shape ({self.hidden},), got shape "
                f"{u.shape}."
            )

    def vector_field(
        self, u: Inexact[Array, " hidden"], x: Float[Array, " in_size"]
    ) -> Inexact[Array, " hidden"]:
        """`F(u, x) = -u + W rho(u) + U x + b`; holomorphic in a complex `u`."""
        self._check_u(u)
        self._check_x(x)
        return -u + self.weight @ _rho(u) + self.input_weight @ x + self.bias

    def energy(
        self, s: Float[Array, " hidden"], x: Float[Array, " in_size"]
    ) -> Float[Array, ""]:
        """The Hopfield energy of the rates `s` (entries in `(-1, 1)`),
        `E(s) = sum_i int_0^{s_i} artanh - s.W s / 2 - s.(U x + b)`.

        `dE/ds = artanh(s) - W s - U x - b` vanishes exactly at the fixed points
        `s = rho(u*)` when `W` is symmetric (only its symmetric part enters `E`).
        """
        self._check_u(s, "s")
        self._check_x(x)
        # int_0^s artanh(t) dt = s artanh(s) + log(1 - s^2) / 2.
        primitive = s * jnp.arctanh(s) + 0.5 * jnp.log1p(-(s**2))
        drive = self.input_weight @ x + self.bias
        return jnp.sum(primitive) - 0.5 * s @ (self.weight @ s) - s @ drive

    def jacobian(
        self, u: Float[Array, " hidden"], x: Float[Array, " in_size"]
    ) -> Float[Array, "hidden hidden"]:
        """`J = dF/du = W diag(rho'(u)) - I` at the state `u` (dense)."""
        return jax.jacfwd(lambda v: self.vector_field(v, x))(u)

    def logits(self, s: Inexact[Array, " hidden"]) -> Inexact[Array, " out_size"]:
        """The class scores `V s + c` read off the rates `s`."""
        self._check_u(s, "s")
        return self.readout(s)

    def cost(
        self, s: Inexact[Array, " hidden"], y: Int[ArrayLike, ""]
    ) -> Inexact[Array, ""]:
        """The cross-entropy `C(s, y)` of the readout of the rates `s` against `y`.

        Written with `log(sum(exp))` shifted by a real constant, so that it is holomorphic
        in complex rates (the nudge of holomorphic EP is its complex derivative).
        """
        y = jnp.asarray(y)
        if y.shape != ():
            raise ValueError(
                f"`y` must be one integer label (a scalar), got shape {y.shape}."
            )
        z = self.logits(s)
        shift = lax.stop_gradient(jnp.max(jnp.real(z)))
        return shift + jnp.log(jnp.sum(jnp.exp(z - shift))) - z[y]

    def cost_gradient(
        self, s: Inexact[Array, " hidden"], y: Int[ArrayLike, ""]
    ) -> Inexact[Array, " hidden"]:
        """`dC/ds`; for complex rates, the complex derivative (a VJP is its transpose)."""
        _, vjp = jax.vjp(lambda v: self.cost(v, y), s)
        (grad,) = vjp(jnp.ones((), s.dtype))
        return grad

    def _solve(
        self,
        fn: Callable[[Array], Array],
        y0: Inexact[Array, " hidden"],
        adjoint: optx.AbstractAdjoint,
    ) -> optx.Solution:
        solver = _SOLVER(rtol=self.rtol, atol=self.atol)
        complex_state = jnp.iscomplexobj(y0)

        # Optimistix's complex support is experimental, so a complex state is solved as
        # its real and imaginary parts (F is holomorphic: the real system is regular
        # exactly where the complex one is).
        def split(z: Any, _: Any) -> Any:
            if not complex_state:
                return fn(z)
            f = fn(z[0] + 1j * z[1])
            return jnp.real(f), jnp.imag(f)

        start = (jnp.real(y0), jnp.imag(y0)) if complex_state else y0
        sol = optx.root_find(
            split,
            solver,
            start,
            max_steps=self.max_steps,
            adjoint=adjoint,
            throw=False,
        )
        value = sol.value[0] + 1j * sol.value[1] if complex_state else sol.value
        # In single precision the solver can stall at a root without meeting its own
        # step-size test; the root condition itself is what EP needs, so accept that.
        residual = optx.rms_norm(fn(value))
        at_root = residual <= self.atol + self.rtol * optx.rms_norm(value)
        result = optx.RESULTS.where(at_root, optx.RESULTS.successful, sol.result)
        # The solver's state (which holds jaxprs) is dropped, so solutions can be vmapped.
        return optx.Solution(
            value=value, result=result, aux=None, stats=sol.stats, state=None
        )

    def free_phase(
        self, x: Float[Array, " in_size"], *, throw: bool = True
    ) -> optx.Solution:
        """The free fixed point `u*`: `F(u*, x) = 0`, by Newton's method from `u = 0`.

        Differentiable with respect to the parameters by implicit differentiation.

        **Arguments:**

        - `x`: one input of shape `(in_size,)`; batch with `jax.vmap`.
        - `throw`: whether a failed solve raises (else see the `result`).

        **Returns:** an `optimistix.Solution` whose `value` is `u*`.
        """
        self._check_x(x)
        adjoint = optx.ImplicitAdjoint(linear_solver=self.adjoint_solver)
        sol = self._solve(
            lambda u: self.vector_field(u, x), jnp.zeros(self.hidden, x.dtype), adjoint
        )
        if throw:
            sol = eqx.tree_at(
                lambda s: s.value,
                sol,
                sol.result.error_if(sol.value, sol.result != optx.RESULTS.successful),
            )
        return sol

    def nudged_phase(
        self,
        x: Float[Array, " in_size"],
        y: Int[ArrayLike, ""],
        beta: Inexact[ArrayLike, ""],
        y0: Float[Array, " hidden"],
        *,
        throw: bool = True,
    ) -> optx.Solution:
        """The nudged fixed point `u^beta`: `F(u, x) - beta dC/du(u, y) = 0`.

        **Arguments:**

        - `x`, `y`: one input and its integer label.
        - `beta`: the nudge, real or complex; a complex nudge gives a complex state.
        - `y0`: where Newton starts (the free fixed point, in EP).
        - `throw`: whether a failed solve raises.

        **Returns:** an `optimistix.Solution` whose `value` is `u^beta` (complex if `beta`
        is), not differentiable (EP needs no derivative of a nudged phase).
        """
        self._check_x(x)
        beta = jnp.asarray(beta)
        dtype = jnp.result_type(y0.dtype, beta.dtype)
        model = _frozen(self)
        beta = beta.astype(dtype)

        def residual(u: Array) -> Array:
            return model.vector_field(u, x) - beta * model.cost_gradient(_rho(u), y)

        sol = model._solve(
            residual, y0.astype(dtype), optx.RecursiveCheckpointAdjoint()
        )
        if throw:
            sol = eqx.tree_at(
                lambda s: s.value,
                sol,
                sol.result.error_if(sol.value, sol.result != optx.RESULTS.successful),
            )
        return sol

    def loss(
        self, x: Float[Array, " in_size"], y: Int[ArrayLike, ""]
    ) -> Float[Array, ""]:
        """`C(u*(x), y)` at the free fixed point: its gradient (by implicit
        differentiation) is the backpropagation gradient that EP estimates."""
        return self.cost(_rho(self.free_phase(x).value), y)

    def __call__(
        self, x: Float[Array, " in_size"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, " out_size"]:
        """The class scores at the free fixed point.

        **Raises:** `equinox.EquinoxRuntimeError` if Newton's method fails.
        """
        del key
        return self.logits(_rho(self.free_phase(x).value))


class EPGradient(eqx.Module):
    """An equilibrium-propagation gradient estimate and the phases behind it.

    **Fields:**

    - `grads`: the estimate, shaped like the model (`EquilibriumNetwork`): the EP
        estimate for `weight`, `input_weight`, `bias`, and the exact (local) gradient of
        `C` at the free fixed point for the `readout`; non-array fields are `None`.
    - `error`: the neuronal error vector, the estimate of `ds^beta/dbeta` at `beta = 0`
        (`s = rho(u)` the rates), of shape `(hidden,)`.
    - `state`: the free fixed point `u*`.
    - `loss`: the cost `C(rho(u*), y)`.
    - `result`: an `optimistix.RESULTS`: successful unless a phase failed.
    - `num_steps`: root-finder steps over all phases.
    """

    grads: PyTree
    error: Float[Array, " hidden"]
    state: Float[Array, " hidden"]
    loss: Float[Array, ""]
    result: optx.RESULTS
    num_steps: Int[Array, ""]


def _check_beta_points(beta: Any, points: Any) -> None:
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise ValueError(
            f"`points` must be an integer >= 2 (2: the symmetric +-beta estimate; "
            f"more: nudges on a circle); got {points!r}."
        )
    if isinstance(beta, int | float) and not isinstance(beta, bool) and beta == 0:
        raise ValueError("`beta` must be non-zero: EP divides by the nudge.")
    if jnp.ndim(beta) != 0 or jnp.iscomplexobj(beta):
        raise ValueError(f"`beta` must be a real scalar; got {beta!r}.")


def _local_surrogate(
    model: EquilibriumNetwork,
    state: Float[Array, " hidden"],
    error: Float[Array, " hidden"],
    x: Float[Array, " in_size"],
    y: Int[ArrayLike, ""],
) -> Float[Array, ""]:
    # Value C(rho(u*), y); gradient -(dF/dtheta)^T error (the EP rule: a vector-Jacobian
    # product at the free state, e.g. -error rho(u*)^T for W) plus dC/dtheta at fixed
    # rates (the readout's own, local, gradient).
    local = -jnp.dot(error, model.vector_field(state, x))
    return model.cost(_rho(state), y) + local - lax.stop_gradient(local)


def equilibrium_propagation(
    model: EquilibriumNetwork,
    x: Float[Array, " in_size"],
    y: Int[ArrayLike, ""],
    *,
    beta: Real[ArrayLike, ""] = 0.1,
    points: int = 2,
    throw: bool = True,
) -> EPGradient:
    """The equilibrium-propagation estimate of `dC(rho(u*), y)/dtheta` for one example.

    A free phase finds `u*`; nudged phases find `u^b` for the nudges
    `b_k = beta exp(2 pi i k / points)`, `k = 0 .. points - 1`, and the neuronal error
    vector is the discrete Cauchy integral of the rates `s = rho(u)`,

    `e = Re (1/points) sum_k (s^{b_k} - s*) / b_k`,

    an estimate of `ds^b/db` at `b = 0` whose error is `O(|beta|^points)`. `points = 2`
    is the symmetric estimate `(s^beta - s^-beta) / (2 beta)` (Laborieux et al., 2021;
    real arithmetic); more points are holomorphic EP (Laborieux and Zenke, 2022): at any
    fixed `|beta|` inside the disc where `s^b` is analytic the error vanishes
    geometrically as `points` grows (only `points // 2 + 1` phases are solved, as
    `s^{conj b} = conj(s^b)`). The parameter gradient is the generalised-EP rule
    `-(dF/dtheta)^T e` at the free fixed point, e.g. `-e rho(u*)^T` for `W`.

    What is exact, and when: with `D = diag(rho'(u*))`, `e = ds/db` at `b = 0` is
    `-D (I - W D)^{-1} dC/ds`, while backpropagation (implicit differentiation) uses
    `-(I - D W^T)^{-1} D dC/ds`. They are equal for a symmetric `W` (the energy-based
    case), so EP's only bias is then the finite nudge, which holomorphic EP removes. For
    an asymmetric `W` holomorphic EP still computes the exact derivative `ds/db`, i.e.
    the exact *generalised-EP* gradient, but that differs from backpropagation's by the
    asymmetry of `D^{1/2} W D^{1/2}` (the Jacobian at the fixed point, symmetrised),
    which `homeostatic_loss` penalises (Laborieux and Zenke, "Improving equilibrium
    propagation without weight symmetry through Jacobian homeostasis", ICLR 2024).

    **Arguments:**

    - `model`: an `EquilibriumNetwork`.
    - `x`, `y`: one input of shape `(in_size,)` and its integer label; batch with
        `jax.vmap`.
    - `beta`: the nudge strength (the circle's radius), real and non-zero.
    - `points`: the number of nudges on the circle, at least 2.
    - `throw`: whether a failed phase raises.

    **Returns:** an `EPGradient`. No derivative of any phase is taken: only a
    vector-Jacobian product of `F` at the free fixed point.

    **Raises:** `ValueError` naming the argument if `points < 2`, `beta` is zero (a
    traced zero raises at run time) or not a real scalar, or `x`/`y` has the wrong shape.
    """
    _check_beta_points(beta, points)
    frozen = _frozen(model)
    beta = jnp.asarray(beta, x.dtype)
    beta = eqx.error_if(beta, beta == 0, "`beta` must be non-zero: EP divides by it.")
    free = frozen.free_phase(x, throw=False)
    state = free.value
    if points == 2:
        nudges = jnp.stack([beta, -beta])
    else:
        angles = 2 * jnp.pi * jnp.arange(points // 2 + 1) / points
        nudges = beta * jnp.exp(1j * angles.astype(x.dtype))
    nudged = jax.vmap(lambda b: frozen.nudged_phase(x, y, b, state, throw=False))(
        nudges
    )
    # Conjugate pairs (k, points - k) are solved once and counted with weight 2.
    k = jnp.arange(nudges.shape[0])
    weights = jnp.where((k == 0) | (2 * k == points), 1.0, 2.0).astype(x.dtype)
    rates = _rho(state)
    quotients = jnp.real((_rho(nudged.value) - rates[None, :]) / nudges[:, None])
    error = jnp.sum(weights[:, None] * quotients, axis=0) / points

    failed = nudged.result != optx.RESULTS.successful
    first = jnp.argmax(failed)
    nudged_result = jtu.tree_map(lambda r: r[first], nudged.result)
    result = optx.RESULTS.where(
        free.result == optx.RESULTS.successful, nudged_result, free.result
    )
    if throw:
        error = result.error_if(error, result != optx.RESULTS.successful)
    grads = eqx.filter_grad(_local_surrogate)(model, state, error, x, y)
    return EPGradient(
        grads=grads,
        error=error,
        state=state,
        loss=frozen.cost(rates, y),
        result=result,
        num_steps=free.stats["num_steps"] + jnp.sum(nudged.stats["num_steps"]),
    )


def ep_loss(
    model: EquilibriumNetwork,
    x: Float[Array, " in_size"],
    y: Int[ArrayLike, ""],
    *,
    beta: Real[ArrayLike, ""] = 0.1,
    points: int = 2,
    throw: bool = True,
) -> Float[Array, ""]:
    """A scalar whose value is `C(rho(u*), y)` and whose gradient is the EP estimate.

    For training with any gradient-based loop (`jaxmodels.fit` calls `jax.grad` on the
    loss): `jax.grad(ep_loss)(model, ...)` equals
    `equilibrium_propagation(model, ...).grads`, with no backpropagation through any
    phase. Arguments as for `equilibrium_propagation`.
    """
    sol = equilibrium_propagation(model, x, y, beta=beta, points=points, throw=throw)
    return _local_surrogate(model, sol.state, sol.error, x, y)


def homeostatic_loss(
    model: EquilibriumNetwork,
    x: Float[Array, " in_size"],
    *,
    state: Float[Array, " hidden"] | None = None,
    key: PRNGKeyArray | None = None,
    probes: int = 1,
) -> Float[Array, ""]:
    """The Jacobian-homeostasis objective `|J - J^T|_F^2` at the free fixed point.

    `J` is the Jacobian of the dynamics at `u*` in the coordinates in which a symmetric
    `W` gives a symmetric Jacobian: `J = D^{1/2} (dF/du) D^{-1/2} = D^{1/2} W D^{1/2} - I`
    with `D = diag(rho'(u*))` (a similarity transform of `dF/du`: same eigenvalues).
    EP's error vector is backpropagation's exactly when this `J` is symmetric (see
    `equilibrium_propagation`), so the objective measures the functional asymmetry that
    biases EP: `|D^{1/2} (W - W^T) D^{1/2}|_F^2`, blind to the asymmetry of saturated
    units (Laborieux and Zenke, ICLR 2024; in their code, for dense layers, the
    Jacobian is taken in the rates with the activation switched off, which gives the
    unweighted `|W - W^T|_F^2`). Without a `key` it is computed exactly; with a `key`,
    by the unbiased Hutchinson estimate `mean_p |(J - J^T) e_p|^2` over `probes`
    Rademacher vectors `e_p` (matrix-vector products only: for large networks). The
    fixed point is treated as data: the gradient flows through `W` and `D`'s explicit
    dependence on the parameters, not through `u*`.

    **Arguments:**

    - `model`: an `EquilibriumNetwork`.
    - `x`: one input of shape `(in_size,)`.
    - `state`: the free fixed point `u*`, if already solved (else it is solved here).
    - `key`: a PRNG key for the Hutchinson probes, or `None` for the exact value.
    - `probes`: the number of probe vectors, at least 1.

    **Returns:** a non-negative scalar.

    **Raises:** `ValueError` naming the argument for a bad `probes` or shape.
    """
    check_positive_int(probes, "probes")
    model._check_x(x)
    if state is None:
        state = _frozen(model).free_phase(x).value
    model._check_u(state, "state")
    scale = jnp.sqrt(1 - jnp.tanh(lax.stop_gradient(state)) ** 2)
    w = model.weight
    if key is None:
        asym = scale[:, None] * (w - w.T) * scale[None, :]
        return jnp.sum(asym**2)
    # Rows are probes. Written as matrix products, not a vmap of matrix-vector
    # products: on CPU (jax 0.10.2) the vmapped form returned wrong rows beyond the
    # 16384th probe.
    v = jr.rademacher(key, (probes, state.shape[0]), dtype=state.dtype) * scale[None, :]
    asym_v = (v @ w.T - v @ w) * scale[None, :]
    return jnp.mean(jnp.sum(asym_v**2, axis=1))
