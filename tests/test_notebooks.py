"""Every notebook in `notebooks/` runs top to bottom without an error (in small mode)."""

from pathlib import Path

import jax
import pytest


_NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", _NOTEBOOKS, ids=[p.name for p in _NOTEBOOKS])
def test_notebook_runs(path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    # The kernel inherits os.environ when it starts: small sizes, no display needed.
    monkeypatch.setenv("JAXMODELS_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # The suite's persistent compilation cache (see conftest.py), for the kernel too.
    monkeypatch.setenv(
        "JAX_COMPILATION_CACHE_DIR", jax.config.jax_compilation_cache_dir
    )
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()  # raises CellExecutionError, naming the cell, on any error
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            assert output.get("output_type") != "error", (path.name, cell.source)
