import functools as ft
import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
import optax
import pytest

import jaxmodels.operators as jmo
from jaxmodels._core import tree_size

from .helpers import jaxtyping_off


# --- an independent reference: the truncated-mode multiplication as explicit sums -----


def _kept_frequencies(modes):
    """neuraloperator's kept frequencies: -(m//2)..(m-1)//2 on full axes, 0..m//2 last."""
    full = [np.arange(-(m // 2), m - m // 2) for m in modes[:-1]]
    return [*full, np.arange(modes[-1] // 2 + 1)]


def _reference_spectral_conv(x, weight, bias, modes):
    """Direct DFT sums in float64 (no FFT): c(k) = mean_n x(n) e^{-2 pi i k.n / N},
    d(k) = sum_i W[i, :, k] c_i(k), y(n) = Re sum_k a(k) d(k) e^{2 pi i k.n / N} with
    a = 2 on last-axis frequencies that stand for a conjugate pair, else 1."""
    x = np.asarray(x, np.float64)
    weight = np.asarray(weight, np.complex128)
    spatial = x.shape[1:]
    freqs = _kept_frequencies(modes)
    # Per-axis DFT matrices E[k, n] = exp(-2 pi i k n / N).
    mats = [np.exp(-2j * np.pi * np.outer(f, np.arange(n)) / n) for f, n in zip(freqs, spatial)]  # fmt: skip
    c = x.astype(np.complex128)
    for ax, e in enumerate(mats, start=1):
        c = np.moveaxis(np.tensordot(e, np.moveaxis(c, ax, 0), axes=1), 0, ax)
    c = c / np.prod(spatial)
    d = np.einsum("i...,io...->o...", c, weight)
    n_last, k_last = spatial[-1], freqs[-1]
    pair = (k_last > 0) & ~((n_last % 2 == 0) & (k_last == n_last // 2))
    d = d * np.where(pair, 2.0, 1.0)
    y = d
    for ax, e in enumerate(mats, start=1):
        y = np.moveaxis(np.tensordot(e.conj().T, np.moveaxis(y, ax, 0), axes=1), 0, ax)
    y = y.real
    if bias is not None:
        y = y + np.asarray(bias).reshape((-1,) + (1,) * len(spatial))
    return y


def _numpy_weights(model, *, seed=0, scale=1.0):
    """`model` (or its `eqx.filter_eval_shape`) with every parameter leaf replaced by
    deterministic NumPy normals (complex: re + i im). Cheaper than the random
    initialisation, whose every new shape compiles a JAX random kernel."""
    rng = np.random.default_rng(seed)

    def fill(leaf):
        if not (hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.inexact)):
            return leaf
        v = rng.standard_normal(leaf.shape)
        if jnp.issubdtype(leaf.dtype, jnp.complexfloating):
            v = v + 1j * rng.standard_normal(leaf.shape)
        return jnp.asarray(scale * v, leaf.dtype)

    return jtu.tree_map(fill, model)


def _shapes(cls, *args, **kwargs):
    return eqx.filter_eval_shape(ft.partial(cls, *args, **kwargs), key=jr.key(0))


def _normal(shape, seed=1):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


@pytest.mark.parametrize(
    "modes, spatial, transform",
    [
        ((7,), (11,), "dft"),
        ((5, 8), (9, 8), "dft"),
        ((5, 8), (9, 8), "fft"),
        ((3, 4, 4), (5, 6, 7), "dft"),
    ],
)
def test_spectral_conv_matches_direct_dft(modes, spatial, transform):
    # Odd sizes on full-FFT axes included: neuraloperator 2.0 gets those wrong (it
    # applies fftshift twice instead of fftshift then ifftshift), this must not. The
    # 2-D case keeps the last axis' Nyquist mode (8 modes on 8 points).
    conv = _numpy_weights(
        _shapes(jmo.SpectralConv, 3, 2, modes, transform=transform), scale=0.5
    )
    x = _normal((3, *spatial))
    y = eqx.filter_jit(conv)(x)
    ref = _reference_spectral_conv(x, conv.weight_tensor(), conv.bias, modes)
    assert y.shape == (2, *spatial) and y.dtype == jnp.float32
    np.testing.assert_allclose(y, ref, rtol=0, atol=2e-5 * np.abs(ref).max())


def _band_limited(channels, spatial, max_freq, seed=3):
    """A real trigonometric polynomial with frequencies |k| <= max_freq on each axis,
    as a function `sample(shape)` of the grid `i / n` of [0, 1)^d."""
    freqs = np.array(list(itertools.product(range(-max_freq, max_freq + 1), repeat=len(spatial))))  # fmt: skip
    rng = np.random.default_rng(seed)
    coef = rng.standard_normal((channels, len(freqs)))
    phase = rng.uniform(0, 2 * np.pi, (channels, len(freqs)))

    def sample(shape):
        grids = np.meshgrid(*[np.arange(n) / n for n in shape], indexing="ij")
        arg = sum(np.multiply.outer(freqs[:, a], g) for a, g in enumerate(grids))
        waves = np.cos(2 * np.pi * arg[None] + phase.reshape(phase.shape + (1,) * len(shape)))  # fmt: skip
        return jnp.asarray(np.einsum("cf,cf...->c...", coef, waves), jnp.float32)

    return sample


def test_spectral_conv_resolution_invariance():
    # Weights belong to Fourier modes: an input with frequencies up to 5 sampled at
    # 32 x 16 and at 64 x 32 gives the same output function, at the shared points, to
    # float precision (zero-shot super-resolution).
    modes, coarse = (8, 6), (32, 16)
    conv = _numpy_weights(_shapes(jmo.SpectralConv, 2, 3, modes), scale=0.5)
    sample = _band_limited(2, coarse, max_freq=5)
    fine = tuple(2 * n for n in coarse)
    y_coarse = eqx.filter_jit(conv)(sample(coarse))
    y_fine = eqx.filter_jit(conv)(sample(fine))
    scale = float(jnp.max(jnp.abs(y_coarse)))
    np.testing.assert_allclose(y_fine[:, ::2, ::2], y_coarse, rtol=0, atol=1e-5 * scale)
    # Not trivially: the modes dropped change the output.
    assert float(jnp.max(jnp.abs(y_coarse - conv.bias[:, None, None]))) > 0.1 * scale


# --- parameter counts against neuraloperator 2.0 (counted once with torch) ------------


def _complex_entries(model) -> int:
    """Complex parameters' entries: each is stored as two real leaves (real, imag)."""
    is_complex = lambda x: type(x).__name__ == "_Complex"  # noqa: E731
    leaves = jtu.tree_leaves(model, is_leaf=is_complex)
    return sum(leaf.imag.size for leaf in leaves if is_complex(leaf))


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        # neuraloperator.models.FNO(n_modes, in, out, hidden_channels, n_layers),
        # sum(p.numel() for p in model.parameters()), complex entries counting once.
        (
            dict(in_channels=1, out_channels=1, modes=(12, 12), width=32, depth=4),
            357217,
        ),
        (dict(in_channels=1, out_channels=1, modes=(16,), width=32, depth=4), 49953),
        (dict(in_channels=2, out_channels=3, modes=(4, 4, 4), width=8, depth=2), 6883),
        (
            dict(
                in_channels=1,
                out_channels=1,
                modes=(12, 12),
                width=32,
                channel_mlp=False,
            ),
            352801,
        ),  # fmt: skip
        (
            dict(
                in_channels=1,
                out_channels=1,
                modes=(12, 12),
                width=32,
                factorisation="cp",
                rank=4,
            ),
            14497,
        ),  # fmt: skip
    ],
)
def test_parameter_count_matches_neuraloperator(kwargs, expected):
    cin, cout = kwargs.pop("in_channels"), kwargs.pop("out_channels")
    model = _numpy_weights(_shapes(jmo.FNO, cin, cout, **kwargs))
    # `tree_size` counts real scalars, two per complex entry; torch's `numel` one.
    assert _complex_entries(model) > 0
    assert tree_size(model) - _complex_entries(model) == expected


# Outputs of neuraloperator 2.0's FNO(n_modes=(4, 4), in_channels=1, out_channels=1,
# hidden_channels=4, n_layers=2, domain_padding=...) holding the weights
# `_numpy_weights` sets, on `_peer_input`, computed once with torch: out[0, 0, 0, :4],
# out[0, 0, 5, 2:6] and the sum of the output.
_PEER_OUT = {
    0.0: (
        [-2.7089562, -0.28718567, -0.2529657, -1.0637624],
        [-2.9091914, -0.81062937, -0.75825, -0.4766266],
        -202.8284,
    ),
    0.25: (
        [-3.6517982, -0.892682, -1.6237586, -1.5600992],
        [-0.7906536, -0.76317805, -0.9035718, -0.8167702],
        -91.722885,
    ),
}


def _peer_input():
    grid = np.arange(8) / 8
    return jnp.asarray(np.sin(2 * np.pi * grid)[:, None] + np.cos(4 * np.pi * grid)[None, :], jnp.float32)[None]  # fmt: skip


@pytest.mark.parametrize("domain_padding", [0.0, 0.25])
def test_fno_matches_neuraloperator_outputs(domain_padding):
    model = _numpy_weights(
        _shapes(
            jmo.FNO, 1, 1, modes=(4, 4), width=4, depth=2, domain_padding=domain_padding
        )  # fmt: skip
    )
    out = eqx.filter_jit(model)(_peer_input())
    row0, row5, total = _PEER_OUT[domain_padding]
    # Outputs of size up to 18: float32 agreement to a few ulps of that scale.
    np.testing.assert_allclose(out[0, 0, :4], row0, rtol=0, atol=2e-5)
    np.testing.assert_allclose(out[0, 5, 2:6], row5, rtol=0, atol=2e-5)
    np.testing.assert_allclose(float(out.sum()), total, rtol=1e-5)


# --- CP factorisation -----------------------------------------------------------------


def test_cp_factorisation():
    modes, rank = (8, 8), 64
    cp = jmo.SpectralConv(16, 16, modes, factorisation="cp", rank=rank, key=jr.key(4))
    dense = _numpy_weights(_shapes(jmo.SpectralConv, 16, 16, modes))
    # Real scalars: the bias, then two per complex entry.
    assert tree_size(cp) == 16 + 2 * rank * (1 + 16 + 16 + 8 + 5)
    assert tree_size(cp) < tree_size(dense) == 16 + 2 * 16 * 16 * 8 * 5
    # The reconstruction is the sum of rank-one outer products of the factors...
    w = np.asarray(cp.weight.weights)
    factors = [np.asarray(f) for f in cp.weight.factors]
    ref = sum(
        w[r] * ft.reduce(np.multiply.outer, [f[:, r] for f in factors])
        for r in range(rank)
    )
    tensor = cp.weight_tensor()
    assert tensor.shape == dense.weight_tensor().shape == (16, 16, 8, 5)
    np.testing.assert_allclose(tensor, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    # ...and the factor-by-factor contraction is the convolution with that tensor.
    x = _normal((16, 10, 9))
    y = eqx.filter_jit(cp)(x)
    expected = _reference_spectral_conv(x, ref, cp.bias, modes)
    np.testing.assert_allclose(y, expected, rtol=0, atol=2e-5 * np.abs(expected).max())
    # Its initial entries have about the dense initialisation's variance 2 / (in + out).
    var = float(np.mean(np.abs(ref) ** 2))
    assert 0.7 * 2 / 32 < var < 1.3 * 2 / 32


# --- composition: jit, vmap, grad, scan over layers -----------------------------------


def test_jit_vmap_and_3d_shape():
    model = _numpy_weights(_shapes(jmo.FNO, 2, 3, modes=(4, 4, 4), width=4, depth=2), scale=0.3)  # fmt: skip
    x = _normal((2, 2, 6, 5, 8))
    batched, single = eqx.filter_jit(lambda m, x: (jax.vmap(m)(x), m(x[1])))(model, x)
    assert batched.shape == (2, 3, 6, 5, 8)
    np.testing.assert_allclose(batched[1], single, rtol=1e-5, atol=1e-5)


def test_depth_does_not_grow_the_program():
    # The blocks run under one lax.scan: the traced program is the same size at any
    # depth (so is the compile time).
    x = jax.ShapeDtypeStruct((1, 16), jnp.float32)

    def n_eqns(depth):
        model = _shapes(jmo.FNO, 1, 1, modes=(4,), width=4, depth=depth)
        params, static = eqx.partition(model, lambda a: isinstance(a, jax.ShapeDtypeStruct))  # fmt: skip
        jaxpr = jax.make_jaxpr(lambda p, x: eqx.combine(p, static)(x))(params, x)
        return len(jaxpr.jaxpr.eqns)

    assert n_eqns(2) == n_eqns(7)


def test_grad_matches_finite_differences(x64):
    model = _numpy_weights(_shapes(jmo.FNO, 1, 1, modes=(4,), width=4, depth=2), scale=0.5)  # fmt: skip
    params, static = eqx.partition(model, eqx.is_inexact_array)
    direction = _numpy_weights(params, seed=1)

    @jax.jit
    def check(params, direction):
        params, direction = jtu.tree_map(
            lambda a: a.astype(jnp.complex128 if jnp.iscomplexobj(a) else jnp.float64),
            (params, direction),
        )
        grid = jnp.arange(12) / 12
        x = jnp.sin(2 * jnp.pi * grid)[None] + 0.1
        target = jnp.cos(2 * jnp.pi * grid)[None]

        def loss(p):
            return jnp.mean((eqx.combine(p, static)(x) - target) ** 2)

        grads = jax.grad(loss)(params)
        # For a real loss, JAX's gradient g of a complex leaf has df = Re(g dz).
        leaves = zip(jtu.tree_leaves(grads), jtu.tree_leaves(direction))
        predicted = sum(jnp.sum(jnp.real(g * v)) for g, v in leaves)
        eps = 1e-6
        shift = lambda s: jtu.tree_map(lambda p, v: p + s * v, params, direction)  # noqa: E731
        return predicted, (loss(shift(eps)) - loss(shift(-eps))) / (2 * eps)

    predicted, fd = check(params, direction)
    assert abs(float(predicted)) > 1e-3
    np.testing.assert_allclose(predicted, fd, rtol=1e-6)


def test_exact_gelu_and_its_derivatives(x64):
    # The FNO's GELU is written with erf and a hand-given derivative (for speed); it
    # must equal the erfc form of jax.nn.gelu, with its first and second derivatives,
    # at float64 and (to float32 rounding) at float32.
    from jaxmodels.operators._fno import _exact_gelu

    x = jnp.linspace(-8.0, 8.0, 2001, dtype=jnp.float64)
    ref = lambda v: jax.nn.gelu(v, approximate=False)  # noqa: E731
    d1 = jax.vmap(jax.grad(_exact_gelu))
    d2 = jax.vmap(jax.grad(jax.grad(_exact_gelu)))
    np.testing.assert_allclose(_exact_gelu(x), ref(x), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(
        d1(x), jax.vmap(jax.grad(ref))(x), rtol=1e-13, atol=1e-15
    )
    np.testing.assert_allclose(
        d2(x), jax.vmap(jax.grad(jax.grad(ref)))(x), rtol=1e-12, atol=1e-15
    )
    x32 = x.astype(jnp.float32)
    assert _exact_gelu(x32).dtype == jnp.float32
    assert d1(x32).dtype == jnp.float32
    np.testing.assert_allclose(_exact_gelu(x32), ref(x32), rtol=1e-6, atol=1e-6)


# --- errors ---------------------------------------------------------------------------


def test_bad_construction():
    key = jr.key(0)
    with pytest.raises(ValueError, match="`modes`"):
        _shapes(jmo.FNO, 1, 1, modes=(4, 4, 4, 4), width=4)
    with pytest.raises(ValueError, match="`modes`"):
        _shapes(jmo.SpectralConv, 1, 1, (4, 0))
    with pytest.raises(ValueError, match="`width`"):
        _shapes(jmo.FNO, 1, 1, modes=(4,), width=0)
    with pytest.raises(ValueError, match="`factorisation`"):
        with jaxtyping_off():
            jmo.SpectralConv(1, 1, (4,), factorisation="tucker", key=key)  # type: ignore
    with pytest.raises(ValueError, match="`rank`"):
        _shapes(jmo.SpectralConv, 1, 1, (4,), factorisation="cp")
    with pytest.raises(ValueError, match="`rank`"):
        _shapes(jmo.SpectralConv, 1, 1, (4,), rank=2)
    with pytest.raises(ValueError, match="`in_channels`"):
        _shapes(jmo.SpectralConv, 0, 1, (4,))
    with pytest.raises(ValueError, match="`transform`"):
        with jaxtyping_off():
            _shapes(jmo.SpectralConv, 1, 1, (4,), transform="matmul")  # type: ignore
    with pytest.raises(ValueError, match="`domain_padding`"):
        _shapes(jmo.FNO, 1, 1, modes=(4,), width=4, domain_padding=1.5)


def test_bad_inputs():
    model = _numpy_weights(_shapes(jmo.FNO, 2, 1, modes=(8, 6), width=4, depth=1))
    conv = _numpy_weights(_shapes(jmo.SpectralConv, 2, 2, (8, 6)))
    with jaxtyping_off():
        with pytest.raises(ValueError, match="`modes`"):
            jax.eval_shape(model, jnp.zeros((2, 7, 16)))
        with pytest.raises(ValueError, match="`in_channels`"):
            jax.eval_shape(model, jnp.zeros((3, 16, 16)))
        with pytest.raises(ValueError, match="`x`.*spatial axes"):
            jax.eval_shape(model, jnp.zeros((2, 16)))
        with pytest.raises(ValueError, match="`modes`"):
            jax.eval_shape(conv, jnp.zeros((2, 16, 5)))
        with pytest.raises(ValueError, match="`in_channels`"):
            jax.eval_shape(conv, jnp.zeros((1, 16, 16)))


def test_parameters_are_real_and_plain_adam_recovers_a_spectral_conv():
    # Complex weights are stored as real and imaginary parts, so `jax.grad` gives
    # descent directions to any optimiser: a hand-written optax loop (not `fit`, which
    # also conjugates complex gradients) recovers a teacher's weights.
    teacher = _numpy_weights(_shapes(jmo.SpectralConv, 2, 2, (6,)), seed=3, scale=0.3)
    student = _numpy_weights(_shapes(jmo.SpectralConv, 2, 2, (6,)), seed=4, scale=0.3)
    leaves = jtu.tree_leaves(eqx.filter(student, eqx.is_inexact_array))
    assert leaves and not any(jnp.iscomplexobj(leaf) for leaf in leaves)
    x = _normal((32, 2, 16))
    y = jax.vmap(teacher)(x)
    optim = optax.adam(3e-2)

    @eqx.filter_jit
    def train(model):
        def step(carry, _):
            model, state = carry
            loss, grads = eqx.filter_value_and_grad(
                lambda m: jnp.mean((jax.vmap(m)(x) - y) ** 2)
            )(model)
            updates, state = optim.update(grads, state, model)
            return (eqx.apply_updates(model, updates), state), loss

        state = optim.init(eqx.filter(model, eqx.is_inexact_array))
        (model, _), losses = jax.lax.scan(step, (model, state), None, length=500)
        return model, losses

    trained, losses = train(student)
    assert float(losses[-1]) < 1e-6 * float(losses[0])
    # Every weight the output depends on: the imaginary part at frequency 0 does not
    # reach a real output (and so keeps its initial value).
    w, w_true = trained.weight_tensor(), teacher.weight_tensor()
    np.testing.assert_allclose(w[..., 1:], w_true[..., 1:], rtol=0, atol=1e-3)
    np.testing.assert_allclose(w[..., 0].real, w_true[..., 0].real, rtol=0, atol=1e-3)
