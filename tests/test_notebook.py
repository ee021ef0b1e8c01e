"""`docs/plots.ipynb` executed on the results of a real tiny run, so it never rots."""

import os

import nbformat
import pytest
from conftest import PROJECT_ROOT, TinyRun
from nbclient import NotebookClient

pytestmark = pytest.mark.slow  # runs the notebook in Jupyter's kernel


def test_plots_notebook_runs_on_saved_results(tiny_run: TinyRun, monkeypatch) -> None:
    notebook = nbformat.read(PROJECT_ROOT / "docs" / "plots.ipynb", as_version=4)
    # relative, as typed in the shell the notebook was started from (not docs/, Jupyter's cwd)
    monkeypatch.setenv("PWD", str(tiny_run.run_dir.parent))
    monkeypatch.setenv("FEDAVG_RESULTS", tiny_run.run_dir.name)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")])
    )
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": "docs"}}
    ).execute(cwd=str(PROJECT_ROOT / "docs"))
    outputs = [
        output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    ]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "1 runs under" in text
    assert "2NN IID C=0.5 E=1 B=10" in text
    assert "4 clients, " in text  # the tiny run's partition, counted from its labels
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 3  # curves, raw curves, the label counts
    tables = [o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
    assert tables and "### Other configurations" in tables[0]
