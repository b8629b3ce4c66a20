"""coord_check(): width sweeps of feature change and their fitted width exponents.

For each width M, seed s and step t we train a fresh model ``model_fn(M)`` and record the
feature change rms(h_l(t) - h_l(0)) of every layer on a fixed probe batch (see train.py).
The width exponent of layer l at step t is the least-squares slope of

    log(mean over seeds of feature change)  against  log(M).

muP: every slope near 0 (feature learning is width-stable). SP with a fixed lr: positive
slopes (blow-up). K-FAC with unscaled damping: negative slopes (features freeze).

A layer with a bias gets a second row, layer "<name>.bias" with role "<role> bias": the rms
change of the bias itself, rms(b(t) - b(0)), which is the bias's own part of that layer's
feature change. A bias that freezes while its weight moves shows up there. Likewise each
vector-like parameter that ``ml.parametrize`` marked (a LayerNorm or BatchNorm gain or shift that
grows with the width; ``param.mup_role == "vector"``) gets a row of role "vector" under its own
name: rms(p(t) - p(0)).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .checks import check_positive, check_seed
from .roles import layer_roles
from .train import train

# |slope| below this counts as width-stable, in the verdict and in the tests. A layer off by
# M^-0.15 moves 0.53x as much at width 4096 as at 64 (64x wider); the table's wrong rows are
# off by at least M^-0.5 (0.125x over the same range), and the μP rows of docs/results.md
# (widths 64 ... 2048) measure within ±0.14.
STABLE = 0.15


def fit_slope(widths: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of log(values) against log(widths) (NaN if any value <= 0)."""
    w, v = np.asarray(widths, float), np.asarray(values, float)
    if len(w) < 2 or np.any(~np.isfinite(v)) or np.any(v <= 0):
        return float("nan")
    return float(np.polyfit(np.log(w), np.log(v), 1)[0])


@dataclass
class CoordCheck:
    """Result of ``coord_check``: ``frame`` (one row per width, seed, step, layer) and ``exponents``."""

    frame: "object"      # pandas DataFrame: width, seed, step, layer, role, feature_change, output_change
    exponents: "object"  # pandas DataFrame: step, layer, role, slope
    label: str = ""
    diverged: list = field(default_factory=list)  # {width, seed, step, message, hint} per diverged run

    def slopes(self, step: int | None = None) -> dict:
        """{layer: slope} at ``step`` (default: the last recorded step)."""
        ex = self.exponents
        step = ex["step"].max() if step is None else step
        sub = ex[ex["step"] == step]
        return dict(zip(sub["layer"], sub["slope"]))

    def slopes_by_role(self, step: int | None = None) -> dict:
        """{role: slope}, hidden layers averaged (and the output change under "f")."""
        ex = self.exponents
        step = ex["step"].max() if step is None else step
        sub = ex[ex["step"] == step]
        return {role: float(sub[sub["role"] == role]["slope"].mean()) for role in sub["role"].unique()}

    def verdict(self, step: int | None = None, tol: float = STABLE) -> str:
        """A plain sentence: width-stable, or which layers grow / freeze like which power of M."""
        parts = [f"diverged at width {d['width']} (seed {d['seed']}, step {d['step']}): {d['hint']}"
                 for d in self.diverged]
        for layer, s in self.slopes(step).items():
            if not math.isfinite(s):
                parts.append(f"layer {layer} has no finite exponent (diverged or zero change)")
            elif s > tol:
                parts.append(f"layer {layer} grows like M^{s:.2f}")
            elif s < -tol:
                parts.append(f"layer {layer} freezes like M^{s:.2f}")
        return "feature learning is width-stable" if not parts else "; ".join(parts)

    def __repr__(self) -> str:
        slopes = ", ".join(f"{k}: {v:+.2f}" for k, v in self.slopes().items())
        return f"CoordCheck({self.label} slopes at the last step: {slopes}; {self.verdict()})"

    def _repr_html_(self) -> str:
        table = self.exponents.pivot_table(index="layer", columns="step", values="slope", sort=False)
        return f"<p><b>{self.label}</b> {self.verdict()}</p>" + table.to_html(float_format="%+.2f")


def _checked_model(model_fn, width: int, seed):
    """model_fn(width, seed), refused unless it is a role-tagged model of that width."""
    model = _call_model_fn(model_fn, width, seed)
    layer_roles(model)
    got = getattr(model, "mup_width", None)
    if got != width:
        raise ValueError(f"model_fn: called with width {width}, it returned a model of width {got} "
                         "(model.mup_width); build the model at the width it is given")
    return model


def coord_check(model_fn: Callable[[int], object], optimizer, param: str = "mup",
                widths: Sequence[int] = (64, 128, 256, 512, 1024, 2048), steps: int | Sequence[int] = 3,
                seeds: Sequence[int] = (0, 1, 2), data="teacher", lr: float = 0.1,
                damping: float | None = None, batch_size: int = 64, device: str = "auto",
                **options) -> CoordCheck:
    """Feature change of every layer across ``widths``, ``seeds`` and ``steps``, with fitted exponents.

    Args:
        model_fn: width -> a role-tagged model. Called as ``model_fn(width)`` or, if it
            accepts it, ``model_fn(width, seed=seed)``.
        optimizer: a name for ``ml.make_optimizer`` ("sgd", "adam", "kfac", "shampoo", "foof", "muon", "soap")
            or a callable ``model -> torch.optim.Optimizer``.
        steps: record after these steps (an int n means steps 1..n).
        data: a dataset name or an ``ml.datasets`` Dataset.
        lr, damping, options: passed to ``make_optimizer`` with ``param``.
    """
    import pandas as pd

    from .optim import make_optimizer, release_hooks

    if not callable(model_fn):
        raise TypeError(f"model_fn: expected a callable width -> model, got {type(model_fn).__name__}")
    widths = [check_positive("widths", w, integer=True) for w in widths]
    if len(set(widths)) < 2 or len(set(widths)) != len(widths):
        raise ValueError(f"widths: expected at least two distinct widths to fit an exponent, got {widths!r}")
    if isinstance(steps, int) and not isinstance(steps, bool):
        check_positive("steps", steps, integer=True)
    record_steps = list(range(1, steps + 1)) if isinstance(steps, int) else sorted(set(steps))
    if not record_steps:
        raise ValueError(f"steps: expected a positive integer or a non-empty list of steps, got {steps!r}")
    for s in record_steps:
        check_positive("steps", s, integer=True)
    seeds = [check_seed("seeds", s) for s in seeds]
    if not seeds:
        raise ValueError("seeds: expected at least one seed, got an empty sequence")
    if isinstance(data, str):
        from .data import load
        data = load(data)
    if not callable(optimizer):
        from .checks import check_choice
        from .scaling import OPTIMIZERS
        check_choice("optimizer", optimizer, OPTIMIZERS)
    first = {width: _checked_model(model_fn, width, seeds[0]) for width in widths}  # before any training
    rows, diverged = [], []
    for width in widths:
        for seed in seeds:
            model = first.pop(width, None) if seed == seeds[0] else None
            model = model if model is not None else _checked_model(model_fn, width, seed)
            roles = {name: role for name, _, role in layer_roles(model)}
            # parameters whose own change gets a row: {row name: (role, p, p(0))}
            tracked = {f"{name}.bias": (f"{role} bias", m.bias) for name, m, role in layer_roles(model)
                       if getattr(m, "bias", None) is not None}
            tracked.update({name: ("vector", p) for name, p in model.named_parameters()
                            if getattr(p, "mup_role", None) == "vector"})
            tracked = {name: (role, p, p.detach().clone()) for name, (role, p) in tracked.items()}
            opt = optimizer(model) if callable(optimizer) else \
                make_optimizer(model, optimizer, lr=lr, damping=damping, param=param, **options)
            for rec in train(model, opt, data, steps=max(record_steps), batch_size=batch_size,
                             seed=seed, device=device):
                if rec["diverged"]:
                    diverged.append(dict(width=width, seed=seed, step=rec["step"], message=rec["message"],
                                         hint=rec["hint"]))
                    break
                if rec["step"] in record_steps:
                    for layer, fc in rec["feature_change"].items():
                        rows.append(dict(width=width, seed=seed, step=rec["step"], layer=layer,
                                         role=roles[layer], feature_change=fc,
                                         output_change=rec["output_change"]))
                    for name, (role, p, p0) in tracked.items():   # rms(p(t) - p(0))
                        rows.append(dict(width=width, seed=seed, step=rec["step"], layer=name, role=role,
                                         output_change=rec["output_change"],
                                         feature_change=float((p.detach() - p0).pow(2).mean().sqrt())))
            release_hooks(opt)
    frame = pd.DataFrame(rows, columns=["width", "seed", "step", "layer", "role", "feature_change",
                                        "output_change"])
    return CoordCheck(frame, exponents_of(frame), label=f"{param}/{optimizer if isinstance(optimizer, str) else 'custom'}",
                      diverged=diverged)


def exponents_of(frame) -> "object":
    """Per (step, layer) slope of log mean feature change against log width; the output change
    appears as layer "f" with role "f"."""
    import pandas as pd

    out = []
    if frame.empty:
        return pd.DataFrame(columns=["step", "layer", "role", "slope"])
    for (step, layer), sub in frame.groupby(["step", "layer"], sort=False):
        m = sub.groupby("width")["feature_change"].mean()
        out.append(dict(step=step, layer=layer, role=sub["role"].iloc[0], slope=fit_slope(m.index, m.values)))
    for step, sub in frame.groupby("step"):
        m = sub.drop_duplicates(["width", "seed"]).groupby("width")["output_change"].mean()
        out.append(dict(step=step, layer="f", role="f", slope=fit_slope(m.index, m.values)))
    return pd.DataFrame(out).sort_values("step", kind="stable").reset_index(drop=True)


def _call_model_fn(model_fn, width, seed):
    import inspect
    try:
        accepts_seed = "seed" in inspect.signature(model_fn).parameters
    except (TypeError, ValueError):
        accepts_seed = False
    return model_fn(width, seed=seed) if accepts_seed else model_fn(width)


# One-step, batch-of-one predictions of the width exponent of the feature change (Ishikawa & Karakida 2024):
# SGD  dh = -lr delta |x|^2,  K-FAC  dh = -lr delta |x|^2 / ((|delta|^2 + rho_B)(|x|^2 + rho_A)),
# Shampoo  dh = -lr (delta/|delta|) |x|,  Adam  dW ~ lr sign(.) so dh ~ lr * fan_in.
# SP init: delta ~ M^(-1/2) per entry below the output layer, |x|^2 ~ M above the input layer.
# Tuples are (input, hidden, output); the output change f follows the output layer.
_THEORY = {
    ("sp", "sgd", None): (-0.5, 0.5, 1.0),
    ("sp", "adam", None): (0.0, 1.0, 1.0),
    ("sp", "kfac", "fixed"): (-0.5, -0.5, 0.0),
    ("sp", "shampoo", None): (-0.5, 0.0, 0.5),
    ("sp", "muon", None): (-0.5, 0.0, 0.5),         # an orthogonalized step: dh entries ~ lr sqrt(fan_in/fan_out)
    ("sp", "soap", None): (-0.5, 0.0, 0.5),         # its first step is Muon's (the basis of this batch)
    ("mup", "kfac", "fixed"): (-1.0, -1.0, 0.0),   # rho_B dominates |delta|^2 ~ 1/M: dh ~ delta ~ 1/M
    ("mup", "kfac", "pi"): (-1.0, 0.0, 0.0),       # pi ~ M at the input layer: rho_A ~ M freezes it
    ("mup", "kfac", "trace"): (0.0, 0.0, 0.0),
}


def theory_slopes(param: str, optimizer: str, damping_mode: str = "table") -> dict | None:
    """Predicted width exponents {input, hidden, output, f} of the feature change after one
    step at a width-independent base lr, or None where the one-step argument gives none.

    muP with the table (any optimizer): 0 everywhere. SP: SGD (-1/2, 1/2, 1), Adam (0, 1, 1),
    K-FAC (-1/2, -1/2, 0), Shampoo, Muon and SOAP (-1/2, 0, 1/2). muP K-FAC damping: "fixed" (-1, -1, 0),
    "pi" (-1, 0, 0), "trace" (0, 0, 0). These are asymptotic (M -> infinity); at finite widths
    a small damping moves a measured slope part of the way (docs/results.md: fixed damping 1e-2
    gives -0.70 / -0.65 / -0.19 at step 1).
    """
    from .checks import check_choice
    from .scaling import OPTIMIZERS, PARAMS
    param, optimizer = check_choice("param", param, PARAMS), check_choice("optimizer", optimizer, OPTIMIZERS)
    mode = check_choice("damping_mode", damping_mode, ("table", "fixed", "pi", "trace"))
    if optimizer not in ("kfac", "foof"):
        mode = None
    elif param == "sp" and mode == "table":
        mode = "fixed"  # SP's table damping is the fixed one
    if param == "mup" and mode in (None, "table"):
        slopes = (0.0, 0.0, 0.0)
    else:
        slopes = _THEORY.get((param, optimizer, mode))
    if slopes is None:
        return None
    return {"input": slopes[0], "hidden": slopes[1], "output": slopes[2], "f": slopes[2]}
