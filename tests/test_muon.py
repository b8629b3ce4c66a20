"""Muon against dense float64 math: momentum, U V^T by SVD, the Newton-Schulz polynomial, Adam for
vectors; the width rules of make_optimizer; checkpoints; a one-step coordinate check."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mupso_lite as ml
from mupso_lite.coord import STABLE
from mupso_lite.optim.muon import NS_COEFFICIENTS, orthogonalize

from optim_helpers import seeded_steps, small_mlp

DATA = ml.datasets.teacher(n_train=256, n_test=64)


def u_vt(d):
    """U_r V_r^T over the nonzero singular values, from a float64 SVD."""
    u, s, vh = torch.linalg.svd(d.double(), full_matrices=False)
    r = int((s > s[0] * 1e-10).sum())
    return u[:, :r] @ vh[:r]


def ns_dense(d, steps):
    """Newton-Schulz as what it does to the singular values: U f^k(S / |D|_F) V^T, f(s) = a s + b s^3 + c s^5."""
    a, b, c = NS_COEFFICIENTS
    u, s, vh = torch.linalg.svd(d, full_matrices=False)
    s = s / (torch.linalg.matrix_norm(d) + 1e-7)
    for _ in range(steps):
        s = a * s + b * s ** 3 + c * s ** 5
    return u @ torch.diag(s) @ vh


def well_conditioned(rows=20, cols=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    q1 = torch.linalg.qr(torch.randn(rows, rows, generator=g, dtype=torch.float64))[0]
    q2 = torch.linalg.qr(torch.randn(cols, cols, generator=g, dtype=torch.float64))[0]
    k = min(rows, cols)
    return q1[:, :k] @ torch.diag(torch.linspace(1, 2, k, dtype=torch.float64)) @ q2[:, :k].T


def test_svd_orthogonalization_is_u_vt_and_keeps_null_directions_zero():
    g = torch.Generator().manual_seed(1)
    d = torch.randn(12, 3, generator=g, dtype=torch.float64) @ torch.randn(3, 7, generator=g, dtype=torch.float64)
    o = orthogonalize(d, "svd")
    torch.testing.assert_close(o, u_vt(d))
    assert torch.linalg.matrix_rank(o) == 3
    torch.testing.assert_close(torch.linalg.svdvals(o)[:3], torch.ones(3, dtype=torch.float64))
    assert orthogonalize(torch.zeros(4, 5), "svd").abs().max() == 0


@pytest.mark.parametrize("shape", [(20, 12), (12, 20)])   # tall matrices are transposed inside
def test_newton_schulz_keeps_singular_vectors_and_lands_in_the_band(shape):
    d = well_conditioned(*shape)
    u, _, vh = torch.linalg.svd(d, full_matrices=False)
    for steps in (1, 3, 5, 8):
        o = orthogonalize(d, "newton_schulz", steps)
        torch.testing.assert_close(o, ns_dense(d, steps), rtol=0, atol=1e-10)
        inner = u.T @ o @ vh.T                      # diagonal: the same singular vectors as D
        assert (inner - torch.diag(torch.diagonal(inner))).abs().max() < 1e-10
    sv = torch.diagonal(u.T @ orthogonalize(d, "newton_schulz", 5) @ vh.T)
    assert sv.min() >= 0.68 and sv.max() <= 1.14, sv


def test_newton_schulz_error_does_not_shrink_with_more_steps():
    """The quintic's coefficients put 1 off its fixed points (f(1) = 0.70): the singular values
    bounce inside [0.68, 1.14] and the error against U V^T stays about 20%, at 5 steps as at 30."""
    d = well_conditioned()
    ref = u_vt(d)
    err = {k: float((orthogonalize(d, "newton_schulz", k) - ref).norm() / ref.norm()) for k in (0, 1, 5, 10, 30)}
    assert err[0] > 0.5 and err[1] < 0.3     # the first step does the bulk of the work ...
    assert min(err[5], err[10], err[30]) > 0.15, err   # ... and then it plateaus, no convergence
    for k in (5, 10, 30):
        sv = torch.linalg.svdvals(orthogonalize(d, "newton_schulz", k))
        assert sv.min() >= 0.68 and sv.max() <= 1.14


def net(bias=True, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6, bias=bias), nn.Tanh(), nn.Linear(6, 3, bias=bias)).double()


def batch(seed, n=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


@pytest.mark.parametrize("method", ["svd", "newton_schulz"])
@pytest.mark.parametrize("nesterov", [True, False])
def test_three_steps_equal_dense_reference(method, nesterov):
    model = net()
    lr, mu, wd, betas, eps = 0.05, 0.9, 0.1, (0.8, 0.9), 1e-8
    opt = ml.Muon(model.parameters(), lr=lr, momentum=mu, nesterov=nesterov, weight_decay=wd,
                  orthogonalize=method, betas=betas, eps=eps)
    shadow = copy.deepcopy(model)   # its biases follow torch's AdamW
    adamw = torch.optim.AdamW([shadow[0].bias, shadow[2].bias], lr=lr, betas=betas, eps=eps, weight_decay=wd)
    bufs = {}
    for step in range(3):
        x, y = batch(step)
        ws = [m.weight.detach().clone() for m in (model[0], model[2])]
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        grads = [m.weight.grad.clone() for m in (model[0], model[2])]
        adamw.zero_grad()
        for a, b in zip((shadow[0].bias, shadow[2].bias), (model[0].bias, model[2].bias)):
            a.grad = b.grad.clone()
        opt.step()
        adamw.step()
        for k, (m, w, g) in enumerate(zip((model[0], model[2]), ws, grads)):
            b = bufs[k] = mu * bufs.get(k, 0) + g                   # B <- mu B + G
            d = g + mu * b if nesterov else b
            o = u_vt(d) if method == "svd" else ns_dense(d, 5)
            torch.testing.assert_close(m.weight.detach(), w * (1 - lr * wd) - lr * o)
        torch.testing.assert_close(model[0].bias, shadow[0].bias)
        torch.testing.assert_close(model[2].bias, shadow[2].bias)


def test_conv_weights_are_orthogonalized_as_out_by_in_k_k():
    cnn = ml.CNN(image_shape=(2, 5, 5), d_out=3, width=6, depth=2, seed=0).double()
    opt = ml.Muon(cnn.parameters(), lr=0.1, orthogonalize="svd", momentum=0.0)
    w0 = cnn.convs[0].weight.detach().clone()
    F.cross_entropy(cnn(torch.randn(4, 50, dtype=torch.float64)), torch.tensor([0, 1, 2, 0])).backward()
    g = cnn.convs[0].weight.grad.reshape(6, -1).clone()
    opt.step()
    torch.testing.assert_close(cnn.convs[0].weight.detach(), w0 - 0.1 * u_vt(g).reshape(w0.shape))


def test_use_muon_false_gives_the_matrices_adam():
    model = net(bias=False)
    opt = ml.Muon([{"params": [model[0].weight]}, {"params": [model[2].weight], "use_muon": False}], lr=0.01)
    x, y = batch(0)
    F.cross_entropy(model(x), y).backward()
    opt.step()
    assert set(opt.state[model[0].weight]) == {"momentum_buffer"}
    assert set(opt.state[model[2].weight]) == {"step", "exp_avg", "exp_avg_sq"}


def test_a_bfloat16_model_trains():
    model = ml.MLP(DATA.d_in, DATA.d_out, width=32, seed=0, bias=True).to(torch.bfloat16)
    opt = ml.make_optimizer(model, "muon", lr=0.02)
    recs = ml.run(model, opt, DATA, steps=30)
    assert recs[-1]["loss"] < 0.6 * recs[0]["loss"] and not recs[-1]["diverged"]
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert opt.state[model.layers[1].weight]["momentum_buffer"].dtype == torch.float32


def test_state_dict_round_trip_and_refusals(tmp_path):
    model = small_mlp(24)
    opt = ml.make_optimizer(model, "muon", lr=0.02)
    seeded_steps(model, opt, range(6))
    straight = [p.detach().clone() for p in model.parameters()]
    model = small_mlp(24)
    opt = ml.make_optimizer(model, "muon", lr=0.02)
    seeded_steps(model, opt, range(3))
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
    model, ckpt = small_mlp(24), torch.load(tmp_path / "ckpt.pt")
    opt = ml.make_optimizer(model, "muon", lr=0.02)
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    seeded_steps(model, opt, range(3, 6))
    for a, b in zip(model.parameters(), straight):
        torch.testing.assert_close(a.detach(), b)
    for other, words in ((ml.make_optimizer(small_mlp(32), "muon", lr=0.02), "another width"),
                         (ml.make_optimizer(small_mlp(24), "muon", lr=0.02, io="adam"), "use_muon"),
                         (ml.make_optimizer(small_mlp(24), "muon", lr=0.02, lr_rule="original"), "lr_rule")):
        with pytest.raises(ValueError, match=words):
            other.load_state_dict(ckpt["opt"])


def test_make_optimizer_lr_factors_follow_the_table():
    def lrs(model, **options):
        return {g["layer"]: g["lr"] for g in ml.make_optimizer(model, "muon", lr=0.02, **options).param_groups}
    wide = ml.MLP(16, 4, width=256, base_width=64, bias=True, seed=0)
    base = ml.MLP(16, 4, width=64, base_width=64, bias=True, seed=0)
    w, b = lrs(wide), lrs(base)
    assert w["layers.0"] / b["layers.0"] == pytest.approx(math.sqrt(256 / 64))   # input: sqrt(M/M0)
    assert w["layers.1"] / b["layers.1"] == pytest.approx(1.0)
    assert w["layers.2"] / b["layers.2"] == pytest.approx(math.sqrt(64 / 256))   # output: sqrt(M0/M)
    assert b["layers.0"] == b["layers.1"] == b["layers.2"] == 0.02               # muP == SP at M0
    assert w["layers.0.bias"] == w["layers.2.bias"] == 0.02                       # Adam's bias rule
    io = lrs(wide, io="adam", adam_lr=0.003)
    assert io["layers.0"] == pytest.approx(0.003) and io["layers.2"] == pytest.approx(0.003 * 64 / 256)  # muP-Adam
    assert io["layers.1"] == pytest.approx(0.02) and io["layers.1.bias"] == pytest.approx(0.003)
    orig = lrs(wide, lr_rule="original")           # sqrt(max(1, rows / cols)), no width factor
    assert (orig["layers.0"], orig["layers.1"], orig["layers.2"]) == pytest.approx((0.08, 0.02, 0.02))
    rms = lrs(wide, lr_rule="match_rms_adamw")     # 0.2 sqrt(max(rows, cols))
    assert (rms["layers.0"], rms["layers.2"]) == pytest.approx((0.2 * 0.02 * 16, 0.2 * 0.02 * 16))
    sp = lrs(ml.MLP(16, 4, width=256, base_width=64, param="sp", seed=0))
    assert set(sp.values()) == {0.02}


def test_parametrized_model_sends_outside_parameters_to_adam():
    def build(width):
        return nn.Sequential(nn.Linear(DATA.d_in, width), nn.LayerNorm(width), nn.Tanh(),
                             nn.Linear(width, width), nn.Tanh(), nn.Linear(width, DATA.d_out))
    model = ml.parametrize(build(64), build(16))
    opt = ml.make_optimizer(model, "muon", lr=0.02, adam_lr=0.005)
    norm = [g for g in opt.param_groups if any(p is model[1].weight for p in g["params"])][0]
    assert norm["use_muon"] is False and norm["lr"] == pytest.approx(0.005)
    hidden = [g for g in opt.param_groups if g["layer"] == "3"][0]
    assert hidden["use_muon"] is True and hidden["lr"] == pytest.approx(0.02)
    recs = ml.run(model, opt, DATA, steps=5)
    assert not recs[-1]["diverged"]


@pytest.mark.parametrize("call, words", [
    (lambda m: ml.make_optimizer(m, "muon", lr=0.02, io="sgd"), "io: expected one of 'muon', 'adam'"),
    (lambda m: ml.make_optimizer(m, "muon", lr=0.02, lr_rule="spectral"), "lr_rule: expected one of"),
    (lambda m: ml.make_optimizer(m, "muon", lr=0.02, adam_lr=-1.0), "adam_lr: expected a finite number > 0"),
    (lambda m: ml.make_optimizer(m, "muon", lr=0.02, momentum=1.0), "momentum: expected a number in"),
    (lambda m: ml.Muon(m.parameters(), ns_steps=0), "ns_steps: expected a positive integer"),
    (lambda m: ml.Muon(m.parameters(), orthogonalize="qr"), "orthogonalize: expected one of"),
    (lambda m: ml.Muon(m.parameters(), betas=(0.9, 1.0)), "betas: expected two numbers in"),
])
def test_bad_arguments_are_refused_by_name(call, words):
    model = small_mlp(16)
    with pytest.raises(ValueError, match=words):
        call(model)


def _coord(param, **options):
    def model_fn(width, seed=0):
        return ml.MLP(DATA.d_in, DATA.d_out, width, depth=3, base_width=64, param=param, seed=seed)
    cc = ml.coord_check(model_fn, "muon", param, widths=(64, 128, 256), steps=(1,), seeds=(0, 1), data=DATA,
                        lr=0.02, device="cpu", **options)
    return cc.slopes(1), cc.slopes_by_role(1)


@pytest.mark.parametrize("method", ["newton_schulz", "svd"])
def test_mup_coordinate_check_is_flat_at_step_1(method):
    slopes, _ = _coord("mup", orthogonalize=method)
    assert all(abs(s) < STABLE for s in slopes.values()), slopes


def test_sp_with_one_lr_is_not():
    """Theory (batch of one): (input, hidden, output) slopes (-1/2, 0, 1/2)."""
    _, by_role = _coord("sp")
    assert by_role["input"] < -0.35 and by_role["output"] > 0.25, by_role


@pytest.mark.parametrize("name", ["muon", "soap"])
def test_weight_decay_shrinks_every_group_by_the_same_factor_at_every_width(name):
    """make_optimizer sets wd per group so that lr_group wd_group = lr wd (adam_lr wd for Adam)."""
    for width in (16, 64):
        model = ml.MLP(12, 3, width=width, depth=3, base_width=16, bias=True, seed=0)
        opt = ml.make_optimizer(model, name, lr=0.02, adam_lr=0.01, weight_decay=0.5)
        flag = "use_muon" if name == "muon" else "use_soap"
        lrs = {g["layer"]: g["lr"] for g in opt.param_groups}
        assert len(set(lrs.values())) > 1 or width == 16       # the lrs differ by role at width 64
        for g in opt.param_groups:
            want = (0.02 if g[flag] else 0.01) * 0.5
            assert g["lr"] * g["weight_decay"] == pytest.approx(want, rel=1e-12)
        # one step with a zero gradient: every parameter shrinks by (1 - lr wd) exactly
        before = [p.detach().clone() for p in model.parameters()]
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        if name == "muon":
            opt.step()
            for g in opt.param_groups:
                for p in g["params"]:
                    i = [id(q) for q in model.parameters()].index(id(p))
                    shrink = 1 - (0.02 if g[flag] else 0.01) * 0.5
                    torch.testing.assert_close(p.detach(), before[i] * shrink)
