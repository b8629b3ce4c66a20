"""The tutorial notebooks: committed at class size with the lesson first, and each one runs at CI
size with its claims checked.

The committed notebooks were executed at class size (their own defaults,
``python notebooks/execute.py --size class``), so their outputs are not compared with a run
here. Instead every notebook ends with a "Checks" code cell of plain ``assert`` statements of
the lesson's claims, written to hold at both sizes: ``test_notebook_runs_at_ci_size`` executes
each notebook with papermill at the small CI size of ``notebooks/execute.py``, and a claim that
fails is an error there, naming the cell.
"""
import ast
import importlib.util
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
spec = importlib.util.spec_from_file_location("execute_notebooks", NOTEBOOKS / "execute.py")
execute_notebooks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(execute_notebooks)
CI = execute_notebooks.CI
PASSED = "all checks passed"   # what each Checks cell prints last
# Phrases that point outside the repository or at people: a notebook cites the paper or states the fact.
FORBIDDEN = ("science.md", "project notes", "the lead", "lead measured", "reference run")


def tags(cell) -> list:
    return cell.metadata.get("tags", [])


def assigned_names(source: str) -> set:
    return {t.id for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Assign)
            for t in node.targets if isinstance(t, ast.Name)}


def checks_cell(nb):
    """The code cell under the "## Checks" heading."""
    heading = next(i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and "## Checks" in c.source)
    return next(c for c in nb.cells[heading + 1:] if c.cell_type == "code")


def printed(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def test_every_notebook_has_ci_parameters():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(CI)


@pytest.mark.parametrize("name", sorted(CI))
def test_notebook_structure(name):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    cells, code = nb.cells, [c for c in nb.cells if c.cell_type == "code"]

    # the story first: a title and what the student will learn, no machinery before the lesson
    assert cells[0].cell_type == "markdown" and cells[0].source.startswith(f"# {name[:2]} · ")
    assert "What you will learn" in cells[0].source
    params = [i for i, c in enumerate(cells) if "parameters" in tags(c)]
    assert len(params) == 1, "one cell tagged parameters (papermill injects the CI sizes after it)"
    before = cells[: params[0]]
    assert all(c.cell_type == "markdown" for c in before)
    assert not any(w in c.source for c in before for w in ("papermill", "CI size", "injected"))

    # the parameters cell: the first code cell, small, explained in its first line, every CI key a default
    p = cells[params[0]]
    assert p is code[0], "the parameters cell comes before every cell that uses the parameters"
    lines = p.source.splitlines()
    assert lines[0].startswith("# ") and len(lines) <= 12
    assert set(CI[name]) <= assigned_names(p.source), "every CI parameter has a class-size default"
    assert not [c for c in cells if "injected-parameters" in tags(c)], "committed at class size, not CI size"
    assert nb.metadata.get("papermill", {}).get("parameters", {}) == {}

    # the end: a Checks cell of asserts, then the exercises
    checks = checks_cell(nb)
    assert checks is code[-1] and "assert " in checks.source
    assert cells[-1].cell_type == "markdown" and "## Exercises" in cells[-1].source

    # executed top to bottom without error, claims holding; no saved widget state
    assert "widgets" not in nb.metadata  # no 15 MB of saved widget state
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), "executed in one Run All"
    for cell in code:
        assert not [o for o in cell.outputs if o.output_type == "error"]
    assert PASSED in printed(checks), "the committed Checks cell ran and passed"

    # the notebook stands on its own
    text = "\n".join(c.source for c in cells).lower()
    assert not [w for w in FORBIDDEN if w in text]


@pytest.mark.parametrize("name", sorted(CI))
def test_notebook_runs_at_ci_size(name, tmp_path):
    """Runs without error at CI size and its Checks cell holds (a failing assert raises
    PapermillExecutionError naming the cell)."""
    out = execute_notebooks.execute(name, "ci", tmp_path)
    nb = nbformat.read(out, as_version=4)
    assert nb.metadata["papermill"]["parameters"] == CI[name]
    injected = [i for i, c in enumerate(nb.cells) if "injected-parameters" in tags(c)]
    assert len(injected) == 1 and "parameters" in tags(nb.cells[injected[0] - 1])
    assert PASSED in printed(checks_cell(nb))
    assert "widgets" not in nb.metadata


def test_class_size_strips_a_left_over_ci_cell():
    """A notebook that still holds papermill's injected CI cell runs at class size without it."""
    nb = nbformat.read(NOTEBOOKS / "00_playground.ipynb", as_version=4)
    injected = nbformat.v4.new_code_cell("# Parameters\nwidth = 128\n")
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(2, injected)
    execute_notebooks.strip_injected(nb)
    assert not [c for c in nb.cells if "injected-parameters" in tags(c)]
    assert len(nb.cells) == len(nbformat.read(NOTEBOOKS / "00_playground.ipynb", as_version=4).cells)


def test_ci_size_never_overwrites_the_committed_notebooks():
    with pytest.raises(SystemExit, match="not committed"):
        execute_notebooks.execute("00_playground", "ci", NOTEBOOKS)
