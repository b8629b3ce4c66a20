"""Shampoo at root 1/2 with a batch > 1 (scripts/exp_shampoo_root.py): the first step's formula,
the split of the output change, and the width exponents the mechanism predicts.

At root e the first step on a gradient G = U S V^T is U diag(s (s^2 + eps)^(-2e)) V^T: root 1/4
gives every singular direction the same step, root 1/2 gives the weakest the largest. With a
batch of one G is rank one and aligned with the readout; with a batch of 64 its weak directions
(the examples' differing phi' masks) overlap the readout less at larger widths, so the output's
feature change falls with width at root 1/2 (not at root 1/4; a relative eps 1e-2 flattens the
output but not the hidden layer).
"""
import sys
from pathlib import Path

import pytest
import torch

import mupso_lite as ml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import exp_shampoo_root as E  # noqa: E402

WIDTHS = (64, 128, 256, 512)


@pytest.fixture(scope="module")
def teacher():
    return {4: ml.datasets.teacher()}


@pytest.mark.parametrize("root, relative", [(0.25, False), (0.5, False), (0.5, True)])
def test_first_step_weights_each_singular_direction(root, relative):
    """Shampoo's first step on a rank-8 gradient is U diag(s (s^2 + eps)^(-2 root)) V^T."""
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(32, 8, generator=gen, dtype=torch.float64) @ torch.randn(8, 24, generator=gen, dtype=torch.float64)
    p = torch.nn.Parameter(torch.zeros(32, 24, dtype=torch.float64))
    opt = ml.Shampoo([p], lr=1.0, eps=1e-3, root=root, eps_mode="relative" if relative else "absolute")
    p.grad = g.clone()
    opt.step()
    u, s, vh = torch.linalg.svd(g, full_matrices=False)
    s = s[:8]
    w = E.first_step_weights(s, root, 1e-3, relative)
    torch.testing.assert_close(-p.detach(), (u[:, :8] * w) @ vh[:8], atol=1e-9, rtol=1e-7)
    if root == 0.5 and not relative:   # s / (s^2 + eps) ~ 1/s: the weakest direction gets the largest step
        assert float(s[-1] ** 2) > 1e-3 and w[-1] > 2 * w[0]


def test_readout_parts_split_the_output_change(teacher):
    """f(t) - f(0) = W_L Dx + DW_L x + DW_L Dx: f matches train's output change; with only the
    readout moving, W_L Dx = 0 and DW_L x = f."""
    cfg = E.config("t", batch=16, lr=0.05)
    row = E.coord_rows(cfg, (64,), (0,), (1,), teacher[4])[0]
    model = ml.MLP(16, 4, 64, 3, base_width=64, seed=0)
    rec = ml.run(model, E.make_opt(cfg)(model), teacher[4], steps=1, batch_size=16, device="cpu")[0]
    assert row["f"] == pytest.approx(rec["output_change"], rel=1e-5)
    only = E.coord_rows(dict(cfg, only="layers.2"), (64,), (0,), (1,), teacher[4])[0]
    assert only["W_L Dx"] == 0 and only["DW_L x"] == pytest.approx(only["f"], rel=1e-6) and only["f"] > 0


def test_current_batch_statistics_give_the_same_first_step(teacher):
    """The widths table uses beta=0, update_interval=1 (cheaper): step 1 equals the running sums'."""
    a = E.coord_rows(E.config("a"), (128,), (0,), (1,), teacher[4])[0]
    b = E.coord_rows(E.config("b", beta=0, update_interval=1), (128,), (0,), (1,), teacher[4])[0]
    for k in ("input", "hidden", "output", "W_L Dx", "align"):
        assert a[k] == pytest.approx(b[k], rel=1e-3), k


def test_weak_directions_get_root_halfs_step_and_miss_the_readout(teacher):
    """Batch 64: the gradient's weak directions overlap the readout less at width 512 than at 64,
    root 1/2 gives them more step than the strong ones (root 1/4 at most as much), so its feature
    change is far less aligned with the readout. Batch 1: one direction, aligned (> 0.9)."""
    sp = {(b, w): E.hidden_spectrum(ml.MLP(16, 4, w, 3, base_width=64, seed=0), teacher[4], b)
          for b in (1, 64) for w in (64, 512)}
    assert sp[64, 512]["overlap rest"] < 0.6 * sp[64, 64]["overlap rest"]
    for w in (64, 512):
        s = sp[64, w]
        assert s["step rest/top root 1/2"] > 1 >= s["step rest/top root 1/4"]
        assert s["align root 1/2"] < s["align root 1/4"] / 3
        assert sp[1, w]["align root 1/2"] > 0.9
    assert sp[64, 512]["align root 1/2"] < 0.6 * sp[64, 64]["align root 1/2"]


def slopes(teacher, **kw):
    frame = __import__("pandas").DataFrame(E.coord_rows(E.config("t", **kw), WIDTHS, (0,), (1,), teacher[4]))
    return E.slope_table(frame).iloc[0]


def test_root_half_output_is_flat_at_batch_1(teacher):
    s = slopes(teacher, batch=1)
    assert abs(s["output"]) < ml.coord.STABLE and abs(s["W_L Dx"]) < ml.coord.STABLE, s


def test_root_half_output_freezes_at_batch_64_through_the_readout_input(teacher):
    """The readout sees less of the hidden features' change (W_L Dx, alignment) than they change;
    the readout's own update DW_L x is flat."""
    s = slopes(teacher, batch=64)
    assert s["output"] < -ml.coord.STABLE and s["W_L Dx"] < -ml.coord.STABLE and s["align"] < -ml.coord.STABLE, s
    assert s["W_L Dx"] < s["hidden"] - 0.2 and abs(s["DW_L x"]) < ml.coord.STABLE, s


def test_batch_64_is_flat_at_root_quarter(teacher):
    s = slopes(teacher, batch=64, root=0.25)
    assert all(abs(s[k]) < ml.coord.STABLE for k in ("input", "hidden", "output", "W_L Dx", "align")), s


def test_relative_eps_flattens_the_output_not_the_hidden_layer(teacher):
    """Root 1/2 with a relative eps 1e-2 (lr 0.01): the output and W_L Dx are flat, but only because
    the hidden change now grows with width while its alignment with the readout still falls."""
    s = slopes(teacher, batch=64, lr=0.01, eps=1e-2, eps_mode="relative")
    assert abs(s["output"]) < ml.coord.STABLE and abs(s["W_L Dx"]) < ml.coord.STABLE, s
    assert s["hidden"] > 0.05 and s["align"] < -0.05, s
