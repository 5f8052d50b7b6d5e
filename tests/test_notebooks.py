"""The example notebooks: committed without outputs, and run end to end in a real Jupyter kernel (slow: CI runs them)."""

import json
import os
from pathlib import Path

import pytest

from conftest import SHARED_DATA

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))
CIFAR = SHARED_DATA / "cifar10-jpeg"
NEEDS_CIFAR = {"02-airplanes-and-birds.ipynb", "03-photo-folder.ipynb"}


def test_there_are_three_notebooks_committed_without_outputs():
    assert len(NOTEBOOKS) >= 3
    for path in NOTEBOOKS:
        cells = json.loads(path.read_text())["cells"]
        code = [c for c in cells if c["cell_type"] == "code"]
        assert code and all(not c["outputs"] and c["execution_count"] is None for c in code), f"{path.name} has outputs: strip them"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_notebook_runs_in_a_jupyter_kernel(path, tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient", reason="the notebook extra is not installed: pip install -e '.[dev]'")
    import nbformat

    if path.name in NEEDS_CIFAR and not CIFAR.is_dir():
        pytest.skip(f"the CIFAR-10 JPEG folder is not at {CIFAR} (the repo's ../shared/data)")
    monkeypatch.setenv("IMGCLS_CIFAR", str(CIFAR))
    monkeypatch.setenv("MPLBACKEND", "agg")
    book = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(book, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=dict(os.environ))  # raises CellExecutionError with the cell and its traceback
    outputs = [o for c in book.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    shown = "".join(o.get("text", "") + json.dumps(o.get("data", {})) for o in outputs)
    assert "test accuracy" in shown  # each notebook displays at least one Run
    assert list((tmp_path / "runs").iterdir())
