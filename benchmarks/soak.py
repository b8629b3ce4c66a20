"""Soak: does a two-hour lab leak? Long K-FAC/Shampoo training, then hundreds of dashboard runs.

    .venv/bin/python benchmarks/soak.py                      # the full soak (a few minutes on 2 cores)
    .venv/bin/python benchmarks/soak.py --steps 100 --runs 20  # a quick look

1. ``--steps`` K-FAC steps and ``--steps`` Shampoo steps: an MLP 64 -> 512 -> 512 -> 10 on digits,
   μP, batch 128, built with ``ml.make_optimizer`` and trained with ``ml.train``;
2. ``--runs`` dashboard runs through the Python API, the way a class uses it: random width
   (small), lr, damping, optimizer and steps; Stop pressed at random moments; a control moved
   during a run (a restart); every 50 runs the notebook cell is run again (a new dashboard,
   the old one closed).

Resident memory, live threads, live tensors and live ``nn.Linear`` modules are printed at
the start, after a warm-up (one short run of every kind, so imports, the data set and the
allocator's pools are in place) and at the end, each after ``gc.collect()``. Targets, one
PASS/FAIL line each: resident memory within 50 MB of the warm-up figure, threads back to the
starting set, no ``nn.Linear`` (no model) left over, live tensors back to the warm-up count.
"""
import argparse
import gc
import os
import random
import sys
import threading
import time
import warnings

import torch
from torch import nn

import mupso_lite as ml
from mupso_lite.dashboard import Dashboard

OPTIMIZERS = ("sgd", "adam", "kfac", "shampoo", "foof")
WIDTHS = (32, 64, 128)


def resident_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def live(kind) -> int:
    with warnings.catch_warnings():  # some lazy modules warn when gc hands them to isinstance
        warnings.simplefilter("ignore")
        return sum(1 for o in gc.get_objects() if isinstance(o, kind))


def snapshot(label: str) -> dict:
    gc.collect()
    snap = dict(label=label, rss=resident_mb(), threads=sorted(t.name for t in threading.enumerate()),
                tensors=live(torch.Tensor), linears=live(nn.Linear), seconds=time.perf_counter() - START)
    print(f"[{snap['seconds']:6.0f} s] {label:24s} resident {snap['rss']:7.1f} MB · threads "
          f"{threading.active_count()} {snap['threads']} · live tensors {snap['tensors']} · "
          f"live nn.Linear {snap['linears']}", flush=True)
    return snap


def train_long(optimizer: str, steps: int, report_every: int) -> None:
    """``steps`` steps of one optimizer at width 512; resident memory every ``report_every`` steps."""
    data = ml.datasets.digits()
    model = ml.MLP(data.d_in, data.d_out, 512, 3, base_width=64, param="mup")
    lr, damping = {"kfac": (0.1, 0.1), "shampoo": (0.05, 1e-4)}[optimizer]
    opt = ml.make_optimizer(model, optimizer, lr=lr, damping=damping, param="mup")
    try:
        rss, last = [], None
        for last in ml.train(model, opt, data, steps=steps, batch_size=128, eval_every=max(1, steps // 10),
                             divergence=None):
            if last["step"] % report_every == 0:
                rss.append(f"{resident_mb():.0f}")
        print(f"    {optimizer}: {last['step']} steps in {last['seconds']:.0f} s "
              f"({last['step'] / last['seconds']:.1f} steps/s), loss {last['loss']:.3g}, resident MB every "
              f"{report_every} steps: {' '.join(rss)}", flush=True)
    finally:
        opt.remove_hooks()


def dashboard_runs(runs: int, seed: int) -> dict:
    """``runs`` runs through the Dashboard API with random settings and random Stop presses."""
    rng, counts, dash = random.Random(seed), dict(done=0, stopped=0, diverged=0, restarted=0, error=0), None
    for i in range(runs):
        if i % 50 == 0:  # the notebook cell is run again
            if dash is not None:
                dash.close()
                gc.collect()
                print(f"    after {i} runs: resident {resident_mb():.1f} MB, {threading.active_count()} thread(s)",
                      flush=True)
            dash = Dashboard(width=32, steps=20, coord_widths=(32, 64), coord_steps=2)
        c = dash.controls
        c["optimizer"].value = rng.choice(OPTIMIZERS)  # sets its default lr and damping
        c["width"].value = rng.choice(WIDTHS)
        c["lr"].value = c["lr"].value * 10 ** rng.uniform(-0.5, 1.0)  # sometimes too high: a divergence
        c["damping"].value = c["damping"].value * 10 ** rng.uniform(-1, 1)
        c["param"].value = rng.choice(("sp", "mup"))
        c["steps"].value = rng.choice((20, 25, 30, 35, 40))
        dash.run()
        action = rng.random()
        if action < 0.3:  # Stop at a random moment
            time.sleep(rng.uniform(0, 0.3))
            dash.stop()
        elif action < 0.4:  # move a slider during the run: it restarts
            time.sleep(rng.uniform(0, 0.2))
            c["width"].value = rng.choice(WIDTHS)
            counts["restarted"] += 1
        if not dash.join(timeout=120):
            raise RuntimeError(f"run {i}: still running after 120 s ({dash.status})")
        status = dash.status
        kind = ("error" if status.startswith("error") else "diverged" if "diverged at step" in status
                else "stopped" if "stopped at step" in status else "done")
        counts[kind] += 1
        if kind == "error":
            print(f"    run {i}: {status}", flush=True)
    dash.close()
    return counts


def warm_up() -> None:
    train_long("kfac", 20, 20)
    train_long("shampoo", 20, 20)
    with Dashboard(width=32, steps=5, coord_widths=(32, 64), coord_steps=2) as dash:
        for optimizer in OPTIMIZERS:
            dash.controls["optimizer"].value = optimizer
            dash.run(wait=True)
        dash.compare(wait=True)
        dash.width_view(wait=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=1000, help="K-FAC and Shampoo steps at width 512 (1000)")
    p.add_argument("--runs", type=int, default=200, help="dashboard runs (200)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random settings and Stop presses")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--memory-budget", type=float, default=50.0, help="MB of growth allowed after warm-up (50)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"soak: {args.steps} K-FAC + {args.steps} Shampoo steps, {args.runs} dashboard runs; "
          f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, {os.cpu_count()} CPUs", flush=True)
    start = snapshot("start")
    warm_up()
    warm = snapshot("after warm-up")
    train_long("kfac", args.steps, max(1, args.steps // 5))
    train_long("shampoo", args.steps, max(1, args.steps // 5))
    snapshot("after long training")
    t = time.perf_counter()
    counts = dashboard_runs(args.runs, args.seed)
    print(f"    {args.runs} dashboard runs in {time.perf_counter() - t:.0f} s: {counts}", flush=True)
    end = snapshot("end")

    growth = end["rss"] - warm["rss"]
    checks = [
        ("resident memory", growth <= args.memory_budget,
         f"{growth:+.1f} MB since warm-up (budget {args.memory_budget:g} MB)"),
        ("threads", end["threads"] == start["threads"], f"{len(start['threads'])} at start, {len(end['threads'])} "
         f"at end" + ("" if end["threads"] == start["threads"] else f": {end['threads']}")),
        ("models", end["linears"] <= start["linears"], f"{end['linears'] - start['linears']:+d} live nn.Linear"),
        ("tensors", end["tensors"] <= warm["tensors"], f"{end['tensors'] - warm['tensors']:+d} live tensors "
         "since warm-up"),
    ]
    for name, ok, detail in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
    print(f"total {time.perf_counter() - START:.0f} s")
    return 0 if all(ok for _, ok, _ in checks) else 1


START = time.perf_counter()

if __name__ == "__main__":
    sys.exit(main())
