"""Experiments of the `memory` family: retrieval, capacity, clustering and scaling."""

from . import hopfield as hopfield
