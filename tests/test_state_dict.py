"""state_dict round trip: 5 steps, save, load into fresh objects, 5 more == 10 steps in one go."""
import copy

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


def _trained(name, **opts):
    model = ml.MLP(64, 10, 32, base_width=16, seed=0)
    opt = ml.make_optimizer(model, name, lr=0.05, **opts)
    ml.run(model, opt, "digits", steps=2)
    return model, opt


@pytest.mark.parametrize("src, dst, words", [
    (("kfac", {}), ("foof", {}), "'foof': False"),                                  # K-FAC's lrs into FOOF
    (("foof", {}), ("kfac", {}), "'foof': True"),
    (("kfac", {"damping_mode": "trace"}), ("kfac", {}), "'damping_mode': 'trace'"),   # would drop the table's rho_A, rho_B
    (("shampoo", {"root": 0.5}), ("shampoo", {}), "'root': 0.5"),
])
def test_a_state_of_another_variant_is_refused_and_nothing_changes(src, dst, words):
    _, saved = _trained(src[0], **src[1])
    _, opt = _trained(dst[0], **dst[1])
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match=words):
        opt.load_state_dict(saved.state_dict())
    assert repr(opt.state_dict()) == repr(before)


def test_a_state_with_nan_is_refused_before_it_poisons_the_parameters():
    _, opt = _trained("kfac", ema_decay=0.95, inverse_interval=10)   # averaged: factors are saved
    sd = opt.state_dict()
    key = next(k for k, st in sd["state"].items() if "A" in st)
    sd["state"][key]["A"] = sd["state"][key]["A"].clone().fill_(float("nan"))
    with pytest.raises(ValueError, match="NaN or Inf .*'A'"):
        opt.load_state_dict(sd)
