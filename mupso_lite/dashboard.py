"""The interactive dashboard: ``ml.Dashboard()`` in a notebook (the last expression, or ``.show()``).

Pick a width, learning rate, damping, optimizer, parametrization (SP or μP), dataset, depth,
batch size and number of steps (and, for K-FAC, FOOF, Shampoo and SOAP, the curvature memory: this
batch's curvature at every step, as in the theory, or an average over past batches), then:

* **Run** trains one MLP and plots its training loss, its test accuracy and the feature
  change of every layer, rms(h_l(t) - h_l(0)), step by step;
* **Compare SP vs μP** trains the same model twice, once per parametrization, overlaid;
* **Width view** runs a coordinate check: a few steps at several widths around the width
  control, feature change against width on log-log axes, with μP's prediction (a flat line,
  slope 0) dashed, and ``ml.coord_check``'s verdict in the status line;
* **Stop** ends the run within one step. Moving any control during a run restarts it.

Training runs in a background thread (``live.Job``), so the notebook stays usable; the
figures are refreshed at most ~7 times a second. Nothing here does training math: models,
optimizers and the training loop all come from ``mupso_lite`` itself. Everything the buttons
do is a method too (``run``, ``compare``, ``width_view``, ``stop``, ``join``), so a script or a
test can drive the dashboard without a browser and read ``records``, ``status``, ``verdict()``
and the figures.

Bad arguments raise (ValueError/TypeError naming the argument) before any widget or thread
exists; a divergence shows in red with what to change and as a mark on the loss plot; an
error inside a run shows in the status line. ``close()`` stops the run and closes every widget.
"""
from __future__ import annotations

import html
import math
import numbers
import threading
import time

import ipywidgets as W
import plotly.graph_objects as go

from .dashboard_runs import (DEFAULTS, FEATURE_TITLE, MEMORY, OPTIMIZERS, PARAMS, WIDTHS, Runs, Settings,
                             dataset_names, width_axis)
from .data import Dataset
from .live import LOG_AXIS, Job, LiveFigure, choice_control, drop_file_watch, figure_widget, widget_tree
from .checks import check_choice, check_positive
from .train import resolve_device

# The controls' ranges; an argument outside them raises (a slider would clamp it silently).
LRS, DAMPINGS, DEPTHS, STEPS = (1e-4, 10.0), (1e-6, 1.0), (2, 6), (5, 2000)  # WIDTHS: dashboard_runs
BATCH_SIZES = (16, 32, 64, 128, 256, 512)
FISHER_CHOICES = [("auto: MC for regression", "auto"), ("empirical", "empirical"), ("MC (sampled)", "mc")]
# The curvature memory: the decay d of K-FAC's factors (F <- d F + (1 - d) F_batch), Shampoo's or SOAP's statistics.
MEMORY_CHOICES = [("this batch (the theory)", 0.0)] + [(f"average, decay {d:g}", d) for d in (0.5, 0.9, 0.95, 0.99)]
OPTIMIZER_NAMES, PARAM_NAMES, FISHER_NAMES = ([v for _, v in c] for c in (OPTIMIZERS, PARAMS, FISHER_CHOICES))


class Dashboard(Runs):
    """Widgets and live plotly figures around ``ml.train``; see the module docstring.

    Args are the controls' starting values; ``lr``/``damping`` default to good values for
    the optimizer. ``fisher`` ("auto", "empirical" or "mc") is K-FAC's and FOOF's Fisher:
    "auto" samples targets (MC) for the squared loss of the regression datasets.
    ``memory`` (one of ``MEMORY_CHOICES``: 0, 0.5, 0.9, 0.95, 0.99) is the curvature memory of
    K-FAC, FOOF, Shampoo and SOAP: 0 (the default) uses the current batch's curvature at every step,
    as in the theory; d > 0 averages it, F <- d F + (1 - d) F_batch (K-FAC ``ema_decay=d``,
    Shampoo ``beta=d``, SOAP ``shampoo_beta=d``: ``dashboard_runs.optimizer_options``).
    The damping is SOAP's eps; Muon has neither (both controls disabled).
    ``datasets`` adds choices: {name: Dataset or zero-argument function}.
    ``coord_widths``, ``coord_steps``, ``coord_seeds`` configure the width view (default widths:
    five a factor 2 apart ending at the width control, e.g. 64 ... 1024 at 1024, moved up to
    start at 32 for small widths; see ``width_view_widths()``). ``verdict()`` is its finding.
    A value outside its control's range raises ValueError (a slider would clamp it silently).
    """

    def __init__(self, width: int = 256, lr: float | None = None, damping: float | None = None,
                 optimizer: str = "sgd", param: str = "mup", dataset: str = "digits", depth: int = 3,
                 batch_size: int = 64, steps: int = 200, seed: int = 0, fisher: str = "auto",
                 memory: float = 0.0, datasets: dict | None = None,
                 device: str = "auto", coord_widths=None, coord_steps: int = 3, coord_seeds=(0,),
                 update_interval: float = 0.15):
        # every argument is checked before any widget or thread exists
        args = check_arguments(width=width, lr=lr, damping=damping, optimizer=optimizer, param=param,
                               dataset=dataset, depth=depth, batch_size=batch_size, steps=steps, seed=seed,
                               fisher=fisher, memory=memory,
                               datasets=datasets, coord_widths=coord_widths, coord_steps=coord_steps,
                               coord_seeds=coord_seeds, update_interval=update_interval)
        self.device = resolve_device(device)
        self.extra_datasets = args["datasets"]
        self.seed, self.coord_widths, self.coord_steps = args["seed"], args["coord_widths"], args["coord_steps"]
        self.coord_seeds, self._interval = args["coord_seeds"], args["update_interval"]
        self._data_cache: dict[str, Dataset] = {}
        self._data_lock = threading.Lock()
        self._job: Job | None = None
        self._kind = "run"
        self._quiet = False
        self._closed = False
        self._status = ""
        self.last_settings: Settings | None = None  # the settings the latest run started with
        self.records: list[dict] = []        # per-step records of the last run (compare: both params)
        self.width_points: list[dict] = []   # width view: one row per (width, seed, layer)
        self.timings: dict[str, float] = {}  # first_point_s, steps_per_s of the last run
        self.messages: list[str] = []        # divergence messages (with their hints) of the last run
        self._build_controls(args["width"], args["lr"], args["damping"], args["optimizer"], args["param"],
                             args["dataset"], args["depth"], args["batch_size"], args["steps"], args["fisher"],
                             args["memory"])
        self._build_figures()
        self._set_status(f"device: {self._device_name()} · ready: press Run")

    # ------------------------------------------------------------------ controls and layout
    def _build_controls(self, width, lr, damping, optimizer, param, dataset, depth, batch_size, steps, fisher,
                        memory):
        style, wide = {"description_width": "100px"}, W.Layout(width="330px")
        kw = dict(continuous_update=False, style=style, layout=wide)
        def log_slider(value, base, bounds, step, description, fmt):
            lo, hi = (math.log(b, base) for b in bounds)
            return W.FloatLogSlider(value=value, base=base, min=round(lo), max=round(hi), step=step,
                                    description=description, readout_format=fmt, **kw)
        c = self.controls = {
            "width": log_slider(width, 2, WIDTHS, 1, "width M", ".0f"),
            "lr": log_slider(lr, 10, LRS, 0.1, "learning rate", ".2g"),
            "damping": log_slider(damping, 10, DAMPINGS, 0.1, "damping", ".1e"),
            "optimizer": choice_control(W.Dropdown, "optimizer", lambda v: check_choice("optimizer", v, OPTIMIZER_NAMES),
                                        options=OPTIMIZERS, value=optimizer, description="optimizer",
                                        style=style, layout=wide),
            "param": choice_control(W.ToggleButtons, "param", lambda v: check_choice("param", v, PARAM_NAMES),
                                    options=PARAMS, value=param, description="parametrization",
                                    style={**style, "button_width": "70px"}, layout=wide),
            "dataset": choice_control(W.Dropdown, "dataset", options=dataset_names(self.extra_datasets),
                                      value=dataset, description="dataset", style=style, layout=wide),
            "depth": W.IntSlider(value=depth, min=DEPTHS[0], max=DEPTHS[1], description="depth (layers)", **kw),
            "batch_size": choice_control(W.SelectionSlider, "batch_size", options=list(BATCH_SIZES),
                                         value=batch_size, description="batch size", **kw),
            "steps": W.IntSlider(value=steps, min=STEPS[0], max=STEPS[1], step=5, description="steps", **kw),
            "fisher": choice_control(W.Dropdown, "fisher", lambda v: check_choice("fisher", v, FISHER_NAMES),
                                     options=FISHER_CHOICES, value=fisher, description="Fisher (K-FAC)",
                                     style=style, layout=wide),
            "memory": choice_control(W.Dropdown, "memory", _memory, options=MEMORY_CHOICES, value=memory,
                                     description="curvature", style=style, layout=wide, tooltip="curvature memory (K-FAC, FOOF, Shampoo, SOAP): this batch's "
                                 "curvature, or an average over past batches with this decay"),
        }
        self._enable_controls(optimizer)
        for name, control in c.items():
            control.observe(lambda change, name=name: self._on_change(name), names="value")
        self.buttons = {
            "run": W.Button(description="Run", button_style="success", icon="play"),
            "stop": W.Button(description="Stop", button_style="danger", icon="stop"),
            "compare": W.Button(description="Compare SP vs μP", icon="columns",
                                layout=W.Layout(width="180px")),
            "width": W.Button(description="Width view", icon="line-chart",
                              tooltip="coordinate check: feature change against width"),
        }
        self.buttons["run"].on_click(lambda _: self.run())
        self.buttons["stop"].on_click(lambda _: self.stop())
        self.buttons["compare"].on_click(lambda _: self.compare())
        self.buttons["width"].on_click(lambda _: self.width_view())
        self.status_widget = W.HTML(layout=W.Layout(min_height="24px"))

    def _build_figures(self):
        # empty figures start on the ranges a run will fill (plotly's empty log axis spans 0.1 .. 1e6)
        steps = [0, self.controls["steps"].value]
        self.loss_figure = figure_widget(
            "training loss and test accuracy", "step", "training loss", xaxis_range=steps,
            yaxis=dict(LOG_AXIS, range=[-1, 0.5]),
            yaxis2=dict(title=dict(text="test accuracy"), overlaying="y", side="right", type="linear",
                        range=[0, 1], tickmode="linear", tick0=0, dtick=0.2, showgrid=False))
        self.feature_figure = figure_widget("feature change rms(h_l(t) − h_l(0))", "step", FEATURE_TITLE,
                                            xaxis_range=steps, yaxis=dict(LOG_AXIS, range=[-3, 0]))
        self.width_figure = figure_widget("width view: feature change after a few steps", "width M", FEATURE_TITLE,
                                          width=700, xaxis=dict(LOG_AXIS, **width_axis(self.width_view_widths())),
                                          yaxis=dict(LOG_AXIS, range=[-3, 0.5]))
        self.live = {"loss": LiveFigure(self.loss_figure, self._interval),
                     "feature": LiveFigure(self.feature_figure, self._interval),
                     "width": LiveFigure(self.width_figure, self._interval)}

    @property
    def widget(self) -> W.Widget:
        """The whole dashboard as one ipywidgets box (built once)."""
        if not hasattr(self, "_widget"):
            c, b = self.controls, self.buttons
            grid = W.GridBox(list(c.values()), layout=W.Layout(grid_template_columns="repeat(3, 340px)"))
            self._widget = W.VBox([grid, W.HBox(list(b.values())), self.status_widget,
                                   W.HBox([self.loss_figure, self.feature_figure]), self.width_figure])
        return self._widget

    def show(self) -> None:
        """Display the dashboard in the notebook."""
        from IPython.display import display
        display(self.widget)

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    # ------------------------------------------------------------------ what the buttons do
    def run(self, wait: bool = False) -> "Dashboard":
        """Train one model with the current settings (stops a run in progress first)."""
        return self._start("run", wait)

    def compare(self, wait: bool = False) -> "Dashboard":
        """Train with SP, then with μP (same settings otherwise), overlaid in the figures."""
        return self._start("compare", wait)

    def width_view(self, wait: bool = False) -> "Dashboard":
        """Coordinate check: feature change after ``coord_steps`` steps at several widths."""
        return self._start("width", wait)

    def stop(self) -> None:
        """Ask the run to end; it does so after the step in progress (nothing running: no-op)."""
        if self._job is not None:
            self._job.stop()

    def close(self, timeout: float | None = None) -> None:
        """Stop the run, wait for its thread, and close every widget (safe to call twice).

        A lab that makes many dashboards should close the ones it no longer shows: a closed
        dashboard holds no thread, no model and no widget in the kernel. ``run()`` and the
        other buttons' methods raise afterwards.
        """
        self.stop()
        self.join(timeout)
        if self._closed:
            return
        self._closed = True
        for live in self.live.values():  # drop the traces' data even if something still holds a figure
            live.reset([])
        roots = [getattr(self, "_widget", None), *self.controls.values(), *self.buttons.values(),
                 self.status_widget, self.loss_figure, self.feature_figure, self.width_figure]
        for widget in widget_tree(w for w in roots if w is not None):
            drop_file_watch(widget)
            widget.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Dashboard":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the current run; True if it has finished."""
        return True if self._job is None else self._job.join(timeout)

    @property
    def running(self) -> bool:
        return self._job is not None and self._job.is_alive()

    @property
    def status(self) -> str:
        """The status line as plain text."""
        return self._status

    def settings(self) -> Settings:
        """The current values of the controls."""
        v = {name: control.value for name, control in self.controls.items()}
        return Settings(width=int(round(v["width"])), lr=float(v["lr"]), damping=float(v["damping"]),
                        optimizer=v["optimizer"], param=v["param"], dataset=v["dataset"], depth=int(v["depth"]),
                        batch_size=int(v["batch_size"]), steps=int(v["steps"]), seed=self.seed, fisher=v["fisher"],
                        memory=float(v["memory"]))

    def snapshot(self, which: str = "loss") -> go.Figure:
        """A static copy of the "loss", "feature" or "width" figure (stays in a saved notebook)."""
        if which not in ("loss", "feature", "width"):
            raise ValueError(f"which: expected 'loss', 'feature' or 'width', got {which!r}")
        fig = go.Figure(getattr(self, f"{which}_figure").to_dict())
        fig.update_traces(uid=None)  # FigureWidget's random trace ids would differ on every run
        return fig

    # ------------------------------------------------------------------ internals
    def _start(self, kind: str, wait: bool) -> "Dashboard":
        if self._closed:
            raise RuntimeError(f"{kind}(): this dashboard is closed; make a new one with ml.Dashboard()")
        settings, self._kind, requested = self.settings(), kind, time.monotonic()
        self.last_settings = settings
        body = {"run": self._train_job, "compare": self._train_job, "width": self._width_job}[kind]
        params = [settings.param] if kind == "run" else ["sp", "mup"]
        self._job = Job(lambda job: body(job, settings, params, requested), previous=self._job,
                        on_error=self._show_error, name=kind).start()
        if wait:
            self.join()
        return self

    def _on_change(self, name: str) -> None:
        if self._quiet:
            return
        if name == "optimizer":  # jump to the optimizer's good defaults
            lr, damping = DEFAULTS[self.controls["optimizer"].value]
            self._quiet = True
            try:
                self.controls["lr"].value = lr
                if damping is not None:
                    self.controls["damping"].value = damping
                self._enable_controls(self.controls["optimizer"].value)
            finally:
                self._quiet = False
        if self.running and not self._closed:  # restart what was running with the new settings
            self._start(self._kind, wait=False)

    def _enable_controls(self, optimizer: str) -> None:
        """Damping (SOAP's eps) and memory for K-FAC, FOOF, Shampoo, SOAP; the Fisher for K-FAC, FOOF."""
        c = self.controls
        c["damping"].disabled, c["memory"].disabled = DEFAULTS[optimizer][1] is None, optimizer not in MEMORY
        c["fisher"].disabled = optimizer not in ("kfac", "foof")

    def _set_status(self, text: str, color: str = "#333") -> None:
        self._status = text
        self.status_widget.value = f'<span style="color:{color}; font-family:monospace">{html.escape(text)}</span>'

    def _show_error(self, error: BaseException) -> None:
        self._set_status(f"error: {type(error).__name__}: {error}", "#c00")

    def _device_name(self) -> str:
        if self.device.type == "cuda":
            import torch
            return f"cuda ({torch.cuda.get_device_name(self.device)})"
        return str(self.device)


# ---------------------------------------------------------------------- argument checks
def _integer(arg: str, value, lo: int | None = None, hi: int | None = None, allow_zero: bool = False,
             where: str = "the slider's range") -> int:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = int(value)  # numpy integers too
    check_positive(arg, value, integer=True, allow_zero=allow_zero)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f"{arg}: expected an integer in {lo}..{hi} ({where}), got {value!r}")
    return value


def _number(arg: str, value, lo: float, hi: float) -> float:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        value = float(value)  # numpy floats too
    check_positive(arg, value)
    if not lo <= value <= hi:
        raise ValueError(f"{arg}: expected a number in [{lo:g}, {hi:g}] (the slider's range), got {value!r}")
    return float(value)


def _sequence(arg: str, value) -> tuple:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError(f"{arg}: expected a list or tuple of integers, got {value!r} ({type(value).__name__})")
    return tuple(value)


def _memory(value) -> float:
    allowed = [v for _, v in MEMORY_CHOICES]
    want = f"one of {', '.join(f'{v:g}' for v in allowed)} (the decay of the curvature average; 0: this batch's)"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"memory: expected {want}, got {value!r} ({type(value).__name__})")
    for v in allowed:  # float32 0.95 is the choice 0.95
        if math.isclose(value, v, rel_tol=1e-6):
            return v
    raise ValueError(f"memory: expected {want}, got {value!r}")


def check_arguments(width, lr, damping, optimizer, param, dataset, depth, batch_size, steps, seed, fisher, memory,
                    datasets, coord_widths, coord_steps, coord_seeds, update_interval) -> dict:
    """Dashboard's arguments checked and normalized; ValueError/TypeError naming the bad one."""
    optimizer = check_choice("optimizer", optimizer, OPTIMIZER_NAMES)
    param = check_choice("param", param, PARAM_NAMES)
    if datasets is None:
        datasets = {}
    if not isinstance(datasets, dict):
        raise TypeError(f"datasets: expected a dict {{name: Dataset or function}}, got {type(datasets).__name__}")
    for name, source in datasets.items():
        if not isinstance(name, str):
            raise TypeError(f"datasets: expected string names, got {name!r} ({type(name).__name__})")
        if not (isinstance(source, Dataset) or callable(source)):
            raise TypeError(f"datasets[{name!r}]: expected an ml.datasets Dataset or a function returning one, "
                            f"got {source!r} ({type(source).__name__})")
    names = dataset_names(datasets)
    if not isinstance(dataset, str) or dataset not in names:
        raise ValueError(f"dataset: expected one of {', '.join(map(repr, names))} (add others with "
                         f"datasets={{name: Dataset}}), got {dataset!r}")
    lr0, damping0 = DEFAULTS[optimizer]
    fisher = check_choice("fisher", fisher, FISHER_NAMES)
    out = dict(optimizer=optimizer, param=param, dataset=dataset, datasets=dict(datasets), fisher=fisher,
               memory=_memory(memory),
               width=_integer("width", width, *WIDTHS),
               lr=_number("lr", lr0 if lr is None else lr, *LRS),
               damping=_number("damping", (damping0 or 1e-3) if damping is None else damping, *DAMPINGS),
               depth=_integer("depth", depth, *DEPTHS), steps=_integer("steps", steps, *STEPS),
               batch_size=_integer("batch_size", batch_size), seed=_integer("seed", seed, allow_zero=True),
               coord_steps=_integer("coord_steps", coord_steps),
               update_interval=float(check_positive("update_interval", update_interval, allow_zero=True)))
    if out["batch_size"] not in BATCH_SIZES:
        raise ValueError(f"batch_size: expected one of {', '.join(map(str, BATCH_SIZES))} (the slider's "
                         f"options), got {batch_size!r}")
    if coord_widths is not None:
        widths = [_integer(f"coord_widths[{i}]", w, 1, WIDTHS[1], where="at most the width slider's maximum")
                  for i, w in enumerate(_sequence("coord_widths", coord_widths))]
        if len(set(widths)) < 2 or len(set(widths)) != len(widths):
            raise ValueError(f"coord_widths: expected at least 2 distinct widths (a slope needs two), "
                             f"got {coord_widths!r}")
        coord_widths = sorted(widths)
    seeds = [_integer(f"coord_seeds[{i}]", x, allow_zero=True)
             for i, x in enumerate(_sequence("coord_seeds", coord_seeds))]
    if not seeds:
        raise ValueError(f"coord_seeds: expected at least one seed, got {coord_seeds!r}")
    return {**out, "coord_widths": coord_widths, "coord_seeds": tuple(seeds)}
