"""SOAP against dense float64 math: Shampoo's statistics, their eigenbasis, Adam in that basis;
step 1 = Muon's orthogonalized gradient; the width rules; checkpoints; coordinate checks."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mupso_lite as ml
from mupso_lite.coord import STABLE

from optim_helpers import seeded_steps, small_mlp

DATA = ml.datasets.teacher(n_train=256, n_test=64)


def soap_dense(w, grads, lr, betas, shampoo_beta, eps, wd, freq):
    """SOAP written out: yields W after each step (eigh bases; v carried by the squared overlaps)."""
    b1, b2 = betas
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    L, R = torch.zeros(w.shape[0], w.shape[0], dtype=w.dtype), torch.zeros(w.shape[1], w.shape[1], dtype=w.dtype)
    for t, g in enumerate(grads, 1):
        if t == 1:                               # the first basis comes from this gradient
            L, R = (1 - shampoo_beta) * g @ g.T, (1 - shampoo_beta) * g.T @ g
            ql, qr = torch.linalg.eigh(L)[1], torch.linalg.eigh(R)[1]
        gp = ql.T @ g @ qr
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * gp ** 2
        m_hat, v_hat = ql.T @ m @ qr / (1 - b1 ** t), v / (1 - b2 ** t)
        w = w * (1 - lr * wd) - lr * ql @ (m_hat / (v_hat.sqrt() + eps)) @ qr.T
        if t > 1:
            L = shampoo_beta * L + (1 - shampoo_beta) * g @ g.T
            R = shampoo_beta * R + (1 - shampoo_beta) * g.T @ g
            if t % freq == 0:
                new_l, new_r = torch.linalg.eigh(L)[1], torch.linalg.eigh(R)[1]
                v = (new_l.T @ ql) ** 2 @ v @ (qr.T @ new_r) ** 2
                ql, qr = new_l, new_r
        yield w, L, R


def test_steps_equal_the_dense_formula():
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(5, 4, generator=gen, dtype=torch.float64) for _ in range(8)]
    bias_grads = [torch.randn(5, generator=gen, dtype=torch.float64) for _ in range(8)]
    w = nn.Parameter(torch.randn(5, 4, generator=gen, dtype=torch.float64))
    b = nn.Parameter(torch.zeros(5, dtype=torch.float64))
    b_ref = nn.Parameter(torch.zeros(5, dtype=torch.float64))
    kw = dict(lr=0.1, betas=(0.9, 0.95), eps=1e-3, weight_decay=0.1)
    opt = ml.SOAP([w, b], shampoo_beta=0.8, precondition_frequency=3, **kw)
    adamw = torch.optim.AdamW([b_ref], **kw)    # the vector: plain AdamW
    dense = soap_dense(w.detach().clone(), grads, lr=0.1, betas=(0.9, 0.95), shampoo_beta=0.8, eps=1e-3, wd=0.1,
                       freq=3)
    for g, gb, (w_ref, L, R) in zip(grads, bias_grads, dense):
        w.grad, b.grad, b_ref.grad = g.clone(), gb.clone(), gb.clone()
        opt.step()
        adamw.step()
        torch.testing.assert_close(w.detach(), w_ref)
        torch.testing.assert_close(b, b_ref)
    st = opt.state[w]                              # after 8 steps, refreshed at steps 3 and 6
    torch.testing.assert_close(st["L"], L)
    torch.testing.assert_close(st["R"], R)


def test_the_basis_diagonalizes_the_statistics_it_was_computed_from():
    gen = torch.Generator().manual_seed(1)
    w = nn.Parameter(torch.zeros(6, 4, dtype=torch.float64))
    opt = ml.SOAP([w], precondition_frequency=4)
    for _ in range(8):   # refreshed at steps 4 and 8: the basis is eigh of the L, R kept now
        w.grad = torch.randn(6, 4, generator=gen, dtype=torch.float64)
        opt.step()
    st = opt.state[w]
    for q, f in ((st["Q_L"], st["L"]), (st["Q_R"], st["R"])):
        torch.testing.assert_close(q.T @ q, torch.eye(len(q), dtype=torch.float64))
        rotated = q.T @ f @ q
        torch.testing.assert_close(rotated, torch.diag(torch.diagonal(rotated)))
        torch.testing.assert_close(torch.diagonal(rotated), torch.linalg.eigvalsh(f))


def test_qr_refresh_approaches_the_eigenbasis():
    """The reference's refresh (one power iteration and a QR per refresh) ends near eigh's basis."""
    gen = torch.Generator().manual_seed(2)
    g = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    w = nn.Parameter(torch.zeros(6, 4, dtype=torch.float64))
    opt = ml.SOAP([w], precondition_frequency=1, refresh="qr")
    for _ in range(60):
        w.grad = g + 0.01 * torch.randn(6, 4, generator=gen, dtype=torch.float64)
        opt.step()
    st = opt.state[w]
    for q, f in ((st["Q_L"], st["L"]), (st["Q_R"], st["R"])):
        torch.testing.assert_close(q.T @ q, torch.eye(len(q), dtype=torch.float64))
        rotated = q.T @ f @ q
        off = rotated - torch.diag(torch.diagonal(rotated))
        assert off.abs().max() < 1e-3 * f.abs().max(), off


def test_first_step_is_the_orthogonalized_gradient():
    """Step 1: L, R ~ G G^T, G^T G, so G' = S, Adam's first step is S / (S + eps) ~ I on it, and the
    update is -lr U_r V_r^T (Muon's first step), up to eps / s_min."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    muon_net = copy.deepcopy(net)
    x = torch.randn(8, 6, dtype=torch.float64)     # batch 8 < width 16: G is rank-deficient
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    layers = [m for m in net if isinstance(m, nn.Linear)]
    w0 = [m.weight.detach().clone() for m in layers]
    opt = ml.SOAP([m.weight for m in layers], lr=0.1)
    F.cross_entropy(net(x), y).backward()
    grads = [m.weight.grad.clone() for m in layers]
    opt.step()
    for m, w, g in zip(layers, w0, grads):
        u, s, vh = torch.linalg.svd(g, full_matrices=False)
        r = int((s > s[0] * 1e-10).sum())
        assert r < min(g.shape) or m is layers[0]
        # atol: eps / s, and float64 rounding in the zero entries of G' divided by eps (~1e-7 here)
        torch.testing.assert_close(m.weight.detach(), w - 0.1 * u[:, :r] @ vh[:r], rtol=0, atol=1e-6)
    muon = ml.Muon([m.weight for m in muon_net if isinstance(m, nn.Linear)], lr=0.1, orthogonalize="svd")
    F.cross_entropy(muon_net(x), y).backward()
    muon.step()
    for a, b in zip(layers, [m for m in muon_net if isinstance(m, nn.Linear)]):
        torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=1e-6)


def test_a_bfloat16_model_trains():
    model = ml.MLP(DATA.d_in, DATA.d_out, width=32, seed=0, bias=True).to(torch.bfloat16)
    opt = ml.make_optimizer(model, "soap", lr=0.01)
    recs = ml.run(model, opt, DATA, steps=30)
    assert recs[-1]["loss"] < 0.6 * recs[0]["loss"] and not recs[-1]["diverged"]   # float32: 1.32 -> 0.51
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert opt.state[model.layers[1].weight]["Q_L"].dtype == torch.float32


def test_state_dict_round_trip_and_refusals(tmp_path):
    def build(width, **options):
        return ml.make_optimizer(small_mlp(width), "soap", lr=0.003, precondition_frequency=2, **options)
    straight_model = small_mlp(24)
    straight = ml.make_optimizer(straight_model, "soap", lr=0.003, precondition_frequency=2)
    seeded_steps(straight_model, straight, range(6))
    model = small_mlp(24)
    opt = ml.make_optimizer(model, "soap", lr=0.003, precondition_frequency=2)
    seeded_steps(model, opt, range(3))
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
    model, ckpt = small_mlp(24), torch.load(tmp_path / "ckpt.pt")
    opt = ml.make_optimizer(model, "soap", lr=0.003, precondition_frequency=2)
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    seeded_steps(model, opt, range(3, 6))
    for a, b in zip(model.parameters(), straight_model.parameters()):
        torch.testing.assert_close(a, b)
    for other, words in ((build(32), "another width"), (build(24, io="adam"), "use_soap")):
        with pytest.raises(ValueError, match=words):
            other.load_state_dict(ckpt["opt"])


def test_make_optimizer_lr_and_eps_follow_the_table():
    def groups(width):
        m = ml.MLP(16, 4, width=width, base_width=64, bias=True, seed=0)
        return {g["layer"]: g for g in ml.make_optimizer(m, "soap", lr=0.003, damping=1e-6).param_groups}
    wide, base = groups(256), groups(64)
    ratio = lambda key, layer: wide[layer][key] / base[layer][key]  # noqa: E731
    assert (ratio("lr", "layers.0"), ratio("lr", "layers.1"), ratio("lr", "layers.2")) == \
        pytest.approx((math.sqrt(4), 1, 1 / math.sqrt(4)))          # lr ~ sqrt(fan_out / fan_in)
    assert (ratio("eps", "layers.0"), ratio("eps", "layers.1"), ratio("eps", "layers.2")) == \
        pytest.approx((1 / math.sqrt(4), 1, math.sqrt(4)))          # eps ~ |delta| |x|
    assert base["layers.1"]["eps"] == 1e-6 and base["layers.1"]["lr"] == 0.003
    assert wide["layers.1.bias"]["use_soap"] is False and wide["layers.1.bias"]["eps"] == 1e-8


@pytest.mark.parametrize("call, words", [
    (lambda m: ml.make_optimizer(m, "soap", lr=0.003, lr_rule="original"), "lr_rule: only Muon"),
    (lambda m: ml.make_optimizer(m, "soap", lr=0.003, io="muon"), "io: expected one of 'soap', 'adam'"),
    (lambda m: ml.make_optimizer(m, "soap", lr=0.003, damping=-1.0), "damping: expected a finite number >= 0"),
    (lambda m: ml.SOAP(m.parameters(), precondition_frequency=0), "precondition_frequency: expected a positive"),
    (lambda m: ml.SOAP(m.parameters(), refresh="svd"), "refresh: expected one of 'eigh', 'qr'"),
    (lambda m: ml.SOAP(m.parameters(), shampoo_beta=1.0), "shampoo_beta: expected None"),
])
def test_bad_arguments_are_refused_by_name(call, words):
    with pytest.raises(ValueError, match=words):
        call(small_mlp(16))


def _coord(param, steps=(1,), lr=0.003, **options):
    def model_fn(width, seed=0):
        return ml.MLP(DATA.d_in, DATA.d_out, width, depth=3, base_width=64, param=param, seed=seed)
    cc = ml.coord_check(model_fn, "soap", param, widths=(64, 128, 256), steps=steps, seeds=(0, 1), data=DATA,
                        lr=lr, device="cpu", **options)
    return cc


@pytest.mark.parametrize("step_count", [1, 3])
def test_spectral_rescales_each_step_to_spectral_norm_lr(step_count):
    """spectral=True: dW = -lr N / |N|_2, N the plain SOAP step (same state, same gradients)."""
    model = small_mlp(16)
    plain = ml.make_optimizer(model, "soap", lr=0.01)
    twin = copy.deepcopy(model)
    spectral = ml.make_optimizer(twin, "soap", lr=0.01, spectral=True)
    seeded_steps(model, plain, range(step_count - 1))
    seeded_steps(twin, spectral, range(step_count - 1))
    # the states agree (the statistics and moments do not depend on the step's size) ...
    before = [p.detach().clone() for p in model.parameters()]
    twin_before = [p.detach().clone() for p in twin.parameters()]
    seeded_steps(model, plain, [step_count])
    seeded_steps(twin, spectral, [step_count])
    for g, h in zip(plain.param_groups, spectral.param_groups):
        if not g["use_soap"]:
            continue
        p, q = g["params"][0], h["params"][0]
        i = [id(x) for x in model.parameters()].index(id(p))
        n = -(p.detach() - before[i]) / g["lr"]                     # the plain step N
        d = (q.detach() - twin_before[i]).reshape(q.shape[0], -1)   # ... and the rescaled one
        assert torch.linalg.matrix_norm(d, ord=2).item() == pytest.approx(h["lr"], rel=1e-4)
        if step_count == 1:   # same state: the same direction
            want = -h["lr"] * n / torch.linalg.matrix_norm(n, ord=2)
            torch.testing.assert_close(d, want.reshape(d.shape), rtol=1e-4, atol=1e-7)


def test_spectral_soap_stays_flat_after_step_1_where_the_default_grows():
    default = _coord("mup", steps=(3,)).slopes_by_role(3)
    spectral = _coord("mup", steps=(3,), lr=0.03, spectral=True).slopes_by_role(3)
    assert default["input"] > 0.3 and default["hidden"] > 0.3, default
    assert all(abs(s) < STABLE for s in spectral.values()), spectral


def test_mup_coordinate_check_is_flat_at_step_1_and_sp_is_not():
    mup = _coord("mup", steps=(1, 2))
    assert all(abs(s) < STABLE for s in mup.slopes(1).values()), mup.slopes(1)
    sp = _coord("sp").slopes_by_role(1)          # theory (batch of one): (-1/2, 0, 1/2), as Muon
    assert sp["input"] < -0.35 and sp["output"] > 0.25, sp
    # From step 2 the basis is older than the gradient: Adam's entrywise division makes the step
    # dense in the eigenbasis (Adam-like), and the one-step row no longer holds. Measured here, and
    # over widths 64...2048: feature changes grow like M^0.5 at the input and hidden layers.
    later = mup.slopes_by_role(2)
    assert later["input"] > 0.3 and later["hidden"] > 0.3, later
