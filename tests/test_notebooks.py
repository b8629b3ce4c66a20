"""The tutorial notebooks: each runs without error at CI size, and the committed outputs repeat.

``notebooks/execute.py`` holds the CI parameters; the committed notebooks were executed with
them, so nbval can re-run each one and compare its outputs (sanitized for timings and devices
by ``notebooks/nbval_sanitize.cfg``).
"""
import importlib.util
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
spec = importlib.util.spec_from_file_location("execute_notebooks", NOTEBOOKS / "execute.py")
execute_notebooks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(execute_notebooks)
CI = execute_notebooks.CI


def test_every_notebook_has_ci_parameters():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(CI)


@pytest.mark.parametrize("name", sorted(CI))
def test_notebook_structure(name):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    assert nb.cells[0].cell_type == "markdown" and "class size" in nb.cells[0].source
    assert "parameters" in tags[1] and "injected-parameters" in tags[2]  # committed at CI size
    assert all(key in nb.cells[1].source for key in CI[name])  # every CI parameter has a default
    assert "Exercises" in nb.cells[-1].source
    assert "widgets" not in nb.metadata  # no 15 MB of saved widget state
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.execution_count is not None, "the committed notebook is executed"
            assert not [o for o in cell.outputs if o.output_type == "error"]


@pytest.mark.parametrize("name", sorted(CI))
def test_notebook_runs_at_ci_size(name, tmp_path):
    out = execute_notebooks.execute(name, "ci", tmp_path)  # raises PapermillExecutionError on failure
    nb = nbformat.read(out, as_version=4)
    assert nb.metadata["papermill"]["parameters"] == CI[name]


def test_committed_outputs_repeat_under_nbval(tmp_path):
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval", str(NOTEBOOKS),
           "--nbval-sanitize-with", str(NOTEBOOKS / "nbval_sanitize.cfg"), "--rootdir", str(tmp_path),
           "-o", "testpaths=", "--timeout=600"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
