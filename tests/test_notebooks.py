"""The tutorial notebooks: committed at class size with the lesson first, and each one runs at CI
size with its claims checked.

The committed notebooks were executed at class size (their lesson sizes,
``python notebooks/execute.py --size class``), so their outputs are not compared with a run
here. Instead every notebook ends with a "Checks" code cell of plain ``assert`` statements of
the lesson's claims, written to hold at both sizes, and its exercises' check cells. ``pytest``
runs every notebook through nbval at CI size (``testpaths`` holds ``notebooks/``; its conftest
sets ``MUPSO_SIZE=ci``, which each parameters cell reads), so a claim that fails is a failing
cell there. The tests here check the structure, the committed outputs and ``execute.py``.
"""
import ast
import importlib.util
import os
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
spec = importlib.util.spec_from_file_location("execute_notebooks", NOTEBOOKS / "execute.py")
execute_notebooks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(execute_notebooks)
NAMES = execute_notebooks.NOTEBOOKS
PASSED = "all checks passed"   # what each Checks cell prints last
# Phrases that point outside the repository or at people: a notebook cites the paper or states the fact.
FORBIDDEN = ("science.md", "project notes", "the lead", "lead measured", "reference run")
CI_BLOCK = 'if os.environ.get("MUPSO_SIZE") == "ci":'


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


def ci_sizes(source: str) -> dict:
    """The names the parameters cell's ``MUPSO_SIZE == "ci"`` block assigns, with their values."""
    block = next(n for n in ast.parse(source).body if isinstance(n, ast.If) and CI_BLOCK.startswith(
        "if " + ast.unparse(n.test).replace("'", '"')))
    return {t.id: ast.literal_eval(a.value) for a in block.body if isinstance(a, ast.Assign) for t in a.targets}


def test_every_notebook_is_listed():
    assert NAMES == sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) and len(NAMES) == 8


@pytest.mark.parametrize("name", NAMES)
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

    # the parameters cell: the first code cell, explained in its first line, the lesson sizes, then
    # the CI sizes under MUPSO_SIZE=ci, each a name the lesson sizes define
    p = cells[params[0]]
    assert p is code[0], "the parameters cell comes before every cell that uses the parameters"
    lines = p.source.splitlines()
    assert lines[0].startswith("# ") and "MUPSO_SIZE=ci" in lines[0] and len(lines) <= 22
    assert CI_BLOCK in p.source and "import os" in p.source
    lesson = assigned_names(p.source.split("import os")[0])
    small = ci_sizes(p.source)
    assert small and set(small) <= lesson, "every CI size overrides a lesson size"
    assert not [c for c in cells if "injected-parameters" in tags(c)], "committed at class size, not CI size"
    assert nb.metadata.get("papermill", {}).get("parameters", {}) == {}

    # the end: the Checks cell of asserts, then the exercises, then how to run the notebook
    checks = checks_cell(nb)
    assert "assert " in checks.source and checks.source.rstrip().endswith(f'print("{PASSED}")')
    heading = next(i for i, c in enumerate(cells) if c.cell_type == "markdown" and "## Exercises" in c.source)
    assert cells.index(checks) < heading, "the exercises come after the lesson's Checks"
    assert not [c for c in cells[cells.index(checks) + 1:heading] if c.cell_type == "code"]
    assert cells[-1].cell_type == "markdown" and cells[-1].source.startswith("---")
    assert "**Running this notebook.**" in cells[-1].source and "MUPSO_SIZE=ci" in cells[-1].source

    # executed top to bottom without error, claims holding; no saved widget state
    assert "widgets" not in nb.metadata  # no 15 MB of saved widget state
    widgets = [o for c in code for o in c.outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert all(o.data["text/plain"] == execute_notebooks.WIDGET_PLACEHOLDER for o in widgets), \
        "before Run All a saved widget says how to draw it, not VBox(children=(…"
    plain = ["".join(o.get("data", {}).get("text/plain", "")) for c in code for o in c.outputs]
    assert not [t for t in plain if " at 0x" in t], "no memory address in a saved output (it changes every run)"
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), "executed in one Run All"
    for cell in code:
        assert not [o for o in cell.outputs if o.output_type == "error"]
    assert PASSED in printed(checks), "the committed Checks cell ran and passed"

    # the notebook stands on its own
    text = "\n".join(c.source for c in cells).lower()
    assert not [w for w in FORBIDDEN if w in text]


def probe_notebook(folder: Path) -> str:
    """A two-cell notebook in ``folder`` that prints the size the kernel sees and its parameter."""
    cell = nbformat.v4.new_code_cell("# probe\nx = 1\nimport os\nif os.environ.get(\"MUPSO_SIZE\") == \"ci\":\n    x = 2")
    cell.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=[cell, nbformat.v4.new_code_cell(
        'print(os.environ.get("MUPSO_SIZE"), x)')])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, folder / "99_probe.ipynb")
    return "99_probe"


@pytest.mark.parametrize("size, parameters, expected", [("ci", None, "ci 2"), ("class", None, "None 1"),
                                                        ("ci", dict(x=3), "ci 3")])
def test_execute_py_sets_the_size_for_the_kernel(size, parameters, expected, tmp_path, monkeypatch):
    """``execute.py`` at CI size: the kernel sees MUPSO_SIZE=ci (the small sizes); at class size it
    sees no MUPSO_SIZE even when this process has one; papermill's parameters still override
    both; this process's environment is left as it was."""
    src = tmp_path / "src"
    src.mkdir()
    name = probe_notebook(src)
    monkeypatch.setattr(execute_notebooks, "HERE", src)
    monkeypatch.setattr(execute_notebooks, "NOTEBOOKS", [name])
    monkeypatch.setenv("MUPSO_SIZE", "something else")
    out = execute_notebooks.execute(name, size, tmp_path / "out", parameters=parameters)
    assert os.environ["MUPSO_SIZE"] == "something else"
    nb = nbformat.read(out, as_version=4)
    assert printed(nb.cells[-1]).strip() == expected
    assert nb.metadata["papermill"]["parameters"] == (parameters or {})
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
