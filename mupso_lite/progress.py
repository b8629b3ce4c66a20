"""A sweep's progress line: runs done / total, running, diverged, elapsed, an estimate of the time left.

``sweep()`` shows it from its first second, because its first result can be minutes away (the
local pool's workers start and import torch first, and one large run can come early). In a
Jupyter kernel it is one display updated in place (a saved notebook keeps its last state), in a
terminal one line redrawn with a carriage return, in a file or a pipe a line at the start, at the
end and at most one every 30 s. The estimate weighs each run by ``run_cost``.
"""
from __future__ import annotations

import contextvars
import json
import sys
import threading
import time


def _canonical(cfg: dict) -> str:
    return json.dumps(cfg, sort_keys=True)


class NoProgress:
    """What ``progress=False`` (or nothing to run) shows: nothing."""

    def start(self):
        return self

    def running(self, n):
        pass

    def update(self, n=1, status="ok", cfg=None, ran=True):
        pass

    def close(self):
        pass


def run_cost(cfg: dict) -> float:
    """A rough relative cost of one run, for the sweep's time estimate: per step, a fixed cost (the
    Python around the step) plus the forward and backward passes, batch × width² per hidden layer,
    plus, for Shampoo, SOAP and Muon, their width³ matrix roots or iterations (K-FAC's default fast
    path costs about what SGD does). Only the ratios between runs matter; on 2 CPU cores it puts
    SGD's width-4096 run at about 90 times its width-64 run, as measured."""
    width, layers = cfg["width"], max(cfg["depth"] - 1, 1)
    work = cfg["batch_size"] * width ** 2 * layers * (9 if cfg.get("model") == "cnn" else 1)
    if cfg["optimizer"] in ("shampoo", "soap", "muon"):
        work += 2 * width ** 3 * layers
    overhead = _STEP_OVERHEAD * (1 if cfg["optimizer"] in ("sgd", "adam") else 2)
    return cfg["steps"] * (overhead + work)


_STEP_OVERHEAD = 2.4e7   # the work (batch x width^2 units) that takes as long as one SGD step's fixed cost


class SweepProgress:
    """The progress of a sweep, redrawn every ``interval`` seconds from a background thread, so
    that the elapsed time moves while runs are under way (a run can take minutes, and the local
    pool's first result comes late: its workers start and import torch first).

    One line: runs done / total, how many are running, the diverged and failed ones so far, the
    elapsed time and an estimate of the time left (from the runs finished so far, weighed by
    ``run_cost``, so that a few large runs at the end do not fool it). In a Jupyter kernel the
    line is one display that is updated in place (``display_id``): JupyterLab shows it live, and
    a saved notebook keeps only its last state. In a terminal it is redrawn in place with a
    carriage return; written to a file or a pipe, one line every ``log_interval`` seconds at most.
    """

    def __init__(self, configs, key=None, skipped=0, interval=1.0, log_interval=30.0, stream=None,
                 notebook=None):
        self.key = key if key is not None else _canonical   # a config's identity: the sweep's config_key
        self.costs = {self.key(c): run_cost(c) for c in configs}
        self.total, self.skipped, self.interval, self.log_interval = len(self.costs), skipped, interval, log_interval
        self.done, self.n_running, self.statuses = 0, 0, {}
        self.done_cost, self.left_cost = 0.0, sum(self.costs.values())   # of the runs finished here; still to run
        self.notebook = _in_kernel() if notebook is None else notebook
        self.stream = stream if stream is not None else sys.stderr
        self.tty = not self.notebook and _isatty(self.stream)
        self.started = self.last_log = time.monotonic()
        self.handle, self.thread, self.closed, self.shown = None, None, False, 0
        self.lock, self.wake = threading.Lock(), threading.Event()

    def start(self):
        self.started = self.last_log = time.monotonic()
        if self.notebook:
            try:
                from IPython.display import display
                self.handle = display({"text/plain": self.line()}, raw=True, display_id=True)
            except Exception:   # noqa: BLE001 - no display: the text on the stream instead
                self.notebook, self.handle, self.tty = False, None, _isatty(self.stream)
        if self.tty:
            self._draw()
        elif not self.notebook:
            self._write(self.line() + "\n")
        if self.notebook or self.tty:   # a thread that inherits this cell's output context
            ctx = contextvars.copy_context()
            self.thread = threading.Thread(target=ctx.run, args=(self._tick,), daemon=True, name="sweep-progress")
            self.thread.start()
        return self

    def running(self, n):
        self.n_running = n

    def update(self, n=1, status="ok", cfg=None, ran=True):
        """``n`` more runs finished (``ran=False``: by another sweep on the same file)."""
        cost = self.costs.get(self.key(cfg), 0.0) if cfg is not None else 0.0
        with self.lock:
            self.done += n
            self.left_cost -= cost
            self.done_cost += cost if ran else 0.0
            if status != "ok":
                self.statuses[status] = self.statuses.get(status, 0) + n
        self.wake.set()   # redraw now
        if not self.notebook and not self.tty and time.monotonic() - self.last_log >= self.log_interval:
            self.last_log = time.monotonic()
            self._write(self.line() + "\n")

    def close(self):
        if self.closed:
            return
        self.closed = True
        self.wake.set()
        if self.thread is not None:
            self.thread.join(5)
        self.n_running = 0
        self._draw(final=True)

    # drawing
    def line(self, final=False) -> str:
        with self.lock:
            done, running, statuses = self.done, self.n_running, dict(self.statuses)
            done_cost, left_cost = self.done_cost, self.left_cost
        elapsed = time.monotonic() - self.started
        width = 20
        filled = int(width * done / self.total) if self.total else width
        parts = [f"sweep [{'█' * filled}{'░' * (width - filled)}] {done}/{self.total} runs done"
                 + (f", {running} running" if running and not final else "")
                 + (f" ({self.skipped} done before)" if self.skipped else "")]
        parts += [f"{statuses[k]} {k}" for k in sorted(statuses)]
        parts.append(f"{_clock(elapsed)} elapsed")
        if not final and done < self.total:
            if done_cost > 0:
                parts.append(f"about {_clock(elapsed * max(left_cost, 0.0) / done_cost)} left")
            else:
                parts.append("time left: estimated once a run finishes")
        return " · ".join(parts)

    def _draw(self, final=False):
        text = self.line(final)
        if self.notebook and self.handle is not None:
            self.handle.update({"text/plain": text}, raw=True)
        elif self.tty:   # padded: a shorter line must cover the longer one before it
            self._write("\r" + text.ljust(self.shown) + ("\n" if final else ""))
            self.shown = len(text)
        elif final:
            self._write(text + "\n")

    def _tick(self):
        while not self.closed:
            self.wake.wait(self.interval)
            self.wake.clear()
            if self.closed:
                return
            try:
                self._draw()
            except Exception:   # noqa: BLE001 - a display that fails must not stop the sweep
                return
            time.sleep(min(0.25, self.interval))   # at most 4 redraws a second, however fast runs finish

    def _write(self, text):
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _in_kernel() -> bool:
    """Whether this runs in a Jupyter kernel (JupyterLab, papermill, nbval), where a display can be updated."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None
