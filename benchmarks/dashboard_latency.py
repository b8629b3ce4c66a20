"""Dashboard responsiveness: time from Run to the first plotted point, and steps/s.

    .venv/bin/python benchmarks/dashboard_latency.py

For each optimizer and width: a cold Run (first use of the dataset in this process) and a
warm one, the dashboard's steps/s, and plain ``ml.train`` steps/s for the same settings (the
difference is the dashboard's overhead: figure updates and status line).
"""
import time

import mupso_lite as ml
from mupso_lite.dashboard import DEFAULTS, Dashboard

STEPS = 60


def plain_rate(optimizer, width):
    lr, damping = DEFAULTS[optimizer]
    model = ml.MLP(64, 10, width, 3, base_width=64, param="mup")
    opt = ml.make_optimizer(model, optimizer, lr=lr, damping=damping, param="mup")
    last = ml.run(model, opt, "digits", steps=STEPS, eval_every=max(1, STEPS // 25))[-1]
    return last["step"] / last["seconds"]


def main():
    print(f"device: {ml.resolve_device('auto')}")
    print("optimizer width  first point (cold, warm) s   dashboard steps/s   ml.train steps/s")
    for optimizer in ("sgd", "kfac", "shampoo"):
        for width in (256, 1024):
            dash = Dashboard(width=width, optimizer=optimizer, steps=STEPS)
            dash.run(wait=True)
            cold = dash.timings["first_point_s"]
            dash.run(wait=True)
            warm, rate = dash.timings["first_point_s"], dash.timings["steps_per_s"]
            print(f"{optimizer:9s} {width:5d}  {cold:6.2f}, {warm:6.2f}"
                  f"{rate:24.1f}{plain_rate(optimizer, width):19.1f}", flush=True)


if __name__ == "__main__":
    t = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - t:.0f} s")
