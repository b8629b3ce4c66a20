"""K-FAC's damping: the (rho_A, rho_B) each layer adds to its factors, from the base rho.

``damping_mode``:
  "given"  rho_A = damping_a, rho_B = damping_b (each defaults to ``damping``), as given. This
           is how ``make_optimizer`` applies the muP table: it scales these per layer and
           width. (Earlier name: "fixed", still accepted with a FutureWarning; in
           ``make_optimizer`` "fixed" means something else: the same rho at every width.)
  "pi"     Martens & Grosse's factored Tikhonov: rho_A = sqrt(rho) pi, rho_B = sqrt(rho) / pi,
           pi^2 = (tr A / dim A) / (tr B / dim B). Right for hidden layers, mis-scaled for
           the input and output layers under muP (Ishikawa & Karakida 2024).
  "trace"  rho_A = rho max_t tr(A_t), rho_B = rho max_t tr(B_t), the largest trace seen so far:
           each damping follows its factor's own scale, which meets the muP table in every
           layer, so one rho transfers across widths. The running maximum keeps the damping
           from vanishing as the fit improves: tr(B) shrinks with the per-example gradients,
           and with rho tr(B_t) itself (digits, muP, rho 0.1, lr 0.1, 300 steps) the loss fell
           to 4e-4-8e-4 and then spiked to 0.95-26.5 in all 6 runs (widths 64 and 256, 3 seeds),
           ending at test accuracy 0.47-0.94; with the maximum none did, ending at loss
           0.012-0.024 and test accuracy 0.975-0.981 (``python scripts/findings.py trace``).
A group's ``damping_bias`` (set by ``make_optimizer`` under muP) replaces rho_A on the
homogeneous (bias) coordinate of A: (A + diag(rho_A, ..., rho_A, rho_bias))^-1 (see
``scaling.layer_scales`` for why biases need it to move at every width).
"""
from __future__ import annotations

import math

import torch

DAMPING_MODES = ("given", "pi", "trace")


def kfac_damping(mode: str, group: dict, st: dict, traces=None) -> tuple[float, float]:
    """(rho_A, rho_B) of one layer (``group``: its param group, ``st``: its state). ``traces`` =
    (tr A, dim A, tr B, dim B) when the factors are not stored (push-through path), else they
    are read from ``st["A"]`` and ``st["B"]``; "trace" keeps its running maxima in ``st``."""
    rho = group["damping"]
    if mode == "given":
        ra = rho if group["damping_a"] is None else group["damping_a"]
        rb = rho if group["damping_b"] is None else group["damping_b"]
        return float(ra), float(rb)
    if traces is None:   # one host sync each, only when the inverses are refreshed
        b = st.get("B")
        traces = (float(torch.trace(st["A"])), st["A"].shape[0],
                  float(torch.trace(b)) if b is not None else 0.0, b.shape[0] if b is not None else 1)
    tr_a, dim_a, tr_b, dim_b = traces
    if mode == "trace":   # rho times the largest trace seen so far
        st["trace_a"] = tr_a = max(tr_a, st.get("trace_a", 0.0))
        st["trace_b"] = tr_b = max(tr_b, st.get("trace_b", 0.0))
        return rho * tr_a, rho * tr_b
    if tr_a <= 0 or tr_b <= 0:  # pi undefined: split the damping evenly
        return math.sqrt(rho), math.sqrt(rho)
    pi = math.sqrt((tr_a / dim_a) / (tr_b / dim_b))
    return math.sqrt(rho) * pi, math.sqrt(rho) / pi


def bias_damping(rho_a: float, rho_bias: float | None, like: torch.Tensor):
    """rho_A as a number, or as a diagonal (rho_A, ..., rho_A, rho_bias) over A's coordinates
    when the layer's bias coordinate is damped on its own (``rho_bias``; ``like``: a tensor whose
    last dimension is A's size)."""
    if rho_bias is None or rho_bias == rho_a:
        return rho_a
    diag = torch.full((like.shape[-1],), rho_a, dtype=like.dtype, device=like.device)
    diag[-1] = rho_bias
    return diag
