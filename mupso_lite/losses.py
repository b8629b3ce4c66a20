"""The two losses the library trains with, and sampling targets from the model (for the MC Fisher).

Both are means over the examples of a per-example loss, so the gradient of each example's
own loss w.r.t. the outputs is N times the gradient of the batch loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("cross_entropy", "mse")


def cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """mean_i -log softmax(f_i)[y_i]. Sequences (outputs (n, T, C), targets (n, T)): the mean over
    all n T positions, i.e. the mean over examples of each example's mean over its positions."""
    if outputs.dim() > 2:
        return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1))
    return F.cross_entropy(outputs, targets)


def half_mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """mean_i 1/2 |f_i - y_i|^2 (a Gaussian log-likelihood with unit variance)."""
    return 0.5 * (outputs - targets).pow(2).sum(dim=1).mean()


def loss_function(name: str):
    """The loss called ``name`` ("cross_entropy" or "mse")."""
    if name not in LOSSES:
        raise ValueError(f"loss: expected one of {LOSSES}, got {name!r}")
    return cross_entropy if name == "cross_entropy" else half_mse


@torch.no_grad()
def sample_targets(outputs: torch.Tensor, loss: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Targets drawn from the model's own predictive distribution: y ~ softmax(f) for
    cross-entropy (over the last dimension: one label per position of a sequence), y ~ N(f, I)
    for the squared loss."""
    if loss == "cross_entropy":
        probs = torch.softmax(outputs.detach().float(), dim=-1)
        flat = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator)
        return flat.reshape(probs.shape[:-1])
    noise = torch.randn(outputs.shape, generator=generator, dtype=outputs.dtype, device="cpu")
    return outputs.detach() + noise.to(outputs.device)
