"""Analytic NNGP/NTK `stax` layers: agreement with neural-tangents 0.6.5 on a table of
architectures (reference values in `tests/data/kernels_reference.npz`, made by
`bench/kernels_reference/make_reference.py`), Monte Carlo convergence of finite
networks built with the layers' own `init_fn`/`apply_fn`, the closed forms against
Gauss-Hermite quadrature, the diagonal path, jit/vmap/grad, bad inputs."""

import functools as ft
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from jaxmodels.kernels import Kernel, stax


_REFERENCE = Path(__file__).parent / "data" / "kernels_reference.npz"


@ft.cache
def _reference():
    with np.load(_REFERENCE) as data:
        arrays = {k: data[k] for k in data.files}
    return json.loads(str(arrays.pop("table"))), arrays


def _build(layers):
    """The `stax.serial` network of a layer table (as in make_reference.py)."""

    def one(layer):
        if layer[0] in ("serial", "parallel"):
            return getattr(stax, layer[0])(*(one(sub) for sub in layer[1]))
        name, args, kwargs = layer
        args = [tuple(a) if isinstance(a, list) else a for a in args]
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
        return getattr(stax, name)(*args, **kwargs)

    return stax.serial(*(one(layer) for layer in layers))


@ft.partial(jax.jit, static_argnums=0)
def _all_kernels(kind):
    """Every architecture on one input set, in one compiled program.

    The inputs are constants of the program (not arguments), so that they are
    concrete, the NaN check runs on the host, and the program can be cached.
    """
    table, ref = _reference()
    x1, x2 = ref[f"inputs/{kind}/x1"], ref[f"inputs/{kind}/x2"]
    out = {}
    for name, (kind_, layers) in table.items():
        if kind_ == kind:
            kernel_fn = _build(layers)[2]
            out[name] = (
                kernel_fn(x1, None, ("nngp", "ntk")),
                kernel_fn(x1, x2, ("nngp", "ntk")),
                kernel_fn(x1, None, "nngp", diagonal=True),
            )
    return out


@pytest.mark.parametrize("kind", ["dense", "seq", "image"])
def test_matches_neural_tangents(kind, x64):
    """Max abs error < 1e-6 (measured: < 1e-12) against neural-tangents 0.6.5."""
    _, ref = _reference()
    results = _all_kernels(kind)
    assert len(results) >= 1
    for name, (self_k, cross_k, diag) in results.items():
        for case, k in (("self", self_k), ("cross", cross_k)):
            for get in ("nngp", "ntk"):
                expect = ref[f"{name}/{case}/{get}"]
                got = np.asarray(getattr(k, get))
                assert got.shape == expect.shape, (name, case, get)
                error = np.max(np.abs(got - expect))
                assert error < 1e-6, (name, case, get, error)
        # The O(n) diagonal path against neural-tangents' `cov1`.
        error = np.max(np.abs(np.asarray(diag) - ref[f"{name}/diag/nngp"]))
        assert error < 1e-6, (name, "diag", error)
        # x2 = None: symmetric positive semi-definite (a theorem, not NT's word).
        for get in ("nngp", "ntk"):
            mat = np.asarray(getattr(self_k, get))
            assert np.allclose(mat, mat.T, atol=1e-12), (name, get)
            assert np.linalg.eigvalsh(mat).min() > -1e-9 * np.abs(mat).max()


def _mlp_hidden(n):
    return [stax.Dense(n, 1.5, 0.1), stax.Relu(), stax.Dense(n, 1.5, 0.1), stax.Relu()]


_X = np.random.default_rng(1).normal(size=(4, 3)).astype(np.float32)


@ft.partial(jax.jit, static_argnums=(0, 1))
def _empirical_kernels(width, inits, key):
    """Per-network NNGP and NTK of a 2-hidden-layer ReLU MLP, `inits` initialisations.

    The NNGP of a network is the covariance of its outputs over the readout weights,
    `W_std^2 phi(h2) phi(h2)^T / n + b_std^2`; the NTK is `J J^T` with `J` the
    Jacobian of the (scalar) output at the 4 inputs in all parameters.
    """
    init_fn, apply_fn, _ = stax.serial(*_mlp_hidden(width), stax.Dense(1, 1.5, 0.1))
    _, hidden_fn, _ = stax.serial(*_mlp_hidden(width))

    def one(k):
        _, params = init_fn(k, _X.shape)
        features = hidden_fn(params[:4], _X)
        nngp = 1.5**2 * features @ features.T / width + 0.1**2
        jac = jax.jacrev(lambda p: apply_fn(p, _X)[:, 0])(params)
        jac = jnp.concatenate([j.reshape(4, -1) for j in jax.tree.leaves(jac)], 1)
        return nngp, jac @ jac.T

    return jax.lax.map(one, jr.split(key, inits))


# Width 4096 with 100 initialisations takes over a minute on 2 CPU cores (each one
# draws 16.8M weights and materialises a 4 x 16.8M Jacobian): 40 at 1024 and 6 at
# 4096 keep the test within its budget.
_WIDTHS = ((256, 100), (1024, 40), (4096, 6))


def test_monte_carlo_converges_to_analytic_kernels():
    from scipy.stats import t as student_t

    _, _, kernel_fn = stax.serial(*_mlp_hidden(1), stax.Dense(1, 1.5, 0.1))
    analytic = kernel_fn(jnp.asarray(_X), None, ("nngp", "ntk"))
    for get in ("nngp", "ntk"):
        means, ses = [], []
        for i, (width, inits) in enumerate(_WIDTHS):
            empirical = np.asarray(
                _empirical_kernels(width, inits, jr.key(i))[0 if get == "nngp" else 1]
            )
            target = np.asarray(getattr(analytic, get))
            error = np.linalg.norm(empirical - target, axis=(1, 2))
            error = error / np.linalg.norm(target)
            means.append(error.mean())
            ses.append(error.std(ddof=1) / np.sqrt(inits))
            if width == 4096:
                # Unbiased in the limit: the mean kernel agrees entrywise with the
                # analytic one, |t| below Student's t quantile (inits - 1 degrees of
                # freedom, Bonferroni over the 10 distinct entries, 1% in all; the
                # O(1/n) bias is ~1e-2 of a standard error here).
                se = empirical.std(0, ddof=1) / np.sqrt(inits)
                t = np.abs(empirical.mean(0) - target) / se
                assert np.all(t < student_t.ppf(1 - 0.005 / 10, inits - 1)), (get, t)
        widths = np.log([w for w, _ in _WIDTHS])
        slope = np.polyfit(widths, np.log(means), 1)[0]
        # Fluctuations are O(n^-1/2) (central limit theorem over the n units of a
        # layer). The standard error of each log-mean is se/mean (<= 0.2 with 10
        # inits at 4096), giving a slope standard error of about 0.07 over the
        # factor 16 in width: [-0.75, -0.3] is 2.5-3 of them either side of -1/2.
        slope_se = np.sqrt(
            np.sum(((widths - widths.mean()) * np.array(ses) / np.array(means)) ** 2)
        ) / np.sum((widths - widths.mean()) ** 2)
        assert -0.75 < slope < -0.3, (get, slope, slope_se, means)
        assert slope_se < 0.12, (get, slope_se)
        assert means[-1] < 0.1, (get, means)


def test_conv_apply_fn_matches_kernel_fn():
    """Finite conv networks from `init_fn`/`apply_fn` against the analytic NNGP."""
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 5, 3, 2)), jnp.float32)
    init_fn, apply_fn, kernel_fn = stax.serial(
        stax.Conv(256, (3, 2), (2, 1), "SAME", W_std=1.5, b_std=0.1),
        stax.Erf(),
        stax.Conv(256, (2, 2), padding="CIRCULAR", W_std=1.2, b_std=0.2),
    )
    shape, params = init_fn(jr.key(0), x.shape)
    assert shape == apply_fn(params, x).shape == (2, 3, 3, 256)

    @jax.jit
    def covariances(keys):
        def one(k):
            f = apply_fn(init_fn(k, x.shape)[1], x)
            return jnp.einsum("ahwc,bHWc->abhHwW", f, f) / f.shape[-1]

        return jax.vmap(one)(keys)

    covs = np.asarray(covariances(jr.split(jr.key(3), 16)))
    nngp = np.asarray(kernel_fn(x, None, "nngp"))
    assert nngp.shape == covs.shape[1:] == (2, 2, 3, 3, 3, 3)
    se = covs.std(0, ddof=1) / np.sqrt(covs.shape[0])
    assert np.all(np.abs(covs.mean(0) - nngp) < 5 * se + 1e-3 * np.abs(nngp).max())
    # The test can fail: the wrong padding is many standard errors away.
    wrong = stax.serial(
        stax.Conv(1, (3, 2), (2, 1), "SAME", W_std=1.5, b_std=0.1),
        stax.Erf(),
        stax.Conv(1, (2, 2), padding="SAME", W_std=1.2, b_std=0.2),
    )[2](x, None, "nngp")
    assert np.max(np.abs(covs.mean(0) - np.asarray(wrong)) / se) > 10


def _gauss_hermite(fn, cov, nodes=80):
    t, w = np.polynomial.hermite.hermgauss(nodes)
    z1, z2 = np.meshgrid(np.sqrt(2) * t, np.sqrt(2) * t, indexing="ij")
    chol = np.linalg.cholesky(cov)
    u = chol[0, 0] * z1
    v = chol[1, 0] * z1 + chol[1, 1] * z2
    return np.sum(np.outer(w, w) * fn(u) * fn(v)) / np.pi


def test_closed_forms_against_quadrature(x64):
    from scipy.special import erf
    from scipy.stats import norm

    x = jnp.array([[1.1, 0.3], [0.4, -0.9]])
    cov = np.asarray(x @ x.T / 2)
    a, b, c = 1.2, 0.7, 0.1
    cases = {
        "gelu": (
            stax.Gelu(),
            lambda z: z * norm.cdf(z),
            lambda z: norm.cdf(z) + z * norm.pdf(z),
        ),
        "erf": (
            stax.Erf(a, b, c),
            lambda z: a * erf(b * z) + c,
            lambda z: a * b * 2 / np.sqrt(np.pi) * np.exp(-((b * z) ** 2)),
        ),
    }
    for name, (layer, fn, dfn) in cases.items():
        k = stax.serial(stax.Dense(3), layer)[2](x, None, ("nngp", "ntk"))
        for i, j in ((0, 0), (0, 1), (1, 1)):
            sub = cov[np.ix_([i, j], [i, j])] + 1e-14 * np.eye(2)
            expect_nngp = _gauss_hermite(fn, sub)
            # After a Dense layer on the inputs the NTK is the input covariance.
            expect_ntk = cov[i, j] * _gauss_hermite(dfn, sub)
            assert abs(float(k.nngp[i, j]) - expect_nngp) < 1e-9, name
            assert abs(float(k.ntk[i, j]) - expect_ntk) < 1e-9, name


def test_diagonal_path_equals_diagonal_of_full_kernel():
    x = jr.normal(jr.key(4), (5, 6, 2))
    _, _, kernel_fn = stax.serial(
        stax.Conv(4, (3,), padding="SAME", b_std=0.1),
        stax.Gelu(),
        stax.Conv(4, (2,), strides=(2,), W_std=1.4),
    )
    full = kernel_fn(x, None, ("nngp", "ntk"))
    diag = kernel_fn(x, None, ("nngp", "ntk"), diagonal=True)
    for get in ("nngp", "ntk"):
        got, mat = getattr(diag, get), getattr(full, get)
        assert got.shape == (5, 3, 3)
        expect = mat[jnp.arange(5), jnp.arange(5)]
        assert jnp.allclose(got, expect, rtol=1e-5, atol=1e-6)
    k = kernel_fn(x, None, diagonal=True)
    assert isinstance(k, Kernel) and k.diagonal


def _relu_mlp():
    return stax.serial(
        stax.Dense(512, 1.5, 0.05),
        stax.Relu(),
        stax.Dense(512, 1.5, 0.05),
        stax.Relu(),
        stax.Dense(1, 1.5, 0.05),
    )


def test_jit_vmap_grad(x64):
    x1 = jr.normal(jr.key(5), (3, 4))
    x2 = jr.normal(jr.key(6), (3, 4))
    _, _, kernel_fn = _relu_mlp()
    eager = kernel_fn(x1, x2, "ntk")
    jitted = jax.jit(kernel_fn, static_argnames="get")
    assert jnp.allclose(jitted(x1, x2, get="ntk"), eager, rtol=1e-12)
    both = jitted(x1, None, get=("nngp", "ntk"))
    assert jnp.allclose(both.ntk, kernel_fn(x1, None, "ntk"), rtol=1e-12)
    # vmap over pairs of inputs gives the diagonal of the cross kernel.
    pairs = jax.vmap(lambda a, b: kernel_fn(a[None], b[None], "ntk")[0, 0])(x1, x2)
    assert jnp.allclose(pairs, jnp.diagonal(eager), rtol=1e-12)
    # Gradients in the inputs against central differences, off and on the diagonal
    # (where the arc-cosine kernel's square root vanishes and must not give NaN).
    for entry, other in ((lambda k: k[0, 1], x2), (lambda k: k[1, 1], None)):

        def f(x):
            return entry(kernel_fn(x, other, "ntk"))

        grad = jax.grad(f)(x1)
        assert jnp.all(jnp.isfinite(grad))
        step = 1e-6
        basis = step * jnp.eye(x1.size).reshape((x1.size,) + x1.shape)
        fd = (jax.vmap(f)(x1[None] + basis) - jax.vmap(f)(x1[None] - basis)) / (
            2 * step
        )
        assert jnp.allclose(grad.reshape(-1), fd, rtol=1e-6, atol=1e-6)


def test_residual_apply_and_parallel_shapes():
    init_fn, apply_fn, kernel_fn = stax.serial(
        stax.Dense(8),
        stax.FanOut(2),
        stax.parallel(stax.serial(stax.Relu(), stax.Dense(8)), stax.Identity()),
        stax.FanInSum(),
    )
    x = jr.normal(jr.key(7), (3, 2))
    shape, params = init_fn(jr.key(8), x.shape)
    y = apply_fn(params, x)
    assert shape == y.shape == (3, 8)
    # The skip connection: output = Dense(x) + Dense(relu(Dense(x))).
    h = apply_fn(params[:1], x)
    branch = stax.serial(stax.Relu(), stax.Dense(8))[1](params[2][0], h)
    assert jnp.allclose(y, h + branch, atol=1e-6)
    assert kernel_fn(x, None, "nngp").shape == (3, 3)


def test_bad_inputs():
    x = jnp.ones((3, 4))
    _, _, kernel_fn = _relu_mlp()
    with pytest.raises(ValueError, match="get"):
        kernel_fn(x, None, "nngpp")
    with pytest.raises(ValueError, match="get"):
        kernel_fn(x, None, ("nngp", "ntkk"))
    with pytest.raises(ValueError, match="x2"):
        kernel_fn(x, jnp.ones((2, 5)), "nngp")
    with pytest.raises(ValueError, match="x1"):
        kernel_fn(jnp.ones(3), None, "nngp")
    with pytest.raises(ValueError, match="x1"):
        kernel_fn(x.at[0, 0].set(jnp.nan), None, "nngp")
    with pytest.raises(ValueError, match="x2"):
        kernel_fn(x, x.at[1, 0].set(jnp.nan), "nngp")
    with pytest.raises(Exception, match="x1"):  # under jit: an Equinox runtime error
        jax.jit(kernel_fn, static_argnames="get")(x.at[0, 0].set(jnp.nan), get="nngp")
    with pytest.raises(ValueError, match="diagonal"):
        kernel_fn(x, x, "nngp", diagonal=True)
    with pytest.raises(ValueError, match="parameterization"):
        stax.Dense(3, parameterization="mup")
    with pytest.raises(ValueError, match="W_std"):
        stax.Dense(3, W_std=-1.0)
    with pytest.raises(ValueError, match="out_dim"):
        stax.Dense(0)
    with pytest.raises(ValueError, match="padding"):
        stax.Conv(3, (2,), padding="FULL")
    with pytest.raises(ValueError, match="filter_shape"):
        stax.Conv(3, (2, 2, 2))
    init_fn, apply_fn, conv_kernel_fn = stax.Conv(3, (2, 2))
    with pytest.raises(ValueError, match="x1"):
        conv_kernel_fn(x, None, "nngp")
    with pytest.raises(ValueError, match="input_shape"):
        init_fn(jr.key(0), (3, 4))
    with pytest.raises(ValueError, match="inputs"):
        apply_fn(init_fn(jr.key(0), (1, 3, 3, 4))[1], jnp.ones((1, 3, 4)))
    with pytest.raises(ValueError, match="Gaussian"):
        stax.Relu()[2](x, None, "nngp")
