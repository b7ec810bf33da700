import math
from collections.abc import Callable

import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from ._split import _check_at_least


# name: (variable names, (low, high) per variable, formula on the columns of x).
# Formulas and ranges of the Feynman symbolic-regression database (Udrescu and
# Tegmark, "AI Feynman", 2020), as in Table 2 of Liu et al., "KAN: Kolmogorov-Arnold
# Networks" (2024).
_EQUATIONS: dict[
    str, tuple[tuple[str, ...], tuple[tuple[float, float], ...], Callable]
] = {
    "I.6.2a": (
        ("theta",),
        ((1.0, 3.0),),
        lambda t: jnp.exp(-(t**2) / 2) / math.sqrt(2 * math.pi),
    ),
    "I.6.2": (
        ("sigma", "theta"),
        ((1.0, 3.0), (1.0, 3.0)),
        lambda s, t: jnp.exp(-((t / s) ** 2) / 2) / (math.sqrt(2 * math.pi) * s),
    ),
    "I.12.11": (
        ("q", "Ef", "B", "v", "theta"),
        ((1.0, 5.0),) * 5,
        lambda q, ef, b, v, t: q * (ef + b * v * jnp.sin(t)),
    ),
    "I.13.12": (
        ("m1", "m2", "r1", "r2", "G"),
        ((1.0, 5.0),) * 5,
        lambda m1, m2, r1, r2, g: g * m1 * m2 * (1 / r2 - 1 / r1),
    ),
    "I.27.6": (
        ("d1", "d2", "n"),
        ((1.0, 5.0),) * 3,
        lambda d1, d2, n: 1 / (1 / d1 + n / d2),
    ),
    "II.2.42": (
        ("kappa", "T2", "T1", "A", "d"),
        ((1.0, 5.0),) * 5,
        lambda kappa, t2, t1, a, d: kappa * (t2 - t1) * a / d,
    ),
}


def feynman_equations() -> dict[
    str, tuple[tuple[str, ...], tuple[tuple[float, float], ...]]
]:
    """The equations `feynman` knows: name to (variable names, their ranges)."""
    return {name: (names, ranges) for name, (names, ranges, _) in _EQUATIONS.items()}


def feynman(
    key: PRNGKeyArray, n: int, *, equation: str
) -> tuple[Float[Array, "{n} d"], Float[Array, "{n} 1"]]:
    """Samples of an equation of the Feynman symbolic-regression benchmark.

    The equations (Udrescu and Tegmark, "AI Feynman: A physics-inspired method for
    symbolic regression", 2020) that Liu et al., "KAN: Kolmogorov-Arnold Networks"
    (2024) fit with small KANs, with the variable ranges of the AI Feynman database:

    - `"I.6.2a"`: `exp(-theta^2 / 2) / sqrt(2 pi)`, `theta` in `[1, 3]`;
    - `"I.6.2"`: `exp(-(theta / sigma)^2 / 2) / (sqrt(2 pi) sigma)`, `sigma, theta` in
        `[1, 3]`;
    - `"I.12.11"`: `q (Ef + B v sin(theta))`, all five in `[1, 5]`;
    - `"I.13.12"`: `G m1 m2 (1 / r2 - 1 / r1)`, columns `m1, m2, r1, r2, G`, all in
        `[1, 5]`;
    - `"I.27.6"`: `1 / (1 / d1 + n / d2)`, columns `d1, d2, n`, all in `[1, 5]`;
    - `"II.2.42"`: `kappa (T2 - T1) A / d`, columns `kappa, T2, T1, A, d`, all in
        `[1, 5]`.

    The inputs are independent and uniform on their ranges; the targets are exact (no
    noise). The KAN paper uses dimensionless forms of some of these (such as
    `1 + a sin(theta)` for I.12.11); these are the dimensional originals.

    **Arguments:**

    - `key`: a PRNG key (`jax.random.key`).
    - `n`: the number of samples, at least 1.
    - `equation`: one of the names above.

    **Returns:**

    A tuple `(x, y)` of float32 arrays: `x` of shape `(n, d)` (the `d` variables in the
    order listed) and `y` of shape `(n, 1)`.

    **Raises:**

    `ValueError` naming the argument for `n < 1` or an unknown `equation`.
    """
    _check_at_least(n, "n", 1)
    if equation not in _EQUATIONS:
        raise ValueError(
            f"`equation` must be one of {sorted(_EQUATIONS)}, got {equation!r}."
        )
    _, ranges, formula = _EQUATIONS[equation]
    low = jnp.array([lo for lo, _ in ranges], jnp.float32)
    high = jnp.array([hi for _, hi in ranges], jnp.float32)
    x = jr.uniform(key, (n, len(ranges)), jnp.float32, low, high)
    y = formula(*(x[:, i] for i in range(len(ranges))))
    return x, y[:, None].astype(jnp.float32)
