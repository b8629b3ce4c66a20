"""Learning-rate transfer up to width 4096 on digits and MNIST-1D, and a Table-2 analogue.

    python scripts/exp_scale.py            # 450 runs, ~30 min of one core; resumable (docs/results/scale.jsonl)
    python scripts/exp_scale.py --quick    # a smoke test (digits, widths 64 and 256, 10 steps)

K-FAC and Shampoo, SP and muP, widths 64 ... 4096 (base width 64, where SP == muP), seeds 0, 1, 2,
50 steps of batch 64. Every run uses current-batch curvature, at every width:
K-FAC ``ema_decay=0, inverse_interval=1`` (A, B of this batch: the push-through path, R x R
solves only) and Shampoo ``beta=0, update_interval=1`` (L = G G^T, R = G^T G of this batch:
the thin-SVD path); damping at the package defaults (K-FAC rho 0.1, Shampoo eps 1e-4).

Learning rates lie on the half-decade grid lr_k = (1 or 3) x 10^floor(k/2) (k = -6 ... 2 is
1e-3 ... 10). The loss is the whole training set's after the last step (a diverged run: inf).
Per (dataset, optimizer, param), widths in increasing order:
  1. seed 0 on a window of k: the whole grid below width WINDOW_FROM, else the previous width's
     best k +- 2. While the window's best sits on its edge the window grows by one step, beyond
     1e-3 ... 10 too, so every optimum found is interior.
  2. seeds 1 and 2 on the seed-0 best +- 1 step and on the lr tuned at width 64. The best lr is
     the lowest mean loss over the 3 seeds among lrs that have all 3; that set grows the same way.
The Table-2 analogue (muTransfer): test accuracy at width M at the lr tuned at width 64, SP and
muP, and for both also at their own best lr of width M (is muP >= SP even against SP's tuned lr?).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

import mupso_lite as ml
from mupso_lite.plots import accuracy_vs_width_figure, lr_transfer_figure, save_html
from reproduce import BASE, lowest_mean, md, write

DATASETS = ("digits", "mnist1d")
OPTIMIZERS = ("kfac", "shampoo")
PARAMS = ("sp", "mup")
WIDTHS = (64, 256, 1024, 4096)
SEEDS = (0, 1, 2)
K_GRID = (-6, 2)          # 1e-3 ... 10
K_LIMITS = (-12, 6)       # how far a window may grow: 1e-6 ... 1000
WINDOW_FROM = 4096        # from this width on, stage 1 scans the previous best +- 2 steps only
OPTIONS = {"kfac": {"ema_decay": 0.0, "inverse_interval": 1},
           "shampoo": {"beta": 0.0, "update_interval": 1}}
NAMES = {"kfac": "K-FAC", "shampoo": "Shampoo", "sp": "SP", "mup": "muP"}


def lr_of(k: int) -> float:
    """The k-th half-decade learning rate: 1e-3, 3e-3, 0.01, ... for k = -6, -5, -4, ..."""
    return float(f"{(1, 3)[k % 2]}e{k // 2}")


K_OF = {lr_of(k): k for k in range(K_LIMITS[0], K_LIMITS[1] + 1)}


def plan(args) -> dict:
    if args.quick:
        return dict(datasets=("digits",), widths=(64, 256), seeds=(0, 1), k_grid=(-4, 0), steps=min(args.steps, 10))
    return dict(datasets=DATASETS, widths=tuple(args.widths), seeds=SEEDS, k_grid=K_GRID, steps=args.steps)


# ---------------------------------------------------------------- running and reading runs
def results_path(args) -> Path:
    return Path(args.out) / "scale.jsonl"


def run_runs(args, p, wanted) -> pd.DataFrame:
    """Run the (dataset, optimizer, param, width, k, seed) in ``wanted`` not yet in the file."""
    grids = [{"dataset": ds, "optimizer": o, "param": pa, "width": w, "lr": lr_of(k), "seed": s, **OPTIONS[o]}
             for ds, o, pa, w, k, s in sorted(wanted)]
    ml.sweep(grids, results=results_path(args), steps=p["steps"], executor=args.executor,
             workers=args.workers, base_width=BASE, batch_size=64, progress=False)
    return load(args, p)


def load(args, p) -> pd.DataFrame:
    """This experiment's runs: k added, ``loss`` = train_loss with diverged runs as inf."""
    path = results_path(args)
    df = ml.load_results(path) if path.exists() else pd.DataFrame()
    if df.empty:
        return df
    df = df[(df.steps == p["steps"]) & df.status.isin(["ok", "diverged"])].copy()
    df["k"] = df["lr"].map(K_OF)
    df["loss"] = df["train_loss"].astype(float).where(df.status == "ok", np.inf).fillna(np.inf)
    return df


def best_k(df, key, width, seeds):
    """(k, mean loss) of the lowest mean loss over ``seeds`` among lrs that have all of them."""
    ds, o, pa = key
    return lowest_mean(df[(df.dataset == ds) & (df.optimizer == o) & (df.param == pa) & (df.width == width)], seeds)


def edge_neighbor(k, ks):
    """The missing neighbour of ``k`` in ``ks`` (lower first), within K_LIMITS; None if interior."""
    for n in (k - 1, k + 1):
        if n not in ks and K_LIMITS[0] <= n <= K_LIMITS[1]:
            return n
    return None


def grow(args, p, sets, width, seeds):
    """Run ``seeds`` on every k of ``sets`` (a dict key -> set of k, grown in place) until each
    key's best k is interior; returns the runs and {key: best k}."""
    while True:
        df = run_runs(args, p, {(*key, width, k, s) for key, ks in sets.items() for k in ks for s in seeds})
        best, grew = {}, False
        for key, ks in sets.items():
            best[key], _ = best_k(df, key, width, seeds)
            n = edge_neighbor(best[key], ks) if best[key] is not None else None
            if n is not None:
                ks.add(n)
                grew = True
        if not grew:
            return df, best


def search(args, p) -> tuple[pd.DataFrame, dict, dict]:
    """Stages 1 and 2 of the module docstring; returns runs, {(*key, width): best k}, {(ds, opt): base k}."""
    keys = [(ds, o, pa) for ds in p["datasets"] for o in OPTIMIZERS for pa in PARAMS]
    best, base, prev, df = {}, {}, {}, None
    for w in p["widths"]:
        t = time.perf_counter()
        full = set(range(p["k_grid"][0], p["k_grid"][1] + 1))
        window = {key: set(full) if w < WINDOW_FROM or key not in prev else set(range(prev[key] - 2, prev[key] + 3))
                  for key in keys}
        df, best0 = grow(args, p, window, w, p["seeds"][:1])
        cand = {key: {k for k in (best0[key] - 1, best0[key], best0[key] + 1) if K_LIMITS[0] <= k <= K_LIMITS[1]}
                | ({base[key[:2]]} if key[:2] in base else set()) for key in keys}
        df, best_w = grow(args, p, cand, w, p["seeds"])
        for key in keys:
            best[(*key, w)] = prev[key] = best_w[key]
            if w == BASE and key[2] == "sp":   # at the base width SP == muP: tune there once
                base[key[:2]] = best_w[key]
        print(f"width {w}: {time.perf_counter() - t:.0f}s, best lr "
              + ", ".join(f"{ds}/{o}/{pa} {lr_of(best_w[(ds, o, pa)]):g}" for ds, o, pa in keys), flush=True)
    return df, best, base


# ---------------------------------------------------------------- tables
def best_lr_table(df, best, p, ds) -> pd.DataFrame:
    """Rows: width, then the shift of the best lr from the first to the last width in half decades."""
    rows = []
    for w in p["widths"]:
        row = {"width": str(w)}
        for o in OPTIMIZERS:
            for pa in PARAMS:
                k, loss = best_k(df, (ds, o, pa), w, p["seeds"])
                row[f"{NAMES[o]} {NAMES[pa]}"] = f"{lr_of(k):g} ({loss:.3f})"
        rows.append(row)
    shift = {"width": f"shift {p['widths'][0]}->{p['widths'][-1]} (half decades)"}
    first, last = p["widths"][0], p["widths"][-1]
    for o in OPTIMIZERS:
        for pa in PARAMS:
            shift[f"{NAMES[o]} {NAMES[pa]}"] = f"{best[(ds, o, pa, last)] - best[(ds, o, pa, first)]:+d}"
    return pd.DataFrame(rows + [shift])


def accuracy_cell(df, ds, o, pa, w, k, seeds) -> str:
    """Test accuracy mean ± std over the seeds that finished; diverged seeds counted apart."""
    sub = df[(df.dataset == ds) & (df.optimizer == o) & (df.param == pa) & (df.width == w) & (df.k == k)
             & df.seed.isin(seeds)]
    acc = sub.loc[sub.status == "ok", "test_accuracy"].astype(float)
    cell = f"{acc.mean():.4f} ± {acc.std(ddof=0):.4f}" if len(acc) else "-"
    n_div = int((sub.status == "diverged").sum())
    return cell + (f" ({n_div}/{len(sub)} diverged)" if n_div else "")


def table2(df, best, base, p, ds) -> pd.DataFrame:
    rows = []
    for w in p["widths"]:
        row = {"width": str(w)}
        for o in OPTIMIZERS:
            kb = base[(ds, o)]
            for pa in PARAMS:
                row[f"{NAMES[o]} {NAMES[pa]} @ lr {lr_of(kb):g}"] = accuracy_cell(df, ds, o, pa, w, kb, p["seeds"])
            for pa in PARAMS:
                ks = best[(ds, o, pa, w)]
                row[f"{NAMES[o]} {NAMES[pa]} @ own best lr"] = f"{lr_of(ks):g}: " + accuracy_cell(df, ds, o, pa, w, ks,
                                                                                                  p["seeds"])
        rows.append(row)
    return pd.DataFrame(rows)


def diverged_table(df, p) -> pd.DataFrame:
    """Diverged / all runs per dataset, width, optimizer and param (every lr and seed run)."""
    rows = []
    for ds in p["datasets"]:
        for w in p["widths"]:
            row = {"dataset": ds, "width": str(w)}
            for o in OPTIMIZERS:
                for pa in PARAMS:
                    sub = df[(df.dataset == ds) & (df.width == w) & (df.optimizer == o) & (df.param == pa)]
                    row[f"{NAMES[o]} {NAMES[pa]}"] = f"{int((sub.status == 'diverged').sum())}/{len(sub)}"
            rows.append(row)
    return pd.DataFrame(rows)


def accuracy_frame(df, best, base, p) -> pd.DataFrame:
    """The runs of Table 2, labelled for the figure: SP / muP at the base lr and at their own best lr."""
    parts = []
    for (ds, o), kb in base.items():
        for w in p["widths"]:
            sel = (df.dataset == ds) & (df.optimizer == o) & (df.width == w)
            for pa in PARAMS:
                parts.append(df[sel & (df.param == pa) & (df.k == kb)].assign(series=f"{NAMES[pa]} @ width-{BASE} lr"))
                parts.append(df[sel & (df.param == pa) & (df.k == best[(ds, o, pa, w)])]
                             .assign(series=f"{NAMES[pa]} @ own best lr"))
    out = pd.concat(parts, ignore_index=True)   # the figure's legend reads "series", its panels "optimizer"
    return out.assign(optimizer=out.dataset + ", " + out.optimizer.map(NAMES))


# ---------------------------------------------------------------- the experiment
def run(args):
    p = plan(args)
    t = time.perf_counter()
    df, best, base = search(args, p)
    wall = time.perf_counter() - t
    cost = df["seconds"].astype(float).sum()
    options = "K-FAC ema_decay=0, inverse_interval=1; Shampoo beta=0, update_interval=1"
    parts = [f"{len(df)} runs, {p['steps']} steps of batch 64, widths {', '.join(map(str, p['widths']))} "
             f"(base {BASE}), seeds {', '.join(map(str, p['seeds']))}, {options}, default damping; "
             f"sum of the runs' wall-clock times {cost / 60:.1f} min."]
    for ds in p["datasets"]:
        parts.append(f"**{ds}: best lr (mean train loss over {len(p['seeds'])} seeds, whole training set) per width**"
                     "\n\n" + md(best_lr_table(df, best, p, ds)))
        parts.append(f"**{ds}: test accuracy (mean ± std over seeds) at the lr tuned at width {BASE} "
                     "(muTransfer), and at each width's own best lr**\n\n" + md(table2(df, best, base, p, ds)))
        fig = lr_transfer_figure(df[(df.dataset == ds) & (df.seed == p["seeds"][0])],   # diverged: an ×
                                 title=f"Learning-rate transfer on {ds}, seed {p['seeds'][0]} "
                                       f"(current-batch K-FAC and Shampoo, {p['steps']} steps)")
        save_html(fig, Path(args.out) / f"scale_lr_{ds}.html", "directory")
    parts.append("**Diverged runs / runs, all lrs and seeds**\n\n" + md(diverged_table(df, p)))
    acc = accuracy_frame(df, best, base, p)
    fig = accuracy_vs_width_figure(acc[acc.status == "ok"], by="series", facet="optimizer",   # SP dashed
                                   title=f"Test accuracy vs width at the width-{BASE} lr and at each width's best lr "
                                         "(mean ± std over seeds)")
    write(args, "scale", "\n\n".join(parts), fig, df.drop(columns=["curve", "feature_change"]))
    print(f"== scale: {wall:.0f}s", flush=True)
    return df, best, base


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/results")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--widths", type=int, nargs="+", default=list(WIDTHS),
                    help="widths, increasing, the first being the base width 64")
    ap.add_argument("--executor", default="serial", choices=["serial", "local", "ray"])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="a smoke test: digits, widths 64 and 256, 10 steps")
    args = ap.parse_args(argv)
    if args.widths[0] != BASE or sorted(args.widths) != args.widths:
        ap.error(f"--widths: expected increasing widths starting at the base width {BASE}")
    run(args)


if __name__ == "__main__":
    main()
