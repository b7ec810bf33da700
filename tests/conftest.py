import gc
import os
from pathlib import Path

import jax
import pytest


# A persistent compilation cache: on a machine that has run the suite before (CI runs
# on the developer's machine), most XLA compilation is read back from disk.
_CACHE = Path(
    os.environ.get("JAXMODELS_TEST_CACHE", Path.home() / ".cache" / "jaxmodels-tests")
)
# One directory per pytest-xdist worker: two workers compiling the same computation at
# once could otherwise read an entry the other is still writing (a worker once aborted
# in the cache read).
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
jax.config.update(
    "jax_compilation_cache_dir", str(_CACHE / (f"xla-{_WORKER}" if _WORKER else "xla"))
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
jax.config.update("jax_numpy_rank_promotion", "raise")


def _memory_mappings() -> int:
    try:
        with open(f"/proc/{os.getpid()}/maps") as f:
            return sum(1 for _ in f)
    except OSError:  # not Linux
        return 0


@pytest.fixture(autouse=True)
def _release_executables():
    """Free compiled executables when a worker holds too many memory mappings.

    Every loaded XLA:CPU executable keeps a few memory mappings of JIT-linked code. A
    pytest-xdist worker that runs hundreds of tests reached the kernel's limit of 65530
    mappings (`vm.max_map_count`) and aborted inside the next executable load; clearing
    JAX's caches unmaps them (one module's tests: 6957 mappings, 1710 after clearing).
    Checked after every test (a test module such as `test_cli.py` alone compiles
    thousands of executables), cleared only past a threshold so that tests sharing
    compiled functions keep them.
    """
    yield
    if _memory_mappings() > 20000:
        jax.clear_caches()
        gc.collect()


@pytest.fixture
def x64():
    """Double precision for reference checks (analytic solutions, finite differences)."""
    with jax.enable_x64(True):
        yield


def _priority(item: pytest.Item) -> int:
    if "sde-missing" in item.nodeid:
        return 0
    if item.nodeid.startswith(("tests/test_cli.py", "tests/test_notebooks.py")):
        return 1
    return 2


def pytest_collection_modifyitems(config, items):
    # Longest first (the experiments' quick modes, the notebooks): under pytest-xdist
    # a long test handed out last keeps one worker busy while the other idles.
    items.sort(key=_priority)
