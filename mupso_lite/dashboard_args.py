"""The dashboard's arguments: the controls' ranges and choices, and ``check_arguments``, which
checks and normalizes every ``Dashboard(...)`` argument before any widget or thread exists
(ValueError/TypeError naming the argument; a slider would clamp a value outside its range)."""
from __future__ import annotations

import math
import numbers

from .checks import check_choice, check_positive
from .dashboard_runs import DEFAULTS, OPTIMIZERS, PARAMS, WIDTHS, dataset_names
from .data import Dataset

# The controls' ranges; an argument outside them raises (a slider would clamp it silently).
LRS, DAMPINGS, DEPTHS, STEPS = (1e-4, 10.0), (1e-6, 1.0), (2, 6), (5, 2000)  # WIDTHS: dashboard_runs
BATCH_SIZES = (16, 32, 64, 128, 256, 512)
FISHER_CHOICES = [("auto: MC for regression", "auto"), ("empirical", "empirical"), ("MC (sampled)", "mc")]
# The curvature memory: the decay d of K-FAC's factors (F <- d F + (1 - d) F_batch), Shampoo's or SOAP's statistics.
MEMORY_CHOICES = [("this batch (the theory)", 0.0)] + [(f"average, decay {d:g}", d) for d in (0.5, 0.9, 0.95, 0.99)]
OPTIMIZER_NAMES, PARAM_NAMES, FISHER_NAMES = ([v for _, v in c] for c in (OPTIMIZERS, PARAMS, FISHER_CHOICES))


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
