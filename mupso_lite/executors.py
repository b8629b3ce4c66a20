"""Where a sweep's runs execute: this process, a local process pool, or Ray.

Each executor runs ``fn(config, device)`` (``sweep.run_config``) and has the same small
interface: ``capacity`` (runs at once), ``busy`` (runs under way), ``submit(config)``,
``next()`` (the next finished result) and ``close(cancel=False)``. Pool workers exit when
the sweeping process dies and leave Ctrl-C to it; a local Ray instance listens on 127.0.0.1.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections import deque
from contextlib import contextmanager


@contextmanager
def sigint_ignored():
    """Ignore SIGINT in this block (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


class Serial:
    """Runs each config in this process when asked for its result."""

    def __init__(self, fn, workers, ray_address, device, n):
        self.fn, self.device, self.pending, self.capacity = fn, device, deque(), 1

    @property
    def busy(self):
        return len(self.pending)

    def submit(self, cfg):
        self.pending.append(cfg)

    def next(self):
        return self.fn(self.pending.popleft(), self.device)

    def close(self, cancel=False):
        self.pending.clear()


@contextmanager
def sigint_held():
    """Hold Ctrl-C in this block (main thread; elsewhere a no-op): it is neither lost nor raised
    inside, but raised as KeyboardInterrupt when the block ends. SIGINT is blocked in this thread,
    so the pool workers started here inherit the blocked mask and cannot get it before they ignore
    it; and Python's handler is replaced by one that only records it, since another thread may
    take a process-directed SIGINT. Ignoring it instead lost it: a Ctrl-C that landed in a submit
    let the whole grid run. A process started with Ctrl-C ignored (a background job) keeps
    ignoring it. Without ``pthread_sigmask`` (Windows): ignored, as before."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        with sigint_ignored():
            yield
        return
    old_handler, received = signal.getsignal(signal.SIGINT), []
    honoured = old_handler not in (signal.SIG_IGN, None)
    if honoured:
        signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)   # a pending Ctrl-C arrives now: recorded
        if honoured:
            signal.signal(signal.SIGINT, old_handler)
            if received:
                raise KeyboardInterrupt


def _init_worker(parent: int):
    """Pool worker setup: exit when the sweeping process dies, leave Ctrl-C to it, one thread."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    if hasattr(signal, "pthread_sigmask"):   # started inside ``sigint_held``: SIGINT is blocked until now
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # it died before we could ask to follow it
        os._exit(1)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True, name="exit-with-parent").start()
    import torch
    torch.set_num_threads(1)


def _exit_with_parent(parent: int):
    """The portable fallback of PR_SET_PDEATHSIG: a reparented worker exits within a second."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


class Local:
    """A spawn-started process pool (fork after torch has run threads can hang)."""

    def __init__(self, fn, workers, ray_address, device, n):
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        self.fn, self.device, self.futures = fn, device, set()
        self.capacity = min(workers or os.cpu_count() or 1, n)
        self.pool = ProcessPoolExecutor(self.capacity, mp_context=mp.get_context("spawn"),
                                        initializer=_init_worker, initargs=(os.getpid(),))

    @property
    def busy(self):
        return len(self.futures)

    def submit(self, cfg):
        with sigint_held():  # a worker started now cannot get Ctrl-C before it ignores it; ours is kept
            self.futures.add(self.pool.submit(self.fn, cfg, self.device))

    def next(self):
        from concurrent.futures import FIRST_COMPLETED, wait
        done, _ = wait(self.futures, return_when=FIRST_COMPLETED)
        fut = done.pop()
        self.futures.discard(fut)
        return fut.result()

    def close(self, cancel=False):
        if not cancel:
            self.pool.shutdown(wait=True)
            return
        procs = list((self.pool._processes or {}).values())
        self.pool.shutdown(wait=False, cancel_futures=True)
        for p in procs:
            p.terminate()
        for p in procs:
            p.join(10)


def import_ray():
    try:
        import ray
    except ImportError as e:
        raise ImportError("executor='ray' needs Ray: pip install 'ray>=2.9'") from e
    return ray


def _ray_init_local(ray, workers):
    """A new local Ray instance whose services all listen on 127.0.0.1, not on every interface.

    On Linux Ray takes the node's network address as its "node IP", even when given
    _node_ip_address="127.0.0.1", unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (the setting
    behind Ray's loopback-only mode on macOS/Windows); with the node IP on loopback, the GCS,
    raylet, workers and agents bind to it. The setting is read when ray is imported, so the
    module flag is set too, and both are restored once the instance is up.
    """
    from ray._private import ray_constants
    name, flag = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "ENABLE_RAY_CLUSTER"
    old_env, old_flag = os.environ.get(name), getattr(ray_constants, flag, None)
    os.environ[name] = "0"
    setattr(ray_constants, flag, False)
    try:
        ray.init(address="local", num_cpus=workers or os.cpu_count(), include_dashboard=False,
                 logging_level="ERROR", _node_ip_address="127.0.0.1")
    finally:
        setattr(ray_constants, flag, old_flag)
        if old_env is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old_env
    ip = ray.util.get_node_ip_address()
    if ip not in ("127.0.0.1", "::1", "localhost"):
        ray.shutdown()
        raise RuntimeError(f"executor='ray': the local Ray instance did not bind to 127.0.0.1 (node IP {ip}); "
                           "start a cluster yourself and pass ray_address")


class Ray:
    """Ray tasks of one CPU each; attaches to ``ray_address`` or starts a local instance."""

    def __init__(self, fn, workers, ray_address, device, n):
        ray = self.ray = import_ray()
        self.started = not ray.is_initialized()
        if self.started:
            if ray_address is not None:
                import mupso_lite
                ray.init(address=ray_address, runtime_env={"py_modules": [os.path.dirname(mupso_lite.__file__)]})
            else:
                _ray_init_local(ray, workers)
        cpus = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.capacity, self.device, self.pending = 2 * cpus, device, []
        self.remote = ray.remote(num_cpus=1)(fn)

    @property
    def busy(self):
        return len(self.pending)

    def submit(self, cfg):
        self.pending.append(self.remote.remote(cfg, self.device))

    def next(self):
        ready, self.pending = self.ray.wait(self.pending, num_returns=1)
        return self.ray.get(ready[0])

    def close(self, cancel=False):
        for ref in self.pending:
            self.ray.cancel(ref, force=cancel)
        self.pending = []
        if self.started:
            self.ray.shutdown()


RUNNERS = {"local": Local, "serial": Serial, "ray": Ray}
