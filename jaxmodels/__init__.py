"""jaxmodels: model families of deep-learning theory and scientific ML in JAX.

Every model is an Equinox module or a pure function; `fit` trains any of them, `sweep`
trains many at once as one program, and `jaxmodels.experiments` wires families to tasks.
"""

from . import (
    data as data,
    implicit as implicit,
    memory as memory,
    nde as nde,
    signal as signal,
)
from ._core import RESULTS as RESULTS
from .sweep import SweepResult as SweepResult, sweep as sweep
from .train import (
    FitResult as FitResult,
    NonFiniteLossError as NonFiniteLossError,
    fit as fit,
)


__version__ = "0.1.0"
