import math
from typing import Literal

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jax import lax
from jaxtyping import Array, ArrayLike, Bool, Float, PRNGKeyArray, Real

from .._core import check_positive_int
from ._ode import NeuralODE
from ._vector_field import MLPVectorField, check_increasing


_ENCODERS = ("ode-rnn", "gru")


def _check_series(ts: Array, xs: Array, data_size: int, ts_name: str, xs_name: str):
    if jnp.ndim(ts) != 1 or jnp.shape(ts)[0] < 2:
        raise ValueError(
            f"`{ts_name}` must be a 1-D array of at least 2 times; got shape "
            f"{jnp.shape(ts)}. Batch with `jax.vmap`."
        )
    if jnp.ndim(xs) != 2 or jnp.shape(xs) != (jnp.shape(ts)[0], data_size):
        raise ValueError(
            f"`{xs_name}` must be of shape `(time, {data_size})` (one row per entry "
            f"of `{ts_name}`, `data_size` channels); got shape {jnp.shape(xs)} for "
            f"`{ts_name}` of shape {jnp.shape(ts)}. Batch with `jax.vmap`."
        )


def _gaussian_kl(mean: Array, log_std: Array) -> Array:
    """`KL(N(mean, diag(exp(log_std))^2) || N(0, I))`, in closed form."""
    return 0.5 * jnp.sum(mean**2 + jnp.exp(2 * log_std) - 1 - 2 * log_std)


class LatentODE(eqx.Module):
    """A latent ODE: a recurrent encoder of irregular observations, a neural ODE decoder.

    From Rubanova, Chen and Duvenaud, "Latent ODEs for Irregularly-Sampled Time
    Series" (2019), after Chen et al., "Neural Ordinary Differential Equations"
    (2018). A variational autoencoder of a time series: the encoder reads the
    observations backwards in time and returns a diagonal Gaussian posterior
    `q(z0 | x)` over the latent state at the first time `ts[0]`; the decoder solves a
    `NeuralODE` (with an `MLPVectorField`) from `z0` to any query times, before, inside
    or beyond the observed window (interpolation and extrapolation), and a readout
    maps each latent state to the mean of a Gaussian observation with standard
    deviation `obs_std`. Training maximises the evidence lower bound (`elbo`).

    The encoder is either an ODE-RNN (`encoder="ode-rnn"`, the paper's choice): between
    observations the hidden state evolves by its own neural ODE over the elapsed time,
    and at each observation a GRU cell updates it; or a GRU (`encoder="gru"`, the
    paper's RNN baseline) that reads the elapsed time as an extra input. Missing values
    are `NaN`s: the GRU reads each row as the values with `NaN`s zeroed plus the mask
    of which are observed, and a row with no observed value is skipped entirely (the
    result is the same as dropping it). The ODE-RNN's solves use the decoder's solver
    options.
    """

    cell: eqx.nn.GRUCell
    encoder_field: MLPVectorField | None
    posterior: eqx.nn.Linear
    decoder: NeuralODE
    readout: eqx.nn.MLP
    log_obs_std: Float[Array, ""]
    data_size: int = eqx.field(static=True)
    latent_size: int = eqx.field(static=True)
    hidden_size: int = eqx.field(static=True)
    encoder: str = eqx.field(static=True)
    learn_obs_std: bool = eqx.field(static=True)

    def __init__(
        self,
        data_size: int,
        latent_size: int,
        hidden_size: int,
        width: int,
        depth: int,
        *,
        encoder: Literal["ode-rnn", "gru"] = "ode-rnn",
        readout_depth: int = 0,
        obs_std: Real[ArrayLike, ""] = 0.1,
        learn_obs_std: bool = False,
        solver: dfx.AbstractSolver = dfx.Tsit5(),
        stepsize_controller: dfx.AbstractStepSizeController = dfx.PIDController(
            rtol=1e-3, atol=1e-6
        ),
        adjoint: dfx.AbstractAdjoint = dfx.RecursiveCheckpointAdjoint(),
        dt0: float | None = None,
        max_steps: int = 4096,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `data_size`: the number of channels of an observation.
        - `latent_size`: the size of the latent state `z`.
        - `hidden_size`: the size of the encoder's hidden state.
        - `width`, `depth`: the hidden layers of the vector fields (the decoder's and,
            for the ODE-RNN, the encoder's) and of the readout.
        - `encoder`: `"ode-rnn"` or `"gru"`; see the class docstring.
        - `readout_depth`: the hidden layers of the readout MLP from latent state to
            observation mean; 0 (the default) makes it linear.
        - `obs_std`: the standard deviation of the Gaussian observation noise, positive.
        - `learn_obs_std`: whether `obs_std` is trained (as its logarithm) or fixed.
        - `solver`, `stepsize_controller`, `adjoint`, `dt0`, `max_steps`: the options
            of every ODE solve, as for `NeuralODE`.
        - `key`: a PRNG key for the initial weights.

        **Raises:** `ValueError` naming the argument if a size is not a positive
        integer, `readout_depth` is negative, `encoder` is unknown, `obs_std` is not
        positive, `learn_obs_std` is not a bool, or as `NeuralODE` for the solver
        options. (A traced `obs_std`, as in a sweep, is checked by `equinox.error_if`.)
        """
        for value, name in [
            (data_size, "data_size"),
            (latent_size, "latent_size"),
            (hidden_size, "hidden_size"),
        ]:
            check_positive_int(value, name)
        if not isinstance(readout_depth, int) or readout_depth < 0:
            raise ValueError(
                f"`readout_depth` must be a non-negative integer; got {readout_depth!r}."
            )
        if encoder not in _ENCODERS:
            raise ValueError(f"`encoder` must be one of {_ENCODERS}; got {encoder!r}.")
        if not isinstance(learn_obs_std, bool):
            raise ValueError(f"`learn_obs_std` must be a bool; got {learn_obs_std!r}.")
        obs_std = jnp.asarray(obs_std, dtype=jnp.zeros(()).dtype)
        if jnp.shape(obs_std) != ():
            raise ValueError(
                f"`obs_std` must be a scalar; got shape {jnp.shape(obs_std)}."
            )
        try:
            concrete = float(obs_std)
        except jax.errors.ConcretizationTypeError:
            obs_std = eqx.error_if(
                obs_std, ~(obs_std > 0), "`obs_std` must be positive."
            )
        else:
            if not concrete > 0:
                raise ValueError(f"`obs_std` must be positive; got {concrete}.")
        cell_key, field_key, posterior_key, decoder_key, readout_key = jr.split(key, 5)
        # The GRU reads the values (NaNs zeroed) and their mask; the GRU encoder also
        # reads the elapsed time, which the ODE-RNN spends in its ODE instead.
        input_size = 2 * data_size + (encoder == "gru")
        self.cell = eqx.nn.GRUCell(input_size, hidden_size, key=cell_key)
        if encoder == "ode-rnn":
            self.encoder_field = MLPVectorField(
                hidden_size, width, depth, key=field_key
            )
        else:
            self.encoder_field = None
        self.posterior = eqx.nn.Linear(hidden_size, 2 * latent_size, key=posterior_key)
        self.decoder = NeuralODE(
            MLPVectorField(latent_size, width, depth, key=decoder_key),
            solver=solver,
            stepsize_controller=stepsize_controller,
            adjoint=adjoint,
            dt0=dt0,
            max_steps=max_steps,
        )
        self.readout = eqx.nn.MLP(
            latent_size, data_size, width, readout_depth, key=readout_key
        )
        self.log_obs_std = jnp.log(obs_std)
        self.data_size = data_size
        self.latent_size = latent_size
        self.hidden_size = hidden_size
        self.encoder = encoder
        self.learn_obs_std = learn_obs_std

    @property
    def obs_std(self) -> Float[Array, ""]:
        """The observation noise's standard deviation (no gradient unless learned)."""
        log_std = self.log_obs_std
        if not self.learn_obs_std:
            log_std = lax.stop_gradient(log_std)
        return jnp.exp(log_std)

    def _evolve(self, h: Array, duration: Array) -> tuple[Array, Bool[Array, ""]]:
        # Autonomous, so `dh/ds = f(h)` over the elapsed time `s` is the backward-time
        # ODE `dh/dt = -f(h)`; a zero duration takes no step (diffrax allows t0 == t1).
        ode = self.decoder
        sol = dfx.diffeqsolve(
            dfx.ODETerm(self.encoder_field),
            ode.solver,
            t0=jnp.zeros_like(duration),
            t1=duration,
            dt0=ode.dt0,
            y0=h,
            saveat=dfx.SaveAt(t1=True),
            stepsize_controller=ode.stepsize_controller,
            adjoint=ode.adjoint,
            max_steps=ode.max_steps,
            throw=False,
        )
        return sol.ys[0], sol.result == dfx.RESULTS.successful

    def encode(
        self,
        ts: Real[Array, " time"],
        xs: Float[Array, "time {self.data_size}"],
    ) -> tuple[
        Float[Array, " {self.latent_size}"], Float[Array, " {self.latent_size}"]
    ]:
        """The approximate posterior `q(z0 | x)` of the latent state at `ts[0]`.

        The hidden state starts at zero at the last observed time and runs backwards
        over the observations (a `lax.scan`), skipping rows with no observed value;
        the ODE-RNN then evolves it on to `ts[0]` if that row was missing.

        **Arguments:**

        - `ts`: the observation times, of shape `(time,)`, strictly increasing, at
            least 2.
        - `xs`: the observations, of shape `(time, data_size)`; `NaN` marks a missing
            value. Batch with `jax.vmap` (over `ts` too, for per-example times).

        **Returns:** `(mean, log_std)`, each of shape `(latent_size,)`: the mean and
        the log standard deviation of the diagonal Gaussian `q(z0 | x)`.

        **Raises:** `ValueError` naming `ts` or `xs` if a shape is wrong;
        `equinox.EquinoxRuntimeError` if `ts` is not strictly increasing or an
        ODE-RNN solve fails (such as `max_steps` reached).
        """
        _check_series(ts, xs, self.data_size, "ts", "xs")
        dtype = jnp.result_type(xs)
        ts = check_increasing(jnp.asarray(ts, dtype), "ts")
        mask = ~jnp.isnan(xs)
        values = jnp.where(mask, xs, 0)
        observed = jnp.any(mask, axis=1)
        # Start at the last observed time, so that trailing missing rows change nothing.
        t_last = jnp.max(jnp.where(observed, ts, ts[0]))
        h = jnp.zeros(self.hidden_size, dtype)

        def step(carry, row):
            h, t_last, ok = carry
            t, x, m, obs = row
            # Zero for a missing row: no solver step is spent on a discarded result.
            elapsed = jnp.where(obs, t_last - t, 0)
            inputs = jnp.concatenate([x, m.astype(dtype)])
            if self.encoder_field is None:
                inputs = jnp.concatenate([inputs, elapsed[None]])
                h_new = self.cell(inputs, h)
            else:
                h_evolved, solved = self._evolve(h, elapsed)
                h_new = self.cell(inputs, h_evolved)
                ok = ok & solved
            h = jnp.where(obs, h_new, h)
            t_last = jnp.where(obs, t, t_last)
            return (h, t_last, ok), None

        carry = (h, t_last, jnp.array(True))
        (h, t_last, ok), _ = lax.scan(
            step, carry, (ts, values, mask, observed), reverse=True
        )
        if self.encoder_field is not None:
            h, solved = self._evolve(h, t_last - ts[0])
            ok = ok & solved
        out = self.posterior(h)
        out = eqx.error_if(
            out,
            ~ok,
            "An ODE-RNN solve of the encoder failed (such as `max_steps` reached).",
        )
        return out[: self.latent_size], out[self.latent_size :]

    def decode(
        self,
        ts: Real[Array, " query"],
        z0: Float[Array, " {self.latent_size}"],
        *,
        t0: Real[ArrayLike, ""] | None = None,
    ) -> Float[Array, "query {self.data_size}"]:
        """The mean of the observations at `ts` given the latent state `z0` at `t0`.

        **Arguments:**

        - `ts`: the query times, of shape `(query,)`, strictly increasing, none before
            `t0` and the last after it; they may extend beyond the observed window.
        - `z0`: one latent state at time `t0`, of shape `(latent_size,)`. Batch with
            `jax.vmap`.
        - `t0`: the time of `z0`; `None` means `ts[0]` (then `ts` needs at least 2
            times).

        **Returns:** the readout of the latent solution at `ts`, of shape
        `(query, data_size)`.

        **Raises:** `ValueError` naming `ts` or `z0` if a shape is wrong;
        `equinox.EquinoxRuntimeError` if `ts` is not strictly increasing, starts
        before `t0` or does not end after it, or if the solve fails.
        """
        if jnp.ndim(ts) != 1 or jnp.shape(ts)[0] < (2 if t0 is None else 1):
            raise ValueError(
                "`ts` must be a 1-D array of query times (at least 2 when `t0` is "
                f"`None`); got shape {jnp.shape(ts)}. Batch with `jax.vmap`."
            )
        if jnp.shape(z0) != (self.latent_size,):
            raise ValueError(
                f"`z0` must be one latent state, of shape `({self.latent_size},)`; got "
                f"shape {jnp.shape(z0)}. Batch with `jax.vmap`."
            )
        dtype = jnp.result_type(z0)
        ts = jnp.asarray(ts, dtype)
        t0 = ts[0] if t0 is None else jnp.asarray(t0, dtype)
        if jnp.shape(ts)[0] > 1:
            ts = check_increasing(ts, "ts")
        ts = eqx.error_if(
            ts,
            ~((ts[0] >= t0) & (ts[-1] > t0)),
            "`ts` must not start before `t0` and must end after it.",
        )
        sol = self.decoder.solve(jnp.stack([t0, ts[-1]]), z0, saveat=dfx.SaveAt(ts=ts))
        return jax.vmap(self.readout)(sol.ys)

    def log_likelihood(
        self,
        ts: Real[Array, " time"],
        xs: Float[Array, "time {self.data_size}"],
        z0: Float[Array, " {self.latent_size}"],
        *,
        t0: Real[ArrayLike, ""] | None = None,
    ) -> Float[Array, ""]:
        """The Gaussian log-likelihood `log p(x | z0)` of the observed values.

        **Arguments:**

        - `ts`: the observation times, as for `decode`.
        - `xs`: the observations, of shape `(time, data_size)`; `NaN` marks a missing
            value, which contributes nothing.
        - `z0`: one latent state at time `t0`, of shape `(latent_size,)`.
        - `t0`: the time of `z0`; `None` means `ts[0]`.

        **Returns:** the sum over the observed values of their log density under
        `N(decode(ts, z0), obs_std^2)`, a scalar.

        **Raises:** as `decode`, and `ValueError` naming `xs` if its shape is wrong.
        """
        if jnp.ndim(xs) != 2 or jnp.shape(xs) != (jnp.shape(ts)[0], self.data_size):
            raise ValueError(
                f"`xs` must be of shape `(time, {self.data_size})` (one row per entry "
                f"of `ts`, `data_size` channels); got shape {jnp.shape(xs)} for `ts` "
                f"of shape {jnp.shape(ts)}. Batch with `jax.vmap`."
            )
        means = self.decode(ts, z0, t0=t0)
        mask = ~jnp.isnan(xs)
        # Zero the missing values before subtracting, so no NaN reaches a gradient.
        residual = jnp.where(mask, jnp.where(mask, xs, 0) - means, 0)
        std = self.obs_std.astype(means.dtype)
        count = jnp.sum(mask)
        return -0.5 * jnp.sum(residual**2) / std**2 - count * (
            jnp.log(std) + 0.5 * math.log(2 * math.pi)
        )

    def elbo(
        self,
        ts: Real[Array, " time"],
        xs: Float[Array, "time {self.data_size}"],
        *,
        key: PRNGKeyArray,
        ts_target: Real[Array, " target"] | None = None,
        xs_target: Float[Array, "target {self.data_size}"] | None = None,
        kl_weight: Real[ArrayLike, ""] = 1.0,
    ) -> Float[Array, ""]:
        """A one-sample estimate of the evidence lower bound.

        `log p(x_target | z0) - kl_weight * KL(q(z0 | x) || N(0, I))` with `z0` drawn
        from `q(z0 | x)` by reparameterisation (so gradients flow through the sample)
        and the KL divergence in closed form. With `kl_weight=1` and the targets the
        observations, its expectation is the ELBO, a lower bound on `log p(x)`; a
        `kl_weight` growing from 0 to 1 anneals the KL term, as is common practice.
        Maximise it (minimise its negative).

        **Arguments:**

        - `ts`, `xs`: the observations the posterior is computed from, as for `encode`.
        - `key`: a PRNG key for the sample of `z0`.
        - `ts_target`, `xs_target`: the observations whose likelihood is scored, of
            shapes `(target,)` and `(target, data_size)`, none before `ts[0]` (`NaN`
            marks a missing value). Both `None` (the default) means `ts`, `xs`: a
            reconstruction. Targets beyond the observed window train extrapolation.
        - `kl_weight`: the weight of the KL term, non-negative; 1 for the true ELBO.

        **Returns:** the estimate, a scalar (a sum over the observed target values,
        not a mean).

        **Raises:** as `encode` and `log_likelihood`; `ValueError` if only one of
        `ts_target` and `xs_target` is given.
        """
        if (ts_target is None) != (xs_target is None):
            raise ValueError(
                "`ts_target` and `xs_target` must be given together (or neither)."
            )
        mean, log_std = self.encode(ts, xs)
        z0 = mean + jnp.exp(log_std) * jr.normal(key, mean.shape, mean.dtype)
        if ts_target is None or xs_target is None:
            ts_target, xs_target = ts, xs
        _check_series(ts_target, xs_target, self.data_size, "ts_target", "xs_target")
        log_likelihood = self.log_likelihood(ts_target, xs_target, z0, t0=ts[0])
        return log_likelihood - kl_weight * _gaussian_kl(mean, log_std)

    def __call__(
        self,
        ts_obs: Real[Array, " time"],
        xs_obs: Float[Array, "time {self.data_size}"],
        ts_query: Real[Array, " query"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "query {self.data_size}"]:
        """Reconstruct or forecast a series from irregular observations.

        **Arguments:**

        - `ts_obs`, `xs_obs`: the observations, as for `encode`.
        - `ts_query`: the query times, of shape `(query,)`, strictly increasing, none
            before `ts_obs[0]`; any number, inside the observed window or beyond it.
        - `key`: `None` decodes the posterior mean of `z0`; a PRNG key decodes a
            sample from `q(z0 | x)`.

        **Returns:** the predicted observation means at `ts_query`, of shape
        `(query, data_size)`.

        **Raises:** as `encode` and `decode`.
        """
        mean, log_std = self.encode(ts_obs, xs_obs)
        z0 = mean
        if key is not None:
            z0 = mean + jnp.exp(log_std) * jr.normal(key, mean.shape, mean.dtype)
        return self.decode(ts_query, z0, t0=ts_obs[0])
