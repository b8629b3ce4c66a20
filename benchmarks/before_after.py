"""Before/after: the optimizers of another copy of the package vs this one, interleaved in one process.

    PYTHONPATH=/path/to/old/copy .venv/bin/python benchmarks/before_after.py mupso_lite_before

Single thread, CPU time of this thread (robust when other processes share the cores).
The old copy is the package directory renamed (e.g. ``git worktree`` of an older commit,
``cp -r mupso_lite /tmp/bp/mupso_lite_before``). Prints median ms/step and new/old per optimizer.
"""
import importlib
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import mupso_lite as ml

SETUPS = {   # name -> (model kind, optimizer); "cnn": ml.CNN on 8 x 8 images, width 64
    "kfac default": lambda pkg, m: pkg.KFAC(m, lr=0.01, damping=0.1, damping_mode="pi"),
    "cnn kfac default": lambda pkg, m: pkg.KFAC(m, lr=0.01, damping=0.1, damping_mode="pi"),
    "kfac every1": lambda pkg, m: pkg.KFAC(m, lr=0.01, damping=0.1, damping_mode="pi", inverse_interval=1),
    "kfac ema0 every1": lambda pkg, m: pkg.KFAC(m, lr=0.01, damping=0.1, ema_decay=0.0, inverse_interval=1),
    "foof default": lambda pkg, m: pkg.KFAC(m, lr=0.01, damping=0.1, foof=True),
    "shampoo default": lambda pkg, m: pkg.Shampoo(m.parameters(), lr=0.01, eps=1e-4, eps_mode="relative", model=m),
    "shampoo beta0 every1": lambda pkg, m: pkg.Shampoo(m.parameters(), lr=0.01, eps=1e-4, eps_mode="relative",
                                                       beta=0.0, update_interval=1, model=m),
}
WARMUP = 20   # the optimizers refresh every step during their first 20 steps: not timed


def main(old_name, width=1024, block=10, repeats=3):
    torch.set_num_threads(1)
    old = importlib.import_module(old_name)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(128, 64, generator=g), torch.randint(0, 10, (128,), generator=g)
    print(f"MLP 64-{width}-{width}-10 (cnn: ml.CNN 64 channels, 8 x 8 images), batch 128, blocks of {block} "
          f"steps after {WARMUP} warm-up steps, median of {repeats}")
    print("setup                 old ms   new ms   new/old")
    warm = -(-WARMUP // block)
    for name, make in SETUPS.items():
        runs = {}
        for tag, pkg in (("old", old), ("new", ml)):
            model = (ml.CNN((1, 8, 8), 10, 64, depth=3, seed=0) if name.startswith("cnn")
                     else ml.MLP(64, 10, width, depth=3, seed=0))
            runs[tag] = (model, make(pkg, model))
        times = {"old": [], "new": []}
        for r in range(repeats + warm):
            for tag, (model, opt) in runs.items():
                t = time.thread_time()
                for _ in range(block):
                    opt.zero_grad(set_to_none=True)
                    F.cross_entropy(model(x), y).backward()
                    opt.step()
                if r >= warm:
                    times[tag].append((time.thread_time() - t) / block)
        o, n = (statistics.median(times[t]) for t in ("old", "new"))
        print(f"{name:20s} {1e3 * o:7.1f}  {1e3 * n:7.1f}   {n / o:5.2f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "mupso_lite_before")
