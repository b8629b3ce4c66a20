"""Reproduce the paper's qualitative results at laptop scale; tables and figures go to docs/results/.

    python scripts/reproduce.py coord          # width exponents, SP vs muP, 4 optimizers + K-FAC damping
    python scripts/reproduce.py coord --averaged   # the same with averaged curvature (the earlier defaults)
    python scripts/reproduce.py bias           # width exponents of the biases (bias=True), muP
    python scripts/reproduce.py lr             # lr transfer on digits, K-FAC and Shampoo, widths 64..2048
    python scripts/reproduce.py accuracy       # test accuracy vs width at the lr tuned at width 64
    python scripts/reproduce.py damping        # K-FAC damping transfer over 300 steps: pi, trace, table
    python scripts/reproduce.py zero-readout   # K-FAC with a zero last layer vs muP
    python scripts/reproduce.py all

The experiments that need more than a table each have their own script, run the same way:
    python scripts/exp_zero_readout.py     # zero readout: the first step as kernel ridge regression, damping x batch
    python scripts/exp_shampoo_root.py     # Shampoo at root 1/2 with a batch > 1
    python scripts/exp_cnn.py              # CNN coordinate check and damping transfer; FOOF and MC Fisher
    python scripts/exp_scale.py            # lr transfer to width 4096 on digits and mnist1d, 3 seeds
    python scripts/exp_curvature.py        # the current batch's curvature against averaged curvature

Each writes <name>.csv (and the sweeps <name>.jsonl, resumable), <name>.md (the tables
quoted in docs/results.md) and <name>.html (plotly, offline, sharing one plotly.min.js).
``--quick`` shrinks everything to a smoke test. Sized for 2 CPU cores: minutes per experiment.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

import mupso_lite as ml
from mupso_lite.coord import theory_slopes
from mupso_lite.plots import (accuracy_vs_width_figure, coord_check_figure, damping_transfer_figure, drawn_runs,
                              lr_transfer_figure, save_html)

BASE = 64
# base lr / damping per optimizer, the ones tuned at base width (same as tests/test_theory.py)
COORD_LR = {"sgd": (0.5, None), "adam": (0.01, None), "kfac": (0.1, 0.1), "shampoo": (0.1, 1e-4)}
LRS = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0]
DAMPING_STEPS = 300   # trace damping that followed the current tr(B) blew up between steps 125 and 231


def widths(args, full):
    return full[:3] if args.quick else full


def write(args, name, table_md: str, fig=None, frame=None):
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if frame is not None:
        frame.to_csv(out / f"{name}.csv", index=False)
    (out / f"{name}.md").write_text(table_md + "\n")
    if fig is not None:
        save_html(fig, out / f"{name}.html", plotlyjs="directory")
    print(table_md, flush=True)


def seed_means(rows, seeds) -> pd.Series:
    """Mean ``loss`` over ``seeds`` per lr index k, for the k that have a row for every seed
    (sorted by k). ``rows``: one setting at one width."""
    g = rows[rows.seed.isin(seeds)].groupby("k")["loss"]
    return g.mean()[g.count() == len(seeds)].sort_index()


def lowest_mean(rows, seeds) -> tuple:
    """(k, mean loss) of the lr index k with the lowest ``seed_means``; (None, inf) if no k has
    every seed."""
    mean = seed_means(rows, seeds)
    if mean.empty:
        return None, np.inf
    k = int(mean.idxmin())
    return k, float(mean[k])


def md(df: pd.DataFrame, fmt="{:+.2f}") -> str:
    """A DataFrame as a markdown table (floats with ``fmt``)."""
    cols = [str(c) for c in df.columns]
    rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        rows.append("| " + " | ".join(fmt.format(v) if isinstance(v, float) else str(v) for v in r) + " |")
    return "\n".join(rows)


# ---------------------------------------------------------------- width exponents
def coord(args):
    data = ml.datasets.teacher()
    ws = widths(args, [64, 128, 256, 512, 1024])
    steps, seeds = (1, 10), (0, 1) if not args.quick else (0,)
    runs = [(p, o, "table", *COORD_LR[o]) for o in ("sgd", "adam", "kfac", "shampoo") for p in ("sp", "mup")]
    runs += [("mup", "kfac", mode, 0.1, rho) for rho in (0.1, 0.01) for mode in ("fixed", "pi", "trace")]
    runs += [("mup", "kfac", "table", 0.1, 0.01)]
    rows, frames = [], []
    for param, opt, mode, lr, damping in runs:
        options = {"damping_mode": mode, "inverse_interval": 1} if opt == "kfac" else {}
        if args.averaged:   # the earlier defaults: K-FAC factors averaged with decay 0.95, Shampoo running sums
            options.update({"kfac": {"ema_decay": 0.95}, "shampoo": {"beta": None, "update_interval": 10}}.get(opt, {}))
        t = time.perf_counter()
        cc = ml.coord_check(lambda w, seed=0: ml.MLP(16, 4, w, 3, base_width=BASE, param=param, seed=seed),
                            opt, param, widths=ws, steps=steps, seeds=seeds, data=data, lr=lr,
                            damping=damping, device="cpu", **options)
        label = f"{param}/{opt}" + (f"/{mode} rho={damping:g}" if opt == "kfac" else "")
        theory = theory_slopes(param, opt, mode)
        for step in steps:
            s = cc.slopes_by_role(step)
            rows.append({"run": label, "step": step, **{r: s.get(r, np.nan) for r in ("input", "hidden", "output")},
                         "theory (in, hid, out)": "-" if theory is None else
                         "{:+g} / {:+g} / {:+g}".format(theory["input"], theory["hidden"], theory["output"]),
                         "max change": float(cc.frame[cc.frame.step == step]["feature_change"].max())})
        frames.append(cc.frame.assign(run=label))
        if label == "mup/kfac/table rho=0.1":
            fig = coord_check_figure(cc.frame, theory, title=f"Coordinate check: {label}, lr {lr}")
        print(f"{label}: {time.perf_counter() - t:.1f}s", flush=True)
    table = pd.DataFrame(rows)
    write(args, "coord_averaged" if args.averaged else "coord",
          md(table.assign(**{"max change": table["max change"].map("{:.3g}".format)})),
          fig, pd.concat(frames, ignore_index=True))


def bias(args):
    """Width exponents of the features and of the biases themselves (``bias=True``), muP."""
    data = ml.datasets.teacher()
    ws, steps = widths(args, [64, 128, 256, 512, 1024]), (1, 3, 10)
    rows = []
    for opt in ("sgd", "adam", "kfac", "foof", "shampoo"):
        lr_, damping_ = COORD_LR.get(opt, (0.1, 0.1))
        cc = ml.coord_check(lambda w, seed=0: ml.MLP(16, 4, w, 3, base_width=BASE, bias=True, seed=seed),
                            opt, "mup", widths=ws, steps=steps, seeds=(0, 1) if not args.quick else (0,),
                            data=data, lr=lr_, damping=damping_, device="cpu",
                            **({"inverse_interval": 1} if opt in ("kfac", "foof") else {}))
        for step in steps:
            s = cc.slopes_by_role(step)
            rows.append({"run": f"mup/{opt}", "step": step,
                         **{r: s[r] for r in ("input", "hidden", "output", "input bias", "hidden bias", "output bias")}})
    write(args, "bias", md(pd.DataFrame(rows)))


# ---------------------------------------------------------------- sweeps on digits
def run_sweep(args, name, grid, steps):
    path = Path(args.out) / f"{name}.jsonl"
    return ml.sweep(grid, results=path, steps=steps, executor=args.executor, workers=args.workers,
                    base_width=BASE, dataset="digits")


def best_table(df, x, keys=("optimizer", "param")):
    """Best ``x`` (lowest mean train_loss over seeds) per width and ``keys``; diverged -> inf."""
    df = df.assign(train_loss=df["train_loss"].astype(float).fillna(np.inf))
    mean = df.groupby([*keys, "width", x])["train_loss"].mean().reset_index()
    best = mean.loc[mean.groupby([*keys, "width"])["train_loss"].idxmin()]
    best = best.assign(cell=[f"{v:g} ({loss:.3f})" for v, loss in zip(best[x], best["train_loss"])])
    return best.pivot_table(index="width", columns=list(keys), values="cell", aggfunc="first")


def lr(args):
    ws = widths(args, [64, 256, 1024, 2048])
    grid = {"width": ws, "lr": LRS if not args.quick else LRS[2:5], "param": ["sp", "mup"],
            "optimizer": ["kfac", "shampoo"], "seed": [0]}
    df = run_sweep(args, "lr_transfer", grid, args.steps)
    table = best_table(df, "lr")
    table.columns = [f"{o} {p}" for o, p in table.columns]
    text = (f"Best lr (train loss on the whole training set after {args.steps} steps) per width:\n\n"
            + md(table.reset_index().astype(str)))
    write(args, "lr_transfer", text, lr_transfer_figure(drawn_runs(df), facet="param"),
          df.drop(columns=["curve", "feature_change"]))


def accuracy(args):
    ws = widths(args, [64, 256, 1024])
    lr_path = Path(args.out) / "lr_transfer.jsonl"
    base_lr = {"kfac": 0.1, "shampoo": 0.1}
    if lr_path.exists():  # the lr tuned at the base width (where SP == muP)
        lrs = ml.load_results(lr_path)
        lrs = lrs[(lrs.width == BASE) & (lrs.status == "ok")]
        for opt in base_lr:
            sub = lrs[lrs.optimizer == opt]
            if len(sub):
                base_lr[opt] = float(sub.loc[sub["train_loss"].idxmin(), "lr"])
    grids = [{"width": ws, "lr": [base_lr[o]], "param": ["sp", "mup"], "optimizer": [o],
              "seed": [0, 1, 2] if not args.quick else [0]} for o in base_lr]
    df = run_sweep(args, "accuracy", grids, args.steps)
    g = df.groupby(["optimizer", "param", "width"])["test_accuracy"]
    table = (g.mean().map("{:.4f}".format) + " ± " + g.std(ddof=0).map("{:.4f}".format)).unstack([0, 1])
    table.columns = [f"{o} {p}" for o, p in table.columns]
    text = (f"Test accuracy on digits after {args.steps} steps at the lr tuned at width {BASE} "
            f"({', '.join(f'{k} {v:g}' for k, v in base_lr.items())}), mean ± std over seeds:\n\n"
            + md(table.reset_index().astype(str)))
    write(args, "accuracy", text, accuracy_vs_width_figure(df[df.status == "ok"]),
          df.drop(columns=["curve", "feature_change"]))


def damping(args):
    """Long runs (300 steps): trace damping that followed the current tr(B) blew up late."""
    ws, steps = widths(args, [64, 256, 1024]), DAMPING_STEPS if not args.quick else 20
    grid = {"width": ws, "damping": [1e-3, 1e-2, 1e-1, 1.0, 10.0], "lr": [0.1], "param": ["mup"],
            "optimizer": ["kfac"], "damping_mode": ["pi", "trace", "table"], "seed": [0, 1] if not args.quick else [0]}
    df = run_sweep(args, "damping_transfer", grid, steps)
    table = best_table(df, "damping", keys=("damping_mode",))
    loss = df.assign(train_loss=df["train_loss"].astype(float).where(df.status == "ok"))
    loss = loss.groupby(["damping_mode", "width", "damping"])["train_loss"].agg(lambda v: v.mean(skipna=False))
    loss = loss.unstack("damping")
    loss.columns = [f"{c:g}" for c in loss.columns]
    flagged = df[(df.status != "ok") | df["warning"].fillna("").astype(bool)] if "warning" in df else df[df.status != "ok"]
    text = (f"K-FAC (muP, lr 0.1): best damping (mean train loss of {df.seed.nunique()} seeds after {steps} steps) "
            f"per width:\n\n" + md(table.reset_index().astype(str))
            + f"\n\nMean train loss after {steps} steps (rows: mode, width; columns: damping; "
            "nan: a seed diverged):\n\n" + md(loss.reset_index(), "{:.3g}")
            + f"\n\nDiverged or unstable runs: {len(flagged)} of {len(df)}"
            + "".join(f"\n- {r.damping_mode} width {r.width} damping {r.damping:g} seed {r.seed}: {r.status}"
                      + (f" ({r.warning})" if isinstance(getattr(r, 'warning', None), str) and r.warning else "")
                      for r in flagged.itertuples()))
    write(args, "damping_transfer", text, damping_transfer_figure(drawn_runs(df)),
          df.drop(columns=["curve", "feature_change"]))


def zero_readout(args):
    data = ml.datasets.teacher()
    ws = widths(args, [64, 128, 256, 512, 1024])
    rows, frames = [], []
    for opt in ("kfac", "sgd", "shampoo"):
        lr_, damp = COORD_LR[opt]
        for zero in (False, True):
            options = {"inverse_interval": 1} if opt == "kfac" else {}
            cc = ml.coord_check(lambda w, seed=0: ml.MLP(16, 4, w, 3, base_width=BASE, zero_readout=zero, seed=seed),
                                opt, "mup", widths=ws, steps=(1, 2, 10), seeds=(0, 1), data=data, lr=lr_,
                                damping=damp, device="cpu", **options)
            label = f"{opt} {'zero readout' if zero else 'muP (b_L = 1)'}"
            frames.append(cc.frame.assign(run=label))
            for step in (2, 10):
                sub = cc.frame[(cc.frame.step == step) & (cc.frame.role == "hidden")]
                m = sub.groupby("width")["feature_change"].mean()
                rows.append({"run": label, "step": step, "hidden change @64": m.iloc[0],
                             f"hidden change @{ws[-1]}": m.iloc[-1], "hidden slope": cc.slopes_by_role(step)["hidden"],
                             "output change @64": sub.groupby("width")["output_change"].mean().iloc[0]})
    acc = run_sweep(args, "zero_readout", {"width": widths(args, [64, 256, 1024]), "zero_readout": [False, True],
                                           "optimizer": ["kfac", "sgd"], "lr": [0.1], "seed": [0, 1]}, args.steps)
    g = acc.groupby(["optimizer", "zero_readout", "width"])
    acc_table = (g["test_accuracy"].mean().map("{:.4f}".format) + " (train loss "
                 + g["train_loss"].mean().map("{:.4f}".format) + ")").unstack([0, 1])
    acc_table.columns = [f"{o} {'zero' if z else 'muP'}" for o, z in acc_table.columns]
    table = pd.DataFrame(rows)
    frame = pd.concat(frames, ignore_index=True)
    fig = coord_check_figure(frame[frame.run == "kfac zero readout"], theory=None,
                             title="K-FAC, zero-initialized last layer (muP otherwise)")
    text = (md(table, "{:.3g}") + f"\n\nDigits, lr 0.1, {args.steps} steps, test accuracy (mean of 2 seeds):\n\n"
            + md(acc_table.reset_index().astype(str)))
    write(args, "zero_readout", text, fig, frame)


EXPERIMENTS = {"lr": lr, "accuracy": accuracy, "coord": coord, "bias": bias, "damping": damping,
               "zero-readout": zero_readout}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("experiment", choices=[*EXPERIMENTS, "all"])
    p.add_argument("--out", default="docs/results")
    p.add_argument("--steps", type=int, default=50, help="training steps of the digits sweeps")
    p.add_argument("--executor", default="local", choices=["local", "serial", "ray"])
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="a smoke test: fewer widths, lrs and seeds")
    p.add_argument("--averaged", action="store_true",
                   help="coord: K-FAC factors averaged with decay 0.95 and Shampoo running sums (roots every 10 "
                        "steps) instead of the current batch's curvature; writes coord_averaged.*")
    args = p.parse_args(argv)
    for name in (EXPERIMENTS if args.experiment == "all" else [args.experiment]):
        t = time.perf_counter()
        EXPERIMENTS[name](args)
        print(f"== {name}: {time.perf_counter() - t:.0f}s", flush=True)


if __name__ == "__main__":
    main()
