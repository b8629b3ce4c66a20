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
    assert [t.name for t in fig.data if t.showlegend is not False][-1] == "theory (dotted, one per role)"
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
                                                                         "best learning rate of each curve",
                                                                         "SP: dashed", "μP: solid"]
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
    assert fig.layout.xaxis.title.text == "damping" and len(fig.data) == 7  # 2 lines, 2 stars, 3 legend entries
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


def deep_coord_frame(n_hidden=12):
    """A coordinate check of a deep model: 2 input layers, ``n_hidden`` hidden ones, 1 output."""
    layers = [("tok", "input"), ("pos", "input")] + [(f"h{i}", "hidden") for i in range(n_hidden)] + [("out", "output")]
    return pd.DataFrame([dict(width=w, seed=0, step=1, layer=name, role=role, feature_change=1.0 + 0.01 * k,
                              output_change=2.0)
                         for w in (64, 128, 256) for k, (name, role) in enumerate(layers)])


def test_coord_check_figure_groups_many_layers_by_role():
    """17 lines: one colour per role, a legend of a handful of entries, the hidden layers thin."""
    fig = plots.coord_check_figure(deep_coord_frame(), theory={"input": 0.0, "hidden": 0.0, "output": 0.0, "f": 0.0})
    lines = [t for t in fig.data if t.name != "theory" and t.x[0] is not None]
    assert len(lines) == 16   # 15 layers and f(x)
    colors = {}
    for t in lines:
        colors.setdefault(t.legendgroup, set()).add(t.line.color)
    assert colors == {"input": {plots.ROLE_COLORS["input"]}, "hidden": {plots.ROLE_COLORS["hidden"]},
                      "out": {plots.ROLE_COLORS["output"]}, "f": {plots.ROLE_COLORS["f"]}}
    assert len(set.union(*colors.values())) == 4   # no colour shared between roles
    legend = [t.name for t in fig.data if t.showlegend is not False]
    assert legend == ["input: 2 layers", "hidden: 12 layers", "out (output)", "f(x) (network output)",
                      "theory M^+0 (dotted)"]
    hidden = [t for t in lines if t.legendgroup == "hidden"]
    out = [t for t in lines if t.legendgroup == "out"][0]
    assert all(t.line.width < out.line.width and t.opacity < 1 for t in hidden)   # drawn thinner, lighter
    assert {t.hovertemplate.split("<br>")[0] for t in hidden} == {f"h{i} (hidden)" for i in range(12)}
    theory = [t for t in fig.data if t.name == "theory"]
    assert sorted(t.meta for t in theory) == ["f", "hidden", "input", "out"]   # one per role, not per layer


def test_coord_check_figure_small_model_one_entry_per_layer_coloured_by_role():
    fig = plots.coord_check_figure(coord_frame(), theory=None)
    lines = [t for t in fig.data if t.xaxis == "x"]
    assert [t.line.color for t in lines] == [plots.ROLE_COLORS[r] for r in ("input", "hidden", "f")]
    assert len({t.line.width for t in lines}) == 1 and lines[-1].line.dash == "dash"   # f(x) dashed


def test_param_line_styles_mup_solid_sp_dashed_in_every_figure():
    assert plots.PARAM_DASH == {"mup": "solid", "sp": "dash"}
    fig = plots.accuracy_vs_width_figure(sweep_frame())
    assert {t.name: t.line.dash for t in fig.data} == {"SP": "dash", "μP": "solid"}
    fig = plots.lr_transfer_figure(sweep_frame())   # SP in the first panel, μP in the second
    curves = [t for t in fig.data if t.mode == "lines+markers" and t.x[0] is not None]
    assert {t.line.dash for t in curves if t.xaxis == "x"} == {"dash"}
    assert {t.line.dash for t in curves if t.xaxis == "x2"} == {"solid"}
    legend = {t.name: t.line.dash for t in fig.data if t.showlegend is not False and t.mode == "lines"}
    assert legend == {"SP: dashed": "dash", "μP: solid": "solid"}
    fig = plots.damping_transfer_figure(sweep_frame()[lambda d: d.param == "sp"])
    assert {t.line.dash for t in fig.data if t.mode == "lines+markers" and t.x[0] is not None} == {"dash"}
    # lines by another column: a line of one parametrization keeps its style; a free-form
    # "series" column names the lines by its values
    df = sweep_frame()
    fig = plots.accuracy_vs_width_figure(df.assign(series=df.param.map({"sp": "SP @ base lr", "mup": "μP @ base lr"})),
                                         by="series", facet=None)
    assert {t.name: t.line.dash for t in fig.data} == {"SP @ base lr": "dash", "μP @ base lr": "solid"}
    fig = plots.accuracy_vs_width_figure(df.assign(optimizer=np.where(df.seed == 0, "kfac", "shampoo")),
                                         by="optimizer", facet=None)   # each line mixes SP and μP
    assert {t.name: t.line.dash for t in fig.data} == {"K-FAC": "solid", "Shampoo": "solid"}


def diverged_sweep():
    """sweep_frame with SP at width 1024 diverged at lr 1 (both seeds) and at lr 0.1 (one seed)."""
    df = sweep_frame()
    sp1024 = (df.param == "sp") & (df.width == 1024)
    df["status"] = "ok"
    lost = sp1024 & ((df.lr == 1.0) | ((df.lr == 0.1) & (df.seed == 1)))
    df.loc[lost, "status"] = "diverged"
    df.loc[lost, "train_loss"] = np.nan
    return df


def test_transfer_figure_marks_diverged_runs_at_the_top_edge():
    fig = plots.lr_transfer_figure(diverged_sweep())
    marks = [t for t in fig.data if t.marker.symbol == "x" and t.x[0] is not None]
    assert len(marks) == 1 and marks[0].xaxis == "x" and list(marks[0].x) == [0.1, 1.0]
    assert all("diverged" in h for h in marks[0].hovertext) and "2 of 2 runs" in marks[0].hovertext[1]
    assert marks[0].marker.color == plots.COLORS[1]   # the colour of width 1024
    loss_max = max(max(y for y in t.y if y is not None) for t in fig.data
                   if t.mode == "lines+markers" and t.x[0] is not None)
    assert min(marks[0].y) > loss_max   # above every loss: the top of the panel
    rng = fig.layout.yaxis.range   # None: decade ticks, autorange (which includes the marks)
    assert rng is None or np.log10(marks[0].y[0]) <= rng[1]   # and inside the axis
    legend = [t.name for t in fig.data if t.showlegend is not False]
    assert sum("diverged" in n for n in legend) == 1
    sp1024 = [t for t in fig.data if t.xaxis == "x" and t.name == "width 1024" and t.mode == "lines+markers"][0]
    assert list(sp1024.x) == [0.001, 0.01, 0.1]   # the mean leaves the diverged runs out
    assert not [t for t in plots.lr_transfer_figure(sweep_frame()).data if t.marker.symbol == "x"]


def test_transfer_figure_an_infinite_loss_counts_as_diverged():
    df = sweep_frame()
    df.loc[(df.width == 64) & (df.lr == 1.0), "train_loss"] = np.inf
    fig = plots.lr_transfer_figure(df)
    marks = [t for t in fig.data if t.marker.symbol == "x" and t.x[0] is not None]
    assert sorted(t.xaxis for t in marks) == ["x", "x2"] and all(list(t.x) == [1.0] for t in marks)
    assert all(np.isfinite(y) for t in fig.data if t.y is not None for y in t.y if y is not None)


def test_accuracy_vs_width_marks_a_diverged_width_at_the_bottom():
    rows = [dict(width=w, param=p, status="diverged" if (p == "sp" and w == 1024) else "ok",
                 test_accuracy=np.nan if (p == "sp" and w == 1024) else 0.97 - 0.01 * (p == "sp"))
            for w in (64, 256, 1024) for p in ("sp", "mup")]
    fig = plots.accuracy_vs_width_figure(pd.DataFrame(rows), facet=None)
    sp = [t for t in fig.data if t.name == "SP"][0]
    assert list(sp.x) == [64, 256]
    marks = [t for t in fig.data if t.marker.symbol == "x" and t.x[0] is not None]
    assert len(marks) == 1 and list(marks[0].x) == [1024] and marks[0].y[0] < 0.96
    assert marks[0].marker.color == sp.line.color and "diverged" in marks[0].hovertext[0]
    assert [t.name for t in fig.data if t.showlegend is not False] == ["SP", "μP",
                                                                         "diverged: no value (× at the bottom edge)"]


@pytest.mark.parametrize("values, at_values", [([64], True), ([0.0048, 0.0073], False), ([5.0, 5.0], False),
                                               ([0.31, 0.49], False), ([2e-5, 9e-5], False)])
def test_log_axis_at_least_two_labels_inside_the_range(values, at_values):
    ax = plots.log_axis(values, at_values=at_values)
    lo, hi = ax["range"]
    assert sum(lo <= np.log10(t) <= hi for t in ax["tickvals"]) >= 2, ax


def test_log_axis_short_range_ticks_inside_the_data():
    """Less than a decade with one 1-2-5 step inside: 1, 2, ..., 9 steps, not a stretched axis."""
    assert plots.log_axis([0.0048, 0.0073])["ticktext"] == ["5e-3", "6e-3", "7e-3"]
    assert plots.log_axis([64], at_values=True)["ticktext"] == ["50", "100"]


def test_transfer_figure_short_loss_range_has_two_y_labels():
    df = sweep_frame().assign(train_loss=lambda d: 0.005 + 0.002 * np.abs(np.log10(d.lr / 0.1)) / 2)
    ax = plots.lr_transfer_figure(df).layout.yaxis
    assert ax.type == "log" and len([t for t in ax.tickvals if ax.range[0] <= np.log10(t) <= ax.range[1]]) >= 2


def test_drawn_runs_keeps_finished_and_diverged_runs_only():
    # a run that failed with an error has no number and no × to draw
    df = pd.DataFrame({"status": ["ok", "diverged", "error", "ok"], "lr": [0.1, 10.0, 1.0, 0.3]})
    assert list(plots.drawn_runs(df)["lr"]) == [0.1, 10.0, 0.3]
