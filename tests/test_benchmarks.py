"""Smoke test of benchmarks/bench_optim.py's Muon / SOAP section: it runs and prints every row.
Not a timing test: width 32, one repeat, nothing about the numbers is checked."""
import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_optim.py"


def test_bench_optim_muon_soap_runs():
    out = subprocess.run([sys.executable, str(SCRIPT), "--only", "muon_soap", "--widths", "32", "--repeats", "1"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    row = next(line for line in out.stdout.splitlines() if line.startswith("mlp M=32"))
    names = ["muon", "muon_svd", "soap"] + (["torch_muon"] if hasattr(torch.optim, "Muon") else [])
    for name in names:
        assert f"| {name} " in row and "floor" in row, row
    assert "pieces per step in SGD steps" in out.stdout
