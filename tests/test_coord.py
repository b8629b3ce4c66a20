"""ml.coord_check's API: frame and exponents, verdict text, errors, every optimizer, user models.

(The slopes against the theory are tested in test_theory.py.)
"""
import pandas as pd
import pytest
import torch
from torch import nn

import mupso_lite as ml
from mupso_lite.coord import exponents_of, theory_slopes

DATA = ml.datasets.teacher(n_train=256, n_test=64)
FRAME_COLUMNS = ["width", "seed", "step", "layer", "role", "feature_change", "output_change"]


def mlp(param="mup"):
    def model_fn(width, seed=0):
        return ml.MLP(DATA.d_in, DATA.d_out, width, depth=3, base_width=16, param=param, seed=seed)
    return model_fn


@pytest.mark.parametrize("optimizer, lr, options", [
    ("sgd", 0.5, {}), ("adam", 0.01, {}), ("kfac", 0.1, {"damping_mode": "trace"}),
    ("shampoo", 0.1, {"update_interval": 1}), ("foof", 0.1, {}), ("muon", 0.02, {}), ("soap", 3e-3, {})])
def test_frame_and_exponents_for_every_optimizer(optimizer, lr, options):
    cc = ml.coord_check(mlp(), optimizer, "mup", widths=(16, 32, 64), steps=(1, 2), seeds=(0, 1),
                        data=DATA, lr=lr, device="cpu", **options)
    assert list(cc.frame.columns) == FRAME_COLUMNS
    assert len(cc.frame) == 3 * 2 * 2 * 3  # widths x seeds x steps x layers
    assert set(cc.frame["role"]) == {"input", "hidden", "output"}
    assert (cc.frame["feature_change"] > 0).all()
    assert list(cc.exponents.columns) == ["step", "layer", "role", "slope"]
    assert set(cc.slopes(1)) == {"layers.0", "layers.1", "layers.2", "f"}
    assert set(cc.slopes_by_role(2)) == {"input", "hidden", "output", "f"}
    assert cc.label == f"mup/{optimizer}"
    assert cc.verdict() in repr(cc) and "<table" in cc._repr_html_()


@pytest.mark.parametrize("optimizer, lr", [("muon", 0.02), ("soap", 3e-3)])
def test_muon_and_soap_one_step_slopes_match_the_theory(optimizer, lr):
    """muP: width-stable after one step (|slope| < STABLE); SP: near (-1/2, 0, 1/2), the orthogonalized
    step's one-step exponents (measured at widths 32 ... 512 on the teacher task: input -0.52, hidden
    -0.13, output +0.36 for both; closer to the theory at wider widths)."""
    from mupso_lite.coord import STABLE
    for param in ("mup", "sp"):
        cc = ml.coord_check(mlp(param), optimizer, param, widths=(32, 128, 512), steps=1, seeds=(0,),
                            data=DATA, lr=lr, device="cpu")
        slopes, theory = cc.slopes_by_role(1), theory_slopes(param, optimizer)
        assert not cc.diverged and set(slopes) == set(theory)
        for role, slope in slopes.items():
            assert slope == pytest.approx(theory[role], abs=STABLE if param == "mup" else 0.2), (param, role, slopes)
        if param == "mup":
            assert cc.verdict() == "feature learning is width-stable"
        else:   # SP: the input layer freezes, the output layer grows
            assert slopes["input"] < -0.35 and slopes["output"] > 0.25, slopes


class TwoBranch(nn.Module):
    """A user's model: not an ml.MLP, a hidden conv-free block with a residual connection."""

    def __init__(self, width, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.inp, self.mid, self.out = nn.Linear(16, width), nn.Linear(width, width), nn.Linear(width, 4)
        ml.tag_roles(self, width, base_width=16)
        ml.init_weights(self, "mup", "kfac")

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        return self.out(h + torch.tanh(self.mid(h)))


def test_user_model_with_a_named_and_a_callable_optimizer():
    cc = ml.coord_check(TwoBranch, "kfac", "mup", widths=(16, 64), steps=1, seeds=(0,), data=DATA,
                        lr=0.1, damping=0.1, device="cpu")
    assert set(cc.frame["layer"]) == {"inp", "mid", "out", "inp.bias", "mid.bias", "out.bias"}
    assert dict(zip(cc.frame["layer"], cc.frame["role"])) == {
        "inp": "input", "mid": "hidden", "out": "output",
        "inp.bias": "input bias", "mid.bias": "hidden bias", "out.bias": "output bias"}
    # a model_fn without a seed argument is called as model_fn(width); a callable optimizer is used as is
    calls = []

    def model_fn(width):  # no seed argument: called as model_fn(width)
        calls.append(width)
        return TwoBranch(width)
    cc = ml.coord_check(model_fn, lambda m: torch.optim.SGD(m.parameters(), lr=0.1), widths=(16, 32),
                        steps=2, seeds=(0,), data=DATA, device="cpu")
    assert calls == [16, 32] and cc.label == "mup/custom" and len(cc.exponents) == 2 * 7   # 3 weights, 3 biases, f


def test_verdict_names_growing_and_freezing_layers():
    rows = [dict(width=w, seed=0, step=1, layer=name, role=role, feature_change=fc, output_change=1.0)
            for w in (64, 256, 1024) for name, role, fc in
            (("a", "input", 1.0), ("b", "hidden", w / 64.0), ("c", "output", 64.0 / w))]
    cc = ml.CoordCheck(pd.DataFrame(rows), exponents_of(pd.DataFrame(rows)))
    assert cc.slopes() == pytest.approx({"a": 0.0, "b": 1.0, "c": -1.0, "f": 0.0}, abs=1e-9)
    assert cc.verdict() == "layer b grows like M^1.00; layer c freezes like M^-1.00"
    flat = [dict(r, feature_change=1.0) for r in rows]
    assert ml.CoordCheck(pd.DataFrame(flat), exponents_of(pd.DataFrame(flat))).verdict() == \
        "feature learning is width-stable"


def test_one_threshold_for_width_stable():
    """|slope| < STABLE = 0.15 is width-stable; root ½'s -0.24 at batch 64 is not."""
    from mupso_lite.coord import STABLE
    assert STABLE == 0.15

    def verdict(slope):
        rows = [dict(width=w, seed=0, step=1, layer="h", role="hidden", feature_change=w ** slope,
                     output_change=1.0) for w in (64, 256, 1024)]
        return ml.CoordCheck(pd.DataFrame(rows), exponents_of(pd.DataFrame(rows))).verdict()
    assert verdict(0.14) == verdict(-0.14) == "feature learning is width-stable"
    assert verdict(-0.24) == "layer h freezes like M^-0.24" and verdict(0.16) == "layer h grows like M^0.16"


def test_fit_slope():
    assert ml.fit_slope([1, 2, 4], [3, 6, 12]) == pytest.approx(1.0)
    assert ml.fit_slope([1, 2], [1.0, 0.0]) != ml.fit_slope([1, 2], [1.0, 0.0])  # NaN for a zero value


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(model_fn=3), TypeError, "model_fn: expected a callable"),
    (dict(widths=(64,)), ValueError, "widths: expected at least two distinct widths"),
    (dict(widths=(64, 0)), ValueError, "widths: expected a positive integer, got 0"),
    (dict(seeds=()), ValueError, "seeds: expected at least one seed"),
    (dict(steps=0), ValueError, "steps: expected a positive integer"),
    (dict(steps=[]), ValueError, "steps: expected a positive integer or a non-empty list"),
    (dict(optimizer="lbfgs"), ValueError, "optimizer: expected one of"),
    (dict(model_fn=lambda w: nn.Sequential(nn.Linear(16, w), nn.Linear(w, 4))), ValueError,
     r"model: expected weight layers tagged with roles .*ml.tag_roles"),
])
def test_errors_name_the_argument(kwargs, error, match):
    args = dict(model_fn=mlp(), optimizer="sgd", widths=(16, 32), steps=1, seeds=(0,), data=DATA, device="cpu")
    with pytest.raises(error, match=match):
        ml.coord_check(**{**args, **kwargs})


def test_theory_slopes():
    zero = {"input": 0.0, "hidden": 0.0, "output": 0.0, "f": 0.0}
    for opt in ("sgd", "adam", "kfac", "shampoo", "foof", "muon", "soap"):
        assert theory_slopes("mup", opt) == zero
    for opt in ("shampoo", "muon", "soap"):
        assert theory_slopes("sp", opt) == {"input": -0.5, "hidden": 0.0, "output": 0.5, "f": 0.5}
    assert theory_slopes("sp", "sgd") == {"input": -0.5, "hidden": 0.5, "output": 1.0, "f": 1.0}
    assert theory_slopes("mup", "kfac", "pi")["input"] == -1.0
    assert theory_slopes("sp", "kfac") == theory_slopes("sp", "kfac", "fixed")
    assert theory_slopes("sp", "foof") is None
    with pytest.raises(ValueError, match="damping_mode: expected one of"):
        theory_slopes("mup", "kfac", "bogus")
