import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optax
import pytest

import jaxmodels as jm
from jaxmodels.train import load_checkpoint, read_checkpoint_meta, save_checkpoint

from .helpers import tree_bytes_equal


def test_roundtrip_and_no_stray_files(tmp_path):
    tree = {"a": jnp.arange(3.0), "b": (jnp.ones((2, 2), jnp.int32), jnp.array(1.5))}
    path = tmp_path / "ck" / "state.ckpt"
    save_checkpoint(path, tree, {"step": 7, "note": "x"})
    save_checkpoint(path, tree, {"step": 8, "note": "y"})
    like = jax.tree_util.tree_map(jnp.zeros_like, tree)
    loaded, meta = load_checkpoint(path, like)
    assert meta == {"step": 8, "note": "y"} and read_checkpoint_meta(path)["step"] == 8
    assert tree_bytes_equal(loaded, tree)
    assert os.listdir(path.parent) == ["state.ckpt"]


def test_failed_write_keeps_previous(tmp_path):
    path = tmp_path / "state.ckpt"
    save_checkpoint(path, {"a": jnp.ones(2)}, {"step": 1})
    with pytest.raises(TypeError):
        save_checkpoint(path, {"a": jnp.zeros(2)}, {"step": object()})
    loaded, meta = load_checkpoint(path, {"a": jnp.zeros(2)})
    assert meta["step"] == 1 and float(loaded["a"].sum()) == 2.0
    assert os.listdir(tmp_path) == ["state.ckpt"]


def test_mismatch_and_garbage(tmp_path):
    path = tmp_path / "state.ckpt"
    save_checkpoint(path, {"a": jnp.ones(2)}, {"step": 1})
    with pytest.raises(ValueError, match="does not match"):
        load_checkpoint(path, {"a": jnp.ones(3)})
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a jaxmodels checkpoint"):
        load_checkpoint(bad, {"a": jnp.ones(2)})


def _loss(model, batch, key):
    x, y = batch
    pred = jax.vmap(lambda xi: model(xi, key=key))(x)
    return jnp.mean((pred - y) ** 2)


def test_resume_in_process(tmp_path):
    x = jr.normal(jr.key(0), (64, 2))
    y = x[:, :1] * x[:, 1:]
    model = eqx.nn.MLP(2, 1, 8, 1, key=jr.key(1))
    optim = optax.adam(1e-2)
    kwargs = dict(optim=optim, steps=40, batch_size=16, key=jr.key(2), chunk=10)
    full = jm.fit(_loss, model, (x, y), **kwargs)
    path = tmp_path / "run.ckpt"
    # A run that stopped after 20 of the 40 steps (the chunk length, min(chunk, steps),
    # is the same, so the same executable runs).
    half = jm.fit(_loss, model, (x, y), checkpoint=path, **(kwargs | dict(steps=20)))
    assert read_checkpoint_meta(path)["step"] == 20 and half.steps == 20
    resumed = jm.fit(_loss, model, (x, y), checkpoint=path, resume=True, **kwargs)
    assert resumed.steps == 40
    assert tree_bytes_equal(resumed.model, full.model)
    assert (resumed.loss_history == full.loss_history).all()


CHILD = textwrap.dedent(
    """
    import sys
    import equinox as eqx, jax, jax.numpy as jnp, jax.random as jr, optax
    import jaxmodels as jm

    ckpt, out, resume = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    x = jr.normal(jr.key(0), (512, 8))
    y = jnp.tanh(x @ jr.normal(jr.key(1), (8, 2)))
    model = eqx.nn.MLP(8, 2, 64, 2, key=jr.key(2))

    def loss(model, batch, key):
        xb, yb = batch
        return jnp.mean((jax.vmap(model)(xb) - yb) ** 2)

    result = jm.fit(
        loss, model, (x, y), optim=optax.adam(1e-3), steps=20000, batch_size=32,
        key=jr.key(3), chunk=250, checkpoint=None if ckpt == "-" else ckpt,
        checkpoint_every=None if ckpt == "-" else 1000, resume=resume,
    )
    eqx.tree_serialise_leaves(out, (result.model, result.opt_state))
    """
)


def _child(args, env):
    return [sys.executable, "-c", CHILD, *args]


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(tmp_path):
    env = dict(os.environ)
    env["JAX_COMPILATION_CACHE_DIR"] = jax.config.jax_compilation_cache_dir
    ckpt, killed_out = tmp_path / "run.ckpt", tmp_path / "resumed.eqx"
    ref_out = tmp_path / "reference.eqx"
    reference = subprocess.Popen(_child(["-", str(ref_out), "0"], env), env=env)

    victim = subprocess.Popen(_child([str(ckpt), str(killed_out), "1"], env), env=env)
    deadline = time.monotonic() + 300
    while True:
        assert victim.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        if ckpt.exists() and read_checkpoint_meta(ckpt)["step"] >= 2000:
            break
        time.sleep(0.005)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    step_at_kill = read_checkpoint_meta(ckpt)["step"]
    assert 2000 <= step_at_kill < 20000
    assert not killed_out.exists()

    resumed = subprocess.run(_child([str(ckpt), str(killed_out), "1"], env), env=env)
    assert resumed.returncode == 0
    assert reference.wait() == 0
    assert json.loads(json.dumps(read_checkpoint_meta(ckpt)["step"])) == 20000
    assert Path(killed_out).read_bytes() == Path(ref_out).read_bytes()
