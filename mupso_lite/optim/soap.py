"""SOAP (Vyas et al. 2024, arXiv 2409.11321): Adam run in Shampoo's eigenbasis.

For a weight matrix W (out x in; a Conv2d weight is flattened to out x (in k k)) with gradient G,
at step t (beta = ``shampoo_beta``, default b2):

    L <- beta L + (1 - beta) G G^T,   R <- beta R + (1 - beta) G^T G      Shampoo's statistics
    Q_L, Q_R = eigenvectors of L, R        refreshed every ``precondition_frequency`` steps
    G' = Q_L^T G Q_R                       the gradient in the eigenbasis
    m <- b1 m + (1 - b1) G                 first moment, kept in the original basis
    v <- b2 v + (1 - b2) G'^2              second moment, in the eigenbasis
    N' = m^' / (sqrt(v^) + eps)            m^' = Q_L^T m Q_R / (1 - b1^t),  v^ = v / (1 - b2^t)
    N = Q_L N' Q_R^T,   N <- N / |N|_2 if ``spectral=True``
    W <- W (1 - lr weight_decay) - lr N

The statistics are updated after the step with this G, so the basis never contains the gradient
it preconditions, except at step 1. There the reference computes the basis and skips the update;
we update with the basis of this first gradient: with L, R ~ G G^T, G^T G, G' = Q_L^T G Q_R is
the diagonal S of singular values, Adam's first step is S / (S + eps) ~ I on it, and SOAP's first
step is -lr U_r V_r^T for G = U S V^T (Muon's orthogonalized gradient), so a one-step coordinate
check measures SOAP itself.

Width. That first step has spectral norm lr, so the table's lr ~ sqrt(fan_out/fan_in) is the
spectral condition for it. From step 2 on the step is dense in the basis: the basis is older than
the gradient, and the momentum m holds earlier gradients; either makes Q_L^T m Q_R non-diagonal,
and Adam's division gives each of its out x in entries a size ~ 1, so |N|_2 grows with width like
Adam's step (feature-change slopes +0.43 / +0.74 / +0.52 at step 10 on digits, widths 64...2048,
``docs/results.md`` section 11). ``spectral=True`` (explicit spectral normalization) divides every
step by its spectral norm, |dW|_2 = lr at every step, which keeps the features' change flat in
width; it costs one ``matrix_norm(N, 2)`` (an SVD's singular values) per matrix per step.

When the basis changes, v is carried into the new one as the variance of independent coordinates:
with P_L = Q_L,new^T Q_L,old and P_R = Q_R,old^T Q_R,new, G'_new = P_L G'_old P_R and

    v <- (P_L o P_L) v (P_R o P_R)          (o: entrywise product; a permutation permutes v)

``refresh="eigh"`` (default) recomputes Q_L, Q_R with eigh. ``refresh="qr"`` is the reference's
cheaper refresh: sort the old basis by its estimated eigenvalues diag(Q^T L Q) (and v with it),
then one power iteration, Q <- qr(L Q). Vectors (biases, norm gains) and groups with
``use_soap=False`` are updated by Adam (``muon.adam_step``). The eps term compares with |G'|,
which grows or shrinks with width: ``make_optimizer`` scales it by the table (``scaling.rule``).

Precision. Step 1 is computed in float64 (float32 on Apple's MPS, which has no float64): there
G' is diagonal in exact arithmetic, but float32 leaves rounding noise in its zero entries, ~1e-7
|G| and more in the weak directions of G G^T, and Adam's division turns every entry above eps into
+-1. In float32 with eps 1e-8 the first step of a width-64...2048 MLP on the teacher task was 3-24x
the norm of U V^T (hidden layer; 0.7x off even at eps 1e-4). A float32 gradient still has singular
values at its rounding level (~1e-7 |G|) beyond its rank, and those above eps count as directions:
that first step stays 0.7-1.1x off the float64 model's at eps 1e-8, within 3% at eps 1e-6 (the
one-step coordinate check is flat either way). From step 2 on the basis is older than the gradient,
G' is dense with genuine entries, and float32 is enough.
"""
from __future__ import annotations

import torch

from ..checks import check_choice, check_decay, check_positive
from .checkpoint import Checkpointed
from .muon import buffer, check_betas, step_matrices, work_dtype

REFRESH = ("eigh", "qr")


def eigenbasis(f: torch.Tensor) -> torch.Tensor:
    """Eigenvectors (columns) of the symmetric PSD ``f`` by eigh, retried in float64 if it fails."""
    try:
        return torch.linalg.eigh(f)[1]
    except RuntimeError:   # no convergence (rare, float32)
        return torch.linalg.eigh(f.double())[1].to(f.dtype)


class SOAP(Checkpointed, torch.optim.Optimizer):
    """SOAP over ``params`` (tensors or param-group dicts), with Adam for vectors.

    Args:
        lr: learning rate (the reference's 3e-3).  betas: Adam's (b1, b2) = (0.95, 0.95).
        shampoo_beta: EMA decay of L and R (default: b2).  eps: Adam's eps in the eigenbasis (1e-8).
        weight_decay: decoupled, W <- W (1 - lr wd).
        precondition_frequency: refresh Q_L, Q_R every this many steps (10).
        refresh: "eigh" (default) or "qr" (the reference's power iteration).
        use_soap: group option; False updates the group's matrices with Adam.
        spectral: group option; True rescales each matrix's step to spectral norm lr (N / |N|_2).
    """

    def __init__(self, params, lr: float = 3e-3, betas=(0.95, 0.95), shampoo_beta: float | None = None,
                 eps: float = 1e-8, weight_decay: float = 0.0, precondition_frequency: int = 10,
                 refresh: str = "eigh", use_soap: bool = True, spectral: bool = False):
        check_positive("lr", lr)
        betas = check_betas("betas", betas)
        check_decay("shampoo_beta", shampoo_beta, none="betas[1]")
        check_positive("eps", eps, allow_zero=True)
        check_positive("weight_decay", weight_decay, allow_zero=True)
        self.precondition_frequency = check_positive("precondition_frequency", precondition_frequency, integer=True)
        self.refresh = check_choice("refresh", refresh, REFRESH)
        defaults = dict(lr=lr, betas=betas, shampoo_beta=shampoo_beta, eps=eps, weight_decay=weight_decay,
                        use_soap=bool(use_soap), spectral=bool(spectral))
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        return step_matrices(self, closure, "use_soap", self._soap_step)

    def _soap_step(self, p, st, group):
        g = p.grad.reshape(p.shape[0], -1).to(work_dtype(p))
        b1, b2 = group["betas"]
        beta = b2 if group["shampoo_beta"] is None else group["shampoo_beta"]
        t = st["step"] = st.get("step", 0) + 1
        first = "Q_L" not in st
        if first:                      # step 1: the basis of this gradient, in float64 (see Precision)
            g = g.to(torch.float32 if g.device.type == "mps" else torch.float64)
            self._accumulate(st, g, beta)
            st["Q_L"], st["Q_R"] = eigenbasis(st["L"]), eigenbasis(st["R"])
        ql, qr = buffer(st, "Q_L", g), buffer(st, "Q_R", g)
        m, v = buffer(st, "exp_avg", g), buffer(st, "exp_avg_sq", g)
        m.lerp_(g, 1 - b1)                                   # m <- b1 m + (1 - b1) G
        gr = ql.T @ g @ qr                                   # G'
        v.mul_(b2).addcmul_(gr, gr, value=1 - b2)            # v <- b2 v + (1 - b2) G'^2
        m_hat = (ql.T @ m @ qr) / (1 - b1 ** t)
        n = ql @ (m_hat / ((v / (1 - b2 ** t)).sqrt() + group["eps"])) @ qr.T
        if group["spectral"]:                                # N <- N / |N|_2
            norm = torch.linalg.matrix_norm(n, ord=2)
            n = n / norm if norm > 0 else n
        if group["weight_decay"]:
            p.mul_(1 - group["lr"] * group["weight_decay"])
        p.add_(n.reshape(p.shape).to(p.dtype), alpha=-group["lr"])
        if first:                      # the state in the parameter's working dtype from now on
            for key in ("L", "R", "Q_L", "Q_R", "exp_avg", "exp_avg_sq"):
                st[key] = st[key].to(work_dtype(p))
        else:
            self._accumulate(st, g, beta)
            if t % self.precondition_frequency == 0:
                self._refresh(st)

    @staticmethod
    def _accumulate(st, g, beta):
        """L <- beta L + (1 - beta) G G^T, R <- beta R + (1 - beta) G^T G (from zero)."""
        for key, a, b in (("L", g, g.T), ("R", g.T, g)):
            f = st.get(key)
            if f is None or f.dtype != g.dtype:
                f = st[key] = torch.zeros(a.shape[0], a.shape[0], dtype=g.dtype, device=g.device) \
                    if f is None else f.to(g.dtype)
            f.addmm_(a, b, beta=beta, alpha=1 - beta)

    def _refresh(self, st):
        """New Q_L, Q_R from L, R; v carried into the new basis."""
        v = st["exp_avg_sq"]
        if self.refresh == "eigh":
            new_l, new_r = eigenbasis(st["L"]), eigenbasis(st["R"])
            p_l, p_r = (new_l.T @ st["Q_L"]) ** 2, (st["Q_R"].T @ new_r) ** 2
            st["exp_avg_sq"] = p_l @ v @ p_r
        else:   # the reference: sort by estimated eigenvalue, one power iteration, QR
            order_l = torch.argsort(((st["L"] @ st["Q_L"]) * st["Q_L"]).sum(0), descending=True)
            order_r = torch.argsort(((st["R"] @ st["Q_R"]) * st["Q_R"]).sum(0), descending=True)
            q_l, q_r = st["Q_L"][:, order_l], st["Q_R"][:, order_r]
            new_l, new_r = torch.linalg.qr(st["L"] @ q_l)[0], torch.linalg.qr(st["R"] @ q_r)[0]
            st["exp_avg_sq"] = v[order_l][:, order_r]
        st["Q_L"], st["Q_R"] = new_l, new_r

    def variant(self) -> dict:
        """What a checkpoint must match besides the shapes: which groups SOAP preconditions."""
        return {"use_soap": [bool(g["use_soap"]) for g in self.param_groups],
                "spectral": [bool(g.get("spectral", False)) for g in self.param_groups]}
