import abc
from collections.abc import Callable

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from .._core import check_positive_int
from ._dropout import AlphaDropout
from ._init import Initialiser, he_normal, lecun_normal, reinit_linear
from ._selu import selu


def _make_layers(
    in_size: int,
    out_size: int,
    width: int,
    depth: int,
    init: Initialiser,
    key: PRNGKeyArray,
) -> tuple[eqx.nn.Linear, eqx.nn.Linear, eqx.nn.Linear]:
    for value, name in [
        (in_size, "in_size"),
        (out_size, "out_size"),
        (width, "width"),
        (depth, "depth"),
    ]:
        check_positive_int(value, name)
    first_key, hidden_key, last_key, init_key = jr.split(key, 4)
    first = eqx.nn.Linear(in_size, width, key=first_key)
    # One Linear with a leading layer axis: `depth - 1` hidden-to-hidden layers.
    hidden = eqx.filter_vmap(lambda k: eqx.nn.Linear(width, width, key=k))(
        jr.split(hidden_key, depth - 1)
    )
    last = eqx.nn.Linear(width, out_size, key=last_key)
    return reinit_linear((first, hidden, last), key=init_key, init=init)


class AbstractDeepMLP(eqx.Module):
    """A multilayer perceptron whose hidden layers run as one `lax.scan`.

    The `depth - 1` hidden-to-hidden layers are a single `eqx.nn.Linear` with a leading
    layer axis (built with `jax.vmap` over keys), so the compiled program holds one
    layer body whatever the depth: compile time stays flat from 4 layers to 400.
    Subclasses choose the activation (and any noise) by implementing `activate`.
    """

    first: eqx.AbstractVar[eqx.nn.Linear]
    hidden: eqx.AbstractVar[eqx.nn.Linear]
    last: eqx.AbstractVar[eqx.nn.Linear]
    in_size: eqx.AbstractVar[int]
    out_size: eqx.AbstractVar[int]
    width: eqx.AbstractVar[int]
    depth: eqx.AbstractVar[int]

    @abc.abstractmethod
    def activate(
        self, h: Float[Array, " width"], *, key: PRNGKeyArray | None
    ) -> Float[Array, " width"]:
        """The nonlinearity after each hidden linear layer."""

    def _run(self, x, key, collect: bool):
        if x.shape != (self.in_size,):
            raise ValueError(
                f"`x` must be one example of shape ({self.in_size},); got shape "
                f"{x.shape}. Batch with `jax.vmap`."
            )
        keys = None if key is None else jr.split(key, self.depth)
        first_key, hidden_keys = (None, None) if keys is None else (keys[0], keys[1:])
        h = self.activate(self.first(x), key=first_key)
        params, static = eqx.partition(self.hidden, eqx.is_array)

        def layer(h, inputs):
            p, k = inputs
            h = self.activate(eqx.combine(p, static)(h), key=k)
            return h, h if collect else None

        h_last, hs = lax.scan(layer, h, (params, hidden_keys))
        return h, h_last, hs

    def hidden_states(
        self, x: Float[Array, " {self.in_size}"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "{self.depth} {self.width}"]:
        """The activations after every hidden layer, for signal-propagation studies.

        **Arguments:** as `__call__`.

        **Returns:** an array of shape `(depth, width)`; row `l` is the output of
        hidden layer `l + 1`.
        """
        h_first, _, hs = self._run(x, key, collect=True)
        return jnp.concatenate([h_first[None], hs])

    def __call__(
        self, x: Float[Array, " {self.in_size}"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, " {self.out_size}"]:
        """**Arguments:**

        - `x`: one example, of shape `(in_size,)`; batch with `jax.vmap`.
        - `key`: a PRNG key for stochastic layers (dropout); `None` in inference.

        **Returns:** an array of shape `(out_size,)` (no final activation).

        **Raises:** `ValueError` naming `x` if its shape is not `(in_size,)`.
        """
        _, h, _ = self._run(x, key, collect=False)
        return self.last(h)


class SNN(AbstractDeepMLP):
    """A self-normalising network: SELU MLP with LeCun-normal weights, alpha dropout.

    From Klambauer et al., "Self-Normalizing Neural Networks" (2017). With weights drawn
    `N(0, 1 / fan_in)` and SELU activations, the mean and variance of the activations
    are attracted to `(0, 1)` layer after layer (see `selu_moment_map`), so deep plain
    feed-forward networks train without batch normalisation. Alpha dropout
    (`AlphaDropout`) regularises without leaving that fixed point.
    """

    first: eqx.nn.Linear
    hidden: eqx.nn.Linear
    last: eqx.nn.Linear
    dropout: AlphaDropout
    in_size: int = eqx.field(static=True)
    out_size: int = eqx.field(static=True)
    width: int = eqx.field(static=True)
    depth: int = eqx.field(static=True)

    def __init__(
        self,
        in_size: int,
        out_size: int,
        width: int,
        depth: int,
        dropout_rate: float | int = 0.0,
        *,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `in_size`: the input size.
        - `out_size`: the output size.
        - `width`: the size of every hidden layer.
        - `depth`: the number of hidden layers (each a linear map and a SELU), at
            least 1; there are `depth + 1` linear maps in all.
        - `dropout_rate`: the alpha-dropout rate after every hidden layer, in `[0, 1)`.
        - `key`: a PRNG key for the initial weights.

        **Raises:** `ValueError` naming the argument if a size or `depth` is not a
        positive integer, or `dropout_rate` is not in `[0, 1)`.
        """
        self.first, self.hidden, self.last = _make_layers(
            in_size, out_size, width, depth, lecun_normal, key
        )
        try:
            self.dropout = AlphaDropout(dropout_rate)
        except ValueError:
            raise ValueError(
                f"`dropout_rate` must be in [0, 1); got {dropout_rate}."
            ) from None
        self.in_size = in_size
        self.out_size = out_size
        self.width = width
        self.depth = depth

    def activate(
        self, h: Float[Array, " width"], *, key: PRNGKeyArray | None
    ) -> Float[Array, " width"]:
        """SELU, then alpha dropout."""
        return self.dropout(selu(h), key=key)


class ReLUMLP(AbstractDeepMLP):
    """A plain deep MLP, by default ReLU with He-normal weights: the SNN's baseline.

    Same layout and scan as `SNN`, without normalisation of any kind. He et al.'s
    initialisation ("Delving Deep into Rectifiers", 2015) keeps the second moment of
    the pre-activations constant with depth, but the post-activation mean and
    variance drift away from `(0, 1)`.
    """

    first: eqx.nn.Linear
    hidden: eqx.nn.Linear
    last: eqx.nn.Linear
    activation: Callable
    in_size: int = eqx.field(static=True)
    out_size: int = eqx.field(static=True)
    width: int = eqx.field(static=True)
    depth: int = eqx.field(static=True)

    def __init__(
        self,
        in_size: int,
        out_size: int,
        width: int,
        depth: int,
        *,
        activation: Callable = jax.nn.relu,
        init: Initialiser = he_normal,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `in_size`, `out_size`, `width`, `depth`: as `SNN`.
        - `activation`: the elementwise nonlinearity; default ReLU.
        - `init`: `init(key, shape, dtype)` for every weight matrix (biases are zero);
            default `he_normal`.
        - `key`: a PRNG key for the initial weights.

        **Raises:** `ValueError` naming the argument if a size or `depth` is not a
        positive integer.
        """
        self.first, self.hidden, self.last = _make_layers(
            in_size, out_size, width, depth, init, key
        )
        self.activation = activation
        self.in_size = in_size
        self.out_size = out_size
        self.width = width
        self.depth = depth

    def activate(
        self, h: Float[Array, " width"], *, key: PRNGKeyArray | None
    ) -> Float[Array, " width"]:
        """`activation(h)`; `key` is unused."""
        del key
        return self.activation(h)
