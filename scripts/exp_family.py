"""The second-order family: Muon and SOAP under SP and muP (docs/family.md has the derivation).

    python scripts/exp_family.py [--quick] [--part grad|coord|lr|all]

grad   the batch gradient's singular values per role (what SOAP's eps competes with) and the second
       batch's gradient in the first one's eigenbasis (dense?), widths 64 ... 1024 -> family_grad.{md,csv}

coord  coordinate checks at steps 1, 3, 10 on digits: MLP depth 3 (tanh), base width 64, batch 64,
       seeds 0 and 1. Widths 64 ... 2048 for the main rows (muP / SP Muon with Newton-Schulz, muP Muon
       with the two published lr rules "original" and "match_rms_adamw", muP / SP SOAP with the
       package defaults); widths 64 ... 1024 for the variants that look for a SOAP that stays
       width-stable after step 1 (basis refreshed every step, the previous batch's basis, muP-Adam's
       lr row, a larger eps scaled by the table, an eps relative to |G|_F, the basis of the current
       gradient). Base lr: Muon 0.02, SOAP 3e-3 (the references' defaults). Resumable: the runs already
       in family_coord.csv are not run again. -> family_coord.{md,csv,html}
lr     learning-rate transfer, SP vs muP, Muon (Newton-Schulz) and SOAP (defaults), and muP SOAP with
       explicit spectral normalization of its step, widths 64, 256, 1024, 50 steps of batch 64 on digits;
       the metric is the loss on the whole training set after the last step (a diverged run: inf).
       Half-decade grid lr = 1, 3 x 10^k. Per (optimizer, param, variant), widths in increasing order:
       seed 0 on the whole grid 1e-4 ... 1 at width 64, on the previous width's best +- 1 step above it,
       the window growing by a step while its best sits on its edge; then seeds 1 and 2 on the seed-0
       best +- 1 step and on the lr tuned at width 64, grown the same way, so every 3-seed best is interior.
       Resumable (family_lr.csv). -> family_lr.{md,csv,html}

One torch thread; wall times printed and written into the tables.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import mupso_lite as ml
from mupso_lite.coord import exponents_of
from mupso_lite.plots import coord_check_figure, lr_transfer_figure, save_html
from reproduce import BASE, lowest_mean, md, seed_means, write

FLAT = 0.1                      # |slope| below this: "flat" in the tables of this script
STEPS = (1, 3, 10)
ROLES = ("input", "hidden", "output")
LR = {"muon": 0.02, "soap": 3e-3}   # coordinate checks: the references' default lrs
FULL = (64, 128, 256, 512, 1024, 2048)
SHORT = (64, 128, 256, 512, 1024)


# ---------------------------------------------------------------- SOAP variants (script-local)
class RelativeEpsSOAP(ml.SOAP):
    """SOAP whose eps is ``rel`` |G|_F of the matrix's current gradient (set before each step): scale-free
    like Muon, so it follows the table's eps exponents without being told them."""

    def __init__(self, params, rel: float = 0.01, **kw):
        super().__init__(params, **kw)
        self.rel = rel

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            if group["use_soap"]:
                grads = [p.grad for p in group["params"] if p.grad is not None and p.dim() >= 2]
                if grads:
                    group["eps"] = self.rel * float(grads[0].float().norm())
        return super().step(closure)


class CurrentBasisSOAP(ml.SOAP):
    """A diagnostic: L, R take this gradient and Q_L, Q_R are refreshed *before* the step, every step,
    in float64 (float32 rounding noise in G' would be turned into +-1 entries by Adam's division). With
    shampoo_beta=0 the basis is this gradient's: G' = Q_L^T G Q_R is diagonal, as at step 1."""

    def _soap_step(self, p, st, group):
        g = p.grad.reshape(p.shape[0], -1).to(torch.float64)
        b1, b2 = group["betas"]
        beta = b2 if group["shampoo_beta"] is None else group["shampoo_beta"]
        t = st["step"] = st.get("step", 0) + 1
        self._accumulate(st, g, beta)
        if "Q_L" not in st:
            from mupso_lite.optim.soap import eigenbasis
            st["Q_L"], st["Q_R"] = eigenbasis(st["L"]), eigenbasis(st["R"])
            st["exp_avg"], st["exp_avg_sq"] = torch.zeros_like(g), torch.zeros_like(g)
        else:
            self._refresh(st)
        ql, qr, m, v = st["Q_L"], st["Q_R"], st["exp_avg"], st["exp_avg_sq"]
        m.lerp_(g, 1 - b1)
        gr = ql.T @ g @ qr
        v.mul_(b2).addcmul_(gr, gr, value=1 - b2)
        m_hat = (ql.T @ m @ qr) / (1 - b1 ** t)
        n = ql @ (m_hat / ((v / (1 - b2 ** t)).sqrt() + group["eps"])) @ qr.T
        p.add_(n.reshape(p.shape).to(p.dtype), alpha=-group["lr"])


def regroup(opt, cls, group_options=None, **kw):
    """The same param groups (lrs, eps) in another optimizer class; ``group_options`` set on every group."""
    return cls([{**g, **(group_options or {})} for g in opt.param_groups], **kw)


def adam_row(model, lr):
    """SOAP with muP-Adam's lr row (0, 1, 1) instead of the table's (-1/2, 0, 1/2); eps from the table."""
    opt = ml.make_optimizer(model, "soap", lr=lr)
    lrs = {s.name: s.lr for s in ml.layer_scales(model, model.param, "adam", lr=lr)}
    for g in opt.param_groups:
        if g.get("use_soap") and g.get("layer") in lrs:
            g["lr"] = lrs[g["layer"]]
    return opt


# (label, param, optimizer, widths, make_optimizer options or a callable model -> optimizer, one-step theory)
def coord_runs():
    lr_m, lr_s = LR["muon"], LR["soap"]
    ns = {"orthogonalize": "newton_schulz"}
    return [
        ("muP Muon (NS)", "mup", "muon", FULL, ns, (0, 0, 0)),
        ("SP Muon (NS)", "sp", "muon", FULL, ns, (-0.5, 0, 0.5)),
        ("muP Muon, lr_rule original", "mup", "muon", FULL, {**ns, "lr_rule": "original"}, (0, 0, 0.5)),
        ("muP Muon, lr_rule match_rms_adamw", "mup", "muon", FULL, {**ns, "lr_rule": "match_rms_adamw"}, (0, 0.5, 1)),
        ("muP SOAP (defaults: eps 1e-8, frequency 10)", "mup", "soap", FULL, {}, (0, 0, 0)),
        ("SP SOAP (defaults)", "sp", "soap", FULL, {}, (-0.5, 0, 0.5)),
        ("muP Muon (SVD)", "mup", "muon", SHORT, {"orthogonalize": "svd"}, (0, 0, 0)),
        ("muP SOAP, frequency 1", "mup", "soap", SHORT, {"precondition_frequency": 1}, (0, 0, 0)),
        ("muP SOAP, frequency 1, shampoo_beta 0 (previous batch's basis)", "mup", "soap", SHORT,
         {"precondition_frequency": 1, "shampoo_beta": 0.0}, (0, 0, 0)),
        ("muP SOAP, muP-Adam lr row (0, 1, 1)", "mup", "soap", SHORT, lambda m: adam_row(m, lr_s), (-0.5, -1, -0.5)),
        ("muP SOAP, eps 1e-4 (table)", "mup", "soap", SHORT, {"damping": 1e-4}, (0, 0, 0)),
        ("muP SOAP, eps 1e-3 (table)", "mup", "soap", SHORT, {"damping": 1e-3}, (0, 0, 0)),
        ("muP SOAP, eps 1e-2 (table)", "mup", "soap", SHORT, {"damping": 1e-2}, (0, 0, 0)),
        ("muP SOAP, eps 0.01 ‖G‖_F (relative)", "mup", "soap", SHORT,
         lambda m: regroup(ml.make_optimizer(m, "soap", lr=lr_s), RelativeEpsSOAP, lr=lr_s, rel=0.01), (0, 0, 0)),
        ("muP SOAP, this gradient's basis (shampoo_beta 0, refreshed before the step)", "mup", "soap", SHORT,
         lambda m: regroup(ml.make_optimizer(m, "soap", lr=lr_s), CurrentBasisSOAP, {"shampoo_beta": 0.0}, lr=lr_s),
         (0, 0, 0)),
        ("muP SOAP, step normalized to spectral norm lr (explicit spectral normalization)", "mup", "soap", SHORT,
         lambda m: ml.make_optimizer(m, "soap", lr=lr_s, spectral=True), (0, 0, 0)),
        ("muP SOAP, explicit spectral normalization, lr 0.03", "mup", "soap", SHORT,
         lambda m: ml.make_optimizer(m, "soap", lr=0.03, spectral=True), (0, 0, 0)),
        ("muP SOAP, no momentum (betas 0, 0.95)", "mup", "soap", SHORT, {"betas": (0.0, 0.95)}, (0, 0, 0)),
        ("muP SOAP, this gradient's basis, no momentum (betas 0, 0.95)", "mup", "soap", SHORT,
         lambda m: regroup(ml.make_optimizer(m, "soap", lr=lr_s), CurrentBasisSOAP,
                           {"shampoo_beta": 0.0, "betas": (0.0, 0.95)}, lr=lr_s), (0, 0, 0)),
    ]


def slopes_table(frame: pd.DataFrame, runs) -> pd.DataFrame:
    rows = []
    for label, param, opt, widths, _, theory in runs:
        sub = frame[frame.run == label]
        if sub.empty:
            continue
        ex = exponents_of(sub.drop(columns=["run"]))
        ws = sorted(sub.width.unique())
        for step in STEPS:
            e = ex[ex.step == step]
            s = {r: float(e[e.role == r].slope.mean()) for r in ROLES}
            flat = all(abs(v) < FLAT for v in s.values())
            m = sub[sub.step == step].groupby(["role", "width"]).feature_change.mean()   # mean over layers, seeds
            last = {r: math.log(m[(r, ws[-1])] / m[(r, ws[-2])]) / math.log(ws[-1] / ws[-2]) for r in ROLES}
            rows.append({"run": label, "widths": f"{ws[0]}-{ws[-1]}", "step": step,
                         **{r: s[r] for r in ROLES},
                         "widest pair": " / ".join(f"{last[r]:+.2f}" for r in ROLES),
                         "one-step theory": "{:+g} / {:+g} / {:+g}".format(*theory) if step == 1 else "",
                         "flat": "yes" if flat else "no",
                         f"hidden change at {ws[0]}": f"{m[('hidden', ws[0])]:.3g}",
                         "max change": f"{sub[sub.step == step].feature_change.max():.3g}"})
    return pd.DataFrame(rows)


def coord(args):
    data = ml.datasets.digits()
    runs = coord_runs()
    if args.quick:
        runs = [(lab, p, o, (64, 256), opts, th) for lab, p, o, _, opts, th in runs[:1] + runs[4:5] + runs[-1:]]
    seeds = (0,) if args.quick else (0, 1)
    path = Path(args.out) / ("family_coord_quick.csv" if args.quick else "family_coord.csv")
    frame = pd.read_csv(path) if path.exists() else pd.DataFrame()
    done = set(frame.run.unique()) if len(frame) else set()
    t0 = time.time()
    for label, param, opt, widths, options, _ in runs:
        if label in done:
            continue
        t = time.time()

        def model_fn(w, seed=0, param=param):
            return ml.MLP(data.d_in, data.d_out, w, 3, base_width=BASE, param=param, seed=seed)
        if callable(options):
            cc = ml.coord_check(model_fn, options, param, widths=widths, steps=STEPS, seeds=seeds, data=data,
                                device="cpu")
        else:
            options = dict(options)
            damping = options.pop("damping", None)
            cc = ml.coord_check(model_fn, opt, param, widths=widths, steps=STEPS, seeds=seeds, data=data,
                                lr=LR[opt], damping=damping, device="cpu", **options)
        if cc.diverged:
            print(f"  {label}: {len(cc.diverged)} diverged runs: {cc.diverged[:2]}", flush=True)
        new = cc.frame.assign(run=label, seconds=time.time() - t)
        frame = pd.concat([frame, new], ignore_index=True) if len(frame) else new
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path, index=False)
        print(f"{label}: {time.time() - t:.0f} s", flush=True)
    table = slopes_table(frame, runs)
    wall = frame.drop_duplicates("run").seconds.sum()
    text = (f"Width exponents of the feature change (slope of log mean rms change against log width; mean over the "
            f"layers of a role), digits, MLP depth 3 tanh, base width {BASE}, batch 64, seeds {list(seeds)}, steps "
            f"{list(STEPS)}. Base lr: Muon {LR['muon']}, SOAP {LR['soap']}; SOAP eps 1e-8 unless stated. 'flat': "
            f"every |slope| < {FLAT}. 'widest pair': the local exponent between the two widest widths (input / hidden / "
            f"output), nearer the asymptotic one where two terms of different exponents add up. 'one-step theory': the "
            f"step-1 prediction of docs/family.md. 'hidden change at 64': the hidden layer's rms feature change at the base "
            f"width (mean over seeds), to show how far the features moved; 'max change': the largest of any layer and "
            f"width. Sum of the runs' "
            f"wall times {wall:.0f} s.\n\n" + md(table))
    fig_frame = frame[frame.run.isin(["muP Muon (NS)", "muP SOAP (defaults: eps 1e-8, frequency 10)"])]
    fig = None
    if len(fig_frame):
        sub = frame[frame.run == "muP SOAP (defaults: eps 1e-8, frequency 10)"]
        fig = coord_check_figure((sub if len(sub) else fig_frame).drop(columns=["run", "seconds"]), 0.0,
                                 title="Coordinate check, muP SOAP (defaults), digits: flat at step 1, not after")
    write(args, "family_coord_quick" if args.quick else "family_coord", text, fig, None)
    print(f"== coord: {time.time() - t0:.0f} s this call", flush=True)
    return table


# ---------------------------------------------------------------- learning-rate transfer
K_FULL = (-8, 0)          # 1e-4 ... 1
K_LIMITS = (-14, 4)       # how far a window may grow: 1e-7 ... 100
LR_STEPS = 50
LR_WIDTHS = (64, 256, 1024)
LR_SEEDS = (0, 1, 2)
LR_KEYS = [("muon", "sp", "default"), ("muon", "mup", "default"), ("soap", "sp", "default"), ("soap", "mup", "default"),
           ("soap", "mup", "spectral")]
NAMES = {"muon": "Muon", "soap": "SOAP", "sp": "SP", "mup": "muP", "default": "", "spectral": "spectral"}


def name(key):
    return " ".join(NAMES[k] for k in key if NAMES[k])


def lr_of(k: int) -> float:
    return float(f"{(1, 3)[k % 2]}e{k // 2}")


K_OF = {lr_of(k): k for k in range(K_LIMITS[0], K_LIMITS[1] + 1)}


def train_set(data):
    return type(data)(data.name, data.x_train, data.y_train, data.x_train, data.y_train, data.task, data.d_in,
                      data.d_out)


def one_run(data, opt_name, param, variant, width, lr, seed, steps):
    t = time.time()
    model = ml.MLP(data.d_in, data.d_out, width, 3, base_width=BASE, param=param, seed=seed)
    opt = ml.make_optimizer(model, opt_name, lr=lr, **({"spectral": True} if variant == "spectral" else {}))
    recs = ml.run(model, opt, data, steps=steps, batch_size=64, seed=seed, device="cpu")
    last = recs[-1]
    row = dict(optimizer=opt_name, param=param, variant=variant, width=width, lr=lr, seed=seed, steps=steps,
               status="diverged" if last["diverged"] else "ok", warning=bool(last.get("warning")),
               final_loss=last["loss"], test_accuracy=last.get("test_accuracy", np.nan), train_loss=np.inf)
    if not last["diverged"]:
        row["train_loss"] = ml.evaluate(model, train_set(data))["test_loss"]
    row["seconds"] = time.time() - t
    return row


class LrRuns:
    """The runs of family_lr.csv: run what is missing, one row appended per run (resumable)."""

    def __init__(self, path, steps):
        self.path, self.steps = Path(path), steps
        self.df = pd.read_csv(self.path) if self.path.exists() else pd.DataFrame()
        self.data = ml.datasets.digits()

    def have(self, o, pa, va, w, k, s):
        if not len(self.df):
            return False
        d = self.df
        return bool(((d.optimizer == o) & (d.param == pa) & (d.variant == va) & (d.width == w) & (d.lr == lr_of(k))
                     & (d.seed == s) & (d.steps == self.steps)).any())

    def run(self, wanted):
        for o, pa, va, w, k, s in sorted(wanted):
            if not self.have(o, pa, va, w, k, s):
                row = one_run(self.data, o, pa, va, w, lr_of(k), s, self.steps)
                self.df = pd.concat([self.df, pd.DataFrame([row])], ignore_index=True)
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.df.to_csv(self.path, index=False)
        d = self.df[self.df.steps == self.steps].copy()
        d["k"] = d.lr.map(K_OF)
        d["loss"] = d.train_loss.astype(float).where(d.status == "ok", np.inf).fillna(np.inf)
        return d


def rows_of(df, key, width):
    """The runs of ``key`` (optimizer, param, variant) at ``width``."""
    o, pa, va = key
    return df[(df.optimizer == o) & (df.param == pa) & (df.variant == va) & (df.width == width)]


def best_k(df, key, width, seeds):
    """(k, mean loss) of the lowest mean loss over ``seeds`` among lrs that have all of them."""
    return lowest_mean(rows_of(df, key, width), seeds)


def interpolated_optimum(df, key, width, seeds) -> float:
    """10^x* for the vertex x* of a parabola through (log10 lr, log mean loss) at the best lr and its neighbours."""
    mean = seed_means(rows_of(df, key, width), seeds)
    k = int(mean.idxmin()) if len(mean) else None
    if k is None or k - 1 not in mean.index or k + 1 not in mean.index:
        return float("nan")
    x = np.log10([lr_of(k - 1), lr_of(k), lr_of(k + 1)])
    y = np.log(mean[[k - 1, k, k + 1]].to_numpy(float))
    a, b, _ = np.polyfit(x, y, 2)
    return float(10 ** (-b / (2 * a))) if a > 0 else float("nan")


def grow(runs, sets, width, seeds):
    while True:
        df = runs.run({(*key, width, k, s) for key, ks in sets.items() for k in ks for s in seeds})
        best, grew = {}, False
        for key, ks in sets.items():
            best[key], _ = best_k(df, key, width, seeds)
            for n in (best[key] - 1, best[key] + 1):
                if n not in ks and K_LIMITS[0] <= n <= K_LIMITS[1]:
                    ks.add(n)
                    grew = True
                    break
        if not grew:
            return df, best


def lr(args):
    widths = (64, 256) if args.quick else LR_WIDTHS
    seeds = (0, 1) if args.quick else LR_SEEDS
    steps = 10 if args.quick else LR_STEPS
    k_full = (-6, -2) if args.quick else K_FULL
    runs = LrRuns(Path(args.out) / ("family_lr_quick.csv" if args.quick else "family_lr.csv"), steps)
    best, base, prev, t0 = {}, {}, {}, time.time()
    for w in widths:
        t = time.time()
        window = {key: set(range(k_full[0], k_full[1] + 1)) if key not in prev else
                  set(range(prev[key] - 1, prev[key] + 2)) for key in LR_KEYS}
        df, best0 = grow(runs, window, w, seeds[:1])
        cand = {key: {best0[key] - 1, best0[key], best0[key] + 1} | ({base[key[::2]]} if key[::2] in base else set())
                for key in LR_KEYS}
        df, best_w = grow(runs, cand, w, seeds)
        for key in LR_KEYS:
            best[(*key, w)] = prev[key] = best_w[key]
            if w == widths[0] and key[1] == "mup":
                base[key[::2]] = best_w[key]     # (optimizer, variant): SP == muP at the base width
        print(f"width {w}: {time.time() - t:.0f} s, best lr " +
              ", ".join(f"{name(key)} {lr_of(best_w[key]):g}" for key in LR_KEYS), flush=True)
    df = runs.run(set())
    rows = []
    for w in widths:
        row = {"width": str(w)}
        for key in LR_KEYS:
            k, loss = best_k(df, key, w, seeds)
            row[name(key)] = f"{lr_of(k):g} ({loss:.3f})"
        rows.append(row)
    rows.append({"width": f"shift {widths[0]}->{widths[-1]} (half decades)",
                 **{name(key): f"{best[(*key, widths[-1])] - best[(*key, widths[0])]:+d}" for key in LR_KEYS}})
    best_table = pd.DataFrame(rows)
    # between grid points: the vertex of a parabola through log(loss) at the best lr and its two neighbours
    rows = []
    for w in widths:
        row = {"width": str(w)}
        for key in LR_KEYS:
            row[name(key)] = f"{interpolated_optimum(df, key, w, seeds):.3g}"
        rows.append(row)
    first, last = rows[0], rows[-1]
    rows.append({"width": f"ratio {widths[-1]}/{widths[0]}",
                 **{name(key): f"{float(last[name(key)]) / float(first[name(key)]):.2f}" for key in LR_KEYS}})
    vertex_table = pd.DataFrame(rows)
    # the loss at every lr with all seeds, per width: how sharp the optimum is
    curves = []
    for key in LR_KEYS:
        for w in widths:
            mean = seed_means(rows_of(df, key, w), seeds)
            curves.append({"run": name(key), "width": str(w), **{k: f"{v:.3f}" for k, v in mean.items()}})
    curve_table = pd.DataFrame(curves)
    ks = sorted(c for c in curve_table.columns if isinstance(c, (int, np.integer)))
    curve_table = curve_table[["run", "width", *ks]].fillna("").rename(columns={k: f"{lr_of(k):g}" for k in ks})
    acc_rows = []
    for w in widths:
        row = {"width": str(w)}
        for key in LR_KEYS:
            o, pa, va = key
            kb = base[(o, va)]
            sub = df[(df.optimizer == o) & (df.param == pa) & (df.variant == va) & (df.width == w) & (df.k == kb)
                     & df.seed.isin(seeds)]
            acc = sub.loc[sub.status == "ok", "test_accuracy"].astype(float)
            row[f"{name(key)} @ lr {lr_of(kb):g}"] = (f"{acc.mean():.4f} ± {acc.std(ddof=0):.4f}"
                                                                 if len(acc) else "-")
        acc_rows.append(row)
    n_div = int((df.status == "diverged").sum())
    text = (f"{len(df)} runs, {steps} steps of batch 64 on digits, MLP depth 3 tanh, widths "
            f"{', '.join(map(str, widths))} (base {BASE}), seeds {list(seeds)}; Muon: Newton-Schulz, momentum 0.95, "
            f"the table's lrs, Adam for nothing (no biases); SOAP: eps 1e-8 (scaled by the table under muP), "
            f"frequency 10, betas (0.95, 0.95); 'spectral': each SOAP step rescaled to spectral norm lr. "
            f"{n_div} runs diverged. Sum of the runs' wall times "
            f"{df.seconds.sum() / 60:.1f} min.\n\n"
            f"**Best lr (mean train loss over {len(seeds)} seeds, whole training set) per width**\n\n" + md(best_table)
            + f"\n\n**Interpolated best lr: vertex of a parabola through log(mean loss) against log(lr) at the best "
              f"lr and its two neighbours**\n\n" + md(vertex_table)
            + f"\n\n**Mean train loss over {len(seeds)} seeds at each lr that has all seeds**\n\n" + md(curve_table)
            + f"\n\n**Test accuracy (mean ± std over seeds) at the lr tuned at width {widths[0]} (muP = SP there)**\n\n"
            + md(pd.DataFrame(acc_rows)))
    fig_df = df[(df.seed == seeds[0]) & (df.status == "ok")]
    fig_df = fig_df.assign(optimizer=fig_df.optimizer + np.where(fig_df.variant == "spectral", "-spectral", ""))
    fig = lr_transfer_figure(fig_df, title=f"Learning-rate transfer on digits, seed {seeds[0]}, {steps} steps "
                                           "(Muon and SOAP, SP and muP)")
    write(args, "family_lr_quick" if args.quick else "family_lr", text, fig, None)
    print(f"== lr: {time.time() - t0:.0f} s this call", flush=True)
    return df


# ---------------------------------------------------------------- the gradient in SOAP's basis
def grad(args):
    """Batch gradients G_1, G_2 (batches 1 and 2 of seed 0, muP init, float64): G_1's singular values per role
    (what SOAP's eps competes with at step 1) and G_2 in G_1's eigenbasis, the basis SOAP's step 2 uses."""
    from mupso_lite.roles import layer_roles
    data = ml.datasets.digits()
    rows, t0 = [], time.time()
    for w in ((64, 256) if args.quick else (64, 128, 256, 512, 1024)):
        model = ml.MLP(data.d_in, data.d_out, w, 3, base_width=BASE, param="mup", seed=0).double()
        order = torch.randperm(data.x_train.shape[0], generator=torch.Generator().manual_seed(0))
        gs = []
        for b in range(2):
            idx = order[64 * b: 64 * (b + 1)]
            model.zero_grad()
            torch.nn.functional.cross_entropy(model(data.x_train[idx].double()), data.y_train[idx]).backward()
            gs.append({n: m.weight.grad.clone() for n, m, _ in layer_roles(model)})
        for n, m, role in layer_roles(model):
            g1, g2 = gs[0][n], gs[1][n]
            s = torch.linalg.svdvals(g1)
            ql, _, qrt = torch.linalg.svd(g1)   # full bases; G_1's singular pairs at (i, i), as SOAP's eigh bases up to order
            gp = ql.T @ g2 @ qrt.T
            r = min(gp.shape)
            diag = torch.zeros_like(gp)
            diag[range(r), range(r)] = gp[range(r), range(r)]
            a = gp.abs().flatten()
            rows.append({"width": w, "role": role, "shape": "x".join(map(str, g1.shape)), "s_1": float(s[0]),
                         "s_10": float(s[min(9, len(s) - 1)]),
                         "off-diagonal share of ‖G′_2‖²_F": float(((gp - diag) ** 2).sum() / (gp ** 2).sum()),
                         "median abs entry of G′_2 / s_1": float(a.median() / s[0]),
                         "share of entries of G′_2 above 1e-8": float((a > 1e-8).double().mean()),
                         "share above 1e-3 s_1": float((a > 1e-3 * s[0]).double().mean())})
    df = pd.DataFrame(rows)
    slopes = {role: ml.fit_slope(df[df.role == role].width, df[df.role == role].s_1) for role in ROLES}
    text = (f"Batch gradients of the muP MLP (digits, depth 3 tanh, batch 64, seed 0, float64). s_1, s_10: the largest "
            f"and tenth singular values of G_1 (width exponents of s_1: input {slopes['input']:+.2f}, hidden "
            f"{slopes['hidden']:+.2f}, output {slopes['output']:+.2f}; the table's eps exponents say -1/2, 0, +1/2). G'_2 = "
            f"Q_L^T G_2 Q_R in the eigenbasis of G_1 G_1^T and G_1^T G_1 (SOAP's basis at step 2; here from the full SVD of "
            f"G_1, so that the pairs of singular vectors sit on the diagonal; the null space's basis is arbitrary, as "
            f"SOAP's). 'off-diagonal share': the part of ‖G′_2‖²_F off that diagonal, which Adam's entrywise division "
            f"turns into entries of size ~1 wherever v holds only G_2 and they exceed eps. Wall "
            f"{time.time() - t0:.0f} s.\n\n" + md(df, "{:.3g}"))
    write(args, "family_grad_quick" if args.quick else "family_grad", text, None, df)


PARTS = {"grad": grad, "coord": coord, "lr": lr}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", default="all", choices=[*PARTS, "all"])
    p.add_argument("--out", default="docs/results")
    p.add_argument("--quick", action="store_true", help="a smoke test: widths 64 and 256, fewer runs and steps")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    for name in PARTS if args.part == "all" else [args.part]:
        PARTS[name](args)


if __name__ == "__main__":
    main()
