"""Second-order optimizers (K-FAC, FOOF, Shampoo) and make_optimizer, which wires the scaling table into them."""
from .build import make_optimizer
from .kfac import KFAC
from .shampoo import Shampoo

__all__ = ["KFAC", "Shampoo", "make_optimizer"]
