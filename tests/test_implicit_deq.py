import functools as ft

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
import numpy as np
import optimistix as optx
import pytest

import jaxmodels as jm

from .helpers import jaxtyping_off


im = jm.implicit

_SOLVERS = {
    "anderson": lambda tol, **kw: im.Anderson(tol, tol, **kw),
    "broyden": lambda tol, **kw: im.Broyden(tol, tol, **kw),
    "bad-broyden": lambda tol, **kw: im.BadBroyden(tol, tol, **kw),
}


def _linear_problem(n, key):
    akey, bkey = jr.split(key)
    a = jr.normal(akey, (n, n), jnp.float64)
    a = 0.95 * a / jnp.max(jnp.abs(jnp.linalg.eigvals(a)))
    return a, jr.normal(bkey, (n,), jnp.float64)


def _stiff_tanh(n=48):
    """`tanh(W z + x)` with spectral radius 0.999: fixed-point iteration is slow."""
    wkey, xkey = jr.split(jr.key(0))
    w = jr.normal(wkey, (n, n))
    w = 0.999 * w / jnp.max(jnp.abs(jnp.linalg.eigvals(w)))
    return (lambda z, x: jnp.tanh(w @ z + x)), 0.05 * jr.normal(xkey, (n,))


@pytest.mark.parametrize("name", ["anderson", "broyden", "bad-broyden"])
def test_linear_fixed_point_in_finitely_many_steps(x64, name):
    # On z = A z + b, Anderson with memory >= n is GMRES in disguise (n + 1 steps, one
    # more here for the tiny regularisation) and Broyden's methods terminate in at most
    # 2n steps (Gay, 1979); plus the step whose residual is measured as converged.
    n = 8
    a, b = _linear_problem(n, jr.key(1))
    solver = _SOLVERS[name](1e-10, memory=2 * n + 2)
    sol = optx.fixed_point(lambda z, _: a @ z + b, solver, jnp.zeros(n), max_steps=200)
    exact = np.linalg.solve(np.eye(n) - np.asarray(a), np.asarray(b))
    np.testing.assert_allclose(sol.value, exact, rtol=1e-8, atol=1e-8)
    bound = n + 3 if name == "anderson" else 2 * n + 2
    assert int(sol.stats["num_steps"]) <= bound


@pytest.mark.parametrize("name", ["anderson", "broyden", "bad-broyden"])
def test_fewer_iterations_than_fixed_point_iteration(name):
    fn, x = _stiff_tanh()
    plain = optx.fixed_point(fn, optx.FixedPointIteration(1e-6, 1e-6), jnp.zeros(48), x, max_steps=2000)  # fmt: skip
    sol = optx.fixed_point(fn, _SOLVERS[name](1e-6), jnp.zeros(48), x, max_steps=2000)
    np.testing.assert_allclose(sol.value, plain.value, atol=2e-5)
    assert int(sol.stats["num_steps"]) * 2 < int(plain.stats["num_steps"])


def test_broyden_as_a_general_root_finder(x64):
    # Passed to optx.root_find with h0 = 1 for an operator near the identity.
    n = 6
    a = jnp.eye(n) + 0.3 * jr.normal(jr.key(2), (n, n)) / n**0.5
    b = jnp.arange(n, dtype=jnp.float64)
    solver = im.Broyden(1e-10, 1e-10, initial_inverse_jacobian=1.0)
    sol = optx.root_find(
        lambda y, _: a @ y + 0.1 * jnp.sin(y) - b, solver, jnp.zeros(n)
    )
    np.testing.assert_allclose(a @ sol.value + 0.1 * jnp.sin(sol.value), b, atol=1e-9)


def test_singular_history_restarts_instead_of_nan():
    # f(z) = z + d has no fixed point and constant residuals: without regularisation
    # the least-squares system is exactly singular at the second step.
    d = jnp.array([1.0, -2.0, 0.5])
    solver = im.Anderson(1e-6, 1e-6, regularisation=0.0)
    sol = optx.fixed_point(lambda z, _: z + d, solver, jnp.zeros(3), max_steps=10, throw=False)  # fmt: skip
    assert sol.result == optx.RESULTS.nonlinear_max_steps_reached
    assert bool(jnp.all(jnp.isfinite(sol.value)))
    assert int(sol.stats["restarts"]) >= 1
    # Every step was then a plain step of size d: the iterate is exactly 10 d.
    np.testing.assert_allclose(sol.value, 10 * d, rtol=1e-6)


@pytest.mark.parametrize("name", ["anderson", "broyden"])
def test_nan_is_reported_as_divergence(name):
    fn = lambda z, _: jnp.log(z - 1.0)  # noqa: E731
    solver = _SOLVERS[name](1e-6)
    sol = optx.fixed_point(fn, solver, jnp.zeros(2), max_steps=10, throw=False)
    assert sol.result == optx.RESULTS.nonlinear_divergence
    with pytest.raises(eqx.EquinoxRuntimeError, match="diverged"):
        optx.fixed_point(fn, solver, jnp.zeros(2), max_steps=10)


def test_solver_argument_errors():
    with pytest.raises(ValueError, match="rtol"):
        im.Anderson(-1.0, 1e-6)
    with pytest.raises(ValueError, match="memory"):
        im.Anderson(1e-6, 1e-6, memory=0)
    with pytest.raises(ValueError, match="memory"):
        im.Broyden(1e-6, 1e-6, memory=0)
    with pytest.raises(ValueError, match="square"):
        optx.root_find(lambda y, _: y[:2], im.Broyden(1e-6, 1e-6), jnp.zeros(3))


# --- DEQ ------------------------------------------------------------------------------


@ft.cache
def _cell(dtype=jnp.float32):
    cell = im.TanhCell(6, 3, spectral_norm=0.8, key=jr.key(3))
    return jax.tree.map(lambda a: a.astype(dtype) if eqx.is_array(a) else a, cell)


def _loss(deq, xs, c):
    return jnp.sum(jax.vmap(deq)(xs).value @ c)


def test_implicit_gradient_matches_finite_differences(x64):
    cell = _cell(jnp.float64)
    xs = jr.normal(jr.key(4), (3, 3), jnp.float64)
    c = jr.normal(jr.key(5), (6,), jnp.float64)
    gradient = im.ImplicitGradient(lx.GMRES(rtol=1e-12, atol=1e-12, restart=20))
    deq = im.DEQ(cell, 6, solver=im.Anderson(1e-13, 1e-13), gradient=gradient)
    grads = eqx.filter_grad(_loss)(deq, xs, c)
    params, static = eqx.partition(deq, eqx.is_inexact_array)
    direction = jax.tree.map(lambda p: jr.normal(jr.key(6), p.shape, p.dtype), params)
    eps = 1e-6

    @eqx.filter_jit
    def at(t):
        moved = jax.tree.map(lambda p, d: p + t * d, params, direction)
        return _loss(eqx.combine(moved, static), xs, c)

    fd = (at(jnp.array(eps)) - at(jnp.array(-eps))) / (2 * eps)
    ad = sum(
        jnp.vdot(g, d)
        for g, d in zip(
            jax.tree.leaves(eqx.filter(grads, eqx.is_inexact_array)),
            jax.tree.leaves(direction),
        )  # fmt: skip
    )
    np.testing.assert_allclose(ad, fd, rtol=1e-7)


def _flat_grad(gradient, xs, c):
    deq = im.DEQ(_cell(), 6, solver=im.Anderson(1e-6, 1e-6), gradient=gradient)
    grads = eqx.filter_grad(_loss)(deq, xs, c)
    leaves = jax.tree.leaves(eqx.filter(grads, eqx.is_inexact_array))
    return jnp.concatenate([g.ravel() for g in leaves])


def _cosine(a, b):
    return float(a @ b / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))


def test_phantom_gradient_tends_to_the_implicit_one_and_jfb_is_a_descent_direction():
    xs = jr.normal(jr.key(7), (4, 3))
    c = jr.normal(jr.key(8), (6,))
    exact = _flat_grad(im.ImplicitGradient(), xs, c)
    short = _flat_grad(im.PhantomGradient(steps=2, damping=0.5), xs, c)
    long = _flat_grad(im.PhantomGradient(steps=60, damping=0.5), xs, c)
    jfb = _flat_grad(im.JacobianFreeGradient(), xs, c)
    # The unrolled damped steps are a truncated Neumann series of the implicit inverse.
    np.testing.assert_allclose(long, exact, rtol=2e-3, atol=2e-5)
    assert _cosine(short, exact) < _cosine(long, exact)
    assert _cosine(jfb, exact) > 0


def test_deq_statistics_vmap_and_warm_start():
    deq = im.DEQ(_cell(), 6, solver=im.Anderson(1e-6, 1e-6))
    xs = jr.normal(jr.key(9), (5, 3))
    sol = eqx.filter_jit(lambda d, xs: jax.vmap(d)(xs))(deq, xs)
    assert sol.num_steps.shape == (5,)
    assert bool(jnp.all(sol.result == optx.RESULTS.successful))
    assert float(jnp.max(sol.residual)) < 1e-5
    # An independent check of the fixed point, example by example.
    for x, z in zip(xs, sol.value):
        np.testing.assert_allclose(_cell()(z, x), z, atol=1e-5)
    warm = deq(xs[0], sol.value[0])
    assert int(warm.num_steps) < int(sol.num_steps[0])


def test_non_convergence_raises_by_default_and_is_reported_otherwise():
    cell = im.TanhCell(6, 3, spectral_norm=0.99, key=jr.key(10))
    x = jnp.ones(3)
    solver = optx.FixedPointIteration(1e-9, 1e-9)
    with pytest.raises(eqx.EquinoxRuntimeError):
        im.DEQ(cell, 6, solver=solver, max_steps=3)(x)
    sol = im.DEQ(cell, 6, solver=solver, max_steps=3, throw=False)(x)
    assert sol.result == optx.RESULTS.nonlinear_max_steps_reached
    assert float(sol.residual) > 1e-9


def test_jacobian_penalty_is_unbiased():
    cell = _cell()
    z, x = jnp.full(6, 0.1), jnp.ones(3)
    exact = jnp.sum(jax.jacfwd(cell)(z, x) ** 2) / 6
    draws = jax.vmap(lambda k: im.jacobian_penalty(cell, z, x, key=k))(
        jr.split(jr.key(11), 4000)
    )
    stderr = jnp.std(draws) / 4000**0.5
    assert abs(float(jnp.mean(draws) - exact)) < 4 * float(stderr)
    grads = eqx.filter_grad(lambda c: im.jacobian_penalty(c, z, x, key=jr.key(0)))(cell)
    assert float(jnp.linalg.norm(grads.weight)) > 0


def test_deq_argument_errors():
    cell = _cell()
    with pytest.raises(ValueError, match="hidden_size"):
        im.DEQ(cell, 0)
    with pytest.raises(ValueError, match="steps"):
        im.PhantomGradient(steps=0)
    with pytest.raises(ValueError, match="spectral_norm"):
        im.TanhCell(4, 2, spectral_norm=-1.0, key=jr.key(0))
    deq = im.DEQ(cell, 6)
    with jaxtyping_off():
        with pytest.raises(ValueError, match="solver"):
            im.DEQ(cell, 6, solver=optx.BFGS(1e-6, 1e-6))
        with pytest.raises(ValueError, match="z0"):
            deq(jnp.ones(3), jnp.zeros(5))
        with pytest.raises(ValueError, match="hidden_size"):
            im.DEQ(cell, 5)(jnp.ones(3))


def _contraction(n, radius, key):
    k = jr.normal(key, (n, n), jnp.float64)
    return radius * k / jnp.max(jnp.abs(jnp.linalg.eigvals(k)))


def test_anderson_linear_solver_solves_transposes_and_stops_at_its_tolerance(x64):
    n = 20
    k = _contraction(n, 0.9, jr.key(20))
    a = jnp.eye(n) - k
    b = jr.normal(jr.key(21), (n,), jnp.float64)
    operator = lx.MatrixLinearOperator(a)
    tight = im.AndersonLinearSolver(1e-11, 1e-11, memory=n + 2)
    sol = lx.linear_solve(operator, b, tight)
    np.testing.assert_allclose(sol.value, np.linalg.solve(a, b), rtol=1e-9, atol=1e-9)
    sol_t = lx.linear_solve(operator.T, b, tight)
    np.testing.assert_allclose(sol_t.value, np.linalg.solve(a.T, b), rtol=1e-9, atol=1e-9)  # fmt: skip
    # Reverse mode through the solve uses the solver's transpose: d(c . A^-1 b)/db.
    c = jr.normal(jr.key(22), (n,), jnp.float64)
    grad = jax.grad(lambda b: c @ lx.linear_solve(operator, b, tight).value)(b)
    np.testing.assert_allclose(grad, np.linalg.solve(a.T, c), rtol=1e-9, atol=1e-9)
    # A loose tolerance stops early, with the residual below it.
    loose = im.AndersonLinearSolver(1e-3, 0.0)
    rough = lx.linear_solve(operator, b, loose)
    residual = jnp.linalg.norm(b - a @ rough.value)
    assert float(residual) < 1e-3 * float(jnp.linalg.norm(b))
    assert int(rough.stats["num_steps"]) < int(sol.stats["num_steps"])


def test_anderson_linear_solver_reports_non_convergence_and_bad_arguments(x64):
    # Eigenvalues of I - A spread over [-3, 3]: Richardson diverges, a short memory and
    # few steps cannot make up for it.
    n = 40
    q, _ = jnp.linalg.qr(jr.normal(jr.key(23), (n, n), jnp.float64))
    a = jnp.eye(n) - (q * jnp.linspace(-3.0, 3.0, n)[None, :]) @ q.T
    b = jr.normal(jr.key(24), (n,), jnp.float64)
    solver = im.AndersonLinearSolver(1e-10, 1e-10, memory=2, max_steps=10)
    operator = lx.MatrixLinearOperator(a)
    sol = lx.linear_solve(operator, b, solver, throw=False)
    assert sol.result == lx.RESULTS.max_steps_reached
    with pytest.raises(eqx.EquinoxRuntimeError):
        lx.linear_solve(operator, b, solver)
    with pytest.raises(ValueError, match="rtol"):
        im.AndersonLinearSolver(-1.0, 1e-6)
    with pytest.raises(ValueError, match="memory"):
        im.AndersonLinearSolver(1e-6, 1e-6, memory=0)
    with pytest.raises(ValueError, match="max_steps"):
        im.AndersonLinearSolver(1e-6, 1e-6, max_steps=0)
    with pytest.raises(ValueError, match="square"):
        lx.linear_solve(lx.MatrixLinearOperator(jnp.ones((3, 4))), jnp.ones(3), solver)


def test_default_implicit_gradient_equals_a_gmres_one(x64):
    cell = _cell(jnp.float64)
    xs = jr.normal(jr.key(25), (3, 3), jnp.float64)
    c = jr.normal(jr.key(26), (6,), jnp.float64)

    def flat(gradient):
        deq = im.DEQ(cell, 6, solver=im.Anderson(1e-13, 1e-13), gradient=gradient)
        grads = eqx.filter(eqx.filter_grad(_loss)(deq, xs, c), eqx.is_inexact_array)
        return jnp.concatenate([g.ravel() for g in jax.tree.leaves(grads)])

    gmres = flat(im.ImplicitGradient(lx.GMRES(rtol=1e-12, atol=1e-12, restart=20)))
    default = flat(im.ImplicitGradient())
    # The default solve stops at a residual of 1e-5 relative to its right-hand side.
    np.testing.assert_allclose(default, gmres, rtol=1e-4, atol=1e-6)
