"""The signal-propagation phase diagram of tanh networks (`criticality-depth`).

"The Principles of Deep Learning Theory" (Roberts, Yaida and Hanin, 2022) and
"Exponential expressivity in deep neural networks through transient chaos" (Poole et
al., 2016): in the `(C_b, C_W)` plane, the critical line where a small difference
between two inputs neither shrinks (order: correlations collapse to 1) nor grows
(chaos: inputs decorrelate), `chi_perp = 1` at the fixed point. The analytic line
(`order_chaos_boundary`) is compared with a Monte Carlo estimate from random wide
networks: for each `C_b` and a grid of `C_W`, an infinitesimal input perturbation is
pushed through `burn_in` layers (to reach the fixed point `K*`) and then `depth` more;
the measured growth per layer `chi_hat = (E|dz^{B+L}|^2 / E|dz^B|^2)^(1/L)` crosses 1
at the Monte Carlo critical `C_W` (linear interpolation of `log chi_hat` in `C_W`).
Networks are sampled exactly but cheaply: with Gaussian weights and one input, given
`(s, t) = (tanh(z), tanh'(z) dz)` the rows of `(W s, W t)` are i.i.d. Gaussian with
covariance `C_W / n` times the Gram matrix of `(s, t)`.
"""

from typing import Any

import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import PRNGKeyArray

from ... import kernels
from .._registry import Experiment, Study, register


def _growth(key, c_w, c_b, *, width, networks, burn_in, depth):
    """Measured `log chi_hat` per layer for one `(c_b, c_w)`, and per-network ratios."""

    def layer(carry, key):
        z, dz = carry
        s, t = jnp.tanh(z), (1 - jnp.tanh(z) ** 2) * dz
        a, b, c = jnp.mean(s * s), jnp.mean(s * t), jnp.mean(t * t)
        l11 = jnp.sqrt(a)
        l21 = b / l11
        l22 = jnp.sqrt(jnp.maximum(c - l21**2, 0))
        xi = jr.normal(key, (3, width))
        z = jnp.sqrt(c_w) * l11 * xi[0] + jnp.sqrt(c_b) * xi[2]
        dz = jnp.sqrt(c_w) * (l21 * xi[0] + l22 * xi[1])
        # Rescaling the tangent keeps it finite; the growth is accumulated in logs.
        size = jnp.mean(dz * dz)
        return (z, dz / jnp.sqrt(size)), jnp.log(size)

    def one(key):
        zkey, dkey, lkey = jr.split(key, 3)
        z = jnp.sqrt(c_b + c_w) * jr.normal(zkey, (width,))
        dz = jr.normal(dkey, (width,))
        dz = dz / jnp.sqrt(jnp.mean(dz * dz))
        _, logs = jax.lax.scan(layer, (z, dz), jr.split(lkey, burn_in + depth))
        return jnp.sum(logs[burn_in:])

    log_ratios = jax.vmap(one)(jr.split(key, networks))
    return log_ratios


def _critical_from_grid(c_ws, log_chi):
    """The `C_W` where `log_chi` (increasing in `C_W`) crosses 0, by linear
    interpolation between the grid points around the first sign change."""
    above = log_chi > 0
    index = jnp.clip(jnp.argmax(above), 1, c_ws.shape[0] - 1)
    x0, x1 = c_ws[index - 1], c_ws[index]
    y0, y1 = log_chi[index - 1], log_chi[index]
    return x0 - y0 * (x1 - x0) / (y1 - y0)


def _setup(quick: bool, key: PRNGKeyArray) -> Study:
    if quick:
        c_bs = [0.05, 0.1, 0.2, 0.3]
        width, networks, burn_in, depth, boots, image = 128, 48, 16, 8, 50, 16
    else:
        c_bs = [0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4]
        width, networks, burn_in, depth, boots, image = 256, 96, 24, 16, 200, 40
    c_ws = jnp.linspace(1.0, 3.2, 12)

    @jax.jit
    def monte_carlo(key):
        def per_cb(key, c_b):
            keys = jr.split(key, c_ws.shape[0])
            return jax.vmap(
                lambda k, c_w: _growth(
                    k,
                    c_w,
                    c_b,
                    width=width,
                    networks=networks,
                    burn_in=burn_in,
                    depth=depth,
                )
            )(keys, c_ws)

        return jax.vmap(per_cb)(jr.split(key, len(c_bs)), jnp.asarray(c_bs))

    def estimate(log_ratios):
        # E over networks of the growth, then per layer: log chi_hat.
        shift = jnp.max(log_ratios, -1, keepdims=True)
        mean = jnp.log(jnp.mean(jnp.exp(log_ratios - shift), -1)) + shift[..., 0]
        log_chi = mean / depth
        return jax.vmap(lambda y: _critical_from_grid(c_ws, y))(log_chi), log_chi

    def measure(key: PRNGKeyArray) -> dict[str, Any]:
        mkey, bkey = jr.split(key)
        log_ratios = monte_carlo(mkey)
        critical_mc, log_chi = estimate(log_ratios)
        # Bootstrap over networks: the Monte Carlo resolution of the critical C_W.
        picks = jr.randint(bkey, (boots, networks), 0, networks)
        boot = jax.vmap(lambda p: estimate(log_ratios[..., p])[0])(picks)
        analytic = kernels.order_chaos_boundary(jnp.tanh, jnp.asarray(c_bs))
        relu_cb, relu_cw = kernels.critical_initialisation(jax.nn.relu)
        tanh_cb, tanh_cw = kernels.critical_initialisation(jnp.tanh)
        grid_cb = jnp.linspace(0.0, 0.45, image)
        grid_cw = jnp.linspace(1.0, 3.2, image)

        def xi(c_b, c_w):
            return kernels.depth_scales(jnp.tanh, c_w=c_w, c_b=c_b, throw=False)[1]

        xis = jax.vmap(lambda cw: jax.vmap(lambda cb: xi(cb, cw))(grid_cb))(grid_cw)
        error = jnp.mean(jnp.abs(critical_mc - analytic))
        return {
            "mean_abs_critical_cw_error": float(error),
            "bootstrap_se_critical_cw": [float(s) for s in jnp.std(boot, 0)],
            "c_b": c_bs,
            "critical_cw_monte_carlo": [float(c) for c in critical_mc],
            "critical_cw_analytic": [float(c) for c in analytic],
            "relu_critical_cb_cw": [float(relu_cb), float(relu_cw)],
            "tanh_critical_cb_cw": [float(tanh_cb), float(tanh_cw)],
            "grid_c_b": [float(c) for c in grid_cb],
            "grid_c_w": [float(c) for c in grid_cw],
            "log10_depth_scale": [
                [float(v) for v in row] for row in jnp.log10(jnp.minimum(xis, 1e4))
            ],
            "c_w_grid": [float(c) for c in c_ws],
            "log_chi_hat": [[float(v) for v in row] for row in log_chi],
        }

    return Study(measure=measure, plot=_plot)


def _plot(results: dict[str, Any], ax: Any) -> None:
    import numpy as np

    cb, cw = np.asarray(results["grid_c_b"]), np.asarray(results["grid_c_w"])
    image = ax.imshow(
        np.asarray(results["log10_depth_scale"]),
        origin="lower",
        aspect="auto",
        extent=(cb[0], cb[-1], cw[0], cw[-1]),
        cmap="viridis",
    )
    ax.figure.colorbar(image, ax=ax, label="log10 correlation depth scale")
    ax.plot(
        results["c_b"],
        results["critical_cw_analytic"],
        "w-",
        label="analytic chi_perp = 1",
    )
    ax.errorbar(
        results["c_b"],
        results["critical_cw_monte_carlo"],
        yerr=results["bootstrap_se_critical_cw"],
        fmt="o",
        color="tab:red",
        label="Monte Carlo (random tanh nets)",
    )
    ax.plot([0.0], [1.0], "w*", markersize=10, label="tanh criticality (0, 1)")
    ax.set_xlabel("C_b")
    ax.set_ylabel("C_W")
    ax.set_title("tanh phase diagram: order (below) / chaos (above)")
    ax.legend(fontsize="small", loc="upper left")


criticality_depth = register(
    Experiment(
        name="criticality-depth",
        family="kernels",
        description=(
            "Order-to-chaos line of tanh MLPs in the (C_b, C_W) plane (Roberts, Yaida "
            "and Hanin, 2022; Poole et al., 2016): the C_W where the growth per layer "
            "of an input perturbation in random wide networks (after a burn-in to the "
            "fixed point) crosses 1, against the analytic chi_perp = 1 line; metric: "
            "the mean |C_W(Monte Carlo) - C_W(analytic)| over the C_b grid. ReLU (0, 2) "
            "and tanh (0, 1) critical points are reported beside it. The quick mode "
            "(width 128, 48 networks) has a larger bootstrap error, hence its target."
        ),
        metric="mean_abs_critical_cw_error",
        target=0.03,
        higher_is_better=False,
        setup=_setup,
        quick_target=0.06,
    )
)
