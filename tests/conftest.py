import os
from pathlib import Path

import jax
import pytest


# A persistent compilation cache: on a machine that has run the suite before (CI runs
# on the developer's machine), most XLA compilation is read back from disk.
_CACHE = Path(
    os.environ.get("JAXMODELS_TEST_CACHE", Path.home() / ".cache" / "jaxmodels-tests")
)
jax.config.update("jax_compilation_cache_dir", str(_CACHE / "xla"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def x64():
    """Double precision for reference checks (analytic solutions, finite differences)."""
    with jax.enable_x64(True):
        yield
