"""Optimizer speed and memory: one command, prints tables (never a timed unit test).

    .venv/bin/python benchmarks/bench_optim.py                 # the full suite (over an hour on a 2-core AMD VM)
    .venv/bin/python benchmarks/bench_optim.py --quick         # width 1024 only, fewer repeats (every section)
    .venv/bin/python benchmarks/bench_optim.py --only steps --widths 256 1024

Sections (``--only``):
  steps    amortized step time (forward + backward + step) of our K-FAC, FOOF and Shampoo,
           ASDL's K-FAC and Shampoo with the same damping and intervals, torch SGD and Adam,
           on an MLP (64 -> M -> M -> 10, tanh, batch 128) and the small CNN (ml.CNN on 8x8
           images). Four schedules:
             default   the defaults: the current batch's curvature, used at once (K-FAC
                       ema_decay=0 and both intervals 1: the push-through path; Shampoo beta=0,
                       update_interval=1: the thin-SVD path); no ASDL twin
             averaged  averaged curvature (K-FAC factor EMA 0.95 = ASDL ema_decay 0.05, Shampoo
                       running sums), factors every step, inverses / roots every 10 steps
             all10     averaged, factors and inverses / roots every 10 steps
             every1    averaged, inverses / roots every step
           Each table row also gives the floor of the algorithm (see ``floor_extra``): the SGD
           step plus the optimizer's own linear algebra at this width, timed alone in the same
           run; ours / floor is what the hooks, bookkeeping and Python add.
           Every optimizer runs whole interval-aligned blocks of steps, interleaved with the
           others, several repeats; the table gives the median ms/step and ratios to SGD and
           to ASDL measured in the same run (the machine may be shared: ratios, not absolute
           times, are what to compare).
  muon_soap  step time of ml.Muon (Newton-Schulz, the default; and orthogonalize="svd"), of
           torch.optim.Muon (where torch has it: 2-D weights, AdamW for the rest) and of ml.SOAP
           (eigh every 10 steps), built by ml.make_optimizer, against SGD and Adam on the MLP at
           widths <= 2048 (torch.optim.Muon and the SVD to 1024), same protocol as ``steps``, and
           against the floor of each: SGD + the optimizer's linear algebra timed alone
           (``muon_soap_pieces``: Muon the 5 Newton-Schulz iterations' products, torch.optim.Muon
           the same in bfloat16, SOAP the 4 rotation products + the L, R updates + eigh / 10).
               .venv/bin/python benchmarks/bench_optim.py --only muon_soap --widths 256 1024 --repeats 5
  linalg   one damped inverse (Cholesky) and one inverse 4th root (eigh) vs one torch.linalg.eigh
           and one n x n matmul; the low-rank preconditioning and the push-through solve vs dense,
           and the preconditioning's GFLOP/s as a fraction of a plain matmul's.
  memory   optimizer state per layer vs the theoretical size of the factors and their inverses.
  train    ml.train: seconds to the first record, and steps/s at widths 256 and 1024.
  quality  test accuracy on digits and MNIST-1D (muP, width 1024, 200 steps, batch ``--batch``,
           two seeds) of SGD and of K-FAC and Shampoo, current-batch and averaged curvature.

``--batch`` sets the batch size of every section (default 128; 512: a batch larger than the
width 256 layers, where the current batch's factors are full rank and the dense path is taken).
"""
from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import torch
import torch.nn.functional as F

import mupso_lite as ml
from mupso_lite.data import load
from mupso_lite.optim import release_hooks
from mupso_lite.optim.linalg import (current_batch_root_update, damped_inverse, gram_update_, inverse_root,
                                     precondition, pushthrough_precondition)
from mupso_lite.optim.muon import NS_COEFFICIENTS, orthogonalize

BATCH, D_IN, D_OUT, RHO, EPS = 128, 64, 10, 0.1, 1e-4
SUMMARY = []
SCHEDULES = {"default": (1, 1), "averaged": (1, 10), "all10": (10, 10), "every1": (1, 1)}   # (factor, inverse)
AVERAGED = {"kfac": dict(ema_decay=0.95), "shampoo": dict(beta=None)}   # the schedules other than "default"
WARMUP = 20   # K-FAC's and Shampoo's warm-up refreshes every step: timed blocks start after it


def _no_nvtx():
    """ASDL wraps its phases in torch.cuda.nvtx ranges, which raise on a CPU-only torch."""
    import torch.cuda.nvtx as nvtx
    nvtx.range_push = lambda *a, **k: None
    nvtx.range_pop = lambda *a, **k: None


CLOCK = {"cpu": time.thread_time, "wall": time.perf_counter}
now = time.thread_time   # set in main(): CPU time of this thread (robust on a shared machine)


# ---------------------------------------------------------------- optimizers under test
def asdl_kfac(model, factor_every, inverse_every):
    _no_nvtx()
    from asdl import KfacGradientMaker, PreconditioningConfig
    cfg = PreconditioningConfig(data_size=BATCH, damping=RHO, ema_decay=0.05,   # ours: 0.95 F + 0.05 F_new
                                curvature_upd_interval=factor_every, preconditioner_upd_interval=inverse_every)
    return KfacGradientMaker(model, cfg, fisher_type="fisher_emp")


def asdl_shampoo(model, factor_every, inverse_every):
    _no_nvtx()
    from asdl import PreconditioningConfig, ShampooGradientMaker
    cfg = PreconditioningConfig(damping=EPS, curvature_upd_interval=factor_every,
                                preconditioner_upd_interval=inverse_every)
    return ShampooGradientMaker(model, cfg)


def builders(factor_every, inverse_every, asdl=True, averaged=True):
    """name -> (model -> (torch optimizer, ASDL gradient maker or None))."""
    kf, sh = (AVERAGED["kfac"], AVERAGED["shampoo"]) if averaged else ({}, {})
    b = {
        "sgd": lambda m: (torch.optim.SGD(m.parameters(), lr=0.01), None),
        "adam": lambda m: (torch.optim.Adam(m.parameters(), lr=1e-3), None),
        # same damping rule as ASDL: Martens-Grosse pi damping with rho
        "kfac": lambda m: (ml.KFAC(m, lr=0.01, damping=RHO, damping_mode="pi", factor_interval=factor_every,
                                   inverse_interval=inverse_every, **kf), None),
        "foof": lambda m: (ml.KFAC(m, lr=0.01, damping=RHO, foof=True, factor_interval=factor_every,
                                   inverse_interval=inverse_every, **kf), None),
        # ASDL's ridge is eps * lambda_max: our eps_mode="relative"; Shampoo has no factor interval
        "shampoo": lambda m: (ml.Shampoo(m.parameters(), lr=0.01, eps=EPS, eps_mode="relative",
                                         update_interval=inverse_every, model=m, **sh), None),
    }
    if asdl and averaged:
        b["asdl_kfac"] = lambda m: (torch.optim.SGD(m.parameters(), lr=0.01), asdl_kfac(m, factor_every, inverse_every))
        b["asdl_shampoo"] = lambda m: (torch.optim.SGD(m.parameters(), lr=0.01),
                                       asdl_shampoo(m, factor_every, inverse_every))
    return b


def make_model(kind, width):
    if kind == "mlp":
        return ml.MLP(D_IN, D_OUT, width, depth=3, seed=0)
    return ml.CNN((1, 8, 8), D_OUT, width, depth=3, seed=0)


class Runner:
    """One optimizer on its own copy of the model; ``block(k)`` times k steps."""

    def __init__(self, model, build, x, y):
        self.model = copy.deepcopy(model)
        self.opt, self.gm = build(self.model)
        self.x, self.y = x, y

    def step(self):
        if self.gm is not None:   # ASDL: the gradient maker runs forward, backward and preconditioning
            dummy = self.gm.setup_model_call(self.model, self.x)
            self.gm.setup_loss_call(F.cross_entropy, dummy, self.y)
            self.opt.zero_grad(set_to_none=True)
            self.gm.forward_and_backward()
        else:
            self.opt.zero_grad(set_to_none=True)
            F.cross_entropy(self.model(self.x), self.y).backward()
        self.opt.step()

    def block(self, k):
        t = now()
        for _ in range(k):
            self.step()
        return (now() - t) / k


def affordable(kind, width, schedule):
    """Who runs where, to keep the suite near 10 minutes on 2 cores. ASDL Shampoo's coupled
    Newton root (up to 100 iterations of M x M matmuls) is only run to M = 1024, ASDL K-FAC's
    dense 2 M^3 preconditioning and our eigh-based Shampoo only to M = 2048."""
    names = ["sgd", "adam", "foof", "kfac", "shampoo", "asdl_kfac", "asdl_shampoo"]
    if kind == "cnn":
        return names[:-1]
    if width > 1024:
        names.remove("asdl_shampoo")
    if width > 2048:
        names.remove("asdl_kfac")
        names.remove("shampoo")
    return names


def step_table(kind, widths, schedule, repeats, asdl=True, names=None):
    fi, ii = SCHEDULES[schedule]
    block = 10   # a whole number of refresh intervals on every schedule
    rows = []
    for width in widths:
        g = torch.Generator().manual_seed(0)
        shape = (BATCH, D_IN) if kind == "mlp" else (BATCH, 1, 8, 8)
        x, y = torch.randn(*shape, generator=g), torch.randint(0, D_OUT, (BATCH,), generator=g)
        model = make_model(kind, width)
        bs = builders(fi, ii, asdl, averaged=schedule != "default")
        keep = set(names or bs) & set(affordable(kind, width, schedule))
        runners = {n: Runner(model, b, x, y) for n, b in bs.items() if n in keep}
        for r in runners.values():   # warm-up: whole intervals past the optimizers' warm-up
            r.block(-(-WARMUP // block) * block)
        times = {n: [] for n in runners}
        for _ in range(repeats if width < 4096 else 1):
            for n, r in runners.items():
                times[n].append(r.block(block))
        med = {n: statistics.median(v) for n, v in times.items()}
        floors = {n: med["sgd"] + floor_extra(model, n, schedule) for n in ("kfac", "shampoo")
                  if n in med and kind == "mlp"}
        rows.append((width, med))
        show(kind, schedule, width, med, floors)
    return rows


def floor_extra(model, name, schedule):
    """Seconds per step of the optimizer's own linear algebra for ``model``'s layers, each call
    timed alone on random data of the real shapes (batch rows R = BATCH): the work K-FAC or
    Shampoo cannot skip on this schedule, at the speed BLAS/LAPACK give it. Added to the SGD
    step (forward + backward) this is the floor of the algorithm: what a step would cost with
    no hooks, bookkeeping or Python at all.

    K-FAC: factors x^T x / R and n gout^T gout (``gram_update_``) / factor interval + two damped
    inverses / inverse interval + the preconditioning on its cheaper path; default (current
    batch): the push-through solve. Shampoo: the statistics G G^T, G^T G (through the batch when
    it is smaller) + two inverse 4th roots / interval + the preconditioning; default: the SVD."""
    fi, ii = SCHEDULES[schedule]
    total, g = 0.0, torch.Generator().manual_seed(2)

    def fastest(fn, repeats=5):
        return best(fn, repeats, floor=True)

    for m in model.layers:
        out_dim, in_dim = m.weight.shape
        x = torch.randn(BATCH, in_dim + (m.bias is not None), generator=g)
        gout = torch.randn(BATCH, out_dim, generator=g) / BATCH
        grad = gout.T @ x
        if schedule == "default":
            if name == "kfac":
                total += fastest(lambda: pushthrough_precondition(gout, x, BATCH, RHO, RHO))
            else:
                total += fastest(lambda: current_batch_root_update(gout, x, 0.25, EPS, relative=True))
            continue
        if name == "kfac":
            a, b = torch.zeros(x.shape[1], x.shape[1]), torch.zeros(out_dim, out_dim)
            total += fastest(lambda: (gram_update_(a, x, 0.95, 0.05 / BATCH), gram_update_(b, gout, 0.95, 0.05))) / fi
            a, b = x.T @ x / BATCH, BATCH * gout.T @ gout
            total += fastest(lambda: (damped_inverse(a, RHO), damped_inverse(b, RHO)), 3) / ii
            ai, bi = damped_inverse(a, RHO), damped_inverse(b, RHO)
            total += fastest(lambda: precondition(bi, grad, ai, gout, x))
        else:
            lo, ro = grad @ grad.T + torch.eye(out_dim), grad.T @ grad + torch.eye(x.shape[1])
            if BATCH < min(grad.shape):
                total += fastest(lambda: (lo.addmm_(gout.T @ (x @ x.T), gout), ro.addmm_(x.T @ (gout @ gout.T), x)))
            else:
                total += fastest(lambda: (lo.addmm_(grad, grad.T), ro.addmm_(grad.T, grad)))
            total += fastest(lambda: (inverse_root(lo, 0.25, EPS, True), inverse_root(ro, 0.25, EPS, True)), 3) / ii
            lr_, rr_ = inverse_root(lo, 0.25, EPS, True), inverse_root(ro, 0.25, EPS, True)
            total += fastest(lambda: precondition(lr_, grad, rr_, gout, x) if BATCH < min(grad.shape)
                          else precondition(lr_, grad, rr_))
    return total


def show(kind, schedule, width, med, floors=None):
    sgd, floors = med["sgd"], floors or {}
    parts = [f"{kind} {schedule:7s} M={width:<5d} sgd {1e3 * sgd:7.2f} ms"]
    for n in ("adam", "foof", "kfac", "shampoo"):
        if n in med:
            parts.append(f"{n} {med[n] / sgd:5.2f}x")
    for n, f in floors.items():
        parts.append(f"{n} floor {f / sgd:5.2f}x  ours/floor {med[n] / f:4.2f}")
    for n in ("kfac", "shampoo"):
        if f"asdl_{n}" in med:
            parts.append(f"asdl_{n} {med['asdl_' + n] / sgd:5.2f}x  ours/asdl {med[n] / med['asdl_' + n]:4.2f}")
    print(" | ".join(parts), flush=True)
    SUMMARY.append(" | ".join(parts))


# ---------------------------------------------------------------- Muon and SOAP
class TorchMuon:
    """``torch.optim.Muon`` on the 2-D parameters and ``torch.optim.AdamW`` on the rest, as torch's
    docs say (Muon refuses anything but matrices), behind one ``zero_grad`` / ``step``. Settings as
    ``ml.Muon``'s defaults: lr 0.02, momentum 0.95, Nesterov, 5 Newton-Schulz steps, no weight
    decay (torch's default is 0.1)."""

    def __init__(self, model, lr=0.02):
        mats = [p for p in model.parameters() if p.ndim == 2]
        rest = [p for p in model.parameters() if p.ndim != 2]
        self.opts = [torch.optim.Muon(mats, lr=lr, weight_decay=0.0)]
        if rest:
            self.opts.append(torch.optim.AdamW(rest, lr=lr, betas=(0.9, 0.95), weight_decay=0.0))

    def zero_grad(self, set_to_none=True):
        for o in self.opts:
            o.zero_grad(set_to_none=set_to_none)

    def step(self):
        for o in self.opts:
            o.step()


def muon_soap_builders():
    """name -> (model -> (optimizer, None)); ``ml.make_optimizer`` builds ours (one group per
    weight; the MLP has no biases, so every parameter is a matrix and goes through Muon / SOAP)."""
    b = {
        "sgd": lambda m: (torch.optim.SGD(m.parameters(), lr=0.01), None),
        "adam": lambda m: (torch.optim.Adam(m.parameters(), lr=1e-3), None),
        "muon": lambda m: (ml.make_optimizer(m, "muon", lr=0.02), None),   # Newton-Schulz, 5 steps, float32
        "muon_svd": lambda m: (ml.make_optimizer(m, "muon", lr=0.02, orthogonalize="svd"), None),
        "soap": lambda m: (ml.make_optimizer(m, "soap", lr=3e-3), None),  # eigh every 10 steps
    }
    if hasattr(torch.optim, "Muon"):   # not in older torch releases
        b["torch_muon"] = lambda m: (TorchMuon(m), None)
    return b


def muon_soap_affordable(width):
    """torch.optim.Muon (bfloat16 products, about 4x slower than float32 on a CPU without native
    bfloat16) and the exact SVD only to M = 1024; ml.Muon and SOAP to M = 2048."""
    names = ["sgd", "adam", "muon", "torch_muon", "muon_svd", "soap"]
    return names if width <= 1024 else ["sgd", "adam", "muon", "soap"]


def ns_products(x, steps=5):
    """The matrix products of ``steps`` Newton-Schulz iterations on X (rows <= cols), nothing else:
    A = X X^T, X <- a X + (b A + c A A) X as two fused ``addmm`` (3 products per iteration)."""
    a, b, c = NS_COEFFICIENTS
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x


def muon_soap_pieces(model, runners=None, names=("muon", "torch_muon", "muon_svd", "soap"), frequency=10,
                     beta=0.95):
    """piece -> (function, share per step): the linear algebra of Muon and SOAP for ``model``'s
    weights, the same operations as the optimizers outside them, float32 unless named. A call runs
    the piece on every weight; ``share`` is the calls per optimizer step (1 / ``frequency`` for a
    refresh). The operands are the optimizers' own state in ``runners`` where they have it (LAPACK's
    SVD and eigh take longer on a random matrix than on a momentum buffer or an L, R whose spectrum
    decays), else random matrices of the real shapes. Only the pieces of ``names`` are built.

      ns          the 5 Newton-Schulz iterations' products (``ns_products``): Muon's floor
      ns_bf16     the same in bfloat16 (torch.optim.Muon runs them in bfloat16): its floor
      ns_ml       ``ml.optim.muon.orthogonalize`` alone (its products plus its unfused scalings)
      svd         thin SVD + U V^T (``orthogonalize="svd"``), of ml.Muon(svd)'s momentum buffer
      rotate      G' = Q_L^T G Q_R and the update Q_L N' Q_R^T: 4 products per weight, every step
      stats       L <- beta L + (1 - beta) G G^T, R likewise (from G: the optimizer sees no batch)
      eigh        eigh(L) and eigh(R), every ``frequency`` steps
      m_rotate    what ml.SOAP adds every step: it keeps m in the original basis and rotates it
                  (Q_L^T m Q_R: 2 products per weight)
      v_carry     what ml.SOAP adds per refresh: v carried into the new basis (4 products per weight)

    SOAP's floor is rotate + stats + eigh."""
    g0 = torch.Generator().manual_seed(3)
    runners = runners or {}
    per_layer = {}   # piece -> [(function of no argument, share)]

    def state(name, i):
        """The optimizer ``name``'s state of layer ``i`` and that weight's last gradient, or ({}, None)."""
        r = runners.get(name)
        if r is None:
            return {}, None
        w = r.model.layers[i].weight
        return r.opt.state.get(w, {}), w.grad

    def add(piece, fn, share=1.0):
        per_layer.setdefault(piece, []).append(fn)
        shares[piece] = share

    def gram(n):
        a = torch.randn(n, n, generator=g0)
        return a @ a.T / n + 1e-3 * torch.eye(n)

    shares = {}
    for i, m in enumerate(model.layers):
        out_dim, in_dim = m.weight.shape
        rand = torch.randn(out_dim, in_dim, generator=g0)
        d = state("muon", i)[0].get("momentum_buffer", rand).clone()
        x = d / torch.linalg.matrix_norm(d)
        x = x.T.contiguous() if out_dim > in_dim else x   # the wide orientation, as both implementations
        if "muon" in names:
            add("ns", lambda x=x: ns_products(x))
            add("ns_ml", lambda d=d: orthogonalize(d, "newtonschulz", 5))
        if "torch_muon" in names:
            add("ns_bf16", lambda xb=x.bfloat16(): ns_products(xb))
        if "muon_svd" in names:
            ds = state("muon_svd", i)[0].get("momentum_buffer", rand).clone()
            add("svd", lambda ds=ds: (lambda u, s, vh: u @ vh)(*torch.linalg.svd(ds, full_matrices=False)))
        if "soap" not in names:
            continue
        st, grad = state("soap", i)
        lf, rf = st.get("L", gram(out_dim)).clone(), st.get("R", gram(in_dim)).clone()
        ql, qr = (st["Q_L"].clone(), st["Q_R"].clone()) if "Q_L" in st else \
            (torch.linalg.eigh(lf)[1], torch.linalg.eigh(rf)[1])
        g = grad.clone() if grad is not None else rand
        mom = st.get("exp_avg", torch.randn(out_dim, in_dim, generator=g0)).clone()
        v = st.get("exp_avg_sq", torch.rand(out_dim, in_dim, generator=g0)).clone()
        ql2, qr2 = torch.linalg.eigh(lf)[1], torch.linalg.eigh(rf)[1]
        l2, r2 = lf.clone(), rf.clone()
        add("rotate", lambda ql=ql, qr=qr, g=g, mom=mom: (ql.T @ g @ qr, ql @ mom @ qr.T))
        add("stats", lambda l2=l2, r2=r2, g=g: (l2.addmm_(g, g.T, beta=beta, alpha=1 - beta),
                                              r2.addmm_(g.T, g, beta=beta, alpha=1 - beta)))
        add("eigh", lambda lf=lf, rf=rf: (torch.linalg.eigh(lf), torch.linalg.eigh(rf)), 1 / frequency)
        add("m_rotate", lambda ql=ql, qr=qr, mom=mom: ql.T @ mom @ qr)
        add("v_carry", lambda ql=ql, qr=qr, ql2=ql2, qr2=qr2, v=v: ((ql2.T @ ql) ** 2) @ v @ ((qr.T @ qr2) ** 2),
            1 / frequency)
    return {k: ((lambda fns=fns: [f() for f in fns]), shares[k]) for k, fns in per_layer.items()}


MUON_SOAP_FLOOR = {"muon": ("ns",), "torch_muon": ("ns_bf16",), "muon_svd": ("svd",),
                   "soap": ("rotate", "stats", "eigh")}


def muon_soap_table(widths, repeats):
    """ml.Muon (Newton-Schulz and SVD), torch.optim.Muon and ml.SOAP against SGD and their floors.

    Same protocol as ``step_table``: one copy of the MLP per optimizer, one warm-up block of 10
    steps (SOAP's float64 first step and first basis refresh), then blocks of 10 steps (one SOAP
    refresh each) interleaved across optimizers, ``repeats`` times; median ms/step. The floor
    pieces (``muon_soap_pieces``, built from the optimizers' state after the warm-up) are timed in
    the same rounds, after the blocks, each over >= 20 ms of calls; median per call. A floor is
    the SGD step of the same run plus its pieces, each times its share per step."""
    print("\nMuon and SOAP: MLP 64 -> M -> M -> 10 (tanh, no bias), batch", BATCH, "- step time as a multiple"
          " of SGD's in the same run; floor = SGD + the linear algebra alone (see muon_soap_pieces)")
    block = 10
    for width in widths:
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(BATCH, D_IN, generator=g), torch.randint(0, D_OUT, (BATCH,), generator=g)
        model = make_model("mlp", width)
        keep = muon_soap_affordable(width)
        runners = {n: Runner(model, b, x, y) for n, b in muon_soap_builders().items() if n in keep}
        for r in runners.values():
            r.block(block)
        pieces = muon_soap_pieces(model, runners, names=list(runners))
        calls = {}
        for k, (fn, _) in pieces.items():   # one untimed call, then as many calls as fill ~20 ms
            t = now()
            fn()
            calls[k] = max(1, round(0.02 / max(now() - t, 1e-6)))
        times = {n: [] for n in list(runners) + list(pieces)}
        for _ in range(repeats):
            for n, r in runners.items():
                times[n].append(r.block(block))
            for k, (fn, _) in pieces.items():
                t = now()
                for _ in range(calls[k]):
                    fn()
                times[k].append((now() - t) / calls[k])
        med = {n: statistics.median(v) for n, v in times.items() if n in runners}
        per_step = {k: statistics.median(times[k]) * share for k, (_, share) in pieces.items()}
        sgd = med["sgd"]
        floors = {n: sgd + sum(per_step[k] for k in ks) for n, ks in MUON_SOAP_FLOOR.items() if n in med}
        parts = [f"mlp M={width:<5d} sgd {1e3 * sgd:7.2f} ms", f"adam {med['adam'] / sgd:5.2f}x"]
        for n in ("muon", "torch_muon", "muon_svd", "soap"):
            if n in med:
                who = "torch" if n == "torch_muon" else "ours"
                parts.append(f"{n} {med[n] / sgd:6.2f}x floor {floors[n] / sgd:6.2f}x "
                             f"{who}/floor {med[n] / floors[n]:4.2f}")
        if "torch_muon" in med:
            parts.append(f"muon/torch_muon {med['muon'] / med['torch_muon']:4.2f}")
        line = " | ".join(parts)
        print(line, flush=True)
        SUMMARY.append(line)
        extra = ""
        if "soap" in med:
            own = floors["soap"] + per_step["m_rotate"] + per_step["v_carry"]
            extra = (f"  | soap's own products (floor + m_rotate + v_carry) {own / sgd:.2f}x, "
                     f"ours/own {med['soap'] / own:4.2f}")
        print(f"  pieces per step in SGD steps (M={width}): "
              + "  ".join(f"{k} {v / sgd:.2f}" for k, v in per_step.items()) + extra, flush=True)


# ---------------------------------------------------------------- linear algebra
def best(fn, repeats=5, floor=False):
    """Median time of ``fn`` over ``repeats`` calls after one untimed call (``floor``: the minimum)."""
    fn()
    ts = []
    for _ in range(repeats):
        t = now()
        fn()
        ts.append(now() - t)
    return min(ts) if floor else statistics.median(ts)


def linalg_table(sizes, rows=None):
    rows = rows or BATCH
    print("\nn      matmul ms  eigh ms  chol-inverse ms (x matmul)  4th-root ms (x eigh)")
    for n in sizes:
        g = torch.Generator().manual_seed(0)
        a = torch.randn(n, n, generator=g)
        f = a @ a.T / n
        rep = 3 if n <= 2048 else 1
        t_mm = best(lambda: a @ a, rep)
        t_eigh = best(lambda: torch.linalg.eigh(f), rep)
        t_inv = best(lambda: damped_inverse(f, 0.1), rep)
        t_root = best(lambda: inverse_root(f, 0.25, 1e-4), rep)
        print(f"{n:<6d} {1e3 * t_mm:9.1f} {1e3 * t_eigh:8.1f} {1e3 * t_inv:10.1f} ({t_inv / t_mm:4.1f}x) "
              f"{1e3 * t_root:16.1f} ({t_root / t_eigh:4.2f}x)", flush=True)
    print(f"\npreconditioning one M x M layer from a batch of R = {rows} rows")
    print("M      dense ms  low-rank ms  push-through ms  low-rank GFLOP/s  matmul GFLOP/s (same shapes)  ratio")
    for n in sizes[:3]:
        g = torch.Generator().manual_seed(1)
        x, gout = torch.randn(rows, n, generator=g), torch.randn(rows, n, generator=g) / rows
        grad = gout.T @ x
        A, B = x.T @ x / rows, rows * gout.T @ gout
        ai, bi = damped_inverse(A, 0.1), damped_inverse(B, 0.1)
        t_dense = best(lambda: bi @ grad @ ai)
        t_low = best(lambda: precondition(bi, grad, ai, gout, x))
        t_push = best(lambda: pushthrough_precondition(gout, x, rows, 0.1, 0.1))
        flops = 2 * rows * (3 * n * n)
        t_mm = best(lambda: (bi @ gout.T, x @ ai))      # the two R x M x M products alone
        print(f"{n:<6d} {1e3 * t_dense:8.1f} {1e3 * t_low:11.2f} {1e3 * t_push:15.2f} "
              f"{flops / t_low / 1e9:17.1f} {2 * 2 * rows * n * n / t_mm / 1e9:27.1f} "
              f"{(flops / t_low) / (4 * rows * n * n / t_mm):6.2f}", flush=True)


# ---------------------------------------------------------------- memory
def state_bytes(st):
    total = {}
    for k, v in st.items():
        if torch.is_tensor(v):
            total[k] = v.numel() * v.element_size()
    return total


def memory_table(width=1024):
    print(f"\noptimizer state per layer, MLP width {width}, float32 (MiB), averaged curvature; theory = factors"
          " + inverses (the default, current-batch curvature, keeps no factor: state 0)")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(BATCH, D_IN, generator=g), torch.randint(0, D_OUT, (BATCH,), generator=g)
    for name in ("kfac", "foof", "shampoo"):
        model = make_model("mlp", width)
        opt = builders(1, 1, asdl=False)[name](model)[0]
        for _ in range(2):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        for lname, m in zip(("input", "hidden", "output"), model.layers):
            out, inp = m.weight.shape
            n_fac = 1 if name == "foof" else 2
            theory = (inp * inp + (out * out if n_fac == 2 else 0)) * 2 * 4
            got = sum(state_bytes(opt.state[m.weight]).values())
            print(f"{name:8s} {lname:7s} {out:5d}x{inp:<5d} state {got / 2**20:7.2f}  theory {theory / 2**20:7.2f}"
                  f"  ratio {got / theory:4.2f}  keys {sorted(state_bytes(opt.state[m.weight]))}", flush=True)


# ---------------------------------------------------------------- ml.train latency
def train_table(widths=(256, 1024), steps=40):
    print("\nml.train on digits (batch 64, make_optimizer defaults, muP; wall clock, includes the probe)")
    print("optimizer width  first record s  steps/s")
    load("digits")   # the dataset load itself is not what we measure (cached after this)
    for name in ("sgd", "kfac", "foof", "shampoo"):
        for width in widths:
            model = ml.MLP(64, 10, width, 3, base_width=64, param="mup")
            opt = ml.make_optimizer(model, name, lr=0.05 if name != "adam" else 1e-3)
            t = time.perf_counter()   # wall clock: latency is what a user waits
            it = ml.train(model, opt, "digits", steps=steps, eval_every=10, device="cpu")
            first = next(it)
            t_first = time.perf_counter() - t
            last = first
            for last in it:
                pass
            rate = (last["step"] - 1) / (last["seconds"] - first["seconds"])
            print(f"{name:9s} {width:5d}  {t_first:14.3f}  {rate:7.1f}", flush=True)


def quality_table(width=1024, steps=200, seeds=(0, 1)):
    print(f"\ntest accuracy (muP, width {width}, {steps} steps, batch {BATCH}, seeds {list(seeds)}); "
          "averaged: K-FAC EMA 0.95 with inverses every 10 steps, Shampoo running sums with roots every 10")
    runs = [("sgd", "-", {}), ("kfac", "default", {}), ("kfac", "averaged", dict(ema_decay=0.95, inverse_interval=10)),
            ("shampoo", "default", {}), ("shampoo", "averaged", dict(beta=None, update_interval=10))]
    lrs = {"sgd": 0.5, "kfac": 0.1, "shampoo": 0.1}   # the dashboard's defaults for these optimizers
    for data in ("digits", "mnist1d"):
        for name, schedule, opts in runs:
            accs = []
            for seed in seeds:
                model = ml.MLP(load(data).d_in, 10, width, 3, base_width=64, param="mup", seed=seed)
                opt = ml.make_optimizer(model, name, lr=lrs[name], **opts)
                recs = ml.run(model, opt, data, steps=steps, batch_size=BATCH, seed=seed, device="cpu")
                release_hooks(opt)
                last = recs[-1]
                accs.append("diverged" if last["diverged"] else f"{last['test_accuracy']:.3f}")
            print(f"{data:8s} {name:8s} {schedule:8s} " + "  ".join(accs), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="*", default=["steps", "muon_soap", "linalg", "memory", "train", "quality"])
    p.add_argument("--widths", nargs="*", type=int, default=[256, 1024, 2048, 4096])
    p.add_argument("--schedules", nargs="*", default=list(SCHEDULES))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=128, help="batch size of every section (default 128)")
    p.add_argument("--no-asdl", action="store_true")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1, see --clock)")
    p.add_argument("--clock", choices=list(CLOCK), default="cpu",
                   help="cpu: CPU time of the calling thread, exact with --threads 1 even when other "
                        "processes share the cores; wall: perf_counter (use with --threads > 1 on an idle machine)")
    p.add_argument("--quick", action="store_true", help="width 1024 only, 2 repeats")
    a = p.parse_args()
    global now, BATCH
    now, BATCH = CLOCK[a.clock], a.batch
    torch.set_num_threads(a.threads)
    if a.quick:
        a.widths, a.repeats = [1024], 2
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, clock {a.clock}, batch {BATCH}, {time.strftime('%Y-%m-%d %H:%M')}")
    t0 = time.perf_counter()
    if "steps" in a.only:
        for schedule in a.schedules:
            widths = [w for w in a.widths if schedule != "every1" or w <= 2048]   # 4096 eigh per step: too slow
            step_table("mlp", widths, schedule, a.repeats, not a.no_asdl)
        for schedule in ("default", "averaged"):
            step_table("cnn", [32, 64], schedule, a.repeats, not a.no_asdl)
    if "muon_soap" in a.only:
        muon_soap_table([w for w in a.widths if w <= 2048], a.repeats)
    if "linalg" in a.only:
        linalg_table([w for w in a.widths if w <= 2048] or [1024])
    if "memory" in a.only:
        memory_table()
    if "train" in a.only:
        train_table()
    if "quality" in a.only:
        quality_table()
    if SUMMARY:
        print("\nsummary (ratios; see above)")
        for line in SUMMARY:
            print(line)
    print(f"total {time.perf_counter() - t0:.0f} s wall")


if __name__ == "__main__":
    main()
