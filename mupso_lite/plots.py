"""Plotly figures for coordinate checks and sweeps; the dashboard, notebooks and reports share them.

Every function takes a pandas DataFrame and returns a ``plotly.graph_objects.Figure``:

    coord_check_figure(cc.frame)            feature change vs width, log-log, per step
    lr_transfer_figure(load_results(p))     final loss vs lr, one curve per width, optimum marked
    damping_transfer_figure(df)             the same against damping
    accuracy_vs_width_figure(df)            test accuracy vs width, SP and muP, mean +- spread
    save_html(fig, "fig.html")              a standalone file (plotly.js inlined: works offline)
    table(df)                               a DataFrame as a readable table (3 significant digits)
    drawn_runs(df)                          a sweep's runs that have a number (ok) or an × (diverged)

Axes carry plain names ("learning rate", not ``lr``), panels the optimizer's name (K-FAC,
Shampoo, Muon, SOAP, ...), log axes readable ticks (decades as 1e-4, 0.01, 1; at least two
labels on any axis), and legends sit to the right of the plotting area. Every figure with a
``param`` column draws μP solid and SP dashed (``PARAM_DASH``). A diverged run (status
"diverged", or an infinite metric) is left out of the means and marked instead: an × at the
panel's edge (the top for a loss, the bottom for an accuracy) in the curve's colour, with the
hover text "diverged" and one "diverged" legend entry. A coordinate check colours its lines by
role (input, hidden, output, f(x)); a role with several layers draws them thin, under one legend entry.
"""
from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from .axes import edge_axis, log_axis, mark_edge, tick_text  # noqa: F401 (tick_text: plots.tick_text)
from .tables import number_text, table  # noqa: F401 (ml.plots.table)

COLORS = qualitative.Plotly
PARAM_DASH = {"mup": "solid", "sp": "dash"}   # the line style of a parametrization, in every figure
ROLE_COLORS = {"input": COLORS[0], "hidden": COLORS[2], "output": COLORS[1], "f": "#444444"}
DIVERGED = dict(symbol="x", size=11, line=dict(width=1))   # the mark of a diverged run
OPTIMIZER_NAMES = {"sgd": "SGD", "adam": "Adam", "kfac": "K-FAC", "shampoo": "Shampoo", "foof": "FOOF",
                   "muon": "Muon", "soap": "SOAP"}
PARAM_NAMES = {"sp": "SP", "mup": "μP"}
LABELS = {"lr": "learning rate", "damping": "damping", "width": "width M",
          "train_loss": "training loss (whole training set)", "best_loss": "lowest training-batch loss",
          "final_loss": "training-batch loss at the last step", "test_loss": "test loss",
          "test_accuracy": "test accuracy", "train_accuracy": "training accuracy",
          "final_accuracy": "training-batch accuracy at the last step", "param": "parametrization",
          "damping_mode": "damping mode", "optimizer": "optimizer", "dataset": "dataset", "seed": "seed",
          "feature_change": "rms feature change"}
LEGEND = dict(orientation="v", x=1.02, xanchor="left", y=1.0, yanchor="top")  # right of the plots
PLOTLYJS = ("inline", "cdn", "directory")


def label(column: str) -> str:
    """The axis title of a column: "learning rate" for ``lr``, "test loss" for ``test_loss``."""
    return LABELS.get(column, str(column).replace("_", " "))


def value_name(column: str, value) -> str:
    """How a value reads in a title or legend: "K-FAC", "μP", "damping mode trace", "width 64"."""
    if column == "optimizer":
        return OPTIMIZER_NAMES.get(value, str(value))
    if column == "param":
        return PARAM_NAMES.get(value, str(value))
    if column == "series":   # a free-form label column: its values are the names
        return str(value)
    name = "width" if column == "width" else label(column)
    return f"{name} {value:g}" if isinstance(value, (int, float, np.number)) else f"{name} {value}"


def param_dash(value) -> str:
    """The line style of parametrization ``value``: "solid" for μP, "dash" for SP (``PARAM_DASH``)."""
    return PARAM_DASH.get(value, "solid")


def drawn_runs(df):
    """The runs of a sweep that a figure draws: the finished ones, and the diverged ones (an × at
    the panel's edge); a run that failed with an error has no number to show."""
    return df[df["status"].isin(["ok", "diverged"])]


def _check_frame(df, columns, name="df"):
    import pandas as pd
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{name}: expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{name}: expected columns {', '.join(columns)}; missing {', '.join(missing)} "
                         f"(have {', '.join(map(str, df.columns))})")
    if df.empty:
        raise ValueError(f"{name}: expected at least one row, got an empty DataFrame")


def _legend(title: str) -> dict:
    return {**LEGEND, "title_text": title}


def coord_check_figure(frame, theory: dict | float | None = 0.0, steps=None, title: str = "",
                       output: bool = True) -> go.Figure:
    """Feature change against width (log-log): one panel per step, one line per layer (mean over
    seeds, error bars min..max), plus the network output's change "f(x) (network output)" if
    ``output``. Lines are coloured by role (``ROLE_COLORS``: input, hidden, output, f(x)). A role
    with one layer is named "layers.0 (input)"; a role with several (a deep model's hidden
    layers) draws them thin and light in its colour, under one legend entry "hidden: 12 layers"
    (the hover text names each layer), so the legend stays a handful of entries.

    ``theory``: the predicted width exponent, a number for every layer or {role: slope}
    (``ml.coord.theory_slopes``); drawn dotted through each role's value at the smallest width
    (the geometric mean of its layers' values). None draws none. ``steps``: which steps get a
    panel (default: all in ``frame``).
    """
    _check_frame(frame, ["width", "seed", "step", "layer", "role", "feature_change"], "frame")
    steps = sorted(frame["step"].unique()) if steps is None else list(steps)
    long = frame[["width", "seed", "step", "layer", "role", "feature_change"]]
    if output and "output_change" in frame.columns:
        f = frame.drop_duplicates(["width", "seed", "step"])[["width", "seed", "step", "output_change"]]
        long = _concat(long, f.rename(columns={"output_change": "feature_change"}).assign(layer="f", role="f"))
    fig = make_subplots(1, len(steps), subplot_titles=[f"step {s}" for s in steps], shared_yaxes=True)
    role_of = dict(zip(long["layer"], long["role"]))          # the first role seen of each layer
    layers = list(dict.fromkeys(long["layer"]))
    members = {}
    for layer in layers:
        members.setdefault(role_of[layer], []).append(layer)
    others = iter(COLORS[3:] * (1 + len(members) // max(1, len(COLORS) - 3)))
    colors = {role: ROLE_COLORS.get(role) or next(others) for role in members}
    slopes, ys = {}, [long["feature_change"].to_numpy(float)]
    for col, step in enumerate(steps, start=1):
        sub = long[long["step"] == step]
        for role, names in members.items():
            grouped, color, firsts = len(names) > 1, colors[role], []
            for layer in names:
                g = sub[sub["layer"] == layer].groupby("width")["feature_change"]
                m, lo, hi = g.mean(), g.min(), g.max()
                if m.empty:
                    continue
                is_f = layer == "f" and role == "f"
                name = ("f(x) (network output)" if is_f else f"{role}: {len(names)} layers" if grouped
                        else f"{layer} ({role})")
                where = "f(x) (network output)" if is_f else f"{layer} ({role})"
                fig.add_trace(go.Scatter(  # f(x) dashed: it often lies on the output layer's line
                    x=m.index, y=m.values, mode="lines+markers", name=name, meta=layer,
                    legendgroup=role if grouped else layer, showlegend=col == 1 and layer == names[0],
                    opacity=0.55 if grouped else 1.0, marker=dict(size=4 if grouped else 6),
                    line=dict(color=color, width=1 if grouped else 2, dash="dash" if is_f else "solid"),
                    hovertemplate=f"{where}<br>width %{{x}}<br>%{{y:.3g}}<extra></extra>",
                    error_y=dict(type="data", symmetric=False, array=hi - m, arrayminus=m - lo,
                                 thickness=0.8 if grouped else 1.5)), 1, col)
                if m.iloc[0] > 0:
                    firsts.append((m.index.min(), m.index.max(), m.iloc[0]))
            slope = theory.get(role) if isinstance(theory, dict) else theory
            if slope is not None and math.isfinite(slope) and firsts:
                w = np.array([min(a for a, _, _ in firsts), max(b for _, b, _ in firsts)], float)
                y0 = float(np.exp(np.mean([math.log(y) for _, _, y in firsts])))
                key = role if grouped else names[0]
                slopes[key], y = slope, y0 * (w / w[0]) ** slope
                ys.append(y)
                what = f"{role} layers" if grouped else ("f(x)" if role == "f" else f"{names[0]} ({role})")
                fig.add_trace(go.Scatter(
                    x=w, y=y, mode="lines", legendgroup="theory", meta=key,
                    name="theory", showlegend=False, hovertext=f"theory for {what}: M^{slope:+g}",
                    hoverinfo="text", line=dict(color=color, dash="dot", width=1.5 if grouped else 1)), 1, col)
    if slopes:
        one = set(slopes.values())
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", legendgroup="theory", line=dict(
            color="gray", dash="dot", width=1), name=f"theory M^{one.pop():+g} (dotted)" if len(one) == 1
            else "theory (dotted, one per role)"), 1, 1)
    fig.update_xaxes(**log_axis(long["width"], at_values=True), title_text="width M")
    fig.update_yaxes(**log_axis(np.concatenate(ys)))
    fig.update_yaxes(title_text="rms feature change", col=1)
    fig.update_layout(title=title or "Coordinate check: feature change vs width (dotted: theory)",
                      template="plotly_white", legend=_legend("layer (role)"))
    return fig


def _concat(a, b):
    import pandas as pd
    return pd.concat([a, b], ignore_index=True)


def _ordered(values, column):
    known = {"optimizer": list(OPTIMIZER_NAMES), "param": list(PARAM_NAMES)}.get(column, [])
    return sorted(values, key=lambda v: (known.index(v) if v in known else len(known), str(v)))


def _diverged(rows, metric):
    """A boolean array: which of ``rows`` diverged (status "diverged", or an infinite ``metric``)."""
    values = rows[metric].astype(float)
    out = np.isinf(values.to_numpy())
    if "status" in rows.columns:
        out |= (rows["status"] == "diverged").to_numpy()
    return out


def _finite_rows(rows, metric):
    """``rows`` without the diverged ones, infinite values of ``metric`` as NaN (left out of means)."""
    rows = rows[~_diverged(rows, metric)]
    return rows.assign(**{metric: rows[metric].astype(float).replace([np.inf, -np.inf], np.nan)})


def _diverged_at(rows, x, metric):
    """{x value: (diverged runs, runs)} for the x values of ``rows`` with a diverged run."""
    if rows.empty:
        return {}
    d = rows.assign(_div=_diverged(rows, metric)).groupby(x)["_div"].agg(["sum", "count"])
    return {k: (int(r["sum"]), int(r["count"])) for k, r in d.iterrows() if r["sum"] > 0}


def _diverged_marks(fig, marks, edge, top: bool):
    """Draw each (row, col, xs, color, hover) of ``marks`` as ×s at height ``edge``, and one
    legend entry "diverged"."""
    for row, col, xs, color, hover in marks:
        fig.add_trace(go.Scatter(x=xs, y=[edge] * len(xs), mode="markers", name="diverged",
                                 legendgroup="diverged", showlegend=False, hovertext=hover, hoverinfo="text",
                                 marker={**DIVERGED, "color": color}), row, col)
    if marks:
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", legendgroup="diverged",
                                 name=f"diverged: no value (× at the {'top' if top else 'bottom'} edge)",
                                 marker={**DIVERGED, "color": "gray"}), 1, 1)


def _style_legend(fig, params):
    """Legend entries for the line styles of ``params`` ("μP: solid", "SP: dashed")."""
    for pv in _ordered(params, "param"):
        style = {"solid": "solid", "dash": "dashed"}.get(param_dash(pv), param_dash(pv))
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=f"{value_name('param', pv)}: {style}",
                                 legendgroup=f"style {pv}", line=dict(color="gray", dash=param_dash(pv))), 1, 1)


def _curve_dash(rows, by, value):
    """The line style of a curve: by its parametrization when it has one (``PARAM_DASH``)."""
    if by == "param":
        return param_dash(value)
    if "param" in rows.columns:
        params = rows["param"].dropna().unique()
        if len(params) == 1:
            return param_dash(params[0])
    return "solid"


def transfer_figure(df, x: str = "lr", metric: str = "train_loss", by: str = "width",
                    facet: str | None = "param", title: str = "", log_y: bool | None = None) -> go.Figure:
    """``metric`` (mean over seeds) against ``x`` (log axis), one curve per value of ``by``,
    one panel per value of ``facet`` and one row of panels per optimizer (named in each panel's
    title); a star marks each curve's best (lowest) point. ``log_y`` (default: when ``metric``
    is a loss) puts ``metric`` on a log axis, so a blow-up does not squash the optimum.
    μP curves are solid, SP curves dashed; a value of ``x`` where a curve's runs diverged gets an
    × at the panel's top edge (for a loss; the bottom for another metric), hover text "diverged"."""
    cols = [x, metric, by] + ([facet] if facet else [])
    _check_frame(df, cols)
    df = df[df[x].notna()]
    if df.empty:
        raise ValueError(f"df: expected rows with a value of {x}, got none (all {x} missing)")
    split = "optimizer" if "optimizer" in df.columns and "optimizer" not in (x, by, facet) else None
    rows = _ordered(df[split].dropna().unique(), split) if split else [None]
    facets = _ordered(df[facet].dropna().unique(), facet) if facet else [None]
    titles = [", ".join(value_name(c, v) for c, v in ((split, r), (facet, fv)) if c)
              for r in rows for fv in facets]
    fig = make_subplots(len(rows), len(facets), subplot_titles=titles if any(titles) else None,
                        shared_yaxes=True, vertical_spacing=0.3 / len(rows) if len(rows) > 1 else 0.2)
    groups, means, marks, dashes = sorted(df[by].dropna().unique()), [], [], set()
    for row, rv in enumerate(rows, start=1):
        for col, fv in enumerate(facets, start=1):
            sub = df if rv is None else df[df[split] == rv]
            sub = sub if fv is None else sub[sub[facet] == fv]
            for i, gv in enumerate(groups):
                curve = sub[sub[by] == gv]
                color = COLORS[i % len(COLORS)]
                lost = _diverged_at(curve, x, metric)
                if lost:
                    marks.append((row, col, list(lost), color,
                                  [f"diverged: {value_name(by, gv)}, {label(x)} {xv:g} ({k} of {n} runs)"
                                   for xv, (k, n) in lost.items()]))
                m = _finite_rows(curve, metric).groupby(x)[metric].mean().dropna()
                if m.empty:
                    continue
                means.append(m.values)
                dash = _curve_dash(curve, by, gv)
                dashes.add(dash)
                fig.add_trace(go.Scatter(x=m.index, y=m.values, mode="lines+markers", name=value_name(by, gv),
                                         legendgroup=str(gv), showlegend=False, line=dict(color=color, dash=dash)),
                              row, col)
                best = m.idxmin()
                fig.add_trace(go.Scatter(x=[best], y=[m[best]], mode="markers", legendgroup=str(gv),
                                         showlegend=False, hovertext=f"best {label(x)} = {best:g}",
                                         marker=dict(symbol="star", size=14, color=color,
                                                     line=dict(color="black", width=1))), row, col)
    for i, gv in enumerate(groups):   # the legend: one solid line per curve colour
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines+markers", name=value_name(by, gv),
                                 legendgroup=str(gv), line=dict(color=COLORS[i % len(COLORS)])), 1, 1)
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=f"best {label(x)} of each curve",
                             marker=dict(symbol="star", size=12, color="white", line=dict(color="black", width=1))),
                  1, 1)
    log = ("loss" in metric) if log_y is None else log_y
    top = "loss" in metric
    at = mark_edge(np.concatenate(means) if means else [], top, log)
    _diverged_marks(fig, marks, at, top)
    if by != "param" and "param" in df.columns and len(dashes) > 1:
        _style_legend(fig, df["param"].dropna().unique())
    fig.update_xaxes(**log_axis(df[x]))
    fig.update_xaxes(title_text=label(x), row=len(rows))
    if marks:
        fig.update_yaxes(**edge_axis(np.concatenate(means) if means else [], at, top, log))
    elif log:
        fig.update_yaxes(**log_axis(np.concatenate(means) if means else []))
    fig.update_yaxes(title_text=label(metric), col=1)
    fig.update_layout(title=title or _titled(f"{label(metric).capitalize()} vs {label(x)}", df, x),
                      template="plotly_white", legend=_legend(label(by)), height=max(450, 330 * len(rows)))
    return fig


def lr_transfer_figure(df, metric: str = "train_loss", facet: str | None = "param", title: str = "") -> go.Figure:
    """Final training loss vs learning rate (log-log), one curve per width, optimum starred, a
    row of panels per optimizer. Under muP the stars line up across widths; under SP they move
    (``df``: ``ml.load_results``)."""
    return transfer_figure(df, "lr", metric, "width", facet, title or _titled("Learning-rate transfer", df))


def damping_transfer_figure(df, metric: str = "train_loss", facet: str | None = "damping_mode",
                            title: str = "") -> go.Figure:
    """Final training loss vs damping (log-log), one curve per width, one panel per damping mode,
    a row of panels per optimizer; rows without a damping (SGD, Adam, Muon) are left out."""
    if facet and facet not in getattr(df, "columns", ()):
        facet = None
    title = title or _titled("Damping transfer", df, "damping")
    return transfer_figure(df, "damping", metric, "width", facet, title)


def _titled(title, df, x=None):
    """``title`` followed by the optimizers of ``df`` (those with a value of ``x``)."""
    if "optimizer" not in getattr(df, "columns", ()):
        return title
    rows = df if x is None or x not in df.columns else df[df[x].notna()]
    names = [value_name("optimizer", o) for o in _ordered(rows["optimizer"].dropna().unique(), "optimizer")]
    return f"{title}: {', '.join(names)}" if names else title


def accuracy_vs_width_figure(df, metric: str = "test_accuracy", by: str = "param",
                             facet: str | None = "optimizer", spread: str = "std", title: str = "") -> go.Figure:
    """``metric`` against width (log axis): one line per ``by`` (SP dashed, μP solid, also when
    ``by`` is another column and a line's rows are of one parametrization), mean over
    seeds with error bars of ``spread`` ("std" or "minmax"); one panel per ``facet`` (optimizer).
    Pass rows of one lr (or the best lr per width) — everything in ``df`` is averaged. A width
    where runs diverged (status "diverged", or an infinite metric) gets an × in the line's colour
    at the panel's bottom edge (the top for a loss), hover text "diverged"; its mean leaves them out."""
    if spread not in ("std", "minmax"):
        raise ValueError(f"spread: expected 'std' or 'minmax', got {spread!r}")
    _check_frame(df, ["width", metric, by] + ([facet] if facet else []))
    facets = _ordered(df[facet].dropna().unique(), facet) if facet else [None]
    fig = make_subplots(1, len(facets), subplot_titles=[value_name(facet, v) for v in facets] if facet else None,
                        shared_yaxes=True)
    values, marks = [], []
    for col, fv in enumerate(facets, start=1):
        sub = df if fv is None else df[df[facet] == fv]
        for i, gv in enumerate(_ordered(df[by].dropna().unique(), by)):
            rows, color = sub[sub[by] == gv], COLORS[i % len(COLORS)]
            lost = _diverged_at(rows, "width", metric)
            if lost:
                marks.append((1, col, list(lost), color, [f"diverged: {value_name(by, gv)}, width {w:g} "
                                                          f"({k} of {n} runs)" for w, (k, n) in lost.items()]))
            g = _finite_rows(rows, metric).groupby("width")[metric]
            m = g.mean().dropna()
            if m.empty:
                continue
            if spread == "std":
                s = g.std(ddof=0).reindex(m.index).fillna(0.0)
                err = dict(type="data", array=s.values)
                values += [m.values - s.values, m.values + s.values]
            else:
                err = dict(type="data", symmetric=False, array=(g.max() - g.mean()).reindex(m.index).values,
                           arrayminus=(g.mean() - g.min()).reindex(m.index).values)
                values += [g.min().values, g.max().values]
            dash = _curve_dash(rows, by, gv)
            fig.add_trace(go.Scatter(x=m.index, y=m.values, mode="lines+markers", name=value_name(by, gv),
                                     legendgroup=str(gv), showlegend=col == 1, error_y=err,
                                     line=dict(color=color, dash=dash)), 1, col)
    top = "loss" in metric
    at = mark_edge(np.concatenate(values) if values else [], top, False)
    _diverged_marks(fig, marks, at, top)
    if marks:
        fig.update_yaxes(**edge_axis(np.concatenate(values) if values else [], at, top, False))
    fig.update_xaxes(**log_axis(df["width"], at_values=True), title_text="width M")
    fig.update_yaxes(title_text=label(metric), col=1)
    default = f"{label(metric).capitalize()} vs width (mean ± {spread} over seeds)"
    fig.update_layout(title=title or (default if facet == "optimizer" else _titled(default, df)),
                      template="plotly_white", legend=_legend(label(by)))
    return fig


def save_html(fig: go.Figure, path, include_plotlyjs="inline", *, plotlyjs=None) -> str:
    """Write ``fig`` to an HTML file and return its path. ``include_plotlyjs``: "inline" (the
    default: plotly.js inside the file, ~4.8 MB, opens offline), "directory" (one shared
    plotly.min.js written beside it; opens offline while the two stay together) or "cdn"
    (a small file that loads plotly.js from the internet when opened). ``plotlyjs`` is the
    former name of the argument (True for "inline")."""
    from pathlib import Path
    how = include_plotlyjs if plotlyjs is None else plotlyjs
    how = "inline" if how is True else how
    if how not in PLOTLYJS:
        raise ValueError(f"include_plotlyjs: expected one of {', '.join(PLOTLYJS)}, got {how!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(path), include_plotlyjs=True if how == "inline" else how, full_html=True)
    return str(path)
