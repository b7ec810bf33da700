"""Associative memories: modern Hopfield networks and layers, classical and dense
associative memories, Hebbian networks, differentiable clustering, scaling laws of
outer-product memories, and fast-weight programmers.
"""
from ._hopfield import (
    Hopfield as Hopfield,
    HopfieldLayer as HopfieldLayer,
    HopfieldPooling as HopfieldPooling,
    HopfieldSolution as HopfieldSolution,
    hopfield_energy as hopfield_energy,
    hopfield_retrieve as hopfield_retrieve,
    hopfield_update as hopfield_update,
)
