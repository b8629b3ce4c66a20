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
    data = [t for t in fig.data if t.xaxis == "x" and t.name != "theory" and t.x[0] is not None]
    assert [t.name for t in data] == ["l0 (input)", "l1 (hidden)", "f(x) (network output)"]
    hidden = data[1]
    assert list(hidden.x) == [64, 128, 256]
    assert list(hidden.y) == pytest.approx([1.05, 1.05 * 2 ** 0.5, 2.1])  # mean over the two seeds
    theory = [t for t in fig.data if t.xaxis == "x" and t.name == "theory" and t.meta == "l1"][0]
    assert theory.line.dash == "dot" and theory.y[1] / theory.y[0] == pytest.approx(2.0)  # (256/64)^0.5
    assert [t.name for t in fig.data if t.showlegend is not False][-1] == "theory (dotted, one per layer)"
    assert len(plots.coord_check_figure(coord_frame(), theory=None, output=False).data) == 4


def test_coord_check_figure_ticks_at_the_widths_and_legend_outside():
    fig = plots.coord_check_figure(coord_frame(), theory=0.0)
    assert list(fig.layout.xaxis.tickvals) == [64, 128, 256] and list(fig.layout.xaxis.ticktext) == ["64", "128", "256"]
    assert fig.layout.xaxis.title.text == "width M" and fig.layout.yaxis.title.text == "rms feature change"
    assert fig.layout.legend.x >= 1 and fig.layout.legend.xanchor == "left"
    assert fig.layout.legend.title.text == "layer (role)"
    assert [t.name for t in fig.data if t.showlegend is not False][-1] == "theory M^+0 (dotted)"


def test_coord_check_figure_from_a_real_coord_check():
    data = ml.datasets.teacher(n_train=128, n_test=32)
    cc = ml.coord_check(lambda w: ml.MLP(16, 4, w, base_width=16), "sgd", widths=(16, 32), steps=1,
                        seeds=(0,), data=data, lr=0.1, device="cpu")
    fig = plots.coord_check_figure(cc.frame, ml.coord.theory_slopes("mup", "sgd"))
    names = [t.name for t in fig.data if t.name != "theory"]
    assert names == ["layers.0 (input)", "layers.1 (hidden)", "layers.2 (output)", "f(x) (network output)",
                     "theory M^+0 (dotted)"]
    assert len(fig.data) == 9  # 4 lines (3 layers + f), their theory lines, the theory legend entry


def test_lr_transfer_marks_the_best_lr_of_each_width_per_panel():
    fig = plots.lr_transfer_figure(sweep_frame())
    assert [a.text for a in fig.layout.annotations] == ["K-FAC, SP", "K-FAC, μP"]
    stars = {(t.xaxis, t.legendgroup): t.x[0] for t in fig.data if t.marker.symbol == "star" and t.x[0]}
    assert stars == {("x", "64"): 0.1, ("x", "1024"): 0.01, ("x2", "64"): 0.1, ("x2", "1024"): 0.1}
    assert fig.layout.xaxis.type == "log"


def test_lr_transfer_axes_titles_and_log_loss():
    fig = plots.lr_transfer_figure(sweep_frame())
    assert fig.layout.title.text == "Learning-rate transfer: K-FAC"
    assert fig.layout.xaxis.title.text == "learning rate" and fig.layout.xaxis2.title.text == "learning rate"
    assert fig.layout.yaxis.title.text == "training loss (whole training set)"
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis2.type == "log"  # a blow-up does not squash the optimum
    assert fig.layout.xaxis.dtick == 1 and fig.layout.xaxis.exponentformat == "e"  # decades only, no "100μ"
    assert fig.layout.legend.title.text == "width M" and fig.layout.legend.x >= 1
    assert [t.name for t in fig.data if t.showlegend is not False] == ["width 64", "width 1024",
                                                                         "best learning rate of each curve"]
    assert plots.transfer_figure(sweep_frame(), metric="test_accuracy").layout.yaxis.type != "log"


def test_lr_transfer_one_row_of_panels_per_optimizer():
    df = pd.concat([sweep_frame(), sweep_frame().assign(optimizer="shampoo", train_loss=lambda d: d.train_loss * 2)])
    fig = plots.lr_transfer_figure(df)
    assert [a.text for a in fig.layout.annotations] == ["K-FAC, SP", "K-FAC, μP", "Shampoo, SP", "Shampoo, μP"]
    assert fig.layout.title.text == "Learning-rate transfer: K-FAC, Shampoo"
    shampoo_sp = [t for t in fig.data if t.xaxis == "x3" and t.name == "width 64"][0]
    kfac_sp = [t for t in fig.data if t.xaxis == "x" and t.name == "width 64"][0]
    assert list(shampoo_sp.y) == pytest.approx([2 * y for y in kfac_sp.y])  # not averaged over optimizers
    assert fig.layout.xaxis.title.text is None and fig.layout.xaxis3.title.text == "learning rate"  # bottom row only
    assert sum(t.name == "width 64" and t.showlegend is not False for t in fig.data) == 1


def test_damping_transfer_and_missing_facet_column():
    fig = plots.damping_transfer_figure(sweep_frame().drop(columns="damping_mode"))
    assert fig.layout.xaxis.title.text == "damping" and len(fig.data) == 5  # 2 lines, 2 stars, the star's entry
    assert [a.text for a in fig.layout.annotations] == ["K-FAC"]


def test_damping_axis_reads_in_decades_and_leaves_out_first_order_rows():
    df = sweep_frame().assign(damping=lambda d: d.lr / 10)  # 1e-4 ... 0.1
    sgd = df.assign(optimizer="sgd", damping=None)
    fig = plots.damping_transfer_figure(pd.concat([df, sgd]))
    ax = fig.layout.xaxis
    assert ax.type == "log" and ax.dtick == 1 and ax.exponentformat == "e" and ax.exponentformat != "B"
    assert [a.text for a in fig.layout.annotations] == ["K-FAC, damping mode trace"]
    assert fig.layout.title.text == "Damping transfer: K-FAC"


@pytest.mark.parametrize("values, text", [
    ([0.3, 2.3], ["0.5", "1", "2"]),                    # less than two decades: 1-2-5 steps
    ([0.03, 0.3], ["0.05", "0.1", "0.2"]),
    ([1e-5, 3e-5], ["1e-5", "2e-5"]),
    ([0.95, 1.05], ["0.5", "1", "2"]),                  # at least two ticks
])
def test_log_axis_ticks_on_a_short_range(values, text):
    ax = plots.log_axis(values)
    assert ax["type"] == "log" and ax["tickmode"] == "array" and ax["ticktext"] == text
    assert ax["range"][0] <= np.log10(min(min(values), ax["tickvals"][0]))
    assert ax["range"][1] >= np.log10(max(max(values), ax["tickvals"][-1]))


def test_log_axis_decades_and_tick_text():
    assert plots.log_axis([1e-4, 1.0])["dtick"] == 1
    assert plots.log_axis([64, 2048], at_values=True)["ticktext"] == ["64", "2048"]
    assert [plots.tick_text(v) for v in (1e-4, 2e-5, 0.01, 0.5, 1024, 2e5)] == \
        ["1e-4", "2e-5", "0.01", "0.5", "1024", "2e+5"]


@pytest.mark.parametrize("make", [
    lambda: plots.coord_check_figure(coord_frame()),
    lambda: plots.lr_transfer_figure(sweep_frame()),
    lambda: plots.damping_transfer_figure(sweep_frame()),
    lambda: plots.accuracy_vs_width_figure(sweep_frame()),
])
def test_every_legend_is_right_of_the_plots(make):
    fig = make()
    assert fig.layout.legend.x >= 1 and fig.layout.legend.xanchor == "left" and fig.layout.legend.orientation == "v"
    assert max(fig.layout[k].domain[1] for k in fig.layout if k.startswith("xaxis")) <= 1  # plots end at 1


def test_accuracy_vs_width_mean_and_spread():
    fig = plots.accuracy_vs_width_figure(sweep_frame(), spread="std")
    mup = [t for t in fig.data if t.name == "μP"][0]
    assert list(mup.x) == [64, 1024] and list(mup.y) == pytest.approx([0.925, 0.925])
    assert list(mup.error_y.array) == pytest.approx([0.025, 0.025])
    assert [a.text for a in fig.layout.annotations] == ["K-FAC"] and fig.layout.yaxis.title.text == "test accuracy"
    assert list(fig.layout.xaxis.ticktext) == ["64", "1024"]
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


def test_save_html_inline_by_default_works_offline(tmp_path):
    path = plots.save_html(plots.lr_transfer_figure(sweep_frame()), tmp_path / "a" / "lr.html")
    html = open(path).read()
    assert '<script src="http' not in html and len(html) > 3_000_000  # plotly.js is inlined, no CDN
    assert not (tmp_path / "a" / "plotly.min.js").exists()


def test_save_html_directory_shares_one_plotly_js(tmp_path):
    for name in ("a.html", "b.html"):
        plots.save_html(plots.lr_transfer_figure(sweep_frame()), tmp_path / name, include_plotlyjs="directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.html", "b.html", "plotly.min.js"]
    assert (tmp_path / "plotly.min.js").stat().st_size > 3_000_000
    for name in ("a.html", "b.html"):
        html = (tmp_path / name).read_text()
        assert 'src="plotly.min.js"' in html and len(html) < 200_000
    plots.save_html(plots.lr_transfer_figure(sweep_frame()), tmp_path / "c.html", plotlyjs="directory")  # former name
    assert 'src="plotly.min.js"' in (tmp_path / "c.html").read_text()


def test_save_html_cdn_is_small_and_loads_plotly_from_the_cdn(tmp_path):
    path = plots.save_html(plots.lr_transfer_figure(sweep_frame()), tmp_path / "lr.html", "cdn")
    html = open(path).read()
    assert 'src="https://cdn.plot.ly/' in html and len(html) < 200_000


def test_save_html_refuses_an_unknown_choice(tmp_path):
    with pytest.raises(ValueError, match="include_plotlyjs: expected one of inline, cdn, directory, got 'web'"):
        plots.save_html(go.Figure(), tmp_path / "x.html", "web")
    assert not (tmp_path / "x.html").exists()


def test_table_formats_numbers_for_reading():
    """plots.table: 3 significant digits, no numpy reprs, NaN as a dash, the index hidden."""
    import re

    import numpy as np
    import pandas as pd

    df = pd.DataFrame(dict(width=[64, 1024], lr=[np.float64(0.1), 3.16e-4], loss=[0.0123456, np.nan],
                           damping=[1e-6, 1.0], status=["ok", "diverged"], mixed=[np.float64(0.316), "x"]))
    html = ml.plots.table(df).to_html()
    cells = re.findall(r">([^<>]+)</td>", html)
    assert cells == ["64", "0.1", "0.0123", "1.00e-06", "ok", "0.316",
                     "1024", "3.16e-04", "–", "1", "diverged", "x"]
    assert "np.float64" not in html and "e-06</td>" in html
    assert re.findall(r'class="row_heading', html) == []   # index hidden
    assert ml.plots.number_text(None) == "–" and ml.plots.number_text(True) == "True"
    with pytest.raises(TypeError, match="df: expected a pandas DataFrame"):
        ml.plots.table([1, 2])
