"""scripts/exp_scale.py: the lr grid, the best-lr rule (complete seeds only, diverged = inf), the
edge rule that keeps every optimum interior, and a tiny end-to-end run."""
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import exp_scale  # noqa: E402


def test_half_decade_grid():
    assert [exp_scale.lr_of(k) for k in range(-6, 3)] == [1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0]
    assert all(exp_scale.K_OF[exp_scale.lr_of(k)] == k for k in range(-12, 7))


def runs(rows):
    df = pd.DataFrame(rows, columns=["k", "seed", "loss"])
    return df.assign(dataset="d", optimizer="kfac", param="sp", width=64)


def test_best_k_needs_every_seed_and_counts_divergence_as_inf():
    df = runs([(-2, 0, 0.5), (-2, 1, 0.5), (-1, 0, 0.1), (-1, 1, np.inf), (0, 0, 0.05), (1, 0, 0.3), (1, 1, 0.3)])
    # k=0 has seed 0 only; k=-1 has a diverged seed: the best with both seeds is k=1
    assert exp_scale.best_k(df, ("d", "kfac", "sp"), 64, (0, 1)) == (1, 0.3)
    assert exp_scale.best_k(df, ("d", "kfac", "sp"), 64, (0,)) == (0, 0.05)
    assert exp_scale.best_k(df, ("d", "kfac", "sp"), 128, (0,)) == (None, np.inf)


def test_edge_neighbor_grows_a_window_until_the_best_is_interior():
    assert exp_scale.edge_neighbor(-6, set(range(-6, 3))) == -7      # beyond the 1e-3 ... 10 grid
    assert exp_scale.edge_neighbor(2, set(range(-6, 3))) == 3
    assert exp_scale.edge_neighbor(0, set(range(-6, 3))) is None
    assert exp_scale.edge_neighbor(-12, {-12, -11}) is None          # K_LIMITS stop it
    assert exp_scale.edge_neighbor(-4, {-4, -3, -2, 3}) == -5        # a gap counts as an edge


def test_tiny_run_finds_interior_optima(tmp_path, monkeypatch):
    monkeypatch.setattr(exp_scale, "plan", lambda args: dict(datasets=("digits",), widths=(64, 128), seeds=(0, 1),
                                                             k_grid=(-3, -1), steps=3))
    args = SimpleNamespace(out=str(tmp_path), quick=True, steps=3, workers=1, executor="serial", widths=[64, 128])
    df, best, base = exp_scale.run(args)
    assert set(df.optimizer) == {"kfac", "shampoo"} and set(df.width) == {64, 128}
    for (ds, o, pa, w), k in best.items():   # every best lr has run neighbours on both sides
        sub = df[(df.optimizer == o) & (df.param == pa) & (df.width == w)]
        assert {k - 1, k + 1} <= set(sub.k[sub.seed == 1]), (o, pa, w, k)
    # at the base width SP == muP: the same losses, so the same tuned lr
    for o in ("kfac", "shampoo"):
        sp, mup = (df[(df.optimizer == o) & (df.param == pa) & (df.width == 64)].set_index(["k", "seed"]).loss
                   for pa in ("sp", "mup"))
        common = sp.index.intersection(mup.index)
        assert len(common) and np.allclose(sp[common], mup[common])
        assert best[("digits", o, "sp", 64)] == best[("digits", o, "mup", 64)] == base[("digits", o)]
    text = (tmp_path / "scale.md").read_text()
    assert "shift 64->128" in text and "SP @ own best lr" in text
    assert (tmp_path / "scale_lr_digits.html").exists() and (tmp_path / "scale.html").exists()
