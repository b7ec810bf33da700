import functools as ft

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from jaxmodels import operators as op
from jaxmodels._core import tree_size

from .helpers import jaxtyping_off


@ft.cache
def _periodic_model() -> op.MgNO:
    return op.MgNO(
        2,
        1,
        width=3,
        depth=2,
        levels=3,
        smoothing_steps=(2, 1),
        boundary="periodic",
        key=jr.key(5),
    )


def _classical(n: int, d: int, levels: int, *, omega: float) -> op.VCycle:
    """The V-cycle with textbook weights for `-Laplacian u = f`, zero Dirichlet data,
    on the `n**d` interior nodes of a grid of mesh size `h = 1 / (n + 1)`."""
    v = op.VCycle(
        1, 1, levels=levels, smoothing_steps=1, num_spatial_dims=d, key=jr.key(0)
    )
    lap1, weigh1, interp1 = [-1.0, 2.0, -1.0], [0.25, 0.5, 0.25], [0.5, 1.0, 0.5]
    if d == 1:
        lap, weigh, interp, centre = np.array(lap1), weigh1, interp1, [0.0, 1.0, 0.0]
    else:
        lap = np.array([[0.0, -1.0, 0.0], [-1.0, 4.0, -1.0], [0.0, -1.0, 0.0]])
        weigh, interp = np.outer(weigh1, weigh1), np.outer(interp1, interp1)
        centre = np.zeros((3, 3))
        centre[1, 1] = 1.0
    hs = 2.0 ** np.arange(levels) / (n + 1)
    a = np.stack([lap / h**2 for h in hs])[:, None, None]
    # Damped Jacobi: the inverse diagonal 2d / h^2, times omega.
    b = np.stack([[omega * h**2 / (2 * d) * np.asarray(centre)] * 2 for h in hs])
    r = np.stack([weigh] * (levels - 1))[:, None, None]
    p = np.stack([interp] * (levels - 1))[:, None, None]
    weights = tuple(jnp.asarray(w) for w in (a, b[:, :, None, None], r, p))
    return eqx.tree_at(lambda m: (m.a, m.b, m.r, m.p), v, weights)


def _laplacian_1d(n: int) -> np.ndarray:
    h = 1.0 / (n + 1)
    return (2 * np.eye(n) - np.eye(n, k=1) - np.eye(n, k=-1)) / h**2


@pytest.mark.parametrize("d,n", [(1, 63), (2, 31), (2, 63)])
def test_classical_weights_give_grid_independent_multigrid(x64, d, n):
    # With A the finite-difference Laplacian, B damped Jacobi, R full weighting and P
    # linear interpolation, the V-cycle is classical multigrid: as an iteration
    # u <- u + V(f - A u) it reduces the residual by a factor below 0.5 per cycle on
    # every grid and converges to the direct solve (dense numpy, or the eigenbasis of
    # the 1-D Laplacian for the 2-D Kronecker sum).
    levels = int(np.log2(n + 1))
    vcycle = _classical(n, d, levels, omega=2 / 3 if d == 1 else 0.8)
    f = jnp.asarray(np.random.default_rng(1).standard_normal((1,) + (n,) * d))
    lap = _laplacian_1d(n)

    def apply(u):  # the Laplacian as a matrix, independent of the convolutions
        u = u[0]
        return lap @ u if d == 1 else lap @ u + u @ lap

    @jax.jit
    def iterate(f):
        def step(u, _):
            u = u + vcycle(f - apply(u)[None])
            return u, u

        _, us = lax.scan(step, jnp.zeros_like(f), length=15)
        return us

    us = iterate(f)
    residuals = [np.linalg.norm(np.asarray(f)[0])]
    residuals += [np.linalg.norm(np.asarray(f)[0] - apply(np.asarray(u))) for u in us]
    ratios = np.array(residuals[1:]) / np.array(residuals[:-1])
    assert ratios.max() < 0.5, ratios
    if d == 1:
        exact = np.linalg.solve(lap, np.asarray(f)[0])
    else:
        lam, q = np.linalg.eigh(lap)
        exact = q @ ((q.T @ np.asarray(f)[0] @ q) / (lam[:, None] + lam[None, :])) @ q.T
    np.testing.assert_allclose(
        us[-1][0], exact, rtol=0, atol=1e-6 * np.abs(exact).max()
    )


def _random_vcycle(boundary: str, d: int, *, levels: int = 3, key=jr.key(3)):
    return op.VCycle(
        2,
        3,
        levels=levels,
        smoothing_steps=(2, 1),
        boundary=boundary,
        num_spatial_dims=d,
        key=key,
    )


@pytest.mark.parametrize(
    "boundary,d,n",
    [("dirichlet", 2, 15), ("neumann", 1, 17)],
)
def test_vcycle_is_linear(boundary, d, n):
    vcycle = _random_vcycle(boundary, d)
    u, v = np.random.default_rng(4).standard_normal((2, 2) + (n,) * d, np.float32)
    outs = eqx.filter_jit(lambda m, x: jax.vmap(m)(x))(
        vcycle, jnp.asarray(np.stack([u, v, 1.5 * u - 2.5 * v]))
    )
    scale = float(jnp.max(jnp.abs(outs)))
    assert scale > 1e-2
    np.testing.assert_allclose(
        outs[2], 1.5 * outs[0] - 2.5 * outs[1], rtol=0, atol=1e-5 * scale
    )


def test_periodic_translation_equivariance():
    # Circular padding: shifting the input by a multiple of 2**(levels - 1) points (so
    # that coarse points map to coarse points) shifts the output of the whole network.
    model = _periodic_model()
    x = np.random.default_rng(6).standard_normal((2, 16, 16), np.float32)
    inputs = np.stack([x, np.roll(x, (4, 8), axis=(1, 2)), np.roll(x, 1, axis=1)])
    outs = eqx.filter_jit(lambda m, x: jax.vmap(m)(x))(model, jnp.asarray(inputs))
    y, y_shifted, y_one = np.asarray(outs)
    assert y.std() > 1e-2
    np.testing.assert_allclose(y_shifted, np.roll(y, (4, 8), axis=(1, 2)), atol=1e-5)
    # A shift by one point moves the coarse grid: not an equivariance of the V-cycle.
    assert np.abs(y_one - np.roll(y, 1, axis=1)).max() > 1e-3


def _stencil(boundary: str, d: int, weight) -> op.VCycle:
    """One grid, one smoothing step from zero: the V-cycle is `f -> B f`."""
    v = op.VCycle(
        1,
        1,
        levels=1,
        smoothing_steps=(1, 0),
        boundary=boundary,
        num_spatial_dims=d,
        key=jr.key(0),
    )
    return eqx.tree_at(lambda m: m.b, v, jnp.asarray(weight)[None, None, None, None])


@pytest.mark.parametrize("boundary", ["dirichlet", "neumann", "periodic"])
def test_boundary_conditions_through_the_padding(boundary):
    # The 3-point Laplacian stencil [-1, 2, -1] applied by the network to a ramp
    # x_i = i (n = 8 points): zero inside for every boundary condition; at the ends the
    # ghost values are 0 (Dirichlet: -1 and n), the mirror images x_1 and x_{n-2}
    # (Neumann: -2 and +2), or the other end (periodic: -n and +n).
    n = 8
    ramp = jnp.arange(n, dtype=jnp.float32)[None]
    out = _stencil(boundary, 1, [-1.0, 2.0, -1.0])(ramp)[0]
    ends = {"dirichlet": (-1, n), "neumann": (-2, 2), "periodic": (-n, n)}[boundary]
    expected = np.zeros(n)
    expected[0], expected[-1] = ends
    np.testing.assert_allclose(out, expected, atol=1e-5)
    # In 2-D, the 5-point stencil on a constant: zero (Neumann, periodic) or, with
    # zero Dirichlet data, the number of missing neighbours (1 on edges, 2 in corners).
    lap = jnp.array([[0.0, -1.0, 0.0], [-1.0, 4.0, -1.0], [0.0, -1.0, 0.0]])
    out = _stencil(boundary, 2, lap)(jnp.ones((1, 5, 5)))[0]
    expected = np.zeros((5, 5))
    if boundary == "dirichlet":
        expected[0] += 1
        expected[-1] += 1
        expected[:, 0] += 1
        expected[:, -1] += 1
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_parameter_count():
    w, levels, (pre, post) = 3, 3, (2, 1)
    model = _periodic_model()

    def layer(ci, co):  # A, B, R, P stencils (3x3), pointwise map and bias
        vcycle = 9 * (levels * ci * co * (1 + pre + post))
        vcycle += 9 * (levels - 1) * (ci * ci + co * co)
        return vcycle + ci * co + co

    expected = layer(2, w) + layer(w, w) + (w * 1 + 1)
    assert model.num_parameters == expected == tree_size(model)


def test_jit_vmap_grad(x64):
    model = op.MgNO(1, 2, width=3, depth=2, levels=2, num_spatial_dims=1, key=jr.key(7))
    rng = np.random.default_rng(8)
    x = jnp.asarray(rng.standard_normal((3, 1, 7)))
    target = jnp.asarray(rng.standard_normal((3, 2, 7)))
    eps = 1e-5

    def loss(model):
        return jnp.mean((jax.vmap(model)(x) - target) ** 2)

    @eqx.filter_jit
    def check(model):
        # vmap against lax.map (a scan, no batching rule); the gradient along a fixed
        # direction in parameter space against central finite differences.
        batched, mapped = jax.vmap(model)(x), lax.map(model, x)
        params, static = eqx.partition(model, eqx.is_inexact_array)
        direction = jax.tree_util.tree_map(
            lambda p: jnp.cos(1.7 * jnp.arange(p.size, dtype=p.dtype)).reshape(p.shape),
            params,
        )

        def along(t):
            moved = jax.tree_util.tree_map(lambda p, v: p + t * v, params, direction)
            return loss(eqx.combine(moved, static))

        grads = eqx.filter_grad(loss)(model)
        grad_dir = sum(
            jnp.vdot(g, v)
            for g, v in zip(
                jax.tree_util.tree_leaves(eqx.filter(grads, eqx.is_inexact_array)),
                jax.tree_util.tree_leaves(direction),
            )
        )
        return batched, mapped, grad_dir, (along(eps) - along(-eps)) / (2 * eps)

    batched, mapped, grad_dir, fd = check(model)
    np.testing.assert_allclose(batched, mapped, rtol=1e-10, atol=1e-12)
    assert abs(float(grad_dir)) > 1e-3
    np.testing.assert_allclose(grad_dir, fd, rtol=1e-6)


@pytest.mark.parametrize(
    "make,name",
    [
        (
            lambda: op.MgNO(1, 1, width=4, levels=3, boundary="robin", key=jr.key(0)),
            "boundary",
        ),  # fmt: skip
        (lambda: op.MgNO(1, 1, width=4, levels=0, key=jr.key(0)), "levels"),
        (lambda: op.MgNO(1, 1, width=0, key=jr.key(0)), "width"),
        (lambda: op.MgNO(1, 1, width=4, depth=0, key=jr.key(0)), "depth"),
        (lambda: op.MgNO(0, 1, width=4, key=jr.key(0)), "in_channels"),
        (
            lambda: op.MgNO(1, 1, width=4, num_spatial_dims=3, key=jr.key(0)),
            "num_spatial_dims",
        ),  # fmt: skip
        (
            lambda: op.MgNO(1, 1, width=4, smoothing_steps=(0, 1), key=jr.key(0)),
            "smoothing_steps",
        ),  # fmt: skip
        (
            lambda: op.MgNO(1, 1, width=4, smoothing_steps=(1, 1, 1), key=jr.key(0)),
            "smoothing_steps",
        ),  # fmt: skip
        (
            lambda: op.VCycle(1, 1, levels=2, smoothing_steps=-1, key=jr.key(0)),
            "smoothing_steps",
        ),  # fmt: skip
    ],
)
def test_bad_arguments(make, name):
    with jaxtyping_off(), pytest.raises(ValueError, match=f"`{name}`"):
        make()


@pytest.mark.parametrize(
    "boundary,shape,name",
    [
        ("dirichlet", (1, 16, 16), "levels"),  # Dirichlet wants 2**k - 1 points
        ("dirichlet", (1, 7, 7), "levels"),  # 7 = 2**3 - 1 but levels=4 needs 15
        ("neumann", (1, 16, 16), "levels"),  # Neumann wants 2**k + 1
        ("periodic", (1, 17, 17), "levels"),
        ("periodic", (2, 16, 16), "in_channels"),
        ("periodic", (1, 16), "x"),
    ],
)
def test_bad_inputs(boundary, shape, name):
    # Built abstractly: the checks run before any computation.
    model = eqx.filter_eval_shape(
        op.MgNO, 1, 1, width=2, depth=1, levels=4, boundary=boundary, key=jr.key(0)
    )
    with jaxtyping_off(), pytest.raises(ValueError, match=f"`{name}`"):
        model(jnp.zeros(shape))
