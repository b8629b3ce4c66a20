"""The interactive dashboard: ``ml.Dashboard()`` in a notebook (the last expression, or ``.show()``).

Pick a width, learning rate, damping, optimizer, parametrization (SP or μP), dataset, depth,
batch size and number of steps, then:

* **Run** trains one MLP and plots its training loss, its test accuracy and the feature
  change of every layer, rms(h_l(t) - h_l(0)), step by step;
* **Compare SP vs μP** trains the same model twice, once per parametrization, overlaid;
* **Width view** runs a coordinate check: a few steps at several widths, feature change
  against width on log-log axes, with μP's prediction (a flat line, slope 0) dashed;
* **Stop** ends the run within one step. Moving any control during a run restarts it.

Training runs in a background thread (``live.Job``), so the notebook stays usable; the
figures are refreshed at most ~7 times a second. Nothing here does training math: models,
optimizers and the training loop all come from ``mupso_lite`` itself. Everything the buttons
do is a method too (``run``, ``compare``, ``width_view``, ``stop``, ``join``), so a script or a
test can drive the dashboard without a browser and read ``records``, ``status`` and the figures.
"""
from __future__ import annotations

import html
import threading
import time

import ipywidgets as W
import plotly.graph_objects as go

from .dashboard_runs import DEFAULTS, OPTIMIZERS, PARAMS, Runs, Settings, builtin_datasets
from .data import Dataset
from .live import Job, LiveFigure
from .train import resolve_device


class Dashboard(Runs):
    """Widgets and live plotly figures around ``ml.train``; see the module docstring.

    Args are the controls' starting values; ``lr``/``damping`` default to good values for
    the optimizer. ``datasets`` adds choices: {name: Dataset or zero-argument function}.
    ``coord_widths``, ``coord_steps``, ``coord_seeds`` configure the width view
    (default widths: powers of two from 64 up to the width control, at least 256).
    """

    def __init__(self, width: int = 256, lr: float | None = None, damping: float | None = None,
                 optimizer: str = "sgd", param: str = "mup", dataset: str = "digits", depth: int = 3,
                 batch_size: int = 64, steps: int = 200, seed: int = 0, datasets: dict | None = None,
                 device: str = "auto", coord_widths=None, coord_steps: int = 3, coord_seeds=(0,),
                 update_interval: float = 0.15):
        self.extra_datasets = dict(datasets or {})
        self.seed, self.coord_widths, self.coord_steps = seed, coord_widths, coord_steps
        self.coord_seeds, self._interval = tuple(coord_seeds), update_interval
        self.device = resolve_device(device)
        self._data_cache: dict[str, Dataset] = {}
        self._data_lock = threading.Lock()
        self._job: Job | None = None
        self._kind = "run"
        self._quiet = False
        self._status = ""
        self.last_settings: Settings | None = None  # the settings the latest run started with
        self.records: list[dict] = []        # per-step records of the last run (compare: both params)
        self.width_points: list[dict] = []   # width view: one row per (width, seed, layer)
        self.timings: dict[str, float] = {}  # first_point_s, steps_per_s of the last run
        self.messages: list[str] = []        # divergence messages of the last run
        lr0, damping0 = DEFAULTS[optimizer]
        self._build_controls(width, lr if lr is not None else lr0,
                             damping if damping is not None else (damping0 or 1e-3),
                             optimizer, param, dataset, depth, batch_size, steps)
        self._build_figures()
        self._set_status(f"device: {self._device_name()} · ready: press Run")

    # ------------------------------------------------------------------ controls and layout
    def _build_controls(self, width, lr, damping, optimizer, param, dataset, depth, batch_size, steps):
        style, wide = {"description_width": "100px"}, W.Layout(width="330px")
        kw = dict(continuous_update=False, style=style, layout=wide)
        c = self.controls = {
            "width": W.FloatLogSlider(value=width, base=2, min=5, max=12, step=1, description="width M",
                                      readout_format=".0f", **kw),
            "lr": W.FloatLogSlider(value=lr, base=10, min=-4, max=1, step=0.1, description="learning rate",
                                   readout_format=".2g", **kw),
            "damping": W.FloatLogSlider(value=damping, base=10, min=-6, max=0, step=0.1, description="damping",
                                        readout_format=".1e", **kw),
            "optimizer": W.Dropdown(options=OPTIMIZERS, value=optimizer, description="optimizer",
                                    style=style, layout=wide),
            "param": W.ToggleButtons(options=PARAMS, value=param, description="parametrization",
                                     style={**style, "button_width": "70px"}, layout=wide),
            "dataset": W.Dropdown(options=builtin_datasets() + list(self.extra_datasets), value=dataset,
                                  description="dataset", style=style, layout=wide),
            "depth": W.IntSlider(value=depth, min=2, max=6, description="depth (layers)", **kw),
            "batch_size": W.SelectionSlider(options=[16, 32, 64, 128, 256, 512], value=batch_size,
                                            description="batch size", **kw),
            "steps": W.IntSlider(value=steps, min=5, max=2000, step=5, description="steps", **kw),
        }
        c["damping"].disabled = DEFAULTS[optimizer][1] is None
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
        def figure(title, x, y, **layout):
            return go.FigureWidget(layout=dict(
                title=dict(text=title, font_size=14), height=330, width=520, xaxis_title=x, yaxis_title=y,
                margin=dict(l=60, r=20, t=50, b=45), legend=dict(font_size=10), **layout))
        self.loss_figure = figure("training loss and test accuracy", "step", "loss", yaxis_type="log",
                                  yaxis2=dict(title="test accuracy", overlaying="y", side="right",
                                              type="linear", range=[0, 1], tickmode="linear", tick0=0, dtick=0.2,
                                              showgrid=False))
        self.feature_figure = figure("feature change rms(h_l(t) − h_l(0))", "step", "feature change",
                                     yaxis_type="log")
        self.width_figure = figure("width view: feature change after a few steps", "width M",
                                   "feature change", xaxis_type="log", yaxis_type="log")
        self.width_figure.update_layout(width=700)
        self.live = {"loss": LiveFigure(self.loss_figure, self._interval),
                     "feature": LiveFigure(self.feature_figure, self._interval),
                     "width": LiveFigure(self.width_figure, self._interval)}

    @property
    def widget(self) -> W.Widget:
        """The whole dashboard as one ipywidgets box (built once)."""
        if not hasattr(self, "_widget"):
            c, b = self.controls, self.buttons
            grid = W.GridBox([c["width"], c["lr"], c["damping"], c["optimizer"], c["param"], c["dataset"],
                              c["depth"], c["batch_size"], c["steps"]],
                             layout=W.Layout(grid_template_columns="repeat(3, 340px)"))
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
        """Ask the run to end; it does so after the step in progress."""
        if self._job is not None:
            self._job.stop()

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
                        batch_size=int(v["batch_size"]), steps=int(v["steps"]), seed=self.seed)

    def snapshot(self, which: str = "loss") -> go.Figure:
        """A static copy of the "loss", "feature" or "width" figure (stays in a saved notebook)."""
        if which not in ("loss", "feature", "width"):
            raise ValueError(f"which: expected 'loss', 'feature' or 'width', got {which!r}")
        fig = go.Figure(getattr(self, f"{which}_figure").to_dict())
        fig.update_traces(uid=None)  # FigureWidget's random trace ids would differ on every run
        return fig

    # ------------------------------------------------------------------ internals
    def _start(self, kind: str, wait: bool) -> "Dashboard":
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
                self.controls["damping"].disabled = damping is None
            finally:
                self._quiet = False
        if self.running:  # restart what was running with the new settings
            self._start(self._kind, wait=False)

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
