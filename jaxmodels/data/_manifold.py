import math

import jax.numpy as jnp
import jax.random as jr
from jax import lax
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Real

from ._split import _check_at_least, _check_scale


_KINDS = ("swiss_roll", "torus", "sphere")


def _draws(key: PRNGKeyArray, size: int) -> Float[Array, " size"]:
    """`size` independent draws, uniform on the open interval (-1, 1).

    One call of the PRNG per array: every `jax.random` call compiles its own
    Threefry kernel (about a second each on a loaded CPU), so the generator draws all
    it needs in two calls and transforms them."""
    low = jnp.nextafter(jnp.float32(-1.0), jnp.float32(0.0))
    return jr.uniform(key, (size,), minval=low, maxval=1.0)


def _normal(v: Float[Array, "..."]) -> Float[Array, "..."]:
    # The inverse CDF, as `jax.random.normal` computes it.
    return math.sqrt(2) * lax.erf_inv(v)


def _chart(
    v: Float[Array, "n coords"], kind: str, intrinsic: int
) -> tuple[Float[Array, "n base"], Float[Array, "n coords"]]:
    """Points on the base manifold in its standard embedding, and their coordinates,
    from draws `v` uniform on (-1, 1)."""
    if kind == "swiss_roll":
        # scikit-learn's `make_swiss_roll`: t in [1.5 pi, 4.5 pi], rescaled to [-1, 1].
        t = 1.5 * math.pi * (2 + v[:, 0])
        h = v[:, 1]
        r = t / (4.5 * math.pi)
        base = jnp.stack([r * jnp.cos(t), h, r * jnp.sin(t)], axis=-1)
        return base, jnp.stack([t, h], axis=-1)
    if kind == "torus":
        theta = math.pi * (v + 1)
        # The flat torus in R^(2 d), scaled to unit norm.
        base = jnp.concatenate([jnp.cos(theta), jnp.sin(theta)], axis=-1)
        return base / math.sqrt(intrinsic), theta
    z = _normal(v)
    z = z / jnp.linalg.norm(z, axis=-1, keepdims=True)
    return z, z


def manifold(
    key: PRNGKeyArray,
    n: int,
    *,
    kind: str = "torus",
    ambient: int = 10,
    intrinsic: int = 2,
    warp: Real[ArrayLike, ""] = 0.5,
    noise: Real[ArrayLike, ""] = 0.0,
) -> tuple[Float[Array, "{n} {ambient}"], Float[Array, "{n} _"]]:
    """Points on a low-dimensional manifold smoothly embedded in a higher-dimensional
    space: data for autoencoders and dimensionality reduction.

    A base manifold in its standard embedding `b(u)` in `R^m` (the swiss roll of
    scikit-learn in `R^3`, rescaled to `[-1, 1]^3`; the flat `d`-torus
    `(cos theta, sin theta) / sqrt(d)` in `R^(2 d)`; the unit `d`-sphere in `R^(d + 1)`)
    is mapped into `R^ambient` by the random smooth embedding

    `x = Q b + warp * P sin(W b + c)`,

    with `[Q P]` a uniformly random orthogonal matrix (`Q` its first `m` columns),
    `W` standard normal and `c` uniform on `(0, 2 pi)`. Since `Q^T x = b`, the map is
    injective (an embedding), and the nonlinear part bends the manifold into the
    `ambient - m` directions the linear part leaves free. Finally Gaussian noise of
    standard deviation `noise` is added to every coordinate. The embedding comes from
    its own subkey of `key` and does not depend on `n`; the samples and the noise come
    from the other (two calls with different `noise` differ by exactly the scaled
    noise). Draw one set and split it (e.g. with `train_test_split`) to get training
    and test points from the same distribution.

    **Arguments:**

    - `key`: a PRNG key (`jax.random.key`).
    - `n`: the number of samples, at least 1.
    - `kind`: `"swiss_roll"` (intrinsic dimension 2; `t` uniform on
        `[1.5 pi, 4.5 pi]`, height uniform on `[-1, 1]`), `"torus"` (angles uniform) or
        `"sphere"` (uniform on the sphere).
    - `ambient`: the dimension of the embedding space, at least `m` (3 for the swiss
        roll, `2 * intrinsic` for the torus, `intrinsic + 1` for the sphere).
    - `intrinsic`: the dimension `d` of the manifold, at least 1 (exactly 2 for the
        swiss roll).
    - `warp`: the amplitude of the nonlinear part of the embedding, non-negative (0
        gives a linear, isometric embedding).
    - `noise`: the standard deviation of the additive noise, non-negative.

    **Returns:**

    A tuple `(x, u)`: the float32 points `x` of shape `(n, ambient)` and the float32
    intrinsic coordinates `u` of each point: `(t, height)` of shape `(n, 2)` for the
    swiss roll, the angles `(n, intrinsic)` for the torus, and the point on the unit
    sphere `(n, intrinsic + 1)` for the sphere (which has no global chart).

    **Raises:**

    `ValueError` naming the argument if `n < 1`, `kind` is unknown, `intrinsic < 1` (or
    is not 2 for the swiss roll), `ambient` is smaller than the base embedding's
    dimension `m`, or `warp` or `noise` is negative.
    """
    _check_at_least(n, "n", 1)
    if kind not in _KINDS:
        raise ValueError(f"`kind` must be one of {_KINDS}; got {kind!r}.")
    _check_at_least(intrinsic, "intrinsic", 1)
    if kind == "swiss_roll" and intrinsic != 2:
        raise ValueError(
            f"`intrinsic` must be 2 for the swiss roll (a 2-D sheet); got {intrinsic}."
        )
    base_size = {"swiss_roll": 3, "torus": 2 * intrinsic, "sphere": intrinsic + 1}[kind]
    if ambient < base_size:
        raise ValueError(
            f"`ambient` must be at least {base_size} for a {kind} of intrinsic "
            f"dimension {intrinsic}; got {ambient}."
        )
    warp = _check_scale(warp, "warp")
    noise = _check_scale(noise, "noise")
    skey, ekey = jr.split(key)
    coords_size = {"swiss_roll": 2, "torus": intrinsic, "sphere": intrinsic + 1}[kind]
    free = ambient - base_size
    samples = _draws(skey, n * (coords_size + ambient))
    embedding = _draws(ekey, ambient * ambient + free * base_size + free)
    base, coords = _chart(
        samples[: n * coords_size].reshape(n, coords_size), kind, intrinsic
    )
    # A Haar-random orthogonal matrix: QR of a Gaussian one, with the signs of R's
    # diagonal folded back into Q.
    q, r = jnp.linalg.qr(_normal(embedding[: ambient**2]).reshape(ambient, ambient))
    q = q * jnp.sign(jnp.diagonal(r))[None, :]
    w = _normal(embedding[ambient**2 : ambient**2 + free * base_size])
    c = math.pi * (embedding[ambient**2 + free * base_size :] + 1)
    bend = jnp.sin(base @ w.reshape(free, base_size).T + c[None, :])
    x = base @ q[:, :base_size].T + warp * (bend @ q[:, base_size:].T)
    x = x + noise * _normal(samples[n * coords_size :]).reshape(n, ambient)
    return x.astype(jnp.float32), coords.astype(jnp.float32)
