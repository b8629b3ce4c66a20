"""Curvature memory: K-FAC and Shampoo with the current batch's curvature (the defaults) against
averaged curvature (K-FAC factor EMA 0.95 with inverses every 10 steps; Shampoo running sums
with roots every 10 steps: the earlier defaults).

    python scripts/exp_curvature.py [--quick] [--part grid|coord|leverage|all]

grid      the dashboard's slider settings, 100 steps, muP, depth 3, seed 0: K-FAC lr 0.03 .. 1 x
          damping 1e-3 .. 1e-1 and Shampoo lr 0.01 .. 1 x eps 1e-6 .. 1e-2, each averaged and
          current-batch. Digits at batch 64 over widths 64 .. 2048 (Shampoo to 1024: its averaged
          roots need width x width eigendecompositions); at width 256 and 1024 (Shampoo: 256)
          also batch 16 and 512 on digits, MNIST-1D and the regression teacher (batch 64).
          Resumable: the settings already in curvature_grid.csv are not run again. A run is "ok" when it
          neither diverged nor spiked (``ml.divergence``) and reached test accuracy >= 0.85
          (classification) or a test loss below half its starting value (regression);
          -> curvature_grid.{md,csv}
coord     coordinate checks of muP-K-FAC on a depth-6 relu MLP (digits, lr 0.1, damping 0.1, table
          damping, inverses every step, seeds 0 and 1) at steps 1, 3, 10 against the factor decay
          (0, 0.5, 0.9, 0.95, 0.99) and the batch size (16, 64, 512), widths 64 .. 2048
          -> curvature_coord.{md,csv}
rules     candidate rules for width-stable averaged factors (damping relative to the average,
          more damping, a shorter memory, a decayed sum that keeps the batch at full weight),
          coordinate-checked like ``coord`` at batch 64 -> curvature_rules.{md,csv}
leverage  the mechanism: after 9 steps with each decay, the leverage x^T (A + rho_A I)^-1 x of the
          next batch's own inputs in the first hidden layer (A the averaged factor, or the
          current batch's), against width and decay -> curvature_leverage.{md,csv}

One thread; wall times printed. Sized for a 2-core machine: about 40 minutes for ``all``.
"""
from __future__ import annotations

import argparse
import itertools
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

import mupso_lite as ml
from mupso_lite.optim import release_hooks
from mupso_lite.roles import layer_roles
from reproduce import md, write

AVERAGED = {"kfac": {"ema_decay": 0.95, "inverse_interval": 10},
            "shampoo": {"beta": None, "update_interval": 10}}
CURRENT = {"kfac": {}, "shampoo": {}}   # the defaults: this batch's curvature, refreshed every step
GRID = {"kfac": ([0.03, 0.1, 0.3, 1.0], [1e-3, 1e-2, 1e-1]),
        "shampoo": ([0.01, 0.03, 0.1, 0.3, 1.0], [1e-6, 1e-4, 1e-2])}
DECAYS = [0.0, 0.5, 0.9, 0.95, 0.99]


def grid_run(data, opt, memory, width, lr, damping, batch, steps, depth=3):
    """One slider setting: (status, final test metric, peak loss / start loss)."""
    model = ml.MLP(d_in=data.d_in, d_out=data.d_out, width=width, depth=depth, base_width=64,
                   param="mup", seed=0)
    options = (AVERAGED if memory == "averaged" else CURRENT)[opt]
    optimizer = ml.make_optimizer(model, opt, lr=lr, damping=damping, **options)
    recs = ml.run(model, optimizer, data, steps=steps, batch_size=batch, seed=0, device="cpu")
    release_hooks(optimizer)
    last, start = recs[-1], recs[0]["loss"]
    peak = max(r["loss"] for r in recs if math.isfinite(r["loss"])) / start
    classify = data.task == "classification"
    metric = last.get("test_accuracy" if classify else "test_loss", float("nan"))
    if last["diverged"]:
        return "diverged", metric, peak
    if last["warning"]:
        return "unstable", metric, peak
    good = metric >= 0.85 if classify else metric < 0.5 * start
    return ("ok" if good else "poor"), metric, peak


def grid(args):
    steps = 20 if args.quick else 100
    sets = [("digits", 64, (64, 256) if args.quick else (64, 256, 1024, 2048))]
    if not args.quick:
        sets += [("digits", 16, (256, 1024)), ("digits", 512, (256, 1024)),
                 ("mnist1d", 64, (256, 1024)), ("teacher", 64, (256, 1024))]
    path = Path(args.out) / "curvature_grid.csv"   # resumes: settings already in it are not run again
    rows = pd.read_csv(path).to_dict("records") if path.exists() and not args.quick else []
    done = {(r["data"], r["batch"], r["optimizer"], r["width"], r["memory"], r["lr"], r["damping"]) for r in rows}
    t0 = time.time()
    for name, batch, ws in sets:
        data = ml.datasets.load(name)
        for opt, width in itertools.product(("kfac", "shampoo"), ws):
            # averaged Shampoo eigendecomposes width x width statistics: to 1024 on the main grid, 256 elsewhere
            if opt == "shampoo" and width > (1024 if (name, batch) == ("digits", 64) else 256):
                continue
            lrs, dampings = GRID[opt]
            for memory, lr, damping in itertools.product(("averaged", "current"), lrs, dampings):
                if (name, batch, opt, width, memory, lr, damping) in done:
                    continue
                t = time.time()
                status, metric, peak = grid_run(data, opt, memory, width, lr, damping, batch, steps)
                rows.append(dict(data=name, batch=batch, optimizer=opt, width=width, memory=memory, lr=lr,
                                 damping=damping, status=status, metric=metric, peak=peak, seconds=time.time() - t))
            if not args.quick:
                path.parent.mkdir(parents=True, exist_ok=True)
                pd.DataFrame(rows).to_csv(path, index=False)
            print(f"{name} batch {batch} {opt} width {width}: {time.time() - t0:.0f} s", flush=True)
    df = pd.DataFrame(rows)
    summary = (df.groupby(["data", "batch", "optimizer", "width", "memory"], sort=False)
               .apply(lambda g: pd.Series({"ok": int((g.status == "ok").sum()), "poor": int((g.status == "poor").sum()),
                                           "unstable": int((g.status == "unstable").sum()),
                                           "diverged": int((g.status == "diverged").sum()), "settings": len(g),
                                           "mean metric": g.metric.fillna(0 if g.name[0] != "teacher" else np.inf).mean(),
                                           "seconds": g.seconds.sum()}), include_groups=False)
               .reset_index())
    text = (f"Slider grid, muP, depth 3, {steps} steps, seed 0 (metric: test accuracy; teacher: test loss). "
            f"averaged: K-FAC ema_decay 0.95, inverse_interval 10; Shampoo running sums, update_interval 10. "
            f"current: the defaults. Wall {time.time() - t0:.0f} s.\n\n" + md(summary, "{:.3g}"))
    write(args, "curvature_grid", text, frame=df)


def coord(args):
    ws = (64, 256, 1024) if args.quick else (64, 128, 256, 512, 1024, 2048)
    decays = (0.0, 0.95) if args.quick else DECAYS
    batches = (64,) if args.quick else (16, 64, 512)
    seeds = (0,) if args.quick else (0, 1)
    data = ml.datasets.digits()
    rows, t0 = [], time.time()
    for batch, decay in itertools.product(batches, decays):
        cc = ml.coord_check(relu_mlp, "kfac", widths=ws, steps=(1, 3, 10), seeds=seeds, data=data, lr=0.1, damping=0.1,
                            batch_size=batch, device="cpu", ema_decay=decay, inverse_interval=1)
        ex = cc.exponents
        for step in (1, 3, 10):
            sub = ex[ex.step == step]
            row = dict(batch=batch, decay=decay, step=step, diverged=len(cc.diverged))
            for role in ("input", "hidden", "output", "f"):
                row[role] = float(sub[sub.role == role].slope.mean())
            rows.append(row)
        print(f"batch {batch} decay {decay}: {time.time() - t0:.0f} s", flush=True)
    df = pd.DataFrame(rows)
    text = (f"muP-K-FAC width exponents (slope of log rms feature change against log width, mean over the layers "
            f"of a role), depth-6 relu MLP, digits, lr 0.1, damping 0.1, widths {ws[0]}..{ws[-1]}, seeds "
            f"{list(seeds)}; decay = ema_decay (inverses every step). Wall {time.time() - t0:.0f} s.\n\n"
            + md(df, "{:+.2f}"))
    write(args, "curvature_coord", text, frame=df)


def relu_mlp(width, seed=0):
    return ml.MLP(64, 10, width=width, depth=6, base_width=64, param="mup", activation="relu", seed=seed)


def leverages(width, decay, batch, steps, seed=0, rho=0.1):
    """Train ``steps`` steps with ``decay``; then, on the next batch, the mean leverages of its own
    examples in the hidden layers: x^T (A + rho_A I)^-1 x and d^T (B + rho_B I)^-1 d (d = n g, an
    example's output gradient), with the factors the next step would use (the average) and with
    the batch's own (what the current-batch K-FAC uses)."""
    data = ml.datasets.digits()
    model = relu_mlp(width, seed)
    opt = ml.make_optimizer(model, "kfac", lr=0.1, damping=rho, ema_decay=decay, inverse_interval=1, fast=False)
    ml.run(model, opt, data, steps=steps, batch_size=batch, seed=seed, device="cpu")
    gen = torch.Generator().manual_seed(1000 + seed)
    idx = torch.randperm(data.x_train.shape[0], generator=gen)[:batch]
    opt.zero_grad()
    nn.functional.cross_entropy(model(data.x_train[idx].float()), data.y_train[idx]).backward()
    out = dict(width=width, decay=decay, batch=batch)
    sums = {k: [] for k in ("A current", "A averaged", "B current", "B averaged")}
    for group in opt.param_groups:
        name = group["layer"]
        if name is None or {n: r for n, _, r in layer_roles(model)}.get(name) != "hidden":
            continue
        st = opt.state[opt.modules_by_name[name].weight]
        x, d = opt.capture.x(name), opt.capture.gout(name) * batch
        for side, rows, rho_side in (("A", x, group["damping_a"]), ("B", d, group["damping_b"])):
            own = rows.T @ rows / batch
            eye = torch.eye(own.shape[0])
            for label, f in (("current", own), ("averaged", decay * st[side] + (1 - decay) * own)):
                lev = torch.einsum("ij,jk,ik->i", rows, torch.linalg.inv(f + rho_side * eye), rows).mean()
                sums[f"{side} {label}"].append(float(lev))
    release_hooks(opt)
    out.update({k: float(np.mean(v)) for k, v in sums.items()})
    return out


def leverage(args):
    ws = (64, 256, 1024) if args.quick else (64, 128, 256, 512, 1024)
    rows, t0 = [], time.time()
    for batch, decay, width in itertools.product((64,) if args.quick else (16, 64),
                                                 (0.5, 0.95) if args.quick else (0.5, 0.9, 0.95, 0.99), ws):
        rows.append(leverages(width, decay, batch, steps=9))
    df = pd.DataFrame(rows)
    df["A ratio"] = df["A averaged"] / df["A current"]
    df["B ratio"] = df["B averaged"] / df["B current"]
    df["A x B ratio"] = df["A ratio"] * df["B ratio"]
    df["1/(1-decay)"] = 1 / (1 - df.decay)
    text = (f"Mean leverages of a fresh batch's own examples after 9 steps, averaged over the hidden layers "
            f"(muP-K-FAC table damping, depth-6 relu MLP, digits, lr 0.1, rho 0.1, seed 0): x^T (A + rho_A I)^-1 x "
            f"and d^T (B + rho_B I)^-1 d with the factors averaged with the decay vs the batch's own. "
            f"Wall {time.time() - t0:.0f} s.\n\n" + md(df, "{:.3g}"))
    write(args, "curvature_leverage", text, frame=df)


class DecayedSumKFAC(ml.KFAC):
    """A candidate rule: F <- decay F + F_batch (the current batch at full weight, the past decayed),
    so a batch's own directions are never weighted below its own factor's."""

    def _update_factors(self, name, st):
        x, n, delta = self.capture.x(name), self.capture.batch_size(name), self._delta(name)
        if "A" not in st:
            st["A"], st["B"] = x.T @ x / x.shape[0], n * delta.T @ delta
        else:
            st["A"].mul_(self.ema_decay).addmm_(x.T, x, alpha=1 / x.shape[0])
            st["B"].mul_(self.ema_decay).addmm_(delta.T, delta, alpha=float(n))


RULES = {   # name: (make_optimizer options, damping) for averaged factors, decay 0.95
    "current batch (default)": ({}, 0.1),
    "EMA 0.95, table damping": ({"ema_decay": 0.95}, 0.1),
    "EMA 0.95, table damping x10": ({"ema_decay": 0.95}, 1.0),
    "EMA 0.95, trace damping 0.1": ({"ema_decay": 0.95, "damping_mode": "trace"}, 0.1),
    "EMA 0.95, trace damping 0.01": ({"ema_decay": 0.95, "damping_mode": "trace"}, 0.01),
    "EMA 0.5, table damping": ({"ema_decay": 0.5}, 0.1),
    "decayed sum 0.95 (full-weight batch)": ({"ema_decay": 0.95, "sum": True}, 0.1),
}


def rules(args):
    """Candidate rules for width-stable averaged curvature, coordinate-checked at steps 1, 3, 10."""
    ws = (64, 256, 1024) if args.quick else (64, 128, 256, 512, 1024)
    seeds = (0,) if args.quick else (0, 1)
    data = ml.datasets.digits()
    rows, t0 = [], time.time()
    for name, (options, damping) in RULES.items():
        options = dict(options)
        decayed_sum = options.pop("sum", False)

        def make(model, options=options, damping=damping, decayed_sum=decayed_sum):
            opt = ml.make_optimizer(model, "kfac", lr=0.1, damping=damping, inverse_interval=1, **options)
            if decayed_sum:   # same groups and damping, the decayed-sum factor update
                release_hooks(opt)
                opt = DecayedSumKFAC(model, lr=0.1, damping=damping, damping_mode="given", inverse_interval=1,
                                     ema_decay=options["ema_decay"], params=[dict(g) for g in opt.param_groups])
            return opt
        cc = ml.coord_check(relu_mlp, make, widths=ws, steps=(1, 3, 10), seeds=seeds, data=data, device="cpu")
        ex = cc.exponents
        for step in (1, 3, 10):
            sub = ex[ex.step == step]
            row = dict(rule=name, step=step, diverged=len(cc.diverged))
            for role in ("input", "hidden", "output", "f"):
                row[role] = float(sub[sub.role == role].slope.mean())
            hidden = cc.frame[(cc.frame.step == step) & (cc.frame.role == "hidden")]
            row[f"hidden change at {ws[0]}"] = float(hidden[hidden.width == ws[0]].feature_change.mean())
            rows.append(row)
        print(f"{name}: {time.time() - t0:.0f} s", flush=True)
    df = pd.DataFrame(rows)
    text = (f"Candidate rules for averaged K-FAC factors: width exponents of the feature change, muP, depth-6 relu "
            f"MLP, digits, batch 64, lr 0.1, inverses every step, widths {ws[0]}..{ws[-1]}, seeds {list(seeds)}. "
            f"Wall {time.time() - t0:.0f} s.\n\n" + md(df, "{:+.3g}"))
    write(args, "curvature_rules", text, frame=df)


PARTS = {"grid": grid, "coord": coord, "leverage": leverage, "rules": rules}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", default="all", choices=[*PARTS, "all"])
    p.add_argument("--out", default="docs/results")
    p.add_argument("--quick", action="store_true", help="a smoke test: fewer widths, settings, steps")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    for name in PARTS if args.part == "all" else [args.part]:
        PARTS[name](args)


if __name__ == "__main__":
    main()
