"""Associative memories: modern Hopfield networks and layers, classical and dense
associative memories, Hebbian networks, differentiable clustering, scaling laws of
outer-product memories, and fast-weight programmers.
"""
