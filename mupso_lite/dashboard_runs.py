"""What the dashboard's buttons do in the background thread: train and width-view runs.

``Runs`` is the part of ``Dashboard`` that runs in a ``live.Job`` thread. It builds an
``ml.MLP`` and its optimizer from the scaling table (``ml.make_optimizer``), iterates
``ml.train`` with the job's stop flag and feeds the records to throttled live figures and
the status line. No training math happens here. A divergence (``ml.train``'s last record,
``mupso_lite.divergence``) shows in red with its message and hint, and as a dashed line on
the loss plot, zoomed to the steps that ran; a run whose loss spiked but did not diverge, in
orange the same way, its mark at the step of the highest loss (the step the warning names).
A Run draws the last ``EARLIER_RUNS`` Runs' curves faded behind its own (``EarlierRun``). Each
model and optimizer lives only as long as its run: the optimizer's hooks are detached in a
``finally``, so nothing holds them after the job ends. The width view trains a few widths
around the width control (``coord_widths_for``) and states ``ml.coord_check``'s verdict.
"""
from __future__ import annotations

import importlib.util
import math
import time
from dataclasses import dataclass

import plotly.graph_objects as go

from .checks import check_positive
from .coord import CoordCheck, exponents_of, fit_slope
from .data import Dataset, load
from .live import Job, log_range
from .models import MLP
from .roles import layer_roles
from .optim import make_optimizer, release_hooks
from .train import train

BASE_WIDTH = 64  # hyperparameters are tuned here; wider models follow the scaling table
OPTIMIZERS = [("SGD", "sgd"), ("Adam", "adam"), ("K-FAC", "kfac"), ("Shampoo", "shampoo"), ("FOOF", "foof"),
              ("Muon", "muon"), ("SOAP", "soap")]
PARAMS = [("SP", "sp"), ("μP", "mup")]
LABEL = dict((v, k) for k, v in PARAMS)
# Good settings on digits at the base width: (learning rate, damping or None); SOAP's damping is its eps.
# Muon and SOAP: the best lr of a grid under muP at widths 64 and 1024 (digits, depth 3, 200 steps, batch 64):
# test accuracy 0.978 / 0.975 (Muon 0.02), 0.981 / 0.967 (SOAP 3e-3, eps 1e-6 as 1e-8, memory 0).
DEFAULTS = {"sgd": (0.5, None), "adam": (1e-2, None), "kfac": (0.1, 0.1), "foof": (0.1, 0.01),
            "shampoo": (0.05, 1e-4), "muon": (0.02, None), "soap": (3e-3, 1e-6)}
MEMORY = ("kfac", "foof", "shampoo", "soap")   # the optimizers with a curvature memory (SOAP: shampoo_beta)
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2"]
PARAM_COLORS = {"sp": "#d62728", "mup": "#1f77b4"}
WARN_COLOR = "#b35900"   # status and plot mark of a run whose loss spiked (not diverged)
WIDTHS = (32, 4096)      # the width control's range
COORD_COUNT = 5          # the width view's default number of widths
FEATURE_TITLE = "feature change ‖Δh‖ (rms)"


@dataclass(frozen=True)
class Settings:
    """One snapshot of the controls; a run uses the settings of the moment it started."""

    width: int
    lr: float
    damping: float
    optimizer: str
    param: str
    dataset: str
    depth: int
    batch_size: int
    steps: int
    seed: int = 0
    fisher: str = "auto"   # K-FAC/FOOF only: "auto" (MC for the squared loss), "empirical", "mc"
    memory: float = 0.0    # K-FAC/FOOF/Shampoo/SOAP: decay of the curvature average (0: this batch's curvature)


def optimizer_options(s: Settings) -> dict:
    """``make_optimizer``'s options from the Fisher and curvature-memory controls. Memory d > 0
    averages the curvature (K-FAC/FOOF ``ema_decay=d``, Shampoo ``beta=d``), inverted every
    step, so the only difference from memory 0 (the optimizers' defaults) is the averaging.
    SOAP: memory 0 takes the eigenbasis of this batch's statistics at every step
    (``shampoo_beta=0, precondition_frequency=1``); d > 0 is SOAP's own schedule, statistics
    averaged with ``shampoo_beta=d`` and the basis refreshed every 10 steps (SOAP's default is
    d = 0.95)."""
    if s.optimizer in ("kfac", "foof"):
        return {"fisher": s.fisher, **({"ema_decay": s.memory, "inverse_interval": 1} if s.memory else {})}
    if s.optimizer == "shampoo" and s.memory:
        return {"beta": s.memory, "update_interval": 1}
    if s.optimizer == "soap":
        return {"shampoo_beta": s.memory} if s.memory else {"shampoo_beta": 0.0, "precondition_frequency": 1}
    return {}


def builtin_datasets() -> list[str]:
    """The offline datasets the dashboard offers (``mnist1d`` only when its package is installed)."""
    names = ["digits", "teacher", "teacher_regression"]
    return names + (["mnist1d"] if importlib.util.find_spec("mnist1d") else [])


def dataset_names(extra: dict) -> list[str]:
    """The dataset dropdown's choices: the built-in ones, then ``datasets=``'s names."""
    return list(dict.fromkeys(builtin_datasets() + list(extra)))


def coord_widths_for(width: int, count: int = COORD_COUNT, limits: tuple = WIDTHS) -> list[int]:
    """The width view's widths for the width control at ``width``: ``count`` widths a factor 2
    apart ending at ``width`` (256 -> 16 ... 256), moved up by factors of 2 until the smallest is
    within ``limits`` (256 -> 32, 64, 128, 256, 512). The largest is at most 2**(count-1) x 32
    or ``width``, so a width view costs little more than one run at the chosen width."""
    check_positive("width", width, integer=True)
    check_positive("count", count, integer=True)
    lo, hi = limits
    shift = 0
    while round(width * 2.0 ** (shift - count + 1)) < lo:
        shift += 1
    widths = [round(width * 2.0 ** (j + shift - count + 1)) for j in range(count)]
    return [w for w in widths if w <= hi]


def width_axis(widths: list) -> dict:
    """The width view's x axis: log scale, spanning ``widths``, a labelled tick at each."""
    return dict(range=log_range(min(widths), max(widths)), tickmode="array", tickvals=list(widths),
                ticktext=[str(w) for w in widths], autorange=False, minor=dict(ticks="", showgrid=False))


def starting_line(kind: str, s: Settings, device: str, widths: list) -> str:
    """The status line the moment a run is asked for (before its first step): what it runs."""
    opt = dict((v, k) for k, v in OPTIMIZERS)[s.optimizer]
    what = f"{opt}, width {s.width}, lr {s.lr:.2g}, {s.steps} steps, {s.dataset}"
    if kind == "compare":
        return f"device: {device} · running SP vs μP: {what} …"
    if kind == "width":
        return f"device: {device} · width view: starting ({LABEL[s.param]} {opt}, widths {', '.join(map(str, widths))}) …"
    return f"device: {device} · running {LABEL[s.param]} {what} …"


EARLIER_RUNS = 2   # how many earlier runs a Run shows, faded, behind its own curves


@dataclass
class EarlierRun:
    """A finished Run's settings and records (the list it filled), drawn faded behind the next Runs."""

    settings: Settings
    classify: bool
    records: list

    def label(self, now: Settings) -> str:
        """"earlier: width 128" and whatever else differs from ``now`` ("lr 0.1", "SP", ...)."""
        s, names = self.settings, dict((v, k) for k, v in OPTIMIZERS)
        parts = [f"width {s.width}"] + [text for differs, text in [
            (s.param != now.param, LABEL[s.param]), (s.optimizer != now.optimizer, names[s.optimizer]),
            (s.lr != now.lr, f"lr {s.lr:.2g}"), (s.damping != now.damping and DEFAULTS[s.optimizer][1] is not None,
                                                 f"damping {s.damping:.1g}"),
            (s.depth != now.depth, f"depth {s.depth}"), (s.batch_size != now.batch_size, f"batch {s.batch_size}"),
            (s.dataset != now.dataset, s.dataset), (s.memory != now.memory, f"memory {s.memory:g}")] if differs]
        return "earlier: " + ", ".join(parts)

    def traces(self, now: Settings, classify: bool, opacity: float, group: str) -> tuple[list, list]:
        """(loss traces, feature traces), faded, one legend entry per figure (a click hides them all)."""
        recs, name = [r for r in self.records if math.isfinite(r["loss"])], self.label(now)
        faded = dict(mode="lines", opacity=opacity, legendgroup=group, hoverinfo="x+y+name")
        loss = [go.Scatter(x=[r["step"] for r in recs], y=[r["loss"] for r in recs], name=name,
                           line=dict(color=COLORS[0]), **faded)]
        key = "test_accuracy" if self.classify else "test_loss"
        if self.classify == classify:   # the same test metric on the same axis
            tested = [r for r in recs if r.get(key) is not None]
            loss.append(go.Scatter(x=[r["step"] for r in tested], y=[r[key] for r in tested], name=f"{name} (test)",
                                   yaxis="y2" if classify else "y", line=dict(color=COLORS[0], dash="dot"),
                                   showlegend=False, **faded))
        layers = list(dict.fromkeys(k for r in recs for k in r.get("feature_change", {})))
        feature = [go.Scatter(x=[r["step"] for r in recs], y=[_finite(r.get("feature_change", {}).get(layer))
                                                              for r in recs],
                              name=name if j == 0 else f"{name}: {layer}", showlegend=j == 0,
                              line=dict(color=COLORS[j % len(COLORS)]), **faded) for j, layer in enumerate(layers)]
        return loss, feature


def _finite(y):
    return y if y is not None and math.isfinite(y) else None


class Runs:
    """The training and width-view jobs; mixed into ``Dashboard`` (which owns the widgets)."""

    coord_result: CoordCheck | None = None  # the last width view, as ``ml.coord_check`` returns it
    _shown: EarlierRun | None = None        # the Run whose curves the loss and feature figures show
    _earlier: list = []                     # [EarlierRun], newest first: drawn faded (never mutated in place)

    def _dataset(self, name: str) -> Dataset:
        with self._data_lock:
            if name not in self._data_cache:
                source = self.extra_datasets.get(name)
                data = load(name) if source is None else (source() if callable(source) else source)
                if not isinstance(data, Dataset):
                    raise TypeError(f"dataset {name!r}: expected an ml.datasets Dataset, got {type(data).__name__}")
                self._data_cache[name] = data
            return self._data_cache[name]

    def _model(self, s: Settings, data: Dataset, param: str, width: int | None = None, seed: int | None = None):
        model = MLP(data.d_in, data.d_out, width or s.width, s.depth, base_width=BASE_WIDTH, param=param,
                    seed=s.seed if seed is None else seed)
        damping = s.damping if DEFAULTS[s.optimizer][1] is not None else None
        return model, make_optimizer(model, s.optimizer, lr=s.lr, damping=damping, param=param,
                                     **optimizer_options(s))

    @staticmethod
    def _layers(s: Settings, data: Dataset) -> list:
        """[(name, role)] of the tagged layers (they depend on the depth only: a base-width model)."""
        model = MLP(data.d_in, data.d_out, BASE_WIDTH, s.depth, base_width=BASE_WIDTH)
        return [(name, role) for name, _, role in layer_roles(model)]

    def _train_job(self, job: Job, s: Settings, params: list, requested: float) -> None:
        """Train once per parametrization in ``params``, feeding the loss and feature figures."""
        self.records, self.messages, self.timings = [], [], {}
        device = self._device_name()
        data = self._dataset(s.dataset)
        classify = data.task == "classification"
        layers = self._layers(s, data)
        shown, self._shown = (self._shown if self._shown and self._shown.records else None), None
        # a Run keeps the last runs' curves, faded; Compare shows only its own two
        self._earlier = ([shown] + self._earlier)[:EARLIER_RUNS] if len(params) == 1 and shown else []
        self._reset_train_figures(s, params, layers, classify)
        self._shown = None if len(params) > 1 else EarlierRun(s, classify, self.records)
        for k, param in enumerate(params):
            if job.stopped:
                break
            model, opt = self._model(s, data, param)
            try:
                self._train_one(job, s, k, params, model, opt, data, layers, device, requested)
            finally:  # K-FAC/Shampoo hooks off the model, so both are freed with this frame
                release_hooks(opt)
            del model, opt
        self.live["loss"].flush(force=True)
        self.live["feature"].flush(force=True)
        self._zoom_to_divergence(s)
        self._finish_train_status(job, s, device, params, classify)

    def _zoom_to_divergence(self, s: Settings) -> None:
        """A run that diverged early: the x axes span the steps it ran (a little more), not all
        of ``s.steps``, so the failing steps and their mark are not squeezed at the left edge."""
        if not any(r["diverged"] for r in self.records):
            return
        last = max(r["step"] for r in self.records)
        if last < s.steps:
            end = min(s.steps, last + max(2, math.ceil(0.15 * last)))
            for name in ("loss", "feature"):
                self.live[name].set_x_range(0, end)

    def _train_one(self, job, s, k, params, model, opt, data, layers, device, requested) -> None:
        loss_fig, feat_fig = self.live["loss"], self.live["feature"]
        param, classify = params[k], data.task == "classification"
        tag = f"{LABEL[param]} " if len(params) > 1 else ""  # "SP step 3/40"
        prefix = f"{LABEL[param]}: " if len(params) > 1 else ""  # "SP: diverged at step 7: ..."
        rec, peak = None, None   # peak: (loss, step) of the highest loss, as the divergence rule's warning
        for rec in train(model, opt, data, steps=s.steps, batch_size=s.batch_size, seed=s.seed,
                         eval_every=max(1, s.steps // 25), device=self.device, stop=job.stop_event):
            self.records.append({**rec, "param": param})
            loss_fig.add(2 * k, rec["step"], rec["loss"])
            test = rec.get("test_accuracy" if classify else "test_loss")
            if test is not None:
                loss_fig.add(2 * k + 1, rec["step"], test)
            changes = rec.get("feature_change", {})  # a diverged loss has no feature change
            for j, (name, _) in enumerate(layers):
                feat_fig.add(k * len(layers) + j, rec["step"], changes.get(name, math.nan))
            rate = rec["step"] / max(rec["seconds"], 1e-9)
            first_point = "first_point_s" not in self.timings or rec["diverged"]
            if loss_fig.flush(force=first_point) | feat_fig.flush(force=first_point):
                self.timings.setdefault("first_point_s", time.monotonic() - requested)
                self._set_status(f"device: {device} · {tag}step {rec['step']}/{s.steps} · "
                                 f"{rate:.1f} steps/s · loss {rec['loss']:.3g}")
            if rec["diverged"]:
                self.messages.append(f"{prefix}{rec['message']} · {rec['hint']}")
                loss_fig.mark(rec["step"], f"{tag}diverged at step {rec['step']}")
            elif math.isfinite(rec["loss"]) and (peak is None or rec["loss"] > peak[0]):
                peak = (rec["loss"], rec["step"])
            if job.stopped:
                break
        if rec is not None and rec.get("warning") and not rec["diverged"]:   # a diverged run has its own mark
            # the step of the highest loss: the step the warning ("spiked 29.7× ... at step 4") names
            loss_fig.mark(peak[1], f"{tag}loss spiked at step {peak[1]}", color=WARN_COLOR)
        if rec is not None:
            self.timings["steps_per_s"] = rec["step"] / max(rec["seconds"], 1e-9)

    def _finish_train_status(self, job, s, device, params, classify) -> None:
        parts = [f"device: {device}"]
        for param in params:
            recs = [r for r in self.records if r["param"] == param]
            if not recs:
                continue
            last, tag = recs[-1], (f"{LABEL[param]}: " if len(params) > 1 else "")
            if last["diverged"]:
                parts.append(f"{tag}{last['message']} · {last['hint']}")
            elif last["step"] < s.steps:
                parts.append(f"{tag}stopped at step {last['step']}")
            else:
                metric = (f"test accuracy {last['test_accuracy']:.3f}" if classify and "test_accuracy" in last
                          else f"test loss {last.get('test_loss', math.nan):.3g}")
                parts.append(f"{tag}done, {s.steps} steps, loss {last['loss']:.3g}, {metric}")
            if not last["diverged"] and last.get("warning"):
                parts.append(f"{tag}{last['warning']} · {last['hint']}")
                self.messages.append(f"{tag}{last['warning']} · {last['hint']}")
        if len(parts) == 1:
            parts.append("stopped before the first step")
        parts.append(f"{self.timings.get('steps_per_s', 0):.1f} steps/s")
        bad = any(r["diverged"] for r in self.records)
        shaky = any(r.get("warning") for r in self.records)
        self._set_status(" · ".join(parts), "#c00" if bad else WARN_COLOR if shaky else "#333")

    def _reset_train_figures(self, s: Settings, params, layers, classify) -> None:
        multi, loss_traces, feat_traces = len(params) > 1, [], []
        for k, param in enumerate(params):
            tag = f" ({LABEL[param]})" if multi else ""
            color = PARAM_COLORS[param] if multi else COLORS[0]
            loss_traces += [go.Scatter(x=[], y=[], mode="lines", name=f"train loss{tag}", line=dict(color=color)),
                            go.Scatter(x=[], y=[], mode="lines+markers", name=("test accuracy" if classify else
                                       "test loss") + tag, yaxis="y2" if classify else "y",
                                       line=dict(color=color, dash="dot"), marker=dict(size=4))]
            for j, (name, role) in enumerate(layers):
                feat_traces.append(go.Scatter(x=[], y=[], mode="lines", name=f"{name} ({role}){tag}",
                                              line=dict(color=COLORS[j % len(COLORS)],
                                                        dash="dash" if multi and param == "sp" else "solid")))
        for i, earlier in enumerate(self._earlier):   # after the run's own traces: their indices stay
            new_loss, new_feat = earlier.traces(s, classify, opacity=0.3 / (i + 1), group=f"earlier {i}")
            loss_traces += new_loss
            feat_traces += new_feat
        steps = dict(xaxis_range=[0, s.steps], yaxis_autorange=True)  # the x axis fits the whole run
        self.live["loss"].reset(loss_traces, layout=dict(
            steps, showlegend=True, yaxis_title_text="training loss" if classify else "loss (training, test)",
            yaxis2_visible=classify))  # regression: the test loss shares the loss axis
        self.live["feature"].reset(feat_traces, layout=steps)

    def width_view_widths(self, width: int | None = None) -> list[int]:
        """The widths the Width view trains: ``coord_widths=`` when given, else
        ``coord_widths_for`` the width control (or ``width``)."""
        if self.coord_widths:
            return list(self.coord_widths)
        return coord_widths_for(self.settings().width if width is None else width)

    def _width_job(self, job: Job, s: Settings, params: list, requested: float) -> None:
        """A coordinate check at the current settings: feature change vs width, log-log."""
        widths = self.width_view_widths(s.width)
        data, device = self._dataset(s.dataset), self._device_name()
        self.width_points, self.messages, self.coord_result = [], [], None
        layers = self._layers(s, data)
        traces = []
        for j, (name, role) in enumerate(layers):
            color = COLORS[j % len(COLORS)]
            traces += [go.Scatter(x=[], y=[], mode="lines+markers", name=f"{name} ({role})", line=dict(color=color)),
                       go.Scatter(x=[], y=[], mode="lines", name="μP prediction: slope 0", legendgroup="theory",
                                  line=dict(color=color, dash="dash"), showlegend=j == 0)]
        title = (f"width view: {LABEL[s.param]} {dict((v, k) for k, v in OPTIMIZERS)[s.optimizer]}, "
                 f"feature change after {self.coord_steps} steps")
        self.live["width"].reset(traces, layout=dict(title_text=title, xaxis=width_axis(widths),
                                                     yaxis_autorange=True))
        diverged = []
        for i, width in enumerate(widths):
            for seed in self.coord_seeds:
                if job.stopped:
                    return self._set_status(f"device: {device} · width view stopped at width {width}")
                self._set_status(f"device: {device} · width view: width {width} ({i + 1}/{len(widths)}), seed {seed}")
                model, opt = self._model(s, data, s.param, width, seed)
                try:
                    last = None
                    for last in train(model, opt, data, steps=self.coord_steps, batch_size=s.batch_size,
                                      seed=seed, device=self.device, stop=job.stop_event):
                        pass
                finally:
                    release_hooks(opt)
                del model, opt
                if last is not None and last["diverged"]:
                    self.messages.append(f"width {width}: {last['message']} · {last['hint']}")
                    diverged.append({"width": width, "seed": seed, **{k: last[k] for k in ("step", "message", "hint")}})
                if last is None or last["diverged"] or last["step"] < self.coord_steps:
                    continue  # no point: stopped, or diverged (no finite feature change)
                for name, role in layers:
                    self.width_points.append(dict(width=width, seed=seed, layer=name, role=role,
                                                  feature_change=last["feature_change"][name],
                                                  output_change=last["output_change"]))
            self._update_width_figure(layers)
        self.live["width"].flush(force=True)
        self.coord_result = self._coord_check(s, diverged)
        fitted = self.coord_result.slopes()
        slopes = ", ".join(f"{role} {fitted.get(name, math.nan):+.2f}"
                           for name, role in [*layers, ("f", "f (output change)")])
        span = f"widths {', '.join(map(str, widths))}"
        self._set_status(f"device: {device} · width view done ({span}): slopes {slopes} (μP predicts 0) · "
                         f"verdict: {self.coord_result.verdict()}", "#c00" if diverged else "#333")

    def _coord_check(self, s: Settings, diverged: list) -> CoordCheck:
        """The width view's points as ``ml.coord_check`` returns them, so ``verdict()`` is its text."""
        import pandas as pd
        frame = pd.DataFrame([{**p, "step": self.coord_steps} for p in self.width_points],
                             columns=["width", "seed", "step", "layer", "role", "feature_change", "output_change"])
        return CoordCheck(frame, exponents_of(frame), label=f"{s.param}/{s.optimizer}", diverged=diverged)

    def verdict(self) -> str:
        """The last width view's verdict, in ``ml.coord_check``'s words ("" before the first one)."""
        return "" if self.coord_result is None else self.coord_result.verdict()

    def slopes(self) -> dict:
        """{layer: fitted exponent} of the last width view (slope of log feature change vs log M)."""
        out = {}
        for name in dict.fromkeys(p["layer"] for p in self.width_points):
            means = self._width_means(name)
            out[name] = fit_slope(list(means), list(means.values()))
        return out

    def _width_means(self, name: str) -> dict:
        by_width: dict[int, list] = {}
        for p in self.width_points:
            if p["layer"] == name:
                by_width.setdefault(p["width"], []).append(p["feature_change"])
        return {w: sum(v) / len(v) for w, v in sorted(by_width.items())}

    def _update_width_figure(self, layers) -> None:
        fig, slopes = self.live["width"], self.slopes()
        for j, (name, role) in enumerate(layers):
            means = self._width_means(name)
            if not means:
                continue
            ws, ys = list(means), list(means.values())
            fig.set(2 * j, ws, ys)
            fig.set(2 * j + 1, [ws[0], ws[-1]], [ys[0], ys[0]])  # slope 0 through the first point
            slope = slopes.get(name, math.nan)
            fig.figure.data[2 * j].name = f"{name} ({role})" + (f": slope {slope:+.2f}" if len(ws) > 1 else "")
        fig.flush(force=True)
