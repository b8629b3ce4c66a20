"""The interactive dashboard: ``ml.Dashboard()`` in a notebook (the last expression, or ``.show()``).

Pick a width, learning rate, damping, optimizer, parametrization (SP or μP), dataset, depth,
batch size and number of steps (and, for K-FAC, FOOF, Shampoo and SOAP, the curvature memory: this
batch's curvature at every step, as in the theory, or an average over past batches), then:

* **Run** trains one MLP and plots its training loss, its test accuracy and the feature
  change of every layer, rms(h_l(t) - h_l(0)), step by step, over the last two runs' curves
  faded ("earlier: width 128"), so a change of width shows whether the curves move;
* **Compare SP vs μP** trains the same model twice, once per parametrization, overlaid;
* **Width view** runs a coordinate check: a few steps at several widths around the width
  control, feature change against width on log-log axes, with μP's prediction (a flat line,
  slope 0) dashed, and ``ml.coord_check``'s verdict in the status line;
* **Stop** ends the run within one step. Moving any control during a run stops it and restarts
  it once the controls have been still for ``RESTART_DELAY`` (0.4 s): a burst of changes (a
  slider's key presses) starts one run, with the last values.

Training runs in a background thread (``live.Job``), so the notebook stays usable; the
status line says "running …" the moment a run is asked for, and the figures are refreshed at
most ~7 times a second, and no faster than the browser draws them (``live.LiveFigure``).
Nothing here does training math: models,
optimizers and the training loop all come from ``mupso_lite`` itself. Everything the buttons
do is a method too (``run``, ``compare``, ``width_view``, ``stop``, ``join``), so a script or a
test can drive the dashboard without a browser and read ``records``, ``status``, ``verdict()``
and the figures.

Bad arguments raise (ValueError/TypeError naming the argument) before any widget or thread
exists; a divergence shows in red with what to change and as a mark on the loss plot (zoomed
to the steps that ran); an
error inside a run shows in the status line. ``close()`` stops the run and closes every widget.
"""
from __future__ import annotations

import html
import math
import threading
import time

import ipywidgets as W
import plotly.graph_objects as go

from .dashboard_args import (  # noqa: F401 - the controls' ranges and choices, importable from here too
    BATCH_SIZES, DAMPINGS, DEPTHS, FISHER_CHOICES, FISHER_NAMES, LRS, MEMORY_CHOICES, OPTIMIZER_NAMES, PARAM_NAMES,
    STEPS, _memory, check_arguments)
from .dashboard_runs import (  # noqa: F401
    DEFAULTS, FEATURE_TITLE, MEMORY, OPTIMIZERS, PARAMS, WIDTHS, Runs, Settings, dataset_names, starting_line,
    width_axis)
from .data import Dataset
from .live import (JOB_THREAD, LOG_AXIS, Job, LiveFigure, Settle, choice_control, drop_file_watch, figure_widget,
                   widget_tree)
from .checks import check_choice
from .train import resolve_device

RESTART_DELAY = 0.4  # seconds the controls must be still before a run restarts with their values


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
        self._settle = Settle(RESTART_DELAY)  # coalesces the restarts of a burst of control changes
        self._closed = False
        self._blocking = 0  # threads in join(): while the kernel's own thread waits, it hears no browser
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
        def hears_acks():   # the browser's acknowledgements reach the kernel, unless join() blocks it
            return self._blocking == 0
        self.live = {name: LiveFigure(getattr(self, f"{name}_figure"), self._interval, hears_acks=hears_acks)
                     for name in ("loss", "feature", "width")}

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
        self._shown, self._earlier = None, []
        for live in self.live.values():  # drop the traces' data even if something still holds a figure
            live.reset([])
            live.detach()
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
        """Wait for the current run; True if it has finished.

        In a notebook this blocks the kernel: until it returns, the kernel hears nothing from the
        browser, so meanwhile the figures are pushed every ``update_interval`` seconds without
        waiting for the browser's acknowledgements (``live.LiveFigure``)."""
        if self._job is None:
            return True
        self._blocking += 1
        try:
            return self._job.join(timeout)
        finally:
            self._blocking -= 1

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
    def _start(self, kind: str, wait: bool, settle: bool = False) -> "Dashboard":
        """Start a ``kind`` job (replacing the one running); ``settle``: a restart after a control
        moved, which waits until the controls have been still for ``RESTART_DELAY`` seconds and
        then runs with the settings of that moment (so a burst of changes starts one run)."""
        if self._closed:
            raise RuntimeError(f"{kind}(): this dashboard is closed; make a new one with ml.Dashboard()")
        settings, self._kind, requested = self.settings(), kind, time.monotonic()
        self.last_settings = settings
        body = {"run": self._train_job, "compare": self._train_job, "width": self._width_job}[kind]

        def target(job, s=settings, t0=requested):
            if settle:
                if not self._settle.wait(job):
                    return
                s = self.last_settings = self.settings()
                self._set_status(self._starting_line(kind, s))
                t0 = time.monotonic()
            body(job, s, [s.param] if kind == "run" else ["sp", "mup"], t0)
        job = Job(target, previous=self._job, on_error=self._show_error, name=kind)
        self._job = job  # before it starts: a replaced job's late status lines are dropped from now on
        if settle:
            self._settle.begin(job)
        self._set_status(self._starting_line(kind, settings))
        job.start()
        if wait:
            self.join()
        return self

    def _starting_line(self, kind: str, s: Settings) -> str:
        return starting_line(kind, s, self._device_name(), self.width_view_widths(s.width))

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
        if self.running and not self._closed:  # restart what was running with the new settings, once
            if self._settle.touch(self._job):   # a restart is already waiting: it will read this change
                self.last_settings = self.settings()
                return
            self._start(self._kind, wait=False, settle=True)

    def _enable_controls(self, optimizer: str) -> None:
        """Damping (SOAP's eps) and memory for K-FAC, FOOF, Shampoo, SOAP; the Fisher for K-FAC, FOOF."""
        c = self.controls
        c["damping"].disabled, c["memory"].disabled = DEFAULTS[optimizer][1] is None, optimizer not in MEMORY
        c["fisher"].disabled = optimizer not in ("kfac", "foof")

    def _set_status(self, text: str, color: str = "#333") -> None:
        thread, job = threading.current_thread(), self._job
        if thread.name.startswith(JOB_THREAD) and (job is None or thread is not job.thread):
            return  # a replaced run finishing: the new run's line stays
        self._status = text
        self.status_widget.value = f'<span style="color:{color}; font-family:monospace">{html.escape(text)}</span>'

    def _show_error(self, error: BaseException) -> None:
        self._set_status(f"error: {type(error).__name__}: {error}", "#c00")

    def _device_name(self) -> str:
        if self.device.type == "cuda":
            import torch
            return f"cuda ({torch.cuda.get_device_name(self.device)})"
        return str(self.device)
