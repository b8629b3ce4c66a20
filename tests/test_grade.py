"""notebooks/grade.py: a teacher's grading of submitted student copies.

A small synthetic tutorial stands in for the real ones (a lesson cell and three exercises), so
that each outcome is checked in seconds: an answered exercise passes, a stub fails, an edited
check counts as changed, a student's broken cell counts as a lesson error, a dead kernel and a
file that is not a notebook are reported, never crash the grading of the others.
"""
import importlib.util
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]


def load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "notebooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


grade, student = load("grade"), load("student")


def cell(source, *cell_tags):
    c = nbformat.v4.new_code_cell(source)
    if cell_tags:
        c.metadata["tags"] = list(cell_tags)
    return c


def tutorial():
    nb = nbformat.v4.new_notebook(cells=[
        cell("x = 21"),
        cell("# Define y: twice x.\ny = 2 * x", "solution"),
        cell("assert y == 42, 'y should be twice x'\nprint('exercise 1: correct')", "exercise-check"),
        cell("# Define z: x + 1.\nz = x + 1", "solution"),
        cell("assert z == 22\nprint('exercise 2: correct')", "exercise-check"),
        cell("# Define w: 3.\nw = 3", "solution"),
        cell("assert w == 3\nprint('exercise 3: correct')", "exercise-check"),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


@pytest.fixture
def course(tmp_path, monkeypatch):
    """A notebooks folder holding the synthetic tutorial 01_demo, and the student copy of it."""
    repo = tmp_path / "repo"
    repo.mkdir()
    nbformat.write(tutorial(), repo / "01_demo.ipynb")
    monkeypatch.setattr(grade, "HERE", repo)
    return student.student_copy(tutorial(), "01_demo")


def submit(nb, folder: Path, name="01_demo.ipynb") -> Path:
    folder.mkdir(exist_ok=True)
    nbformat.write(nb, folder / name)
    return folder / name


def test_each_outcome_is_graded(course, tmp_path):
    stubs = [c for c in course.cells if "exercise" in c.metadata.get("tags", [])]
    stubs[0].source += "\ny = 2 * x"   # exercise 1 answered (after the stub's raise: replace it)
    stubs[0].source = stubs[0].source.replace("raise NotImplementedError", "# raise NotImplementedError")
    stubs[2].source = "w = 3"          # exercise 3 answered, but its check loosened below
    checks = grade.checks_of(course)
    checks[2].source = "print('exercise 3: correct')"
    course.cells.append(cell("1 / 0"))   # a broken cell of the student's own
    row = grade.grade(submit(course, tmp_path / "alice", "01_demo_alice.ipynb"))
    assert row["notebook"] == "01_demo"
    assert (row["exercise 1"], row["exercise 2"], row["exercise 3"]) == ("pass", "fail", "check changed")
    assert row["lesson errors"] == 1 and "error" not in row
    nbformat.read(tmp_path / "alice" / "01_demo_alice.ipynb", as_version=4)   # the submission is unchanged
    assert not list((tmp_path / "alice").glob("*.jsonl"))


def test_the_answers_pass_and_the_stubs_fail(course, tmp_path):
    assert grade.grade(submit(tutorial(), tmp_path / "key")) == {
        "notebook": "01_demo", "file": str(tmp_path / "key" / "01_demo.ipynb"),
        "exercise 1": "pass", "exercise 2": "pass", "exercise 3": "pass", "lesson errors": 0}
    row = grade.grade(submit(course, tmp_path / "blank"))
    assert [row[f"exercise {i}"] for i in (1, 2, 3)] == ["fail"] * 3 and row["lesson errors"] == 0


def test_a_dead_kernel_and_a_broken_file_are_reported(course, tmp_path):
    stubs = [c for c in course.cells if "exercise" in c.metadata.get("tags", [])]
    stubs[0].source = "import os\nos._exit(1)"
    row = grade.grade(submit(course, tmp_path / "bob"))
    assert row["error"].startswith("the kernel died")
    assert [row[f"exercise {i}"] for i in (1, 2, 3)] == ["fail"] * 3   # nothing after the crash ran
    broken = tmp_path / "eve" / "01_demo.ipynb"
    broken.parent.mkdir()
    broken.write_text("{ not json")
    row = grade.grade(broken)
    assert row["error"].startswith("not a notebook") and row["exercise 1"] == "missing"


def test_a_deleted_check_is_missing(course, tmp_path):
    course.cells = [c for c in course.cells if c is not grade.checks_of(course)[2]]
    row = grade.grade(submit(course, tmp_path / "carol"))
    assert row["exercise 3"] == "missing"


def test_bad_arguments_are_refused(course, tmp_path, capsys):
    with pytest.raises(ValueError, match="expected a file name that starts like one of the notebooks"):
        grade.grade(submit(course, tmp_path / "x", "homework.ipynb"))
    with pytest.raises(ValueError, match="size: expected 'ci' or 'class', got 'big'"):
        grade.grade(tmp_path / "x" / "homework.ipynb", size="big")
    with pytest.raises(ValueError, match="timeout: expected a whole number of seconds > 0, got 0"):
        grade.grade(tmp_path / "x" / "homework.ipynb", timeout=0)
    with pytest.raises(SystemExit):
        grade.main([str(tmp_path / "nope.ipynb")])
    assert "no such file" in capsys.readouterr().err


def test_command_line_writes_the_table(course, tmp_path, capsys):
    key = submit(tutorial(), tmp_path / "key")
    assert grade.main([str(key), "--csv", str(tmp_path / "marks.csv")]) == 0
    assert "3/3 passed" in capsys.readouterr().out
    lines = (tmp_path / "marks.csv").read_text().splitlines()
    assert lines[0] == "notebook,file,exercise 1,exercise 2,exercise 3,lesson errors"
    assert lines[1].endswith(",pass,pass,pass,0")
