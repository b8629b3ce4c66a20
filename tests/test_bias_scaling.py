"""Biases under muP K-FAC: the homogeneous coordinate is damped at its own scale.

A's bias coordinate is 1 while a growing fan-in's |x|^2 grows like M; damped by the one
rho_A ~ M of the table, the bias moved like M^-1. ``damping_bias`` = rho_A M0/M (hidden,
output) restores an O(1) bias change (``scaling.layer_scales``).
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
    data = ml.data.load("teacher")
    change = {}
    for w in widths:
        for seed in seeds:
            model = ml.MLP(data.d_in, data.d_out, w, depth=3, base_width=64, bias=True, seed=seed)
            opt = ml.make_optimizer(model, optimizer, lr=0.1, **opts)
            b0 = [m.bias.detach().clone() for m in model.layers]
            ml.run(model, opt, data, steps=3, seed=seed)
            for i, m in enumerate(model.layers):
                change.setdefault(i, {}).setdefault(w, []).append(float((m.bias.detach() - b0[i]).pow(2).mean().sqrt()))
    return [ml.fit_slope(widths, [np.mean(change[i][w]) for w in widths]) for i in sorted(change)]


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
