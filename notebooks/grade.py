"""Grade students' notebooks: run each one and report which exercise checks pass.

    python notebooks/grade.py submissions/*.ipynb                 # a table, one row per notebook
    python notebooks/grade.py submissions/*.ipynb --csv marks.csv # and the same as a CSV file
    python notebooks/grade.py alice/02_kfac_mup.ipynb --size class

Each submission is a student copy (``make student``) with the student's answers in the cells
tagged ``exercise``. It is run top to bottom in a fresh kernel, in a temporary folder, at the
small sizes (``MUPSO_SIZE=ci``, seconds to a minute per notebook; ``--size class`` for the lesson
sizes), going on after errors. An exercise passes when its check cell ran without error *and*
its source is the check the repository's notebook holds: a check a student edited counts as
"check changed", not as passed. Which repository notebook a submission belongs to is read from
its file name (``02_kfac_mup.ipynb``, or any name that starts with ``02_``).

Grading runs the students' code on this machine, as any autograder does: run it as a user who
can lose nothing, or in a container.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PASS, FAIL, CHANGED, MISSING = "pass", "fail", "check changed", "missing"


def tags(cell) -> list:
    return cell.metadata.get("tags", [])


def checks_of(nb) -> list:
    """The ``exercise-check`` cells of ``nb``, in order."""
    return [c for c in nb.cells if c.cell_type == "code" and "exercise-check" in tags(c)]


def original_of(path: Path):
    """The repository notebook a submission belongs to, found by its two-digit prefix."""
    import nbformat

    prefix = Path(path).name[:3]
    matches = sorted(HERE.glob(f"{prefix}*.ipynb")) if prefix[:2].isdigit() and prefix[2] == "_" else []
    if len(matches) != 1:
        names = ", ".join(p.name for p in sorted(HERE.glob("[0-9][0-9]_*.ipynb")))
        raise ValueError(f"{path}: expected a file name that starts like one of the notebooks ({names})")
    return matches[0].stem, nbformat.read(matches[0], as_version=4)


def grade(path, size: str = "ci", timeout: int = 300) -> dict:
    """Run the submission at ``path`` and return {"notebook", "file", "exercise 1": PASS/FAIL/…,
    …, "lesson errors": number of failing cells that are not exercises}, plus "error" when the
    file is not a notebook or its kernel died. A cell running longer than ``timeout`` seconds is
    interrupted and counts as failed."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError

    if size not in ("ci", "class"):
        raise ValueError(f"size: expected 'ci' or 'class', got {size!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout <= 0:
        raise ValueError(f"timeout: expected a whole number of seconds > 0, got {timeout!r}")
    path = Path(path)
    name, original = original_of(path)
    expected = [c.source for c in checks_of(original)]
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as e:   # not JSON, not a notebook: every exercise is missing
        return {"notebook": name, "file": str(path), "error": f"not a notebook: {e}",
                **{f"exercise {i}": MISSING for i in range(1, len(expected) + 1)}, "lesson errors": 0}
    row = {"notebook": name, "file": str(path)}
    env_before = os.environ.get("MUPSO_SIZE")
    os.environ["MUPSO_SIZE"] = size
    try:
        with tempfile.TemporaryDirectory() as folder:   # the student's files stay where they are
            NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                           interrupt_on_timeout=True, resources={"metadata": {"path": folder}}).execute()
    except DeadKernelError as e:   # e.g. os._exit or a crash in a student's cell: the rest did not run
        row["error"] = f"the kernel died: {str(e).strip() or type(e).__name__}"
    finally:
        os.environ.pop("MUPSO_SIZE")
        if env_before is not None:
            os.environ["MUPSO_SIZE"] = env_before
    failed = [c for c in nb.cells if c.cell_type == "code" and any(o.output_type == "error" for o in c.outputs)]
    got = checks_of(nb)
    for i, source in enumerate(expected, 1):
        cell = got[i - 1] if i <= len(got) else None
        ran = cell is not None and cell.execution_count is not None
        row[f"exercise {i}"] = (MISSING if cell is None else CHANGED if cell.source != source
                                else PASS if ran and not any(c is cell for c in failed) else FAIL)
    row["lesson errors"] = sum(1 for c in failed if not {"exercise", "exercise-check", "solution"} & set(tags(c)))
    return {**row, **({"error": row.pop("error")} if "error" in row else {})}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path, help="the students' notebooks")
    parser.add_argument("--size", choices=("ci", "class"), default="ci",
                        help="ci: the small sizes (default, fast); class: the lesson sizes")
    parser.add_argument("--csv", type=Path, default=None, help="also write the table to this CSV file")
    parser.add_argument("--timeout", type=int, default=300, help="seconds a cell may run (default 300)")
    args = parser.parse_args(argv)
    missing = [f for f in args.files if not f.is_file()]
    if missing:
        parser.error(f"files: no such file {missing[0]}")
    if args.timeout <= 0:
        parser.error(f"--timeout: expected seconds > 0, got {args.timeout}")
    rows = []
    for f in args.files:
        row = grade(f, args.size, args.timeout)
        rows.append(row)
        marks = [v for k, v in row.items() if k.startswith("exercise")]
        print(f"{f}: {marks.count(PASS)}/{len(marks)} passed  "
              + "  ".join(f"{k} {v}" for k, v in row.items() if k.startswith("exercise"))
              + (f"  ({row['lesson errors']} lesson cells failed)" if row["lesson errors"] else "")
              + (f"  {row['error']}" if "error" in row else ""), flush=True)
    if args.csv:
        columns = list(dict.fromkeys(k for row in rows for k in row))
        with open(args.csv, "w", newline="") as fh:
            writer = csv.DictWriter(fh, columns)
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
