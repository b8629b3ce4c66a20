"""Your own model: muP for architectures beyond the MLP, with roles read from shapes by ml.parametrize.

    python scripts/exp_your_model.py [--quick] [--part coord|readout|growth|lr|all] [--steps 100]

Every model is a plain torch module of ``mupso_lite.zoo``, built twice (at the width M and at
the base width M0) and parametrized with ``ml.parametrize(model, base, param)``.

coord  coordinate checks: ResidualMLP (digits, 2 residual blocks, base width 64, widths
       64..1024, batch 64), ResNetCNN (digits 8x8, 2 residual blocks with BatchNorm, base 16
       channels, widths 16..128, batch 64) and TinyGPT (characters of ml.datasets.text, 2 layers,
       4 heads, base width 64, widths 64..512, batch 32 windows of 32 characters; muP attention
       logits q.k * 4/d_head, SP q.k / sqrt(d_head)). SGD lr 0.5, K-FAC lr 0.1 rho 0.1 (table
       damping), Shampoo lr 0.1 eps 1e-4, both with the defaults' curvature (this batch's, every
       step); SP vs muP; seeds 0, 1. Width
       exponent = slope of log(rms change) against log(width), per layer after steps 1, 3, 10,
       averaged per role (bias rows: rms(b(t) - b(0)); "vector": the LayerNorm / BatchNorm
       gains and shifts, rms(p(t) - p(0)); f: the network output)
       -> your_model_coord.{md,csv,html}
readout  muP-SGD's first step on each model, the readout's change split into dW x(0) + W(0) dx + ...
       (why the output's step-1 slope is negative at small widths) -> your_model_readout.{md,csv}
growth   muP-K-FAC for 10 steps on variants of the residual MLP (with and without LayerNorm and the
       residual additions, LayerNorm frozen, lr 0.03) and on plain MLPs of depth 3 and 6, with this
       batch's factors and with factors averaged with decay 0.95: what makes the hidden layers'
       change grow with width after the first step -> your_model_growth.{md,csv}
lr     learning-rate transfer, ``--steps`` steps, seeds 0, 1: K-FAC (rho 0.1) and Shampoo (eps 1e-4)
       over a half-decade lr grid at width 64, where SP and muP are the same model; then the lr
       tuned there and its two neighbours at the wide widths, SP vs muP. Metric: the loss on the
       whole training set after the last step. ``--lr-model ResidualMLP`` (default; digits, batch
       64, grid 0.01 .. 1, widths 256 and 1024) -> your_model_lr.{md,csv,jsonl};
       ``--lr-model TinyGPT`` (text, batch 32, grid 0.001 .. 1, width 256) -> your_model_lr_tinygpt.*

Wall times are for one thread on a shared 2-core machine; the CPU time of this process is printed too.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
from torch import nn

import mupso_lite as ml
from mupso_lite import zoo
from mupso_lite.coord import exponents_of
from mupso_lite.plots import coord_check_figure
from reproduce import md, widths, write

OPTIMIZERS = {"sgd": (0.5, None), "kfac": (0.1, 0.1), "shampoo": (0.1, 1e-4)}   # lr, damping / eps
RUNS = [(param, opt, *OPTIMIZERS[opt]) for opt in OPTIMIZERS for param in ("sp", "mup")]
ROLES = ["input", "hidden", "output", "input bias", "hidden bias", "output bias", "vector", "f"]


def plain(width, depth, act):
    """Linear -> act -> ... -> Linear on digits: ``depth`` weight matrices, biases, no normalization."""
    layers = [nn.Linear(64, width), act()]
    for _ in range(depth - 2):
        layers += [nn.Linear(width, width), act()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


MODELS = {   # make(width, param) -> a plain torch model; runs: (param, optimizer, lr, damping)
    "ResidualMLP": dict(make=lambda w, param: zoo.ResidualMLP(64, 10, w, depth=2), data="digits", base=64,
                        widths=[64, 128, 256, 512, 1024], batch=64, runs=RUNS),
    "ResNetCNN": dict(make=lambda w, param: zoo.ResNetCNN((1, 8, 8), 10, w), data="digits", base=16,
                      widths=[16, 32, 64, 128], batch=64, runs=RUNS),
    "TinyGPT": dict(make=lambda w, param: zoo.TinyGPT(96, w, attention=param), data="text", base=64,
                    widths=[64, 128, 256, 512], batch=32, runs=RUNS + [("mup", "kfac", 0.03, 0.1)]),
    # K-FAC's bias rows with centred (tanh) and uncentred (relu) layer inputs
    "MLP tanh": dict(make=lambda w, param: plain(w, 3, nn.Tanh), data="digits", base=64,
                     widths=[64, 128, 256, 512, 1024], batch=64, runs=[("mup", "kfac", 0.1, 0.1)]),
    "MLP relu": dict(make=lambda w, param: plain(w, 3, nn.ReLU), data="digits", base=64,
                     widths=[64, 128, 256, 512, 1024], batch=64, runs=[("mup", "kfac", 0.1, 0.1)]),
}
LR_GRID = [0.001, 0.00316, 0.01, 0.0316, 0.1, 0.316, 1.0]        # half a decade apart
LR_BASE = 64
LR_SETUPS = {   # --lr-model: the wide widths, the grid tried at the base width, the output name, the curvature
    "ResidualMLP": dict(widths=[256, 1024], grid=LR_GRID[2:], out="your_model_lr", options={}),
    # measured with the earlier defaults, averaged curvature (K-FAC factor EMA 0.95, inverses every
    # 10 steps; Shampoo running sums, roots every 10 steps), pinned so that a re-run gives that table
    "TinyGPT": dict(widths=[256], grid=LR_GRID, out="your_model_lr_tinygpt",
                    options={"kfac": {"ema_decay": 0.95, "inverse_interval": 10},
                             "shampoo": {"beta": None, "update_interval": 10}}),
}


def dataset(name):
    return ml.datasets.text(block=32) if name == "text" else ml.datasets.load(name)


def model_fn(spec, param):
    """width, seed -> the spec's model at that width, parametrized against its base width."""
    return lambda width, seed=0: zoo.build(lambda w: spec["make"](w, param), width, spec["base"], param, seed)


# ---------------------------------------------------------------- coordinate checks
def coord(args):
    steps, seeds = ((1, 3), (0,)) if args.quick else ((1, 3, 10), (0, 1))
    frames, texts, fig = [], [], None
    for name, spec in MODELS.items():
        data, ws = dataset(spec["data"]), widths(args, spec["widths"])
        for param, opt, lr, damping in spec["runs"]:
            t = time.perf_counter()
            cc = ml.coord_check(model_fn(spec, param), opt, param, widths=ws, steps=steps, seeds=seeds,
                                data=data, lr=lr, damping=damping, batch_size=spec["batch"], device="cpu")
            run = f"{param}/{opt}" + ("" if lr == OPTIMIZERS[opt][0] else f" lr={lr:g}")
            frames.append(cc.frame.assign(model=name, run=run))
            if (name, run) == ("TinyGPT", "mup/kfac"):
                fig = coord_check_figure(cc.frame, 0.0, title=f"TinyGPT on text, coordinate check: muP K-FAC, "
                                                              f"lr {lr}, rho {damping}")
            print(f"{name} {run}: {time.perf_counter() - t:.0f}s; {cc.verdict(max(steps))}", flush=True)
        frame = pd.concat(frames, ignore_index=True)
        texts.append(model_text(name, spec, frame[frame.model == name], ws, seeds))
        write(args, "your_model_coord", "\n\n".join(texts), fig, frame)   # after each model: partial results


def role_table(frame, n_runs):
    """One row per run and step: the width exponent averaged over the layers of each role, the
    largest change, and how many of the ``n_runs`` (width, seed) runs stopped before that step."""
    rows = []
    for run, sub in frame.groupby("run", sort=False):
        ex = exponents_of(sub)
        for step in sorted(sub.step.unique()):
            s = ex[ex.step == step].groupby("role")["slope"].mean()
            at = sub[sub.step == step]
            rows.append({"run": run, "step": int(step), **{r: float(s.get(r, np.nan)) for r in ROLES},
                         "max change": f"{at.feature_change.max():.3g}",
                         "diverged": n_runs - len(at.drop_duplicates(["width", "seed"]))})
    return pd.DataFrame(rows).dropna(axis=1, how="all")


def kind(layer: str) -> str:
    """A layer's name without its block index: blocks.1.attn.q -> attn.q."""
    return re.sub(r"^blocks\.\d+\.", "", layer)


def kind_table(frame, param="mup", steps=(1, 10)):
    """muP width exponent per kind of layer (averaged over blocks), one column per optimizer and step."""
    cols = {}
    for run, sub in frame[frame.run.str.startswith(param + "/")].groupby("run", sort=False):
        ex = exponents_of(sub).assign(kind=lambda d: d.layer.map(kind))
        for step in steps:
            at = ex[ex.step == step]
            cols[f"{run.split('/')[1]} step {step}"] = at.groupby("kind", sort=False)["slope"].mean()
    return pd.DataFrame(cols).rename_axis("layer").reset_index()


def width_table(frame, kinds, step):
    """Mean over seeds and blocks of the rms change per width, for the named kinds of layer."""
    sub = frame[(frame.step == step) & frame.layer.map(kind).isin(kinds)].assign(layer=lambda d: d.layer.map(kind))
    t = sub.groupby(["run", "layer", "width"], sort=False)["feature_change"].mean().unstack("width")
    t.columns = [str(c) for c in t.columns]
    return md(t.reset_index(), "{:.3g}")


def model_text(name, spec, frame, ws, seeds):
    step = int(frame.step.max())
    probe = {"ResidualMLP": ["fc1", "readout", "norm.weight"], "ResNetCNN": ["conv1", "readout", "bn1.weight"],
             "TinyGPT": ["pos", "attn.q", "proj", "readout"]}.get(name, ["2", "2.bias", "4.bias"])  # see ``kind``
    return (f"### {name}\n\n{name} on {spec['data']}, base width {spec['base']}, widths {ws}, batch "
            f"{spec['batch']}, seeds {list(seeds)}. Width exponent per role (mean over that role's layers):\n\n"
            + md(role_table(frame, len(ws) * len(seeds)))
            + f"\n\nmuP width exponent per kind of layer (mean over blocks):\n\n" + md(kind_table(frame, steps=(1, step)))
            + f"\n\nrms change after step {step} per width (mean over seeds and blocks):\n\n"
            + width_table(frame, probe, step))


# ---------------------------------------------------------------- the readout's first step
def readout(args):
    """muP-SGD's first step (as in ``coord``) split into the parts of the readout's change on the probe
    batch: f(1) - f(0) = dW x(0) + W(0) dx + dW dx + db, with x the readout's input. The muP table
    makes each part Theta(1) as M -> infinity; this shows which part carries a negative slope at
    the finite widths of the coordinate check."""
    seeds, rows = ((0,) if args.quick else (0, 1)), []
    rms = lambda t: float(t.pow(2).mean().sqrt())   # noqa: E731
    for name in ("ResidualMLP", "ResNetCNN", "TinyGPT"):
        spec = MODELS[name]
        data, (lr, _) = dataset(spec["data"]), OPTIMIZERS["sgd"]
        for width in widths(args, spec["widths"]):
            for seed in seeds:
                model = model_fn(spec, "mup")(width, seed)
                store = {}
                hook = model.readout.register_forward_hook(lambda m, i, o: store.__setitem__("x", i[0].detach()))
                x = data.x_train[:64]
                model.eval()
                f0, x0 = model(x).detach(), store["x"]
                w0, b0 = model.readout.weight.detach().clone(), model.readout.bias.detach().clone()
                ml.run(model, ml.make_optimizer(model, "sgd", lr=lr), data, 1, batch_size=spec["batch"], seed=seed,
                       device="cpu")
                model.eval()
                f1, dx = model(x).detach(), store["x"] - x0
                hook.remove()
                dw, db = model.readout.weight.detach() - w0, model.readout.bias.detach() - b0
                rows.append({"model": name, "width": width, "seed": seed, "f(1) - f(0)": rms(f1 - f0),
                             "dW x(0)": rms(x0 @ dw.T), "W(0) dx": rms(dx @ w0.T), "dW dx": rms(dx @ dw.T),
                             "db": float(db.abs().max())})
    df = pd.DataFrame(rows)
    parts = ["f(1) - f(0)", "dW x(0)", "W(0) dx", "dW dx", "db"]
    mean = df.groupby(["model", "width"], sort=False)[parts].mean()
    slopes = pd.DataFrame({m: {c: ml.fit_slope(g.index.get_level_values("width"), g[c]) for c in parts[:3]}
                           for m, g in mean.groupby(level="model", sort=False)}).T
    text = (f"muP-SGD (lr {lr}), first step, rms over the probe batch (the first 64 training examples) of each "
            f"part of the readout's change, mean over seeds {list(seeds)} (db: largest entry):\n\n"
            + md(mean.reset_index(), "{:.4f}") + "\n\nWidth exponent of each part:\n\n"
            + md(slopes.rename_axis("model").reset_index()))
    write(args, "your_model_readout", text, None, df)


# ---------------------------------------------------------------- K-FAC beyond the first step
class ResidualVariant(nn.Module):
    """``zoo.ResidualMLP`` (2 blocks) with its LayerNorms (``ln``) and residual additions (``res``)
    optional: without both it is embed -> (fc1 -> relu -> fc2) x 2 -> readout, a relu chain in which
    two linear maps meet between blocks."""

    def __init__(self, width, ln=True, res=True):
        super().__init__()
        norm = (lambda: nn.LayerNorm(width)) if ln else nn.Identity   # noqa: E731
        self.res, self.embed, self.norm = res, nn.Linear(64, width), norm()
        self.blocks = nn.ModuleList(nn.ModuleDict({"norm": norm(), "fc1": nn.Linear(width, width),
                                                   "fc2": nn.Linear(width, width)}) for _ in range(2))
        self.readout = nn.Linear(width, 10)

    def forward(self, x):
        h = self.embed(x.flatten(1))
        for b in self.blocks:
            u = b["fc2"](b["fc1"](b["norm"](h)).relu())
            h = h + u if self.res else u
        return self.readout(self.norm(h))


GROWTH = [   # name, make(width), lr, freeze the LayerNorm parameters
    ("LayerNorm + residual (= ResidualMLP)", lambda w: ResidualVariant(w), 0.1, False),
    ("LayerNorm + residual, LayerNorm frozen", lambda w: ResidualVariant(w), 0.1, True),
    ("residual, no LayerNorm", lambda w: ResidualVariant(w, ln=False), 0.1, False),
    ("LayerNorm, no residual", lambda w: ResidualVariant(w, res=False), 0.1, False),
    ("neither", lambda w: ResidualVariant(w, ln=False, res=False), 0.1, False),
    ("LayerNorm + residual, lr 0.03", lambda w: ResidualVariant(w), 0.03, False),
    ("plain relu MLP, depth 3", lambda w: plain(w, 3, nn.ReLU), 0.1, False),
    ("plain relu MLP, depth 6", lambda w: plain(w, 6, nn.ReLU), 0.1, False),
    ("plain tanh MLP, depth 6", lambda w: plain(w, 6, nn.Tanh), 0.1, False),
    ("plain relu MLP, depth 6, lr 0.03", lambda w: plain(w, 6, nn.ReLU), 0.03, False),
]


MEMORY = {"this batch": {}, "EMA 0.95": {"ema_decay": 0.95}}   # K-FAC's curvature: the default, averaged


def growth(args):
    """muP-K-FAC (rho 0.1, inverses every step) for 10 steps on variants of the residual MLP and on
    plain MLPs, with this batch's factors (the default) and with factors averaged with decay 0.95:
    which part of the model, its depth, the lr or the curvature memory makes the hidden layers'
    change grow with width after step 1."""
    seeds, ws = ((0,) if args.quick else (0, 1)), widths(args, [64, 128, 256, 512, 1024])
    rows = []
    for (name, make, lr, freeze), memory in itertools.product(GROWTH, MEMORY):
        def optimizer(model, lr=lr, freeze=freeze, memory=memory):
            opt = ml.make_optimizer(model, "kfac", lr=lr, damping=0.1, inverse_interval=1, **MEMORY[memory])
            for g in opt.param_groups:
                if freeze and g.get("layer") is None:   # the group of vector-like parameters (LayerNorm)
                    g["lr"] = 0.0
            return opt
        cc = ml.coord_check(lambda w, seed=0, make=make: zoo.build(make, w, 64, "mup", seed), optimizer, "mup",
                            widths=ws, steps=(1, 3, 10), seeds=seeds, data="digits", batch_size=64, device="cpu")
        for step in (1, 3, 10):
            s = cc.slopes_by_role(step)
            rows.append({"model": name, "lr": f"{lr:g}", "curvature": memory, "step": step,
                         **{r: s[r] for r in ("input", "hidden", "output")}})
        print(f"{name} {memory}: {cc.verdict(10)}", flush=True)
    df = pd.DataFrame(rows)
    table = df.pivot_table(index=["model", "lr", "curvature"], columns="step", values=["input", "hidden", "output"],
                           sort=False)
    table.columns = [f"{role} step {step}" for role, step in table.columns]
    text = (f"muP-K-FAC (rho 0.1, inverses every step; curvature: this batch's factors, the default, or factors "
            f"averaged with decay 0.95) on variants of the residual MLP and plain MLPs, digits, batch 64, widths "
            f"{ws}, seeds {list(seeds)}; width exponent per role after steps 1, 3 and 10:\n\n"
            + md(table.reset_index()))
    write(args, "your_model_growth", text, None, df)


# ---------------------------------------------------------------- lr transfer
def lr_run(spec, data, opt, param, width, lr, damping, seed, steps, options=None):
    """Train one model; the loss on the whole training set after the last step (inf if diverged)."""
    model = model_fn(spec, param)(width, seed)
    optimizer = ml.make_optimizer(model, opt, lr=lr, damping=damping, **(options or {}).get(opt, {}))
    recs = ml.run(model, optimizer, data, steps,
                  batch_size=spec["batch"], seed=seed, device="cpu")
    train = dataclasses.replace(data, x_test=data.x_train, y_test=data.y_train)
    ok = not recs[-1]["diverged"]
    return {"train_loss": ml.evaluate(model, train)["test_loss"] if ok else math.inf,
            "test_accuracy": recs[-1].get("test_accuracy", math.nan) if ok else math.nan,
            "status": "ok" if ok else "diverged", "steps_run": len(recs)}


def lr_transfer(args):
    setup, spec = LR_SETUPS[args.lr_model], MODELS[args.lr_model]
    data, seeds = dataset(spec["data"]), [0] if args.quick else [0, 1]
    path = Path(args.out) / f"{setup['out']}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            done[(r["optimizer"], r["param"], r["width"], r["lr"], r["seed"], r["steps"])] = r

    def runs(opt, params, width, lrs):
        for lr in lrs:
            for param in params:
                for seed in seeds:
                    key = (opt, param, width, lr, seed, args.steps)
                    if key not in done:
                        t = time.perf_counter()
                        done[key] = dict(zip(["optimizer", "param", "width", "lr", "seed", "steps"], key),
                                         **lr_run(spec, data, opt, param, width, lr, OPTIMIZERS[opt][1], seed,
                                                  args.steps, setup["options"]),
                                         seconds=round(time.perf_counter() - t, 1))
                        with path.open("a") as f:
                            f.write(json.dumps(done[key]) + "\n")
                        print(done[key], flush=True)

    grid = setup["grid"][1:4] if args.quick else setup["grid"]
    tuned, opts = {}, args.lr_optimizers.split(",")
    if not set(opts) <= {"kfac", "shampoo"}:
        raise SystemExit(f"--lr-optimizers: expected kfac and/or shampoo, comma-separated, got {args.lr_optimizers!r}")
    for opt in opts:
        runs(opt, ["mup"], LR_BASE, grid)   # SP == muP at the base width
        base = pd.DataFrame([r for k, r in done.items() if k[0] == opt and k[2] == LR_BASE and k[5] == args.steps])
        loss = base.groupby("lr")["train_loss"].mean()
        tuned[opt] = float(loss.idxmin())
        i = LR_GRID.index(tuned[opt])
        for width in setup["widths"][:1] if args.quick else setup["widths"]:
            runs(opt, ["sp", "mup"], width, LR_GRID[max(i - 1, 0): i + 2])
    df = pd.DataFrame([r for k, r in done.items() if k[5] == args.steps and k[0] in tuned])
    df = pd.concat([df, df[df.width == LR_BASE].assign(param="sp")], ignore_index=True)   # the same model
    write(args, setup["out"], lr_text(args.lr_model, spec, df, tuned, seeds, args.steps), None, df)


def lr_text(name, spec, df, tuned, seeds, steps):
    mean = df.groupby(["optimizer", "param", "width", "lr"])["train_loss"].mean()
    ws = sorted(df.width.unique())
    rows, opts = [], list(tuned)
    for opt in opts:
        for lr in sorted(df[df.optimizer == opt].lr.unique()):
            row = {"optimizer": opt, "lr": f"{lr:g}" + (" (tuned at 64)" if lr == tuned[opt] else "")}
            for param in ("sp", "mup"):
                for w in ws:
                    v = mean.get((opt, param, w, lr))
                    row[f"{param} {w}"] = "-" if v is None else f"{v:.4f}"
            rows.append(row)
    best = mean.groupby(["optimizer", "param", "width"]).idxmin().map(lambda k: f"{k[-1]:g}").unstack("width")
    best.columns = [str(c) for c in best.columns]
    acc = df.groupby(["optimizer", "param", "width", "lr"])["test_accuracy"].mean()
    at_tuned = pd.DataFrame({f"{p} {w}": [acc.get((o, p, w, tuned[o]), math.nan) for o in opts]
                             for p in ("sp", "mup") for w in ws}, index=opts)
    return (f"{name} on {spec['data']}, base width {LR_BASE}, {steps} steps, batch {spec['batch']}, seeds "
            f"{seeds}; K-FAC rho {OPTIMIZERS['kfac'][1]}, Shampoo eps {OPTIMIZERS['shampoo'][1]}. Loss on the whole "
            f"training set after the last step (mean over seeds; inf: a seed diverged), per lr and width:\n\n"
            + md(pd.DataFrame(rows)) + "\n\nBest lr of each row (lowest mean loss; wide widths ran the lr tuned "
            f"at {LR_BASE} and its two neighbours):\n\n" + md(best.reset_index())
            + "\n\nTest accuracy at the lr tuned at width 64 (mean over seeds):\n\n"
            + md(at_tuned.rename_axis("optimizer").reset_index(), "{:.3f}"))


PARTS = {"coord": coord, "readout": readout, "growth": growth, "lr": lr_transfer}


def run(args):
    t0, c0 = time.perf_counter(), time.process_time()
    if getattr(args, "steps", None) is None:
        args.steps = 20 if args.quick else 100
    part = getattr(args, "part", "all")
    for name in (list(PARTS) if part == "all" else [part]):
        t, c = time.perf_counter(), time.process_time()
        PARTS[name](args)
        print(f"== {name}: wall {time.perf_counter() - t:.0f}s, cpu {time.process_time() - c:.0f}s", flush=True)
    print(f"== exp_your_model total: wall {time.perf_counter() - t0:.0f}s, cpu {time.process_time() - c0:.0f}s",
          flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", default="all", choices=[*PARTS, "all"])
    p.add_argument("--out", default="docs/results")
    p.add_argument("--lr-model", default="ResidualMLP", choices=list(LR_SETUPS), help="the model of --part lr")
    p.add_argument("--lr-optimizers", default="kfac,shampoo", help="the optimizers of --part lr, comma-separated")
    p.add_argument("--steps", type=int, default=None, help="training steps of each lr-transfer run (100; --quick: 20)")
    p.add_argument("--executor", default="serial", help="unused: every run is serial, on the CPU")
    p.add_argument("--workers", type=int, default=1, help="unused")
    p.add_argument("--quick", action="store_true", help="a smoke test: fewer widths, seeds, steps, lrs")
    run(p.parse_args(argv))


if __name__ == "__main__":
    main()
