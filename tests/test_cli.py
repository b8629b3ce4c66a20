"""The command line: coord-check, sweep and report write their files; bad input exits 2 in one line."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from mupso_lite.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_coord_check_writes_csv_and_html(tmp_path, capsys):
    out = tmp_path / "coord"
    assert main(["coord-check", "--optimizer", "kfac", "--widths", "16,32", "--steps", "1,2", "--seeds", "0",
                 "--base-width", "16", "--damping-mode", "trace", "--out", str(out)]) == 0
    frame, ex = pd.read_csv(out / "coord.csv"), pd.read_csv(out / "exponents.csv")
    assert set(frame["width"]) == {16, 32} and set(frame["step"]) == {1, 2}
    assert list(ex.columns) == ["step", "layer", "role", "slope"]
    assert "Plotly.newPlot" in (out / "coord.html").read_text()
    printed = capsys.readouterr().out
    assert "layers.0" in printed and f"wrote {out / 'coord.csv'}" in printed


def test_sweep_then_report(tmp_path, capsys):
    results, report = tmp_path / "s.jsonl", tmp_path / "report"
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"optimizer": ["kfac"], "param": ["sp", "mup"]}))
    args = ["sweep", "--grid", str(grid), "--widths", "16,32", "--lrs", "0.03,0.3", "--datasets", "teacher",
            "--steps", "3", "--base-width", "16", "--executor", "serial", "--no-progress", "--results", str(results)]
    assert main(args) == 0
    assert "8 runs in" in capsys.readouterr().out and len(results.read_text().splitlines()) == 8
    assert main(args) == 0  # resumes: nothing new
    assert len(results.read_text().splitlines()) == 8
    assert main(["report", str(results), "--out", str(report)]) == 0
    summary = pd.read_csv(report / "summary.csv")
    assert len(summary) == 8 and set(summary["ok"]) == {1}
    assert (report / "lr_transfer.html").exists() and (report / "accuracy_vs_width.html").exists()
    assert not (report / "damping_transfer.html").exists()  # one damping value: nothing to show


@pytest.mark.parametrize("argv, message", [
    (["sweep", "--widths", "16,x"], "argument --widths: expected a comma-separated list of widths, got '16,x'"),
    (["sweep", "--lrs", "-0.1"], "argument --lrs: expected lrs > 0"),
    (["sweep", "--optimizers", "lbfgs"], "argument --optimizers: expected values among sgd"),
    (["sweep", "--widths", "16", "--executor", "dask"], "argument --executor: invalid choice: 'dask'"),
    (["sweep", "--steps", "0", "--widths", "16"], "argument --steps: expected a positive integer, got '0'"),
    (["sweep", "--widths", "16", "--results", "/proc/no/such.jsonl"], "results: expected a writable file path"),
    (["sweep"], "grid: expected at least one of --grid, --widths"),
    (["coord-check", "--widths", "16"], "widths: expected at least two widths"),
    (["coord-check", "--damping", "nan"], "argument --damping: expected a finite number >= 0"),
    (["report", "/no/such/file.jsonl"], "results: no file /no/such/file.jsonl"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_bad_flags_and_values_exit_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and err.count("\n") == 1, err


def test_python_dash_m_and_the_console_script_show_help():
    for cmd in ([sys.executable, "-m", "mupso_lite", "sweep", "--help"],
                [str(Path(sys.executable).parent / "mupso-lite"), "report", "--help"]):
        if not os.path.exists(cmd[0]) and shutil.which(cmd[0]) is None:
            pytest.fail(f"{cmd[0]} is not installed: pip install -e . declares the console script")
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert res.returncode == 0 and "usage: mupso-lite" in res.stdout, res.stderr
    res = subprocess.run([sys.executable, "-m", "mupso_lite", "sweep", "--widths", "0"], capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 2 and res.stderr.count("\n") == 1
