"""DeepONet: an operator as a sum of branch coefficients times trunk basis functions."""

from collections.abc import Callable
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray


def _size(value: int | Literal["scalar"], name: str) -> int:
    if value == "scalar":
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive int or 'scalar', got {value!r}.")
    return value


class DeepONet(eqx.Module):
    """An unstacked deep operator network `G(u)(y) = sum_k b_k(u) t_k(y) + b_0`.

    A branch MLP maps the values of the input function at `num_sensors` fixed sensors,
    `u(x_1), ..., u(x_m)`, to `basis` coefficients `b_k(u)`; a trunk MLP maps a query
    coordinate `y` to `basis` functions `t_k(y)`, with the activation applied to its
    last layer too, as in the paper; the output is their inner product plus a learned
    bias. This is the unstacked version (one branch network with `basis` outputs), which
    Lu, Jin, Pang, Zhang and Karniadakis, "Learning nonlinear operators via DeepONet
    based on the universal approximation theorem of operators" (Nature Machine
    Intelligence, 2021), recommend over the stacked one. For `out_size > 1` the branch
    outputs `out_size * basis` coefficients that share the trunk's basis (the
    "split-branch" variant), with one bias per output.

    `__call__(u, y)` evaluates one function at one point. To evaluate one function at
    many points, call `evaluate(u, ys)`, which computes the branch once and vmaps only
    the trunk (`jax.vmap(model, in_axes=(None, 0))` would give the same values, but
    relies on XLA to hoist the branch out of the batch); batch over functions with
    `jax.vmap(model.evaluate)`.
    """

    branch: eqx.nn.MLP
    trunk: eqx.nn.MLP
    bias: Float[Array, " out"]
    num_sensors: int = eqx.field(static=True)
    coord_size: int | Literal["scalar"] = eqx.field(static=True)
    out_size: int | Literal["scalar"] = eqx.field(static=True)
    basis: int = eqx.field(static=True)

    def __init__(
        self,
        num_sensors: int,
        coord_size: int | Literal["scalar"],
        *,
        width: int,
        depth: int,
        basis: int,
        out_size: int | Literal["scalar"] = "scalar",
        activation: Callable = jax.nn.relu,
        trunk_width: int | None = None,
        trunk_depth: int | None = None,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `num_sensors`: the number `m` of sensor values `u(x_1), ..., u(x_m)`.
        - `coord_size`: the dimension of a query point `y`, or `'scalar'` for a point
            given as a scalar.
        - `width`, `depth`: the hidden width and number of hidden layers of the branch
            (and of the trunk, unless `trunk_width` / `trunk_depth` are given).
        - `basis`: the number `p` of basis functions.
        - `out_size`: the dimension of `G(u)(y)`, or `'scalar'` (the default).
        - `activation`: the activation of both networks (ReLU by default, as in the
            paper's experiments); also applied to the trunk's last layer.
        - `trunk_width`, `trunk_depth`: the trunk's width and depth, if different.
        - `key`: a JAX random key.

        **Raises:** `ValueError` for a non-positive size or a negative depth.
        """
        if num_sensors == "scalar":
            raise ValueError("`num_sensors` must be a positive int, got 'scalar'.")
        _size(num_sensors, "num_sensors")
        _size(coord_size, "coord_size")
        n_out = _size(out_size, "out_size")
        _size(basis, "basis")
        trunk_width = width if trunk_width is None else trunk_width
        trunk_depth = depth if trunk_depth is None else trunk_depth
        for name, value in (("width", width), ("trunk_width", trunk_width)):
            _size(value, name)
        for name, value in (("depth", depth), ("trunk_depth", trunk_depth)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"`{name}` must be an int >= 0, got {value!r}.")
        bkey, tkey = jr.split(key)
        self.branch = eqx.nn.MLP(
            num_sensors, n_out * basis, width, depth, activation, key=bkey
        )
        self.trunk = eqx.nn.MLP(
            coord_size,
            basis,
            trunk_width,
            trunk_depth,
            activation,
            final_activation=activation,
            key=tkey,
        )
        self.bias = jnp.zeros(n_out)
        self.num_sensors = num_sensors
        self.coord_size = coord_size
        self.out_size = out_size
        self.basis = basis

    def branch_coefficients(
        self, u: Float[Array, " {self.num_sensors}"]
    ) -> Float[Array, "out basis"]:
        """The branch's coefficients `b_k(u)`, shape `(out, basis)` with `out = 1` for
        a scalar output.

        **Raises:** `ValueError` if `u` does not hold `num_sensors` values.
        """
        if u.shape != (self.num_sensors,):
            raise ValueError(
                f"`u` must hold the values at the {self.num_sensors} sensors "
                f"(`num_sensors`), shape ({self.num_sensors},); got {u.shape}."
            )
        return self.branch(u).reshape(-1, self.basis)

    def trunk_basis(self, y: Float[Array, "*coord"]) -> Float[Array, " basis"]:
        """The trunk's basis functions `t_k(y)` at one point, shape `(basis,)`.

        **Raises:** `ValueError` if `y` is not one point of size `coord_size`.
        """
        want = () if self.coord_size == "scalar" else (self.coord_size,)
        if y.shape != want:
            raise ValueError(
                f"the query point `y` must have shape {want} (`coord_size`="
                f"{self.coord_size!r}), got {y.shape}."
            )
        return self.trunk(y)

    def _output(self, coefficients: Array, basis: Array) -> Array:
        out = coefficients @ basis + self.bias
        return out[0] if self.out_size == "scalar" else out

    def __call__(
        self,
        u: Float[Array, " {self.num_sensors}"],
        y: Float[Array, "*coord"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "*out"]:
        """**Arguments:**

        - `u`: the input function's values at the sensors, shape `(num_sensors,)`.
        - `y`: one query point, shape `(coord_size,)` (or `()` for `'scalar'`).
        - `key`: unused; for the uniform model signature.

        **Returns:** `G(u)(y)`, shape `(out_size,)` (or `()` for `'scalar'`).

        **Raises:** `ValueError` if `u` or `y` has the wrong shape.
        """
        del key
        return self._output(self.branch_coefficients(u), self.trunk_basis(y))

    def evaluate(
        self,
        u: Float[Array, " {self.num_sensors}"],
        ys: Float[Array, " points *coord"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, " points *out"]:
        """`G(u)` at many points, with the branch computed once.

        **Arguments:**

        - `u`: the input function's values at the sensors, shape `(num_sensors,)`.
        - `ys`: query points, shape `(points, coord_size)` (or `(points,)` for
            `'scalar'`).
        - `key`: unused; for the uniform model signature.

        **Returns:** `G(u)(y)` at each point, shape `(points, out_size)` (or
        `(points,)` for a scalar output).

        **Raises:** `ValueError` if `u` or `ys` has the wrong shape.
        """
        del key
        want = 1 if self.coord_size == "scalar" else 2
        if ys.ndim != want:
            raise ValueError(
                f"`ys` must be a batch of query points of shape "
                f"{('points',) + (() if want == 1 else (self.coord_size,))} "
                f"(`coord_size`={self.coord_size!r}), got {ys.shape}."
            )
        coefficients = self.branch_coefficients(u)
        basis = jax.vmap(self.trunk_basis)(ys)
        return jax.vmap(lambda t: self._output(coefficients, t))(basis)
