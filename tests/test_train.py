"""train(): records, stopping, divergence, determinism, devices, CNN and regression."""
import math
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
    assert recs[-1]["diverged"] and recs[-1]["message"].startswith(f"diverged at step {recs[-1]['step']}: ")
    assert recs[-1]["hint"] == "lower the learning rate"
    assert len(recs) < 50 and all(not r["diverged"] for r in recs[:-1])


def test_a_finite_blow_up_is_divergence_too():
    """lr 100 on digits: the loss stays finite but climbs far above its start."""
    model = ml.MLP(64, 10, width=64, seed=0)
    opt = ml.make_optimizer(model, "sgd", lr=100.0)
    recs = ml.run(model, opt, "digits", steps=100)
    last = recs[-1]
    assert last["diverged"] and math.isfinite(last["loss"]) and last["loss"] > 10 * recs[0]["loss"]
    assert "rose" in last["message"] and "stayed above 10× its start for 5 steps" in last["message"]
    # the 5 steps before the last are above 10x the start too, and none of them was flagged
    assert all(r["loss"] > 10 * recs[0]["loss"] for r in recs[-5:]) and not any(r["diverged"] for r in recs[:-1])
    assert len(recs) < 100
    # without the rule only non-finite losses count: the same run goes on
    model = ml.MLP(64, 10, width=64, seed=0)
    recs = ml.run(model, ml.make_optimizer(model, "sgd", lr=100.0), "digits", steps=30, divergence=None)
    assert len(recs) == 30 or (recs[-1]["diverged"] and not math.isfinite(recs[-1]["loss"]))


def test_second_order_divergence_hint_names_the_damping():
    model = ml.MLP(64, 10, width=64, seed=0)
    recs = ml.run(model, ml.make_optimizer(model, "kfac", lr=50.0, damping=1e-4), "digits", steps=60)
    assert recs[-1]["diverged"] and recs[-1]["hint"] == "raise the damping or lower the learning rate"


def test_divergence_rule_counts_consecutive_steps():
    rule = ml.DivergenceRule(factor=10, patience=3)
    assert rule.check(1, 2.0) is None                      # the start: 2.0
    assert [rule.check(k, v) for k, v in [(2, 30.0), (3, 25.0), (4, 5.0), (5, 21.0), (6, 22.0)]] == [None] * 5
    msg = rule.check(7, 23.0)                              # third step in a row above 20
    assert msg.startswith("diverged at step 7: the loss rose 11.5×, from 2 to 23")
    assert ml.DivergenceRule().check(1, float("nan")) == "diverged at step 1: the loss is nan"
    for bad in (1.0, 0.5, float("nan"), "10"):
        with pytest.raises(ValueError, match="divergence.factor: expected a number > 1"):
            ml.DivergenceRule(factor=bad)
    with pytest.raises(ValueError, match="divergence.patience"):
        ml.DivergenceRule(patience=0)


def test_no_update_is_taken_on_a_diverged_loss():
    model = ml.MLP(64, 10, width=32, seed=0)
    opt = ml.make_optimizer(model, "sgd", lr=100.0)
    snapshots = []
    for rec in ml.train(model, opt, "digits", steps=100):
        snapshots.append([p.detach().clone() for p in model.parameters()])
    assert rec["diverged"] and math.isfinite(rec["loss"]) and len(snapshots) >= 2
    # between the last healthy record and the divergence record the weights did not move
    assert all(torch.equal(a, b) for a, b in zip(snapshots[-1], snapshots[-2]))
    assert not all(torch.equal(a, b) for a, b in zip(snapshots[-2], snapshots[-3]))


def test_a_spike_that_does_not_diverge_is_a_warning_with_the_hint():
    rule = ml.DivergenceRule()
    assert [rule.check(k, v) for k, v in [(1, 2.0), (2, 5.9), (3, 1.0)]] == [None] * 3
    assert rule.warning == ""                                  # 2.95x: below the 3x spike
    assert rule.check(4, 12.0) is None
    assert rule.warning == "unstable: the loss spiked 6×, from 2 to 12 at step 4"
    assert ml.DivergenceRule(spike=float("inf")).warning == ""
    for bad in (1.0, float("nan"), True):
        with pytest.raises(ValueError, match="divergence.spike: expected a number > 1"):
            ml.DivergenceRule(spike=bad)
    # K-FAC with too small a damping at width 256: the loss jumps about 4.5x at step 2 and comes
    # down; it is not a divergence (not 5 steps above 10x), so it must be a warning
    model = ml.MLP(64, 10, width=256, base_width=64, seed=0)
    recs = ml.run(model, ml.make_optimizer(model, "kfac", lr=1.0, damping=1e-3), "digits", steps=30)
    assert not recs[-1]["diverged"] and len(recs) == 30
    assert recs[-1]["warning"].startswith("unstable: the loss spiked")
    assert recs[-1]["hint"] == "raise the damping or lower the learning rate"
    first = next(r for r in recs if r["warning"])
    assert first["loss"] > 3 * recs[0]["loss"] and all(not r["warning"] for r in recs[: first["step"] - 1])
    model = ml.MLP(64, 10, width=256, seed=0)   # the same run at a sound lr: no warning
    recs = ml.run(model, ml.make_optimizer(model, "kfac", lr=0.1, damping=0.1), "digits", steps=30)
    assert not any(r["warning"] for r in recs) and recs[-1]["hint"] == ""
