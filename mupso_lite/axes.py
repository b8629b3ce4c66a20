"""Readable axes for the figures: log-axis ticks a student can read, and the edge of a panel
where the mark of a diverged run goes (``plots`` uses them; the dashboard's live figures too)."""
from __future__ import annotations

import math

import numpy as np


def tick_text(v: float) -> str:
    """A tick label: whole numbers below 1e5 and 0.01 ... 100 plain, others as 1e-4, 2e+5."""
    p = math.floor(math.log10(v) + 1e-9)
    if float(v).is_integer() and v < 1e5:
        return str(int(v))
    if abs(p) <= 2:
        return f"{v:.3g}"
    return f"{v / 10.0 ** p:.3g}e{p:+d}"


def log_axis(values, at_values: bool = False) -> dict:
    """Properties of a readable log axis for ``values``: ticks at each decade (1e-4, 0.01, 1)
    when two decades or more fall inside the values, else at 1-2-5 steps (1, 2, ..., 9 steps on
    a range too short for two of those); at least two tick labels, always. ``at_values`` puts
    the ticks at the values themselves (widths), if there are 2 to 12 of them."""
    v = np.asarray([x for x in np.ravel(values) if x is not None], float)
    v = v[np.isfinite(v) & (v > 0)]
    props = dict(type="log", exponentformat="e", showexponent="all")
    if v.size == 0:
        return props
    if at_values and 2 <= len(np.unique(v)) <= 12:
        ticks = sorted(np.unique(v))
    else:
        lo, hi = math.log10(v.min()) - 1e-9, math.log10(v.max()) + 1e-9
        if math.floor(hi) - math.ceil(lo) >= 1:
            return {**props, "dtick": 1, "tickmode": "linear"}
        decades = range(math.floor(lo) - 1, math.ceil(hi) + 2)
        steps = [m * 10.0 ** k for k in decades for m in (1, 2, 5)]

        def inside(grid):
            return [t for t in grid if v.min() * (1 - 1e-9) <= t <= v.max() * (1 + 1e-9)]

        ticks = inside(steps)
        if len(ticks) < 2:   # a short range: 1, 2, ..., 9 steps if two of them fall inside it
            fine = inside([m * 10.0 ** k for k in decades for m in range(1, 10)])
            ticks = fine if len(fine) >= 2 else ticks
        if len(ticks) < 2:   # else the 1-2-5 steps on either side: always two labels or more
            ticks = [max(t for t in steps if t < v.min()), *ticks, min(t for t in steps if t > v.max())]
    span = math.log10(max(ticks[-1], v.max())) - math.log10(min(ticks[0], v.min()))
    pad = 0.05 * span if span > 0 else 0.1
    rng = [math.log10(min(ticks[0], v.min())) - pad, math.log10(max(ticks[-1], v.max())) + pad]
    return {**props, "tickmode": "array", "tickvals": [float(t) for t in ticks],
            "ticktext": [tick_text(t) for t in ticks], "range": rng}


def mark_edge(values, top: bool, log: bool) -> float:
    """Where a diverged run's × goes: just beyond ``values`` (above them if ``top``)."""
    v = np.asarray([x for x in np.ravel(values) if x is not None], float)
    v = v[np.isfinite(v) & ((v > 0) if log else True)]
    if v.size == 0:
        return 1.0
    if log:
        lo, hi = math.log10(v.min()), math.log10(v.max())
        pad = max(0.1 * (hi - lo), 0.05)
        return 10.0 ** (hi + pad if top else lo - pad)
    lo, hi = float(v.min()), float(v.max())
    pad = max(0.1 * (hi - lo), 0.02 * max(abs(lo), abs(hi)), 1e-3)
    return hi + pad if top else lo - pad


def edge_axis(values, edge, top: bool, log: bool) -> dict:
    """y-axis properties that end just beyond ``edge`` (the top if ``top``), so that the ×s of
    diverged runs sit at the panel's edge, inside it and apart from every value."""
    v = np.asarray([x for x in np.ravel(values) if x is not None] + [edge], float)
    v = v[np.isfinite(v) & ((v > 0) if log else True)]
    props = log_axis(v) if log else {}
    f = np.log10 if log else (lambda a: a)
    lo, hi = float(f(v.min())), float(f(v.max()))
    span = hi - lo if hi > lo else 1.0
    rng = list(props.get("range") or [lo - 0.05 * span, hi + 0.05 * span])
    rng[1 if top else 0] = float(f(edge)) + (0.04 if top else -0.04) * span
    if "tickvals" in props and sum(rng[0] <= math.log10(t) <= rng[1] for t in props["tickvals"]) < 2:
        return props   # this range would leave one tick label: keep log_axis's
    return {**props, "range": rng}
