"""Shampoo at root 1/2 with a batch > 1: the readout stops seeing the hidden features move.

    python scripts/exp_shampoo_root.py [--quick] [coord spectrum widths digits]   # ~16 min, one core

The muP-Shampoo rows of the table (lr exponents (2e-1, 0, 1-2e), eps ~ |x|^2 |delta|^2) come
from a one-step, batch-of-one argument. With a batch of B examples a hidden layer's gradient
G = sum_r delta_r x_r^T = U S V^T has rank B, and the first step (L = G G^T, R = G^T G) is

    update = U diag(s (s^2 + eps)^(-2e)) V^T:   e = 1/4 -> U V^T (every direction the same step),
                                                e = 1/2 -> U S^-1 V^T (the weakest, the largest).

G's d_out strong directions carry what the readout sees (delta_r = phi'_r * W_L^T e_r); the other
B - d_out come from the examples' different phi' masks, are weak and overlap W_L's row space
less as the width grows. Root 1/2 gives these weak directions the larger step. The output
change splits as

    f(t) - f(0) = W_L Dx + DW_L x + DW_L Dx    (x: readout input at t = 0, Dx = x(t) - x),

and a = |P Dx| / |Dx| (P: projector onto W_L(0)'s rows) is the alignment of Dx with the
readout; a random direction has a = sqrt(d_out / M), slope -1/2.

coord     slopes (log change vs log width, widths 64..1024, seeds 0-1, steps 1 and 2) of every
          term, root 1/2 at batch 1..64, d_out 64, eps 1e-8; then candidate fixes at batch 64.
spectrum  the first step's singular directions on the hidden layer, per batch and width.
widths    step 1 out to width 8192 (current-batch statistics: the same first step, cheaper).
digits    the cost: loss / test accuracy on digits, lr tuned at width 64, widths 64..1024.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
import torch.nn.functional as F

import mupso_lite as ml
from mupso_lite.roles import layer_roles
from reproduce import BASE, md, run_sweep, widths, write

WIDTHS = [64, 128, 256, 512, 1024]
LRS = [0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0]
# the candidate settings at root 1/2 (name: make_optimizer options); "table" is what fails. Measured
# with running sums and roots every 10 steps (the defaults at the time; pinned here so a re-run gives
# the same tables); the widths table uses this batch's statistics (today's default) instead.
SUMS = dict(beta=None, update_interval=10)
VARIANTS = {"root 1/4, eps 1e-4": dict(root=0.25, damping=1e-4, eps_mode="absolute", **SUMS),
            "root 1/2, eps 1e-4": dict(root=0.5, damping=1e-4, eps_mode="absolute", **SUMS),
            "root 1/2, relative eps 1e-2": dict(root=0.5, damping=1e-2, eps_mode="relative", **SUMS),
            "root 1/2, relative eps 0.1": dict(root=0.5, damping=0.1, eps_mode="relative", **SUMS)}


# ---------------------------------------------------------------- measurements
def readout_input(model, x):
    """(readout input x_L, readout weight W_L) of ``model`` on the batch ``x``."""
    out = [m for _, m, role in layer_roles(model) if role == "output"][-1]
    store = {}
    handle = out.register_forward_hook(lambda m, i, o: store.__setitem__("x", i[0].detach().clone()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return store["x"], out.weight.detach().clone()


def readout_parts(before, after) -> dict:
    """rms of f(t) - f(0) and of its terms W_L Dx, DW_L x, DW_L Dx on the probe batch
    (``before``/``after``: ``readout_input`` at t = 0 and t), and the alignment a = |P Dx| / |Dx|."""
    (x0, w0), (x1, w1) = before, after
    dx, dw = x1 - x0, w1 - w0
    rms = lambda t: float(t.pow(2).mean().sqrt())  # noqa: E731
    q, _ = torch.linalg.qr(w0.T.double())          # orthonormal basis of W_L's rows (M x d_out)
    return {"f": rms(x1 @ w1.T - x0 @ w0.T), "W_L Dx": rms(dx @ w0.T), "DW_L x": rms(x0 @ dw.T),
            "DW_L Dx": rms(dx @ dw.T), "align": float((dx.double() @ q).norm() / dx.double().norm())}


def first_step_weights(s, root, eps, relative=False):
    """The step Shampoo's first update gives singular direction i: s_i (s_i^2 + eps)^(-2 root)
    (``relative``: eps s_max^2)."""
    ridge = eps * s.max() ** 2 if relative else eps
    return s * (s * s + ridge) ** (-2 * root)


def hidden_spectrum(model, data, batch: int, seed: int = 0,
                    rules=(("root 1/4", 0.25, 1e-4, False), ("root 1/2", 0.5, 1e-4, False),
                           ("root 1/2 rel 1e-2", 0.5, 1e-2, True))) -> dict:
    """Shampoo's first step on the hidden layer of ``model`` for one batch: the singular values s
    of its gradient G (top = the d_out strongest, rest = the others), each direction's overlap
    |P u_i| with the readout's rows, and per rule (name, root, eps, relative) the step of the
    rest over the top's and the alignment |P Dh| / |Dh| of Dh = update h_in(probe)."""
    layers = layer_roles(model)
    hidden = next(m for _, m, role in layers if role == "hidden")
    d_out = layers[-1][1].weight.shape[0]
    idx = torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(seed))[:batch]
    store = {}
    hooks = [hidden.register_forward_hook(lambda m, i, o: store.update(x=i[0].detach())),
             hidden.register_full_backward_hook(lambda m, gi, go: store.update(d=go[0].detach()))]
    try:
        F.cross_entropy(model(data.x_train[idx]), data.y_train[idx]).backward()
        g = (store["d"].T @ store["x"]).double()
        with torch.no_grad():
            model(data.x_train[:64])
        x_probe = store["x"].double()
    finally:
        for h in hooks:
            h.remove()
        model.zero_grad(set_to_none=True)
    u, s, vh = torch.linalg.svd(g, full_matrices=False)
    k = min(batch, *g.shape)
    u, s, vh = u[:, :k], s[:k], vh[:k]
    q, _ = torch.linalg.qr(layers[-1][1].weight.detach().T.double())
    overlap = (q.T @ u).norm(dim=0)
    top = min(d_out, k)
    rest = slice(top, k) if k > top else slice(0, 0)
    med = lambda t: float(t.median()) if t.numel() else float("nan")  # noqa: E731
    out = {"s_max": float(s[0]), "s_rest / s_max": med(s[rest]) / float(s[0]),
           "overlap top": float(overlap[:top].mean()), "overlap rest": med(overlap[rest])}
    for name, root, eps, relative in rules:
        w = first_step_weights(s, root, eps, relative)
        dh = x_probe @ (u * w @ vh).T
        out[f"step rest/top {name}"] = med(w[rest]) / float(w[:top].mean())
        out[f"align {name}"] = float((dh @ q).norm() / dh.norm())
    return out


# ---------------------------------------------------------------- coordinate checks
def config(name, batch=64, lr=0.1, eps=1e-4, **kw):
    """A coordinate-check setting: root 1/2, eps 1e-4, lr 0.1, batch 64 unless given."""
    return {"name": name, "batch": batch, "lr": lr, "eps": eps, **kw}


def make_opt(cfg):
    """model -> Shampoo with the table's lr and eps for ``cfg`` (root, eps_mode, grafting, beta,
    update_interval); ``cfg["only"]``: the one layer that moves (every other layer's lr is 0)."""
    options = {k: cfg[k] for k in ("eps_mode", "grafting", "beta", "update_interval") if k in cfg}

    def make(model):
        opt = ml.make_optimizer(model, "shampoo", lr=cfg["lr"], damping=cfg["eps"], param="mup",
                                root=cfg.get("root", 0.5), **options)
        for group in opt.param_groups:
            if cfg.get("only") and group["layer"] != cfg["only"]:
                group["lr"] = 0.0
        return opt
    return make


def coord_rows(cfg, ws, seeds, steps, data):
    """One row per (width, seed, step): input/hidden/output feature change and ``readout_parts``,
    from ``ml.train`` (the batches and probe of ``ml.coord_check``)."""
    rows = []
    for width in ws:
        for seed in seeds:
            model = ml.MLP(data.d_in, data.d_out, width, 3, base_width=BASE, param="mup", seed=seed)
            probe = data.x_train[:64]
            before = readout_input(model, probe)
            opt = make_opt(cfg)(model)
            for rec in ml.train(model, opt, data, steps=max(steps), batch_size=cfg["batch"], seed=seed,
                                device="cpu"):
                if rec["diverged"]:
                    raise RuntimeError(f"{cfg['name']} width {width}: {rec['message']}")
                if rec["step"] in steps:
                    fc = rec["feature_change"]
                    rows.append({"run": cfg["name"], "width": width, "seed": seed, "step": rec["step"],
                                 "input": fc["layers.0"], "hidden": fc["layers.1"], "output": rec["output_change"],
                                 **readout_parts(before, readout_input(model, probe))})
            ml.optim.release_hooks(opt)
    return rows


SLOPES = ["input", "hidden", "output", "W_L Dx", "DW_L x", "align"]


def slope_table(frame):
    """Width exponent (slope of log seed-mean against log width) of every measured term."""
    out = []
    for (run, step), sub in frame.groupby(["run", "step"], sort=False):
        m = sub.groupby("width")[SLOPES].mean()
        out.append({"run": run, "step": step, **{c: ml.fit_slope(m.index, m[c]) for c in SLOPES},
                    "max change": float(sub[["input", "hidden"]].max().max())})
    return pd.DataFrame(out)


REPRODUCE = [config(f"batch {b}", batch=b) for b in (1, 4, 16, 64)] + [
    config("batch 64, d_out 64", d_out=64), config("batch 64, eps 1e-8", eps=1e-8),
    config("batch 64, lr 0.01", lr=0.01), config("batch 64, lr 0.01, hidden layer only", lr=0.01, only="layers.1")]
SEARCH = [config("root 1/4 (default)", root=0.25), config("root 1/4, lr 0.01", root=0.25, lr=0.01)] + [
    config(f"relative eps {c:g}, lr {lr:g}", lr=lr, eps=c, eps_mode="relative") for c in (1e-3, 1e-2, 1e-1)
    for lr in (0.1, 0.01)] + [
    config(f"batch {b}, relative eps {name}, lr 0.01", batch=b, lr=0.01, eps=c, eps_mode="relative")
    for b in (16, 256) for name, c in (("1e-2", 1e-2), ("1/B", 1 / b))] + [
    config("batch 64, relative eps 1/B, lr 0.01", lr=0.01, eps=1 / 64, eps_mode="relative"),
    config("graft sgd, lr 0.5", lr=0.5, grafting="sgd"), config("graft adam, lr 0.01", lr=0.01, grafting="adam")]


def coord(args, data):
    ws, seeds = widths(args, WIDTHS), (0,) if args.quick else (0, 1)
    frames, text = [], []
    for title, runs in (("Root 1/2 with the table (eps 1e-4)", REPRODUCE), ("Candidate fixes", SEARCH)):
        part = []
        for cfg in runs[:3] if args.quick else runs:
            t = time.perf_counter()
            part.append(pd.DataFrame(coord_rows({**SUMS, **cfg}, ws, seeds, (1, 2), data[cfg.get("d_out", 4)])))
            print(f"{cfg['name']}: {time.perf_counter() - t:.1f}s", flush=True)
        frame = pd.concat(part, ignore_index=True)
        text.append(f"**{title}** (batch 64, lr 0.1 unless named):\n\n" + md(slope_table(frame)))
        frames.append(frame)
    head = (f"Width exponents, muP MLP (depth 3, tanh) on the teacher task, Shampoo root 1/2 (muP table), "
            f"widths {ws[0]}..{ws[-1]}, seeds {list(seeds)}; columns: slope of log(seed-mean) against log(width) "
            "of the input / hidden / output feature change, the output's terms W_L Dx and DW_L x, and "
            "the alignment a of Dx with the readout; max change: largest input/hidden rms change.")
    write(args, "shampoo_root_coord", head + "\n\n" + "\n\n".join(text), frame=pd.concat(frames, ignore_index=True))


def spectrum(args, data):
    rows = []
    for batch in (1, 4, 16, 64):
        for width in widths(args, [64, 256, 1024]):
            for seed in (0, 1):
                model = ml.MLP(16, 4, width, 3, base_width=BASE, param="mup", seed=seed)
                rows.append({"batch": batch, "width": width, **hidden_spectrum(model, data[4], batch, seed)})
    table = pd.DataFrame(rows).groupby(["batch", "width"]).mean().reset_index()
    text = ("Shampoo's first step on the hidden layer (teacher task, muP init, seed-mean of 2): singular values "
            "of G (rest = all but the d_out = 4 strongest, median), their overlap |P u| with the readout's rows, "
            "the step the rest get over the top's, and the alignment |P Dh| / |Dh| of the probe feature change, "
            "for root 1/4 and 1/2 at eps 1e-4 and root 1/2 with relative eps 1e-2:\n\n"
            + md(table.astype({"batch": str, "width": str}), "{:.3g}"))
    write(args, "shampoo_root_spectrum", text, frame=table)


def widths_sweep(args, data):
    ws = [64, 128, 256, 512, 1024] if args.quick else [64, 128, 256, 512, 1024, 2048, 4096, 8192]
    runs = [config("root 1/2, eps 1e-4, lr 0.1"), config("root 1/2, eps 1e-4, lr 0.01", lr=0.01),
            config("root 1/2, relative eps 1e-2, lr 0.01", lr=0.01, eps=1e-2, eps_mode="relative"),
            config("root 1/2, relative eps 0.1, lr 0.01", lr=0.01, eps=0.1, eps_mode="relative"),
            config("root 1/4, eps 1e-4, lr 0.1", root=0.25), config("batch 1, root 1/2", batch=1)]
    frame = pd.concat([pd.DataFrame(coord_rows(dict(c, beta=0, update_interval=1), ws, (0,), (1,), data[4]))
                       for c in runs], ignore_index=True)
    rows, mid = [], min(1024, ws[-1] // 2)
    for run, sub in frame.groupby("run", sort=False):
        m = sub.set_index("width")
        lo, hi = m[m.index <= mid], m[m.index >= mid]
        rows.append({"run": run, **{f"f @{w}": m.loc[w, "output"] for w in m.index},
                     **{f"{c} {a}..{b}": ml.fit_slope(part.index, part[c]) for c in ("output", "W_L Dx", "hidden")
                        for part, a, b in ((lo, ws[0], mid), (hi, mid, ws[-1]))}})
    text = ("Step 1, seed 0, current-batch statistics (`beta=0, update_interval=1`: the same first step as the "
            "running sums, cheaper at large width). Output change f per width, and the slopes of the output, "
            f"of W_L Dx and of the hidden feature change over widths {ws[0]}..{mid} and {mid}..{ws[-1]}:\n\n"
            + md(pd.DataFrame(rows), "{:.3g}"))
    fig = go.Figure([go.Scatter(x=sub["width"], y=sub[col], name=f"{run}: {col}", mode="lines+markers")
                     for run, sub in frame.groupby("run", sort=False) for col in ("output", "W_L Dx")])
    fig.update_layout(title="Shampoo step 1: output change and its readout-input term vs width",
                      xaxis=dict(type="log", title="width M"), yaxis=dict(type="log", title="rms change"))
    write(args, "shampoo_root_widths", text, fig, frame)


def _finite(d):
    """``d`` with train_loss a float, inf for a diverged run."""
    return d.assign(train_loss=d.train_loss.astype(float).fillna(np.inf))


def _cell(r) -> str:
    return "diverged" if not np.isfinite(r.train_loss) else f"{r.train_loss:.3f} / {r.test_accuracy:.3f}"


def digits(args, data):
    """Train loss / test accuracy on digits: the lr grid at the two narrow widths (lr tuned at the
    base width, lowest seed-mean train loss, a diverged seed counting as inf); at the widest width
    the tuned lr, stepping down the grid until a run does not diverge."""
    ws, lrs = ([64, 256], LRS[2:5]) if args.quick else ([64, 256, 1024], LRS)
    seeds = [0] if args.quick else [0, 1]
    grids = [{"width": ws[:2], "lr": lrs, "optimizer": ["shampoo"], "seed": seeds, **{k: [v] for k, v in o.items()}}
             for o in VARIANTS.values()]
    df = run_sweep(args, "shampoo_root_digits", grids, args.steps)
    frames, rows = [df], []
    for name, o in VARIANTS.items():
        own = df[(df.root == o["root"]) & (df.damping == o["damping"]) & (df.eps_mode == o["eps_mode"])]
        mean = _finite(own).groupby(["width", "lr"]).mean(numeric_only=True)
        lr = float(mean.loc[ws[0], "train_loss"].idxmin())
        row = {"setting": name, "lr tuned @64": lr, f"best lr @{ws[1]}": float(mean.loc[ws[1], "train_loss"].idxmin()),
               **{f"@{w}": _cell(mean.loc[(w, lr)]) for w in ws[:2]}}
        if len(ws) > 2:
            failed = []
            for x in sorted((x for x in lrs if x <= lr), reverse=True):
                grid = {"width": [ws[2]], "lr": [x], "optimizer": ["shampoo"], "seed": [0],
                        **{k: [v] for k, v in o.items()}}
                frames.append(run_sweep(args, "shampoo_root_digits", grid, args.steps))
                r = _finite(frames[-1]).iloc[0]
                if np.isfinite(r.train_loss):
                    break
                failed.append(f"{x:g}")
            row[f"@{ws[2]} (seed 0)"] = (f"lr {x:g}: {_cell(r)}"
                                         + (f"; diverged at lr {', '.join(failed)}" if failed else ""))
        rows.append(row)
    text = (f"Digits, muP MLP (depth 3, tanh), batch 64, {args.steps} steps, Shampoo with the muP table. lr from "
            f"{lrs} tuned at width {ws[0]} (lowest seed-mean train loss, seeds {seeds}); cells: train loss (whole "
            "training set) / test accuracy at that lr, seed-mean (diverged: a seed diverged)"
            + (f". Width {ws[2]}: the tuned lr, or the largest lower one on the grid that does not diverge"
               if len(ws) > 2 else "") + ":\n\n"
            + md(pd.DataFrame(rows), "{:g}"))
    out = pd.concat(frames, ignore_index=True).drop_duplicates("key")
    write(args, "shampoo_root_digits", text, frame=out.drop(columns=["curve", "feature_change"], errors="ignore"))


PARTS = {"coord": coord, "spectrum": spectrum, "widths": widths_sweep, "digits": digits}


def run(args):
    start = time.perf_counter()
    data = {4: ml.datasets.teacher(), 64: ml.datasets.teacher(d_out=64)}
    for name in getattr(args, "parts", None) or PARTS:
        t = time.perf_counter()
        PARTS[name](args, data)
        print(f"{name}: {time.perf_counter() - t:.0f} s wall", flush=True)
    print(f"total {time.perf_counter() - start:.0f} s wall", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("parts", nargs="*", help=f"any of {', '.join(PARTS)} (default: all)")
    p.add_argument("--out", default="docs/results")
    p.add_argument("--steps", type=int, default=100, help="training steps of the digits runs")
    p.add_argument("--executor", default="serial", choices=["local", "serial", "ray"])
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="a smoke test: three widths, one seed, fewer runs")
    args = p.parse_args(argv)
    if set(args.parts) - set(PARTS):
        p.error(f"parts: expected any of {', '.join(PARTS)}, got {args.parts}")
    run(args)


if __name__ == "__main__":
    main()
