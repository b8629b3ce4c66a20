"""The exercises and their student copies (``notebooks/student.py``, ``make student``).

In the repository each exercise is an answer cell tagged ``solution`` followed by a check cell
tagged ``exercise-check``; nbval runs them with the rest of the notebook (the answers pass their
checks). Here: the student copy replaces each answer by a stub, keeps the checks, clears what
would give the answer away, and, run at CI size outside the repository, fails exactly at the
stubs and their checks while every lesson cell still runs.
"""
import importlib.util
from itertools import takewhile
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
spec = importlib.util.spec_from_file_location("student", NOTEBOOKS / "student.py")
student = importlib.util.module_from_spec(spec)
spec.loader.exec_module(student)
TUTORIALS = ["01_why_width_matters", "02_kfac_mup", "03_shampoo_mup", "04_hyperparameter_transfer",
             "05_damping", "06_your_model", "07_second_order_family"]   # the notebooks with graded exercises


def tags(cell) -> list:
    return cell.metadata.get("tags", [])


def read(name):
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


def printed(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def code_cell(source, *cell_tags):
    cell = nbformat.v4.new_code_cell(source)
    if cell_tags:
        cell.metadata["tags"] = list(cell_tags)
    return cell


@pytest.mark.parametrize("name", TUTORIALS)
def test_each_tutorial_has_two_to_four_checked_exercises(name):
    nb = read(name)
    code = [c for c in nb.cells if c.cell_type == "code"]
    solutions = [i for i, c in enumerate(code) if "solution" in tags(c)]
    assert 2 <= len(solutions) <= 4, f"{name}: {len(solutions)} exercises"
    headings = [c for c in nb.cells if c.cell_type == "markdown" and c.source.startswith("### Exercise")]
    assert len(headings) == len(solutions)
    for n, i in enumerate(solutions, 1):
        answer, check = code[i], code[i + 1]
        assert "exercise-check" in tags(check) and "assert " in check.source
        assert answer.source.startswith("#"), "an answer starts with what to write (kept in the student copy)"
        # the committed copy ran its answers: each check passed
        assert not [o for o in answer.outputs + check.outputs if o.output_type == "error"]
        assert f"exercise {n}: correct" in printed(check), f"{name}: exercise {n}'s check did not pass"


@pytest.mark.parametrize("name", TUTORIALS)
def test_student_copy_hides_the_answers_and_keeps_the_rest(name, tmp_path):
    (dst,) = student.write([name], tmp_path)
    original, copy = read(name), nbformat.read(dst, as_version=4)
    assert len(copy.cells) == len(original.cells)
    for before, after in zip(original.cells, copy.cells):
        if "solution" not in tags(before):
            assert after.source == before.source and tags(after) == tags(before)
            if "exercise-check" in tags(before):
                assert after.outputs == [] and after.execution_count is None
            elif before.cell_type == "code":
                assert after.outputs == before.outputs   # the lesson's figures and tables stay
            continue
        assert tags(after) == ["exercise"] and after.outputs == []
        assert "raise NotImplementedError" in after.source
        task = list(takewhile(lambda line: line.startswith("#"), before.source.splitlines()))
        answer = [line for line in before.source.splitlines() if line.strip() and not line.startswith("#")]
        assert task and after.source.splitlines()[: len(task)] == task, "the task is kept"
        assert not [line for line in answer if line in after.source.splitlines()], "no line of the answer"
    assert not [c for c in copy.cells if "solution" in tags(c)]


def test_stub_keeps_the_task_or_the_lines_around_an_nbgrader_block():
    answer = "# Define y: twice x.\n# (a float)\ny = 2 * x\nprint(y)"
    assert student.stub_source(answer) == "# Define y: twice x.\n# (a float)\n" + student.STUB
    marked = "def f(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION\nprint(f(1))"
    stub = student.stub_source(marked)
    assert "return 2 * x" not in stub and stub.startswith("def f(x):\n    # YOUR CODE HERE\n    raise")
    assert stub.endswith("print(f(1))")


@pytest.mark.parametrize("cells, message", [
    ([code_cell("y = 1", "solution"), code_cell("assert y == 1", "exercise-check")], "must start with comment"),
    ([code_cell("# y\ny = 1", "solution")], "must be followed by a code cell tagged 'exercise-check'"),
    ([code_cell("# y\ny = 1", "solution"), code_cell("print(y)")], "followed by a code cell tagged"),
    ([code_cell("### END SOLUTION\ny = 1\n### BEGIN SOLUTION", "solution"), code_cell("1", "exercise-check")],
     "expected one '### BEGIN SOLUTION' line followed by one"),
])
def test_malformed_exercises_are_refused(cells, message):
    nb = nbformat.v4.new_notebook(cells=cells)
    with pytest.raises(ValueError, match=message):
        student.student_copy(nb, "bad")


def test_write_refuses_unknown_names_and_the_notebooks_folder(tmp_path):
    with pytest.raises(SystemExit, match="unknown notebook 'nope'"):
        student.write(["nope"], tmp_path)
    with pytest.raises(SystemExit, match="never overwrite the notebooks"):
        student.write(["01_why_width_matters"], NOTEBOOKS)
    assert [p.name for p in student.write(None, tmp_path)] == sorted(p.name for p in NOTEBOOKS.glob("0*.ipynb"))


@pytest.mark.parametrize("name", TUTORIALS)
def test_student_copy_runs_outside_the_repository(name, tmp_path, monkeypatch):
    """Run the student copy at CI size in a folder outside the repository (the installed package
    only): the stubs and their checks fail, every other cell runs, the lesson's Checks pass."""
    from nbclient import NotebookClient

    lab = tmp_path / "lab"
    (dst,) = student.write([name], lab)
    monkeypatch.setenv("MUPSO_SIZE", "ci")
    monkeypatch.chdir(tmp_path)
    nb = nbformat.read(dst, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(lab)}}).execute()
    failed = {i for i, c in enumerate(nb.cells) if c.cell_type == "code"
              and any(o.output_type == "error" for o in c.outputs)}
    exercises = {i for i, c in enumerate(nb.cells) if "exercise" in tags(c) or "exercise-check" in tags(c)}
    assert failed == exercises, {i: nb.cells[i].source[:60] for i in failed ^ exercises}
    for i in exercises:
        error = next(o for o in nb.cells[i].outputs if o.output_type == "error")
        if "exercise" in tags(nb.cells[i]):
            assert error.ename == "NotImplementedError"
        else:
            assert error.ename in ("NameError", "AssertionError", "NotImplementedError"), error.ename
    checks = [c for c in nb.cells if c.cell_type == "code" and "all checks passed" in c.source]
    assert len(checks) == 1 and "all checks passed" in printed(checks[0])
