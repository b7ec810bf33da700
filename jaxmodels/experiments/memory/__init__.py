"""Experiments of the `memory` family: retrieval, capacity, clustering and scaling."""

from . import (
    capacity as capacity,
    clam as clam,
    hopfield as hopfield,
    scaling as scaling,
)
