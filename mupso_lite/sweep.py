"""sweep(): run a grid of training configurations into an append-only results file.

A grid is a dict {key: list of values} (or a list of such dicts); every combination of the
values is one run. Each finished run is one JSON line, written with a single ``os.write`` on
a file opened for appending, then flushed and fsync'ed, so a killed sweep leaves every
finished run readable and at most one truncated last line. A run's *key* is the canonical
JSON of its config (sorted keys), so calling ``sweep`` again skips finished configs: an
interrupted sweep resumes where it stopped.

Executors: "local" (a process pool, one torch thread per worker), "serial" (this process),
"ray" (a local Ray instance, or a cluster at ``ray_address``). Only this process writes
the file, whatever the executor.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import time
from functools import lru_cache
from pathlib import Path

from .scaling import OPTIMIZERS, PARAMS, check_choice, check_positive

# Grid keys: what the model, the optimizer and the training loop read.
MODEL_KEYS = {"model": "mlp", "width": 64, "base_width": 64, "depth": 3, "activation": "tanh",
              "sigma": 1.0, "zero_readout": False, "bias": False}
OPTIM_KEYS = {"optimizer": "kfac", "param": "mup", "lr": 0.1, "damping": None}
OPTIM_OPTIONS = ("damping_mode", "inverse_interval", "factor_interval", "ema_decay", "fisher",
                 "eps_mode", "root", "grafting", "update_interval", "momentum", "weight_decay")
RUN_KEYS = {"dataset": "digits", "seed": 0, "steps": 100, "batch_size": 64}
GRID_KEYS = tuple(MODEL_KEYS) + tuple(OPTIM_KEYS) + OPTIM_OPTIONS + tuple(RUN_KEYS)
SECOND_ORDER = ("kfac", "foof", "shampoo")
DATASETS = ("digits", "teacher", "teacher_regression", "mnist1d")
EXECUTORS = ("local", "serial", "ray")
DONE = ("ok", "diverged")  # statuses that count as finished; "error" runs are retried


# ---------------------------------------------------------------- the grid
def expand_grid(grid, **defaults) -> list[dict]:
    """Every config of ``grid`` (dict of lists, or a list of such dicts), defaults filled in,
    normalized and de-duplicated. ``defaults`` override the built-in defaults (e.g. steps=200)."""
    if isinstance(grid, dict):
        grids = [grid]
    elif isinstance(grid, (list, tuple)) and grid and all(isinstance(g, dict) for g in grid):
        grids = list(grid)
    else:
        err = ValueError if isinstance(grid, (list, tuple)) and not grid else TypeError
        raise err(f"grid: expected a dict {{key: list of values}} or a non-empty list of such dicts, got {grid!r}")
    for arg in list(defaults):
        _check_key(arg, "sweep")
    configs, seen = [], set()
    for g in grids:
        if not g:
            raise ValueError("grid: expected at least one key, got an empty dict")
        for k in g:
            _check_key(k, "grid")
        axes = {}
        for k, v in g.items():
            values = list(v) if isinstance(v, (list, tuple, range)) else [v]
            if not values:
                raise ValueError(f"grid[{k!r}]: expected at least one value, got an empty list")
            axes[k] = values
        for combo in itertools.product(*axes.values()):
            cfg = normalize({**defaults, **dict(zip(axes, combo))})
            key = config_key(cfg)
            if key not in seen:
                seen.add(key)
                configs.append(cfg)
    return configs


def _check_key(k, where):
    if k not in GRID_KEYS:
        raise ValueError(f"{where}: unknown key {k!r}; expected keys among {', '.join(GRID_KEYS)}")


def normalize(cfg: dict) -> dict:
    """A full, validated config: defaults filled in; damping and optimizer options dropped
    for SGD/Adam (they ignore them), so equivalent runs share one key."""
    c = {**MODEL_KEYS, **OPTIM_KEYS, **RUN_KEYS, **cfg}
    check_positive("width", c["width"], integer=True)
    check_positive("base_width", c["base_width"], integer=True)
    check_positive("depth", c["depth"], integer=True)
    check_positive("lr", c["lr"])
    check_positive("steps", c["steps"], integer=True)
    check_positive("batch_size", c["batch_size"], integer=True)
    check_positive("sigma", c["sigma"])
    if isinstance(c["seed"], bool) or not isinstance(c["seed"], int):
        raise TypeError(f"seed: expected an integer, got {c['seed']!r}")
    c["optimizer"] = check_choice("optimizer", c["optimizer"], OPTIMIZERS)
    c["param"] = check_choice("param", c["param"], PARAMS)
    c["model"] = check_choice("model", c["model"], ("mlp", "cnn"))
    if c["dataset"] not in DATASETS:
        raise ValueError(f"dataset: expected one of {', '.join(map(repr, DATASETS))}, got {c['dataset']!r}")
    if c["optimizer"] not in SECOND_ORDER:
        c["damping"] = None
        for k in OPTIM_OPTIONS:
            if k not in ("momentum", "weight_decay"):
                c.pop(k, None)
    elif c["damping"] is not None:
        check_positive("damping", c["damping"], allow_zero=True)
    for k in ("lr", "damping", "sigma"):
        if c.get(k) is not None:
            c[k] = float(c[k])
    return c


def config_key(cfg: dict) -> str:
    """The canonical JSON of a config: the identity of a run in the results file."""
    return json.dumps(cfg, sort_keys=True, separators=(",", ":"))


# ---------------------------------------------------------------- one run
@lru_cache(maxsize=8)
def _dataset(name: str):
    from .data import load
    return load(name)


def build(cfg: dict):
    """(model, optimizer, data) for one normalized config."""
    from .models import CNN, MLP
    from .optim import make_optimizer
    data = _dataset(cfg["dataset"])
    common = dict(width=cfg["width"], depth=cfg["depth"], base_width=cfg["base_width"], param=cfg["param"],
                  optimizer=cfg["optimizer"], activation=cfg["activation"], bias=cfg["bias"],
                  sigma=cfg["sigma"], zero_readout=cfg["zero_readout"], seed=cfg["seed"])
    if cfg["model"] == "cnn":
        if data.image_shape is None:
            raise ValueError(f"model: 'cnn' needs an image dataset, got {cfg['dataset']!r}")
        model = CNN(data.image_shape, data.d_out, **common)
    else:
        model = MLP(data.d_in, data.d_out, **common)
    options = {k: cfg[k] for k in OPTIM_OPTIONS if k in cfg}
    opt = make_optimizer(model, cfg["optimizer"], lr=cfg["lr"], damping=cfg["damping"],
                         param=cfg["param"], **options)
    return model, opt, data


def run_config(cfg: dict, device: str = "cpu") -> dict:
    """Train one config and return its result line: config, status, metrics, loss curve.

    final_* is the last step; best_loss the lowest training-batch loss; train_loss the loss
    on the whole training set after the last step (the lr-transfer metric: less noisy than
    one batch). A non-finite loss or feature change gives status "diverged"; an exception
    status "error" (retried on the next call of ``sweep``).
    """
    import torch
    from . import __version__
    from .train import evaluate, train
    torch.set_num_threads(1)
    start = time.perf_counter()
    out = {"key": config_key(cfg), "config": cfg, "version": __version__, "status": "ok", "message": "",
           "train_loss": None, "train_accuracy": None}
    curve, last = [], {}
    try:
        model, opt, data = build(cfg)
        for rec in train(model, opt, data, steps=cfg["steps"], batch_size=cfg["batch_size"],
                         seed=cfg["seed"], device=device):
            curve.append(_finite(rec["loss"]))
            last = rec
        if last.get("diverged"):
            out.update(status="diverged", message=last["message"])
        else:
            train_set = type(data)(data.name, data.x_train, data.y_train, data.x_train, data.y_train,
                                   data.task, data.d_in, data.d_out)
            full = evaluate(model, train_set)
            out.update(train_loss=_finite(full["test_loss"]), train_accuracy=full.get("test_accuracy"))
        if hasattr(opt, "remove_hooks"):
            opt.remove_hooks()
    except Exception as e:  # noqa: BLE001 - recorded, the sweep goes on
        out.update(status="error", message=f"{type(e).__name__}: {e}")
    finite = [x for x in curve if x is not None]
    out.update(
        steps_done=len(curve), final_loss=curve[-1] if curve else None,
        best_loss=min(finite) if finite else None, final_accuracy=last.get("accuracy"),
        test_loss=_finite(last.get("test_loss")), test_accuracy=last.get("test_accuracy"),
        feature_change={k: _finite(v) for k, v in (last.get("feature_change") or {}).items()},
        output_change=_finite(last.get("output_change")),
        curve=curve, seconds=round(time.perf_counter() - start, 4), finished=time.time())
    return out


def _finite(x):
    return float(x) if x is not None and math.isfinite(x) else None


# ---------------------------------------------------------------- the results file
def _append(path: Path, record: dict) -> None:
    """One JSON line appended with a single write, then flush + fsync (atomic per line)."""
    line = (json.dumps(record, allow_nan=False) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def _repair(path: Path) -> None:
    """Cut a truncated last line (a run killed mid-write) so new lines start cleanly."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def read_records(path) -> list[dict]:
    """The result lines of ``path`` as dicts. A truncated last line is skipped; a broken line
    elsewhere raises ValueError with its line number."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results: no file {path}; run ml.sweep(grid, results={str(path)!r}) first")
    lines = path.read_bytes().split(b"\n")
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:  # no newline after it: the writer was killed mid-line
                break
            raise ValueError(f"{path}: line {i + 1} is not valid JSON ({e})") from e
    return out


def load_results(path="results/sweep.jsonl"):
    """A DataFrame with one row per run (the last line of each key): the config's keys as
    columns, then status, metrics (train_loss, best_loss, test_accuracy, ...) and ``curve``."""
    import pandas as pd
    latest = {}
    for rec in read_records(path):
        latest[rec["key"]] = rec
    rows = [{**r["config"], **{k: v for k, v in r.items() if k != "config"}} for r in latest.values()]
    return pd.DataFrame(rows)


def _check_results_path(results) -> Path:
    if not isinstance(results, (str, os.PathLike)):
        raise TypeError(f"results: expected a file path (str or Path), got {type(results).__name__}")
    path = Path(results)
    if path.is_dir():
        raise ValueError(f"results: expected a file path, got the directory {path}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab"):
            pass
    except OSError as e:
        raise ValueError(f"results: expected a writable file path, got {str(path)!r} ({e.strerror})") from e
    return path


# ---------------------------------------------------------------- the sweep
def sweep(grid, results="results/sweep.jsonl", steps: int | None = None, executor: str = "local",
          workers: int | None = None, ray_address: str | None = None, progress: bool = True,
          device: str = "cpu", **defaults):
    """Run every config of ``grid`` not yet in ``results``; return their rows (``load_results``).

    Grid keys: width, base_width, depth, activation, model ("mlp"/"cnn"), sigma, zero_readout,
    bias, optimizer, param, lr, damping, K-FAC/Shampoo options (damping_mode, inverse_interval,
    ...), dataset, seed, steps, batch_size. ``steps`` and ``defaults`` (e.g. dataset="teacher")
    set keys the grid leaves out. Everything is validated before the first run starts.

        ml.sweep({"width": [64, 256], "lr": [0.01, 0.1], "optimizer": ["kfac"]}, steps=50)
    """
    if steps is not None:
        defaults["steps"] = steps
    configs = expand_grid(grid, **defaults)
    executor = check_choice("executor", executor, EXECUTORS)
    if workers is not None:
        check_positive("workers", workers, integer=True)
    if ray_address is not None and executor != "ray":
        raise ValueError(f"ray_address: only used with executor='ray', got executor={executor!r}")
    _dry_build(configs)
    path = _check_results_path(results)
    _repair(path)
    done = {r["key"] for r in read_records(path) if r.get("status") in DONE}
    todo = [c for c in configs if config_key(c) not in done]
    bar = _progress(len(todo), len(configs) - len(todo), progress)
    try:
        for rec in _EXECUTORS[executor](todo, workers, ray_address, device):
            _append(path, rec)
            bar.update(1)
            if rec["status"] != "ok":
                bar.set_postfix_str(f"last: {rec['status']}")
    finally:
        bar.close()
    keys = {config_key(c) for c in configs}
    df = load_results(path)
    return df[df["key"].isin(keys)].reset_index(drop=True) if len(df) else df


def _dry_build(configs):
    """Build each distinct optimizer setup once at a tiny width, so a bad option fails now."""
    seen = set()
    for c in configs:
        probe = {**c, "width": 4, "base_width": 4, "dataset": c["dataset"]}
        key = config_key({k: v for k, v in probe.items() if k not in ("lr", "seed", "steps")})
        if key in seen:
            continue
        seen.add(key)
        _, opt, _ = build(probe)
        if hasattr(opt, "remove_hooks"):
            opt.remove_hooks()


def _progress(total, skipped, enabled):
    from tqdm.auto import tqdm
    desc = f"sweep ({skipped} done before)" if skipped else "sweep"
    return tqdm(total=total, desc=desc, unit="run", disable=not enabled, smoothing=0.1)


def _serial(todo, workers, ray_address, device):
    for cfg in todo:
        yield run_config(cfg, device)


def _init_worker():
    import torch
    torch.set_num_threads(1)


def _local(todo, workers, ray_address, device):
    """A spawn-started process pool (fork after torch has run threads can hang)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    if not todo:
        return
    workers = min(workers or os.cpu_count() or 1, len(todo))
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker) as pool:
        futures = [pool.submit(run_config, cfg, device) for cfg in todo]
        try:
            for fut in as_completed(futures):
                yield fut.result()
        finally:
            for fut in futures:
                fut.cancel()


def _ray(todo, workers, ray_address, device):
    """Ray tasks of one CPU each; attaches to ``ray_address`` or starts a local instance."""
    try:
        import ray
    except ImportError as e:
        raise ImportError("executor='ray' needs Ray: pip install 'ray>=2.9'") from e
    if not todo:
        return
    started = not ray.is_initialized()
    if started:
        if ray_address is not None:
            import mupso_lite
            ray.init(address=ray_address, runtime_env={"py_modules": [os.path.dirname(mupso_lite.__file__)]})
        else:
            ray.init(num_cpus=workers or os.cpu_count(), include_dashboard=False, logging_level="ERROR")
    remote = ray.remote(num_cpus=1)(run_config)
    pending = [remote.remote(cfg, device) for cfg in todo]
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            yield ray.get(ready[0])
    finally:
        for ref in pending:
            ray.cancel(ref)
        if started:
            ray.shutdown()


_EXECUTORS = {"local": _local, "serial": _serial, "ray": _ray}
