"""K-FAC (Martens & Grosse 2015; Grosse & Martens 2016 for convolutions) and FOOF.

For each weight layer (bias as a homogeneous coordinate: x gets a trailing 1),

    A = E[x x^T]            averaged over examples and positions
    B = E[delta delta^T]    averaged over examples and summed over positions; delta =
                            d(example's own loss)/d(layer output at that position)
    G = E[delta x^T]        = the gradient of the mean loss (what .grad holds)

Positions are a Conv2d's spatial locations (Grosse & Martens 2016) and the tokens of a
Linear applied to a sequence (inputs N x T x d); a plain Linear has one. An nn.Embedding is
a Linear on one-hot tokens: its A = diag(token frequencies) is kept as a vector.

    update  W <- W - lr * (B + rho_B I)^-1 G (A + rho_A I)^-1          (K-FAC)
            W <- W - lr * G (A + rho_A I)^-1                            (FOOF, ``foof=True``)

Curvature memory. By default (``ema_decay=0``, both intervals 1) A and B are the current
batch's, refreshed at every step: the one-step update from which Ishikawa & Karakida (2024)
derive the muP exponents, and the cheapest exact path (push-through, below). Averaging is an
option: factors become exponential moving averages F <- decay * F + (1 - decay) * F_batch
(on the first update F is exactly the current batch's), refreshed every ``factor_interval``
steps, with inverses every ``inverse_interval`` steps and cached between, except during a
warm-up (the first ceil(1 / (1 - decay)) steps) that refreshes both at every step. What the
average does to the step: the current batch enters A and B with weight 1 - decay, so the
directions of its own examples that past batches did not cover (or that moved since) get up
to 1 / (1 - decay) times the current batch's step in each factor, held back only by rho. The
wider the layer, the more such directions (a batch of R examples, a layer of M inputs): the
averaged update grows with width after the first step, and the muP exponents, derived for
the current batch, no longer hold (``python scripts/exp_curvature.py``: coordinate checks
against the decay, the leverages behind them, and the slider grids). Averaging suits a fixed
width with noisy small batches, tuned at that width; it does not transfer across widths.

Fast paths (``fast=True``, the default; all equal the dense math, and
tests/test_fast_paths.py checks them in float64 against ``fast=False``):
  low-rank      with G = gout^T x (R rows), (B+rho_B I)^-1 G (A+rho_A I)^-1 is computed as
                ((B+rho_B I)^-1 gout^T)(x (A+rho_A I)^-1) when that is cheaper (R < width);
  push-through  with ``ema_decay=0`` and both intervals 1 (the defaults) the factors are the
                current batch's and the update needs only R x R solves on each side where
                R < that side's size, solves of the side's size otherwise
                (``linalg.pushthrough_precondition``); no factor or inverse is stored. With the
                MC Fisher, B comes from the sampled rows and G from the true ones (Woodbury,
                again R x R). When the batch has at least as many rows as the layer has
                inputs and outputs (convolutions: N x H' x W' patches), this batch's factors
                are formed and inverted instead (``linalg.covers_layer``), which costs less.

Damping (``damping_mode``): "given" (rho_A, rho_B as given: how ``make_optimizer`` applies the
muP table), "pi" (Martens & Grosse's factored Tikhonov) or "trace" (rho times the largest trace of
each factor seen so far); ``optim/damping.py`` states each formula and why.

In a float16 or bfloat16 model the curvature is kept in float32 (factors, solves, the update;
``linalg.as_curvature``) and the update is cast to the weight's dtype, as mature Shampoo
implementations do: CPU LAPACK has no half-precision Cholesky.

``fisher="empirical"`` uses the training labels' gradients; ``fisher="mc"`` samples labels
from the model (call ``opt.sample_fisher(outputs)`` between the forward and backward pass;
``ml.train`` does); ``fisher="auto"`` (the default) is "mc" for the squared loss and
"empirical" for cross-entropy. For regression the empirical Fisher shrinks with the
residuals, so its preconditioned step grows as the fit improves.

Which layers: the role-tagged ones of ``ml.MLP``, ``ml.CNN``, ``ml.tag_roles`` or
``ml.parametrize`` (which also tags nn.Embedding), or, in a plain torch model without roles,
every nn.Linear and nn.Conv2d (roles matter only to the width rules of ``make_optimizer``).
Other parameters (LayerNorm, BatchNorm, ...) get plain SGD (with momentum).
"""
from __future__ import annotations

import math
import warnings
import weakref

import torch
from torch import nn

from ..losses import LOSSES, loss_function, sample_targets
from ..checks import check_choice, check_decay, check_positive
from ..roles import weight_layers
from .capture import LayerCapture, gradient_matrix, output_rows
from .checkpoint import Checkpointed
from .damping import DAMPING_MODES, bias_damping, kfac_damping
from .linalg import as_curvature, covers_layer, damped_inverse, gram_update_, matches_batch, precondition, pushthrough_factors

FISHERS = ("auto", "empirical", "mc")


class KFAC(Checkpointed, torch.optim.Optimizer):
    """K-FAC for the nn.Linear and nn.Conv2d layers of ``model`` (its role-tagged ones, if any).

    Args:
        model: any torch model; with roles (``ml.MLP``, ``ml.CNN``, ``ml.tag_roles``) only the
            tagged layers are preconditioned, without roles every Linear and Conv2d layer.
        lr: learning rate (one for all layers under muP).
        damping: rho, the base damping (used by every mode).
        damping_a, damping_b: rho_A and rho_B for ``damping_mode="given"`` (default: damping).
        damping_mode: "given", "pi" or "trace" (see the module docstring).
        fisher: "auto" (MC for the squared loss, else empirical), "empirical" or "mc".
        loss: "cross_entropy" or "mse", the loss the MC Fisher samples from.
        ema_decay: factor EMA decay in [0, 1); 0 (the default) uses the current batch's factors.
        factor_interval, inverse_interval: refresh factors / inverses every this many steps
            (default 1: every step).
        warmup: refresh factors and inverses at every one of the first ``warmup`` steps
            (default: ceil(1 / (1 - ema_decay)), e.g. 20 for decay 0.95, when an interval is
            above 1; else 0). Early factors average only a few batches: directions those
            batches have not seen are damped by rho alone, and an inverse reused for
            ``inverse_interval`` steps amplifies them by up to 1 / rho at every step.
        foof: precondition the input side only (B = I).
        momentum, weight_decay: heavy-ball momentum on the update; decoupled weight decay.
        params: optional param groups, each a dict with "params" and "layer" (the layer's
            name, or None for parameters updated by SGD); ``make_optimizer`` builds these.
        fast: take the batch-reassociated paths (low-rank, push-through; see the module
            docstring) where they apply and are cheaper. They equal the plain formula to
            rounding (tests/test_fast_paths.py); ``fast=False`` always computes
            (B + rho_B I)^-1 G (A + rho_A I)^-1 as written, e.g. to read or debug it.
        check_batch: verify each step, on one random direction, that .grad == gout^T x
            before taking the low-rank path (one host sync per layer; cheap on CPU). Set
            False on a GPU when nothing edits .grad between backward() and step()
            (no clipping, no accumulation over several batches).
    """

    def __init__(self, model: nn.Module, lr: float = 0.1, damping: float = 0.1, damping_a: float | None = None,
                 damping_b: float | None = None, damping_mode: str = "given", fisher: str = "auto",
                 loss: str = "cross_entropy", ema_decay: float = 0.0, factor_interval: int = 1,
                 inverse_interval: int = 1, foof: bool = False, momentum: float = 0.0,
                 weight_decay: float = 0.0, params=None, check_batch: bool = True,
                 warmup: int | None = None, fast: bool = True):
        check_positive("lr", lr)
        check_positive("damping", damping, allow_zero=True)
        for arg, v in (("damping_a", damping_a), ("damping_b", damping_b)):
            if v is not None:
                check_positive(arg, v, allow_zero=True)
        if damping_mode == "fixed":
            warnings.warn('KFAC(damping_mode="fixed") is now called "given" (use the damping as given); '
                          '"fixed" will be removed', FutureWarning, stacklevel=2)
            damping_mode = "given"
        self.damping_mode = check_choice("damping_mode", damping_mode, DAMPING_MODES)
        self.fisher = check_choice("fisher", fisher, FISHERS)
        if loss not in LOSSES:
            raise ValueError(f"loss: expected one of {LOSSES}, got {loss!r}")
        self.loss = loss
        check_decay("ema_decay", ema_decay)
        check_positive("factor_interval", factor_interval, integer=True)
        check_positive("inverse_interval", inverse_interval, integer=True)
        check_positive("momentum", momentum, allow_zero=True)
        check_positive("weight_decay", weight_decay, allow_zero=True)
        self.ema_decay, self.foof, self.check_batch = float(ema_decay), bool(foof), bool(check_batch)
        self.fast = bool(fast)
        self.factor_interval, self.inverse_interval = factor_interval, inverse_interval
        if warmup is None:   # until the factor average holds about 1 / (1 - decay) batches
            warmup = math.ceil(1.0 / (1.0 - self.ema_decay)) if factor_interval * inverse_interval > 1 else 0
        self.warmup = check_positive("warmup", warmup, integer=True, allow_zero=True)

        self.modules_by_name = weight_layers(model)
        if params is None:
            params = default_groups(model, self.modules_by_name)
        defaults = dict(lr=lr, damping=damping, damping_a=damping_a, damping_b=damping_b, damping_bias=None,
                        momentum=momentum, weight_decay=weight_decay, layer=None)
        super().__init__(params, defaults)
        for g in self.param_groups:
            if g["layer"] is not None and g["layer"] not in self.modules_by_name:
                raise ValueError(f"params: group names layer {g['layer']!r}, which is not a preconditioned "
                                 f"layer of the model (layers: {list(self.modules_by_name)})")
            check_positive("lr", g["lr"])
            if g["damping_bias"] is not None:
                check_positive("damping_bias", g["damping_bias"])
        self.capture = LayerCapture(model, self.modules_by_name)
        weakref.finalize(self, self.capture.remove)  # deleting the optimizer detaches its hooks
        self._fisher_gout: dict = {}
        self._steps = 0

    # ------------------------------------------------------------------ Fisher sampling
    def fisher_for(self, loss: str) -> str:
        """"mc" or "empirical": the Fisher this optimizer uses with ``loss``."""
        if self.fisher == "auto":
            return "mc" if loss == "mse" else "empirical"
        return self.fisher

    def sample_fisher(self, outputs: torch.Tensor, loss: str | None = None) -> None:
        """For the MC Fisher (``fisher="mc"``, or "auto" with the squared loss): back-propagate a
        loss on labels sampled from the model, keeping the graph, and store those output
        gradients for B. No-op otherwise.

        ``loss`` ("cross_entropy" or "mse") overrides the constructor's; ``ml.train`` passes
        the loss it trains with, so the sampled targets always match the task."""
        loss = self.loss if loss is None else loss
        if loss not in LOSSES:
            raise ValueError(f"loss: expected one of {LOSSES}, got {loss!r}")
        if self.fisher_for(loss) != "mc" or not self._refreshes_factors(self._steps):
            return
        names = [n for n in self.modules_by_name if n in self.capture.outputs()]
        targets = sample_targets(outputs, loss)
        sampled = loss_function(loss)(outputs, targets)
        self.capture.grad_target = "ignore"
        try:
            grads = torch.autograd.grad(sampled, [self.capture.outputs()[n] for n in names],
                                        retain_graph=True, allow_unused=True)
        finally:
            self.capture.grad_target = "gout"
        self._fisher_gout = {n: as_curvature(output_rows(self.modules_by_name[n], g.detach()))
                             for n, g in zip(names, grads) if g is not None}

    # ------------------------------------------------------------------ the step
    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._check_captured()   # every check before the first parameter changes
        for group in self.param_groups:
            if group["layer"] is None:
                self._sgd_step(group)
            else:
                self._layer_step(group)
        self._steps += 1
        self.capture.clear()
        self._fisher_gout = {}
        return loss

    def _layer_step(self, group):
        name = group["layer"]
        module = self.modules_by_name[name]
        if module.weight.grad is None:
            return
        st = self.state[module.weight]
        k = st.get("step", 0)
        if isinstance(module, nn.Embedding):
            update = self._embedding_update(group, st, name, module, k)
            grad = batch = None
        else:
            grad = as_curvature(gradient_matrix(module))   # G (out x in, the bias as the last column)
            batch = self._batch_rows(name, grad) if self.fast else None
        if grad is None:
            pass
        elif batch is not None and self._current_batch_only(group) and not covers_layer(*batch):
            gout, x = batch
            update = self._pushthrough_update(group, st, name, x, gout)
        else:
            if self._refreshes_factors(k):
                self._update_factors(name, st)
            if k < self.warmup or k % self.inverse_interval == 0 or "A_inv" not in st:
                self._update_inverses(group, st)
            if batch is None:
                # the formula:  update = (B + rho_B I)^-1 G (A + rho_A I)^-1      (FOOF: B = I)
                update = grad @ st["A_inv"] if self.foof else st["B_inv"] @ grad @ st["A_inv"]
            else:   # the same product, reassociated through the batch when that is cheaper
                update = precondition(None if self.foof else st["B_inv"], grad, st["A_inv"], *batch)
        if isinstance(update, tuple) and (group["momentum"] or not fusable(module, update)):
            update = update[0].T @ update[1]
        if group["momentum"]:
            buf = st.setdefault("momentum_buffer", torch.zeros_like(update))
            update = buf.mul_(group["momentum"]).add_(update)
        self._apply(module, update, group)   # W <- W - lr * update
        st["step"] = k + 1

    def _embedding_update(self, group, st, name, module, k):
        """(B + rho_B I)^-1 G (A + rho_A I)^-1 for an nn.Embedding, G = weight.grad^T (dim x vocab).
        Its input is one-hot, so A = E[x x^T] = diag(token frequencies): stored as a vector and
        inverted elementwise; tr A = 1."""
        grad = as_curvature(module.weight.grad.T)
        if self._refreshes_factors(k):
            idx, delta = self.capture.x(name), self._delta(name)
            freq = torch.bincount(idx, minlength=module.num_embeddings).to(grad.dtype) / idx.numel()
            first = "A" not in st
            if first:
                st["A"] = freq
                st["B"] = None if self.foof else delta.new_zeros(delta.shape[1], delta.shape[1])
            else:
                st["A"].mul_(self.ema_decay).add_(freq, alpha=1 - self.ema_decay)
            if not self.foof:
                beta, w = (0.0, 1.0) if first else (self.ema_decay, 1.0 - self.ema_decay)
                gram_update_(st["B"], delta, beta, w * self.capture.batch_size(name))
        if k < self.warmup or k % self.inverse_interval == 0 or "A_inv" not in st:
            b = st["B"]
            traces = (float(st["A"].sum()), st["A"].numel(), float(torch.trace(b)) if b is not None else 0.0,
                      b.shape[0] if b is not None else 1)
            rho_a, rho_b = self.damping_for(group, st, traces)
            st["rho_a"], st["rho_b"] = rho_a, rho_b
            st["A_inv"] = 1.0 / (st["A"] + rho_a)
            st["B_inv"] = None if self.foof else damped_inverse(b, rho_b)
        return (grad if self.foof else st["B_inv"] @ grad) * st["A_inv"]

    def _batch_rows(self, name: str, grad: torch.Tensor):
        """(gout, x) with G == gout^T x for this step's batch, or None (not captured, or .grad
        was edited after backward: clipping, accumulation). The fast paths need it."""
        if not self.capture.ready(name):
            return None
        gout, x = as_curvature(self.capture.gout(name)), as_curvature(self.capture.x(name))
        return (gout, x) if not self.check_batch or matches_batch(grad, gout, x) else None

    def _refreshes_factors(self, k: int) -> bool:
        return k < self.warmup or k % self.factor_interval == 0

    def _check_captured(self) -> None:
        """Each layer with a gradient was used once, and its inputs and output gradients
        are here when this step refreshes its factors."""
        self.capture.check_single_use()
        for group in self.param_groups:
            name = group["layer"]
            if name is None or self.modules_by_name[name].weight.grad is None:
                continue
            k = self.state[self.modules_by_name[name].weight].get("step", 0)
            if not self.capture.ready(name) and self._refreshes_factors(k):
                raise RuntimeError(f"K-FAC: no captured inputs/output gradients for layer {name!r}; run "
                                   "the forward and backward pass with gradients enabled before step()")

    def _current_batch_only(self, group) -> bool:
        """Factors and inverses are exactly the current batch's every step (no EMA, intervals 1)
        and the damping is positive: the push-through path applies (empirical or MC Fisher)."""
        if self.ema_decay != 0.0 or self.factor_interval != 1 or self.inverse_interval != 1:
            return False
        if self.damping_mode != "given":
            return group["damping"] > 0
        ra, rb = self.damping_for(group, {})
        return ra > 0 and (self.foof or rb > 0)

    def _pushthrough_update(self, group, st, name, x, gout):
        """(B + rho_B I)^-1 G (A + rho_A I)^-1 from R x R solves, as (left, right) with the update =
        left^T right (``linalg.pushthrough_factors``; ``_apply`` adds it to the weight in one GEMM).
        The factors are never formed, so the state holds no A, B or inverses; traces for the
        "pi"/"trace" damping come from the batch: tr A = |x|^2 / R, tr B = n |gout|^2."""
        n = self.capture.batch_size(name)
        fisher_gout = self._fisher_gout.get(name)   # MC Fisher: B from sampled output gradients
        delta = gout if fisher_gout is None else fisher_gout
        traces = None
        if self.damping_mode != "given":
            tr_a = float(x.pow(2).sum()) / x.shape[0]
            tr_b = 0.0 if self.foof else n * float(delta.pow(2).sum())
            traces = (tr_a, x.shape[1], tr_b, gout.shape[1])
        rho_a, rho_b = self.damping_for(group, st, traces)
        st["rho_a"], st["rho_b"] = rho_a, rho_b
        rho_a = self._a_damping(group, name, rho_a, x)   # a diagonal when the bias is damped on its own
        # the update as (left, right) with update = left^T right (``_apply`` adds it in one GEMM)
        return pushthrough_factors(gout, x, n, None if self.foof else rho_b, rho_a, fisher_gout=fisher_gout)

    def _update_factors(self, name, st):
        """F <- d F + (1 - d) F_batch, fused into the GEMM (``linalg.gram_update_``)."""
        x = as_curvature(self.capture.x(name))
        n = self.capture.batch_size(name)
        delta = self._delta(name)
        first, d = "A" not in st, self.ema_decay
        beta, w = (0.0, 1.0) if first else (d, 1.0 - d)
        if first:   # beta = 0 ignores the uninitialized buffer
            st["A"] = x.new_empty(x.shape[1], x.shape[1])
            st["B"] = None if self.foof else delta.new_empty(delta.shape[1], delta.shape[1])
        gram_update_(st["A"], x, beta, w / x.shape[0])             # A_batch = x^T x / R
        if not self.foof:                                          # B_batch = n delta^T delta
            gram_update_(st["B"], delta, beta, w * n)               # = (1/N) sum (N g)(N g)^T

    def _delta(self, name):
        return self._fisher_gout.get(name, as_curvature(self.capture.gout(name)))   # sampled this step, if MC

    def damping_for(self, group, st, traces=None) -> tuple[float, float]:
        """(rho_A, rho_B) this layer uses, per ``damping_mode`` (``damping.kfac_damping``).
        ``traces`` = (tr A, dim A, tr B, dim B) when the factors are not stored (push-through)."""
        return kfac_damping(self.damping_mode, group, st, traces)

    def _a_damping(self, group, name, rho_a, like):
        """rho_A, or the diagonal (rho_A, ..., rho_A, rho_bias) of ``damping.bias_damping``."""
        has_bias = getattr(self.modules_by_name[name], "bias", None) is not None
        return bias_damping(rho_a, group.get("damping_bias") if has_bias else None, like)

    def _update_inverses(self, group, st):
        rho_a, rho_b = self.damping_for(group, st)
        st["rho_a"], st["rho_b"] = rho_a, rho_b
        st["A_inv"] = damped_inverse(st["A"], self._a_damping(group, group["layer"], rho_a, st["A"]))
        st["B_inv"] = None if self.foof else damped_inverse(st["B"], rho_b)

    @staticmethod
    def _apply(module, update, group):
        w = module.weight
        if group["weight_decay"]:
            w.mul_(1 - group["lr"] * group["weight_decay"])
        if isinstance(update, tuple):   # update = left^T right, added without forming it first
            left, right = update
            n = w.shape[1]
            w.addmm_(left.T, right[:, :n], alpha=-group["lr"])
            if module.bias is not None:
                module.bias.add_(left.T @ right[:, n], alpha=-group["lr"])
            return
        if isinstance(module, nn.Embedding):   # the update is dim x vocab, the weight vocab x dim
            w.add_(update.T.to(w.dtype), alpha=-group["lr"])
            return
        w_update = update[:, : w[0].numel()] if module.bias is not None else update
        w.add_(w_update.reshape(w.shape).to(w.dtype), alpha=-group["lr"])
        if module.bias is not None:
            module.bias.add_(update[:, -1].to(module.bias.dtype), alpha=-group["lr"])

    def _sgd_step(self, group):
        for p in group["params"]:
            if p.grad is None:
                continue
            d = p.grad
            if group["weight_decay"]:
                p.mul_(1 - group["lr"] * group["weight_decay"])
            if group["momentum"]:
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(d))
                d = buf.mul_(group["momentum"]).add_(d)
            p.add_(d, alpha=-group["lr"])

    # ------------------------------------------------------------------ persistence
    def state_dict(self):
        return {**super().state_dict(), "kfac_steps": self._steps}

    def variant(self) -> dict:
        """What a checkpoint must match besides the shapes: K-FAC or FOOF, and the damping mode."""
        return {"foof": self.foof, "damping_mode": self.damping_mode}

    def load_state_dict(self, state_dict):
        """Load a state saved by a K-FAC of the same variant over the same layers and shapes, with
        finite numbers only (else ValueError, and nothing changes)."""
        steps = state_dict.get("kfac_steps", 0) if isinstance(state_dict, dict) else 0
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "kfac_steps"}
                                if isinstance(state_dict, dict) else state_dict)
        self._steps = steps

    def remove_hooks(self):
        """Detach the capture hooks from the model (the optimizer cannot step afterwards)."""
        self.capture.remove()


def fusable(module: nn.Module, update: tuple) -> bool:
    """Whether a factored update (left, right) can be added to the weight by one ``addmm_``: a
    2-D weight (nn.Linear) of the factors' dtype."""
    w = module.weight
    return isinstance(module, nn.Linear) and w.dim() == 2 and w.dtype == update[0].dtype == update[1].dtype


def default_groups(model: nn.Module, modules_by_name: dict) -> list[dict]:
    """One group per preconditioned layer (its weight and bias), plus one for all other parameters."""
    groups, taken = [], set()
    for name, m in modules_by_name.items():
        ps = [p for p in (m.weight, getattr(m, "bias", None)) if p is not None]
        taken.update(id(p) for p in ps)
        groups.append({"params": ps, "layer": name})
    rest = [p for p in model.parameters() if id(p) not in taken and p.requires_grad]
    if rest:
        groups.append({"params": rest, "layer": None})
    return groups
