"""Liquid time-constant cells: the state bound, the linear form, the fused step."""

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from jaxmodels.nde import LTC, LTCCell, ltc_scan

from .helpers import jaxtyping_off


def test_states_stay_within_the_reversal_potentials():
    # 10^4 random input steps, some of them long (up to 5 time units in one fused
    # step): the paper's bound holds for the discrete step too.
    cell = LTCCell(3, 8, key=jr.key(0))
    ts = jnp.cumsum(jr.uniform(jr.key(1), (10_000,), maxval=5.0))
    us = jr.uniform(jr.key(2), (10_000, 3), minval=-3.0, maxval=3.0)
    xs = eqx.filter_jit(ltc_scan)(cell, ts, us, unfolds=1)
    lo, hi = cell.state_bounds()
    assert bool(jnp.all(jnp.isfinite(xs)))
    assert bool(jnp.all((xs >= lo[None, :]) & (xs <= hi[None, :])))
    # Not vacuous: the states explore a good part of the range.
    assert float(jnp.max(xs) - jnp.min(xs)) > 0.5
    assert float(jnp.min(lo)) == -1.0 and float(jnp.max(hi)) == 1.0


def test_linear_form_equals_the_membrane_equation(x64):
    cell = jax.tree_util.tree_map(
        lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a,
        LTCCell(2, 5, key=jr.key(0)),
    )
    for k in range(5):
        x = jr.normal(jr.key(10 + k), (5,), jnp.float64)
        u = jr.normal(jr.key(20 + k), (2,), jnp.float64)
        a, b = cell.rhs_linear_form(x, u)
        assert bool(jnp.all(a < 0))
        np.testing.assert_allclose(
            a * x + b, cell.vector_field(0.0, x, u), rtol=1e-13, atol=1e-13
        )


def test_fused_step_converges_at_first_order(x64):
    cell = jax.tree_util.tree_map(
        lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a,
        LTCCell(2, 4, key=jr.key(0)),
    )
    x0 = jnp.zeros(4, jnp.float64)
    u = jnp.array([0.7, -0.4])
    exact = dfx.diffeqsolve(
        dfx.ODETerm(cell.vector_field),
        dfx.Tsit5(),
        0.0,
        2.0,
        None,
        x0,
        args=u,
        stepsize_controller=dfx.PIDController(rtol=1e-12, atol=1e-12),
    ).ys[-1]
    errors = [
        float(jnp.max(jnp.abs(cell(x0, u, 2.0, unfolds=n) - exact)))
        for n in (4, 16, 64)
    ]
    ratios = [errors[0] / errors[1], errors[1] / errors[2]]
    assert all(3.0 < r < 5.0 for r in ratios), (errors, ratios)
    tsit = cell(x0, u, 2.0, unfolds=64, solve="diffrax")
    assert float(jnp.max(jnp.abs(tsit - exact))) < 1e-8


def test_jit_vmap_grad():
    cell = LTCCell(2, 4, key=jr.key(0))
    ts = jnp.cumsum(jr.uniform(jr.key(1), (3, 6), minval=0.1, maxval=1.0), axis=1)
    us = jr.normal(jr.key(2), (3, 6, 2))

    def loss(cell):
        xs = jax.vmap(lambda t, u: ltc_scan(cell, t, u))(ts, us)
        return jnp.sum(xs[:, -1] ** 2)

    value, grads = eqx.filter_jit(eqx.filter_value_and_grad(loss))(cell)
    assert bool(jnp.isfinite(value))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads))
    assert float(jnp.abs(grads.w).sum()) > 0


def test_bad_inputs():
    with pytest.raises(ValueError, match="`hidden_size`"):
        LTCCell(2, 0, key=jr.key(0))
    cell = LTCCell(2, 3, key=jr.key(0))
    with pytest.raises(ValueError, match="`solve`"):
        cell(jnp.zeros(3), jnp.zeros(2), 1.0, solve="rk4")
    with pytest.raises(ValueError, match="`unfolds`"):
        cell(jnp.zeros(3), jnp.zeros(2), 1.0, unfolds=0)


def test_sequence_model_shapes_and_errors():
    model = LTC(2, 6, 1, key=jr.key(0))
    ts = jnp.array([0.0, 0.3, 0.3, 1.1])  # a repeated time is a zero-length gap
    us = jr.normal(jr.key(1), (4, 2))
    out = model(ts, us)
    assert out.shape == (4, 1) and bool(jnp.all(jnp.isfinite(out)))
    # The state after a zero-length gap is unchanged, so the readout repeats.
    np.testing.assert_allclose(out[1], out[2], rtol=0, atol=0)
    with jaxtyping_off(), pytest.raises(ValueError, match="`us`"):
        model(ts, us[:3])
    with pytest.raises(ValueError, match="`output_size`"):
        LTC(2, 6, 0, key=jr.key(0))
    with pytest.raises(Exception, match="must not decrease"):
        model(ts[::-1], us)


def test_affine_input_mapping_is_the_plain_cell_on_mapped_inputs():
    plain = LTCCell(3, 5, key=jr.key(0))
    mapped = LTCCell(3, 5, input_mapping="affine", key=jr.key(0))
    assert plain.input_w is None and plain.input_b is None
    c, d = jnp.array([4.0, -2.5, 0.5]), jnp.array([-1.0, 0.7, 3.0])
    ts = jnp.cumsum(jr.uniform(jr.key(3), (50,), minval=0.1, maxval=2.0))
    us = jr.normal(jr.key(4), (50, 3))
    x, u = jr.normal(jr.key(1), (5,)), us[0]

    @eqx.filter_jit
    def compare(mapped, plain):
        # At initialisation the map is the identity.
        identity = mapped.fused_step(x, u, 0.3), plain.fused_step(x, u, 0.3)
        mapped = eqx.tree_at(lambda m: (m.input_w, m.input_b), mapped, (c, d))
        v = c * u + d
        return (
            identity,
            (
                ltc_scan(mapped, ts, us, unfolds=2),
                ltc_scan(plain, ts, c[None] * us + d[None], unfolds=2),
            ),
            (mapped.vector_field(0.0, x, u), plain.vector_field(0.0, x, v)),
            (mapped.rhs_linear_form(x, u), plain.rhs_linear_form(x, v)),
            ltc_scan(plain, ts, us, unfolds=2),
            mapped.state_bounds(),
        )

    identity, scans, fields, forms, raw, (lo, hi) = compare(mapped, plain)
    np.testing.assert_array_equal(*identity)
    for got, want in (scans, fields, forms):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    got = scans[0]
    assert bool(jnp.all((got >= lo[None]) & (got <= hi[None])))
    # Not vacuous: the mapped inputs move the state differently from the raw ones.
    assert float(jnp.max(jnp.abs(got - raw))) > 1e-2
    model = LTC(3, 5, 1, input_mapping="affine", key=jr.key(0))
    assert model.cell.input_w is not None and model.cell.input_w.shape == (3,)
    with jaxtyping_off(), pytest.raises(ValueError, match="`input_mapping`"):
        LTCCell(3, 5, input_mapping="linear", key=jr.key(0))  # pyright: ignore
