"""Execute the tutorial notebooks with papermill, at class size or at CI size.

    python notebooks/execute.py --size class               # all notebooks at class size, saved in place
    python notebooks/execute.py 02_kfac_mup --size class   # just one (name with or without .ipynb)
    python notebooks/execute.py                            # all at CI size, into artifacts/notebooks-ci/
    python notebooks/execute.py 05_damping --out /tmp/nb   # one at CI size, into /tmp/nb/

Each notebook's sizes live in its ``parameters`` cell: the lesson sizes first, then a block
``if os.environ.get("MUPSO_SIZE") == "ci":`` with the small sizes the tests use.

**Class size** runs each notebook with its lesson sizes (``MUPSO_SIZE`` unset): this is what is
committed, so ``--size class`` without ``--out`` rewrites the notebooks in ``notebooks/``.
``docs/notebooks.md`` lists how long each one took on 2 CPU cores.

**CI size** sets ``MUPSO_SIZE=ci`` for the kernel, so each notebook picks its small sizes, about
3 minutes for all eight. It checks that a notebook runs and that its claims hold: every notebook
ends with a "Checks" cell of plain ``assert`` statements, written to hold at both sizes. The tests
run the same sizes through nbval (``MUPSO_SIZE=ci pytest --nbval-lax notebooks/``). CI-size
copies are never written over the committed notebooks.

papermill's parameters still work on top of either size (``execute(name, parameters={...})``
adds an ``injected-parameters`` cell after the ``parameters`` cell). Before executing, any
``injected-parameters`` cell left in the source is removed, so class size really uses the lesson
sizes. Volatile metadata (timings, absolute paths, saved widget state) is removed from the
result, so that re-executing leaves a small diff.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CI_OUT = HERE.parent / "artifacts" / "notebooks-ci"   # git-ignored
NOTEBOOKS = sorted(p.stem for p in HERE.glob("[0-9][0-9]_*.ipynb"))
SIZE_VARIABLE = "MUPSO_SIZE"   # "ci": the small sizes at the end of each parameters cell
# What a saved widget shows before its cell runs (widget state is not saved: see clean_metadata).
WIDGET_PLACEHOLDER = "(a live widget: run the notebook, Run → Run All, to draw it)"


def execute(name: str, size: str = "ci", out_dir: Path | None = None, kernel: str = "python3",
            parameters: dict | None = None) -> Path:
    """Run notebook ``name`` at its small sizes (``size="ci"``, ``MUPSO_SIZE=ci``) or its lesson
    sizes (``size="class"``), with optional papermill ``parameters`` on top, and write it to
    ``out_dir/name.ipynb``. Default ``out_dir``: in place for class size, ``artifacts/notebooks-ci/``
    for CI size."""
    import nbformat
    import papermill as pm

    name = name.removesuffix(".ipynb")
    if name not in NOTEBOOKS:
        raise SystemExit(f"unknown notebook {name!r}; expected one of {', '.join(NOTEBOOKS)}")
    if size not in ("ci", "class"):
        raise SystemExit(f"size: expected 'ci' or 'class', got {size!r}")
    out_dir = Path(out_dir) if out_dir is not None else (HERE if size == "class" else CI_OUT)
    if size == "ci" and out_dir.resolve() == HERE:
        raise SystemExit("CI-size outputs are not committed: give --out another folder, or use --size class")
    dst = out_dir / f"{name}.ipynb"
    dst.parent.mkdir(parents=True, exist_ok=True)
    nb = nbformat.read(HERE / f"{name}.ipynb", as_version=4)
    strip_injected(nb)   # a left-over injected cell would override the lesson sizes
    before = os.environ.pop(SIZE_VARIABLE, None)   # the kernel inherits this process's environment
    if size == "ci":
        os.environ[SIZE_VARIABLE] = "ci"
    try:
        pm.execute_notebook(nb, str(dst), parameters=parameters or {}, kernel_name=kernel, cwd=str(HERE),
                            progress_bar=False, log_output=False)
    finally:
        os.environ.pop(SIZE_VARIABLE, None)
        if before is not None:
            os.environ[SIZE_VARIABLE] = before
    nb = nbformat.read(dst, as_version=4)
    clean_metadata(nb)
    nbformat.write(nb, dst)
    return dst


def strip_injected(nb) -> None:
    """Remove papermill's ``injected-parameters`` cells (what an earlier CI-size run left)."""
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]


def clean_metadata(nb) -> None:
    """Drop what changes on every run (timings, absolute paths, widget state: the plotly
    FigureWidget's state holds all of plotly.js, 15 MB); keep the parameters."""
    nb.metadata.pop("widgets", None)
    pm_meta = nb.metadata.get("papermill", {})
    nb.metadata["papermill"] = {"parameters": pm_meta.get("parameters", {})}
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        if not cell.metadata.get("tags", True):
            cell.metadata.pop("tags")   # papermill adds an empty list to every cell
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if "application/vnd.jupyter.widget-view+json" in data:   # without its state a widget shows this
                data["text/plain"] = WIDGET_PLACEHOLDER
            text = "".join(data.get("text/plain", ""))
            if re.fullmatch(r"<pandas\.io\.formats\.style\.Styler at 0x[0-9a-f]+>", text):
                data["text/plain"] = "<a table: ml.plots.table>"   # the address changes on every run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="notebooks to run (default: all)")
    parser.add_argument("--size", choices=("ci", "class"), default="ci",
                        help="ci: the small sizes, MUPSO_SIZE=ci (default); class: the lesson sizes")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the executed copies (default: in place for class size, "
                             "artifacts/notebooks-ci/ for CI size)")
    args = parser.parse_args(argv)
    total = time.perf_counter()
    for name in args.names or NOTEBOOKS:
        start = time.perf_counter()
        dst = execute(name, args.size, args.out)
        print(f"{dst}  ({args.size} size, {time.perf_counter() - start:.0f} s)", flush=True)
    if len(args.names or NOTEBOOKS) > 1:
        print(f"total {time.perf_counter() - total:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
