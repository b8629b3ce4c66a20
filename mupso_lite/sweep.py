"""sweep(): run a grid of training configurations into an append-only results file.

A grid is a dict {key: list of values} (or a list of such dicts); every combination of the
values is one run. Each finished run is one JSON line (see ``mupso_lite.results``), appended
with a single write under a file lock, then fsync'ed, so a killed sweep leaves every finished
run readable. A run's *key* is the canonical JSON of its config (sorted keys), so calling
``sweep`` again skips finished configs: an interrupted sweep resumes where it stopped, and
several sweeps (processes) may share one results file without running a config twice.

Executors: "local" (a process pool, one torch thread per worker), "serial" (this process),
"ray" (a new local Ray instance bound to 127.0.0.1, or the cluster at ``ray_address``). Only
the sweeping process writes the file, whatever the executor. A run whose worker process dies
(e.g. killed by the out-of-memory killer) is recorded with status "error" once the executor
gives up on it (see ``executors.Local``); the other runs go on.
"""
from __future__ import annotations

import itertools
import json
import math
import time
import warnings
from collections import deque
from functools import lru_cache

from .progress import NoProgress, SweepProgress, run_cost  # noqa: F401 (run_cost re-exported)
from .executors import RUNNERS, WorkerDied, check_ray_address, import_ray, sigint_ignored
from .results import DONE, ResultsFile, check_path, load_results, read_records  # noqa: F401 (re-exported)
from .checks import check_choice, check_positive
from .scaling import OPTIMIZERS, PARAMS

# Grid keys: what the model, the optimizer and the training loop read.
MODEL_KEYS = {"model": "mlp", "width": 64, "base_width": 64, "depth": 3, "activation": "tanh",
              "sigma": 1.0, "zero_readout": False, "bias": False}
OPTIM_KEYS = {"optimizer": "kfac", "param": "mup", "lr": 0.1, "damping": None}
OPTIM_OPTIONS = ("damping_mode", "inverse_interval", "factor_interval", "ema_decay", "fisher",
                 "eps_mode", "root", "grafting", "update_interval", "beta", "warmup", "momentum", "weight_decay",
                 "adam_lr", "io", "lr_rule", "shampoo_beta", "precondition_frequency")
# The options each optimizer reads (make_optimizer's and the optimizer's own); a config keeps only its
# optimizer's, so a grid over several optimizers can set one of them (SOAP has no momentum, Adam neither).
_KFAC = ("damping_mode", "inverse_interval", "factor_interval", "ema_decay", "fisher", "warmup", "momentum",
         "weight_decay")
OPTIONS_OF = {"sgd": ("momentum", "weight_decay"), "adam": ("weight_decay",), "kfac": _KFAC, "foof": _KFAC,
              "shampoo": ("eps_mode", "root", "grafting", "update_interval", "beta", "warmup", "momentum",
                          "weight_decay"),
              "muon": ("adam_lr", "io", "lr_rule", "momentum", "weight_decay"),
              "soap": ("adam_lr", "io", "shampoo_beta", "precondition_frequency", "weight_decay")}
RUN_KEYS = {"dataset": "digits", "seed": 0, "steps": 100, "batch_size": 64}
GRID_KEYS = tuple(MODEL_KEYS) + tuple(OPTIM_KEYS) + OPTIM_OPTIONS + tuple(RUN_KEYS)
DAMPED = ("kfac", "foof", "shampoo", "soap")   # the optimizers with a damping (SOAP: its eps)
SECOND_ORDER = DAMPED   # former name
DATASETS = ("digits", "teacher", "teacher_regression", "mnist1d")
EXECUTORS = ("local", "serial", "ray")


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


@lru_cache(maxsize=1)
def curvature_defaults() -> dict:
    """{optimizer: {option: default}} of the curvature memory: K-FAC's and FOOF's ``ema_decay`` and
    ``inverse_interval``, Shampoo's ``beta`` and ``update_interval``, read from the optimizers'
    signatures. ``normalize`` writes them into every config that leaves them out, so a run's key
    says which curvature it used: these defaults have changed (factors averaged with decay 0.95 and
    inverted every 10 steps before), and a results file written under other defaults must not pass
    its runs off as today's on resume (its runs, without these keys, are run again)."""
    import inspect

    from .optim import KFAC, Shampoo
    kfac, shampoo = (inspect.signature(c.__init__).parameters for c in (KFAC, Shampoo))
    k = {n: kfac[n].default for n in ("ema_decay", "inverse_interval")}
    return {"kfac": k, "foof": k, "shampoo": {n: shampoo[n].default for n in ("beta", "update_interval")}}


def normalize(cfg: dict) -> dict:
    """A full, validated config: defaults filled in (the curvature memory's too,
    ``curvature_defaults``); damping dropped for the optimizers without one (SGD, Adam, Muon)
    and each option for the optimizers that do not read it (``OPTIONS_OF``), so equivalent runs
    share one key."""
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
    for k in OPTIM_OPTIONS:
        if k not in OPTIONS_OF[c["optimizer"]]:
            c.pop(k, None)
    for k, default in curvature_defaults().get(c["optimizer"], {}).items():
        c.setdefault(k, default)
    if c["optimizer"] not in DAMPED:
        c["damping"] = None
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
                  activation=cfg["activation"], bias=cfg["bias"],
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
    one batch). A run ``train`` flags as diverged gets status "diverged", its ``message`` and
    a ``hint`` (what to change); one whose loss spiked (``mupso_lite.divergence``) keeps status
    "ok" with a ``warning`` and the hint; an exception gives status "error" (retried on the next call
    of ``sweep``). Either way the steps done so far are kept: curve, steps_done, and the last
    feature change, accuracy and test metrics that were measured.
    """
    import torch
    from .version import __version__
    from .divergence import hint_for
    from .optim import release_hooks
    from .train import evaluate, train
    torch.set_num_threads(1)
    start = time.perf_counter()
    out = {"key": config_key(cfg), "config": cfg, "version": __version__, "status": "ok", "message": "",
           "train_loss": None, "train_accuracy": None}
    curve, seen, opt = [], {}, None
    try:
        model, opt, data = build(cfg)
        for rec in train(model, opt, data, steps=cfg["steps"], batch_size=cfg["batch_size"],
                         seed=cfg["seed"], device=device):
            curve.append(_finite(rec["loss"]))
            seen.update({k: v for k, v in rec.items() if v is not None})  # the latest value of each metric
            if rec.get("diverged"):
                out.update(status="diverged", message=rec.get("message") or f"diverged at step {rec['step']}",
                           hint=rec.get("hint") or hint_for(opt))
            elif rec.get("warning"):   # spiked, not diverged: status stays "ok"
                out.update(warning=rec["warning"], hint=rec.get("hint") or hint_for(opt))
        if out["status"] == "ok":
            train_set = type(data)(data.name, data.x_train, data.y_train, data.x_train, data.y_train,
                                   data.task, data.d_in, data.d_out)
            full = evaluate(model, train_set)
            out.update(train_loss=_finite(full["test_loss"]), train_accuracy=full.get("test_accuracy"))
    except Exception as e:  # noqa: BLE001 - recorded, the sweep goes on
        out.update(status="error", message=f"{type(e).__name__}: {e}")
    finally:
        release_hooks(opt)
    finite = [x for x in curve if x is not None]
    out.update(
        steps_done=len(curve), final_loss=curve[-1] if curve else None,
        best_loss=min(finite) if finite else None, final_accuracy=seen.get("accuracy"),
        test_loss=_finite(seen.get("test_loss")), test_accuracy=seen.get("test_accuracy"),
        feature_change={k: _finite(v) for k, v in (seen.get("feature_change") or {}).items()},
        output_change=_finite(seen.get("output_change")),
        curve=curve, seconds=round(time.perf_counter() - start, 4), finished=time.time())
    return out


def _finite(x):
    return float(x) if x is not None and math.isfinite(x) else None


# ---------------------------------------------------------------- the sweep
def sweep(grid, results="results/sweep.jsonl", steps: int | None = None, executor: str = "local",
          workers: int | None = None, ray_address: str | None = None, progress: bool = True,
          device: str = "cpu", **defaults):
    """Run every config of ``grid`` not yet in ``results``; return their rows (``load_results``).

    Grid keys: width, base_width, depth, activation, model ("mlp"/"cnn"), sigma, zero_readout,
    bias, optimizer, param, lr, damping (K-FAC/FOOF rho, Shampoo/SOAP eps), optimizer options
    (damping_mode, inverse_interval, ..., Muon/SOAP's adam_lr, io, lr_rule, shampoo_beta; each
    kept for the optimizers that read it, ``OPTIONS_OF``), dataset, seed, steps, batch_size.
    ``steps`` and ``defaults`` (e.g. dataset="teacher") set keys the grid leaves out. Everything
    is validated before the first run starts.

        ml.sweep({"width": [64, 256], "lr": [0.01, 0.1], "optimizer": ["kfac"]}, steps=50)

    ``results`` must be a results file (or not exist yet): any other file is refused, untouched.
    Several sweeps may share it (see ``mupso_lite.results``). ``executor="ray"`` starts a new
    local Ray instance whose services listen on 127.0.0.1 only; passing ``ray_address`` (e.g.
    "auto" or "ray://head:10001") instead attaches to that cluster, whose network exposure is
    the cluster's own configuration; an address that does not accept a connection within
    seconds is refused before any run. Ctrl-C stops the workers and raises KeyboardInterrupt
    saying how many runs finished; calling ``sweep`` again resumes. A run whose worker process
    died (also when rerun alone) is recorded with status "error", and a RuntimeWarning says so.

    ``progress=True`` shows, from the start, the runs done out of those to run, how many are
    running, the diverged and failed ones, the elapsed time and an estimate of the time left,
    redrawn every second (``SweepProgress``): in a notebook one output line updated in place (a
    saved notebook keeps its last state), in a terminal one line on stderr.
    """
    if steps is not None:
        defaults["steps"] = steps
    configs = expand_grid(grid, **defaults)
    executor = check_choice("executor", executor, EXECUTORS)
    if workers is not None:
        check_positive("workers", workers, integer=True)
    if ray_address is not None and executor != "ray":
        raise ValueError(f"ray_address: only used with executor='ray', got executor={executor!r}")
    if ray_address is not None and (not isinstance(ray_address, str) or not ray_address.strip()):
        raise ValueError(f"ray_address: expected an address such as 'auto' or 'ray://head:10001', got {ray_address!r}")
    if executor == "ray" and not import_ray().is_initialized() and ray_address is not None:
        check_ray_address(ray_address)
    check_path(results, create=False)
    _dry_build(configs)
    store = ResultsFile(check_path(results)).open()
    todo = [c for c in configs if config_key(c) not in store.done]
    bar = _progress(todo, len(configs) - len(todo), progress)
    runner, died = None, []
    try:
        if todo:
            runner = RUNNERS[executor](run_config, workers, ray_address, device, len(todo))
            _run_all(todo, runner, store, bar, died)
    except BaseException as e:
        if runner is not None:
            with sigint_ignored():  # a second Ctrl-C must not cut the cleanup short
                runner.close(cancel=True)
            runner = None
        if not isinstance(e, KeyboardInterrupt):
            raise
        n = sum(config_key(c) in store.refresh() for c in configs)
        raise KeyboardInterrupt(f"{n} of {len(configs)} runs finished and are saved in {store.path}; "
                                "run the same sweep again to resume") from None
    finally:
        if runner is not None:
            runner.close()
        store.close()
        bar.close()
    if died:
        widths = ", ".join(f"width={c['width']} lr={c['lr']:g}" for c in died[:5]) + (", ..." if len(died) > 5 else "")
        warnings.warn(f"sweep: {len(died)} run(s) lost their worker process, also when rerun alone ({widths}): "
                      f"recorded with status 'error' in {store.path}; run the same sweep again to retry them "
                      "(with fewer workers if memory ran out)", RuntimeWarning, stacklevel=2)
    keys = {config_key(c) for c in configs}
    df = load_results(store.path)
    return df[df["key"].isin(keys)].reset_index(drop=True) if len(df) else df


def _run_all(todo, runner, store, bar, died):
    """Run ``todo`` on ``runner``, at most ``runner.capacity`` at a time; each config is
    claimed first and skipped if another sweep on the same file finished it meanwhile. A run
    whose worker died is recorded as an error and added to ``died``."""
    queue = deque(todo)
    while queue or runner.busy:
        for _ in range(len(queue)):
            if runner.busy >= runner.capacity:
                break
            cfg = queue.popleft()
            key = config_key(cfg)
            if not store.claim(key):
                queue.append(cfg)  # another sweep runs it now; look again later
            elif key in store.refresh():
                store.release(key)  # another sweep finished it
                bar.update(1, cfg=cfg, ran=False)
            else:
                runner.submit(cfg)
        bar.running(min(runner.busy, runner.capacity))
        if runner.busy:
            try:
                rec = runner.next()
            except WorkerDied as e:
                died.append(e.config)
                rec = _died_record(e.config, str(e))
            store.append(rec)
            store.release(rec["key"])
            bar.running(min(runner.busy, runner.capacity))
            bar.update(1, status=rec["status"], cfg=rec["config"])
        elif queue:
            time.sleep(0.2)  # all that is left is being run by other sweeps


def _died_record(cfg, message):
    """The result line of a run whose process died: status "error" (retried by the next sweep)."""
    from .version import __version__
    return {"key": config_key(cfg), "config": cfg, "version": __version__, "status": "error", "message": message,
            "train_loss": None, "train_accuracy": None, "steps_done": 0, "final_loss": None, "best_loss": None,
            "curve": [], "finished": time.time()}


def _dry_build(configs):
    """Build each distinct optimizer setup once at a tiny width, so a bad option fails now."""
    from .optim import release_hooks
    seen = set()
    for c in configs:
        probe = {**c, "width": 4, "base_width": 4, "dataset": c["dataset"]}
        key = config_key({k: v for k, v in probe.items() if k not in ("lr", "seed", "steps")})
        if key in seen:
            continue
        seen.add(key)
        _, opt, _ = build(probe)
        release_hooks(opt)


def _progress(configs, skipped, enabled):
    return SweepProgress(configs, config_key, skipped).start() if enabled and configs else NoProgress()
