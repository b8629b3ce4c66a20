"""scripts/exp_zero_readout.py (docs/results.md section 5): a run that diverges before the
step-20 probe has no hidden change there (NaN, left out of the tables' means) instead of ending
the whole experiment, and the sweep's table says how many runs that was."""
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import exp_zero_readout as Z  # noqa: E402


@pytest.fixture(autouse=True)
def torch_threads_restored():
    """one_run sets one torch thread, as the experiment's workers do; the other tests keep theirs."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def config(**over):
    return {**dict(width=64, rho=0.1, batch=16, seed=0, zero=False, n=256, steps=25), **over}


def test_a_run_that_diverges_before_the_probe_has_no_hidden_change():
    row = Z.one_run(config(lr=1e4, rho=1e-3))   # blows up within a few steps
    assert row["diverged"] and row["steps_run"] < Z.PROBE_STEP, row
    assert math.isnan(row["hidden"]) and math.isnan(row["input"]) and math.isnan(row["output"])
    row = Z.one_run(config())                   # a stable run: probed at step 20
    assert not row["diverged"] and row["steps_run"] == 25 and row["hidden"] > 0
    short = Z.one_run(config(steps=5))          # shorter than the probe step: probed at its end
    assert short["steps_run"] == 5 and short["hidden"] > 0


def test_the_sweep_table_counts_the_runs_that_diverged_before_the_probe(tmp_path, monkeypatch):
    real = Z.one_run

    def blow_up_width_64(cfg):   # the quick sweep's rho 0.1 runs, at an lr that diverges at once
        return real({**cfg, "lr": 1e4} if cfg["rho"] == 0.1 else cfg)
    monkeypatch.setattr(Z, "one_run", blow_up_width_64)
    Z.sweep(SimpleNamespace(quick=True, steps=25, out=str(tmp_path), executor="serial", workers=1))
    text = (tmp_path / "zero_readout_sweep.md").read_text()
    assert "4 of them diverged before the step-20 probe" in text, text[-600:]
    assert "| 64 | 0.1 | nan | nan |" in text and "| 64 | 10 |" in text
