"""Zero readout + K-FAC: the damping decides whether hidden features learn; step 1 is kernel ridge regression.

    python scripts/exp_zero_readout.py                 # all parts, about 20 minutes of one CPU core
    python scripts/exp_zero_readout.py first lr ema    # some parts
    python scripts/exp_zero_readout.py --quick --out /tmp/zr   # a smoke test

muP MLP (depth 3, tanh, base width 64), K-FAC with the table's damping (lr 0.1, ``damping`` = rho
at the base width), on a 1,024-example subset of digits (the size of Ishikawa & Karakida's
Table 3), test set the full digits test split (360 images).

sweep   zero readout (b_L -> infinity) vs muP's readout (b_L = 1): the hidden layer's feature
        change (rms of h_2(t) - h_2(0) on 64 probe examples) at step 20 and the test accuracy after
        ``--steps`` (50) steps, for rho x batch size x width x seed. The ratio zero / muP of the
        hidden change says how much the zero readout slows feature learning.
first   one K-FAC step from a zero readout on the whole subset (N = 1024): the model's test outputs
        against (a) the dense float64 formula f(x') = -lr (B + rho_B)^-1 G (A + rho_A)^-1 phi(x') and
        (b) the same step with the NNGP kernel, lr k(x')^T (K + lambda)^-1 (Y - 1/C) (B + rho_B)^-1,
        lambda = N rho_A / M = N rho / M0 (``mupso_lite.kernel``); plus the finite-width kernel's
        distance to the NNGP kernel and the test accuracy of each predictor.
quad    the accuracy of the NNGP kernel's quadrature (32 and 16 nodes against 64).
lr      large damping turns the table's K-FAC into muP-SGD with learning rate lr / rho^2 (see
        ``step_size``): zero vs muP readout at equal lr / rho^2 for rho 1, 10, 100, and muP-SGD.
ema     a check that the zero readout's effect is not the factor average's: the sweep's cell
        (width 256, batch 64) with current-batch factors (ema_decay 0, inverses every step).

Outputs: docs/results/zero_readout_{sweep,first,quadrature,lr,ema}.{md,csv}, zero_readout_sweep.{jsonl,html}.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

import mupso_lite as ml
from mupso_lite import kernel as kn
from reproduce import BASE, md, write

LR, N_SUBSET, PROBE_STEP = 0.1, 1024, 20


def subset(n: int = N_SUBSET) -> ml.Dataset:
    """Digits with its training split cut to the first n examples (test split unchanged)."""
    d = ml.datasets.digits()
    return dataclasses.replace(d, x_train=d.x_train[:n], y_train=d.y_train[:n])


# The factors these tables were measured with: averaged (EMA 0.95, inverses every 10 steps), the
# optimizers' defaults at the time; ``ema`` compares them with the current batch's (today's default).
AVERAGED = {"ema_decay": 0.95, "inverse_interval": 10}


def one_run(cfg: dict) -> dict:
    """Train one config; hidden (and input) change at step ``PROBE_STEP``, test metrics at the end."""
    torch.set_num_threads(1)
    data = subset(cfg["n"])
    model = ml.MLP(data.d_in, data.d_out, cfg["width"], 3, base_width=BASE, zero_readout=cfg["zero"],
                   seed=cfg["seed"])
    options = {**AVERAGED, **cfg.get("options", {})} if cfg.get("optimizer", "kfac") == "kfac" else {}
    opt = ml.make_optimizer(model, cfg.get("optimizer", "kfac"), lr=cfg.get("lr", LR), damping=cfg["rho"],
                            **options)
    start = time.perf_counter()
    recs = ml.run(model, opt, data, steps=cfg["steps"], batch_size=min(cfg["batch"], cfg["n"]), seed=cfg["seed"])
    last, at = recs[-1], min(PROBE_STEP, cfg["steps"])   # a shorter run: probed at its last step
    if len(recs) >= at and "feature_change" in recs[at - 1]:
        probe = recs[at - 1]
        changes = dict(hidden=probe["feature_change"]["layers.1"], input=probe["feature_change"]["layers.0"],
                       output=probe["output_change"])
    else:   # diverged before the probe step: no change there (NaN, which the tables leave out)
        changes = dict(hidden=np.nan, input=np.nan, output=np.nan)
    return {**cfg, **changes, "test_accuracy": last.get("test_accuracy", np.nan),
            "test_loss": last.get("test_loss", np.nan), "diverged": last["diverged"], "steps_run": last["step"],
            "seconds": time.perf_counter() - start}


def run_all(args, configs: list[dict], path: Path) -> pd.DataFrame:
    """Run the configs not yet in ``path`` (one JSON line per finished run: the sweep resumes)."""
    done = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    key = lambda c: json.dumps({k: c[k] for k in sorted(configs[0])}, sort_keys=True)  # noqa: E731
    have = {key(r) for r in done}
    todo = [c for c in configs if key(c) not in have]
    print(f"{path.name}: {len(todo)} of {len(configs)} runs to do", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    parallel = (args.workers or 1) > 1 and args.executor != "serial"
    with path.open("a") as f, ProcessPoolExecutor(args.workers if parallel else 1) as pool:
        for r in (pool.map(one_run, todo) if parallel else map(one_run, todo)):
            f.write(json.dumps(r) + "\n")
            f.flush()
            done.append(r)
    want = {key(c) for c in configs}
    return pd.DataFrame([r for r in done if key(r) in want])


# ---------------------------------------------------------------- the sweep
def sweep(args) -> pd.DataFrame:
    n = 256 if args.quick else N_SUBSET
    batches = [16, n] if args.quick else [4, 16, 64, 256, n]
    plan = ({64: ([0.1, 10.0], [0])} if args.quick else
            {256: ([0.01, 0.1, 1.0, 10.0, 100.0], [0, 1]), 1024: ([0.1, 1.0, 10.0], [0])})
    configs = [dict(width=w, rho=rho, batch=b, seed=s, zero=z, n=n, steps=args.steps)
               for w, (rhos, seeds) in plan.items() for rho in rhos for b in batches for s in seeds
               for z in (False, True)]
    df = run_all(args, configs, Path(args.out) / "zero_readout_sweep.jsonl")
    keys = ["width", "rho", "batch", "zero"]
    mean = df.groupby(keys)[["hidden", "test_accuracy", "test_loss"]].mean().unstack("zero")   # NaN skipped
    diverged = df.groupby(keys)["diverged"].mean().unstack("zero")

    def pair(col, fmt):   # "muP / zero"; a run that diverged has no test metric: * some seeds, div. all
        one = lambda v, d: "div." if d == 1 else fmt.format(v) + ("*" if d > 0 else "")  # noqa: E731
        return pd.Series([f"{one(a, da)} / {one(b, db)}" for a, b, da, db in zip(
            mean[col][False], mean[col][True], diverged[False], diverged[True])], index=mean.index).unstack("batch")
    ratio = (mean["hidden"][True] / mean["hidden"][False]).unstack("batch")
    zero_abs, muP_abs = mean["hidden"][True].unstack("batch"), mean["hidden"][False].unstack("batch")
    acc, loss = pair("test_accuracy", "{:.2f}"), pair("test_loss", "{:.2f}")
    first_div = int(df[df.diverged].steps_run.min()) if df.diverged.any() else None
    before_probe = int((df.diverged & df.hidden.isna()).sum())   # diverged before the step-PROBE_STEP probe
    cols = {b: ("full" if b == n else f"batch {b}") for b in batches}

    def table(t, fmt):
        t = t.rename(columns=cols).reset_index()
        return md(t.assign(width=t.width.astype(str), rho=t.rho.map("{:g}".format)), fmt)
    seeds = "; ".join(f"width {w}: seeds {', '.join(map(str, s))}" for w, (_, s) in plan.items())
    text = (f"Hidden feature change at step {PROBE_STEP}, zero readout / muP readout (mean over seeds; {seeds}):\n\n"
            + table(ratio, "{:.2g}")
            + f"\n\nHidden feature change at step {PROBE_STEP}, muP readout:\n\n" + table(muP_abs, "{:.2g}")
            + f"\n\nHidden feature change at step {PROBE_STEP}, zero readout (the features are float32: "
            "changes below about 1e-7 of their O(1) entries are rounding, not measurement):\n\n"
            + table(zero_abs, "{:.2g}")
            + f"\n\nTest accuracy after {args.steps} steps, muP readout / zero readout:\n\n" + table(acc, "{}")
            + f"\n\nTest loss after {args.steps} steps, muP readout / zero readout:\n\n" + table(loss, "{}")
            + ("" if first_div is None else f"\n\n*: some seeds diverged, div.: all did (the earliest at step "
               f"{first_div}); test metrics are means over the others. "
               + (f"Every diverged run reached the step-{PROBE_STEP} probe." if not before_probe else
                  f"{before_probe} of them diverged before the step-{PROBE_STEP} probe: their hidden changes are "
                  "left out of the means (nan: every seed of that cell did).")))
    write(args, "zero_readout_sweep", text, ratio_figure(ratio, cols), df)
    return df


def ratio_figure(ratio: pd.DataFrame, cols: dict) -> go.Figure:
    ws = sorted(ratio.index.get_level_values("width").unique())
    fig = make_subplots(1, len(ws), subplot_titles=[f"width {w}" for w in ws], shared_yaxes=True)
    for i, w in enumerate(ws):
        sub = ratio.loc[w]
        for j, b in enumerate(sub.columns):
            fig.add_trace(go.Scatter(x=sub.index, y=sub[b], mode="lines+markers", name=cols[b], legendgroup=cols[b],
                                     showlegend=i == 0, line=dict(color=ml.plots.COLORS[j])), 1, i + 1)
        fig.update_xaxes(type="log", title_text="damping rho (base width)", row=1, col=i + 1)
    fig.update_yaxes(type="log", title_text=f"hidden change at step {PROBE_STEP}: zero / muP readout", row=1, col=1)
    fig.update_layout(title="K-FAC (muP, table damping): how much a zero readout slows the hidden layer",
                      legend=ml.plots.LEGEND)
    return fig


# ---------------------------------------------------------------- the first step
def first_step(args) -> pd.DataFrame:
    data = subset(256 if args.quick else N_SUBSET)
    x, y, xt, yt = data.x_train, data.y_train, data.x_test, data.y_test
    n, c = len(x), data.d_out
    ws, seeds, rhos = ([64, 256], [0], [1.0]) if args.quick else ([64, 256, 1024, 4096], [0, 1], [0.1, 1.0, 10.0])
    t = time.perf_counter()
    k_all = kn.nngp_kernel(torch.cat([x, xt]))        # the infinite-width kernel, train and test together
    k_inf, k_inf_t = k_all[:n, :n], k_all[n:, :n]
    print(f"NNGP kernel on {len(k_all)} points: {time.perf_counter() - t:.0f}s", flush=True)
    rel = lambda a, b: float((a.double() - b).norm() / b.norm())  # noqa: E731
    acc = lambda f: float((f.argmax(1) == yt).double().mean())  # noqa: E731
    rows = []
    for w in ws:
        for seed in seeds:
            for rho in rhos:
                model = ml.MLP(data.d_in, c, w, 3, base_width=BASE, zero_readout=True, seed=seed)
                phi, phi_t = kn.last_hidden_features(model, x), kn.last_hidden_features(model, xt)
                opt = ml.make_optimizer(model, "kfac", lr=LR, damping=rho)
                rec = ml.run(model, opt, data, steps=1, batch_size=n, seed=seed)[0]
                f1 = model.eval()(xt).detach()
                rho_a, rho_b = opt.state[model.layers[2].weight]["rho_a"], opt.state[model.layers[2].weight]["rho_b"]
                dense = kn.kfac_first_step_readout(phi, y, phi_t, c, LR, rho_a, rho_b)
                nngp = kn.kfac_first_step_kernel(k_inf, k_inf_t, y, c, LR, n * rho_a / w, rho_b)
                k_w = kn.empirical_kernel(phi, phi)
                rows.append(dict(width=w, seed=seed, rho=rho, rho_a=rho_a, rho_b=rho_b, ridge=n * rho_a / w,
                                 hidden_change=rec["feature_change"]["layers.1"],
                                 vs_formula=rel(f1, dense), vs_nngp=rel(f1, nngp), kernel_error=rel(k_w, k_inf),
                                 acc_model=acc(f1), acc_nngp=acc(nngp)))
                print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    mean = df.groupby(["rho", "width"]).mean(numeric_only=True).reset_index()
    slopes = {rho: ml.fit_slope(g.width, g.vs_nngp) for rho, g in mean.groupby("rho")}
    show = pd.DataFrame({"rho": mean.rho.map("{:g}".format), "width": mean.width.astype(str),
                         "ridge lambda = N rho_A / M": mean.ridge.map("{:g}".format),
                         "model vs formula": mean.vs_formula.map("{:.1e}".format),
                         "model vs NNGP predictor": mean.vs_nngp.map("{:.3f}".format),
                         "kernel vs NNGP kernel": mean.kernel_error.map("{:.3f}".format),
                         "hidden change": mean.hidden_change.map("{:g}".format),
                         "test acc model": mean.acc_model.map("{:.3f}".format),
                         "test acc NNGP predictor": mean.acc_nngp.map("{:.3f}".format)})
    text = (f"One K-FAC step from a zero readout, full batch (N = {n}), lr {LR}; relative differences "
            f"|f - g| / |g| of the test outputs, mean over seeds {', '.join(map(str, seeds))}:\n\n" + md(show)
            + "\n\nWidth exponent of 'model vs NNGP predictor': "
            + ", ".join(f"rho {r:g}: {s:+.2f}" for r, s in slopes.items()))
    write(args, "zero_readout_first", text, None, df)
    return df


def quadrature(args) -> pd.DataFrame:
    """How accurate ``nngp_kernel``'s default 32-node quadrature is on digits: against 64 nodes."""
    x = subset(64 if args.quick else 200).x_train
    ref = kn.nngp_kernel(x, nodes=64)
    diffs = {k: kn.nngp_kernel(x, nodes=k) - ref for k in (16, 32)}
    df = pd.DataFrame([dict(nodes=k, relative=float(d.norm() / ref.norm()), max_abs=float(d.abs().max()))
                       for k, d in diffs.items()])
    text = (f"NNGP kernel of the first {len(x)} digits training images: quadrature with k nodes against 64 "
            f"nodes (|K_k - K_64| / |K_64| and the largest entry difference):\n\n" + md(df, "{:.2g}"))
    write(args, "zero_readout_quadrature", text, None, df)
    return df


# ---------------------------------------------------------------- factor average or not
def ema(args) -> pd.DataFrame:
    n, w = (256, 64) if args.quick else (N_SUBSET, 256)
    configs = [dict(width=w, rho=rho, batch=64, seed=0, zero=z, n=n, steps=args.steps, options=opts)
               for opts in ({}, {"ema_decay": 0.0, "inverse_interval": 1}) for rho in (0.1, 1.0, 10.0)
               for z in (False, True)]
    df = pd.DataFrame(map(one_run, configs))
    df["factors"] = df.options.map(lambda o: "current batch" if o else "EMA 0.95")
    m = df.pivot_table(index=["factors", "rho"], columns="zero", values="hidden")
    show = pd.DataFrame({"muP readout": m[False], "zero readout": m[True], "zero / muP": m[True] / m[False]})
    text = (f"Hidden change at step {PROBE_STEP} (width {w}, batch 64, seed 0), K-FAC factors averaged "
            "or taken from the current batch:\n\n" + md(show.reset_index(), "{:.3g}"))
    write(args, "zero_readout_ema", text, None, df.drop(columns="options"))
    return df


# ---------------------------------------------------------------- the step size, not the damping
def step_size(args) -> pd.DataFrame:
    """With rho_A, rho_B much larger than A's and B's eigenvalues, the update is G / (rho_A rho_B): under
    the table that is lr / rho^2 times (M/M0, 1, M0/M) in the (input, hidden, output) layer, which is
    muP-SGD's learning rate with base lr / rho^2. So compare at equal lr / rho^2, and with muP-SGD."""
    n, w = (256, 64) if args.quick else (N_SUBSET, 256)
    etas = [0.01, 0.5] if args.quick else [0.001, 0.01, 0.1, 0.5]
    rhos = [10.0] if args.quick else [1.0, 10.0, 100.0]
    configs = [dict(width=w, rho=rho, lr=eta * rho ** 2, eta=eta, optimizer="kfac", batch=64, seed=0, zero=z, n=n,
                    steps=args.steps) for rho in rhos for eta in etas for z in (False, True)]
    configs += [dict(width=w, rho=0.0, lr=eta, eta=eta, optimizer="sgd", batch=64, seed=0, zero=z, n=n,
                     steps=args.steps) for eta in etas for z in (False, True)]
    df = pd.DataFrame(map(one_run, configs))
    df["run"] = [f"K-FAC rho {r:g}" if o == "kfac" else "muP-SGD" for o, r in zip(df.optimizer, df.rho)]
    m = df.pivot_table(index=["run", "eta"], columns="zero", values=["hidden", "test_accuracy", "test_loss"])
    show = pd.DataFrame({"muP readout hidden": m["hidden"][False].map("{:.3g}".format),
                         "zero / muP hidden": (m["hidden"][True] / m["hidden"][False]).map("{:.3g}".format),
                         "test acc muP / zero": m["test_accuracy"][False].map("{:.3f}".format) + " / "
                         + m["test_accuracy"][True].map("{:.3f}".format),
                         "test loss muP / zero": m["test_loss"][False].map("{:.2f}".format) + " / "
                         + m["test_loss"][True].map("{:.2f}".format)}).reset_index()
    show = show.assign(eta=show.eta.map("{:g}".format)).rename(columns={"eta": "lr / rho^2 (SGD: lr)"})
    text = (f"Width {w}, batch 64, seed 0, {args.steps} steps; K-FAC lr = eta rho^2; hidden change at step "
            f"{PROBE_STEP}:\n\n" + md(show))
    write(args, "zero_readout_lr", text, None, df.drop(columns=[c for c in ("options",) if c in df]))
    return df


PARTS = {"sweep": sweep, "first": first_step, "quad": quadrature, "ema": ema, "lr": step_size}


def run(args):
    for part in (getattr(args, "parts", None) or PARTS):
        t = time.perf_counter()
        PARTS[part](args)
        print(f"== {part}: {time.perf_counter() - t:.0f}s", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("parts", nargs="*", help="any of sweep, first, quad, ema, lr (default: all)")
    p.add_argument("--out", default="docs/results")
    p.add_argument("--steps", type=int, default=50, help="training steps of each sweep run")
    p.add_argument("--executor", default="local", choices=["local", "serial"])
    p.add_argument("--workers", type=int, default=None, help="processes for the sweep (default: 1)")
    p.add_argument("--quick", action="store_true", help="a smoke test: one small width, fewer configs")
    args = p.parse_args(argv)
    if set(args.parts) - set(PARTS):
        p.error(f"parts: expected any of {', '.join(PARTS)}, got {' '.join(args.parts)}")
    t = time.perf_counter()
    run(args)
    print(f"== total wall time {time.perf_counter() - t:.0f}s", flush=True)


if __name__ == "__main__":
    main()
