"""Floor 3: `sweep`, seeds x hyperparameters trained as one vmapped, sharded program."""

from ._sweep import SweepResult as SweepResult, seed_key as seed_key, sweep as sweep
