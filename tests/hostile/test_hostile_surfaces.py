"""Hostile use of the newer surfaces: checkpoints of every optimizer, the dashboard's controls
set from code, the command line's output files. Each case is a clear error before any work
(naming the argument, what was wanted, what was given), with nothing changed, or a correct result."""
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mupso_lite as ml
from mupso_lite.cli import main

DIGITS = ml.datasets.digits()


def stepped(width, name, param="mup"):
    """A width-``width`` MLP and its optimizer after one step on digits."""
    model = ml.MLP(64, 10, width, base_width=16, param=param, seed=0)
    opt = ml.make_optimizer(model, name, lr=0.05)
    opt.zero_grad()
    F.cross_entropy(model(DIGITS.x_train[:32]), DIGITS.y_train[:32]).backward()
    opt.step()
    return model, opt


# ---------------------------------------------------------------- checkpoints of SGD and Adam
@pytest.mark.parametrize("name", ["sgd", "adam", "kfac", "shampoo"])
def test_a_checkpoint_from_another_width_is_refused_and_changes_nothing(name):
    _, wide = stepped(64, name)
    _, narrow = stepped(32, name)
    before = narrow.state_dict()
    with pytest.raises(ValueError, match=r"state_dict: saved for parameters of shapes \[\(64, 64\).*another width"):
        narrow.load_state_dict(wide.state_dict())
    after = narrow.state_dict()
    assert [g["lr"] for g in after["param_groups"]] == [g["lr"] for g in before["param_groups"]]
    assert after["state"].keys() == before["state"].keys()


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_sgd_and_adam_are_still_torch_optimizers_that_round_trip(name):
    model, opt = stepped(32, name)
    assert isinstance(opt, torch.optim.SGD if name == "sgd" else torch.optim.Adam)
    twin = ml.make_optimizer(model, name, lr=0.05)
    twin.load_state_dict(opt.state_dict())
    assert [g["lr"] for g in twin.param_groups] == [g["lr"] for g in opt.param_groups]
    if name == "adam":
        p = opt.param_groups[0]["params"][0]
        assert torch.equal(twin.state[p]["exp_avg"], opt.state[p]["exp_avg"])


def test_a_kfac_checkpoint_is_refused_by_sgd():
    _, kfac = stepped(32, "kfac")
    _, sgd = stepped(32, "sgd")
    with pytest.raises(ValueError, match="saved by KFAC, cannot be loaded into MuSGD"):
        sgd.load_state_dict(kfac.state_dict())


def test_a_plain_torch_sgd_checkpoint_of_the_same_shapes_loads():
    model, opt = stepped(32, "sgd")
    plain = torch.optim.SGD(opt.param_groups, lr=0.05)
    opt.load_state_dict(plain.state_dict())


def test_an_adam_checkpoint_with_nan_moments_is_refused():
    model, opt = stepped(32, "adam")
    sd = opt.state_dict()
    sd["state"][0]["exp_avg_sq"][0, 0] = float("nan")
    fresh = ml.make_optimizer(model, "adam", lr=0.05)
    with pytest.raises(ValueError, match="NaN or Inf"):
        fresh.load_state_dict(sd)
    assert not fresh.state


# ---------------------------------------------------------------- the dashboard's controls set from code
@pytest.fixture
def dash():
    pytest.importorskip("ipywidgets")
    d = ml.Dashboard(width=64, steps=5)
    yield d
    d.close()


@pytest.mark.parametrize("control, value, options", [
    ("optimizer", "lbfgs", "'sgd', 'adam', 'kfac', 'shampoo', 'foof'"),
    ("param", "ntk", "'sp', 'mup'"),
    ("dataset", "cifar", "'digits', 'teacher'"),
    ("batch_size", 100, "16, 32, 64, 128, 256, 512"),
    ("fisher", "exact", "'auto', 'empirical', 'mc'"),
    ("memory", 0.8, "0, 0.5, 0.9, 0.95, 0.99"),
    ("memory", "0.9", "0, 0.5, 0.9, 0.95, 0.99"),
    ("batch_size", True, "16, 32, 64"),
])
def test_a_control_set_outside_its_options_names_the_control(dash, control, value, options):
    before = dash.controls[control].value
    with pytest.raises(ValueError, match=rf"^{control}: expected one of .*got {value!r}") as e:
        dash.controls[control].value = value
    assert options in str(e.value)
    assert dash.controls[control].value == before and not dash.running


@pytest.mark.parametrize("control, value, stored", [
    ("optimizer", "K-FAC", "kfac"), ("param", "muP", "mup"), ("fisher", "MC", "mc"),
    ("memory", np.float32(0.95), 0.95), ("batch_size", np.int64(128), 128),
])
def test_a_control_takes_what_the_constructor_takes(dash, control, value, stored):
    dash.controls[control].value = value
    assert dash.controls[control].value == stored and type(dash.controls[control].value) is type(stored)
    dash.stop()


# ---------------------------------------------------------------- command line: outputs checked up front
@pytest.mark.parametrize("command, name", [("coord-check", "coord.html"), ("coord-check", "exponents.csv"),
                                           ("report", "summary.csv")])
@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_an_output_file_that_cannot_be_written_fails_before_the_work(tmp_path, capsys, command, name, kind):
    out = tmp_path / "out"
    out.mkdir()
    if kind == "folder":
        (out / name).mkdir()
    else:
        os.mkfifo(out / name)   # opening it for writing would block for ever
    results = tmp_path / "r.jsonl"
    results.write_text('{"optimizer": "sgd", "param": "mup", "width": 16, "lr": 0.1, "seed": 0, "status": "ok", '
                       '"train_loss": 1.0}\n')
    argv = (["coord-check", "--widths", "16,32", "--steps", "1", "--no-progress"] if command == "coord-check"
            else ["report", str(results)]) + ["--out", str(out)]
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    assert f"--out: expected a folder where {name} can be written" in err
    assert sorted(p.name for p in out.iterdir()) == [name]   # nothing else was written


def test_plotly_js_is_checked_only_when_it_will_be_written(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "plotly.min.js").mkdir(parents=True)
    assert main(["coord-check", "--widths", "16,32", "--steps", "1", "--no-progress", "--out", str(out)]) == 0
    with pytest.raises(SystemExit):
        main(["coord-check", "--widths", "16,32", "--steps", "1", "--no-progress", "--out", str(out),
              "--plotlyjs", "directory"])
    assert "plotly.min.js can be written" in capsys.readouterr().err


# ---------------------------------------------------------------- messages that blame the right argument
def tiny_gpt(width):
    from mupso_lite.zoo import TinyGPT
    return TinyGPT(vocab=96, width=width, n_layer=1,
                   n_head=2, block=16)


@pytest.mark.parametrize("which, arg, want", [("x", "data.x_train", "int64 token ids"),
                                              ("y", "data.y_train", "integer labels")])
def test_token_sequences_of_the_wrong_kind_name_the_wrong_tensor(which, arg, want):
    import dataclasses
    text = ml.datasets.text(block=16)
    data = dataclasses.replace(text, **{f"{which}_train": getattr(text, f"{which}_train").float()})
    model = ml.parametrize(tiny_gpt(32), tiny_gpt(16))
    opt = ml.make_optimizer(model, "sgd", lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(TypeError, match=rf"^{arg}: expected {want} .*token sequences\), got torch.float32"):
        list(ml.train(model, opt, data, steps=1))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before))


class ConvNet(torch.nn.Module):
    """A conv, a grouped conv of ``groups(width)`` groups, a readout; digits as 1x8x8 images."""

    def __init__(self, width, groups):
        super().__init__()
        self.inp = torch.nn.Conv2d(1, width, 3, padding=1)
        self.mix = torch.nn.Conv2d(width, width, 3, padding=1, groups=groups(width))
        self.out = torch.nn.Linear(width * 64, 10)

    def forward(self, x):
        return self.out(torch.relu(self.mix(torch.relu(self.inp(x.view(-1, 1, 8, 8))))).flatten(1))


def test_a_depthwise_convolution_is_vector_like_and_trains():
    model = ml.parametrize(ConvNet(32, lambda w: w), ConvNet(8, lambda w: w))
    assert (model.mix.weight.mup_role, model.mix.weight.mup_ratio) == ("vector", 4.0)
    opt = ml.make_optimizer(model, "kfac", lr=0.05)
    sgd_lrs = [g["lr"] for g in opt.param_groups if any(p is model.mix.weight for p in g["params"])]
    assert sgd_lrs == [pytest.approx(0.05 * 4)]   # muP-SGD's vector rule: lr (M/M0)
    records = list(ml.train(model, opt, DIGITS, steps=3))
    assert not records[-1]["diverged"] and math.isfinite(records[-1]["loss"])


def test_a_grouped_convolution_whose_groups_grow_says_so():
    with pytest.raises(ValueError, match=r"'mix.weight' is the weight of a grouped nn.Conv2d \(groups=4\) whose "
                                         r"channels per group grow"):
        ml.parametrize(ConvNet(32, lambda w: 4), ConvNet(8, lambda w: 4))


@pytest.mark.parametrize("name", ["sgd", "adam", "kfac", "shampoo"])
def test_hand_tagged_tied_layers_are_refused_by_make_optimizer(name):
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8), torch.nn.ReLU(),
                                torch.nn.Linear(8, 3))
    model[2].weight = model[0].weight
    ml.tag_roles(model, width=8)
    with pytest.raises(ValueError, match=r"model: layers '0' and '2' share one parameter \(tied weights\)"):
        ml.make_optimizer(model, name, lr=0.1)
