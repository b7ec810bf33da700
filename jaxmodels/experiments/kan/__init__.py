"""Experiments of the `kan` family: Kolmogorov-Arnold networks on synthetic functions."""

from . import (
    autoencoder as autoencoder,
    bases as bases,
    feynman as feynman,
    metacluster as metacluster,
    toy as toy,
)
