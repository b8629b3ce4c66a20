"""mupso_lite.zoo: plain torch models that ml.parametrize turns into muP models, and the text data.

Each model is built by width with no muP code; the roles come from shapes against a base copy.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import mupso_lite as ml
from mupso_lite import zoo
from mupso_lite.losses import sample_targets

TEXT = ml.datasets.text(block=16)
DIGITS = ml.datasets.digits()


def gpt(width, **kw):
    return zoo.TinyGPT(96, width, n_layer=1, block=16, **kw)


MAKERS = {   # name: (make(width), data, base width)
    "ResidualMLP": (lambda w: zoo.ResidualMLP(64, 10, w, depth=2), DIGITS, 32),
    "ResNetCNN": (lambda w: zoo.ResNetCNN((1, 8, 8), 10, w), DIGITS, 8),
    "TinyGPT": (gpt, TEXT, 32),
}
ROLES = {
    "ResidualMLP": {"embed": "input", "blocks.0.fc1": "hidden", "blocks.1.fc2": "hidden", "readout": "output"},
    "ResNetCNN": {"stem": "input", "blocks.0.conv1": "hidden", "blocks.1.conv2": "hidden", "readout": "output"},
    "TinyGPT": {"tok": "input", "pos": "input", "blocks.0.attn.q": "hidden", "blocks.0.attn.o": "hidden",
                "blocks.0.fc": "hidden", "blocks.0.proj": "hidden", "readout": "output"},
}


@pytest.mark.parametrize("name", list(MAKERS))
def test_roles_come_from_shapes(name):
    make, _, base = MAKERS[name]
    model = zoo.build(make, 4 * base, base)
    roles = {n: r for n, _, r in ml.layer_roles(model)}
    assert {n: roles[n] for n in ROLES[name]} == ROLES[name]
    assert set(roles.values()) == {"input", "hidden", "output"}
    assert (model.mup_width, model.mup_base_width, model.param) == (4 * base, base, "mup")
    norms = [p for n, p in model.named_parameters() if "norm" in n or ".bn" in n or ".ln" in n]
    assert norms and all(p.mup_role == "vector" and p.mup_ratio == 4.0 for p in norms)
    # muP init: the readout's std is the base model's times M0/M (1/fan_in * M0/M in variance)
    assert model.readout.weight.std().item() == pytest.approx(1 / math.sqrt(4 * base) / 2, rel=0.15)


def test_build_at_the_base_width_is_sp_and_mup_alike():
    make, _, base = MAKERS["TinyGPT"]
    mup, sp = zoo.build(make, base, base, "mup"), zoo.build(make, base, base, "sp")
    assert mup.mup_width == base and all(m.mup_ratio == 1.0 for _, m, _ in ml.layer_roles(mup))
    for a, b in zip(mup.parameters(), sp.parameters()):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", list(MAKERS))
@pytest.mark.parametrize("opt", ["kfac", "shampoo"])
def test_trains_with_kfac_and_shampoo(name, opt):
    make, data, base = MAKERS[name]
    model = zoo.build(make, 2 * base, base)
    recs = ml.run(model, ml.make_optimizer(model, opt, lr=0.1), data, steps=8, batch_size=32, device="cpu")
    losses = [r["loss"] for r in recs]
    assert len(recs) == 8 and not recs[-1]["diverged"]
    assert min(losses[-3:]) < losses[0] - 0.2, losses
    assert 0 <= recs[-1]["test_accuracy"] <= 1


def test_attention_logit_scale():
    """muP: q.k * attn_mult / d; SP: q.k / sqrt(d). Equal where attn_mult = sqrt(d) (d = 16 here)."""
    torch.manual_seed(0)
    idx = torch.randint(0, 96, (2, 16))
    a, b = gpt(64, attention="mup", attn_mult=4.0), gpt(64, attention="sp")
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a(idx), b(idx))
    wide_mup, wide_sp = gpt(256, attention="mup", attn_mult=4.0), gpt(256, attention="sp")
    wide_sp.load_state_dict(wide_mup.state_dict())
    assert (wide_mup(idx) - wide_sp(idx)).abs().max() > 1e-3
    # causal: a position's logits do not depend on later tokens
    later = idx.clone()
    later[:, 10:] = (later[:, 10:] + 1) % 96
    torch.testing.assert_close(a(idx)[:, :10], a(later)[:, :10])


def test_text_dataset():
    ds = ml.datasets.text(block=16, stride=4)
    assert (ds.task, ds.d_in, ds.d_out, ds.name) == ("classification", 16, 96, "text")
    assert ds.x_train.dtype == ds.y_train.dtype == torch.int64 and ds.x_train.shape[1] == 16
    torch.testing.assert_close(ds.x_train[:, 1:], ds.y_train[:, :-1])      # y is x shifted by one
    torch.testing.assert_close(ds.x_train[1, :12], ds.x_train[0, 4:])      # windows every 4 characters
    text = "".join(ml.datasets.VOCAB[i] for i in ds.x_train[0])
    assert text == ml.datasets.corpus()[:16] and text.startswith("The Zen of Pytho")
    assert torch.equal(ml.datasets.text(block=16, stride=4).x_test, ds.x_test)   # deterministic
    with pytest.raises(ValueError, match="block"):
        ml.datasets.text(block=10 ** 7)


def test_sequence_loss_and_sampled_targets():
    g = torch.Generator().manual_seed(0)
    out, y = torch.randn(3, 5, 7, generator=g), torch.randint(0, 7, (3, 5), generator=g)
    per_example = torch.stack([F.cross_entropy(out[i], y[i]) for i in range(3)])   # mean over positions
    torch.testing.assert_close(ml.cross_entropy(out, y), per_example.mean())
    sampled = sample_targets(out * 20, "cross_entropy", torch.Generator().manual_seed(1))
    assert sampled.shape == (3, 5)
    assert (sampled == out.argmax(-1)).float().mean() > 0.9   # sharp softmax: mostly the argmax


def test_coord_check_of_the_transformer_at_step_one():
    """K-FAC, one step, widths 32..256: under muP the embeddings and hidden layers change by the same
    amount at every width (measured slopes -0.07 and -0.12, seeds 0 and 1); under SP they lose
    about M^-1/2 (one-step theory for SP K-FAC: -1/2, -1/2, 0; measured -0.54, -0.46). The readout
    has a finite-width transient under muP (measured -0.23; see docs/results/your_model_coord.md)."""
    def model_fn(param):
        return lambda w, seed=0: zoo.build(lambda v: gpt(v, attention=param), w, 32, param, seed)
    kw = dict(widths=[32, 64, 128, 256], steps=1, seeds=(0, 1), data=TEXT, lr=0.1, damping=0.1, batch_size=16,
              device="cpu", inverse_interval=1)
    mup = ml.coord_check(model_fn("mup"), "kfac", "mup", **kw).slopes_by_role(1)
    sp = ml.coord_check(model_fn("sp"), "kfac", "sp", **kw).slopes_by_role(1)
    assert abs(mup["input"]) < 0.2 and abs(mup["hidden"]) < 0.2 and mup["output"] > -0.4, mup
    assert sp["input"] < -0.3 and sp["hidden"] < -0.25, sp
    assert mup["input"] - sp["input"] > 0.3 and mup["hidden"] - sp["hidden"] > 0.2, (mup, sp)


def test_hostile_token_data_fails_before_training():
    """Token ids past the embedding (in any window, not just the first) or below zero, and labels past
    the vocabulary, are refused before the first step, naming the argument."""
    model = zoo.build(gpt, 64, 32)
    before = [p.detach().clone() for p in model.parameters()]
    opt = ml.make_optimizer(model, "kfac", lr=0.1)
    x, y = TEXT.x_train.clone(), TEXT.y_train.clone()
    x[-1, 3] = 96   # one id past the vocabulary, in the last window
    bad = ml.datasets.Dataset("text", x, y, TEXT.x_test, TEXT.y_test, "classification", 16, 96)
    with pytest.raises(ValueError, match="data: its inputs"):
        ml.run(model, opt, bad, steps=2, device="cpu")
    x[-1, 3] = -1
    with pytest.raises(ValueError, match="token ids >= 0"):
        ml.run(model, opt, ml.datasets.Dataset("text", x, y, TEXT.x_test, TEXT.y_test, "classification", 16, 96),
               steps=2, device="cpu")
    y2 = TEXT.y_train.clone()
    y2[5, 0] = 200
    with pytest.raises(ValueError, match="data.y_train: expected labels in 0..95"):
        ml.run(model, opt, ml.datasets.Dataset("text", TEXT.x_train, y2, TEXT.x_test, TEXT.y_test,
                                               "classification", 16, 96), steps=2, device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))   # no update happened
