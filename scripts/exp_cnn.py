"""Coordinate checks beyond the MLP, and K-FAC damping transfer on a CNN.

    python scripts/exp_cnn.py [--quick] [--part coord|mlp|lr|damping|all]

coord    ml.CNN on digits 8x8 images (width = channels, base width 16): SGD, K-FAC (table
         damping, rho 0.1, inverse every step), Shampoo; SP vs muP; widths 16..256, seeds 0, 1,
         slopes after steps 1 and 10 -> cnn_coord.{md,csv,html}.
mlp      the MLP teacher task of ``reproduce.py coord`` (widths 64..1024) with FOOF and with
         K-FAC on the MC Fisher (fisher="mc"); SP vs muP -> cnn_coord_mlp.{md,csv}.
lr       K-FAC (rho 0.1) lr scan on the CNN at the base width, where SP = muP -> cnn_lr.{md,jsonl}.
damping  muP K-FAC on the CNN at that lr, damping 1e-4..10 by decades plus the half decades
         either side of the base width's optimum, damping_mode "table" (rho_A, rho_B scaled per
         layer and width) vs "fixed" (the same rho at every width), widths 16..128, seeds 0, 1,
         ``--steps`` steps -> cnn_damping.{md,csv,html,jsonl}.

The width exponent of a layer is the slope of log(rms feature change) against log(width).
The one-step theory (``ml.coord.theory_slopes``) is derived for an MLP; for the CNN it reads
width as channels (a conv's fan-in is k^2 x channels, a constant factor), so it predicts the
same exponents. Wall times are for one thread on a shared 2-core machine.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

import mupso_lite as ml
from mupso_lite.coord import exponents_of, theory_slopes
from mupso_lite.plots import coord_check_figure, damping_transfer_figure, drawn_runs
from reproduce import COORD_LR, LRS, md, run_sweep, widths, write

BASE_CNN = 16                      # CNN base width (channels): SP == muP there
CNN_WIDTHS = [16, 32, 64, 128, 256]
MLP_WIDTHS = [64, 128, 256, 512, 1024]
MLP_BASE = 64
DAMP_WIDTHS = [16, 64, 128]        # width 256 costs ~130 s per 50-step K-FAC run on one core
DAMPINGS = [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0]
KFAC_RHO = 0.1
ROLES = ("input", "hidden", "output")

# SP FOOF, by the one-step argument: dW = -lr G (A + rho I)^-1 gives dh = -lr delta |x|^2 / (|x|^2 + rho)
# ~ -lr delta; SP's delta is M^-1/2 per entry below the readout and Theta(1) at it, and the
# propagated term W dx carries the same order (W W^T = Theta(1)), so (-1/2, -1/2, 0), as SP K-FAC.
SP_FOOF = {"input": -0.5, "hidden": -0.5, "output": 0.0, "f": 0.0}


def _theory(param, opt, mode="table"):
    return SP_FOOF if (param, opt) == ("sp", "foof") else theory_slopes(param, opt, mode)


def _theory_text(t):
    return "-" if t is None else "{:+g} / {:+g} / {:+g}".format(t["input"], t["hidden"], t["output"])


def slope_table(frame, n_runs):
    """One row per run label and step: width exponent per role (from ``exponents_of``), the
    theory, the largest feature change, and how many of the ``n_runs`` (width, seed) runs
    stopped before that step (diverged)."""
    rows = []
    for label, sub in frame.groupby("run", sort=False):
        param, opt = label.split()[0].split("/")
        ex = exponents_of(sub)
        for step in sorted(sub["step"].unique()):
            at = sub[sub.step == step]
            s = ex[ex.step == step].groupby("role")["slope"].mean()
            rows.append({"run": label, "step": int(step), **{r: float(s.get(r, np.nan)) for r in ROLES},
                         "theory (in, hid, out)": _theory_text(_theory(param, opt)),
                         "max change": f"{at['feature_change'].max():.3g}",
                         "diverged": n_runs - len(at.drop_duplicates(["width", "seed"]))})
    return md(pd.DataFrame(rows))


def width_table(frame, role="hidden", step=1):
    """Mean over seeds of the ``role`` layer's feature change per width (columns) and run (rows)."""
    sub = frame[(frame.role == role) & (frame.step == step)]
    t = sub.groupby(["run", "width"], sort=False)["feature_change"].mean().unstack("width")
    t = t.loc[sub["run"].unique()].map("{:.4f}".format)
    t.columns = [str(c) for c in t.columns]
    return md(t.reset_index())


# ---------------------------------------------------------------- 1a. CNN coordinate check
def coord(args):
    data = ml.datasets.digits()
    ws = widths(args, CNN_WIDTHS)
    steps, seeds = (1, 10), (0, 1) if not args.quick else (0,)
    frames, fig = [], None
    for opt in ("sgd", "kfac", "shampoo"):
        lr, damping = COORD_LR[opt]
        options = {"damping_mode": "table", "inverse_interval": 1} if opt == "kfac" else {}
        for param in ("sp", "mup"):
            t = time.perf_counter()
            cc = ml.coord_check(lambda w, seed=0: ml.CNN(data.image_shape, data.d_out, w, 3, base_width=BASE_CNN,
                                                         param=param, seed=seed),
                                opt, param, widths=ws, steps=steps, seeds=seeds, data=data, lr=lr,
                                damping=damping, device="cpu", **options)
            label = f"{param}/{opt} lr={lr:g}" + ("" if damping is None else
                                                  f" {'eps' if opt == 'shampoo' else 'rho'}={damping:g}")
            frames.append(cc.frame.assign(run=label))
            if (param, opt) == ("mup", "kfac"):
                fig = coord_check_figure(cc.frame, _theory(param, opt), title=f"CNN on digits, coordinate check: {label}")
            print(f"{label}: {time.perf_counter() - t:.1f}s; {cc.verdict(10)}", flush=True)
    frame = pd.concat(frames, ignore_index=True)
    write(args, "cnn_coord", coord_text(frame, ws, seeds), fig, frame)


def coord_text(frame, ws, seeds):
    return (f"ml.CNN (conv 3x3 -> conv 3x3 -> global average pool -> linear, relu) on digits 8x8 images, "
            f"base width {BASE_CNN} channels, widths {ws}, batch 64, seeds {list(seeds)}; slope of log rms "
            f"feature change against log width after steps 1 and 10:\n\n" + slope_table(frame, len(ws) * len(seeds))
            + "\n\nHidden-layer (convs.1) feature change after step 1, mean over seeds, per width:\n\n"
            + width_table(frame)
            + "\n\nThe same runs, step 1, slopes fitted over widths >= 64 only:\n\n"
            + slope_table(frame[(frame.width >= 64) & (frame.step == 1)], sum(w >= 64 for w in ws) * len(seeds)))


# ---------------------------------------------------------------- 1b. FOOF and MC-Fisher K-FAC on the MLP
def coord_mlp(args):
    data = ml.datasets.teacher()
    ws = widths(args, MLP_WIDTHS)
    steps, seeds = (1, 10), (0, 1) if not args.quick else (0,)
    runs = [("foof", 0.1, 0.01, {}), ("foof", 0.1, 0.1, {}),
            ("kfac", 0.1, KFAC_RHO, {"fisher": "mc", "damping_mode": "table", "inverse_interval": 1})]
    frames = []
    for opt, lr, damping, options in runs:
        for param in ("sp", "mup"):
            t = time.perf_counter()
            cc = ml.coord_check(lambda w, seed=0: ml.MLP(16, 4, w, 3, base_width=MLP_BASE, param=param, seed=seed),
                                opt, param, widths=ws, steps=steps, seeds=seeds, data=data, lr=lr,
                                damping=damping, device="cpu", **options)
            label = f"{param}/{opt}{' mc' if options.get('fisher') == 'mc' else ''} lr={lr:g} rho={damping:g}"
            frames.append(cc.frame.assign(run=label))
            print(f"{label}: {time.perf_counter() - t:.1f}s; {cc.verdict(10)}", flush=True)
    frame = pd.concat(frames, ignore_index=True)
    text = (f"MLP (depth 3, tanh) on the teacher task (16 inputs, 4 classes), base width {MLP_BASE}, "
            f"widths {ws}, batch 64, seeds {list(seeds)}; FOOF and K-FAC with the MC Fisher "
            f"(table damping, inverse every step). SP FOOF's theory row is the one-step argument of "
            f"scripts/exp_cnn.py (SP_FOOF):\n\n" + slope_table(frame, len(ws) * len(seeds)))
    write(args, "cnn_coord_mlp", text, None, frame)


# ---------------------------------------------------------------- 2. damping transfer on the CNN
def mean_loss(df, keys):
    """Mean over seeds of the full-training-set loss after the last step; a diverged run counts as inf."""
    df = df.assign(train_loss=df["train_loss"].astype(float).where(df["status"] == "ok", np.inf).fillna(np.inf))
    return df.groupby(keys)["train_loss"].mean()


def base_lr(args):
    """K-FAC (rho 0.1) lr with the lowest mean train loss at the base width (SP == muP there)."""
    grid = {"model": ["cnn"], "width": [BASE_CNN], "base_width": [BASE_CNN], "optimizer": ["kfac"],
            "param": ["mup"], "damping": [KFAC_RHO], "lr": LRS, "seed": [0, 1] if not args.quick else [0], **AVERAGED}
    df = run_sweep(args, "cnn_lr", grid, args.steps)
    loss = mean_loss(df, ["lr"])
    best = float(loss.idxmin())
    table = loss.reset_index().assign(train_loss=lambda d: d["train_loss"].map("{:.4f}".format))
    write(args, "cnn_lr", f"K-FAC on the CNN at the base width {BASE_CNN}, rho {KFAC_RHO}, {args.steps} steps: "
          f"train loss (mean over seeds) per lr; best lr {best:g}\n\n" + md(table.astype(str)))
    return best


# The damping transfer (and its lr scan) was measured with averaged factors, the defaults at the time:
# EMA 0.95, inverses every 10 steps. Pinned here so that a re-run gives the committed tables.
AVERAGED = {"ema_decay": [0.95], "inverse_interval": [10]}


def damping(args):
    lr = base_lr(args)
    ws = widths(args, DAMP_WIDTHS)
    seeds = [0, 1] if not args.quick else [0]
    common = {"model": ["cnn"], "base_width": [BASE_CNN], "optimizer": ["kfac"], "param": ["mup"], "lr": [lr],
              "damping_mode": ["table", "fixed"], "seed": seeds, "width": ws, **AVERAGED}
    df = run_sweep(args, "cnn_damping", {**common, "damping": DAMPINGS}, args.steps)
    # half decades either side of the base width's optimum (table == fixed there)
    at_base = mean_loss(df[df.width == BASE_CNN], ["damping"])
    rho0 = float(at_base.idxmin())
    half = [round(rho0 * 10 ** s, 10) for s in (-0.5, 0.5)]
    df = run_sweep(args, "cnn_damping", [{**common, "damping": DAMPINGS}, {**common, "damping": half}], args.steps)
    loss = mean_loss(df, ["damping_mode", "width", "damping"])
    best = loss.groupby(["damping_mode", "width"]).idxmin().map(lambda k: k[-1])
    best_cells = pd.DataFrame({mode: [f"{best[mode, w]:.3g} ({loss[mode, w, best[mode, w]]:.4f})" for w in ws]
                               for mode in ("table", "fixed")}, index=ws)
    best_cells.index.name = "width"
    full = loss.unstack(["damping_mode", "width"]).sort_index()
    full.columns = [f"{m} {w}" for m, w in full.columns]
    full = full.reset_index().assign(damping=lambda d: d["damping"].map("{:.3g}".format))
    at = at_rho(df, rho0)
    text = (f"muP K-FAC on the CNN (digits, base width {BASE_CNN}, lr {lr:g} = the best of {LRS} at the base "
            f"width with rho {KFAC_RHO}, {args.steps} steps, batch 64, seeds {seeds}). Best damping per width "
            f"(mean train loss over seeds on the whole training set):\n\n"
            + md(best_cells.reset_index().astype(str))
            + "\n\nTrain loss (mean over seeds; inf = a seed diverged) per damping, mode and width:\n\n"
            + md(full, "{:.4f}")
            + f"\n\nAt rho = {rho0:g} (the base width's optimum): mean over seeds of the train loss, test accuracy "
            f"and each layer's rms feature change after step {args.steps} (probe batch):\n\n" + md(at, "{:.4f}"))
    drawn = drawn_runs(df)   # a diverged run: an × at the panel's edge
    write(args, "cnn_damping", text, damping_transfer_figure(drawn) if (drawn.status == "ok").any() else None,
          df.drop(columns=["curve", "feature_change"]))


def at_rho(df, rho):
    """Train loss, test accuracy and last-step feature change per layer at damping ``rho``, by mode and width."""
    sub = df[np.isclose(df["damping"].astype(float), rho) & (df["status"] == "ok")]
    fc = pd.DataFrame(list(sub["feature_change"]), index=sub.index).add_prefix("change ")
    sub = pd.concat([sub[["damping_mode", "width", "train_loss", "test_accuracy"]], fc], axis=1)
    return sub.groupby(["damping_mode", "width"]).mean().reset_index()


PARTS = {"coord": coord, "mlp": coord_mlp, "lr": base_lr, "damping": damping}   # damping runs lr first


def run(args):
    t0 = time.perf_counter()
    part = getattr(args, "part", "all")
    for name in (["coord", "mlp", "damping"] if part == "all" else [part]):
        t = time.perf_counter()
        PARTS[name](args)
        print(f"== {name}: {time.perf_counter() - t:.0f}s", flush=True)
    print(f"== exp_cnn total: {time.perf_counter() - t0:.0f}s", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", default="all", choices=[*PARTS, "all"])
    p.add_argument("--out", default="docs/results")
    p.add_argument("--steps", type=int, default=50, help="training steps of the lr and damping sweeps")
    p.add_argument("--executor", default="local", choices=["local", "serial", "ray"])
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="a smoke test: fewer widths and seeds")
    run(p.parse_args(argv))


if __name__ == "__main__":
    main()
