import functools as ft

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from jaxmodels import operators as op

from .helpers import jaxtyping_off


_apply = eqx.filter_jit(lambda m, x: m(x))


# Models are built by shape only and filled from numpy: jax.random would compile a
# threefry kernel for every new shape, the slowest part of these tests.
def _build(cls, *args, seed: int, dtype=np.float32, **kwargs):
    rng = np.random.default_rng(seed)
    model = eqx.filter_eval_shape(cls, *args, key=jr.key(0), **kwargs)

    def fill(leaf):
        if not isinstance(leaf, jax.ShapeDtypeStruct):
            return leaf
        fan_in = int(np.prod(leaf.shape[1:]))
        lim = fan_in**-0.5 if fan_in > 1 else 0.3
        return jnp.asarray(rng.uniform(-lim, lim, leaf.shape), dtype)

    return jax.tree_util.tree_map(fill, model)


def _normal(seed: int, shape, dtype=np.float32) -> jnp.ndarray:
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def _grid(n: int, d: int) -> list[np.ndarray]:
    x = np.arange(n) / n
    return list(np.meshgrid(*([x] * d), indexing="ij"))


def _smooth(n: int, d: int) -> jnp.ndarray:
    """A smooth periodic function on `[0, 1)^d` with features near the kernel's scale."""
    if d == 1:
        (x,) = _grid(n, 1)
        u = np.sin(2 * np.pi * x) + 0.5 * np.cos(2 * np.pi * 6 * x + 1)
    else:
        x, y = _grid(n, 2)
        u = np.sin(2 * np.pi * x) * np.cos(2 * np.pi * y)
        u = u + 0.5 * np.cos(2 * np.pi * (5 * x + 2 * y) + 1)
    return jnp.asarray(u[None], jnp.float32)


def _numpy_cnn(cnn: eqx.nn.Sequential, x: np.ndarray) -> np.ndarray:
    """An independent float64 numpy forward pass of a CNN of circular 'SAME' convs and
    tanh, applied pixel by pixel (as a plain CNN is, at any resolution)."""
    x = np.asarray(x, np.float64)
    for layer in cnn.layers:
        if isinstance(layer, eqx.nn.Lambda):
            x = np.tanh(x)
            continue
        w = np.asarray(layer.weight, np.float64)
        out = np.zeros((w.shape[0],) + x.shape[1:])
        lo = [(k - 1) // 2 for k in layer.kernel_size]
        for j in np.ndindex(*layer.kernel_size):
            shift = tuple(lo_ - j_ for lo_, j_ in zip(lo, j))
            rolled = np.roll(x, shift, axis=tuple(range(1, x.ndim)))
            out += np.einsum("oc,c...->o...", w[(slice(None), slice(None)) + j], rolled)
        x = out + np.asarray(layer.bias, np.float64)
    return x


@ft.cache
def _cnn(d: int) -> eqx.nn.Sequential:
    ch = 6 if d == 1 else 3
    conv = ft.partial(_build, eqx.nn.Conv, d, padding="SAME", padding_mode="CIRCULAR")
    return eqx.nn.Sequential(
        [
            conv(1, ch, 3, seed=d),
            eqx.nn.Lambda(jnp.tanh),
            conv(ch, ch, 5 if d == 1 else 3, seed=10 + d),
            eqx.nn.Lambda(jnp.tanh),
            conv(ch, 1, 3, seed=20 + d),
        ]
    )


@pytest.mark.parametrize("d", [1, 2])
def test_outputs_agree_across_resolutions(d):
    # The test: a random periodic CNN designed at resolution 64 and its
    # converted operator, on one smooth function sampled at 64, 128 and 256; outputs
    # compared on the 64-point grid (every point of it is on the finer grids too).
    cnn = _cnn(d)
    operator = op.to_operator(cnn, reference_resolution=64)
    ns = (64, 128, 256)
    ours, plain = {}, {}
    for n in ns:
        restrict = (slice(None),) + (slice(None, None, n // 64),) * d
        ours[n] = np.asarray(_apply(operator, _smooth(n, d)))[restrict]
        plain[n] = _numpy_cnn(cnn, _smooth(n, d))[restrict]
    # At the reference resolution the operator is the CNN.
    np.testing.assert_allclose(ours[64], plain[64], atol=2e-5)
    scale = np.max(np.abs(plain[64] - plain[64].mean()))

    def diff(a, b):
        return np.max(np.abs(a - b)) / scale

    d1, d2 = diff(ours[64], ours[128]), diff(ours[128], ours[256])
    # Relative to the output's range. Measured: 1-D 3.6e-2 then 8.5e-3, 2-D 3.0e-2
    # then 7.0e-3: second order.
    assert d1 < 0.05 and d2 < 0.012
    assert d2 < d1 / 3
    # The plain CNN's receptive field shrinks with the pixels: O(1) differences
    # (measured 0.45 in 1-D, 0.52 in 2-D), ten times the operator's 0.044 and 0.037.
    p = diff(plain[64], plain[256])
    assert p > 0.3 and p > 10 * diff(ours[64], ours[256])


def _hat_symbol(omega: np.ndarray, h: float) -> np.ndarray:
    """The Fourier transform of the unit-height hat of half-width `h`, over `h`."""
    return np.sinc(omega * h / (2 * np.pi)) ** 2


@pytest.mark.parametrize("d", [1, 2])
def test_integral_conv_converges_to_the_integral_operator(d):
    # On u = cos(w . x + phi) the layer's continuum limit is known in closed form:
    # int kappa(z) u(x + z) dz = Re[e^{i(w.x + phi)} sum_j W_j e^{i w.z_j} prod sinc^2],
    # kappa being the multilinear hat interpolant of W_j / h_ref^d at z_j.
    ref = (16,) if d == 1 else (16, 12)
    kernel = (3,) if d == 1 else (3, 5)
    layer = _build(op.IntegralConv, d, 2, 3, kernel, reference_resolution=ref, seed=3)
    freqs = np.array([[2], [3]]) if d == 1 else np.array([[2, -1], [1, 3]])
    phases = np.array([0.4, -1.1])
    w = np.asarray(layer.weight, np.float64)
    lo = [(k - 1) // 2 for k in kernel]

    def exact(shape):
        grid = np.meshgrid(*[np.arange(n) / n for n in shape], indexing="ij")
        out = np.zeros((3,) + tuple(shape))
        for c in range(2):
            omega = 2 * np.pi * freqs[c]
            symbol = np.zeros(3, complex)
            for j in np.ndindex(*kernel):
                z = [(j_ - lo_) / r for j_, lo_, r in zip(j, lo, ref)]
                symbol += w[(slice(None), c) + j] * np.exp(1j * np.dot(omega, z))
            symbol *= np.prod([_hat_symbol(o, 1 / r) for o, r in zip(omega, ref)])
            phase = sum(o * g for o, g in zip(omega, grid)) + phases[c]
            out += np.real(symbol.reshape((3,) + (1,) * d) * np.exp(1j * phase))
        return out + np.asarray(layer.bias, np.float64)

    def u(shape):
        grid = np.meshgrid(*[np.arange(n) / n for n in shape], indexing="ij")
        return jnp.asarray(
            np.stack(
                [
                    np.cos(
                        2 * np.pi * sum(f * g for f, g in zip(freqs[c], grid))
                        + phases[c]
                    )
                    for c in range(2)
                ]
            ),
            jnp.float32,
        )

    shapes = [tuple(m * r for r in ref) for m in (1, 2, 4)]
    if d == 1:
        # A grid that is not a multiple of the reference one converges as well.
        shapes.append((3 * ref[0] + 5,))
    errors = [float(np.max(np.abs(_apply(layer, u(s)) - exact(s)))) for s in shapes]
    # Second order: the error falls by about 4 per refinement (measured 4.0 and 4.0
    # in 1-D, 4.4 and 4.1 in 2-D; errors 3.7e-3 and 6.9e-3 at the finest grid, for
    # outputs of size one).
    assert errors[2] < 0.02
    for coarse, fine in zip(errors[:2], errors[1:3]):
        assert 3.5 < coarse / fine < 4.7
    if d == 1:
        assert errors[3] < errors[1]


def _variants(mode: str) -> eqx.nn.Sequential:
    """Every supported kind of layer: even kernels, 'SAME_LOWER' and explicit
    padding, groups, a kernel of size one, a pool and a dense head."""
    conv = ft.partial(_build, eqx.nn.Conv1d, padding_mode=mode)
    return eqx.nn.Sequential(
        [
            conv(2, 4, 4, padding="SAME", seed=30),
            eqx.nn.Lambda(jax.nn.gelu),
            eqx.nn.Sequential(
                [conv(4, 4, 3, padding=((0, 2),), groups=2, seed=31), eqx.nn.Identity()]
            ),
            conv(4, 4, 4, padding="SAME_LOWER", seed=32),
            eqx.nn.Lambda(jnp.tanh),
            conv(4, 3, 1, seed=33),
        ]
    )


def _reference_models() -> list[eqx.nn.Sequential]:
    cnns = [_variants(mode) for mode in ("CIRCULAR", "ZEROS", "REFLECT", "REPLICATE")]
    head = _build(eqx.nn.Linear, 3, 2, seed=34)
    cnns.append(eqx.nn.Sequential([cnns[0], op.GlobalMeanPool(), head]))
    pool = eqx.nn.AdaptiveAvgPool1d(1)
    cnns.append(eqx.nn.Sequential([cnns[1], pool, eqx.nn.Lambda(jnp.ravel)]))
    return cnns


def test_reference_resolution_reproduces_the_cnn():
    cnns = _reference_models()
    operators = [op.to_operator(c, reference_resolution=24) for c in cnns]
    x = _normal(9, (2, 24))
    cnn_out, op_out = eqx.filter_jit(
        lambda cs, os, x: ([c(x) for c in cs], [o(x) for o in os])
    )(cnns, operators, x)
    for a, b in zip(cnn_out, op_out):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert cnn_out[-2].shape == (2,)


def test_kernel_of_size_one_stays_pointwise():
    layer = _build(op.IntegralConv, 1, 3, 2, 1, reference_resolution=8, seed=10)
    x = _normal(11, (3, 40))
    expected = np.einsum("oc,cn->on", layer.weight[:, :, 0], x) + layer.bias
    np.testing.assert_allclose(_apply(layer, x), expected, rtol=1e-5, atol=1e-6)
    # While a kernel of size three at five times the resolution has 5 * 4 - 1 taps.
    wide = _build(op.IntegralConv, 1, 3, 2, 3, reference_resolution=8, seed=10)
    kernel, first = wide.kernel_at(40)
    assert kernel.shape == (2, 3, 19) and first == (-9,)
    # The discrete kernel sums (over taps) to the integral of kappa, which for hats is
    # the sum of the nodal weights, at any resolution.
    np.testing.assert_allclose(kernel.sum(-1), wide.weight.sum(-1), rtol=1e-5)


def test_jit_vmap_grad(x64):
    operator = op.to_operator(_cnn(1), reference_resolution=16)
    operator = jax.tree_util.tree_map(
        lambda a: jnp.asarray(np.asarray(a), jnp.float64) if eqx.is_array(a) else a,
        operator,
    )
    xs = _normal(12, (3, 1, 24), np.float64)
    batched = eqx.filter_jit(jax.vmap(lambda m, x: m(x), in_axes=(None, 0)))(
        operator, xs
    )
    for x, out in zip(xs, batched):
        np.testing.assert_allclose(out, _apply(operator, x), rtol=1e-12, atol=1e-12)

    def loss(model, x):
        return jnp.sum(jnp.sin(model(x)))

    grads = eqx.filter_jit(eqx.filter_grad(loss))(operator, xs[0])
    params, static = eqx.partition(operator, eqx.is_inexact_array)
    direction = jax.tree_util.tree_map(lambda p: _normal(13, p.shape, p.dtype), params)

    @eqx.filter_jit
    def at(t):
        moved = jax.tree_util.tree_map(lambda p, v: p + t * v, params, direction)
        return loss(eqx.combine(moved, static), xs[0])

    eps = 1e-6
    fd = float(at(eps) - at(-eps)) / (2 * eps)
    analytic = sum(
        float(jnp.vdot(g, v))
        for g, v in zip(
            jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(direction)
        )
    )
    assert abs(fd - analytic) <= 1e-6 * max(1.0, abs(fd))


def test_bad_inputs():
    shape = ft.partial(eqx.filter_eval_shape, key=jr.key(0))
    conv = ft.partial(shape, eqx.nn.Conv1d, 1, 1, 3)
    tanh = eqx.nn.Lambda(jnp.tanh)
    cases = [
        (eqx.nn.Sequential([conv(padding="SAME"), eqx.nn.MaxPool1d(2)]), "MaxPool1d"),
        (eqx.nn.Sequential([conv(padding="SAME", stride=2)]), "stride"),
        (eqx.nn.Sequential([conv(padding="VALID")]), "padding"),
        (eqx.nn.Sequential([conv(padding="SAME", dilation=2)]), "dilation"),
        (
            eqx.nn.Sequential([conv(padding="SAME"), shape(eqx.nn.Linear, 8, 2)]),
            "before a global pool",
        ),  # fmt: skip
        (
            eqx.nn.Sequential(
                [conv(padding="SAME"), op.GlobalMeanPool(), conv(padding="SAME")]
            ),
            "after the global pool",
        ),  # fmt: skip
        (eqx.nn.Sequential([tanh]), "no `eqx.nn.Conv`"),
        (
            eqx.nn.Sequential([conv(padding="SAME"), shape(eqx.nn.Conv2d, 1, 1, 3)]),
            "dimensions",
        ),  # fmt: skip
        (
            eqx.nn.Sequential(
                [conv(padding="SAME"), shape(eqx.nn.ConvTranspose1d, 1, 1, 3)]
            ),
            "ConvTranspose1d",
        ),  # fmt: skip
    ]
    for model, match in cases:
        with pytest.raises(ValueError, match=match):
            op.to_operator(model, reference_resolution=8)
    with pytest.raises(ValueError, match="reference_resolution"):
        op.to_operator(
            eqx.nn.Sequential([conv(padding="SAME")]), reference_resolution=0
        )
    single = eqx.nn.Sequential([_build(eqx.nn.Conv1d, 1, 1, 3, padding="SAME", seed=0)])
    operator = op.to_operator(single, reference_resolution=8)
    with jaxtyping_off():
        with pytest.raises(ValueError, match="in_channels"):
            operator(jnp.ones((2, 8)))
        with pytest.raises(ValueError, match="spatial axes"):
            operator(jnp.ones((1, 8, 8)))
        with pytest.raises(ValueError, match="in_channels"):
            operator.layers[0](jnp.ones((2, 8)))
        with pytest.raises(ValueError, match="channels, \\*grid"):
            op.GlobalMeanPool()(jnp.ones(3))
        for kwargs, name in [
            (dict(padding_mode="SYMMETRIC"), "padding_mode"),
            (dict(offset=3), "offset"),
            (dict(groups=2), "groups"),
            (dict(kernel_size=0), "kernel_size"),
            (dict(reference_resolution=(8, 8)), "reference_resolution"),
            (dict(num_spatial_dims=4), "num_spatial_dims"),
        ]:
            args = dict(
                num_spatial_dims=1, in_channels=3, out_channels=2, kernel_size=3
            )
            args |= kwargs
            kwargs = dict(reference_resolution=8, key=jr.key(0)) | {
                key: args.pop(key)
                for key in ("padding_mode", "offset", "groups", "reference_resolution")
                if key in args
            }
            with pytest.raises(ValueError, match=name):
                op.IntegralConv(*args.values(), **kwargs)
