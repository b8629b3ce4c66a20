"""Write the student copies of the tutorial notebooks: every exercise's answer replaced by a stub.

    python notebooks/student.py                 # all notebooks into build/student/  (make student)
    python notebooks/student.py 02_kfac_mup     # just one
    python notebooks/student.py --out /tmp/lab  # another folder

In the repository each exercise is two code cells: the answer, tagged ``solution``, then a
check, tagged ``exercise-check``, that asserts a property of the answer (not its exact text),
so a student's own correct answer passes too. The answer starts with comment lines that say
what to write. In the student copy the answer becomes a cell tagged ``exercise``: those comment
lines, then ``raise NotImplementedError``. The check stays. The outputs of both cells are
cleared, so the copy does not show the answer; every other cell keeps its executed outputs (the
lesson's figures and tables).

The nbgrader convention also works: if an answer holds a ``### BEGIN SOLUTION`` …
``### END SOLUTION`` block, only that block is replaced, and the lines around it are kept.

Exercises do not depend on each other and no lesson cell uses their names, so a stub that is
not done yet fails its own check and nothing else (``tests/test_student.py`` runs both copies).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "build" / "student"   # git-ignored
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
STUB = ('# YOUR CODE HERE\n'
        'raise NotImplementedError("your answer goes here; then run the check cell below")')


def tags(cell) -> list:
    return cell.metadata.get("tags", [])


def stub_source(source: str, where: str = "a solution cell") -> str:
    """The student's version of an answer: its ``### BEGIN SOLUTION`` block, or everything after
    its leading comment lines, replaced by ``STUB``."""
    lines = source.splitlines()
    marked = [i for i, line in enumerate(lines) if line.strip() in (BEGIN, END)]
    if marked:
        if len(marked) != 2 or lines[marked[0]].strip() != BEGIN:
            raise ValueError(f"{where}: expected one '{BEGIN}' line followed by one '{END}' line")
        start, stop = marked
        indent = lines[start][: len(lines[start]) - len(lines[start].lstrip())]
        stub = [indent + line for line in STUB.splitlines()]
        return "\n".join(lines[:start] + stub + lines[stop + 1:])
    head = []
    for line in lines:
        if not line.startswith("#"):
            break
        head.append(line)
    if not head:
        raise ValueError(f"{where} must start with comment lines that say what to write (the student "
                         f"copy keeps them), or hold a '{BEGIN}' … '{END}' block")
    return "\n".join(head + STUB.splitlines())


def student_copy(nb, name: str = "notebook"):
    """A copy of ``nb`` with each ``solution`` cell replaced by an ``exercise`` stub and the
    outputs of every exercise and check cell cleared. Refuses a solution not followed by its check."""
    import copy

    nb = copy.deepcopy(nb)
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    for k, i in enumerate(code):
        cell = nb.cells[i]
        if "solution" not in tags(cell):
            continue
        where = f"{name}, cell {i}"
        following = nb.cells[code[k + 1]] if k + 1 < len(code) else None
        if following is None or "exercise-check" not in tags(following):
            raise ValueError(f"{where}: a cell tagged 'solution' must be followed by a code cell tagged "
                             f"'exercise-check' (the check the student's answer has to pass)")
        cell.source = stub_source(cell.source, where)
        cell.metadata["tags"] = ["exercise" if t == "solution" else t for t in tags(cell)]
        for c in (cell, following):
            c.outputs, c.execution_count = [], None
    return nb


def write(names=None, out: Path = OUT) -> list[Path]:
    """Write the student copy of each notebook ``names`` (default: all) to ``out/``."""
    import nbformat

    out = Path(out)
    if out.resolve() == HERE:
        raise SystemExit("--out: the student copies never overwrite the notebooks; give another folder")
    available = sorted(p.stem for p in HERE.glob("[0-9][0-9]_*.ipynb"))
    names = [n.removesuffix(".ipynb") for n in (names or available)]
    unknown = [n for n in names if n not in available]
    if unknown:
        raise SystemExit(f"unknown notebook {unknown[0]!r}; expected one of {', '.join(available)}")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        nb = nbformat.read(HERE / f"{name}.ipynb", as_version=4)
        dst = out / f"{name}.ipynb"
        nbformat.write(student_copy(nb, name), dst)
        written.append(dst)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="notebooks to copy (default: all)")
    parser.add_argument("--out", type=Path, default=OUT, help="folder for the copies (default: build/student/)")
    args = parser.parse_args(argv)
    for dst in write(args.names, args.out):
        print(dst)
    return 0


if __name__ == "__main__":
    sys.exit(main())
