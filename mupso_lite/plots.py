"""Plotly figures for coordinate checks and sweeps; the dashboard, notebooks and reports share them.

Every function takes a pandas DataFrame and returns a ``plotly.graph_objects.Figure``:

    coord_check_figure(cc.frame)            feature change vs width, log-log, per step
    lr_transfer_figure(load_results(p))     final loss vs lr, one curve per width, optimum marked
    damping_transfer_figure(df)             the same against damping
    accuracy_vs_width_figure(df)            test accuracy vs width, SP and muP, mean +- spread
    save_html(fig, "fig.html")              a standalone file (plotly.js inlined: works offline)

Missing values (diverged runs) are left out of means; a width whose runs all diverged shows
no point.
"""
from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

COLORS = qualitative.Plotly
DASHES = ("solid", "dash", "dot", "dashdot")


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


def coord_check_figure(frame, theory: dict | float | None = 0.0, steps=None, title: str = "",
                       output: bool = True) -> go.Figure:
    """Feature change against width (log-log): one panel per step, one line per layer
    (mean over seeds, error bars min..max), plus the output change "f" if ``output``.

    ``theory``: the predicted width exponent, a number for every layer or {role: slope}
    (``ml.coord.theory_slopes``); drawn dotted through each layer's value at the smallest
    width. None draws none. ``steps``: which steps get a panel (default: all in ``frame``).
    """
    _check_frame(frame, ["width", "seed", "step", "layer", "role", "feature_change"], "frame")
    steps = sorted(frame["step"].unique()) if steps is None else list(steps)
    long = frame[["width", "seed", "step", "layer", "role", "feature_change"]]
    if output and "output_change" in frame.columns:
        f = frame.drop_duplicates(["width", "seed", "step"])[["width", "seed", "step", "output_change"]]
        long = _concat(long, f.rename(columns={"output_change": "feature_change"}).assign(layer="f", role="f"))
    fig = make_subplots(1, len(steps), subplot_titles=[f"step {s}" for s in steps], shared_yaxes=True)
    layers = list(dict.fromkeys(long["layer"]))
    for col, step in enumerate(steps, start=1):
        sub = long[long["step"] == step]
        for i, layer in enumerate(layers):
            g = sub[sub["layer"] == layer].groupby("width")["feature_change"]
            m, lo, hi = g.mean(), g.min(), g.max()
            if m.empty:
                continue
            color, role = COLORS[i % len(COLORS)], sub[sub["layer"] == layer]["role"].iloc[0]
            fig.add_trace(go.Scatter(
                x=m.index, y=m.values, mode="lines+markers", name=f"{layer} ({role})", legendgroup=layer,
                showlegend=col == 1, line=dict(color=color),
                error_y=dict(type="data", symmetric=False, array=hi - m, arrayminus=m - lo)), 1, col)
            slope = theory.get(role) if isinstance(theory, dict) else theory
            if slope is not None and math.isfinite(slope) and m.iloc[0] > 0:
                w = np.array([m.index.min(), m.index.max()], float)
                fig.add_trace(go.Scatter(
                    x=w, y=m.iloc[0] * (w / w[0]) ** slope, mode="lines", legendgroup=layer,
                    name=f"theory M^{slope:+g}", showlegend=col == 1 and i == 0,
                    line=dict(color=color, dash="dot", width=1), hoverinfo="skip"), 1, col)
    fig.update_xaxes(type="log", title_text="width M")
    fig.update_yaxes(type="log")
    fig.update_yaxes(title_text="rms feature change", col=1)
    fig.update_layout(title=title or "Coordinate check: feature change vs width (dotted: theory)",
                      template="plotly_white")
    return fig


def _concat(a, b):
    import pandas as pd
    return pd.concat([a, b], ignore_index=True)


def transfer_figure(df, x: str = "lr", metric: str = "train_loss", by: str = "width",
                    facet: str | None = "param", title: str = "") -> go.Figure:
    """``metric`` (mean over seeds) against ``x`` (log axis), one curve per value of ``by``,
    one panel per value of ``facet``; a star marks each curve's best (lowest) point."""
    cols = [x, metric, by] + ([facet] if facet else [])
    _check_frame(df, cols)
    facets = sorted(df[facet].dropna().unique()) if facet else [None]
    fig = make_subplots(1, len(facets), subplot_titles=[f"{facet} = {v}" for v in facets] if facet else None,
                        shared_yaxes=True)
    groups = sorted(df[by].dropna().unique())
    for col, fv in enumerate(facets, start=1):
        sub = df if fv is None else df[df[facet] == fv]
        for i, gv in enumerate(groups):
            m = sub[sub[by] == gv].groupby(x)[metric].mean().dropna()
            if m.empty:
                continue
            color = COLORS[i % len(COLORS)]
            fig.add_trace(go.Scatter(x=m.index, y=m.values, mode="lines+markers", name=f"{by} {gv}",
                                     legendgroup=str(gv), showlegend=col == 1, line=dict(color=color)), 1, col)
            best = m.idxmin()
            fig.add_trace(go.Scatter(x=[best], y=[m[best]], mode="markers", legendgroup=str(gv),
                                     showlegend=False, hovertext=f"best {x} = {best:g}",
                                     marker=dict(symbol="star", size=14, color=color,
                                                 line=dict(color="black", width=1))), 1, col)
    fig.update_xaxes(type="log", title_text=x)
    fig.update_yaxes(title_text=metric, col=1)
    fig.update_layout(title=title or f"{metric} vs {x} (star: best {x} per {by})", template="plotly_white")
    return fig


def lr_transfer_figure(df, metric: str = "train_loss", facet: str | None = "param", title: str = "") -> go.Figure:
    """Final training loss vs learning rate, one curve per width, optimum starred. Under muP
    the stars line up across widths; under SP they move (``df``: ``ml.load_results``)."""
    return transfer_figure(df, "lr", metric, "width", facet, title or "Learning-rate transfer")


def damping_transfer_figure(df, metric: str = "train_loss", facet: str | None = "damping_mode",
                            title: str = "") -> go.Figure:
    """Final training loss vs damping, one curve per width, one panel per damping mode."""
    if facet and facet not in df.columns:
        facet = None
    return transfer_figure(df, "damping", metric, "width", facet, title or "Damping transfer")


def accuracy_vs_width_figure(df, metric: str = "test_accuracy", by: str = "param",
                             facet: str | None = "optimizer", spread: str = "std", title: str = "") -> go.Figure:
    """``metric`` against width (log axis): one line per ``by`` (SP, muP), mean over seeds with
    error bars of ``spread`` ("std" or "minmax"); one panel per ``facet`` (optimizer).
    Pass rows of one lr (or the best lr per width) — everything in ``df`` is averaged."""
    if spread not in ("std", "minmax"):
        raise ValueError(f"spread: expected 'std' or 'minmax', got {spread!r}")
    _check_frame(df, ["width", metric, by] + ([facet] if facet else []))
    facets = sorted(df[facet].dropna().unique()) if facet else [None]
    fig = make_subplots(1, len(facets), subplot_titles=[str(v) for v in facets] if facet else None,
                        shared_yaxes=True)
    for col, fv in enumerate(facets, start=1):
        sub = df if fv is None else df[df[facet] == fv]
        for i, gv in enumerate(sorted(df[by].dropna().unique())):
            g = sub[sub[by] == gv].groupby("width")[metric]
            m = g.mean().dropna()
            if m.empty:
                continue
            if spread == "std":
                s = g.std(ddof=0).reindex(m.index).fillna(0.0)
                err = dict(type="data", array=s.values)
            else:
                err = dict(type="data", symmetric=False, array=(g.max() - g.mean()).reindex(m.index).values,
                           arrayminus=(g.mean() - g.min()).reindex(m.index).values)
            fig.add_trace(go.Scatter(x=m.index, y=m.values, mode="lines+markers", name=str(gv),
                                     legendgroup=str(gv), showlegend=col == 1, error_y=err,
                                     line=dict(color=COLORS[i % len(COLORS)], dash=DASHES[i % len(DASHES)])),
                          1, col)
    fig.update_xaxes(type="log", title_text="width M")
    fig.update_yaxes(title_text=metric, col=1)
    fig.update_layout(title=title or f"{metric} vs width (mean ± {spread} over seeds)", template="plotly_white")
    return fig


def save_html(fig: go.Figure, path, plotlyjs=True) -> str:
    """Write ``fig`` to a standalone HTML file that opens offline: plotly.js inlined
    (``plotlyjs=True``, ~4.8 MB a file) or ``"directory"`` (one shared plotly.min.js beside it)."""
    from pathlib import Path
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(path), include_plotlyjs=plotlyjs, full_html=True)
    return str(path)
