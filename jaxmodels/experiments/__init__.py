"""Floor 4: named, runnable recipes wiring a family to a task, a metric and a target.

Each family registers its experiments in `jaxmodels/experiments/<family>.py`; importing
this package imports them all.
"""

from . import (
    implicit as implicit,
    kan as kan,
    kernels as kernels,
    memory as memory,
    nde as nde,
    operators as operators,
    signal as signal,
)
from ._registry import (
    Experiment as Experiment,
    NotTrainedError as NotTrainedError,
    Study as Study,
    Task as Task,
    UnknownNameError as UnknownNameError,
    get_experiment as get_experiment,
    list_experiments as list_experiments,
    register as register,
)
from ._runner import (
    run_experiment as run_experiment,
    sweep_experiment as sweep_experiment,
)
