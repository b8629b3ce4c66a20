"""state_dict round trip: 5 steps, save, load into fresh objects, 5 more == 10 steps in one go."""
import pytest
import torch
import torch.nn.functional as F

import mupso_lite as ml

BATCHES = [(torch.randn(16, 12, generator=torch.Generator().manual_seed(i)),
            torch.randint(0, 3, (16,), generator=torch.Generator().manual_seed(100 + i))) for i in range(10)]
OPTIONS = {"sgd": dict(lr=0.1, momentum=0.9), "adam": dict(lr=1e-2),
           "kfac": dict(lr=0.1, inverse_interval=3, factor_interval=2, momentum=0.5),
           "foof": dict(lr=0.1, inverse_interval=4), "shampoo": dict(lr=0.05, update_interval=3, grafting="adam")}


def fresh(name):
    model = ml.MLP(12, 3, width=24, depth=3, base_width=8, bias=True, seed=0)
    return model, ml.make_optimizer(model, name, **OPTIONS[name])


def steps(model, opt, batches):
    for x, y in batches:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("name", list(OPTIONS))
def test_round_trip(name, tmp_path):
    model, opt = fresh(name)
    steps(model, opt, BATCHES)
    straight = [p.detach().clone() for p in model.parameters()]

    model, opt = fresh(name)
    steps(model, opt, BATCHES[:5])
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
    model, opt = fresh(name)
    ckpt = torch.load(tmp_path / "ckpt.pt")
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    steps(model, opt, BATCHES[5:])
    for a, b in zip(model.parameters(), straight):
        torch.testing.assert_close(a.detach(), b, rtol=1e-5, atol=1e-6)
