"""Hostile models for ml.parametrize, the models' constructors and ml.train's shape checks: each
case must fail with a clear error (the argument, what was wanted, what was given) before any
work or parameter change, warn naming the layers, or give a correct result."""
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import mupso_lite as ml
from mupso_lite import models, zoo
from mupso_lite.data import Dataset

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ml.datasets.digits()
OPTIMIZERS = ["sgd", "adam", "kfac", "foof", "shampoo", "muon", "soap"]


def weights(model):
    return [p.detach().clone() for p in model.parameters()]


def unchanged(model, before):
    return all(torch.equal(a, b) for a, b in zip(model.parameters(), before))


def words_in(info, words):
    for w in words:
        assert w in str(info.value), (w, str(info.value))


class Seq(nn.Module):
    """Embedding -> hidden Linear -> readout; ``tie`` shares the embedding with the readout."""

    def __init__(self, width, vocab=11, tie=False, padding_idx=None):
        super().__init__()
        self.emb = nn.Embedding(vocab, width, padding_idx=padding_idx)
        self.mid = nn.Linear(width, width)
        self.head = nn.Linear(width, vocab, bias=False)
        if tie:
            self.head.weight = self.emb.weight

    def forward(self, idx):
        return self.head(torch.tanh(self.mid(self.emb(idx))))


def mlp(width, d_in=16, d_out=4):
    return nn.Sequential(nn.Linear(d_in, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(),
                         nn.Linear(width, d_out))


def steps(model, opt, n=3, vocab=11):
    idx = torch.randint(0, vocab, (8, 6), generator=torch.Generator().manual_seed(0))
    for _ in range(n):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(idx[:, :-1]).reshape(-1, vocab), idx[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
    return loss.item()


# ---------------------------------------------------------------- tied weights
@pytest.mark.parametrize("tied", ["model", "base_model", "both"])
def test_tied_weights_are_refused_before_any_change(tied):
    model, base = Seq(64, tie=tied in ("model", "both")), Seq(16, tie=tied in ("base_model", "both"))
    before = weights(model)
    with pytest.raises(ValueError) as info:
        ml.parametrize(model, base)
    words_in(info, [f"{'model' if tied == 'both' else tied}: 'emb.weight' and 'head.weight' are one tensor",
                    "tied weights", "Untie them", "'head'"])
    assert unchanged(model, before) and not hasattr(model.emb, "mup_role")
    assert not getattr(model, "mup_parametrized", False)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_a_refused_tied_model_never_reaches_torch_in_make_optimizer(name):
    model = Seq(64, tie=True)
    with pytest.raises(ValueError, match="tied weights"):
        ml.parametrize(model, Seq(16, tie=True))
    with pytest.raises(ValueError) as info:   # no roles: make_optimizer's own error, not torch's
        ml.make_optimizer(model, name, lr=0.1)
    assert "roles" in str(info.value) and "more than one parameter group" not in str(info.value)


class SharedModule(nn.Module):
    """One hidden module registered under two names: one layer, one role, no tie to refuse."""

    def __init__(self, width):
        super().__init__()
        self.inp, self.hid, self.out = nn.Linear(16, width), nn.Linear(width, width), nn.Linear(width, 4)
        self.alias = self.hid

    def forward(self, x):
        return self.out(torch.tanh(self.hid(torch.tanh(self.inp(x)))))


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_a_module_registered_twice_is_one_layer(name):
    model = ml.parametrize(SharedModule(64), SharedModule(16))
    assert [r for _, _, r in ml.layer_roles(model)] == ["input", "hidden", "output"]
    opt = ml.make_optimizer(model, name, lr=0.05)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters())) == 6
    x, y = DIGITS.x_train[:32, :16], DIGITS.y_train[:32] % 4
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


# ---------------------------------------------------------------- weights that are not plain parameters
def normed(width, how):
    m = mlp(width)
    if how == "weight_norm":
        nn.utils.parametrizations.weight_norm(m[2])
    elif how == "spectral_norm":
        nn.utils.parametrizations.spectral_norm(m[2])
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            nn.utils.weight_norm(m[2])     # the old hook-based form: weight is recomputed every forward
    return m


@pytest.mark.parametrize("how", ["weight_norm", "spectral_norm", "old weight_norm"])
def test_reparametrized_weights_are_refused(how):
    model = normed(64, how)
    before = weights(model)
    with pytest.raises(ValueError) as info:
        ml.parametrize(model, normed(16, how))
    words_in(info, ["model: layer '2' computes its weight from other parameters", "without that"])
    assert unchanged(model, before)


def test_lazy_modules_are_refused_until_run():
    def lazy(width):
        return nn.Sequential(nn.LazyLinear(width), nn.Tanh(), nn.Linear(width, 4))
    with pytest.raises(ValueError) as info:
        ml.parametrize(lazy(64), lazy(16))
    words_in(info, ["model: parameter '0.weight' is not initialized yet", "forward pass"])


# ---------------------------------------------------------------- Embedding(padding_idx)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_the_padding_row_stays_zero(name):
    model = ml.parametrize(Seq(64, padding_idx=0), Seq(16, padding_idx=0))
    assert torch.count_nonzero(model.emb.weight[0]) == 0
    assert model.emb.weight[1:].std().item() == pytest.approx(1.0, rel=0.1)   # the others: N(0, 1)
    steps(model, ml.make_optimizer(model, name, lr=0.05))
    assert torch.count_nonzero(model.emb.weight[0]) == 0 and torch.count_nonzero(model.emb.weight[1]) == 64


def test_a_negative_padding_idx_is_the_last_row():
    model = ml.parametrize(Seq(64, padding_idx=-1), Seq(16, padding_idx=-1))
    assert torch.count_nonzero(model.emb.weight[10]) == 0 and torch.count_nonzero(model.emb.weight[0]) == 64


# ---------------------------------------------------------------- no input-like / output-like layer
@pytest.mark.parametrize("model, base, missing, words", [
    (mlp(256, d_in=64), mlp(64, d_in=16), ["input"], ["'0' hidden: (256, 64) here, (64, 16) in base_model",
                                                       "another d_in"]),
    (mlp(256, d_out=40), mlp(64, d_out=10), ["output"], ["'4' hidden: (40, 256) here, (10, 64) in base_model",
                                                          "another d_out"]),
    (Seq(128, vocab=44), Seq(32, vocab=11), ["input", "output"], ["'emb' hidden: (128, 44) here, (32, 11)",
                                                                  "'head' hidden: (44, 128) here, (11, 32)"]),
])
def test_no_input_or_output_layer_warns_naming_the_layers(model, base, missing, words):
    with pytest.warns(UserWarning) as record:
        ml.parametrize(model, base)
    msgs = [str(w.message) for w in record if "-like layer" in str(w.message)]
    assert [m.split("no ")[1].split("-like")[0] for m in msgs] == missing
    for w in words:
        assert any(w in m for m in msgs), (w, msgs)
    assert all("changing only the width" in m for m in msgs)


def test_the_warning_shows_the_delta_model_too():
    with pytest.warns(UserWarning, match=r"'0' hidden: \(64, 16\) here, \(64, 16\) in base_model, \(128, 32\) in "
                                         r"delta_model"):
        ml.parametrize(mlp(64), mlp(64), delta_model=mlp(128, d_in=32))


@pytest.mark.parametrize("make", [lambda w: mlp(w), lambda w: Seq(w), lambda w: zoo.TinyGPT(96, w, n_layer=1)])
def test_well_built_models_do_not_warn(make):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ml.parametrize(make(64), make(32))


# ---------------------------------------------------------------- image shapes in the constructors
BAD_SHAPES = [(1, 8.7, 8), (1, -8, 8), (0, 8, 8), (1, 8), (1, 8, 8, 1), "1x8x8", (1, True, 8), None]


@pytest.mark.parametrize("shape", BAD_SHAPES)
@pytest.mark.parametrize("build", [lambda s: zoo.ResNetCNN(s, 10, 8), lambda s: ml.CNN(s, 10, 8)])
def test_bad_image_shapes_are_refused_not_truncated(shape, build):
    with pytest.raises(ValueError) as info:
        build(shape)
    words_in(info, ["image_shape: expected (channels, height, width) as three positive integers", repr(shape)])


@pytest.mark.parametrize("build", [zoo.ResNetCNN, ml.CNN])
def test_numpy_image_shapes_are_taken_as_ints(build):
    model = build(tuple(np.array([1, 8, 8])), 10, 8)
    assert model.image_shape == (1, 8, 8) and all(type(s) is int for s in model.image_shape)


# ---------------------------------------------------------------- image shapes against the data
def image_data(x_shape=None, image_shape=(1, 8, 8), d=DIGITS):
    xtr, xte = d.x_train[:64], d.x_test[:16]
    if x_shape is not None:
        xtr, xte = xtr.reshape(-1, *x_shape), xte.reshape(-1, *x_shape)
    return Dataset("crafted", xtr, d.y_train[:64], xte, d.y_test[:16], "classification", 64, 10, image_shape)


def cnn(shape):
    return ml.CNN(shape, 10, 16, base_width=8, seed=0)


def resnet(shape):
    return zoo.build(lambda w: zoo.ResNetCNN(shape, 10, w, blocks=1), 16, 8)


@pytest.mark.parametrize("make", [cnn, resnet])
@pytest.mark.parametrize("model_shape, data, words", [
    ((1, 4, 16), DIGITS, ["data: expected images of shape (1, 4, 16)", "got images of shape (1, 8, 8)",
                          "image_shape=(1, 8, 8)"]),
    ((1, 4, 16), image_data((1, 8, 8), None), ["(1, 4, 16)", "got images of shape (1, 8, 8)"]),
    ((1, 8, 8), image_data((1, 4, 16), None), ["(1, 8, 8)", "got images of shape (1, 4, 16)"]),
    ((1, 8, 8), image_data((8, 8), None), ["(1, 8, 8)", "got images of shape (8, 8)"]),
    ((1, 6, 6), image_data(None, None), ["data: expected inputs with C*H*W = 36 features", "got 64"]),
    ((1, 8, 8), image_data(None, (1, 4, 4)), ["data.image_shape: expected (C, H, W) with C*H*W = 64", "(1, 4, 4)"]),
    ((1, 8, 8), image_data((1, 8, 8), (1, 4, 16)), ["data.image_shape: expected data.x_train's image shape "
                                                    "(1, 8, 8)", "got (1, 4, 16)"]),
    ((1, 8, 8), image_data(None, (1, 8.0, 8)), ["data.image_shape: expected (channels, height, width)"]),
])
def test_image_data_that_does_not_fit_is_refused_before_the_first_step(make, model_shape, data, words):
    model = make(model_shape)
    opt = ml.make_optimizer(model, "kfac", lr=0.1)
    before = weights(model)
    with pytest.raises(ValueError) as info:
        next(ml.train(model, opt, data, steps=2, device="cpu"))
    words_in(info, words)
    assert unchanged(model, before) and not opt.state


@pytest.mark.parametrize("make", [cnn, resnet])
def test_image_data_that_fits_trains(make):
    """Data without an image_shape but with C*H*W features is taken at the model's word."""
    for shape, data in [((1, 8, 8), DIGITS), ((1, 8, 8), image_data((1, 8, 8), (1, 8, 8))),
                        ((1, 8, 8), image_data((1, 8, 8), None)), ((2, 4, 8), image_data(None, None))]:
        model = make(shape)
        recs = ml.run(model, ml.make_optimizer(model, "sgd", lr=0.1), data, steps=2, device="cpu")
        assert len(recs) == 2 and not recs[-1]["diverged"]


def test_sequences_longer_than_the_model_block_are_refused():
    text = ml.datasets.text(block=16)
    model = zoo.build(lambda w: zoo.TinyGPT(96, w, n_layer=1, block=8), 64, 32)
    opt = ml.make_optimizer(model, "kfac", lr=0.1)
    before = weights(model)
    with pytest.raises(ValueError) as info:
        next(ml.train(model, opt, text, steps=2, device="cpu"))
    words_in(info, ["data: expected sequences of at most 8 tokens", "got sequences of 16", "block >= 16"])
    assert unchanged(model, before)


# ---------------------------------------------------------------- widths that cannot be allocated
HUGE = {   # every first weight is beyond any machine too, so a regression fails fast instead of filling memory
    "MLP width": (lambda: ml.MLP(64, 10, 10 ** 10), "width", "MLP(d_in=64, d_out=10, width=10000000000, depth=3)"),
    "MLP d_in": (lambda: ml.MLP(10 ** 13, 10, 8), "d_in", "80,000,000,000,144 parameters"),
    "MLP depth": (lambda: ml.MLP(64, 10, 10 ** 6, depth=10 ** 7), "depth", "depth=10000000"),
    "CNN width": (lambda: ml.CNN((1, 8, 8), 10, 10 ** 10), "width", "CNN(image_shape=(1, 8, 8)"),
    "CNN kernel": (lambda: ml.CNN((1, 8, 8), 10, 8, kernel_size=10 ** 6), "kernel_size", "kernel_size=1000000"),
    "ResNetCNN": (lambda: zoo.ResNetCNN((1, 8, 8), 10, 10 ** 10), "width", "ResNetCNN("),
    "ResidualMLP": (lambda: zoo.ResidualMLP(64, 10, 10 ** 10), "width", "ResidualMLP("),
    "TinyGPT width": (lambda: zoo.TinyGPT(96, 4 * 10 ** 10), "width", "TinyGPT("),
    "TinyGPT vocab": (lambda: zoo.TinyGPT(10 ** 12, 64), "vocab", "vocab=1000000000000"),
    "build": (lambda: zoo.build(lambda w: zoo.TinyGPT(96, w), 4 * 10 ** 10, 64), "width", "TinyGPT("),
}


@pytest.mark.parametrize("case", list(HUGE))
def test_sizes_whose_parameters_cannot_fit_are_refused_before_allocating(case):
    build, arg, words = HUGE[case]
    with pytest.raises(ValueError) as info:
        build()
    words_in(info, [f"{arg}: expected a size whose parameters fit in memory, got {arg}=", words,
                    "of memory is available", f"choose a smaller {arg}"])


SMALL = {
    "MLP": lambda: ml.MLP(7, 3, 9, depth=4, bias=True),
    "CNN": lambda: ml.CNN((3, 5, 5), 4, 6, depth=4, bias=True, kernel_size=5),
    "ResNetCNN": lambda: zoo.ResNetCNN((3, 4, 4), 2, 5, blocks=3),
    "ResidualMLP": lambda: zoo.ResidualMLP(7, 3, 5, depth=3),
    "TinyGPT": lambda: zoo.TinyGPT(11, 8, n_layer=2, n_head=2, block=5),
}


@pytest.mark.parametrize("name", list(SMALL))
def test_the_memory_estimate_is_the_parameter_count(name, monkeypatch):
    """Refused at one byte less than 4 x (number of parameters), built at exactly that."""
    nbytes = 4 * sum(p.numel() for p in SMALL[name]().parameters())
    monkeypatch.setattr(models, "available_memory", lambda: nbytes - 1)
    with pytest.raises(ValueError, match=f" has {nbytes // 4:,} parameters, "):
        SMALL[name]()
    monkeypatch.setattr(models, "available_memory", lambda: nbytes)
    SMALL[name]()


@pytest.mark.skipif(sys.platform != "linux", reason="caps the child's address space through /proc and RLIMIT_AS")
def test_an_allocation_failure_names_the_argument_and_the_size():
    """In a child with a capped address space, a model that passes the up-front check (told of
    plenty of memory) but cannot be allocated raises MemoryError with the size."""
    child = """
import json, resource, mupso_lite as ml
from mupso_lite import models
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
cap = int(status["VmPeak"].split()[0]) * 1024 + (300 << 20)
resource.setrlimit(resource.RLIMIT_AS, (cap, resource.getrlimit(resource.RLIMIT_AS)[1]))
models.available_memory = lambda: 10 ** 15
try:
    ml.MLP(64, 10, 20000)
    print(json.dumps(["built", ""]))
except Exception as e:
    print(json.dumps([type(e).__name__, str(e)]))
"""
    out = subprocess.run([sys.executable, "-c", child], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    kind, msg = json.loads(out.stdout.strip().splitlines()[-1])
    assert kind == "MemoryError", (kind, msg)
    for w in ["width: could not allocate the parameters for width=20000", "401,480,000 parameters",
              "1.5 GiB as float32", "choose a smaller width", "torch: "]:
        assert w in msg, (w, msg)
