"""HomoODE: the homotopy path's end is the DEQ root, NFE, learned z0, gradients, errors."""

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optax
import optimistix as optx
import pytest

from jaxmodels.implicit import HomoODE, MLPCell, NewtonHomotopy

from .helpers import jaxtyping_off


def _solve(model, x, z0=None):
    return model.equilibrium(x, z0=z0, throw=False)


_solve_jit = eqx.filter_jit(_solve)
_solve_batch = eqx.filter_jit(
    lambda model, xs, z0: jax.vmap(lambda x: _solve(model, x, z0))(xs)
)


def _residual(model, z, x):
    return model.cell(z, x) - z


def _x64_model():
    # One configuration for the x64 tests, so that they share a compiled solve.
    return HomoODE(2, 8, 2, width=16, rtol=1e-8, atol=1e-8, key=jr.key(0))


def test_path_end_is_the_newton_root(x64):
    model = _x64_model()
    xs = jr.normal(jr.key(2), (64, 2))
    sols = _solve_batch(model, xs, jnp.zeros(8))
    assert bool(jnp.all(sols.result._value == 0))
    # No Newton correction was needed: the ODE path's end z(1) met the tolerance.
    assert int(jnp.max(sols.stats["newton_steps"])) == 0
    assert int(jnp.min(sols.stats["ode_steps"])) > 0
    residual = jax.vmap(lambda z, x: optx.rms_norm(_residual(model, z, x)))(
        sols.value, xs
    )
    scale = 1e-8 + 1e-8 * jax.vmap(optx.rms_norm)(sols.value)
    assert bool(jnp.all(residual < scale)), float(jnp.max(residual / scale))
    assert float(jnp.max(jnp.abs(residual - sols.stats["residual"]))) < 1e-14
    # An independent root: optimistix's Newton with a dense Jacobian, from zero.
    newton = eqx.filter_jit(
        lambda m, x: (
            optx.root_find(
                lambda z, x: _residual(m, z, x),
                optx.Newton(rtol=1e-12, atol=1e-12),
                jnp.zeros(8),
                x,
            ).value
        )
    )
    for i in range(3):
        root = newton(model, xs[i])
        assert float(jnp.max(jnp.abs(sols.value[i] - root))) < 1e-7
        # The path went somewhere: the root is far from the start.
        assert float(jnp.linalg.norm(root - model.z0)) > 0.3


def test_homotopy_needs_no_contraction(x64):
    # f(z) = A z + b with A = 1.5 * a rotation: fixed-point iteration diverges
    # (spectral radius 1.5), the root is z* = (I - A)^{-1} b in closed form.
    c, s = jnp.cos(0.4), jnp.sin(0.4)
    a = 1.5 * jnp.array([[c, -s], [s, c]])
    b = jnp.array([1.0, -2.0])

    def cell(z, x):
        return a @ z + b + 0.0 * jnp.sum(x)

    z_star = jnp.linalg.solve(jnp.eye(2) - a, b)
    fixed = optx.fixed_point(
        lambda z, _: cell(z, jnp.zeros(1)),
        optx.FixedPointIteration(rtol=1e-8, atol=1e-8),
        jnp.zeros(2),
        max_steps=200,
        throw=False,
    )
    assert fixed.result != optx.RESULTS.successful
    model = HomoODE(
        1, 2, 2, cell=cell, rtol=1e-10, atol=1e-12, max_steps=1, key=jr.key(0)
    )
    sol = _solve_jit(model, jnp.zeros(1))
    assert sol.result == optx.RESULTS.successful
    assert float(jnp.max(jnp.abs(sol.value - z_star))) < 1e-9
    # A linear g has a straight path of constant speed, which Runge-Kutta integrates
    # exactly: the controller only grows the step.
    assert int(sol.stats["ode_steps"]) <= 5


class _Counter:
    calls = 0

    def __call__(self):
        self.calls += 1


class _Counting(eqx.Module):
    inner: MLPCell
    counter: _Counter = eqx.field(static=True)

    def __call__(self, z, x):
        jax.debug.callback(self.counter)
        return self.inner(z, x)


def test_nfe_counts_the_cells_evaluations():
    counter = _Counter()
    cell = _Counting(MLPCell(4, 2, 8, key=jr.key(0)), counter)
    model = HomoODE(2, 4, 2, cell=cell, max_steps=1, key=jr.key(1))
    model = eqx.tree_at(
        lambda m: m.root_finder, model, NewtonHomotopy(1e-6, 1e-6, solver=dfx.Bosh3())
    )
    sol = _solve(model, jnp.array([1.0, 2.0]))
    jax.block_until_ready(sol.value)
    assert sol.result == optx.RESULTS.successful
    # Each vector-field evaluation linearises the cell once (its JVPs inside GMRES do
    # not call it); two more calls: g(z0) and the residual at the path's end.
    assert counter.calls == int(sol.stats["nfe"]) + 2, (counter.calls, sol.stats)


def test_learned_initial_point_cuts_nfe(x64):
    model = _x64_model()
    x_train = jr.normal(jr.key(1), (64, 2))
    x_test = jr.normal(jr.key(2), (64, 2))
    zero = jnp.zeros(8)
    z_train = _solve_batch(model, x_train, zero).value

    # "Learned": 300 Adam steps on the mean `initial_point_loss` over the training
    # inputs' equilibria (which do not depend on z0), as in training.
    def loss(m):
        return jnp.mean(jax.vmap(m.initial_point_loss)(z_train))

    optim = optax.adam(3e-2)

    @eqx.filter_jit
    def learn(m):
        params, static = eqx.partition(m, eqx.is_array)

        def step(carry, _):
            params, state = carry
            grads = eqx.filter_grad(loss)(eqx.combine(params, static))
            updates, state = optim.update(grads, state)
            return (eqx.apply_updates(params, updates), state), None

        state = optim.init(params)
        (params, _), _ = jax.lax.scan(step, (params, state), None, length=300)
        return eqx.combine(params, static)

    learned = learn(model)
    # The minimiser of the mean squared distance is the mean equilibrium.
    assert float(jnp.max(jnp.abs(learned.z0 - z_train.mean(0)))) < 1e-3
    cold = _solve_batch(model, x_test, zero)
    warm = _solve_batch(learned, x_test, learned.z0)
    assert bool(jnp.all(cold.result._value == 0) & jnp.all(warm.result._value == 0))
    nfe_cold = float(jnp.mean(cold.stats["nfe"]))
    nfe_warm = float(jnp.mean(warm.stats["nfe"]))
    # Measured: 35.4 from zero, 19.0 from the learned point.
    assert nfe_warm < 0.75 * nfe_cold, (nfe_warm, nfe_cold)
    assert float(jnp.max(jnp.abs(warm.value - cold.value))) < 1e-6


def test_gradients_match_finite_differences(x64):
    model = HomoODE(2, 5, 3, width=10, rtol=1e-10, atol=1e-12, key=jr.key(3))
    x = jnp.array([0.4, -0.9])
    weights = jnp.array([1.0, -2.0, 0.5])

    def loss(m, x):
        return jnp.dot(weights, m(x))

    grad_m, grad_x = eqx.filter_jit(eqx.filter_grad(lambda mx: loss(*mx)))((model, x))
    loss_jit = eqx.filter_jit(loss)
    eps = 1e-5
    for i in range(2):
        e = jnp.zeros(2).at[i].set(eps)
        fd = (loss_jit(model, x + e) - loss_jit(model, x - e)) / (2 * eps)
        assert float(grad_x[i]) == pytest.approx(float(fd), rel=1e-6, abs=1e-9)
    for where, index in [
        (lambda m: m.cell.w1, (2, 1)),
        (lambda m: m.cell.b2, (4,)),
        (lambda m: m.cell.u, (0, 1)),
    ]:
        leaf = where(model)
        e = jnp.zeros_like(leaf).at[index].set(eps)
        plus = eqx.tree_at(where, model, leaf + e)
        minus = eqx.tree_at(where, model, leaf - e)
        fd = (loss_jit(plus, x) - loss_jit(minus, x)) / (2 * eps)
        assert float(where(grad_m)[index]) == pytest.approx(float(fd), rel=1e-6)
    # The root does not depend on the start, so no task gradient reaches z0.
    assert float(jnp.max(jnp.abs(grad_m.z0))) == 0.0


def test_jit_vmap_grad():
    model = HomoODE(2, 4, 2, width=8, key=jr.key(0))
    xs = jr.normal(jr.key(1), (5, 2))
    ys = jnp.array([0, 1, 1, 0, 1])

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def loss_and_grad(m, xs, ys):
        def loss(m):
            sols = jax.vmap(m.equilibrium)(xs)
            logits = jax.vmap(m.readout)(sols.value)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, ys).mean()
            z0_term = jnp.mean(jax.vmap(m.initial_point_loss)(sols.value))
            return ce + z0_term, (logits, sols.value)

        return eqx.filter_value_and_grad(loss, has_aux=True)(m)

    (value, (logits, z_star)), grads = loss_and_grad(model, xs, ys)
    loss_and_grad(model, xs + 0.1, ys)
    assert bool(jnp.isfinite(value))
    # z0 gets its gradient from the initial-point term only: 2 (z0 - mean z*).
    expected = 2 * (model.z0 - z_star.mean(0))
    assert float(jnp.max(jnp.abs(grads.z0 - expected))) < 1e-5
    assert float(jnp.max(jnp.abs(grads.cell.w1))) > 0
    for i in range(2):
        assert float(jnp.max(jnp.abs(logits[i] - model(xs[i])))) < 1e-5


def test_failures_report_or_raise():
    model = HomoODE(2, 4, 2, width=8, key=jr.key(0))
    x = jnp.array([1.0, -1.0])
    # Too few ODE steps: the path fails, reported as divergence.
    short = eqx.tree_at(
        lambda m: m.root_finder, model, NewtonHomotopy(1e-6, 1e-6, max_ode_steps=1)
    )
    sol = _solve_jit(short, x)
    assert sol.result == optx.RESULTS.nonlinear_divergence
    assert sol.stats["ode_result"] == dfx.RESULTS.max_steps_reached
    with pytest.raises(eqx.EquinoxRuntimeError, match="diverged"):
        short.equilibrium(x)
    # A loose path leaves the root's tolerance to the Newton corrections.
    loose_path = NewtonHomotopy(1e-7, 1e-7, ode_rtol=1e-1, ode_atol=1e-1)
    polished = HomoODE(2, 4, 2, width=8, root_finder=loose_path, key=jr.key(0))
    sol = _solve_jit(polished, x)
    assert sol.result == optx.RESULTS.successful
    assert 0 < int(sol.stats["newton_steps"]) < 5


def test_bad_inputs():
    with pytest.raises(ValueError, match="`state_size`"):
        HomoODE(2, 0, 2, key=jr.key(0))
    with pytest.raises(ValueError, match="`rtol`"):
        HomoODE(2, 3, 2, rtol=-1.0, key=jr.key(0))
    with jaxtyping_off():
        with pytest.raises(ValueError, match="`cell`"):
            HomoODE(2, 3, 2, cell=3, key=jr.key(0))
        with pytest.raises(ValueError, match="`root_finder`"):
            HomoODE(2, 3, 2, root_finder=optx.BFGS(1e-3, 1e-3), key=jr.key(0))
        with pytest.raises(ValueError, match="`solver`"):
            NewtonHomotopy(1e-3, 1e-3, solver=dfx.Euler())
        with pytest.raises(ValueError, match="`linear_solver`"):
            NewtonHomotopy(1e-3, 1e-3, linear_solver=None)
        with pytest.raises(ValueError, match="`max_ode_steps`"):
            NewtonHomotopy(1e-3, 1e-3, max_ode_steps=0)
        with pytest.raises(ValueError, match="`lipschitz`"):
            MLPCell(3, 2, 4, lipschitz=0.0, key=jr.key(0))
    model = HomoODE(2, 3, 2, key=jr.key(0))
    with jaxtyping_off():
        with pytest.raises(ValueError, match="`x`"):
            model.equilibrium(jnp.ones((4, 2)))
        with pytest.raises(ValueError, match="`z0`"):
            model.equilibrium(jnp.ones(2), z0=jnp.zeros(4))
