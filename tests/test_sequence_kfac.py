"""K-FAC on the layers of sequence models, against dense float64 math.

A Linear on N x T x d inputs: A averages x x^T over examples and positions, B averages
delta delta^T over examples and sums it over positions (delta = d(example's loss)/d(output at
that position)). An Embedding is a Linear on one-hot tokens, with a diagonal A.
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mupso_lite as ml

N, T, VOCAB, D = 4, 3, 7, 5


class SeqModel(nn.Module):
    def __init__(self, one_hot=False, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Linear(VOCAB, D, bias=False) if one_hot else nn.Embedding(VOCAB, D)
        self.mid = nn.Linear(D, D)
        self.head = nn.Linear(D, 3)
        self.one_hot = one_hot

    def forward(self, idx):
        h = self.emb(F.one_hot(idx, VOCAB).double()) if self.one_hot else self.emb(idx)
        return self.head(torch.tanh(self.mid(torch.tanh(h))))


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (N, T), generator=g), torch.randint(0, 3, (N, T), generator=g)


def loss_of(model, idx, y):
    return F.cross_entropy(model(idx).reshape(-1, 3), y.reshape(-1))


def groups(model):
    return [{"params": [p for p in (m.weight, getattr(m, "bias", None)) if p is not None], "layer": name,
             "damping_a": 0.3, "damping_b": 0.2} for name, m in (("emb", model.emb), ("mid", model.mid),
                                                                 ("head", model.head))]


def tag(model):
    for name, role in (("emb", "input"), ("mid", "hidden"), ("head", "output")):
        getattr(model, name).mup_role = role
    return model


def test_sequence_linear_step_equals_the_dense_formula():
    model = tag(SeqModel(one_hot=True).double())
    opt = ml.KFAC(model, lr=1.0, params=groups(model), fast=False)
    idx, y = batch()
    x = torch.tanh(model.emb(F.one_hot(idx, VOCAB).double())).detach()       # mid's input, N x T x D
    out = model.mid(x).detach().requires_grad_(True)                          # mid's output
    per_example = F.cross_entropy(model.head(torch.tanh(out)).reshape(-1, 3), y.reshape(-1),
                                  reduction="none").reshape(N, T).sum(1) / T   # each example's own loss
    delta = torch.stack([torch.autograd.grad(per_example[n], out, retain_graph=True)[0][n] for n in range(N)])
    xh = torch.cat([x, torch.ones(N, T, 1, dtype=x.dtype)], -1).reshape(N * T, -1)
    A = xh.T @ xh / (N * T)                                                  # mean over examples and positions
    B = torch.einsum("ntd,nte->de", delta, delta) / N                         # mean over examples, sum over positions
    G = torch.einsum("ntd,nte->de", delta, xh.reshape(N, T, -1)) / N
    w0 = torch.cat([model.mid.weight, model.mid.bias[:, None]], 1).detach().clone()
    opt.zero_grad()
    loss_of(model, idx, y).backward()
    torch.testing.assert_close(torch.cat([model.mid.weight.grad, model.mid.bias.grad[:, None]], 1), G)
    opt.step()
    torch.testing.assert_close(opt.state[model.mid.weight]["A"], A)
    torch.testing.assert_close(opt.state[model.mid.weight]["B"], B)
    want = torch.linalg.solve(B + 0.2 * torch.eye(D, dtype=A.dtype), G) @ torch.linalg.inv(A + 0.3 * torch.eye(D + 1, dtype=A.dtype))
    torch.testing.assert_close(w0 - torch.cat([model.mid.weight, model.mid.bias[:, None]], 1).detach(), want)


@pytest.mark.parametrize("foof", [False, True])
@pytest.mark.parametrize("mode", ["given", "trace"])
@pytest.mark.parametrize("ema", [0.95, 0.0])   # averaged factors; this batch's (the default, push-through)
def test_embedding_equals_a_linear_on_one_hot_tokens(foof, mode, ema):
    """Three steps of K-FAC (inverses every step): nn.Embedding == nn.Linear(one-hot)."""
    emb, lin = tag(SeqModel().double()), tag(SeqModel(one_hot=True).double())
    with torch.no_grad():
        lin.emb.weight.copy_(emb.emb.weight.T)
        for a, b in ((lin.mid, emb.mid), (lin.head, emb.head)):
            a.weight.copy_(b.weight), a.bias.copy_(b.bias)
    opts = [ml.KFAC(m, lr=0.5, params=groups(m), foof=foof, damping=0.1, damping_mode=mode, ema_decay=ema)
            for m in (emb, lin)]
    for seed in range(3):
        idx, y = batch(seed)
        for m, opt in zip((emb, lin), opts):
            opt.zero_grad()
            loss_of(m, idx, y).backward()
            opt.step()
    torch.testing.assert_close(emb.emb.weight, lin.emb.weight.T)
    torch.testing.assert_close(emb.head.weight, lin.head.weight)
    a_diag = opts[0].state[emb.emb.weight]["A"]   # the embedding always keeps its diagonal A
    if ema:
        torch.testing.assert_close(torch.diag(a_diag), opts[1].state[lin.emb.weight]["A"])


def test_shampoo_with_an_embedding_and_sequence_linears_equals_its_dense_path():
    outs = []
    for with_model in (True, False):
        model = tag(SeqModel().double())
        opt = ml.Shampoo(model.parameters(), lr=0.1, model=model if with_model else None)
        for seed in range(3):
            idx, y = batch(seed)
            opt.zero_grad()
            loss_of(model, idx, y).backward()
            opt.step()
        outs.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b)


def test_kfac_state_dict_round_trip_with_an_embedding():
    model = tag(SeqModel().double())
    opt = ml.KFAC(model, lr=0.5, params=groups(model))
    idx, y = batch()
    opt.zero_grad()
    loss_of(model, idx, y).backward()
    opt.step()
    twin = tag(SeqModel().double())
    twin.load_state_dict(model.state_dict())
    opt2 = ml.KFAC(twin, lr=0.5, params=groups(twin))
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))   # as from a file: no shared buffers
    for m, o in ((model, opt), (twin, opt2)):
        idx, y = batch(1)
        o.zero_grad()
        loss_of(m, idx, y).backward()
        o.step()
    torch.testing.assert_close(model.emb.weight, twin.emb.weight)
