"""`jaxmodels.nde` training steps against torchdiffeq, torchsde, torchcde and diffrax.

Three training steps, each side by side in one run, every side starting from the same
float32 weights and seeing the same batches:

- **ODE**, the spiral of torchdiffeq's `examples/ode_demo.py`: the true dynamics
  `dy/dt = (y**3) @ A` from `y0 = [2, 0]` at 1000 times on `[0, 25]`; the model's
  field is `Linear(2, 50) -> tanh -> Linear(50, 2)` applied to `y**3`; a batch is 20
  random windows of 10 consecutive times; loss `mean |pred - y|`; RMSprop 1e-3
  (torch's defaults: decay 0.99, eps 1e-8 outside the square root); Dormand-Prince 5(4)
  at rtol 1e-7, atol 1e-9 with the RMS error norm on both sides. Gradients by
  backpropagation through the solver (`RecursiveCheckpointAdjoint` against autograd
  through `torchdiffeq.odeint`) and by the continuous adjoint (`BacksolveAdjoint`
  against `torchdiffeq.odeint_adjoint`, with torchdiffeq's default adjoint norm, the
  largest RMS over the state, its adjoint and each parameter's adjoint, on both sides).
  Peers: torchdiffeq and the same model written directly with `diffrax.diffeqsolve`.
- **SDE**: a neural SDE on a state of 4 (drift MLP 4-32-4, tanh; diagonal diffusion
  MLP 4-32-4, sigmoid output), 64 paths on `[0, 1]`, Euler-Maruyama (Ito) with fixed
  steps of 0.01, saved at 11 times, squared error to a target curve, Adam 1e-3.
  Peers: `torchsde.sdeint(method="euler")` with a `BrownianInterval` given the step
  as its `dt` hint (torchsde's fast setting for fixed steps; its default takes 40x
  longer here), and
  hand-written diffrax (`VirtualBrownianTree` at the same resolution as
  `NeuralSDE`'s, `dt0 / 8`).
- **CDE**: binary classification of 32 spirals of length 32 (2 channels plus time),
  cubic Hermite with backward differences on both sides, hidden state 8, field MLP
  8-32-24 (softplus, tanh output), Dopri5 at rtol 1e-4, atol 1e-6 stepping to every
  observation time (jump times), backprop through the solver, Adam 1e-3. Peer:
  `torchcde.cdeint(adjoint=False)`.

torchdiffeq/torchsde/torchcde solve the batch as one state (one step size for all).
jaxmodels is timed the same way ("flat": the batch flattened into one state) and the
idiomatic way ("vmap": `jax.vmap` over examples, each with its own steps); `NeuralCDE`
takes one series per call, so only vmap. Times are the median over all timed steps,
the sides interleaved in rounds; JAX compilation is excluded and reported separately
(first call minus the median step).

    python bench/nde.py [--quick] [--json PATH] [--record]
"""

import time

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import optimistix as optx
from _common import cores, machine, median, parse_args, report, set_torch_threads

import jaxmodels.nde as nde


# --- ODE: the spiral of torchdiffeq's ode_demo.py -------------------------------

N_T, T_END, BATCH, WINDOW, WIDTH = 1000, 25.0, 20, 10, 50
RTOL, ATOL, LR = 1e-7, 1e-9, 1e-3
A_TRUE = np.array([[-0.1, 2.0], [-2.0, -0.1]], np.float32)
MAX_STEPS = 4096


def spiral_data():
    """`(t, true_y)`: the true spiral, solved once (float64, tight tolerance)."""
    t = np.linspace(0.0, T_END, N_T)
    with jax.enable_x64(True):
        a = jnp.asarray(A_TRUE, jnp.float64)
        sol = dfx.diffeqsolve(
            dfx.ODETerm(lambda t, y, args: (y**3) @ a),
            dfx.Dopri5(),
            0.0,
            T_END,
            None,
            jnp.array([2.0, 0.0], jnp.float64),
            saveat=dfx.SaveAt(ts=jnp.asarray(t)),
            stepsize_controller=dfx.PIDController(rtol=1e-10, atol=1e-12),
            max_steps=1_000_000,
        )
        true_y = np.asarray(sol.ys)
    return t.astype(np.float32), true_y.astype(np.float32)


def spiral_batches(n: int, seed: int = 0) -> np.ndarray:
    """`(n, BATCH)` window starts, drawn as ode_demo.py draws them."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.choice(N_T - WINDOW, BATCH, replace=False) for _ in range(n)])


class SpiralField(eqx.Module):
    """`f(y) = mlp(y**3)` row by row; a state of shape `(..., 2)` or flattened."""

    mlp: eqx.nn.MLP

    def __call__(self, t, y, args):
        out = jax.vmap(self.mlp)(y.reshape(-1, 2) ** 3)
        return out.reshape(y.shape)


class CountingField(eqx.Module):
    """A field that counts its evaluations on the host (for an untimed count only)."""

    field: eqx.Module

    def __call__(self, t, y, args):
        jax.debug.callback(_bump)
        return self.field(t, y, args)


_COUNT = [0]


def _bump():
    _COUNT[0] += 1


def spiral_field(key) -> SpiralField:
    """ode_demo.py's initialisation: weights N(0, 0.1), biases 0."""
    mlp = eqx.nn.MLP(2, 2, WIDTH, 1, activation=jnp.tanh, key=key)
    k1, k2 = jr.split(jr.key(1))
    mlp = eqx.tree_at(
        lambda m: (m.layers[0].weight, m.layers[0].bias),
        mlp,
        (0.1 * jr.normal(k1, (WIDTH, 2)), jnp.zeros(WIDTH)),
    )
    return eqx.tree_at(
        lambda m: (m.layers[1].weight, m.layers[1].bias),
        mlp,
        (0.1 * jr.normal(k2, (2, WIDTH)), jnp.zeros(2)),
    )


def leaf_max_rms(tree) -> jax.Array:
    """The largest RMS over the leaves: torchdiffeq's default norm of the adjoint."""
    leaves = [x for x in jax.tree_util.tree_leaves(tree) if jnp.size(x) > 0]
    return jnp.max(jnp.stack([optx.rms_norm(x) for x in leaves]))


def controller():
    # RMS over the state, as torchdiffeq's default `_rms_norm` (diffrax's default too).
    return dfx.PIDController(rtol=RTOL, atol=ATOL, norm=optx.rms_norm)


def adjoint_of(kind: str) -> dfx.AbstractAdjoint:
    if kind == "backprop":
        return dfx.RecursiveCheckpointAdjoint()
    return dfx.BacksolveAdjoint(
        stepsize_controller=dfx.PIDController(rtol=RTOL, atol=ATOL, norm=leaf_max_rms)
    )


def rmsprop():
    return optax.rmsprop(LR, decay=0.99, eps=1e-8, eps_in_sqrt=False)


def make_ode_step(library: str, layout: str, kind: str):
    """A jitted training step `(field, opt_state, y0, ts, ys) -> (..., loss, steps)`.

    `y0` is `(BATCH, 2)`, `ys` is `(WINDOW, BATCH, 2)`. `library` is `"jaxmodels"`
    (`NeuralODE`) or `"diffrax"` (`diffeqsolve` called directly); `steps` are the
    solver's step attempts per solve, one per example under vmap.
    """
    adjoint = adjoint_of(kind)
    optim = rmsprop()

    def solve(field, ts, y0):
        if library == "jaxmodels":
            model = nde.NeuralODE(
                field,
                solver=dfx.Dopri5(),
                stepsize_controller=controller(),
                adjoint=adjoint,
                max_steps=MAX_STEPS,
            )
            sol = model.solve(ts, y0)
        else:
            sol = dfx.diffeqsolve(
                dfx.ODETerm(field),
                dfx.Dopri5(),
                ts[0],
                ts[-1],
                None,
                y0,
                saveat=dfx.SaveAt(ts=ts),
                stepsize_controller=controller(),
                adjoint=adjoint,
                max_steps=MAX_STEPS,
            )
        return sol.ys, sol.stats["num_steps"]

    def loss_fn(field, y0, ts, ys):
        if layout == "flat":
            pred, steps = solve(field, ts, y0.reshape(-1))
            pred = pred.reshape(ys.shape)
        else:
            pred, steps = jax.vmap(lambda y: solve(field, ts, y))(y0)
            pred = jnp.swapaxes(pred, 0, 1)
        return jnp.mean(jnp.abs(pred - ys)), steps

    @eqx.filter_jit
    def step(field, opt_state, y0, ts, ys):
        (loss, steps), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(
            field, y0, ts, ys
        )
        updates, opt_state = optim.update(grads, opt_state, field)
        return eqx.apply_updates(field, updates), opt_state, loss, steps

    return step, optim


class JaxSide:
    """One JAX contestant: a jitted step, its state, and per-step records."""

    def __init__(self, step, optim, params, batch_of):
        self.step, self.init_params, self.batch_of = step, params, batch_of
        self.opt_init = optim.init
        self.reset()
        self.times, self.losses, self.steps = [], [], []

    def reset(self):
        self.params = self.init_params
        self.opt_state = self.opt_init(eqx.filter(self.params, eqx.is_array))
        self.i = 0

    def first_call(self) -> float:
        t0 = time.perf_counter()
        out = self.step(self.params, self.opt_state, *self.batch_of(0))
        jax.block_until_ready(out)
        return time.perf_counter() - t0

    def run(self, k: int):
        for _ in range(k):
            batch = self.batch_of(self.i)
            t0 = time.perf_counter()
            self.params, self.opt_state, loss, steps = self.step(
                self.params, self.opt_state, *batch
            )
            loss = float(loss)
            self.times.append(time.perf_counter() - t0)
            self.losses.append(loss)
            self.steps.append(np.asarray(steps))
            self.i += 1


class TorchSide:
    """One torch contestant: `step(i) -> (loss, stats)` and per-step records."""

    def __init__(self, make, threads):
        self.make, self.threads = make, threads
        self.reset()
        self.times, self.losses, self.stats = [], [], []

    def reset(self):
        set_torch_threads(self.threads)
        self.step = self.make()
        self.i = 0

    def run(self, k: int):
        set_torch_threads(self.threads)
        for _ in range(k):
            t0 = time.perf_counter()
            loss, stats = self.step(self.i)
            self.times.append(time.perf_counter() - t0)
            self.losses.append(loss)
            self.stats.append(stats)
            self.i += 1


def torch_spiral(weights, batch_of, adjoint: bool):
    """A factory of torchdiffeq training steps (ode_demo.py's `ODEFunc`, RMSprop)."""
    import torch
    import torchdiffeq

    odeint = torchdiffeq.odeint_adjoint if adjoint else torchdiffeq.odeint

    def make():
        class ODEFunc(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.net = torch.nn.Sequential(
                    torch.nn.Linear(2, WIDTH),
                    torch.nn.Tanh(),
                    torch.nn.Linear(WIDTH, 2),
                )
                self.nfe = self.attempts = 0

            def forward(self, t, y):
                self.nfe += 1
                return self.net(y**3)

            def callback_step(self, t0, y0, dt):
                self.attempts += 1

        func = ODEFunc()
        with torch.no_grad():
            for p, w in zip(func.parameters(), weights):
                p.copy_(torch.from_numpy(w))
        opt = torch.optim.RMSprop(func.parameters(), lr=LR)

        def step(i):
            y0, ts, ys = (torch.from_numpy(np.asarray(a)) for a in batch_of(i))
            opt.zero_grad(set_to_none=True)
            func.nfe = func.attempts = 0
            pred = odeint(func, y0, ts, rtol=RTOL, atol=ATOL, method="dopri5")
            fwd_nfe, attempts = func.nfe, func.attempts
            loss = torch.mean(torch.abs(pred - ys))
            loss.backward()
            opt.step()
            stats = {"steps": attempts, "fwd_nfe": fwd_nfe, "nfe": func.nfe}
            return float(loss), stats

        return step

    return make


def torch_weights(mlp: eqx.nn.MLP) -> list[np.ndarray]:
    out = []
    for lin in mlp.layers:
        out += [np.array(lin.weight), np.array(lin.bias)]
    return out


def pick_threads(make, n_steps: int) -> int:
    """The faster of 1 thread and all cores for a torch step (median of `n_steps`)."""
    best, best_t = 1, float("inf")
    for threads in sorted({1, cores()}):
        side = TorchSide(make, threads)
        side.run(n_steps)
        t = median(side.times)
        if t < best_t:
            best, best_t = threads, t
    return best


def count_evals(step, params, opt_init, batch) -> int:
    """Field evaluations in one step (forward and backward), counted on the host."""
    field = CountingField(params)
    opt_state = opt_init(eqx.filter(field, eqx.is_array))
    _COUNT[0] = 0
    jax.block_until_ready(step(field, opt_state, *batch))
    jax.effects_barrier()
    return _COUNT[0]


# --- SDE -------------------------------------------------------------------------

SDE_DATA, SDE_WIDTH, SDE_PATHS, SDE_DT, SDE_SAVES = 4, 32, 64, 0.01, 11


class DiagDiffusion(eqx.Module):
    mlp: eqx.nn.MLP

    def __call__(self, t, y, args):
        return jax.vmap(self.mlp)(y.reshape(-1, SDE_DATA)).reshape(y.shape)


class FlatDrift(eqx.Module):
    mlp: eqx.nn.MLP

    def __call__(self, t, y, args):
        return jax.vmap(self.mlp)(y.reshape(-1, SDE_DATA)).reshape(y.shape)


class Diag(eqx.Module):
    diffusion: DiagDiffusion

    def __call__(self, t, y, args):
        import lineax as lx

        return lx.DiagonalLinearOperator(self.diffusion(t, y, args))


def sde_models(key):
    kf, kg = jr.split(key)
    f = eqx.nn.MLP(
        SDE_DATA,
        SDE_DATA,
        SDE_WIDTH,
        1,
        activation=jnp.tanh,
        final_activation=jnp.tanh,
        key=kf,
    )
    g = eqx.nn.MLP(
        SDE_DATA,
        SDE_DATA,
        SDE_WIDTH,
        1,
        activation=jnp.tanh,
        final_activation=jax.nn.sigmoid,
        key=kg,
    )
    return FlatDrift(f), DiagDiffusion(g)


def make_sde_step(library: str, layout: str):
    """`(models, opt_state, y0, ts, target, key) -> (models, opt_state, loss, steps)`."""
    optim = optax.adam(1e-3)

    def solve(models, ts, y0, key):
        drift, diffusion = models
        if library == "jaxmodels":
            model = nde.NeuralSDE(drift, diffusion, solver=dfx.Euler(), dt0=SDE_DT)
            sol = model.solve(ts, y0, key=key)
        else:
            bm = dfx.VirtualBrownianTree(
                ts[0], ts[-1], tol=SDE_DT / 8, shape=y0.shape, key=key
            )
            terms = dfx.MultiTerm(
                dfx.ODETerm(drift), dfx.ControlTerm(Diag(diffusion), bm)
            )
            sol = dfx.diffeqsolve(
                terms,
                dfx.Euler(),
                ts[0],
                ts[-1],
                SDE_DT,
                y0,
                saveat=dfx.SaveAt(ts=ts),
                max_steps=MAX_STEPS,
            )
        return sol.ys, sol.stats["num_steps"]

    def loss_fn(models, y0, ts, target, key):
        if layout == "flat":
            pred, steps = solve(models, ts, y0.reshape(-1), key)
            pred = pred.reshape(len(ts), SDE_PATHS, SDE_DATA)
        else:
            keys = jr.split(key, SDE_PATHS)
            pred, steps = jax.vmap(lambda y, k: solve(models, ts, y, k))(y0, keys)
            pred = jnp.swapaxes(pred, 0, 1)
        return jnp.mean((pred - target[:, None, :]) ** 2), steps

    @eqx.filter_jit
    def step(models, opt_state, y0, ts, target, key):
        (loss, steps), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(
            models, y0, ts, target, key
        )
        updates, opt_state = optim.update(grads, opt_state, models)
        return eqx.apply_updates(models, updates), opt_state, loss, steps

    return step, optim


def torch_sde(models, batch_of):
    import torch
    import torchsde

    drift, diffusion = models
    weights = torch_weights(drift.mlp) + torch_weights(diffusion.mlp)

    def make():
        class SDE(torch.nn.Module):
            noise_type, sde_type = "diagonal", "ito"

            def __init__(self):
                super().__init__()
                self.f_net = torch.nn.Sequential(
                    torch.nn.Linear(SDE_DATA, SDE_WIDTH),
                    torch.nn.Tanh(),
                    torch.nn.Linear(SDE_WIDTH, SDE_DATA),
                    torch.nn.Tanh(),
                )
                self.g_net = torch.nn.Sequential(
                    torch.nn.Linear(SDE_DATA, SDE_WIDTH),
                    torch.nn.Tanh(),
                    torch.nn.Linear(SDE_WIDTH, SDE_DATA),
                    torch.nn.Sigmoid(),
                )
                self.nfe = 0

            def f(self, t, y):
                self.nfe += 1
                return self.f_net(y)

            def g(self, t, y):
                return self.g_net(y)

        sde = SDE()
        with torch.no_grad():
            for p, w in zip(sde.parameters(), weights):
                p.copy_(torch.from_numpy(w))
        opt = torch.optim.Adam(sde.parameters(), lr=1e-3)

        def step(i):
            y0, ts, target, _ = batch_of(i)
            y0, ts, target = (torch.from_numpy(np.asarray(a)) for a in (y0, ts, target))
            opt.zero_grad(set_to_none=True)
            sde.nfe = 0
            # The `dt` hint is torchsde's fast setting for fixed steps: without it the
            # default `BrownianInterval` estimates `dt` from its first queries and
            # builds a dependency tree that took about 4 s per solve here (not 0.1 s).
            bm = torchsde.BrownianInterval(
                ts[0], ts[-1], size=tuple(y0.shape), dtype=y0.dtype, dt=SDE_DT
            )
            ys = torchsde.sdeint(sde, y0, ts, bm=bm, method="euler", dt=SDE_DT)
            loss = torch.mean((ys - target[:, None, :]) ** 2)
            loss.backward()
            opt.step()
            return float(loss), {"steps": sde.nfe, "fwd_nfe": sde.nfe, "nfe": sde.nfe}

        return step

    return make


# --- CDE -------------------------------------------------------------------------

CDE_SERIES, CDE_LENGTH, CDE_HIDDEN, CDE_WIDTH = 32, 32, 8, 32
CDE_RTOL, CDE_ATOL = 1e-4, 1e-6


def cde_data(seed: int = 0):
    """torchcde's spirals example: `(ts, xs, labels)`, half of them clockwise."""
    rng = np.random.default_rng(seed)
    ts = np.linspace(0, 4 * np.pi, CDE_LENGTH)
    start = rng.uniform(0, 2 * np.pi, CDE_SERIES)
    xs = np.stack(
        [np.cos(start[:, None] + ts), np.sin(start[:, None] + ts)], axis=-1
    ) / (1 + 0.5 * ts[None, :, None])
    labels = np.zeros(CDE_SERIES, np.float32)
    labels[: CDE_SERIES // 2] = 1.0
    xs[: CDE_SERIES // 2, :, 1] *= -1
    xs = xs + 0.1 * rng.standard_normal(xs.shape)
    return ts.astype(np.float32), xs.astype(np.float32), labels


def make_cde_step():
    optim = optax.adam(1e-3)

    def loss_fn(model, ts, xs, labels):
        sols = jax.vmap(lambda x: model.solve(ts, x))(xs)
        logits = jax.vmap(lambda z: model.output(z[-1]))(sols.ys)[:, 0]
        loss = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels))
        return loss, sols.stats["num_steps"]

    @eqx.filter_jit
    def step(model, opt_state, ts, xs, labels):
        (loss, steps), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(
            model, ts, xs, labels
        )
        updates, opt_state = optim.update(grads, opt_state, model)
        return eqx.apply_updates(model, updates), opt_state, loss, steps

    return step, optim


def torch_cde(model: nde.NeuralCDE, data):
    import torch
    import torchcde

    ts, xs, labels = data
    chans = model.input_size + 1
    weights = (
        torch_weights(model.vector_field.mlp)
        + [np.array(model.initial.weight), np.array(model.initial.bias)]
        + [np.array(model.output.weight), np.array(model.output.bias)]
    )

    def make():
        class Func(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.net = torch.nn.Sequential(
                    torch.nn.Linear(CDE_HIDDEN, CDE_WIDTH),
                    torch.nn.Softplus(),
                    torch.nn.Linear(CDE_WIDTH, CDE_HIDDEN * chans),
                    torch.nn.Tanh(),
                )
                self.nfe = self.attempts = 0

            def forward(self, t, z):
                self.nfe += 1
                return self.net(z).view(*z.shape[:-1], CDE_HIDDEN, chans)

        class Model(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.func = Func()
                self.initial = torch.nn.Linear(chans, CDE_HIDDEN)
                self.readout = torch.nn.Linear(CDE_HIDDEN, 1)

        net = Model()
        with torch.no_grad():
            for p, w in zip(net.parameters(), weights):
                p.copy_(torch.from_numpy(w))
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        t = torch.from_numpy(ts)
        x = torch.from_numpy(
            np.concatenate(
                [np.broadcast_to(ts[None, :, None], xs.shape[:2] + (1,)), xs], -1
            )
        )
        y = torch.from_numpy(labels)

        def step(i):
            opt.zero_grad(set_to_none=True)
            net.func.nfe = 0
            # The coefficients are part of the step, as `NeuralCDE` builds its path in
            # every call.
            coeffs = torchcde.hermite_cubic_coefficients_with_backward_differences(x, t)
            X = torchcde.CubicSpline(coeffs, t)
            z0 = net.initial(X.evaluate(X.interval[0]))
            zT = torchcde.cdeint(
                X=X,
                func=net.func,
                z0=z0,
                t=X.interval,
                adjoint=False,
                method="dopri5",
                rtol=CDE_RTOL,
                atol=CDE_ATOL,
                options=dict(jump_t=t),
            )[:, -1]
            logits = net.readout(zT)[:, 0]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
            fwd_nfe = net.func.nfe
            loss.backward()
            opt.step()
            return float(loss), {"steps": None, "fwd_nfe": fwd_nfe, "nfe": fwd_nfe}

        return step

    return make


# --- running ---------------------------------------------------------------------


def steps_summary(side) -> tuple[float, float]:
    """Mean and largest step attempts per solve over the timed steps."""
    if isinstance(side, JaxSide):
        arr = np.stack(side.steps).astype(float)
        per_step_max = arr.reshape(len(arr), -1).max(axis=1)
        return float(arr.mean()), float(per_step_max.mean())
    vals = [s["steps"] for s in side.stats]
    if vals[0] is None:
        return float("nan"), float("nan")
    return float(np.mean(vals)), float(np.mean(vals))


def warm(side: "JaxSide") -> tuple[float, float]:
    """Compile a side: `(first call seconds, compile seconds)`, then reset it."""
    first = side.first_call()
    side.run(3)
    compile_s = first - median(side.times)
    side.times, side.losses, side.steps = [], [], []
    side.reset()
    return first, compile_s


def setup_ode(n_steps: int):
    """The ODE contestants, compiled, and the evaluations of one step of each."""
    t, true_y = spiral_data()
    starts = spiral_batches(n_steps + 1)
    ts = jnp.asarray(t[:WINDOW])
    batches = [
        (
            jnp.asarray(true_y[s]),
            ts,
            jnp.asarray(np.stack([true_y[s + j] for j in range(WINDOW)])),
        )
        for s in starts
    ]

    def batch_of(i):
        return batches[i % len(batches)]

    field = SpiralField(spiral_field(jr.key(0)))
    weights = torch_weights(field.mlp)
    sides, compile_s, evals = {}, {}, {}
    for kind in ("backprop", "adjoint"):
        for library in ("jaxmodels", "diffrax"):
            for layout in ("flat", "vmap"):
                step, optim = make_ode_step(library, layout, kind)
                side = JaxSide(step, optim, field, batch_of)
                first, compile_s[kind, library, layout] = warm(side)
                sides[kind, library, layout] = side
                print(f"ode {kind} {library} {layout}: first call {first:.2f}s")
                if library == "jaxmodels":
                    evals[kind, layout] = count_evals(
                        step, field, optim.init, batch_of(0)
                    )
        make = torch_spiral(weights, batch_of, adjoint=kind == "adjoint")
        side = TorchSide(make, 1)
        side.run(1)
        evals[kind, "torch"] = side.stats[0]
        sides[kind, "torchdiffeq", "flat"] = TorchSide(make, pick_threads(make, 3))
    return sides, compile_s, evals


def setup_sde():
    y0 = jnp.asarray(
        np.random.default_rng(1).standard_normal((SDE_PATHS, SDE_DATA)), jnp.float32
    )
    ts = jnp.linspace(0.0, 1.0, SDE_SAVES)
    target = jnp.stack(
        [jnp.sin(2 * jnp.pi * (ts + i / SDE_DATA)) for i in range(SDE_DATA)], -1
    )

    def batch_of(i):
        return y0, ts, target, jr.fold_in(jr.key(2), i)

    models = sde_models(jr.key(3))
    sides, compile_s = {}, {}
    for library in ("jaxmodels", "diffrax"):
        for layout in ("flat", "vmap"):
            step, optim = make_sde_step(library, layout)
            side = JaxSide(step, optim, models, batch_of)
            first, compile_s["sde", library, layout] = warm(side)
            sides["sde", library, layout] = side
            print(f"sde {library} {layout}: first call {first:.2f}s")
    make = torch_sde(models, batch_of)
    sides["sde", "torchsde", "flat"] = TorchSide(make, pick_threads(make, 3))
    return sides, compile_s


def setup_cde():
    ts, xs, labels = cde_data()
    model = nde.NeuralCDE(
        2,
        CDE_HIDDEN,
        1,
        CDE_WIDTH,
        1,
        solver=dfx.Dopri5(),
        stepsize_controller=dfx.PIDController(
            rtol=CDE_RTOL, atol=CDE_ATOL, norm=optx.rms_norm
        ),
        key=jr.key(4),
    )
    batch = (jnp.asarray(ts), jnp.asarray(xs), jnp.asarray(labels))
    step, optim = make_cde_step()
    side = JaxSide(step, optim, model, lambda i: batch)
    compile_s = {}
    first, compile_s["cde", "jaxmodels", "vmap"] = warm(side)
    print(f"cde jaxmodels vmap: first call {first:.2f}s")
    sides = {("cde", "jaxmodels", "vmap"): side}
    make = torch_cde(model, (ts, xs, labels))
    sides["cde", "torchcde", "flat"] = TorchSide(make, pick_threads(make, 3))
    return sides, compile_s


LABELS = {
    "backprop": "spiral ODE, backprop through the solver",
    "adjoint": "spiral ODE, continuous adjoint",
    "sde": "neural SDE, Euler-Maruyama",
    "cde": "neural CDE, spirals",
}
TORCH_PEERS = {
    "backprop": ("torchdiffeq", "torchdiffeq.odeint"),
    "adjoint": ("torchdiffeq", "torchdiffeq.odeint_adjoint"),
    "sde": ("torchsde", "torchsde.sdeint"),
    "cde": ("torchcde", "torchcde.cdeint"),
}


def make_rows(sides, compile_s, k_torch):
    n_common = min(len(s.losses) for s in sides.values())

    def ms(side):
        return 1e3 * median(side.times)

    def last_loss(side):
        return float(np.mean(side.losses[n_common - k_torch : n_common]))

    rows = []
    tasks = [t for t in LABELS if any(k[0] == t for k in sides)]
    for task in tasks:
        for layout in ("flat", "vmap"):
            if (task, "jaxmodels", layout) not in sides:
                continue
            ours = sides[task, "jaxmodels", layout]
            lib, name = TORCH_PEERS[task]
            peers = [(lib, "flat", name)]
            if (task, "diffrax", layout) in sides:
                peers.append(("diffrax", layout, f"hand-written diffrax, {layout}"))
            for lib, play, name in peers:
                peer = sides[task, lib, play]
                if isinstance(peer, TorchSide):
                    name += f", {peer.threads} thread(s)"
                o_mean, o_max = steps_summary(ours)
                p_mean, _ = steps_summary(peer)
                row = {
                    "task": LABELS[task],
                    "ours": f"jaxmodels, {layout}",
                    "peer": name,
                    "ours_ms": ms(ours),
                    "peer_ms": ms(peer),
                    "speedup": ms(peer) / ms(ours),
                    "compile_s": compile_s[task, "jaxmodels", layout],
                    "peer_compile_s": compile_s.get((task, lib, play)),
                    "ours_steps": o_mean,
                    "ours_max_steps": o_max,
                    "peer_steps": p_mean,
                    "peer_nfe": None,
                    "ours_loss": last_loss(ours),
                    "peer_loss": last_loss(peer),
                    "ours_ms_min": 1e3 * min(ours.times),
                    "peer_ms_min": 1e3 * min(peer.times),
                    "timed_steps": (len(ours.times), len(peer.times)),
                }
                # Dopri5 is FSAL: 6 evaluations per step attempt plus 1 at the start
                # (diffrax 0.7 takes a first step of 0.01 when `dt0=None`, with no
                # evaluations to choose it); counted, see `count_evals`.
                if task in ("backprop", "adjoint"):
                    row["ours_fwd_nfe"] = 6 * o_mean + 1
                    if isinstance(peer, JaxSide):
                        row["peer_fwd_nfe"] = 6 * p_mean + 1
                if isinstance(peer, TorchSide):
                    row["peer_nfe"] = float(np.mean([s["nfe"] for s in peer.stats]))
                    row["peer_fwd_nfe"] = float(
                        np.mean([s["fwd_nfe"] for s in peer.stats])
                    )
                rows.append(row)
    return rows


def goals(rows) -> list[str]:
    """The issue's goals: 10x torchdiffeq per step, within 1.1x of diffrax."""
    out = []
    for row in rows:
        if not row["task"].startswith("spiral"):
            continue
        what = f"{row['task']}, {row['ours']}"
        if row["peer"].startswith("torchdiffeq"):
            ok = "met" if row["speedup"] >= 10 else "MISSED"
            out.append(f"goal >= 10x torchdiffeq, {what}: {row['speedup']:.1f}x ({ok})")
        else:
            ratio = row["ours_ms"] / row["peer_ms"]
            ok = "met" if ratio <= 1.1 else "MISSED"
            out.append(
                f"goal <= 1.1x hand-written diffrax, {what}: {ratio:.2f}x ({ok})"
            )
    return out


def main():
    def extra(parser):
        parser.add_argument(
            "--tasks", default="ode,sde,cde", help="comma-separated subset to run"
        )

    args = parse_args(__doc__.splitlines()[0], extra)
    tasks = args.tasks.split(",")
    info = machine()
    rounds = 3 if args.quick else 20
    k_jax, k_torch = (3, 2) if args.quick else (5, 5)
    print(
        f"nde benchmark: {rounds} rounds of {k_jax} JAX / {k_torch} torch steps per "
        f"side, {cores()} cores, load {info['load_avg_1min']}"
    )
    sides, compile_s, evals = {}, {}, {}
    if "ode" in tasks:
        s, c, evals = setup_ode(rounds * max(k_jax, k_torch))
        sides.update(s)
        compile_s.update(c)
        print("field evaluations in one step:", evals)
    if "sde" in tasks:
        s, c = setup_sde()
        sides.update(s)
        compile_s.update(c)
    if "cde" in tasks:
        s, c = setup_cde()
        sides.update(s)
        compile_s.update(c)
    for _ in range(rounds):
        for side in sides.values():
            side.run(k_jax if isinstance(side, JaxSide) else k_torch)
    rows = make_rows(sides, compile_s, k_torch)
    for row in rows:
        print(row)
    columns = [
        "task",
        "ours",
        "peer",
        "ours_ms",
        "peer_ms",
        "speedup",
        "compile_s",
        "peer_compile_s",
        "ours_steps",
        "ours_max_steps",
        "peer_steps",
        "ours_fwd_nfe",
        "peer_fwd_nfe",
        "peer_nfe",
        "ours_loss",
        "peer_loss",
    ]
    notes = [
        "times: median ms per training step over all timed steps (JAX sides "
        f"{rounds * k_jax}, torch sides {rounds * k_torch}), the sides interleaved in "
        f"{rounds} rounds; `compile_s` = first call minus the median step (JAX); torch "
        "threads: the faster of 1 and all cores over 3 trial steps",
        "steps: step attempts per solve (accepted + rejected), JAX from diffrax's "
        "statistics, torchdiffeq from its `callback_step`; for vmap the mean per "
        "example, and `ours_max_steps` the mean over training steps of the largest "
        "per example (a vmapped while loop runs as long as its slowest example); "
        "torchsde: drift evaluations (101 per 100 steps); torchcde hides "
        "torchdiffeq's step callbacks, so only its evaluations are given",
        "fwd_nfe: field evaluations in the forward solve: JAX `6 * steps + 1` (Dopri5 "
        "is FSAL; diffrax 0.7 starts from dt0 = 0.01 without evaluating to choose it), "
        "checked against a host-side counter; torch a counter in `forward`. "
        "`peer_nfe`: torch's evaluations per training step including the backward "
        "pass (autograd through `odeint` evaluates nothing more; `odeint_adjoint` "
        "solves the augmented system backwards)",
        "field evaluations in the first training step, counted (JAX: a "
        "`jax.debug.callback` counter in a copy of the field, forward and backward, "
        "under vmap one count per batched evaluation): "
        + "; ".join(f"{kind} {where}: {v}" for (kind, where), v in evals.items()),
        *goals(rows),
    ]
    report(
        "nde (bench/nde.py)",
        rows,
        columns,
        args,
        settings={
            "ode": f"{BATCH} windows x {WINDOW} points, MLP 2-{WIDTH}-2 on y**3, "
            f"Dopri5 rtol={RTOL} atol={ATOL}, RMSprop {LR}",
            "sde": f"{SDE_PATHS} paths, state {SDE_DATA}, width {SDE_WIDTH}, "
            f"Euler dt={SDE_DT}, Adam 1e-3",
            "cde": f"{CDE_SERIES} series x {CDE_LENGTH}, hidden {CDE_HIDDEN}, width "
            f"{CDE_WIDTH}, Dopri5 rtol={CDE_RTOL} atol={CDE_ATOL}, Adam 1e-3",
            "rounds": rounds,
            "k_jax": k_jax,
            "k_torch": k_torch,
            "float": "float32",
        },
        notes=notes,
        info=info,
    )


if __name__ == "__main__":
    main()
