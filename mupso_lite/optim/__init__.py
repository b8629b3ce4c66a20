"""Second-order optimizers (K-FAC, FOOF, Shampoo, SOAP), Muon, checkpoint-safe SGD and Adam, and make_optimizer, which wires the scaling table into them."""
from .build import make_optimizer
from .checkpoint import MuAdam, MuSGD
from .kfac import KFAC
from .muon import Muon
from .shampoo import Shampoo
from .soap import SOAP

__all__ = ["KFAC", "MuAdam", "MuSGD", "Muon", "SOAP", "Shampoo", "make_optimizer", "release_hooks"]


def release_hooks(optimizer) -> None:
    """Detach a K-FAC / FOOF / Shampoo optimizer's capture hooks from its model, so that both can
    be freed as soon as the caller drops them (no-op for any other optimizer)."""
    if hasattr(optimizer, "remove_hooks"):
        optimizer.remove_hooks()
