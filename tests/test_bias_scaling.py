"""Biases under muP K-FAC and Shampoo move at every width (``scaling.layer_scales``).

K-FAC: A's bias coordinate is 1 while a growing fan-in's |x|^2 grows like M; damped by the
one rho_A ~ M of the table, the bias moved like M^-1. ``damping_bias`` = rho_A M0/M (hidden,
output) restores an O(1) bias change.
Shampoo: a bias of size n with entries of size s gets u_i ~ s^(1-4e) n^-e from its diagonal
preconditioner; ``bias_lr`` ~ M^(1-3e) and ``bias_eps`` ~ M^-2 for input and hidden biases.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mupso_lite as ml
from mupso_lite.coord import STABLE


def test_layer_scales_damp_the_bias_coordinate_at_its_own_scale():
    model = ml.MLP(16, 4, 256, depth=3, base_width=64, bias=True)
    scales = {s.role: s for s in ml.layer_scales(model, "mup", "kfac", damping=0.1)}
    assert scales["input"].damping_bias == pytest.approx(scales["input"].damping_a)
    for role in ("hidden", "output"):
        assert scales[role].damping_bias == pytest.approx(scales[role].damping_a / 4)   # M/M0 = 4
    assert scales["hidden"].damping_bias == pytest.approx(0.1)    # hidden rho_A ~ M: the bias keeps rho
    assert all(s.damping_bias is None for s in ml.layer_scales(model, "sp", "kfac", damping=0.1))


def groups(model, damping_bias=0.05):
    names = ml.optim.KFAC(model).modules_by_name
    return [{"params": [m.weight, m.bias], "layer": name, "damping_a": 0.3, "damping_b": 0.2,
             "damping_bias": damping_bias} for name, m in names.items()]


def batches(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(5, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (5,), generator=g))
            for _ in range(n)]


def test_kfac_step_with_a_bias_damping_equals_the_dense_formula():
    """-lr (B + rho_B I)^-1 G (A + diag(rho_A, ..., rho_A, rho_bias))^-1, first step (A, B = the batch's)."""
    model = ml.MLP(6, 3, 16, depth=2, bias=True, seed=0).double()
    opt = ml.KFAC(model, lr=0.1, params=groups(model), fast=False)
    (x, y), = batches(1)
    before = [torch.cat([m.weight, m.bias[:, None]], 1).detach().clone() for m in model.layers]
    acts = [x, torch.tanh(model.layers[0](x)).detach()]
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    grads = [torch.cat([m.weight.grad, m.bias.grad[:, None]], 1) for m in model.layers]
    opt.step()
    for m, a_in, g, w0 in zip(model.layers, acts, grads, before):
        xh = torch.cat([a_in, torch.ones(len(a_in), 1, dtype=a_in.dtype)], 1)
        A, B = xh.T @ xh / len(xh), opt.state[m.weight]["B"]
        torch.testing.assert_close(opt.state[m.weight]["A"], A)
        d = torch.full((xh.shape[1],), 0.3, dtype=A.dtype)
        d[-1] = 0.05
        want = torch.linalg.solve(B + 0.2 * torch.eye(len(B), dtype=A.dtype), g) @ torch.linalg.inv(A + torch.diag(d))
        got = (w0 - torch.cat([m.weight, m.bias[:, None]], 1).detach()) / 0.1
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("ema", [0.95, 0.0])   # 0.0 with intervals 1: the push-through path
def test_fast_paths_with_a_bias_damping_equal_the_plain_formula(ema):
    outs = []
    for fast in (True, False):
        model = ml.MLP(6, 3, 16, depth=3, bias=True, seed=0).double()
        opt = ml.KFAC(model, lr=0.1, params=groups(model), ema_decay=ema, inverse_interval=1, fast=fast)
        for x, y in batches():
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        outs.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b)


def bias_slopes(optimizer, widths=(64, 128, 256, 512, 1024), seeds=(0, 1), **opts):
    """Width exponents of the rms bias change after 3 steps (input, hidden, output), from ml.coord_check."""
    data = ml.data.load("teacher")
    cc = ml.coord_check(lambda w, seed=0: ml.MLP(data.d_in, data.d_out, w, depth=3, base_width=64, bias=True,
                                                  seed=seed),
                        optimizer, "mup", widths=widths, steps=[3], seeds=seeds, data=data, lr=0.1,
                        device="cpu", **opts)
    slopes = cc.slopes_by_role(3)
    return [slopes[f"{role} bias"] for role in ("input", "hidden", "output")]


def test_mup_kfac_biases_move_at_every_width():
    """Width exponents of the rms bias change after 3 steps (input, hidden, output) are flat."""
    slopes = bias_slopes("kfac", damping=0.1, inverse_interval=1)
    assert all(abs(s) < 0.1 for s in slopes), slopes   # measured +0.08 / +0.05 / +0.05


def test_mup_kfac_bias_damping_is_what_keeps_biases_moving():
    """The same run with the bias coordinate damped by the layer's rho_A: hidden and output biases freeze."""
    from mupso_lite import scaling
    real = scaling.layer_scales

    def shared_rho(*a, **k):
        return [s.__class__(**{**s.__dict__, "damping_bias": s.damping_a}) for s in real(*a, **k)]
    import mupso_lite.optim.build as build
    old, build.layer_scales = build.layer_scales, shared_rho
    try:
        slopes = bias_slopes("kfac", damping=0.1, inverse_interval=1)
    finally:
        build.layer_scales = old
    assert slopes[1] < -0.25 and slopes[2] < -0.2, slopes   # measured -0.30 / -0.27


def test_shampoo_bias_rule_from_the_vector_update():
    """u_i = g_i / ((g_i^2 + eps)^e (|g|^2 + eps)^e) with eps -> 0 and g_i = s: u_i = s^(1-4e) n^-e."""
    for e in (0.25, 0.5):
        opt_of = {}
        for n, s in ((64, 1 / 64), (1024, 1 / 1024)):
            p = torch.zeros(n, dtype=torch.float64, requires_grad=True)
            p.grad = torch.full((n,), s, dtype=torch.float64)
            ml.Shampoo([p], lr=1.0, eps=0.0, root=e).step()
            opt_of[n] = float(-p.detach()[0])
            assert opt_of[n] == pytest.approx(s ** (1 - 4 * e) * n ** (-e), rel=1e-9)
        # the bias lr (M/M0)^(1-3e) of the table makes the update width-independent
        assert opt_of[1024] * 16 ** (1 - 3 * e) == pytest.approx(opt_of[64], rel=1e-9)
    model = ml.MLP(16, 4, 256, depth=3, base_width=64, bias=True)
    scales = {s.role: s for s in ml.layer_scales(model, "mup", "shampoo", lr=0.1, damping=1e-4)}
    assert scales["hidden"].bias_lr == pytest.approx(0.1 * 4 ** 0.25)
    assert scales["input"].bias_eps == pytest.approx(1e-4 / 16) and scales["output"].bias_lr == pytest.approx(0.1)
    assert {s.bias_lr for s in ml.layer_scales(model, "sp", "shampoo", lr=0.1)} == {0.1}


@pytest.mark.parametrize("opts", [dict(damping=1e-4), dict(damping=1e-3, eps_mode="relative"),
                                  dict(damping=1e-4, root=0.5, beta=None, update_interval=10)],
                         ids=["absolute", "relative", "root-half-sums"])
def test_mup_shampoo_biases_move_at_every_width(opts):
    """Before the bias rule (bias with its layer's lr and eps): +0.12 / -0.56 / -0.46 at eps 1e-4.
    Root 1/2 with running sums: with this batch's statistics (the default) root 1/2 is not
    width-stable at batch > 1 in its weights (docs/results.md section 6), and its output bias
    inherits that (+0.17 at step 3 here)."""
    slopes = bias_slopes("shampoo", **opts)
    assert all(abs(s) < 0.1 for s in slopes), slopes   # measured within 0.07 for all three


def test_coord_check_reports_bias_rows():
    model_fn = lambda w, seed=0: ml.MLP(16, 4, w, depth=2, base_width=32, bias=True, seed=seed)  # noqa: E731
    cc = ml.coord_check(model_fn, "sgd", widths=(32, 64), steps=1, seeds=(0,), device="cpu")
    assert set(cc.slopes_by_role(1)) == {"input", "output", "input bias", "output bias", "f"}
    assert (cc.frame[cc.frame.role == "input bias"]["feature_change"] > 0).all()
    no_bias = ml.coord_check(lambda w, seed=0: ml.MLP(16, 4, w, depth=2, base_width=32, seed=seed), "sgd",
                             widths=(32, 64), steps=1, seeds=(0,), device="cpu")
    assert not no_bias.frame["role"].str.endswith("bias").any()
