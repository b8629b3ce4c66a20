"""Hostile input to the Python API: each case must fail with a clear error (the argument, what was
wanted, what was given) before any work or parameter update, or be recorded as diverged."""
import dataclasses
import math

import pytest
import torch
from torch import nn

import mupso_lite as ml
from mupso_lite.data import Dataset

DIGITS = ml.datasets.digits()


def weights(model):
    return [p.detach().clone() for p in model.parameters()]


def unchanged(model, before):
    return all(torch.equal(a, b) for a, b in zip(model.parameters(), before))


def dataset(x=None, y=None, task="classification", d_in=64, d_out=10, name="crafted"):
    x = DIGITS.x_train[:32] if x is None else x
    y = DIGITS.y_train[:32] if y is None else y
    return Dataset(name, x, y, x, y, task, d_in, d_out)


def model_and_opt(name="kfac", d_in=64, d_out=10, width=32, **kw):
    model = ml.MLP(d_in, d_out, width, base_width=16, seed=0, **kw)
    return model, ml.make_optimizer(model, name, lr=0.1)


# ---------------------------------------------------------------- ml.train: data that does not fit
nan_x = DIGITS.x_train[:32].clone()
nan_x[3, 5] = float("nan")
inf_x = DIGITS.x_train[:32].clone()
inf_x[0, 0] = float("inf")
BAD_DATA = {
    "nan inputs": (dataset(x=nan_x), ValueError, ["data.x_train", "NaN or Inf"]),
    "inf inputs": (dataset(x=inf_x), ValueError, ["data.x_train", "NaN or Inf"]),
    "empty inputs": (dataset(x=torch.zeros(0, 64), y=torch.zeros(0, dtype=torch.int64)), ValueError,
                     ["data.x_train", "non-empty", "(0, 64)"]),
    "more labels than inputs": (dataset(y=DIGITS.y_train[:40]), ValueError, ["data.y_train", "32 targets", "40"]),
    "fewer labels than inputs": (dataset(y=DIGITS.y_train[:5]), ValueError, ["data.y_train", "32 targets", "5"]),
    "float labels": (dataset(y=DIGITS.y_train[:32].float()), TypeError, ["data.y_train", "integer class labels",
                                                                        "torch.float32"]),
    "labels past d_out": (dataset(y=torch.full((32,), 10)), ValueError, ["data.y_train", "0..9", "10..10"]),
    "negative labels": (dataset(y=torch.full((32,), -1)), ValueError, ["data.y_train", "0..9", "-1"]),
    "2-d labels": (dataset(y=torch.zeros(32, 2, dtype=torch.int64)), TypeError, ["data.y_train", "shape (n,)"]),
    "integer inputs": (dataset(x=torch.ones(32, 64, dtype=torch.int64)), ValueError, ["data.x_train",
                                                                                     "floating-point"]),
    "d_in mismatch": (ml.datasets.teacher(n_train=64, n_test=8, d_in=16, d_out=10), ValueError,
                      ["data", "d_in=16", "input layer"]),
    "d_out mismatch": (ml.datasets.teacher(n_train=64, n_test=8, d_in=64, d_out=4), ValueError,
                       ["data", "4 outputs", "a model with 10"]),
    "nan regression targets": (dataset(y=torch.full((32, 10), float("nan")), task="regression"), ValueError,
                               ["data.y_train", "NaN or Inf"]),
    "integer regression targets": (dataset(y=torch.zeros(32, 10, dtype=torch.int64), task="regression"),
                                   ValueError, ["data.y_train", "float regression targets"]),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
@pytest.mark.parametrize("opt_name", ["sgd", "kfac"])
def test_train_refuses_data_that_does_not_fit(case, opt_name):
    data, exc, words = BAD_DATA[case]
    model, opt = model_and_opt(opt_name)
    before = weights(model)
    with pytest.raises(exc) as info:
        next(ml.train(model, opt, data, steps=3))
    for w in words:
        assert w in str(info.value), (w, str(info.value))
    assert unchanged(model, before) and not opt.state


@pytest.mark.parametrize("data, exc, word", [
    ({"x_train": 1}, TypeError, "data"),
    (42, TypeError, "data"),
    ("imagenet", ValueError, "name"),
])
def test_train_refuses_what_is_not_a_dataset(data, exc, word):
    model, opt = model_and_opt("sgd")
    with pytest.raises(exc, match=word):
        next(ml.train(model, opt, data, steps=2))


def test_train_refuses_an_optimizer_of_another_model():
    model, _ = model_and_opt("kfac")
    other, other_opt = model_and_opt("kfac")
    before = weights(model), weights(other)
    with pytest.raises(ValueError, match=r"optimizer: expected an optimizer over this model's parameters.*another"):
        next(ml.train(model, other_opt, DIGITS, steps=2))
    assert unchanged(model, before[0]) and unchanged(other, before[1])


@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(steps=0), ValueError, ["steps", "positive integer", "0"]),
    (dict(steps=2.5), TypeError, ["steps", "2.5"]),
    (dict(batch_size=-1), ValueError, ["batch_size", "-1"]),
    (dict(eval_every=0), ValueError, ["eval_every", "0"]),
    (dict(device="gpu"), ValueError, ["device", "'gpu'"]),
    (dict(divergence="strict"), TypeError, ["divergence", "DivergenceRule", "str"]),
])
def test_train_arguments(kwargs, exc, words):
    model, opt = model_and_opt("sgd")
    with pytest.raises(exc) as info:
        next(ml.train(model, opt, DIGITS, **{"steps": 2, **kwargs}))
    for w in words:
        assert w in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_is_a_clear_error():
    model, opt = model_and_opt("sgd")
    with pytest.raises(ValueError, match=r"device: got 'cuda', but no CUDA device is available"):
        next(ml.train(model, opt, DIGITS, steps=2, device="cuda"))


# ---------------------------------------------------------------- divergence is recorded, not raised
@pytest.mark.parametrize("name, lr, extra, hint", [
    ("sgd", 100.0, {}, "lower the learning rate"),
    ("adam", 30.0, {}, "lower the learning rate"),
    ("kfac", 50.0, {"damping": 1e-4}, "raise the damping or lower the learning rate"),
])
def test_blow_ups_are_reported_as_diverged(name, lr, extra, hint):
    model = ml.MLP(64, 10, 64, seed=0)
    recs = ml.run(model, ml.make_optimizer(model, name, lr=lr, **extra), DIGITS, steps=200)
    last = recs[-1]
    assert last["diverged"] and last["message"].startswith(f"diverged at step {last['step']}:")
    assert last["hint"] == hint and len(recs) < 200
    assert not any(r["diverged"] for r in recs[:-1])


# ---------------------------------------------------------------- make_optimizer against the model
def test_make_optimizer_refuses_a_param_the_model_was_not_built_with():
    model = ml.MLP(64, 10, 128, base_width=16, param="mup", seed=0)
    with pytest.raises(ValueError, match=r"param: the model was initialized with param='mup', got param='sp'"):
        ml.make_optimizer(model, "kfac", lr=0.1, param="sp")
    ml.make_optimizer(model, "kfac", lr=0.1, param="mup")  # agreeing is fine
    mixed = ml.make_optimizer(model, "kfac", lr=0.1, param="sp", allow_mixed=True)  # a deliberate mix
    assert [g["damping_a"] for g in mixed.param_groups] == [0.1, 0.1, 0.1]   # SP: damping not scaled


def test_make_optimizer_refuses_another_base_width():
    model = ml.MLP(64, 10, 128, base_width=16, seed=0)
    with pytest.raises(ValueError, match=r"base_width: the model was built with base_width=16, got base_width=64"):
        ml.make_optimizer(model, "sgd", lr=0.1, base_width=64)


@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(name="lbfgs"), ValueError, ["name", "'lbfgs'"]),
    (dict(lr=float("nan")), ValueError, ["lr", "nan"]),
    (dict(lr=float("inf")), ValueError, ["lr", "inf"]),
    (dict(damping=-1.0), ValueError, ["damping", "-1.0"]),
    (dict(damping_mode="huge"), ValueError, ["damping_mode", "'huge'"]),
    (dict(ema_decay=1.0), ValueError, ["ema_decay", "[0, 1)", "1.0"]),
    (dict(inverse_interval=0), ValueError, ["inverse_interval", "0"]),
    (dict(name="shampoo", graft_beta2=5.0, grafting="adam"), ValueError, ["graft_beta2", "[0, 1)", "5.0"]),
    (dict(name="shampoo", graft_beta2=float("nan"), grafting="adam"), ValueError, ["graft_beta2", "nan"]),
    (dict(name="shampoo", root=2.0), ValueError, ["root", "2.0"]),
    (dict(name="shampoo", beta=1.5), ValueError, ["beta", "1.5"]),
])
def test_optimizer_options(kwargs, exc, words):
    model = ml.MLP(64, 10, 32, base_width=16, seed=0)
    args = {"name": "kfac", "lr": 0.1, **kwargs}
    with pytest.raises(exc) as info:
        ml.make_optimizer(model, args.pop("name"), **args)
    for w in words:
        assert w in str(info.value)


# ---------------------------------------------------------------- models
@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(sigma=float("nan")), ValueError, ["sigma", "nan"]),
    (dict(sigma=-1.0), ValueError, ["sigma", "-1.0"]),
    (dict(sigma=0.0), ValueError, ["sigma", "0.0"]),
])
def test_model_sigma(kwargs, exc, words):
    for build in (lambda: ml.MLP(4, 2, 8, **kwargs), lambda: ml.CNN((1, 8, 8), 2, 8, **kwargs)):
        with pytest.raises(exc) as info:
            build()
        for w in words:
            assert w in str(info.value)


@pytest.mark.parametrize("shape", [(1, -8, 8), (1, 8, 0), (0, 8, 8), (1, 8), (1, 8.5, 8), "1x8x8", (1, True, 8)])
def test_cnn_image_shape(shape):
    with pytest.raises(ValueError, match=r"image_shape: expected \(channels, height, width\) as three positive"):
        ml.CNN(shape, 10, 8)


# ---------------------------------------------------------------- coordinate checks
def test_coord_check_refuses_repeated_widths():
    with pytest.raises(ValueError, match=r"widths: expected at least two distinct widths.*\[16, 16\]"):
        ml.coord_check(lambda w: ml.MLP(64, 10, w), "sgd", widths=(16, 16), data=DIGITS)


def test_coord_check_refuses_a_model_fn_that_ignores_width():
    built = []

    def model_fn(width):
        built.append(width)
        return ml.MLP(64, 10, 32, base_width=16)
    with pytest.raises(ValueError, match=r"model_fn: called with width 64, it returned a model of width 32"):
        ml.coord_check(model_fn, "sgd", "mup", widths=(32, 64), steps=1, seeds=(0,), data=DIGITS, device="cpu")
    assert built == [32, 64]  # refused while building, before any training


# ---------------------------------------------------------------- checkpoints into the wrong optimizer
def trained(name, width=32, steps=2):
    model = ml.MLP(64, 10, width, base_width=16, seed=0)
    opt = ml.make_optimizer(model, name, lr=0.05)
    ml.run(model, opt, DIGITS, steps=steps)
    return model, opt


@pytest.mark.parametrize("src, dst, words", [
    (("kfac", 32), ("kfac", 64), ["shapes", "another width"]),
    (("shampoo", 32), ("shampoo", 64), ["shapes", "another width"]),
    (("shampoo", 32), ("kfac", 32), ["saved by Shampoo", "into KFAC"]),
    (("kfac", 32), ("shampoo", 32), ["saved by KFAC", "into Shampoo"]),
    (("foof", 32), ("kfac", 64), ["shapes"]),
])
def test_load_state_dict_from_another_optimizer_or_width(src, dst, words):
    _, saved = trained(*src)
    model, opt = trained(*dst)
    before_groups = [dict((k, v) for k, v in g.items() if k != "params") for g in opt.param_groups]
    before_state = {id(p): dict(s) for p, s in opt.state.items()}
    with pytest.raises(ValueError) as info:
        opt.load_state_dict(saved.state_dict())
    assert str(info.value).startswith("state_dict: ")
    for w in words:
        assert w in str(info.value)
    # nothing was replaced: groups (lr, damping) and state are as before, and it still steps
    assert [dict((k, v) for k, v in g.items() if k != "params") for g in opt.param_groups] == before_groups
    assert {id(p): set(s) for p, s in opt.state.items()} == {k: set(v) for k, v in before_state.items()}
    assert not ml.run(model, opt, DIGITS, steps=2)[-1]["diverged"]


@pytest.mark.parametrize("bad", [None, {}, {"state": {}}, [1, 2], "checkpoint.pt"])
def test_load_state_dict_of_garbage(bad):
    _, opt = trained("kfac")
    with pytest.raises(TypeError, match=r"state_dict: expected a dict from KFAC.state_dict\(\)"):
        opt.load_state_dict(bad)


# ---------------------------------------------------------------- a layer used twice
class Twice(nn.Module):
    """Uses its hidden layer twice per forward: K-FAC/Shampoo factors would be silently wrong."""

    def __init__(self):
        super().__init__()
        self.inp, self.hid, self.out = nn.Linear(64, 16), nn.Linear(16, 16), nn.Linear(16, 10)
        ml.tag_roles(self, width=16)

    def forward(self, x):
        return self.out(torch.tanh(self.hid(torch.tanh(self.hid(torch.tanh(self.inp(x)))))))


@pytest.mark.parametrize("name", ["kfac", "shampoo", "foof"])
def test_a_layer_used_twice_is_refused_before_any_update(name):
    model = Twice()
    opt = ml.make_optimizer(model, name, lr=0.1)
    before = weights(model)
    x, y = DIGITS.x_train[:16], DIGITS.y_train[:16]
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    with pytest.raises(RuntimeError, match=r"layer 'hid' was called twice in one forward pass"):
        opt.step()
    assert unchanged(model, before)  # the input layer, stepped first, did not move either


def test_coord_check_reports_diverged_runs_with_the_hint():
    cc = ml.coord_check(lambda w: ml.MLP(64, 10, w, base_width=32, param="sp"), "sgd", "sp", widths=(32, 64),
                        steps=(1, 30), seeds=(0,), data=DIGITS, lr=100.0, device="cpu")
    assert [d["width"] for d in cc.diverged] == [32, 64]
    assert all(d["message"].startswith("diverged at step") for d in cc.diverged)
    assert cc.verdict().startswith("diverged at width 32 (seed 0, step ")
    assert "lower the learning rate" in cc.verdict()


def test_models_optimizer_argument_is_deprecated_and_changes_nothing():
    with pytest.warns(FutureWarning, match=r"optimizer= changes nothing .* drop the argument"):
        old = ml.MLP(4, 2, 16, base_width=8, optimizer="kfac", seed=0)
    new = ml.MLP(4, 2, 16, base_width=8, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(old.parameters(), new.parameters()))
    with pytest.warns(FutureWarning):
        ml.CNN((1, 8, 8), 2, 8, optimizer="shampoo")
    with pytest.raises(ValueError, match=r"optimizer: expected one of .*'lbfgs'"):
        ml.MLP(4, 2, 16, optimizer="lbfgs")


def _split_cases():
    digits = ml.datasets.digits()
    reg = ml.datasets.teacher(task="regression", n_train=64, n_test=16)
    r = dataclasses.replace
    return [
        (r(digits, y_test=digits.y_test.clone().fill_(10)), ValueError, "data.y_test: expected labels in 0..9"),
        (r(digits, x_test=digits.x_test[:, :32]), ValueError, "data.x_test: expected inputs shaped"),
        (r(digits, x_test=torch.full_like(digits.x_test, float("nan"))), ValueError, "data.x_test: expected finite"),
        (r(digits, y_test=digits.y_test.float()), TypeError, "data.y_test: expected integer class labels"),
        (r(digits, y_test=digits.y_test[:5]), ValueError, "data.y_test: expected 360 targets"),
        (r(reg, y_test=reg.y_test[:, :1]), ValueError, "data.y_test: expected finite float regression targets"),
        (r(reg, y_test=reg.y_test * float("inf")), ValueError, "data.y_test: .*NaN or Inf"),
    ]


@pytest.mark.parametrize("case", range(7))
def test_a_bad_test_split_is_refused_before_the_first_step(case):
    """Before, these failed with torch's IndexError or gave an inf/NaN test loss after all the
    training was done; now they fail first, naming the test split, and no parameter moves."""
    data, exc, words = _split_cases()[case]
    model = ml.MLP(data.d_in, data.d_out, 32, base_width=32, seed=0)
    opt = ml.make_optimizer(model, "kfac", lr=0.1)
    before = weights(model)
    with pytest.raises(exc, match=words):
        ml.run(model, opt, data, steps=5)
    assert unchanged(model, before)


def test_an_empty_test_split_is_allowed():
    digits = ml.datasets.digits()
    data = dataclasses.replace(digits, x_test=digits.x_test[:0], y_test=digits.y_test[:0])
    model = ml.MLP(64, 10, 32, base_width=32, seed=0)
    recs = ml.run(model, ml.make_optimizer(model, "sgd", lr=0.1), data, steps=3)
    assert len(recs) == 3 and not recs[-1]["diverged"]
