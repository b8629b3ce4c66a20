"""ml.parametrize: roles and width ratios read from shapes against a base model, as mup does."""
import pytest
import torch
from torch import nn

import mupso_lite as ml


def plain_mlp(width, d_in=16, d_out=4, bias=True, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, width, bias=bias), nn.Tanh(), nn.Linear(width, width, bias=bias),
                         nn.Tanh(), nn.Linear(width, d_out, bias=bias))


class Block(nn.Module):
    """Embedding, a LayerNorm'd residual MLP block on a sequence, a readout."""

    def __init__(self, width, vocab=11):
        super().__init__()
        self.emb = nn.Embedding(vocab, width)
        self.norm = nn.LayerNorm(width)
        self.up, self.down = nn.Linear(width, 2 * width), nn.Linear(2 * width, width)
        self.head = nn.Linear(width, vocab)

    def forward(self, idx):
        h = self.emb(idx)
        h = h + self.down(torch.tanh(self.up(self.norm(h))))
        return self.head(h)


class TiedBlock(Block):
    """Block with the readout tied to the embedding (one tensor, two roles)."""

    def __init__(self, width, vocab=11):
        super().__init__(width, vocab)
        self.head.weight = self.emb.weight


def test_roles_and_ratios_come_from_shapes():
    model = ml.parametrize(plain_mlp(256), plain_mlp(64))
    roles = [(m.mup_role, m.mup_ratio) for m in model if isinstance(m, nn.Linear)]
    assert roles == [("input", 4.0), ("hidden", 4.0), ("output", 4.0)]
    assert model[0].bias.mup_role == "input bias" and model[2].weight.mup_role == "hidden"
    assert (model.mup_width, model.mup_base_width, model.param) == (256, 64, "mup")


def test_same_optimizer_groups_as_the_built_in_mlp():
    """A plain nn.Sequential parametrized from its base gets ml.MLP's init and per-layer lr/damping."""
    mine = ml.parametrize(plain_mlp(256), plain_mlp(64))
    ref = ml.MLP(16, 4, 256, depth=3, base_width=64, bias=True)
    for name in ("sgd", "adam", "kfac", "foof", "shampoo"):
        keys = ("lr", "damping_a", "damping_b", "damping_bias", "eps")
        got = [[g.get(k) or 0.0 for k in keys] for g in ml.make_optimizer(mine, name, lr=0.1).param_groups]
        want = [[g.get(k) or 0.0 for k in keys] for g in ml.make_optimizer(ref, name, lr=0.1).param_groups]
        assert len(got) == len(want) and all(a == pytest.approx(b) for a, b in zip(got, want)), name
    for m, r in zip([m for m in mine if isinstance(m, nn.Linear)], ref.layers):
        assert m.weight.std().item() == pytest.approx(r.weight.std().item(), rel=0.1)


def test_embedding_layernorm_and_per_layer_ratios():
    model = ml.parametrize(Block(128), Block(32))
    assert model.emb.mup_role == "input" and model.up.mup_role == "hidden" and model.head.mup_role == "output"
    assert model.emb.weight.std().item() == pytest.approx(1.0, rel=0.1)   # one-hot input: fan_in 1
    assert model.norm.weight.mup_role == "vector" and model.norm.weight.mup_ratio == 4.0
    opt = ml.make_optimizer(model, "sgd", lr=0.1)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lr_of[id(model.norm.weight)] == pytest.approx(0.4)       # vector-like: lr M/M0
    assert lr_of[id(model.head.weight)] == pytest.approx(0.1 / 4)    # muP-SGD output: lr M0/M
    sp = ml.make_optimizer(ml.parametrize(Block(128), Block(32), param="sp"), "sgd", lr=0.1)
    assert {g["lr"] for g in sp.param_groups} == {0.1}


def test_delta_model_when_the_model_is_at_the_base_width():
    model = ml.parametrize(plain_mlp(64), plain_mlp(64), delta_model=plain_mlp(128))
    assert [m.mup_ratio for m in model if isinstance(m, nn.Linear)] == [1.0, 1.0, 1.0]
    assert [m.mup_role for m in model if isinstance(m, nn.Linear)] == ["input", "hidden", "output"]
    with pytest.raises(ValueError, match="pass delta_model"):
        ml.parametrize(plain_mlp(64), plain_mlp(64))
    with pytest.raises(ValueError, match="build delta_model at another width"):
        ml.parametrize(plain_mlp(64), plain_mlp(64), delta_model=plain_mlp(64))


@pytest.mark.parametrize("make, match", [
    (lambda: (nn.Sequential(nn.Linear(4, 64), nn.Linear(64, 128)), nn.Sequential(nn.Linear(4, 16), nn.Linear(16, 64))),
     "different factors"),
    (lambda: (nn.Sequential(nn.Linear(4, 64), nn.MultiheadAttention(64, 4)),
              nn.Sequential(nn.Linear(4, 16), nn.MultiheadAttention(16, 4))), "nn.MultiheadAttention"),
    (lambda: (plain_mlp(64), nn.Sequential(nn.Linear(16, 64))), "same parameters"),
    (lambda: (plain_mlp(64),) * 2, "separate instance"),
    (lambda: (TiedBlock(64), TiedBlock(16)), "'emb.weight' and 'head.weight' are one tensor"),
])
def test_refusals_say_the_fix(make, match):
    model, base = make()
    with pytest.raises(ValueError, match=match):
        ml.parametrize(model, base)


def test_never_parametrized_twice():
    model = ml.parametrize(plain_mlp(128), plain_mlp(64))
    with pytest.raises(ValueError, match="already parametrized"):
        ml.parametrize(model, plain_mlp(64))


@pytest.mark.parametrize("name", ["sgd", "adam", "kfac", "foof", "shampoo"])
def test_every_optimizer_trains_a_parametrized_sequence_model(name):
    model = ml.parametrize(Block(64), Block(16))
    opt = ml.make_optimizer(model, name, lr=0.05)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 11, (8, 6), generator=g)
    norm0 = model.norm.weight.detach().clone()
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(idx[:, :-1]).reshape(-1, 11), idx[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0], losses
    assert not torch.equal(model.norm.weight, norm0)   # the LayerNorm gain is updated too
