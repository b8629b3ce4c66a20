"""train(): records, stopping, divergence, determinism, devices, CNN and regression."""
import threading

import pytest
import torch

import mupso_lite as ml


def small(optimizer="sgd", **kw):
    model = ml.MLP(64, 10, width=32, depth=3, base_width=16, seed=0, **kw)
    return model, ml.make_optimizer(model, optimizer, lr=0.1 if optimizer != "adam" else 1e-2)


def test_records_have_every_field():
    model, opt = small()
    recs = ml.run(model, opt, "digits", steps=5, eval_every=2)
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5]
    for r in recs:
        assert set(r["feature_change"]) == {"layers.0", "layers.1", "layers.2"}
        assert r["loss"] > 0 and 0 <= r["accuracy"] <= 1 and r["seconds"] >= 0 and not r["diverged"]
    assert "test_accuracy" in recs[1] and "test_accuracy" not in recs[2] and "test_accuracy" in recs[4]
    assert recs[-1]["feature_change"]["layers.2"] == pytest.approx(recs[-1]["output_change"])


def test_feature_change_is_the_rms_of_the_probe_difference():
    model, opt = small()
    data = ml.datasets.digits()
    x = data.x_train[:64]
    h0 = model.layers[0](x).detach()
    rec = next(ml.train(model, opt, data, steps=1))
    h1 = model.layers[0](x).detach()
    assert rec["feature_change"]["layers.0"] == pytest.approx(float((h1 - h0).pow(2).mean().sqrt()), rel=1e-5)


def test_seeded_runs_repeat_exactly():
    for name in ("sgd", "kfac", "shampoo"):
        a = ml.run(*small(name), "digits", steps=4, seed=3)
        b = ml.run(*small(name), "digits", steps=4, seed=3)
        assert [r["loss"] for r in a] == [r["loss"] for r in b]


def test_mc_fisher_runs_and_repeats():
    def go():
        model = ml.MLP(64, 10, width=32, seed=0)
        return ml.run(model, ml.make_optimizer(model, "kfac", lr=0.1, fisher="mc"), "digits", steps=3, seed=1)
    assert [r["loss"] for r in go()] == [r["loss"] for r in go()]


def test_divergence_is_a_record_not_an_exception():
    reg = ml.datasets.teacher(task="regression")
    model = ml.MLP(reg.d_in, reg.d_out, width=32, seed=0, param="sp", activation="relu")
    opt = ml.make_optimizer(model, "sgd", lr=100.0)
    recs = ml.run(model, opt, reg, steps=50)
    assert recs[-1]["diverged"] and recs[-1]["message"] == f"diverged at step {recs[-1]['step']}"
    assert len(recs) < 50 and all(not r["diverged"] for r in recs[:-1])


def test_stop_flag_and_callback():
    model, opt = small()
    stop = threading.Event()
    got = []
    for r in ml.train(model, opt, "digits", steps=100, stop=stop):
        got.append(r)
        if r["step"] == 3:
            stop.set()
    assert len(got) == 3
    recs = ml.run(*small(), "digits", steps=100, callback=lambda r: r["step"] >= 4)
    assert len(recs) == 4


def test_device_auto_and_cnn_and_regression():
    assert ml.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    cnn = ml.CNN(image_shape=(1, 8, 8), d_out=10, width=8, depth=3, base_width=8, seed=0)
    for name in ("kfac", "shampoo", "sgd"):
        recs = ml.run(cnn, ml.make_optimizer(cnn, name, lr=0.05), "digits", steps=3)
        assert recs[-1]["loss"] < 10 and set(recs[-1]["feature_change"]) == {"convs.0", "convs.1", "readout"}
    reg = ml.datasets.teacher(task="regression")
    model = ml.MLP(reg.d_in, reg.d_out, width=32, seed=0)
    recs = ml.run(model, ml.make_optimizer(model, "kfac", lr=0.1, fisher="mc"), reg, steps=20)  # train passes "mse"
    assert recs[-1]["loss"] < recs[0]["loss"] and "accuracy" not in recs[-1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_path():
    model, opt = small("kfac")
    recs = ml.run(model, opt, "digits", steps=3, device="cuda")
    assert next(model.parameters()).is_cuda and recs[-1]["loss"] > 0
