"""`kan-toy`: the first example of the KAN paper, `f(x, y) = exp(sin(pi x) + y^2)`.

Liu et al., "KAN: Kolmogorov-Arnold Networks" (2024), Section 2.4 / Figure 2.3: a
`[2, 5, 1]` B-spline KAN is trained by full-batch LBFGS on 1000 samples of
`exp(sin(pi x) + y^2)` on `[-1, 1]^2`, and its grid is extended between stages
(3, 5, 10, 20, 50, ... intervals) so that the test error keeps falling with the grid
until the parameters approach the number of samples. Here each stage starts with
`update_grid` (the knots follow the percentiles of every layer's inputs, as pykan does
while it trains) and `extend_grid` to the next size, then runs 1000 LBFGS iterations
(`optax.lbfgs` with a backtracking line search, one `lax.scan` under one `jit` per
stage), in float64 as pykan does. (pykan's "200 steps" per grid are 200 calls of its
LBFGS, each of up to 20 iterations; 200 iterations left the fit short: train RMSE 4.9e-4
at grid 20 for seed 0 on 1000 samples, against 3.8e-5 with 1000.) The training set has
3000 samples, not the paper's 1000: with 1000, the test RMSE at grid 20 was decided by a
handful of test points lying just outside the range of the training inputs or of the
hidden values, where the boundary splines extrapolate (seed 0, 1000 iterations: test
RMSE 4.1e-4, 6.3e-5 without the 10 such points out of 1000; with 200 iterations it was
1.5e-3, above the 1e-3 target, and from 3.7e-4 to 1.5e-3 over seeds 0 to 5); 3000
samples cover the edges of the square and of the hidden ranges better. Measured with
this recipe: test RMSE 1.1e-4, 1.7e-4 and 5.0e-5 for seeds 0, 1 and 2. A tanh MLP
`[2, w, w, 1]` with at least ten times the KAN's final parameter count (3777 against
375) is trained by LBFGS for as many iterations in total, once with each line search
(backtracking, and optax's default zoom), and the run with the lower training error is
kept: with backtracking alone its LBFGS stalls at the mean for seed 1 (test RMSE
1.04). Its test RMSE is reported beside the KAN's: 1.8e-3 (zoom), 2.2e-3 (zoom) and
1.4e-3 (backtracking) for seeds 0, 1 and 2, 11 to 27 times the KAN's. The grids stop
at 20: at 50 (825 parameters) the KAN overfits here
(seed 0: train RMSE 3.2e-5, test RMSE 2.7e-3, up from 1.7e-4 at 20), the interpolation
regime the paper's Figure 2.3 shows for larger grids.
"""

from typing import Any, Literal

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from ... import kan
from .._registry import Experiment, Study, register


def toy_function(x: Float[Array, "n 2"]) -> Float[Array, "n 1"]:
    """`exp(sin(pi x_0) + x_1^2)`, the KAN paper's first example."""
    return jnp.exp(jnp.sin(jnp.pi * x[:, :1]) + x[:, 1:] ** 2)


def _rmse(model: PyTree, x: Array, y: Array) -> Array:
    return jnp.sqrt(jnp.mean((jax.vmap(model)(x) - y) ** 2))


def lbfgs(
    model: PyTree,
    x: Array,
    y: Array,
    steps: int,
    linesearch: Literal["backtracking", "zoom"] = "backtracking",
) -> tuple[PyTree, Array]:
    """`steps` full-batch LBFGS steps on the mean squared error, one `lax.scan`.

    `optax.lbfgs` with a backtracking (Armijo) line search by default, which runs
    about twice as fast as optax's default zoom (strong Wolfe) line search on the KAN
    and reaches the same loss; `linesearch="zoom"` for the latter. Leaves that the
    model reads under `stop_gradient` (a KAN's knots and mask) get zero gradients and
    so stay put. Returns the trained model and the training losses.
    """
    params, static = eqx.partition(model, eqx.is_inexact_array)
    # One flat vector: LBFGS's tree operations then cost one op each, not one per
    # leaf, which cuts the compile time several-fold.
    flat, unravel = jax.flatten_util.ravel_pytree(params)

    def loss(v):
        model = eqx.combine(unravel(v), static)
        return jnp.mean((jax.vmap(model)(x) - y) ** 2)

    if linesearch == "backtracking":
        optim = optax.lbfgs(
            linesearch=optax.scale_by_backtracking_linesearch(max_backtracking_steps=20)
        )
    elif linesearch == "zoom":
        optim = optax.lbfgs()
    else:
        raise ValueError(
            f'`linesearch` must be "backtracking" or "zoom", got {linesearch!r}.'
        )

    def step(carry, _):
        v, state = carry
        # A fresh gradient each step and values only in the line search: one copy of
        # the backward pass in the program instead of three.
        value, grad = jax.value_and_grad(loss)(v)
        updates, state = optim.update(
            grad, state, v, value=value, grad=grad, value_fn=loss
        )
        return (optax.apply_updates(v, updates), state), value

    (flat, _), losses = jax.lax.scan(step, (flat, optim.init(flat)), None, length=steps)
    return eqx.combine(unravel(flat), static), losses


@eqx.filter_jit
def _stage(
    model: kan.KAN,
    x: Float[Array, "n 2"],
    y: Float[Array, "n 1"],
    x_test: Float[Array, "m 2"],
    y_test: Float[Array, "m 1"],
    grid_size: int,
    steps: int,
) -> tuple[kan.KAN, Array, Array]:
    model = kan.update_grid(model, x)
    if grid_size != model.layers[0].basis.grid_size:
        model = kan.extend_grid(model, x, grid_size)
    model, _ = lbfgs(model, x, y, steps)
    return model, _rmse(model, x, y), _rmse(model, x_test, y_test)


def train_kan(
    key: PRNGKeyArray,
    x: Float[Array, "n 2"],
    y: Float[Array, "n 1"],
    x_test: Float[Array, "m 2"],
    y_test: Float[Array, "m 1"],
    grids: tuple[int, ...],
    steps: int,
) -> tuple[kan.KAN, Array, Array]:
    """The staged training of a `[2, 5, 1]` KAN: per grid size, `update_grid`,
    `extend_grid` (after the first stage) and `steps` LBFGS steps, one `jit` per
    stage. (One program for all stages hung in XLA:CPU's runtime, at zero CPU, for
    grids 3, 5, 10.) Returns the model and the train and test RMSE after each stage."""
    model = eqx.filter_jit(
        lambda k: kan.KAN(
            [2, 5, 1], basis=lambda n: kan.BSpline(n, grid_size=grids[0]), key=k
        )
    )(key)
    train, test = [], []
    for g in grids:
        model, train_rmse, test_rmse = _stage(model, x, y, x_test, y_test, g, steps)
        train.append(train_rmse)
        test.append(test_rmse)
    return model, jnp.stack(train), jnp.stack(test)


@eqx.filter_jit
def train_mlp(
    key: PRNGKeyArray,
    x: Float[Array, "n 2"],
    y: Float[Array, "n 1"],
    x_test: Float[Array, "m 2"],
    y_test: Float[Array, "m 1"],
    width: int,
    steps: int,
    linesearch: Literal["backtracking", "zoom"] = "backtracking",
) -> tuple[eqx.nn.MLP, Array, Array]:
    """A tanh MLP `[2, width, width, 1]` trained by LBFGS; its train and test RMSE."""
    mlp = eqx.nn.MLP(2, 1, width, 2, jnp.tanh, key=key)
    mlp, _ = lbfgs(mlp, x, y, steps, linesearch)
    return mlp, _rmse(mlp, x, y), _rmse(mlp, x_test, y_test)


def count_parameters(model: PyTree) -> int:
    """Trainable parameters: a KAN layer's coefficients and scales (not its knots or
    mask); every inexact array of anything else."""
    if isinstance(model, kan.KAN):
        return sum(
            layer.coef.size + layer.scale_base.size + layer.scale_spline.size
            for layer in model.layers
        )
    return sum(
        leaf.size
        for leaf in jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_inexact_array))
    )


def _mlp_width(params: int) -> int:
    # [2, w, w, 1]: 2w + w + w^2 + w + w + 1 parameters.
    w = 1
    while w * w + 5 * w + 1 < params:
        w += 1
    return w


def _setup(quick: bool, key: PRNGKeyArray) -> Study:
    del key
    grids = (5, 10) if quick else (3, 5, 10, 20)
    # pykan's "200 LBFGS steps" per grid are 200 calls of its LBFGS, each up to 20
    # iterations; 1000 iterations per grid come closer than 200. 3000 training samples
    # instead of the paper's 1000: see the module docstring.
    steps = 100 if quick else 1000
    n_train = 1000 if quick else 3000
    n_test = 1000

    def measure(key: PRNGKeyArray) -> dict[str, Any]:
        dkey, tkey, kkey, mkey = jr.split(key, 4)
        with jax.enable_x64(True):
            x = jr.uniform(dkey, (n_train, 2), jnp.float64, -1.0, 1.0)
            x_test = jr.uniform(tkey, (n_test, 2), jnp.float64, -1.0, 1.0)
            y, y_test = toy_function(x), toy_function(x_test)
            model, train_rmse, test_rmse = train_kan(
                kkey, x, y, x_test, y_test, grids, steps
            )
            kan_params = count_parameters(model)
            curves = eqx.filter_jit(
                lambda m: [kan.edge_curves(layer, n=40) for layer in m.layers]
            )(model)
            results = {
                "test_rmse": float(test_rmse[-1]),
                "kan_params": kan_params,
                "grids": list(grids),
                "steps_per_grid": steps,
                "train_rmse_per_grid": np.asarray(train_rmse).tolist(),
                "test_rmse_per_grid": np.asarray(test_rmse).tolist(),
                "edges_x": [np.asarray(c[0]).tolist() for c in curves],
                "edges_y": [np.asarray(c[1]).tolist() for c in curves],
            }
            # The MLP baseline only in the full mode: its compilation would add a
            # third to the quick mode's time.
            if not quick:
                # The baseline gets both line searches and keeps the one with the
                # lower training error: with backtracking alone its LBFGS stalls at
                # the mean for seed 1 (test RMSE 1.04).
                width = _mlp_width(10 * kan_params)
                runs = {
                    ls: train_mlp(
                        mkey, x, y, x_test, y_test, width, steps * len(grids), ls
                    )
                    for ls in ("backtracking", "zoom")
                }
                best = min(runs, key=lambda ls: float(runs[ls][1]))
                mlp, _, mlp_rmse = runs[best]
                results |= {
                    "mlp_test_rmse": float(mlp_rmse),
                    "mlp_linesearch": best,
                    "mlp_train_rmse_by_linesearch": {
                        ls: float(r[1]) for ls, r in runs.items()
                    },
                    "mlp_test_rmse_by_linesearch": {
                        ls: float(r[2]) for ls, r in runs.items()
                    },
                    "kan_beats_mlp": bool(test_rmse[-1] < mlp_rmse),
                    "mlp_params": count_parameters(mlp),
                    "mlp_width": width,
                }
        return results

    return Study(measure=measure, plot=_plot)


def _plot(results: dict[str, Any], ax: Any) -> None:
    grids = results["grids"]
    ax.loglog(grids, results["test_rmse_per_grid"], "o-", label="KAN [2, 5, 1], test")
    ax.loglog(grids, results["train_rmse_per_grid"], "x--", label="KAN, train")
    title = f"exp(sin(pi x) + y^2): KAN ({results['kan_params']} params)"
    if "mlp_test_rmse" in results:
        width = results["mlp_width"]
        ax.axhline(
            results["mlp_test_rmse"],
            color="C3",
            label=f"MLP [2, {width}, {width}, 1], test",
        )
        title += f" vs MLP ({results['mlp_params']})"
    ax.set_xlabel("grid size G")
    ax.set_ylabel("RMSE")
    ax.set_title(title, fontsize="small")
    ax.legend(fontsize="x-small", loc="lower left")
    # The learned edge functions, one small inset per edge (first layer: 2 x 5,
    # second layer: 5), normalised to their own range.
    for layer, (xs, ys) in enumerate(zip(results["edges_x"], results["edges_y"])):
        xs, ys = np.asarray(xs), np.asarray(ys)
        n_out, n_in = ys.shape[:2]
        for j in range(n_out):
            for i in range(n_in):
                col = j * n_in + i
                inset = ax.inset_axes(
                    [0.52 + 0.048 * (col % 10), 0.86 - 0.12 * layer, 0.042, 0.1]
                )
                inset.plot(xs[i], ys[j, i], lw=0.8, color="k" if layer else "C0")
                inset.set_xticks([])
                inset.set_yticks([])


kan_toy = register(
    Experiment(
        name="kan-toy",
        family="kan",
        description=(
            "A [2, 5, 1] B-spline KAN on exp(sin(pi x) + y^2) (Liu et al. 2024, "
            "Fig. 2.3): full-batch LBFGS in float64 at grids 3, 5, 10, 20 (1000 "
            "iterations each) with update_grid + extend_grid between stages, 3000 "
            "train / 1000 test samples; a tanh MLP with >= 10x the parameters trained "
            "by LBFGS with either line search (the lower training error kept) as a "
            "baseline (full mode only). Metric: test RMSE after the last grid (full "
            "mode: 1.1e-4, 1.7e-4, 5.0e-5 for seeds 0, 1, 2; the MLP 1.8e-3, 2.2e-3, "
            "1.4e-3). "
            "Quick: grids 5 and 10 only, 100 iterations each on 1000 samples, which "
            "reach about 3e-3 (the 1e-3 target needs the finer grids and longer "
            "training), hence a quick target of 1e-2."
        ),
        metric="test_rmse",
        target=1e-3,
        higher_is_better=False,
        setup=_setup,
        quick_target=1e-2,
    )
)
