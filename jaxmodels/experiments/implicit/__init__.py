"""Experiments of the `implicit` family: equilibrium models trained and checked."""

from . import (
    deq as deq,
    eqprop as eqprop,
    homoode as homoode,
    lpn as lpn,
    monotone as monotone,
)
