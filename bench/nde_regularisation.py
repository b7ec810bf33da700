"""Solver-heuristic regularisation: training and prediction cost of neural ODEs trained
with and without it, and the liquid time-constant cell against ncps.

Part 1 (`--tasks reg`): the classifier of the `ode-spiral-regularised` experiment
(noisy two spirals, a neural ODE on the padded input, Tsit5 at tolerance
1e-5), trained with each variant from the same initial weights with the same recipe.
Per variant: the training step's wall clock (median over chunks of steps, compilation
excluded and reported apart), and at the end of training the test loss, the function
evaluations of a test solve and the wall clock of predicting the test set. There is no
peer library for this (none in Python implements the solver-heuristic regularisers),
so the comparison is with the unregularised model: `speedup` is its prediction time
over the variant's.

Part 2 (`--tasks ltc`): the LTC cell against ncps's `LTC` (PyTorch), see
`bench/_ltc_peer.py`.

Run: `python bench/nde_regularisation.py [--quick] [--record] [--tasks reg,ltc]`.
"""

import time

import equinox as eqx
import jax
import jax.random as jr
import optax
from _common import block, machine, median, parse_args, report

from jaxmodels.experiments.nde import regularised as reg


VARIANTS = ("none", "global", "local", "kinetic")


def bench_regularisation(quick: bool) -> list[dict]:
    # The full mode's classifier (256 points); quick trains for fewer steps.
    sizes = reg._sizes(False)
    steps = 300 if quick else sizes["steps"]
    chunk = 25
    weights = {"none": 0.0, "global": 0.1, "local": 0.1, "kinetic": 0.01}
    x, y = reg.spirals(jr.key(1), sizes["n_train"])
    x_test, y_test = reg.spirals(jr.key(2), sizes["n_test"])
    optim = optax.adam(1e-2)
    rows = []
    base_predict = None
    for kind in VARIANTS:
        model = reg._Classifier(sizes["width"], key=jr.key(0))
        params, static = eqx.partition(model, eqx.is_array)

        @jax.jit
        def run(params, state, key):
            def step(carry, k):
                params, state = carry
                value, grads = jax.value_and_grad(
                    lambda p: reg._classifier_loss(
                        kind, eqx.combine(p, static), weights[kind], (x, y), k
                    )
                )(params)
                updates, state = optim.update(grads, state)
                return (optax.apply_updates(params, updates), state), value

            (params, state), values = jax.lax.scan(
                step, (params, state), jr.split(key, chunk)
            )
            return params, state, values

        state = optim.init(params)
        t0 = time.perf_counter()
        params, state, _ = block(run(params, state, jr.key(10)))
        first = time.perf_counter() - t0
        times = []
        for i in range(steps // chunk - 1):
            t0 = time.perf_counter()
            params, state, _ = block(run(params, state, jr.key(11 + i)))
            times.append((time.perf_counter() - t0) / chunk)
        step_s = median(times)
        trained = eqx.combine(params, static)
        predict = eqx.filter_jit(reg._classifier_test)
        block(predict(trained, (x_test, y_test)))
        pred_times = []
        for _ in range(5 if quick else 20):
            t0 = time.perf_counter()
            result = block(predict(trained, (x_test, y_test)))
            pred_times.append(time.perf_counter() - t0)
        predict_s = median(pred_times)
        if kind == "none":
            base_predict = predict_s
        assert base_predict is not None
        rows.append(
            {
                "task": f"classifier, {kind}",
                "ours": kind,
                "peer": "none",
                "train_step_ms": 1e3 * step_s,
                "compile_s": first - chunk * step_s,
                "predict_ms": 1e3 * predict_s,
                "speedup": base_predict / predict_s,
                "test_nfe": float(result["nfe"]),
                "test_nfe_max": float(result["nfe_max"]),
                "test_loss": float(result["loss"]),
                "test_accuracy": float(result["accuracy"]),
            }
        )
        print(rows[-1], flush=True)
    return rows


def main():
    def extra(parser):
        parser.add_argument("--tasks", default="reg,ltc", help="reg, ltc or both")

    args = parse_args(__doc__.splitlines()[0], extra)
    tasks = args.tasks.split(",")
    if "ltc" in tasks:
        # Its own table, columns and record: see bench/_ltc_peer.py.
        from _ltc_peer import main as ltc_main

        ltc_main(args)
    if "reg" not in tasks:
        return
    info = machine()
    rows = bench_regularisation(args.quick)
    columns = [
        "task",
        "ours",
        "peer",
        "train_step_ms",
        "compile_s",
        "predict_ms",
        "speedup",
        "test_nfe",
        "test_nfe_max",
        "test_loss",
        "test_accuracy",
    ]
    report(
        "nde regularisation (bench/nde_regularisation.py)",
        rows,
        columns,
        args,
        settings={
            "reg": "two spirals (3/4 turn, noise 0.15), 256 training points, neural ODE "
            "4-32-32-4 (2 padded zeros), Tsit5 rtol=atol=1e-5 over [0, 1], Adam 1e-2, "
            "full batch; weights: global/local error 0.1, kinetic+Jacobian 0.01",
            "float": "float32",
        },
        notes=[
            "train_step_ms: median over chunks of 25 steps (one jitted scan each) "
            "after the first chunk; compile_s = first chunk minus 25 median steps",
            "predict_ms: median wall clock of the jitted test-set solve (vmapped), "
            "after training; speedup = the unregularised model's predict_ms over the "
            "variant's; test_nfe: mean function evaluations per test solve, test_nfe_max: the most for "
            "one example (a vmapped solve runs as long as its costliest example)",
        ],
        info=info,
    )


if __name__ == "__main__":
    main()
