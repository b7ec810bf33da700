"""Floor 3: `fit`, training of any Equinox model, and its checkpoint files."""

from ._checkpoint import (
    load_checkpoint as load_checkpoint,
    read_checkpoint_meta as read_checkpoint_meta,
    save_checkpoint as save_checkpoint,
)
from ._fit import (
    FitResult as FitResult,
    NonFiniteLossError as NonFiniteLossError,
    default_mesh as default_mesh,
    fit as fit,
)
