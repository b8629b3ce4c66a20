"""Background jobs and throttled live figures for the dashboard (no widgets, no training math).

A ``Job`` runs one function in a daemon thread with a ``threading.Event`` stop flag. A new
job first stops and waits for the job it replaces, so at most one run touches the figures
at a time and the notebook's own thread never blocks. ``LiveFigure`` keeps the numbers of
each trace in plain Python lists and pushes them to a plotly ``FigureWidget`` at most every
``interval`` seconds (one batched message per push), so a fast run cannot flood the browser.
"""
from __future__ import annotations

import threading
import time
from typing import Callable


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
        self.thread = threading.Thread(target=self._main, name=f"mupso-dashboard-{name}", daemon=True)

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
        if self.previous is not None:
            self.previous.join()
            self.previous = None  # let the finished job be garbage-collected
        if self.stopped:  # replaced before it could start
            return
        try:
            self.target(self)
        except Exception as e:  # noqa: BLE001 - shown in the status line instead
            self.error = e
            if self.on_error is not None:
                self.on_error(e)


class Throttle:
    """``ready()`` is True at most once every ``interval`` seconds (and always when forced)."""

    def __init__(self, interval: float = 0.15):
        self.interval, self.last = interval, float("-inf")

    def ready(self, force: bool = False) -> bool:
        now = time.monotonic()
        if force or now - self.last >= self.interval:
            self.last = now
            return True
        return False


class LiveFigure:
    """The data of a FigureWidget's traces, kept here and pushed in throttled batches.

    ``reset(traces)`` replaces all traces (a list of ``go.Scatter``); ``add(i, x, y)``
    appends a point to trace ``i``; ``set(i, xs, ys)`` replaces its data; ``flush()``
    sends everything that changed since the last flush in one ``batch_update``.
    """

    def __init__(self, figure, interval: float = 0.15):
        self.figure = figure
        self.throttle = Throttle(interval)
        self.xs: list[list] = []
        self.ys: list[list] = []
        self.dirty: set[int] = set()
        self.pushes = 0  # how many batched updates reached the figure (for tests and timing)

    def reset(self, traces: list, layout: dict | None = None) -> None:
        self.xs = [list(t.x or []) for t in traces]
        self.ys = [list(t.y or []) for t in traces]
        self.dirty.clear()
        with self.figure.batch_update():
            self.figure.data = []
            self.figure.add_traces(traces)
            if layout:
                self.figure.update_layout(**layout)

    def add(self, i: int, x, y) -> None:
        self.xs[i].append(x)
        self.ys[i].append(y)
        self.dirty.add(i)

    def set(self, i: int, xs, ys) -> None:
        self.xs[i], self.ys[i] = list(xs), list(ys)
        self.dirty.add(i)

    def flush(self, force: bool = False) -> bool:
        """Push the changed traces if the throttle allows (or ``force``); True if pushed."""
        if not self.dirty or not self.throttle.ready(force):
            return False
        with self.figure.batch_update():
            for i in sorted(self.dirty):
                self.figure.data[i].x = self.xs[i]
                self.figure.data[i].y = self.ys[i]
        self.dirty.clear()
        self.pushes += 1
        return True
