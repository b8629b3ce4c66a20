"""scripts/exp_family.py (Muon and SOAP across widths, docs/results.md section 11): its smoke run
writes every part's tables and resumes without re-running (the findings themselves are tested on
the optimizers: tests/test_muon.py, tests/test_soap.py)."""
import sys
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import exp_family as E  # noqa: E402


def test_quick_run_writes_the_tables_and_resumes(tmp_path):
    threads = torch.get_num_threads()
    try:
        E.main(["--quick", "--out", str(tmp_path)])
        names = {p.name for p in tmp_path.iterdir()}
        for part in ("grad", "coord", "lr"):
            assert f"family_{part}_quick.md" in names and f"family_{part}_quick.csv" in names, names
        coord = pd.read_csv(tmp_path / "family_coord_quick.csv")
        lr = pd.read_csv(tmp_path / "family_lr_quick.csv")
        table = (tmp_path / "family_coord_quick.md").read_text()
        assert "muP Muon" in table and "muP SOAP" in table
        E.main(["--quick", "--out", str(tmp_path), "--part", "lr"])   # resumes: no new run
        assert len(pd.read_csv(tmp_path / "family_lr_quick.csv")) == len(lr) and len(coord) > 0
    finally:
        torch.set_num_threads(threads)
