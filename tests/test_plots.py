"""ml.plots: each figure from a small DataFrame; axes, traces, marked optima, offline HTML."""
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

import mupso_lite as ml
from mupso_lite import plots


def coord_frame():
    rows = []
    for step in (1, 3):
        for w in (64, 128, 256):
            for seed in (0, 1):
                for name, role, fc in (("l0", "input", 1.0), ("l1", "hidden", (w / 64) ** 0.5)):
                    rows.append(dict(width=w, seed=seed, step=step, layer=name, role=role,
                                     feature_change=fc * (1 + 0.1 * seed), output_change=2.0))
    return pd.DataFrame(rows)


def sweep_frame():
    """Loss minimal at lr 0.1 for width 64 and at lr 0.01 for width 1024 (as in SP)."""
    rows = []
    for param in ("sp", "mup"):
        for w, best in ((64, 0.1), (1024, 0.01 if param == "sp" else 0.1)):
            for lr in (0.001, 0.01, 0.1, 1.0):
                for seed in (0, 1):
                    rows.append(dict(param=param, optimizer="kfac", width=w, lr=lr, damping=lr, seed=seed,
                                     damping_mode="trace", train_loss=abs(np.log10(lr / best)) + 0.1 * seed,
                                     test_accuracy=0.8 + 0.05 * seed + (0.1 if param == "mup" else 0.0)))
    return pd.DataFrame(rows)


def test_coord_check_figure_panels_lines_and_theory():
    fig = plots.coord_check_figure(coord_frame(), theory={"input": 0.0, "hidden": 0.5, "f": 0.0})
    assert isinstance(fig, go.Figure)
    assert [a.text for a in fig.layout.annotations] == ["step 1", "step 3"]
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"
    data = [t for t in fig.data if t.xaxis == "x" and not t.name.startswith("theory")]
    assert [t.name for t in data] == ["l0 (input)", "l1 (hidden)", "f (f)"]
    hidden = data[1]
    assert list(hidden.x) == [64, 128, 256]
    assert list(hidden.y) == pytest.approx([1.05, 1.05 * 2 ** 0.5, 2.1])  # mean over the two seeds
    theory = [t for t in fig.data if t.xaxis == "x" and t.legendgroup == "l1" and t is not hidden][0]
    assert theory.line.dash == "dot" and theory.y[1] / theory.y[0] == pytest.approx(2.0)  # (256/64)^0.5
    assert len(plots.coord_check_figure(coord_frame(), theory=None, output=False).data) == 4


def test_coord_check_figure_from_a_real_coord_check():
    data = ml.datasets.teacher(n_train=128, n_test=32)
    cc = ml.coord_check(lambda w: ml.MLP(16, 4, w, base_width=16), "sgd", widths=(16, 32), steps=1,
                        seeds=(0,), data=data, lr=0.1, device="cpu")
    fig = plots.coord_check_figure(cc.frame, ml.coord.theory_slopes("mup", "sgd"))
    assert len(fig.data) == 8  # 4 lines (3 layers + f) and their theory lines


def test_lr_transfer_marks_the_best_lr_of_each_width_per_panel():
    fig = plots.lr_transfer_figure(sweep_frame())
    assert [a.text for a in fig.layout.annotations] == ["param = mup", "param = sp"]
    stars = {(t.xaxis, t.legendgroup): t.x[0] for t in fig.data if t.marker.symbol == "star"}
    assert stars == {("x", "64"): 0.1, ("x", "1024"): 0.1, ("x2", "64"): 0.1, ("x2", "1024"): 0.01}
    assert fig.layout.xaxis.type == "log"


def test_damping_transfer_and_missing_facet_column():
    fig = plots.damping_transfer_figure(sweep_frame().drop(columns="damping_mode"))
    assert fig.layout.xaxis.title.text == "damping" and len(fig.data) == 4


def test_accuracy_vs_width_mean_and_spread():
    fig = plots.accuracy_vs_width_figure(sweep_frame(), spread="std")
    mup = [t for t in fig.data if t.name == "mup"][0]
    assert list(mup.x) == [64, 1024] and list(mup.y) == pytest.approx([0.925, 0.925])
    assert list(mup.error_y.array) == pytest.approx([0.025, 0.025])
    fig = plots.accuracy_vs_width_figure(sweep_frame(), spread="minmax")
    assert list(fig.data[0].error_y.arrayminus) == pytest.approx([0.025, 0.025])


@pytest.mark.parametrize("call, error, match", [
    (lambda: plots.lr_transfer_figure([1, 2]), TypeError, "df: expected a pandas DataFrame, got list"),
    (lambda: plots.lr_transfer_figure(sweep_frame().drop(columns="lr")), ValueError, "missing lr"),
    (lambda: plots.coord_check_figure(coord_frame().iloc[:0]), ValueError, "frame: expected at least one row"),
    (lambda: plots.accuracy_vs_width_figure(sweep_frame(), spread="iqr"), ValueError, "spread: expected"),
])
def test_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_save_html_works_offline(tmp_path):
    path = plots.save_html(plots.lr_transfer_figure(sweep_frame()), tmp_path / "a" / "lr.html")
    html = open(path).read()
    assert '<script src="http' not in html and len(html) > 1_000_000  # plotly.js is inlined, no CDN
    plots.save_html(plots.lr_transfer_figure(sweep_frame()), tmp_path / "b.html", plotlyjs="directory")
    assert (tmp_path / "plotly.min.js").exists() and 'src="plotly.min.js"' in (tmp_path / "b.html").read_text()
