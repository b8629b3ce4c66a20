"""Bad input raises ValueError or TypeError naming the argument, the expectation and the value."""
import math

import pytest
import torch
from torch import nn

import mupso_lite as ml


@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(width=0), ValueError, ["width", "positive integer", "0"]),
    (dict(width=-3), ValueError, ["width", "-3"]),
    (dict(width=2.5), TypeError, ["width", "integer", "2.5"]),
    (dict(depth=1), ValueError, ["depth", ">= 2", "1"]),
    (dict(param="ntk"), ValueError, ["param", "'mup'", "'ntk'"]),
    (dict(optimizer="lbfgs"), ValueError, ["optimizer", "'kfac'", "'lbfgs'"]),
    (dict(activation="swish"), ValueError, ["activation", "'swish'"]),
    (dict(base_width=0), ValueError, ["base_width", "0"]),
])
def test_model_arguments(kwargs, exc, words):
    args = dict(d_in=4, d_out=2, width=8) | kwargs
    with pytest.raises(exc) as info:
        ml.MLP(**args)
    for w in words:
        assert w in str(info.value)


@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(lr=0), ValueError, ["lr", "> 0", "0"]),
    (dict(lr=-1.0), ValueError, ["lr", "-1.0"]),
    (dict(lr=math.nan), ValueError, ["lr", "nan"]),
    (dict(lr="big"), TypeError, ["lr", "'big'"]),
    (dict(damping=-1e-3), ValueError, ["damping", ">= 0", "-0.001"]),
    (dict(name="lbfgs"), ValueError, ["name", "'kfac'", "'lbfgs'"]),
    (dict(param="ntk"), ValueError, ["param", "'ntk'"]),
    (dict(damping_mode="magic"), ValueError, ["damping_mode", "'trace'", "'magic'"]),
])
def test_make_optimizer_arguments(kwargs, exc, words):
    model = ml.MLP(4, 2, width=8)
    args = dict(name="kfac", lr=0.1) | kwargs
    with pytest.raises(exc) as info:
        ml.make_optimizer(model, **args)
    for w in words:
        assert w in str(info.value)


def test_model_without_roles():
    plain = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    for call in (lambda: ml.make_optimizer(plain, "kfac", lr=0.1), lambda: ml.layer_scales(plain, "mup", "sgd")):
        with pytest.raises(ValueError, match="model: expected weight layers tagged with roles.*tag_roles"):
            call()
    assert list(ml.KFAC(plain).modules_by_name) == ["0", "2"]   # the optimizers need no roles
    with pytest.raises(ValueError, match=r"model: expected at least one nn.Linear or nn.Conv2d layer, got a Tanh"):
        ml.KFAC(nn.Tanh())
    with pytest.raises(TypeError, match="model: expected a torch.nn.Module"):
        ml.make_optimizer("not a model", "sgd", lr=0.1)


def test_optimizer_constructor_arguments():
    model = ml.MLP(4, 2, width=8)
    with pytest.raises(ValueError, match="damping_a.*-1"):
        ml.KFAC(model, damping_a=-1)
    with pytest.raises(ValueError, match="fisher.*'exact'"):
        ml.KFAC(model, fisher="exact")
    with pytest.raises(ValueError, match="ema_decay.*1.5"):
        ml.KFAC(model, ema_decay=1.5)
    with pytest.raises(TypeError, match="inverse_interval.*0.5"):
        ml.KFAC(model, inverse_interval=0.5)
    with pytest.raises(ValueError, match="eps.*-1"):
        ml.Shampoo(model.parameters(), eps=-1)
    with pytest.raises(ValueError, match="root.*2"):
        ml.Shampoo(model.parameters(), root=2)
    with pytest.raises(ValueError, match="grafting.*'rmsprop'"):
        ml.Shampoo(model.parameters(), grafting="rmsprop")


def test_train_arguments_fail_before_any_work():
    model = ml.MLP(64, 10, width=8)
    opt = ml.make_optimizer(model, "sgd", lr=0.1)
    w0 = model.layers[0].weight.clone()
    with pytest.raises(ValueError, match="steps.*0"):
        next(ml.train(model, opt, "digits", steps=0))
    with pytest.raises(TypeError, match="batch_size.*'64'"):
        next(ml.train(model, opt, "digits", batch_size="64"))
    with pytest.raises(TypeError, match="optimizer: expected a torch.optim.Optimizer"):
        next(ml.train(model, "sgd", "digits"))
    with pytest.raises(ValueError, match="name"):
        next(ml.train(model, opt, "imagenet"))
    assert torch.equal(model.layers[0].weight, w0)


@pytest.mark.parametrize("call,exc,words", [
    (lambda: ml.MLP(64, 10, 32, seed="x"), TypeError, "seed: expected an integer >= 0, got 'x'"),
    (lambda: ml.CNN((1, 8, 8), 10, 16, seed=-1), ValueError, "seed: expected an integer >= 0, got -1"),
    (lambda: ml.MLP(64, 10, 32, seed=2 ** 40), ValueError, "seed: expected an integer in 0..4294967295"),
    (lambda: ml.datasets.digits(seed="a"), TypeError, "seed"),
    (lambda: ml.datasets.teacher(seed=-1), ValueError, "seed"),
    (lambda: ml.run(ml.MLP(64, 10, 16), ml.optim.make_optimizer(ml.MLP(64, 10, 16), "sgd", lr=0.1), "digits",
                    steps=1, seed="x"), TypeError, "seed"),
    (lambda: ml.coord_check(lambda w, seed=0: ml.MLP(64, 10, w, seed=seed), "sgd", widths=(32, 64), seeds=("a",),
                            steps=1, data="digits"), TypeError, "seeds"),
    (lambda: ml.make_optimizer(ml.MLP(64, 10, 16), "kfac", lr=10 ** 400), ValueError, "lr: .*401 digits"),
])
def test_seeds_and_huge_integers_get_clear_errors(call, exc, words):
    """Before: torch's 'manual_seed expected a long', sklearn's InvalidParameterError, an
    OverflowError from math.isfinite."""
    with pytest.raises(exc, match=words):
        call()


def test_numpy_integer_seeds_are_accepted():
    import numpy as np
    assert ml.MLP(64, 10, 16, seed=np.int64(3)).layers[0].weight.shape == (16, 64)
