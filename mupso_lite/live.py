"""Background jobs, throttled live figures and their look, for the dashboard (no training math).

A ``Job`` runs one function in a daemon thread with a ``threading.Event`` stop flag. A new
job first stops and waits for the job it replaces, so at most one run touches the figures
at a time and the notebook's own thread never blocks. A finished job keeps nothing of its
run alive: it drops its target, the job it replaced and the traceback of its error (whose
frames would hold the run's model and optimizer); ``job.traceback`` keeps the text.

``LiveFigure`` keeps the numbers of each trace in plain Python lists and pushes them to a
plotly ``FigureWidget`` at most every ``interval`` seconds (one batched message per push),
and, once a browser draws the figure, only after the browser has drawn the previous push
(plotly's views acknowledge every trace edit): a slow or vanished browser gets one push every
``ack_timeout`` seconds instead of a flood that piles up in the Jupyter server (and, when the
page goes away, is logged message by message in the server's terminal). The figures are
``plotly_widget.FigureWidget``, set up in the browser at once so a busy laptop does not leave
them blank. ``figure_widget`` and ``LOG_AXIS`` give every figure the same readable layout
(legend below the axes, decade-only log ticks, human axis titles);
``widget_tree`` and ``drop_file_watch`` help ``Dashboard.close`` free every widget.
"""
from __future__ import annotations

import math
import numbers
import threading
import time
import traceback
from typing import Callable

import ipywidgets as W
import traitlets

from .plotly_widget import FigureWidget, edit_id


JOB_THREAD = "mupso-dashboard-"  # the name of every job's thread starts so


class Job:
    """``target(job)`` in a background thread; ``job.stop_event`` asks it to end.

    Any exception raised by ``target`` is caught and stored in ``job.error`` (and handed
    to ``on_error``), so a failing run never kills the widget that started it.
    """

    def __init__(self, target: Callable[["Job"], None], previous: "Job | None" = None,
                 on_error: Callable[[BaseException], None] | None = None, name: str = "run"):
        self.target, self.previous, self.on_error, self.name = target, previous, on_error, name
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.traceback = ""  # the formatted traceback of ``error``
        self.thread = threading.Thread(target=self._main, name=f"{JOB_THREAD}{name}", daemon=True)

    def start(self) -> "Job":
        if self.previous is not None:
            self.previous.stop()  # ask now; the new thread waits for it to finish
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()

    @property
    def stopped(self) -> bool:
        return self.stop_event.is_set()

    def is_alive(self) -> bool:
        return self.thread.is_alive()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the job (and the one it replaced); True if it has finished."""
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def _main(self) -> None:
        try:
            if self.previous is not None:
                self.previous.join()
                self.previous = None  # let the finished job be garbage-collected
            if self.stopped:  # replaced before it could start
                return
            self.target(self)
        except Exception as e:  # noqa: BLE001 - shown in the status line instead
            self.traceback = traceback.format_exc()
            self.error = _without_frames(e)
            if self.on_error is not None:
                self.on_error(self.error)
        finally:
            self.target = self.on_error = None  # closures over the run's settings and figures


def _without_frames(error: BaseException) -> BaseException:
    """``error`` with the tracebacks of it and its causes cleared (they hold the run's locals)."""
    seen, e = set(), error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        e.__traceback__ = None
        e = e.__cause__ or e.__context__
    return error


class Settle:
    """Coalesces a burst of control changes into one restart: ``touch(job)`` records a change
    (True if ``job`` is a restart still waiting, which will read the latest settings), ``begin(job)``
    makes ``job`` the waiting restart, and ``wait(job)``, in its thread, returns once nothing has
    changed for ``delay`` seconds (False if the job was stopped meanwhile)."""

    def __init__(self, delay: float = 0.4):
        self.delay, self.lock, self.last, self.waiting = delay, threading.Lock(), float("-inf"), None

    def touch(self, job: "Job | None") -> bool:
        with self.lock:
            self.last = time.monotonic()
            return job is not None and self.waiting is job and not job.stopped

    def begin(self, job: "Job") -> None:
        with self.lock:
            self.waiting = job

    def wait(self, job: "Job") -> bool:
        while True:
            with self.lock:
                left = self.delay - (time.monotonic() - self.last)
                if left <= 0:
                    if self.waiting is job:
                        self.waiting = None
                    return not job.stopped
            if job.stop_event.wait(left):
                return False


ACK_TIMEOUT = 5.0   # seconds a push waits for the browser's acknowledgement of the previous one


class LiveFigure:
    """The data of a FigureWidget's traces, kept here and pushed in throttled batches.

    ``reset(traces)`` replaces all traces (a list of ``go.Scatter``) and removes the marks;
    ``add(i, x, y)`` appends a point to trace ``i``; ``set(i, xs, ys)`` replaces its data;
    ``flush()`` sends everything that changed since the last flush in one ``batch_update``;
    ``mark(x, text)`` draws a labelled vertical line (a layout shape and annotation, so the
    browser shows it too), its label inside the plot; ``set_x_range(lo, hi)`` zooms the x axis.
    Non-finite values are stored as None: a gap in the line.

    Pacing: a push waits ``interval`` seconds after the previous one and, while a browser view
    draws this figure (it has acknowledged an edit) and has not acknowledged the previous push
    yet, ``ack_timeout`` seconds. ``hears_acks()`` is False while the kernel cannot receive the
    acknowledgements (``Dashboard.join`` blocks it): then only ``interval`` counts.
    """

    def __init__(self, figure, interval: float = 0.15, ack_timeout: float = ACK_TIMEOUT,
                 hears_acks: Callable[[], bool] = lambda: True):
        self.interval, self.ack_timeout, self.hears_acks = interval, ack_timeout, hears_acks
        self.xs: list[list] = []
        self.ys: list[list] = []
        self.dirty: set[int] = set()
        self.pushes = 0  # how many batched updates reached the figure (for tests and timing)
        self.last_push = float("-inf")
        self.figure = figure
        self.acked = -1   # the newest edit a browser view has acknowledged (-1: none yet)
        figure.observe(self._on_ack, names="_js2py_traceDeltas")

    # ------------------------------------------------------------------ the browser's acknowledgements
    def detach(self) -> None:
        """Stop listening to the figure's views (``Dashboard.close``)."""
        try:
            self.figure.unobserve(self._on_ack, names="_js2py_traceDeltas")
        except ValueError:
            pass

    def _on_ack(self, change) -> None:
        message = change["new"]   # {"trace_edit_id": n, "trace_deltas": [...]}; plotly resets it to None
        if isinstance(message, dict) and isinstance(message.get("trace_edit_id"), int):
            self.acked = max(self.acked, message["trace_edit_id"])

    def behind(self) -> bool:
        """True while a browser draws this figure and has yet to draw the last push."""
        return self.hears_acks() and 0 <= self.acked < edit_id(self.figure)

    # ------------------------------------------------------------------ the data
    def reset(self, traces: list, layout: dict | None = None) -> None:
        self.xs = [list(t.x or []) for t in traces]
        self.ys = [list(t.y or []) for t in traces]
        self.dirty.clear()
        with self.figure.batch_update():
            self.figure.data = []
            self.figure.add_traces(traces)
            self.figure.layout.shapes = []
            self.figure.layout.annotations = []
            if layout:
                self.figure.update_layout(**layout)

    def add(self, i: int, x, y) -> None:
        self.xs[i].append(x)
        self.ys[i].append(_finite(y))
        self.dirty.add(i)

    def set(self, i: int, xs, ys) -> None:
        self.xs[i], self.ys[i] = list(xs), [_finite(y) for y in ys]
        self.dirty.add(i)

    def mark(self, x, text: str, color: str = "#c00") -> None:
        """A dashed vertical line at ``x`` labelled ``text`` (e.g. where a run diverged); the
        labels of later marks sit lower, so two marks at the same step stay readable. The label
        sits inside the plot area: right of the line in the left half of the x range, left of
        it in the right half (``set_x_range`` moves it when the range changes)."""
        y = max(0.1, 1 - 0.08 * len(self.figure.layout.annotations))
        with self.figure.batch_update():
            self.figure.add_shape(type="line", xref="x", yref="paper", x0=x, x1=x, y0=0, y1=1,
                                  line=dict(color=color, width=1.5, dash="dash"))
            self.figure.add_annotation(x=x, xref="x", y=y, yref="paper", text=text, showarrow=False,
                                       yanchor="top", font=dict(color=color, size=11),
                                       bgcolor="rgba(255,255,255,0.8)", **self._label_side(x))

    def set_x_range(self, lo, hi) -> None:
        """Show x from ``lo`` to ``hi``, the marks' labels on the side of their line that stays inside."""
        with self.figure.batch_update():
            self.figure.layout.xaxis.range = [lo, hi]
            self.figure.layout.xaxis.autorange = False
            for note in self.figure.layout.annotations:
                note.update(**self._label_side(note.x, (lo, hi)))

    def _label_side(self, x, x_range=None) -> dict:
        lo, hi = x_range or self.figure.layout.xaxis.range or (None, None)
        if lo is None or hi is None or hi <= lo:
            return dict(xanchor="left", xshift=4)
        return dict(xanchor="left", xshift=4) if (x - lo) / (hi - lo) < 0.5 else dict(xanchor="right", xshift=-4)

    def flush(self, force: bool = False) -> bool:
        """Push the changed traces if the pacing allows (or ``force``); True if pushed."""
        if not self.dirty:
            return False
        now = time.monotonic()
        if not force and now - self.last_push < (self.ack_timeout if self.behind() else self.interval):
            return False
        with self.figure.batch_update():
            for i in sorted(self.dirty):
                self.figure.data[i].x = self.xs[i]
                self.figure.data[i].y = self.ys[i]
        self.dirty.clear()
        self.pushes += 1
        self.last_push = now
        return True


def _finite(y):
    return y if y is None or math.isfinite(y) else None


# ---------------------------------------------------------------------- the figures' look
# A log axis labelled at decades only (1, 10, 10², ... as powers), with unlabelled minor grid lines.
LOG_AXIS = dict(type="log", dtick=1, exponentformat="power",
                minor=dict(ticks="outside", ticklen=3, showgrid=True, gridcolor="rgba(0,0,0,0.05)"))


def figure_widget(title: str, x_title: str, y_title: str, width: int = 520, height: int = 400,
                  **layout) -> FigureWidget:
    """An empty ``FigureWidget`` with the dashboard's layout: axis titles in words and the
    legend in a row below the plot (never over the data, the right-hand axis or its title)."""
    base = dict(title=dict(text=title, font_size=14), height=height, width=width,
                xaxis=dict(title=dict(text=x_title)), yaxis=dict(title=dict(text=y_title)),
                margin=dict(l=70, r=60, t=50, b=40), plot_bgcolor="white",
                legend=dict(orientation="h", x=0, xanchor="left", y=-0.22, yanchor="top", font_size=10))
    fig = FigureWidget(layout=base)
    fig.update_layout(**layout)
    fig.update_xaxes(showline=True, linecolor="#888", gridcolor="#eee", zeroline=False)
    fig.update_yaxes(showline=True, linecolor="#888", gridcolor="#eee", zeroline=False)
    return fig


def log_range(lo: float, hi: float, pad: float = 1.25) -> list:
    """A log axis's ``range`` (log10 units) from ``lo / pad`` to ``hi * pad``."""
    return [math.log10(lo / pad), math.log10(hi * pad)]


# ---------------------------------------------------------------------- closing widgets
def widget_tree(roots) -> list:
    """The widgets in ``roots`` and every widget they hold (children, layout, style), each once."""
    seen, out, stack = set(), [], list(roots)
    while stack:
        widget = stack.pop()
        if id(widget) in seen:
            continue
        seen.add(id(widget))
        out.append(widget)
        for name in widget.keys:  # the synced traits: children, layout, style, ...
            value = getattr(widget, name, None)
            stack += [v for v in (value if isinstance(value, (list, tuple)) else [value]) if isinstance(v, W.Widget)]
    return out


def drop_file_watch(widget) -> None:
    """Disconnect ``widget`` from the file-change signal of its class's JavaScript source.

    anywidget connects every instance of a class whose JavaScript is a watched file (plotly's
    FigureWidget) to that file's ``changed`` signal, through a callback that holds the instance:
    a reference from the class, so a closed figure and its data would live as long as the
    kernel. This walks psygnal's slots (not public API), so it is best effort and never raises.
    """
    for cls in type(widget).__mro__:
        for key in ("_esm", "_css"):
            signal = getattr(cls.__dict__.get(key), "changed", None)
            for slot in list(getattr(signal, "_slots", ())):
                try:
                    callback = slot.dereference()
                    if any(cell.cell_contents is widget for cell in getattr(callback, "__closure__", None) or ()):
                        signal.disconnect(callback)
                except Exception:  # noqa: BLE001, S112 - an empty cell or a changed psygnal: leave it
                    continue


class ControlError(traitlets.TraitError, ValueError):
    """A value outside a control's options (a ValueError too, like the constructor's checks)."""


_CHECKED: dict = {}


def choice_control(cls, arg: str, normalize: Callable | None = None, **kw):
    """A ``cls`` selection widget (Dropdown, ToggleButtons, SelectionSlider) whose ``value =``
    takes what the Dashboard's argument takes (``normalize``: e.g. "KFAC" -> "kfac") and refuses
    anything else with an error naming ``arg`` and its options, instead of traitlets'
    "Invalid selection: value not found"."""
    if cls not in _CHECKED:
        class Checked(cls):
            def __init__(self, *, arg, normalize=None, **kw):
                self._arg, self._normalize = arg, normalize
                super().__init__(**kw)

            @traitlets.validate("value")
            def _validate_value(self, proposal):
                value = proposal.value
                if self._normalize is not None:
                    try:
                        value = self._normalize(value)
                    except (TypeError, ValueError) as e:
                        raise ControlError(str(e)) from None
                for option in self._options_values:
                    numeric = all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in (option, value))
                    if (numeric or type(option) is type(value)) and option == value:
                        return option
                options = ", ".join(map(repr, self._options_values))
                raise ControlError(f"{self._arg}: expected one of {options}, got {proposal.value!r}")
        Checked.__name__ = Checked.__qualname__ = f"Checked{cls.__name__}"
        _CHECKED[cls] = Checked
    return _CHECKED[cls](arg=arg, normalize=normalize, **kw)
