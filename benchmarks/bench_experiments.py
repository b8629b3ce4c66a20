"""Timing of the experiment machinery (not a test): coordinate checks, an lr sweep, executor speed-up.

    python benchmarks/bench_experiments.py                 # everything (~10 min on 2 cores)
    python benchmarks/bench_experiments.py coord executor  # a subset
    python benchmarks/bench_experiments.py --quick         # small sizes, a smoke test

1. coord: ml.coord_check of SGD, Adam, K-FAC, Shampoo x SP, muP on the teacher task,
   widths 64..2048, steps 1..3, one seed (wall time per check).
2. lr-sweep: ml.sweep of K-FAC (muP) on digits, widths 64..4096 x 8 lrs, 20 steps, local executor.
3. executor: the same 8 runs (K-FAC, width 512, 50 steps) with executor "serial" and "local"
   (2 workers, process start-up included): the speed-up of the process pool.
Prints a markdown table; wall times include everything (data loading, model build, evaluation).
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

import mupso_lite as ml

LR = {"sgd": 0.5, "adam": 0.01, "kfac": 0.1, "shampoo": 0.1}


def bench_coord(quick):
    widths = (64, 128, 256) if quick else (64, 128, 256, 512, 1024, 2048)
    data, rows = ml.datasets.teacher(), []
    for opt in ("sgd", "adam", "kfac", "shampoo"):
        for param in ("sp", "mup"):
            t = time.perf_counter()
            ml.coord_check(lambda w, seed=0: ml.MLP(16, 4, w, 3, base_width=64, param=param, seed=seed),
                           opt, param, widths=widths, steps=3, seeds=(0,), data=data, lr=LR[opt], device="cpu")
            rows.append((f"coord_check {param}/{opt}, widths {widths[0]}..{widths[-1]}, 3 steps, 1 seed",
                         time.perf_counter() - t))
    rows.append(("coord_check: all 8 above", sum(r[1] for r in rows)))
    return rows


def bench_lr_sweep(quick, workers):
    widths = [64, 256] if quick else [64, 128, 256, 1024, 2048, 4096]
    lrs = [0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0]
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        df = ml.sweep({"width": widths, "lr": lrs, "optimizer": ["kfac"], "dataset": ["digits"]},
                      results=Path(tmp) / "lr.jsonl", steps=20, executor="local", workers=workers, progress=False)
        total = time.perf_counter() - t
    per_width = df.groupby("width")["seconds"].mean()
    rows = [(f"K-FAC lr sweep {len(widths)} widths x {len(lrs)} lrs, 20 steps, local executor ({workers} workers)",
             total)]
    rows += [(f"  one run at width {w} (in a worker)", s) for w, s in per_width.items()]
    return rows


def bench_executor(quick, workers):
    lrs = [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]
    rows = []
    for width, steps in ((512, 50),) if quick else ((512, 50), (1024, 100)):
        grid = {"width": [width], "lr": lrs[:4] if quick else lrs, "optimizer": ["kfac"], "dataset": ["digits"]}
        times = {}
        for executor in ("serial", "local"):
            with tempfile.TemporaryDirectory() as tmp:
                t = time.perf_counter()
                df = ml.sweep(grid, results=Path(tmp) / "r.jsonl", steps=steps, executor=executor,
                              workers=workers, progress=False)
                times[executor] = time.perf_counter() - t
            rows.append((f"{len(df)} K-FAC runs (width {width}, {steps} steps), executor {executor!r}",
                         times[executor]))
        rows.append((f"  speed-up of 'local' ({workers} workers) over 'serial'", times["serial"] / times["local"]))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", nargs="*", choices=["coord", "lr-sweep", "executor", []], default=[])
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # like the sweep workers: one thread per run
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M')}")
    print("| what | seconds (speed-up: x) |\n|---|---|")
    for name in args.what or ["coord", "lr-sweep", "executor"]:
        fn = {"coord": lambda: bench_coord(args.quick), "lr-sweep": lambda: bench_lr_sweep(args.quick, args.workers),
              "executor": lambda: bench_executor(args.quick, args.workers)}[name]
        for label, value in fn():
            print(f"| {label} | {value:.2f} |", flush=True)


if __name__ == "__main__":
    main()
