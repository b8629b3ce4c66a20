"""Execute the tutorial notebooks with papermill.

    python notebooks/execute.py                      # all notebooks at CI size, saved in place
    python notebooks/execute.py 02_kfac_mup          # just one (name with or without .ipynb)
    python notebooks/execute.py --size class --out artifacts/notebooks   # class size, elsewhere

The committed notebooks are the output of the first command: each holds an
``injected-parameters`` cell with the small CI values below, which override the class-size
defaults in its ``parameters`` cell. ``tests/test_notebooks.py`` imports ``CI`` from here, so
the CI sizes live in this one place. Volatile papermill metadata (timings, absolute paths) is
removed so that re-executing leaves a small diff.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Small parameters: every notebook runs in well under a minute on 2 CPU cores.
CI = {
    "00_playground": dict(run_size="ci", width=128, steps=30, coord_widths=[64, 128, 256]),
    "01_why_width_matters": dict(run_size="ci", widths=[64, 128, 256, 512], seeds=[0], coord_steps=2,
                                 train_widths=[64, 512], train_steps=40),
    "02_kfac_mup": dict(run_size="ci", widths=[64, 128, 256, 512], seeds=[0], coord_steps=2,
                        train_width=256, train_steps=20),
    "03_shampoo_mup": dict(run_size="ci", widths=[64, 128, 256], seeds=[0], coord_steps=2),
    "04_hyperparameter_transfer": dict(run_size="ci", widths=[64, 256], lrs_per_decade=1, seeds=[0],
                                       steps=20, optimizers=["sgd", "kfac"], executor="serial"),
    "05_damping": dict(run_size="ci", widths=[64, 128, 256, 512], seeds=[0], coord_steps=2,
                       sweep_widths=[64, 256], dampings=[1e-4, 1e-2, 1.0], steps=20, executor="serial"),
}
NOTEBOOKS = sorted(CI)


def execute(name: str, size: str = "ci", out_dir: Path | None = None, kernel: str = "python3") -> Path:
    """Run notebook ``name`` with its CI parameters (``size="ci"``) or its own defaults
    (``size="class"``) and write it to ``out_dir/name.ipynb`` (default: in place)."""
    import nbformat
    import papermill as pm

    name = name.removesuffix(".ipynb")
    if name not in CI:
        raise SystemExit(f"unknown notebook {name!r}; expected one of {', '.join(NOTEBOOKS)}")
    src = HERE / f"{name}.ipynb"
    dst = (out_dir or HERE) / f"{name}.ipynb"
    dst.parent.mkdir(parents=True, exist_ok=True)
    params = CI[name] if size == "ci" else {}
    pm.execute_notebook(str(src), str(dst), parameters=params, kernel_name=kernel, cwd=str(HERE),
                        progress_bar=False, log_output=False)
    nb = nbformat.read(dst, as_version=4)
    clean_metadata(nb)
    nbformat.write(nb, dst)
    return dst


def clean_metadata(nb) -> None:
    """Drop what changes on every run (timings, absolute paths, widget state: the plotly
    FigureWidget's state holds all of plotly.js, 15 MB); keep the parameters."""
    nb.metadata.pop("widgets", None)
    pm_meta = nb.metadata.get("papermill", {})
    nb.metadata["papermill"] = {"parameters": pm_meta.get("parameters", {})}
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="notebooks to run (default: all)")
    parser.add_argument("--size", choices=("ci", "class"), default="ci",
                        help="ci: the small parameters in CI (default); class: the notebook's own defaults")
    parser.add_argument("--out", type=Path, default=None, help="folder for the executed copies (default: in place)")
    args = parser.parse_args(argv)
    for name in args.names or NOTEBOOKS:
        start = time.perf_counter()
        dst = execute(name, args.size, args.out)
        print(f"{dst}  ({time.perf_counter() - start:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
