"""Execute the tutorial notebooks with papermill, at class size or at CI size.

    python notebooks/execute.py --size class               # all notebooks at class size, saved in place
    python notebooks/execute.py 02_kfac_mup --size class   # just one (name with or without .ipynb)
    python notebooks/execute.py                            # all at CI size, into artifacts/notebooks-ci/
    python notebooks/execute.py 05_damping --out /tmp/nb   # one at CI size, into /tmp/nb/

**Class size** runs each notebook with its own defaults (its ``parameters`` cell): this is what
is committed, so ``--size class`` without ``--out`` rewrites the notebooks in ``notebooks/``.
The first seven took 8 minutes on 2 shared CPU cores, 07 about 1 more (``docs/notebooks.md`` lists each one).

**CI size** runs each notebook with the small parameters in ``CI`` below (papermill writes
them into an ``injected-parameters`` cell after the ``parameters`` cell), about 3 minutes for
all eight. It checks that a notebook runs and that its claims hold: every notebook ends with a
"Checks" cell of plain ``assert`` statements, written to hold at both sizes.
``tests/test_notebooks.py`` imports ``CI`` from here, so the CI sizes live in this one place.
CI-size copies are never written over the committed notebooks.

Before executing, any ``injected-parameters`` cell left in the source is removed, so class size
really uses the notebook's defaults. Volatile metadata (timings, absolute paths, saved widget
state) is removed from the result, so that re-executing leaves a small diff.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CI_OUT = HERE.parent / "artifacts" / "notebooks-ci"   # git-ignored

# Small parameters: all eight notebooks together run in a few minutes on 2 CPU cores, and each
# notebook's Checks cell still holds at these sizes.
CI = {
    "00_playground": dict(width=128, steps=30, coord_widths=[64, 128, 256]),
    "01_why_width_matters": dict(widths=[64, 128, 256, 512], seeds=[0], coord_steps=2, train_widths=[64, 1024]),
    "02_kfac_mup": dict(widths=[64, 128, 256, 512], seeds=[0], coord_steps=2,
                        train_width=256, train_steps=20, memory_widths=[64, 128, 256, 512], memory_seeds=[0]),
    "03_shampoo_mup": dict(widths=[64, 128, 256, 512], seeds=[0]),
    "04_hyperparameter_transfer": dict(widths={"sgd": [64, 4096], "kfac": [64, 1024]},
                                       lrs={"sgd": [0.1, 1.0], "kfac": [0.316]}, seeds=[0], executor="serial"),
    "05_damping": dict(widths=[64, 128, 256, 512], seeds=[0], sweep_widths=[64, 1024], dampings=[1e-2, 1e-1],
                       executor="serial"),
    "06_your_model": dict(coord_widths=[64, 128, 256], coord_steps=1, seeds=[0], train_widths=[64, 256],
                          train_steps=50),
    "07_second_order_family": dict(width=128, widths=[64, 128, 256], seeds=[0]),
}
NOTEBOOKS = sorted(CI)


def execute(name: str, size: str = "ci", out_dir: Path | None = None, kernel: str = "python3") -> Path:
    """Run notebook ``name`` with its CI parameters (``size="ci"``) or its own defaults
    (``size="class"``) and write it to ``out_dir/name.ipynb``. Default ``out_dir``: in place
    for class size, ``artifacts/notebooks-ci/`` for CI size."""
    import nbformat
    import papermill as pm

    name = name.removesuffix(".ipynb")
    if name not in CI:
        raise SystemExit(f"unknown notebook {name!r}; expected one of {', '.join(NOTEBOOKS)}")
    if size not in ("ci", "class"):
        raise SystemExit(f"size: expected 'ci' or 'class', got {size!r}")
    out_dir = Path(out_dir) if out_dir is not None else (HERE if size == "class" else CI_OUT)
    if size == "ci" and out_dir.resolve() == HERE:
        raise SystemExit("CI-size outputs are not committed: give --out another folder, or use --size class")
    dst = out_dir / f"{name}.ipynb"
    dst.parent.mkdir(parents=True, exist_ok=True)
    nb = nbformat.read(HERE / f"{name}.ipynb", as_version=4)
    strip_injected(nb)   # a left-over CI cell would override the class-size defaults
    params = CI[name] if size == "ci" else {}
    pm.execute_notebook(nb, str(dst), parameters=params, kernel_name=kernel, cwd=str(HERE),
                        progress_bar=False, log_output=False)
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="notebooks to run (default: all)")
    parser.add_argument("--size", choices=("ci", "class"), default="ci",
                        help="ci: the small parameters in CI (default); class: the notebook's own defaults")
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
