"""Small measurements quoted in README's tuning section and in the optimizers' docstrings.

    python scripts/findings.py            # about a minute on 2 CPU cores

Prints, for each finding, the numbers it rests on:
  damping    K-FAC on digits (muP, width 256, lr 0.1): the loss over the first steps for
             damping 1e-3, 1e-2, 0.1, with this batch's factors (the defaults) and with averaged
             factors (EMA 0.95) inverted every 10 steps;
  fisher     the regression teacher (width 256, lr 0.1, seeds 0-2): empirical vs MC Fisher;
  warmup     averaged K-FAC and Shampoo (EMA 0.95 / running sums, refreshed every 10 steps) on
             digits with and without the warm-up of fresh inverses;
  batch      K-FAC with averaged factors (EMA 0.95, inverses every 10 steps) vs this batch's
             factors (the defaults: the push-through path) on digits at width 1024, 200 steps;
  root       muP-Shampoo with root 1/2 vs 1/4: width exponents on the teacher task;
  trace      K-FAC with trace-rescaled damping over 300 steps: rho tr(B_t) of the current
             factors against rho max_t tr(B_t) (what ``damping_mode="trace"`` uses).
"""
from __future__ import annotations

import argparse
import time

import mupso_lite as ml


def losses(records, every=1):
    return " ".join(f"{r['loss']:.3g}" for r in records[::every])


AVERAGED = {"kfac": dict(ema_decay=0.95, inverse_interval=10), "shampoo": dict(beta=None, update_interval=10)}


def damping():
    digits = ml.datasets.digits()
    for curvature, kw in (("this batch", {}), ("averaged, every 10", AVERAGED["kfac"])):
        for rho in (1e-3, 1e-2, 1e-1):
            model = ml.MLP(64, 10, width=256, base_width=64, seed=0)
            opt = ml.make_optimizer(model, "kfac", lr=0.1, damping=rho, **kw)
            recs = ml.run(model, opt, digits, steps=200)
            print(f"{curvature:18s} damping {rho:g}: steps 1-6 {losses(recs[:6])} | "
                  f"step {recs[-1]['step']} loss {recs[-1]['loss']:.3g} test acc {recs[-1].get('test_accuracy')}")


def fisher():
    reg = ml.datasets.teacher(task="regression")
    for kind in ("empirical", "mc"):
        for seed in (0, 1, 2):
            model = ml.MLP(reg.d_in, reg.d_out, width=256, base_width=64, seed=seed)
            recs = ml.run(model, ml.make_optimizer(model, "kfac", lr=0.1, fisher=kind), reg, steps=50, seed=seed)
            print(f"fisher {kind:9s} seed {seed}: loss every 10 steps {losses(recs, 10)}; last "
                  f"{recs[-1]['loss']:.3g}, test loss {recs[-1]['test_loss']:.3g}")


def warmup():
    digits = ml.datasets.digits()
    for name, width, lr, damping in (("kfac", 64, 0.05, 1e-2), ("kfac", 512, 0.05, 1e-2), ("shampoo", 256, 0.3, 1e-6)):
        for warm in (0, None):
            model = ml.MLP(64, 10, width, base_width=64, seed=0)
            opt = ml.make_optimizer(model, name, lr=lr, damping=damping, warmup=warm, **AVERAGED[name])
            recs = ml.run(model, opt, digits, steps=100, divergence=None)
            peak = max(r["loss"] for r in recs)
            print(f"{name} width {width} lr {lr:g} damping {damping:g} warmup {opt.warmup:2d}: peak loss "
                  f"{peak:.3g}, last {recs[-1]['loss']:.3g}, test acc {recs[-1]['test_accuracy']:.3f}")


def batch():
    digits = ml.datasets.digits()
    for name, kw in (("averaged, inverses every 10", AVERAGED["kfac"]),
                     ("this batch (the defaults)", {})):
        model = ml.MLP(64, 10, width=1024, base_width=64, seed=0)
        opt = ml.make_optimizer(model, "kfac", lr=0.1, damping=0.1, **kw)
        start = time.perf_counter()
        recs = ml.run(model, opt, digits, steps=200)
        print(f"{name:30s}: loss {recs[-1]['loss']:.3g} test acc {recs[-1]['test_accuracy']:.3f} "
              f"({time.perf_counter() - start:.1f} s wall)")


def root():
    data = ml.datasets.teacher()

    def model_fn(width, seed=0):
        return ml.MLP(data.d_in, data.d_out, width, depth=3, base_width=64, param="mup", seed=seed)
    for e, eps, mode in ((0.25, 1e-4, "absolute"), (0.5, 1e-4, "absolute"), (0.5, 1e-8, "absolute"),
                         (0.5, 1e-3, "relative")):
        cc = ml.coord_check(model_fn, "shampoo", "mup", widths=(64, 128, 256, 512, 1024), steps=2, seeds=(0, 1),
                            data=data, lr=0.1, damping=eps, root=e, eps_mode=mode, device="cpu")
        slopes = " | ".join(f"step {s}: " + " / ".join(f"{v:+.2f}" for v in cc.slopes_by_role(s).values())
                            for s in (1, 2))
        print(f"root {e} eps {eps:g} {mode:8s} (in / hid / out / f): {slopes}")


class CurrentTraceKFAC(ml.KFAC):
    """K-FAC whose "trace" damping follows the current traces, rho tr(A_t), rho tr(B_t)."""

    def damping_for(self, group, st, traces=None):
        st.pop("trace_a", None), st.pop("trace_b", None)   # forget the running maximum
        return super().damping_for(group, st, traces)


def trace():
    digits = ml.datasets.digits()
    for name, cls in (("rho tr(B_t)", CurrentTraceKFAC), ("rho max tr(B_t)", ml.KFAC)):
        for width in (64, 256):
            for seed in (0, 1, 2):
                model = ml.MLP(64, 10, width, base_width=64, seed=seed)
                opt = ml.make_optimizer(model, "kfac", lr=0.1, damping=0.1, damping_mode="trace")
                opt.__class__ = cls
                recs = ml.run(model, opt, digits, steps=300, seed=seed, divergence=None)
                loss = [r["loss"] for r in recs]
                low = min(range(len(loss)), key=loss.__getitem__)
                print(f"{name:16s} width {width:3d} seed {seed}: min loss {loss[low]:.2g} at step {low + 1}, "
                      f"then peak {max(loss[low:]):.3g}; last {loss[-1]:.3g}, "
                      f"test acc {recs[-1]['test_accuracy']:.3f}", flush=True)


FINDINGS = {"damping": damping, "fisher": fisher, "warmup": warmup, "batch": batch, "root": root, "trace": trace}

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("which", nargs="*", help=f"any of {', '.join(FINDINGS)} (default: all)")
    which = p.parse_args().which or list(FINDINGS)
    for name in which:
        if name not in FINDINGS:
            p.error(f"which: expected any of {', '.join(FINDINGS)}, got {name!r}")
    for name in which:
        print(f"== {name}")
        FINDINGS[name]()
