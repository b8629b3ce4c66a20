"""Where a sweep's runs execute: this process, a local process pool, or Ray.

Each executor runs ``fn(config, device)`` (``sweep.run_config``) and has the same small
interface: ``capacity`` (runs at once), ``busy`` (runs under way), ``submit(config)``,
``next()`` (the next finished result, or ``WorkerDied`` for a run whose process died) and
``close(cancel=False)``. Pool workers exit when the sweeping process dies and leave Ctrl-C to
it; a local Ray instance listens on 127.0.0.1; a Ray address is probed before Ray connects.
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from collections import deque
from contextlib import contextmanager

RAY_PROBE_TIMEOUT_S = 5.0  # how long a Ray address may take to accept a TCP connection


class WorkerDied(Exception):
    """The process running ``config`` died (killed, e.g. by the out-of-memory killer) and the
    executor gave up on it; ``str(self)`` says how."""

    def __init__(self, config, reason):
        super().__init__(reason)
        self.config = config


def _death(exitcode) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"killed by {name}" + (", e.g. by the out-of-memory killer" if -exitcode == signal.SIGKILL else "")
    return f"exit code {'unknown' if exitcode is None else exitcode}"


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
    """A spawn-started process pool (fork after torch has run threads can hang).

    A worker that dies (killed, e.g. by the out-of-memory killer) breaks the pool and loses
    every run in it. Runs that finished are kept; the lost ones are rerun in a fresh pool one at
    a time, alone, so that an innocent run is not blamed: one whose worker is killed again then
    is given up as ``WorkerDied``, and the others go on at full width. A worker that exits by
    itself (a failed setup, an ``exit()`` call) stops the sweep with a RuntimeError.
    """

    def __init__(self, fn, workers, ray_address, device, n):
        self.fn, self.device = fn, device
        self.capacity = min(workers or os.cpu_count() or 1, n)
        self.running = {}        # future -> config
        self.waiting = deque()   # submitted, not yet given to the pool
        self.suspects = deque()  # lost when a worker died: each is rerun alone
        self.ready = deque()     # finished futures not yet handed out
        self.alone = None        # the worker process running a suspect alone
        self.pool = self._new_pool()

    def _new_pool(self):
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        return ProcessPoolExecutor(self.capacity, mp_context=mp.get_context("spawn"),
                                   initializer=_init_worker, initargs=(os.getpid(),))

    @property
    def busy(self):
        return len(self.running) + len(self.waiting) + len(self.suspects) + len(self.ready)

    def submit(self, cfg):
        self.waiting.append(cfg)
        self._fill()

    def _fill(self):
        """Give the pool what it may run now: the next suspect alone, else waiting runs."""
        while True:
            if self.alone is not None and not self.suspects and not self.running:
                self.alone = None  # every suspect is done: back to full width
            if self.suspects:
                if self.running:
                    return
                queue = self.suspects
            elif self.waiting and len(self.running) < self.capacity and self.alone is None:
                queue = self.waiting
            else:
                return
            if not self._start(queue[0]):
                continue  # the pool had broken: look again
            queue.popleft()
            if queue is self.suspects:  # workers start on demand: this run has the only one
                procs = list(self.pool._processes.values())
                self.alone = procs[0] if len(procs) == 1 else "unknown"

    def _start(self, cfg) -> bool:
        from concurrent.futures.process import BrokenProcessPool
        try:
            with sigint_held():  # a worker started now cannot get Ctrl-C before it ignores it; ours is kept
                self.running[self.pool.submit(self.fn, cfg, self.device)] = cfg
        except BrokenProcessPool:  # a worker died between runs
            self._broken()
            return False
        return True

    def next(self):
        from concurrent.futures import FIRST_COMPLETED, wait
        from concurrent.futures.process import BrokenProcessPool
        while not self.ready:
            self._fill()
            done, _ = wait(self.running, return_when=FIRST_COMPLETED)
            if any(isinstance(f.exception(), BrokenProcessPool) for f in done):
                self._broken()
                continue
            for f in done:
                del self.running[f]
                self.ready.append(f)
        return self.ready.popleft().result()

    def _broken(self):
        """A worker died: keep what finished, start a fresh pool, queue the lost runs to be
        rerun alone; raise ``WorkerDied`` for a run that was already alone."""
        from concurrent.futures import wait
        from concurrent.futures.process import BrokenProcessPool
        wait(self.running)  # the broken pool fails every run still in it, and stops its workers
        lost = []
        for f, cfg in self.running.items():
            (lost.append(cfg) if isinstance(f.exception(), BrokenProcessPool) else self.ready.append(f))
        self.running.clear()
        self.pool.shutdown(wait=True)
        self.pool = self._new_pool()
        alone, self.alone = self.alone, None
        if alone is None or not lost:
            self.suspects.extend(lost)
            return
        code = None
        if not isinstance(alone, str):
            alone.join(10)  # joined by the pool already; its exit code is known
            code = alone.exitcode
        if code is None or code >= 0:  # not killed: its setup failed, or something called exit()
            raise RuntimeError(f"executor='local': expected a worker process to run or be killed, got one that "
                               f"exited by itself ({_death(code)}), also when rerun alone; its error is printed "
                               "above (executor='serial' shows it here). The runs that finished are saved: "
                               "run the same sweep again to resume")
        raise WorkerDied(lost[0], f"worker process died ({_death(code)}), also when rerun alone")

    def close(self, cancel=False):
        self.waiting.clear()
        self.suspects.clear()
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


def ray_endpoint(address: str):
    """(host, port) that ``ray.init(address=address)`` connects to, or None for a new local
    instance ("local"); ValueError naming ``ray_address`` for a malformed address."""
    want = "expected 'auto', 'local', 'host:port' (a cluster's GCS) or 'ray://host:port' (Ray Client)"
    addr = address.strip()
    if addr == "local":
        return None
    scheme, sep, rest = addr.rpartition("://")
    if sep and scheme != "ray":
        raise ValueError(f"ray_address: {want}, got {address!r}")
    if addr == "auto":
        env = os.environ.get("RAY_ADDRESS", "").strip()
        if env and env != "auto":
            return ray_endpoint(env)
        from ray._private import services
        try:
            rest = services.canonicalize_bootstrap_address_or_die("auto")
        except ConnectionError:
            raise _no_cluster(address, "none found on this machine") from None
    host, colon, port = rest.rpartition(":")
    if not colon and sep:
        host, port = rest, "10001"  # Ray Client's default port
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"ray_address: {want}, got {address!r}")
    if not sep:  # a GCS address: Ray connects to this node's address for a loopback one
        from ray._private import services
        host = getattr(services, "resolve_ip_for_localhost", lambda h: h)(host)
    return host, int(port)


def check_ray_address(address: str, timeout: float | None = None):
    """Fail fast (ConnectionError naming ``address``) unless a TCP connection to the Ray cluster
    at ``address`` opens within ``timeout`` seconds: Ray itself retries for many minutes."""
    endpoint = ray_endpoint(address)
    if endpoint is None:
        return
    timeout = RAY_PROBE_TIMEOUT_S if timeout is None else timeout
    host, port = endpoint
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        why = f"no answer within {timeout:g} s" if isinstance(e, socket.timeout) else (e.strerror or str(e))
        raise _no_cluster(address, f"no connection to {host}:{port} ({why})") from None


def _no_cluster(address: str, got: str) -> ConnectionError:
    return ConnectionError(f"ray_address: expected a running Ray cluster at {address!r}, got {got}; start one "
                           "with `ray start --head` and pass the address it prints, or leave ray_address out "
                           "to start a local instance")


@contextmanager
def _few_gcs_retries():
    """Connect to a cluster's GCS with one try instead of Ray's twenty (each up to 40 s), unless
    the user chose a budget (RAY_NUM_REDIS_GET_RETRIES, RAY_gcs_server_port_wait_time_s)."""
    from ray._private import ray_constants
    chosen = {"RAY_NUM_REDIS_GET_RETRIES", "RAY_gcs_server_port_wait_time_s"} & set(os.environ)
    old = getattr(ray_constants, "NUM_REDIS_GET_RETRIES", None)
    if chosen or old is None:
        yield
        return
    ray_constants.NUM_REDIS_GET_RETRIES = 1
    try:
        yield
    finally:
        ray_constants.NUM_REDIS_GET_RETRIES = old


class Ray:
    """Ray tasks of one CPU each; attaches to ``ray_address`` or starts a local instance."""

    def __init__(self, fn, workers, ray_address, device, n):
        ray = self.ray = import_ray()
        self.started = not ray.is_initialized()
        if self.started:
            if ray_address is not None and ray_endpoint(ray_address) is not None:
                import mupso_lite
                check_ray_address(ray_address)
                try:
                    with _few_gcs_retries():
                        ray.init(address=ray_address,
                                 runtime_env={"py_modules": [os.path.dirname(mupso_lite.__file__)]})
                except (ConnectionError, RuntimeError, TimeoutError) as e:
                    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                    raise _no_cluster(ray_address, f"no Ray answer ({first})") from None
            else:
                _ray_init_local(ray, workers)
        cpus = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.capacity, self.device, self.pending = 2 * cpus, device, {}
        self.remote = ray.remote(num_cpus=1)(fn)

    @property
    def busy(self):
        return len(self.pending)

    def submit(self, cfg):
        self.pending[self.remote.remote(cfg, self.device)] = cfg

    def next(self):
        ready, _ = self.ray.wait(list(self.pending), num_returns=1)
        cfg = self.pending.pop(ready[0])
        try:
            return self.ray.get(ready[0])
        except (self.ray.exceptions.WorkerCrashedError, self.ray.exceptions.OutOfMemoryError) as e:
            first = (str(e).strip().splitlines() or [""])[0]
            raise WorkerDied(cfg, f"worker process died ({type(e).__name__}: {first})") from None

    def close(self, cancel=False):
        for ref in self.pending:
            self.ray.cancel(ref, force=cancel)
        self.pending = {}
        if self.started:
            self.ray.shutdown()


RUNNERS = {"local": Local, "serial": Serial, "ray": Ray}
