"""Experiments of the `implicit` family: equilibrium models trained and checked."""

from . import deq as deq
