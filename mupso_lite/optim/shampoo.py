"""Shampoo (Gupta, Koren & Singer 2018) with the inverse root as a parameter.

For a weight matrix with gradient G (out x in; a Conv2d weight is reshaped to
out x (in k k)) the statistics are, by default (``beta=0``, ``update_interval=1``), the
current batch's, L = G G^T and R = G^T G, as in the one-step update from which Ishikawa &
Karakida (2024) derive the muP exponents; or, as options, an EMA
L <- beta L + (1 - beta) G G^T (``beta`` in (0, 1)) or running sums from zero
L <- L + G G^T (``beta=None``, Gupta et al.), and the update is

    W <- W - lr * (L + eps_L I)^-e  G  (R + eps_R I)^-e,      e = ``root`` (1/4 by default).

With the current batch's statistics the update needs only the singular values of G:
update = P diag(s (s^2 + eps_L)^-e (s^2 + eps_R)^-e) Q^T for G = P S Q^T
(``linalg.current_batch_root_update``; no statistics are stored).

``eps_mode="absolute"``: eps_L = eps_R = eps (``make_optimizer`` scales it with width as the
muP table says: eps ~ |x|^2 |delta|^2). ``eps_mode="relative"``: eps_L = eps lambda_max(L),
eps_R = eps lambda_max(R), which already follows the factor scale (muP with a constant eps).
The ridge is added to a copy when the root is computed: it never accumulates into L or R.
With averaged statistics, roots are recomputed every ``update_interval`` steps and cached,
except during a warm-up (the first ``warmup`` = 20 steps) that recomputes them at every step:
statistics summed over a few batches have not seen most directions, and a root reused for ten
steps amplifies those by up to eps^(-2e) at each of them (on digits at width 256, lr 0.3, eps
1e-6 the loss peaked at 269 without the warm-up; with it the run reached test accuracy 0.97:
``scripts/findings.py warmup``).

Biases and other 1-D tensors are treated as an n x 1 matrix with a *diagonal* left
statistic: l <- l + g^2, r <- r + |g|^2, update g / ((l + eps)^e (r + eps)^e).

``grafting="sgd"`` or ``"adam"`` rescales each layer's update to the norm of the SGD or Adam
(beta1 = 0, beta2 = ``graft_beta2``) update, so the lr follows that optimizer's scaling.

Fast paths (``fast=True``, the default; ``fast=False`` always computes the formula as written,
forming L and R and their eigendecompositions). With current-batch statistics the update comes
from the SVD of G; passing ``model=`` (any torch model) gives G = gout^T x with R rows, and
when R < min(out, in) that SVD is taken through two thin QRs and an R x R SVD: no width x
width matrix is formed or decomposed. With averaged statistics and ``model=``,
G G^T = gout^T (x x^T) gout and the preconditioning is (L^-e gout^T)(x R^-e): cheaper when
the batch is smaller than the width. Results equal the dense path (tests/test_fast_paths.py).
"""
from __future__ import annotations

import weakref

import torch
from torch import nn

from ..checks import check_choice, check_decay, check_positive
from ..roles import weight_layers
from .capture import LayerCapture
from .checkpoint import Checkpointed
from .linalg import current_batch_root_update, inverse_root, matches_batch, precondition

WARMUP = 20  # steps whose inverse roots are always fresh


class Shampoo(Checkpointed, torch.optim.Optimizer):
    """Shampoo over ``params`` (tensors or param-group dicts).

    Args:
        lr: learning rate.  eps: the ridge (see ``eps_mode``).  root: the inverse-root exponent e.
        eps_mode: "absolute" or "relative" (to each statistic's largest eigenvalue).
        update_interval: recompute the inverse roots every this many steps (default 1).
        warmup: recompute them at every one of the first ``warmup`` steps (default 20 when
            ``update_interval`` > 1, else 0).
        beta: the statistics' EMA decay in [0, 1): 0 (the default) uses the current batch's;
            None for running sums (Gupta et al.).
        grafting: None, "sgd" or "adam".  momentum, weight_decay: heavy-ball; decoupled decay.
        model: optional model (role-tagged or plain) whose layer inputs and output gradients are
            captured to take the cheaper low-rank path (same result).
        check_batch: verify .grad == gout^T x on one random direction before the low-rank
            path (one host sync per layer and step); see ``KFAC``.
        fast: take the SVD path for current-batch statistics and, with ``model=``, the batch
            paths (thin QR + SVD, low-rank) where they apply. They equal the formula to
            rounding; ``fast=False`` always computes it as written.
    """

    def __init__(self, params, lr: float = 1e-2, eps: float = 1e-4, root: float = 0.25,
                 eps_mode: str = "absolute", update_interval: int = 1, beta: float | None = 0.0,
                 grafting: str | None = None, graft_beta2: float = 0.999, momentum: float = 0.0,
                 weight_decay: float = 0.0, model: nn.Module | None = None, check_batch: bool = True,
                 warmup: int | None = None, fast: bool = True):
        check_positive("lr", lr)
        check_positive("eps", eps, allow_zero=True)
        check_positive("root", root)
        if root > 1:
            raise ValueError(f"root: expected an exponent in (0, 1], got {root!r}")
        self.eps_mode = check_choice("eps_mode", eps_mode, ("absolute", "relative"))
        check_positive("update_interval", update_interval, integer=True)
        if warmup is None:
            warmup = WARMUP if update_interval > 1 else 0
        self.warmup = check_positive("warmup", warmup, integer=True, allow_zero=True)
        check_decay("beta", beta, none="running sums")
        if grafting is not None:
            grafting = check_choice("grafting", grafting, ("sgd", "adam"))
        check_decay("graft_beta2", graft_beta2)
        check_positive("momentum", momentum, allow_zero=True)
        check_positive("weight_decay", weight_decay, allow_zero=True)
        defaults = dict(lr=lr, eps=eps, momentum=momentum, weight_decay=weight_decay)
        super().__init__(params, defaults)
        self.root, self.update_interval, self.beta = float(root), update_interval, beta
        self.grafting, self.graft_beta2 = grafting, graft_beta2
        self.capture, self._layer_of, self.check_batch = None, {}, bool(check_batch)
        self.fast = bool(fast)
        if model is not None:
            layers = weight_layers(model)
            self._layer_of = {id(m.weight): (name, m) for name, m in layers.items()}
            self.capture = LayerCapture(model, layers)
            weakref.finalize(self, self.capture.remove)  # deleting the optimizer detaches its hooks

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.capture is not None:
            self.capture.check_single_use()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                k = st.get("step", 0)
                grad = p.grad.reshape(p.shape[0], -1) if p.dim() > 1 else p.grad
                if p.dim() > 1:
                    update = self._matrix_update(p, grad, st, k, group["eps"])
                else:
                    update = self._vector_update(grad, st, group["eps"])
                if self.grafting:
                    update = update * (self._graft_norm(grad, st, k) /
                                       torch.linalg.vector_norm(update).clamp_min(1e-30))
                if group["momentum"]:
                    buf = st.setdefault("momentum_buffer", torch.zeros_like(update))
                    update = buf.mul_(group["momentum"]).add_(update)
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update.reshape(p.shape).to(p.dtype), alpha=-group["lr"])
                st["step"] = k + 1
        if self.capture is not None:
            self.capture.clear()
        return loss

    def _matrix_update(self, p, grad, st, k, eps):
        x = gout = None
        if self.fast and id(p) in self._layer_of and not isinstance(self._layer_of[id(p)][1], nn.Embedding) \
                and self.capture.ready(self._layer_of[id(p)][0]):
            name, module = self._layer_of[id(p)]
            xs = self.capture.x(name)[:, :-1] if module.bias is not None else self.capture.x(name)
            gout_rows = self.capture.gout(name)   # the bias is a separate tensor here: no ones column
            if not self.check_batch or matches_batch(grad, gout_rows, xs):
                x, gout = xs, gout_rows
        relative = self.eps_mode == "relative"
        if self.fast and self.beta == 0 and self.update_interval == 1:   # statistics = this batch's
            return current_batch_root_update(gout, x, self.root, eps, relative, grad=grad)
        if x is not None and x.shape[0] < min(grad.shape):
            xx, gg = x @ x.T, gout @ gout.T                    # R x R Gram matrices of the batch
            self._accumulate_product(st, "L", gout.T @ xx, gout)   # G G^T = gout^T (x x^T) gout
            self._accumulate_product(st, "R", x.T @ gg, x)         # G^T G = x^T (gout gout^T) x
        else:
            self._accumulate_product(st, "L", grad, grad.T)
            self._accumulate_product(st, "R", grad.T, grad)
        if k < self.warmup or k % self.update_interval == 0 or "L_root" not in st:
            st["L_root"] = inverse_root(st["L"], self.root, eps, relative)
            st["R_root"] = inverse_root(st["R"], self.root, eps, relative)
        return precondition(st["L_root"], grad, st["R_root"], gout, x)

    def _vector_update(self, grad, st, eps):
        self._accumulate(st, "L", grad * grad)
        self._accumulate(st, "R", (grad * grad).sum())
        lam = st["L"].max() if self.eps_mode == "relative" else 1.0
        eps_l, eps_r = eps * lam, eps * (st["R"] if self.eps_mode == "relative" else 1.0)
        return grad * (st["L"] + eps_l).clamp_min(1e-30) ** (-self.root) * \
            (st["R"] + eps_r).clamp_min(1e-30) ** (-self.root)

    def _accumulate_product(self, st, key, a, b):
        """st[key] <- st[key] + a b (or the EMA), as one fused GEMM (``addmm_``), no temporary."""
        if key not in st:
            st[key] = a @ b if self.beta is None else torch.mm(a, b).mul_(1 - self.beta)
        elif self.beta is None:
            st[key].addmm_(a, b)
        else:
            st[key].addmm_(a, b, beta=self.beta, alpha=1 - self.beta)

    def _accumulate(self, st, key, value):
        if key not in st:
            st[key] = value.clone() if self.beta is None else (1 - self.beta) * value
        elif self.beta is None:
            st[key].add_(value)
        else:
            st[key].mul_(self.beta).add_(value, alpha=1 - self.beta)

    def _graft_norm(self, grad, st, k):
        if self.grafting == "sgd":
            return torch.linalg.vector_norm(grad)
        v = st.setdefault("graft_v", torch.zeros_like(grad))
        v.mul_(self.graft_beta2).addcmul_(grad, grad, value=1 - self.graft_beta2)
        v_hat = v / (1 - self.graft_beta2 ** (k + 1))
        return torch.linalg.vector_norm(grad / (v_hat.sqrt() + 1e-8))

    def variant(self) -> dict:
        """What a checkpoint must match besides the shapes: the root and the eps mode."""
        return {"root": self.root, "eps_mode": self.eps_mode}

    def remove_hooks(self):
        """Detach the capture hooks of ``model=`` (the dense path stays)."""
        if self.capture is not None:
            self.capture.remove()
            self.capture, self._layer_of = None, {}
