"""The KAN autoencoder: a KAN encoder to a latent vector and a KAN decoder back."""

from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from .._core import check_positive_int
from ._basis import AbstractBasis
from ._layer import KAN


class KANAutoencoder(eqx.Module):
    """An autoencoder whose encoder and decoder are Kolmogorov-Arnold networks.

    The encoder is a KAN of widths `[data_size, *hidden, latent_size]` and the decoder
    one of widths `[latent_size, *reversed(hidden), data_size]`; the reconstruction of
    `x` is `decode(encode(x))`, trained by its squared error. This is the fully
    connected KAN autoencoder of Moradi, Panahi, Bayraktar and Asadi,
    "Kolmogorov-Arnold Network Autoencoders" (2024), who compare it with convolutional
    autoencoders on images.

    **Fields:**

    - `encoder`: the encoder [`jaxmodels.kan.KAN`][].
    - `decoder`: the decoder [`jaxmodels.kan.KAN`][].
    - `data_size`, `latent_size`: the dimensions of the data and of the code.
    """

    encoder: KAN
    decoder: KAN
    data_size: int = eqx.field(static=True)
    latent_size: int = eqx.field(static=True)

    def __init__(
        self,
        data_size: int,
        latent_size: int,
        *,
        hidden: Sequence[int] = (16,),
        basis: Callable[[int], AbstractBasis] | None = None,
        base_activation: Callable | None = jax.nn.silu,
        noise_scale: float = 0.1,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `data_size`: the dimension of a data vector.
        - `latent_size`: the dimension of the code.
        - `hidden`: the widths of the encoder's hidden layers (the decoder's, reversed).
        - `basis`: `basis(in_features)` builds each layer's basis, as in
            [`jaxmodels.kan.KAN`][] (default: B-splines on `[-1, 1]`).
        - `base_activation`, `noise_scale`: as in [`jaxmodels.kan.KAN`][].
        - `key`: a PRNG key.

        **Raises:** `ValueError` naming `data_size`, `latent_size` or `hidden` if a size
        is not a positive integer.
        """
        check_positive_int(data_size, "data_size")
        check_positive_int(latent_size, "latent_size")
        hidden = tuple(hidden)
        for width in hidden:
            if isinstance(width, bool) or not isinstance(width, int) or width < 1:
                raise ValueError(
                    f"`hidden` must hold positive integers; got {hidden!r}."
                )
        ekey, dkey = jr.split(key)
        options = dict(
            basis=basis, base_activation=base_activation, noise_scale=noise_scale
        )
        self.encoder = KAN([data_size, *hidden, latent_size], **options, key=ekey)
        self.decoder = KAN(
            [latent_size, *reversed(hidden), data_size], **options, key=dkey
        )
        self.data_size = data_size
        self.latent_size = latent_size

    def encode(
        self, x: Float[Array, " {self.data_size}"]
    ) -> Float[Array, " {self.latent_size}"]:
        """The code of one data vector."""
        return self.encoder(x)

    def decode(
        self, z: Float[Array, " {self.latent_size}"]
    ) -> Float[Array, " {self.data_size}"]:
        """The data vector decoded from one code."""
        return self.decoder(z)

    def __call__(
        self, x: Float[Array, " {self.data_size}"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, " {self.data_size}"]:
        """The reconstruction `decode(encode(x))` of one data vector; `key` is
        unused."""
        del key
        return self.decode(self.encode(x))
