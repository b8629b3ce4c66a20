"""Small fixtures shared by the optimizer tests (tests/test_muon.py, tests/test_soap.py)."""
import torch
import torch.nn.functional as F

import mupso_lite as ml


def small_mlp(width: int) -> torch.nn.Module:
    """A depth-3 MLP, 12 inputs, 3 classes, base width 8, biases, seed 0."""
    return ml.MLP(12, 3, width=width, depth=3, base_width=8, bias=True, seed=0)


def seeded_steps(model, opt, seeds) -> None:
    """One optimizer step per seed on a random batch of 16 drawn from that seed (cross-entropy)."""
    for s in seeds:
        g = torch.Generator().manual_seed(s)
        opt.zero_grad()
        F.cross_entropy(model(torch.randn(16, 12, generator=g)), torch.randint(0, 3, (16,), generator=g)).backward()
        opt.step()
