import json
import os
import subprocess
import sys
import textwrap

import jax
import pytest


SCRIPT = textwrap.dedent(
    """
    import json
    import equinox as eqx, jax, jax.numpy as jnp, jax.random as jr, numpy as np, optax
    import jaxmodels as jm
    from jaxmodels.train._step import _COMPILED

    assert jax.device_count() == 4, jax.devices()
    x = jr.normal(jr.key(0), (256, 4))
    y = jnp.tanh(x @ jr.normal(jr.key(1), (4, 2)))

    def loss(model, batch, key):
        xb, yb = batch
        return jnp.mean((jax.vmap(model)(xb) - yb) ** 2)

    def diff(a, b):
        a = jax.tree_util.tree_leaves(eqx.filter(a, eqx.is_array))
        b = jax.tree_util.tree_leaves(eqx.filter(b, eqx.is_array))
        return max(float(jnp.max(jnp.abs(u - v))) for u, v in zip(a, b))

    model = eqx.nn.MLP(4, 2, 32, 2, key=jr.key(2))
    optim = optax.adam(3e-3)
    kw = dict(optim=optim, steps=100, batch_size=64, key=jr.key(3))
    one = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1],
                        axis_types=(jax.sharding.AxisType.Explicit,))
    single = jm.fit(loss, model, (x, y), mesh=one, **kw)
    sharded = jm.fit(loss, model, (x, y), **kw)  # default: all 4 devices
    hlo = "".join(exe.as_text() for exe in _COMPILED.values())
    leaf = sharded.model.layers[0].weight
    out = {
        "fit_diff": diff(single.model, sharded.model),
        "fit_loss_diff": float(np.max(np.abs(single.loss_history - sharded.loss_history))),
        "fit_devices": len(leaf.sharding.device_set),
        "fit_replicated": bool(leaf.sharding.is_fully_replicated),
        "all_reduce": "all-reduce" in hlo,
    }

    def make_model(h, key):
        return eqx.nn.MLP(4, 2, 16, 1, key=key)

    grid = {"lr": [1e-3, 3e-3, 1e-2, 3e-2]}
    sw = dict(optim=lambda h: optax.adam(h["lr"]), grid=grid, seeds=2, steps=50,
              batch_size=32)
    s4 = jm.sweep(make_model, loss, (x, y), **sw)
    s1 = jm.sweep(make_model, loss, (x, y), mesh=one, **sw)
    w = s4.models[0].layers[0].weight
    out.update({
        "sweep_devices": len(w.sharding.device_set),
        "sweep_shards": sorted({s.device.id for s in w.addressable_shards}),
        "sweep_replicated": bool(w.sharding.is_fully_replicated),
        "sweep_diff": diff(s4.models[0], s1.models[0]),
        "sweep_metric_diff": float(np.max(np.abs(s4.metric - s1.metric))),
        "sweep_configs": len(s4.configs),
    })
    # An odd number of configurations is padded to the device count, then trimmed.
    s3 = jm.sweep(make_model, loss, (x, y), **(sw | dict(grid={"lr": [1e-3]}, seeds=3)))
    out["odd_configs"] = len(s3.configs)
    out["odd_leading"] = int(s3.models[0].layers[0].weight.shape[0])
    print("RESULT" + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def four_devices():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_COMPILATION_CACHE_DIR"] = jax.config.jax_compilation_cache_dir
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT") :])


def test_fit_data_parallel_matches_one_device(four_devices):
    r = four_devices
    assert r["fit_devices"] == 4 and r["fit_replicated"]
    assert r["all_reduce"], "the gradient of a sharded batch must be all-reduced"
    assert r["fit_diff"] < 1e-5
    assert r["fit_loss_diff"] < 1e-5


def test_sweep_configurations_spread_over_devices(four_devices):
    r = four_devices
    assert r["sweep_configs"] == 8
    assert r["sweep_devices"] == 4 and r["sweep_shards"] == [0, 1, 2, 3]
    assert not r["sweep_replicated"]
    assert r["sweep_diff"] < 1e-5 and r["sweep_metric_diff"] < 1e-5


def test_sweep_pads_odd_configuration_counts(four_devices):
    assert four_devices["odd_configs"] == 3 and four_devices["odd_leading"] == 3
