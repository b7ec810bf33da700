"""Asynchronous Glauber Monte Carlo of a Hebbian network: jaxmodels against NumPy.

`N = 1000` spins, `K = 50` random patterns, `64` replicas, temperature `T = 0.5`. One
sweep visits every spin once in a fresh random order per replica; each visit draws one
uniform number and updates the `K` overlaps incrementally (`O(K)` per visit, `O(N K)`
per sweep) on both sides. The NumPy reference is vectorised over the replicas (one
Python step per spin position, all replicas at once). Both sides start from pattern 0
with 20% of the spins flipped; before timing, the mean overlap with pattern 0 after a
few sweeps must agree within Monte Carlo error (the random streams differ, the
dynamics are the same).
"""

import time

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from _common import median

import jaxmodels.memory as jmm


N, K, REPLICAS, T = 1000, 50, 64, 0.5


def _numpy_sweeps(xi, s, sweeps, rng):
    """Asynchronous heat-bath sweeps, vectorised over replicas (rows of `s`)."""
    xi_t = np.ascontiguousarray(xi.T)
    r, n = s.shape
    rows = np.arange(r)
    for _ in range(sweeps):
        order = np.argsort(rng.random((r, n)), axis=1)
        noise = rng.random((r, n))
        a = s @ xi.T
        for t in range(n):
            i = order[:, t]
            col = xi_t[i]
            old = s[rows, i]
            h = np.einsum("rk,rk->r", col, a - col * old[:, None]) / n
            new = np.where(noise[:, t] < 1 / (1 + np.exp(-2 * h / T)), 1.0, -1.0)
            a += col * (new - old)[:, None]
            s[rows, i] = new
    return s


def bench_glauber(quick: bool) -> list[dict]:
    sweeps = 2 if quick else 5
    repeats = 3 if quick else 5
    xi = np.asarray(jmm.random_patterns(jr.key(0), K, N))
    flips = np.asarray(jr.bernoulli(jr.key(1), 0.2, (REPLICAS, N)))
    s0 = np.where(flips, -xi[0], xi[0]).astype(np.float32)
    net = jmm.HopfieldNetwork(jnp.asarray(xi))

    @jax.jit
    def run(s, keys):
        return jax.vmap(
            lambda s, k: net.run(s, key=k, temperature=T, sweeps=sweeps).value
        )(s, keys)

    keys = jr.split(jr.key(2), REPLICAS)
    t0 = time.perf_counter()
    out = jax.block_until_ready(run(jnp.asarray(s0), keys))
    first = time.perf_counter() - t0
    times = []
    for i in range(repeats):
        keys = jr.split(jr.key(3 + i), REPLICAS)
        t0 = time.perf_counter()
        out = jax.block_until_ready(run(jnp.asarray(s0), keys))
        times.append(time.perf_counter() - t0)
    jax_t = median(times)

    rng = np.random.default_rng(0)
    np_times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ref = _numpy_sweeps(xi.astype(np.float32), s0.copy(), sweeps, rng)
        np_times.append(time.perf_counter() - t0)
    np_t = median(np_times)

    m_jax = np.asarray(out) @ xi[0] / N
    m_np = ref @ xi[0] / N
    err = np.sqrt(m_jax.var() / REPLICAS + m_np.var() / REPLICAS)
    if abs(m_jax.mean() - m_np.mean()) > 5 * err + 1e-3:
        raise AssertionError(
            f"the two sides disagree: mean overlap {m_jax.mean():.4f} (jaxmodels) vs "
            f"{m_np.mean():.4f} (NumPy), standard error {err:.4f}"
        )
    return [
        {
            "impl": "jaxmodels",
            "sweeps_per_s": sweeps / jax_t,
            "compile_s": first - jax_t,
            "mean_overlap": float(m_jax.mean()),
        },
        {
            "impl": "numpy",
            "sweeps_per_s": sweeps / np_t,
            "compile_s": None,
            "mean_overlap": float(m_np.mean()),
        },
    ]


if __name__ == "__main__":
    for row in bench_glauber(quick=True):
        print(row)
