"""Experiments of the `operators` family: neural operators trained on simulated PDE data."""

from . import dcdm as dcdm, deeponet as deeponet, fno as fno, mgno as mgno
