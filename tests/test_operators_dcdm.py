import functools as ft

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
import numpy as np
import pytest

import jaxmodels.data as jmd
import jaxmodels.operators as op
from jaxmodels._core import RESULTS

from .helpers import jaxtyping_off


_N = 8  # an 8 x 8 grid of unknowns: 64 unknowns


@ft.cache
def _matrix() -> np.ndarray:
    """The dense 5-point matrix of -div(a grad u) on an 8 x 8 interior grid, with a
    random coefficient field (face coefficient: mean of the two nodes), Dirichlet
    boundary, h = 1 / 9."""
    rng = np.random.default_rng(0)
    a = np.exp(rng.normal(size=(_N + 2, _N + 2)))
    idx = np.arange(_N * _N).reshape(_N, _N)
    m = np.zeros((_N * _N, _N * _N))
    for i in range(_N):
        for j in range(_N):
            for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                face = 0.5 * (a[i + 1, j + 1] + a[i + 1 + di, j + 1 + dj])
                m[idx[i, j], idx[i, j]] += face
                ii, jj = i + di, j + dj
                if 0 <= ii < _N and 0 <= jj < _N:
                    m[idx[i, j], idx[ii, jj]] -= face
    return m * (_N + 1) ** 2


def _operator(dtype=jnp.float64) -> lx.AbstractLinearOperator:
    m = jnp.asarray(_matrix(), dtype)
    return lx.FunctionLinearOperator(
        lambda u: (m @ u.reshape(-1)).reshape(_N, _N),
        jax.ShapeDtypeStruct((_N, _N), dtype),
        tags=(lx.symmetric_tag, lx.positive_semidefinite_tag),
    )


def _rhs(dtype=jnp.float64, key=1) -> jax.Array:
    return jr.normal(jr.key(key), (_N, _N), dtype)


def _numpy_pcg(m, b, precond, steps):
    """Textbook preconditioned CG; returns the iterates and residual norms."""
    x = np.zeros_like(b)
    r = b.copy()
    z = precond * r
    p = z.copy()
    xs, norms = [x.copy()], [np.linalg.norm(r)]
    for _ in range(steps):
        mp = m @ p
        alpha = (r @ z) / (p @ mp)
        x = x + alpha * p
        r_new = r - alpha * mp
        z_new = precond * r_new
        p = z_new + (r_new @ z_new) / (r @ z) * p
        r, z = r_new, z_new
        xs.append(x.copy())
        norms.append(np.linalg.norm(r))
    return np.array(xs), np.array(norms)


def _ident(r):
    return r


class _Scaled(eqx.Module):
    weight: jax.Array

    def __call__(self, r):
        return self.weight * r


class _Exact(eqx.Module):
    inverse: jax.Array
    scale: float = 1.0

    def __call__(self, r):
        return self.scale * (self.inverse @ r.reshape(-1)).reshape(r.shape)


def _small_network(key=0) -> op.DCDMNetwork:
    # Parameters drawn in float64 (under the x64 fixture), the projection made nonzero
    # so the network is not the identity it starts as.
    net = op.DCDMNetwork(width=3, depth=1, activation=jnp.tanh, key=jr.key(key))
    w = 0.3 * jr.normal(
        jr.key(key + 100), net.project.weight.shape, net.project.weight.dtype
    )
    return eqx.tree_at(lambda n: n.project.weight, net, w)


# --- the theorem: conjugate directions from (preconditioned) residuals are CG ----------


@pytest.mark.parametrize("n_orthogonal", [2, 12])
def test_identity_and_jacobi_networks_are_cg_and_pcg(x64, n_orthogonal):
    m = _matrix()
    operator, b = _operator(), _rhs()
    jacobi = op.jacobi_preconditioner(operator)
    # The probed diagonal is the matrix's.
    np.testing.assert_allclose(
        jacobi.mv(jnp.ones((_N, _N))).reshape(-1), 1 / np.diag(m), rtol=1e-13
    )
    steps = 12
    weights = jnp.stack([jnp.ones((_N, _N)), jacobi.mv(jnp.ones((_N, _N)))])
    sols = eqx.filter_vmap(
        lambda w: op.dcdm_solve(
            operator,
            b,
            _Scaled(w),
            rtol=0.0,
            max_steps=steps,
            n_orthogonal=n_orthogonal,
            throw=False,
        )
    )(weights)
    b_np = np.asarray(b).reshape(-1)
    for k, precond in enumerate((np.ones(_N * _N), 1 / np.diag(m))):
        xs, norms = _numpy_pcg(m, b_np, precond, steps)
        np.testing.assert_allclose(
            sols.residual_history[k], norms / norms[0], rtol=1e-8
        )
        np.testing.assert_allclose(
            sols.value[k].reshape(-1), xs[-1], rtol=1e-8, atol=1e-12
        )
        assert int(sols.num_steps[k]) == steps
    assert jnp.all(sols.result == RESULTS.max_steps_reached)


def test_exact_inverse_network_converges_in_one_step(x64):
    inverse = jnp.asarray(np.linalg.inv(_matrix()))
    sol = op.dcdm_solve(_operator(), _rhs(), _Exact(inverse, 7.0), rtol=1e-10)
    assert int(sol.num_steps) == 1
    assert sol.result == RESULTS.successful
    assert float(sol.residual) < 1e-12
    exact = np.linalg.solve(_matrix(), np.asarray(_rhs()).reshape(-1))
    np.testing.assert_allclose(sol.value.reshape(-1), exact, rtol=1e-10)


def test_nonlinear_network_directions_are_a_orthogonal(x64):
    m = _matrix()
    sol = op.dcdm_solve(
        _operator(), _rhs(), _small_network(), rtol=0.0, max_steps=7, n_orthogonal=3,
        throw=False,
    )  # fmt: skip
    d = np.asarray(sol.directions).reshape(3, -1)
    gram = d @ m @ d.T
    scale = np.sqrt(np.outer(np.diag(gram), np.diag(gram)))
    assert np.abs(gram / scale - np.eye(3)).max() < 1e-10
    # Each step is an exact line search along a direction A-orthogonal to the last
    # ones, so the error's A-norm is non-increasing; and the history ends at the
    # recomputed residual, NaN-padded after the last step.
    h = np.asarray(sol.residual_history)
    assert int(sol.num_steps) == 7 and np.all(np.isfinite(h))
    np.testing.assert_allclose(h[-1], float(sol.residual), rtol=1e-8)
    x = np.asarray(sol.value).reshape(-1)
    exact = np.linalg.solve(m, np.asarray(_rhs()).reshape(-1))
    error = lambda y: (y - exact) @ m @ (y - exact)  # noqa: E731
    assert error(x) < error(np.zeros_like(x))


# --- the loss -------------------------------------------------------------------------


def test_loss_scale_invariance_exact_inverse_and_numpy(x64):
    m = _matrix()
    operator, b = _operator(), _rhs()
    inverse = jnp.asarray(np.linalg.inv(m))
    net = _small_network()
    losses = jax.jit(
        lambda b: jnp.stack(
            [
                op.dcdm_loss(_Exact(inverse, 1.0), operator, b),
                op.dcdm_loss(_Exact(inverse, -3.0), operator, b),
                op.dcdm_loss(net, operator, b),
                op.dcdm_loss(lambda r: 1e3 * net(r), operator, b),
                op.dcdm_loss(net, operator, 5.0 * b),
            ]
        )
    )(b)
    assert float(losses[0]) < 1e-20 and float(losses[1]) < 1e-20
    np.testing.assert_allclose(losses[3], losses[2], rtol=1e-10)
    np.testing.assert_allclose(losses[4], losses[2], rtol=1e-10)
    # Direct numpy evaluation of |u - (f.u / f.Af) A f|^2, u = b / |b|, f = net(N u)
    # (the network sees b at unit root mean square: sqrt(N^2) u).
    u = np.asarray(b).reshape(-1) / np.linalg.norm(np.asarray(b))
    f = np.asarray(eqx.filter_jit(net)(jnp.asarray(_N * u.reshape(_N, _N))))
    f = f.reshape(-1)
    af = m @ f
    expected = np.sum((u - (u @ af) / (af @ af) * af) ** 2)
    np.testing.assert_allclose(losses[2], expected, rtol=1e-10)
    assert float(losses[2]) > 1e-3  # not trivially zero


def test_loss_gradient_matches_finite_differences(x64):
    operator, b = _operator(), _rhs()
    net = _small_network()
    params, static = eqx.partition(net, eqx.is_inexact_array)

    def loss(p):
        return op.dcdm_loss(eqx.combine(p, static), operator, b)

    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    leaves, treedef = jax.tree.flatten(params)
    keys = jr.split(jr.key(5), len(leaves))
    v = jax.tree.unflatten(treedef, [jr.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])  # fmt: skip
    directional = sum(
        jnp.sum(g * d) for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(v))
    )
    eps = 1e-6
    shift = lambda s: jax.tree.map(lambda p, d: p + s * d, params, v)  # noqa: E731
    forward = jax.jit(loss)
    fd = (forward(shift(eps)) - forward(shift(-eps))) / (2 * eps)
    np.testing.assert_allclose(directional, fd, rtol=1e-5)
    assert np.isfinite(float(value))


# --- the network ----------------------------------------------------------------------


def test_network_one_parameter_set_for_every_grid_size():
    net = op.DCDMNetwork(width=4, depth=1, key=jr.key(0))
    # The number of levels grows with the grid: coarsest grid at most 2 points a side.
    assert [net.levels(n, n) for n in (2, 3, 8, 30, 62)] == [0, 1, 2, 4, 5]
    assert net.levels(7, 30) == 4
    call = eqx.filter_jit(lambda net, r: net(r))
    r30, r62 = jr.normal(jr.key(1), (30, 30)), jr.normal(jr.key(2), (62, 62))
    # The identity before training, at every size (the solver starts as CG).
    for r in (jr.normal(jr.key(3), (7, 9)), r30, r62):
        np.testing.assert_array_equal(call(net, r), r)
    with jax.enable_x64(True):
        r = jr.normal(jr.key(1), (6, 6), jnp.float64)
        assert call(net, r).dtype == jnp.float64
    net = eqx.tree_at(
        lambda n: n.project.weight,
        net,
        jr.normal(jr.key(4), net.project.weight.shape),
    )
    # The same parameters at 30^2 (4 levels) and 62^2 (5 levels); the receptive field
    # spans the whole grid at both, so a change in one corner reaches the opposite one
    # (a fixed-depth U-Net's would not at 62^2).
    for r in (r30, r62):
        n = r.shape[0]
        out = call(net, r)
        assert out.shape == r.shape and bool(jnp.all(jnp.isfinite(out)))
        assert float(jnp.max(jnp.abs(out - r))) > 1e-2
        moved = call(net, r.at[0, 0].add(1.0)) - out
        assert float(jnp.abs(moved[n - 1, n - 1])) > 1e-6
    # Bias-free convolutions and ReLU: positively homogeneous of degree one.
    scaled, expected = call(net, 3.0 * r62), 3.0 * call(net, r62)
    assert float(jnp.max(jnp.abs(scaled - expected))) <= 1e-5 * float(jnp.max(jnp.abs(expected)))  # fmt: skip
    with jaxtyping_off(), pytest.raises(ValueError, match="`r`"):
        net(jnp.ones(8))


def test_prolongation_is_bilinear_and_restriction_its_partner():
    from jaxmodels.operators._dcdm import _prolong, _restrict

    # Cell-centred bilinear interpolation reproduces linear functions away from the
    # (zero) boundary: coarse centres at 2i + 1/2, fine centres at i.
    i = jnp.arange(6.0)
    coarse = (2 * i + 0.5)[:, None] + 3 * (2 * i + 0.5)[None, :]
    fine = _prolong(coarse[None])[0]
    j = jnp.arange(12.0)
    np.testing.assert_allclose(
        fine[1:-1, 1:-1], (j[:, None] + 3 * j[None, :])[1:-1, 1:-1], rtol=1e-6
    )
    np.testing.assert_allclose(_restrict(fine[None])[0][1:-1, 1:-1], coarse[1:-1, 1:-1], rtol=1e-6)  # fmt: skip


def test_network_bad_arguments():
    with pytest.raises(ValueError, match="`width`"):
        op.DCDMNetwork(width=0, key=jr.key(0))
    with pytest.raises(ValueError, match="`coarsest`"):
        op.DCDMNetwork(coarsest=0, key=jr.key(0))


# --- the safeguard --------------------------------------------------------------------


def _skew(r):
    # A skew-symmetric map: its output is orthogonal to r, a useless direction.
    return jnp.roll(r, 1, axis=0) - jnp.roll(r, -1, axis=0)


def test_fallback_to_the_residual_is_cg_and_without_it_the_solve_stalls(x64):
    operator, b = _operator(), _rhs()
    solve = ft.partial(op.dcdm_solve, operator, b, _skew, rtol=0.0, max_steps=10, throw=False)  # fmt: skip
    guarded, unguarded = solve(), solve(min_cosine=0.0)
    # Every proposal is orthogonal to the residual: each step falls back to r, which
    # is CG (the theorem checked above), against textbook CG in numpy.
    _, norms = _numpy_pcg(_matrix(), np.asarray(b).reshape(-1), np.ones(_N * _N), 10)
    np.testing.assert_allclose(guarded.residual_history, norms / norms[0], rtol=1e-8)
    assert int(guarded.num_fallbacks) == 10
    # Without the safeguard the solve stalls: (nearly) zero steps, the residual stays
    # near |b| while CG's falls by orders of magnitude.
    assert int(unguarded.num_fallbacks) == 0
    h = np.asarray(unguarded.residual_history)
    assert np.all(h[np.isfinite(h)] > 0.9) and norms[-1] / norms[0] < 0.1
    assert unguarded.result != RESULTS.successful


# --- composition, failures and bad inputs --------------------------------------------


def test_jit_vmap_over_right_hand_sides():
    operator = _operator(jnp.float32)
    bs = jr.normal(jr.key(2), (3, _N, _N))
    net = _Scaled(jr.uniform(jr.key(3), (_N, _N), minval=0.5, maxval=2.0))
    solve = ft.partial(op.dcdm_solve, operator, network=net, rtol=1e-5, max_steps=300)
    batched = jax.jit(jax.vmap(lambda b: solve(b)))(bs)
    m = _matrix().astype(np.float32)
    residual = bs - jnp.einsum("ij,bj->bi", m, batched.value.reshape(3, -1)).reshape(bs.shape)  # fmt: skip
    norms = jnp.linalg.norm(residual.reshape(3, -1), axis=1)
    assert jnp.all(norms <= 2e-5 * jnp.linalg.norm(bs.reshape(3, -1), axis=1))
    assert jnp.all(batched.result == RESULTS.successful)


def test_max_steps_reached_breakdown_and_nonfinite_inputs():
    operator, b = _operator(jnp.float32), _rhs(jnp.float32)
    # Weight 1: CG, which needs more than 3 steps; weight 0: the zero direction.
    sol = jax.vmap(
        lambda w: op.dcdm_solve(operator, b, _Scaled(w), max_steps=3, throw=False)
    )(jnp.stack([jnp.ones_like(b), jnp.zeros_like(b)]))
    assert bool((sol.result == RESULTS.max_steps_reached)[0])
    assert int(sol.num_steps[0]) == 3 and float(sol.residual[0]) > 1e-3
    assert bool((sol.result == RESULTS.breakdown)[1]) and int(sol.num_steps[1]) == 1
    solve = ft.partial(op.dcdm_solve, operator, network=_ident, max_steps=3)
    with pytest.raises(eqx.EquinoxRuntimeError, match="maximum number of solver steps"):
        solve(b)
    with pytest.raises(eqx.EquinoxRuntimeError, match="`vector`"):
        solve(b.at[2, 3].set(jnp.nan))
    with pytest.raises(eqx.EquinoxRuntimeError, match="`y0`"):
        solve(b, y0=jnp.full((_N, _N), jnp.inf))
    # A warm start at the solution, and b = 0, take no step.
    y0 = jr.normal(jr.key(4), (_N, _N))
    warm = solve(operator.mv(y0), y0=y0)
    zero = solve(jnp.zeros_like(b))
    assert int(warm.num_steps) == 0 and int(zero.num_steps) == 0
    assert warm.result == RESULTS.successful and zero.result == RESULTS.successful
    assert float(jnp.max(jnp.abs(zero.value))) == 0.0


def test_bad_arguments_name_the_argument():
    operator, b = _operator(jnp.float32), _rhs(jnp.float32)
    ident = lambda r: r  # noqa: E731
    with jaxtyping_off():
        with pytest.raises(ValueError, match="`vector`"):
            op.dcdm_solve(operator, b.reshape(-1), ident)
        with pytest.raises(ValueError, match="`vector`"):
            op.dcdm_loss(ident, operator, b.reshape(-1))
        with pytest.raises(ValueError, match="`operator`"):
            op.dcdm_solve(np.eye(_N * _N), b, ident)
        with pytest.raises(ValueError, match="`y0`"):
            op.dcdm_solve(operator, b, ident, y0=jnp.ones(3))
    with pytest.raises(ValueError, match="`operator`"):
        op.dcdm_solve(operator, jnp.ones((4, 4)), ident)
    with pytest.raises(ValueError, match="`network"):
        op.dcdm_solve(operator, b, lambda r: r[:2])
    with pytest.raises(ValueError, match="`network"):
        op.dcdm_loss(lambda r: r.reshape(-1), operator, b)
    for kw, name in (({"max_steps": 0}, "max_steps"), ({"n_orthogonal": 0}, "n_orthogonal"), ({"rtol": -1.0}, "rtol"), ({"min_cosine": 1.0}, "min_cosine")):  # fmt: skip
        with pytest.raises(ValueError, match=f"`{name}`"):
            op.dcdm_solve(operator, b, ident, **kw)
    with pytest.raises(ValueError, match="`stencil_radius`"):
        op.jacobi_preconditioner(operator, stencil_radius=0)
    with pytest.raises(ValueError, match="`operator`"):
        op.jacobi_preconditioner(
            lx.MatrixLinearOperator(jnp.eye(3), lx.positive_semidefinite_tag)
        )
    negative = lx.FunctionLinearOperator(
        lambda u: -u, jax.ShapeDtypeStruct((3, 3), jnp.float32)
    )
    with pytest.raises(eqx.EquinoxRuntimeError, match="non-positive diagonal"):
        op.jacobi_preconditioner(negative)


def test_matched_stopping_rule_of_the_lineax_baselines(x64):
    # The experiment's lineax CG and Jacobi-PCG, on the data module's operator, stop at
    # the first step where |b - A x| <= 1e-6 |b|, as textbook (P)CG in numpy does.
    from jaxmodels.experiments.operators.dcdm import _lineax_cg

    akey, bkey = jr.split(jr.key(0))
    a = jnp.exp(jr.normal(akey, (12, 12), jnp.float64))
    b = jr.normal(bkey, (10, 10), jnp.float64)

    @jax.jit
    def counts(a, b):
        operator = jmd.diffusion_operator_2d(a)
        jacobi = op.jacobi_preconditioner(operator)
        cg, cg_res = _lineax_cg(operator, b, None)
        pcg, pcg_res = _lineax_cg(operator, b, jacobi)
        return jnp.stack([cg, pcg]), jnp.stack([cg_res, pcg_res]), operator.as_matrix()

    steps, residuals, m = (np.asarray(v) for v in counts(a, b))
    b_np = np.asarray(b).reshape(-1)
    for count, precond in zip(steps, (np.ones(100), 1 / np.diag(m))):
        _, norms = _numpy_pcg(m, b_np, precond, 200)
        expected = int(np.argmax(norms <= 1e-6 * norms[0]))
        assert expected > 10 and abs(int(count) - expected) <= 1
    assert steps[1] < steps[0]
    assert np.all(residuals <= 1e-6)
