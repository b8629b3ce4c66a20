"""Muon (Keller Jordan, 2024): momentum SGD whose update is orthogonalized.

For a weight matrix W (out x in; a Conv2d weight is flattened to out x (in k k)) with gradient G:

    B <- mu B + G                                   momentum buffer
    D = G + mu B   (nesterov=True, the default)  or  D = B
    O = orthogonalize(D) = U V^T   for D = U S V^T  (the singular values set to 1)
    W <- W (1 - lr weight_decay) - lr O

The reference keeps B as an average, B <- mu B + (1 - mu) G; that scales D by (1 - mu), which
the orthogonalization removes. ``orthogonalize="svd"`` computes U V^T exactly (directions with a
zero singular value stay zero). ``"newton_schulz"`` (the default; the reference's fast path:
matrix products only, no decomposition) starts from X = D / (|D|_F + 1e-7), whose singular
values are <= 1, and repeats ``ns_steps`` times

    A = X X^T,   X <- a X + (b A + c A^2) X,     (a, b, c) = (3.4445, -4.7750, 2.0315)

which maps every singular value s to a s + b s^3 + c s^5 and keeps the singular vectors.
Small values grow 3.4x per step; after 5 steps every s >= 0.01 |D|_F lies in [0.68, 1.14]
and stays in that band: the coefficients trade exactness (1 is not a fixed point) for speed.
Both methods run in float32 (float64 stays float64), so bfloat16 models work.

Parameters that are not matrices (biases, norm gains) and the groups with ``use_muon=False``
are updated by Adam inside the same optimizer (as the reference's MuonWithAuxAdam):
m <- b1 m + (1 - b1) g, v <- b2 v + (1 - b2) g^2, W <- W (1 - lr wd) - lr m^ / (sqrt(v^) + eps).
Width scaling (``ml.make_optimizer(model, "muon", ...)``): see ``scaling.rule``.
"""
from __future__ import annotations

import torch

from ..checks import check_choice, check_decay, check_positive
from .checkpoint import Checkpointed
from .linalg import HALF

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
METHODS = ("newtonschulz", "svd")


def orthogonalize(d: torch.Tensor, method: str = "newtonschulz", ns_steps: int = 5) -> torch.Tensor:
    """U V^T for D = U S V^T: exactly (``method="svd"``) or by Muon's Newton-Schulz iteration."""
    if method == "svd":
        u, s, vh = torch.linalg.svd(d, full_matrices=False)
        keep = s > s.max() * max(d.shape) * torch.finfo(d.dtype).eps   # U_r V_r^T over s > 0
        return (u * keep.to(u.dtype)) @ vh
    a, b, c = NS_COEFFICIENTS
    x = d / (torch.linalg.matrix_norm(d) + 1e-7)
    tall = x.shape[0] > x.shape[1]
    if tall:                      # work with the smaller Gram matrix X X^T
        x = x.T
    for _ in range(ns_steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def work_dtype(t: torch.Tensor) -> torch.dtype:
    """float32 for float16 / bfloat16 tensors (their statistics and products), else their own."""
    return torch.float32 if t.dtype in HALF else t.dtype


def buffer(st: dict, key: str, like: torch.Tensor) -> torch.Tensor:
    """st[key], created as zeros like ``like`` or cast to its dtype (a loaded state comes back in
    the parameter's dtype, bfloat16 for a bfloat16 model)."""
    t = st.get(key)
    if t is None or t.dtype != like.dtype:
        t = st[key] = torch.zeros_like(like) if t is None else t.to(like.dtype)
    return t


def adam_step(p: torch.Tensor, st: dict, group: dict) -> None:
    """One AdamW step of ``p`` (decoupled weight decay), state kept in float32 for half tensors."""
    g = p.grad.to(work_dtype(p))
    b1, b2 = group["betas"]
    t = st["step"] = st.get("step", 0) + 1
    m, v = buffer(st, "exp_avg", g), buffer(st, "exp_avg_sq", g)
    m.lerp_(g, 1 - b1)
    v.mul_(b2).addcmul_(g, g, value=1 - b2)
    update = (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + group["eps"])
    if group["weight_decay"]:
        p.mul_(1 - group["lr"] * group["weight_decay"])
    p.add_(update.to(p.dtype), alpha=-group["lr"])


def step_matrices(optimizer, closure, flag: str, matrix_step):
    """One step of Muon or SOAP: ``matrix_step(p, state, group)`` for the matrices of the groups
    with ``group[flag]`` (Conv2d weights too), Adam (``adam_step``) for every other parameter."""
    loss = None
    if closure is not None:
        with torch.enable_grad():
            loss = closure()
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is None:
                continue
            if group[flag] and p.dim() >= 2:
                matrix_step(p, optimizer.state[p], group)
            else:
                adam_step(p, optimizer.state[p], group)
    return loss


def check_betas(arg: str, betas) -> tuple:
    """Two numbers in [0, 1), else ValueError naming ``arg``."""
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise ValueError(f"{arg}: expected two numbers in [0, 1), got {betas!r}")
    try:
        return tuple(float(check_decay(arg, b)) for b in betas)
    except ValueError:
        raise ValueError(f"{arg}: expected two numbers in [0, 1), got {betas!r}") from None


class Muon(Checkpointed, torch.optim.Optimizer):
    """Muon over ``params`` (tensors or param-group dicts), with Adam for the rest.

    Args:
        lr: learning rate (the reference's 0.02: the spectral norm of a square layer's step).
        momentum: mu in [0, 1) (0.95).  nesterov: D = G + mu B (True) or D = B.
        weight_decay: decoupled, W <- W (1 - lr wd), for Muon and Adam parameters alike.
        orthogonalize: "newton_schulz" (default) or "svd".  ns_steps: Newton-Schulz steps (5).
        betas, eps: the Adam parameters' (0.9, 0.95) (the reference's) and 1e-8.
        use_muon: group option; False updates the group's matrices with Adam too.
        lr_rule: how ``make_optimizer`` set the groups' lrs (a label; a checkpoint must match it).
    """

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True,
                 weight_decay: float = 0.0, orthogonalize: str = "newton_schulz", ns_steps: int = 5,
                 betas=(0.9, 0.95), eps: float = 1e-8, use_muon: bool = True, lr_rule: str | None = None):
        check_positive("lr", lr)
        check_decay("momentum", momentum)
        check_positive("weight_decay", weight_decay, allow_zero=True)
        self.method = check_choice("orthogonalize", orthogonalize, METHODS)
        self.ns_steps = check_positive("ns_steps", ns_steps, integer=True)
        betas = check_betas("betas", betas)
        check_positive("eps", eps, allow_zero=True)
        self.lr_rule = lr_rule
        defaults = dict(lr=lr, momentum=float(momentum), nesterov=bool(nesterov), weight_decay=weight_decay,
                        betas=betas, eps=eps, use_muon=bool(use_muon))
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        return step_matrices(self, closure, "use_muon", self._muon_step)

    def _muon_step(self, p, st, group):
        g = p.grad.reshape(p.shape[0], -1).to(work_dtype(p))
        mu = group["momentum"]
        buf = buffer(st, "momentum_buffer", g)
        buf.mul_(mu).add_(g)                                   # B <- mu B + G
        d = g.add(buf, alpha=mu) if group["nesterov"] else buf  # D
        o = orthogonalize(d, self.method, self.ns_steps)
        if group["weight_decay"]:
            p.mul_(1 - group["lr"] * group["weight_decay"])
        p.add_(o.reshape(p.shape).to(p.dtype), alpha=-group["lr"])

    def variant(self) -> dict:
        """What a checkpoint must match besides the shapes: which groups Muon orthogonalizes and the lr rule."""
        return {"use_muon": [bool(g["use_muon"]) for g in self.param_groups], "lr_rule": self.lr_rule}
