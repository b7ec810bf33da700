"""Experiments of the `kernels` family: infinite-width kernels, criticality and
finite-width corrections."""

from . import (
    criticality as criticality,
    deep as deep,
    mixture as mixture,
    regression as regression,
)
