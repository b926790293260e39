"""Every notebook in notebooks/ executes without error at small sizes, so none can rot.

The notebooks read ``MEMPROF_NOTEBOOK_SMALL=1`` and shrink their batch sizes, models and timing
rounds; the committed outputs come from a full run (see each notebook's first cell). The kernel
is the ``python3`` kernelspec of the running interpreter's environment (ipykernel installs it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ has no notebook"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_committed_with_outputs(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(c.get("outputs") for c in code), f"{path.name}: run it and commit it with its outputs"
    assert all(o.get("output_type") != "error" for c in code for o in c["outputs"]), f"{path.name} has an error output"
    images = [o for c in code for o in c["outputs"] if "image/png" in o.get("data", {})]
    assert images, f"{path.name}: no figure in the committed outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes_at_small_sizes(path, monkeypatch, tmp_path):
    monkeypatch.setenv("MEMPROF_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert any("image/png" in o.get("data", {}) for o in outputs)
    assert os.environ["MEMPROF_NOTEBOOK_SMALL"] == "1"
