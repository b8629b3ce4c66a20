"""The scaling table: exponents as data, per-layer init std / lr / damping, muP == SP at base width."""
import math

import pytest
import torch
from torch import nn

import mupso_lite as ml
from mupso_lite.scaling import layer_scales, rule


def test_table_rows_match_the_science_notes():
    assert rule("mup", "sgd").lr == (-1, 0, 1)
    assert rule("mup", "adam").lr == (0, 1, 1)
    assert rule("mup", "kfac").lr == (0, 0, 0)
    assert rule("mup", "kfac").damping_a == (0, -1, -1)      # rho_A ~ 1, M, M
    assert rule("mup", "kfac").damping_b == (1, 1, 0)        # rho_B ~ 1/M, 1/M, 1
    assert rule("mup", "shampoo").lr == (-0.5, 0, 0.5)
    assert rule("mup", "shampoo", root=0.5).lr == (0, 0, 0)  # (2e-1, 0, 1-2e)
    assert rule("mup", "shampoo").eps == (1, 0, -1)          # eps ~ 1/M, 1, M
    assert rule("mup", "shampoo").damping_a is None and rule("sp", "shampoo").eps == (0, 0, 0)
    assert rule("mup", "foof").lr == (-1, -1, 0)
    assert rule("mup", "muon").lr == (-0.5, 0, 0.5) and rule("mup", "muon").eps is None   # spectral condition
    assert rule("mup", "soap").lr == (-0.5, 0, 0.5)
    assert rule("mup", "soap").eps == (0.5, 0, -0.5)         # eps ~ |delta| |x| ~ M^-1/2, 1, M^1/2
    assert rule("sp", "soap").eps == (0, 0, 0) and rule("sp", "muon").eps is None
    for opt in ("sgd", "adam", "kfac", "shampoo", "foof", "muon", "soap"):
        assert rule("sp", opt).init == (0, 0.5, 0.5) and rule("sp", opt).lr == (0, 0, 0)
        assert rule("mup", opt).init == (0, 0.5, 1)


def test_scaling_table_prints_and_renders():
    t = ml.scaling_table()
    text, html = repr(t), t._repr_html_()
    assert "mup" in text and "kfac" in text and "M^-1" in text
    assert "muon" in text and "M^-1/2, 1, M^1/2" in text     # SOAP's eps column
    assert html.startswith("<table") and html.count("<tr>") == 15
    assert len(t.to_frame()) == 14


@pytest.mark.parametrize("width", [64, 256, 1024])
@pytest.mark.parametrize("param", ["sp", "mup"])
def test_init_std_matches_the_table(width, param):
    model = ml.MLP(d_in=20, d_out=1000, width=width, depth=3, base_width=64, param=param, seed=1)
    ratio = width / 64
    b_out = 0.5 if param == "sp" else 1.0
    expected = [1 / math.sqrt(20), 1 / math.sqrt(width), 1 / math.sqrt(64) * ratio ** -b_out]
    for layer, std in zip(model.layers, expected):
        assert float(layer.weight.detach().std()) == pytest.approx(std, rel=0.05)


def test_mup_equals_sp_at_base_width():
    for opt in ("sgd", "adam", "kfac", "shampoo", "foof", "muon", "soap"):
        sp = ml.MLP(10, 3, width=64, base_width=64, param="sp", seed=3)
        mu = ml.MLP(10, 3, width=64, base_width=64, param="mup", seed=3)
        for a, b in zip(sp.parameters(), mu.parameters()):
            assert torch.equal(a, b)
        s1 = layer_scales(sp, "sp", opt, lr=0.1, damping=0.01)
        s2 = layer_scales(mu, "mup", opt, lr=0.1, damping=0.01)
        assert [(s.lr, s.damping_a, s.init_std) for s in s1] == [(s.lr, s.damping_a, s.init_std) for s in s2]


def test_layer_scales_lr_and_damping_follow_width():
    model = ml.MLP(10, 3, width=256, base_width=64, param="mup", seed=0)
    k = {s.role: s for s in layer_scales(model, "mup", "kfac", lr=0.1, damping=0.01)}
    assert k["hidden"].damping_a == pytest.approx(0.04) and k["hidden"].damping_b == pytest.approx(0.0025)
    assert k["input"].damping_a == pytest.approx(0.01) and k["output"].damping_b == pytest.approx(0.01)
    s = {s.role: s for s in layer_scales(model, "mup", "sgd", lr=0.1)}
    assert (s["input"].lr, s["hidden"].lr, s["output"].lr) == pytest.approx((0.4, 0.1, 0.025))
    sh = {s.role: s for s in layer_scales(model, "mup", "shampoo", lr=0.1, damping=1e-4)}
    assert (sh["input"].lr, sh["output"].lr) == pytest.approx((0.2, 0.05))
    assert (sh["input"].eps, sh["hidden"].eps, sh["output"].eps) == pytest.approx((2.5e-5, 1e-4, 4e-4))
    so = {s.role: s for s in layer_scales(model, "mup", "soap", lr=0.1, damping=1e-4)}
    assert (so["input"].lr, so["hidden"].lr, so["output"].lr) == pytest.approx((0.2, 0.1, 0.05))
    assert (so["input"].eps, so["hidden"].eps, so["output"].eps) == pytest.approx((5e-5, 1e-4, 2e-4))
    mu = {s.role: s for s in layer_scales(model, "mup", "muon", lr=0.1)}
    assert (mu["input"].lr, mu["output"].lr, mu["hidden"].bias_lr) == pytest.approx((0.2, 0.05, 0.1))


def test_make_optimizer_wires_the_table_into_param_groups():
    model = ml.MLP(10, 3, width=256, base_width=64, param="mup", bias=True, seed=0)
    sgd = ml.make_optimizer(model, "sgd", lr=0.1)
    lrs = {g["layer"]: g["lr"] for g in sgd.param_groups}
    assert lrs["layers.0"] == pytest.approx(0.4) and lrs["layers.2"] == pytest.approx(0.025)
    assert lrs["layers.1.bias"] == pytest.approx(0.4) and lrs["layers.2.bias"] == pytest.approx(0.1)
    kfac = ml.make_optimizer(model, "kfac", lr=0.1, damping=0.01)
    hid = [g for g in kfac.param_groups if g["layer"] == "layers.1"][0]
    assert hid["damping_a"] == pytest.approx(0.04) and hid["damping_b"] == pytest.approx(0.0025)
    fixed = ml.make_optimizer(model, "kfac", lr=0.1, damping=0.01, damping_mode="fixed")
    assert all(g["damping_a"] is None for g in fixed.param_groups)
    graft = ml.make_optimizer(model, "shampoo", lr=0.1, grafting="adam")
    assert {g["layer"]: g["lr"] for g in graft.param_groups}["layers.1"] == pytest.approx(0.025)


def test_cnn_and_tagged_user_models_get_roles():
    cnn = ml.CNN(image_shape=(1, 8, 8), d_out=10, width=16, depth=3, base_width=8, seed=0)
    assert [r for _, _, r in ml.layer_roles(cnn)] == ["input", "hidden", "output"]
    assert cnn(torch.randn(2, 64)).shape == (2, 10)
    hidden = cnn.convs[1]
    assert float(hidden.weight.detach().std()) == pytest.approx(1 / math.sqrt(16 * 9), rel=0.1)
    net = ml.tag_roles(nn.Sequential(nn.Linear(5, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                                     nn.Linear(32, 2)), width=32, base_width=16)
    assert [r for _, _, r in ml.layer_roles(net)] == ["input", "hidden", "output"]
    ml.init_weights(net, "mup", "kfac")
    assert float(net[4].weight.detach().std()) == pytest.approx(1 / math.sqrt(16) * 2 ** -1, rel=0.35)
