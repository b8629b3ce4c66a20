"""Every fast path equals the dense path in float64, and the optimizer state is the size we claim.

Fast paths (see docs/performance.md): the low-rank reassociation (P_L gout^T)(x P_R), the
push-through solve for current-batch K-FAC factors, the thin-SVD update for current-batch
Shampoo statistics, the fused EMA/sum updates (addmm_) and the
Cholesky-solve inverse.
"""
import pytest
import torch
import torch.nn.functional as F

import mupso_lite as ml
from mupso_lite.optim.linalg import (current_batch_root_update, damped_inverse, inverse_root, precondition,
                                    pushthrough_precondition)


@pytest.fixture(autouse=True)
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def dense_kfac(gout, x, n, rho_b, rho_a):
    """(B + rho_b I)^-1 G (A + rho_a I)^-1 with A = x^T x / R, B = n gout^T gout, G = gout^T x."""
    A, B, G = x.T @ x / x.shape[0], n * gout.T @ gout, gout.T @ x
    left = torch.eye(len(B)) if rho_b is None else torch.linalg.inv(B + rho_b * torch.eye(len(B)))
    return left @ G @ torch.linalg.inv(A + rho_a * torch.eye(len(A)))


@pytest.mark.parametrize("rows,out_dim,in_dim", [(6, 20, 30), (40, 20, 30), (25, 20, 30)])
@pytest.mark.parametrize("foof", [False, True])
def test_pushthrough_equals_dense(rows, out_dim, in_dim, foof):
    torch.manual_seed(0)
    gout, x = torch.randn(rows, out_dim) / rows, torch.randn(rows, in_dim)
    rho_b = None if foof else 0.03
    got = pushthrough_precondition(gout, x, rows, rho_b, 0.07)
    torch.testing.assert_close(got, dense_kfac(gout, x, rows, rho_b, 0.07))


@pytest.mark.parametrize("rows,out_dim,in_dim", [(6, 20, 30), (40, 20, 30), (25, 20, 30)])
def test_pushthrough_with_sampled_fisher_rows_equals_dense(rows, out_dim, in_dim):
    """MC Fisher: B = n s^T s from sampled rows s while G = gout^T x keeps the true rows
    (Woodbury in R x R form when R < out, a dense solve otherwise)."""
    torch.manual_seed(4)
    gout, s, x = torch.randn(rows, out_dim) / rows, torch.randn(rows, out_dim) / rows, torch.randn(rows, in_dim)
    A, B, G = x.T @ x / rows, rows * s.T @ s, gout.T @ x
    dense = torch.linalg.inv(B + 0.03 * torch.eye(out_dim)) @ G @ torch.linalg.inv(A + 0.07 * torch.eye(in_dim))
    torch.testing.assert_close(pushthrough_precondition(gout, x, rows, 0.03, 0.07, fisher_gout=s), dense)


@pytest.mark.parametrize("threads", [1, 2])     # cholesky_inverse, then cholesky_solve(I)
def test_cholesky_inverse_equals_inv(threads):
    torch.manual_seed(1)
    a = torch.randn(50, 8)
    f = a @ a.T                                  # rank 8: the damping makes it invertible
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        inv = damped_inverse(f, 0.01)
    finally:
        torch.set_num_threads(old)
    torch.testing.assert_close(inv, torch.linalg.inv(f + 0.01 * torch.eye(50)))
    assert inv.is_contiguous()


def test_lowrank_precondition_equals_dense_both_orders():
    torch.manual_seed(2)
    for rows, out_dim, in_dim in ((4, 30, 20), (50, 30, 20)):   # low-rank taken, then not
        gout, x = torch.randn(rows, out_dim), torch.randn(rows, in_dim)
        left, right = torch.randn(out_dim, out_dim), torch.randn(in_dim, in_dim)
        grad = gout.T @ x
        torch.testing.assert_close(precondition(left, grad, right, gout, x), left @ grad @ right)
        torch.testing.assert_close(precondition(left, grad, None, gout, x), left @ grad)


def batches(n=5, rows=8, d_in=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(rows, d_in, generator=g), torch.randint(0, 3, (rows,), generator=g)) for _ in range(n)]


def train(opt, model, data):
    for step, (x, y) in enumerate(data):
        opt.zero_grad()
        out = model(x)
        if hasattr(opt, "sample_fisher"):   # the MC Fisher draws the same targets in every run
            torch.manual_seed(100 + step)
            opt.sample_fisher(out)
        F.cross_entropy(out, y).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("width", [4, 32])          # batch 8: R > width, then R < width
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("mode,foof,fisher", [("given", False, "empirical"), ("pi", False, "empirical"),
                                              ("trace", False, "empirical"), ("given", True, "empirical"),
                                              ("given", False, "mc"), ("trace", False, "mc")])
def test_kfac_pushthrough_step_equals_factor_path(width, bias, mode, foof, fisher):
    """The defaults (ema_decay=0, intervals 1) take the push-through path, for the empirical and
    the MC Fisher alike; each step equals the plain formula with this batch's factors."""
    data = batches()
    kw = dict(lr=0.2, damping=0.05, damping_mode=mode, foof=foof, fisher=fisher)
    fast_model = ml.MLP(6, 3, width, depth=3, bias=bias, seed=0).double()
    fast = ml.KFAC(fast_model, **kw)
    ref_model = ml.MLP(6, 3, width, depth=3, bias=bias, seed=0).double()
    ref = ml.KFAC(ref_model, fast=False, **kw)          # the plain formula: factors + inverses
    for a, b in zip(train(fast, fast_model, data), train(ref, ref_model, data)):
        torch.testing.assert_close(a, b)
    for m, rm in zip(fast_model.layers, ref_model.layers):
        st, rst = fast.state[m.weight], ref.state[rm.weight]
        inputs = m.in_features + (m.bias is not None)
        if 8 >= inputs and 8 >= m.out_features:   # the batch covers the layer: this batch's factors, inverted
            assert "A_inv" in st
        else:                                     # push-through: nothing M x M is stored
            assert "A" not in st and "A_inv" not in st
        assert (st["rho_a"], st["rho_b"]) == pytest.approx((rst["rho_a"], rst["rho_b"]))


def test_check_batch_off_gives_the_same_steps():
    data = batches(seed=3)
    outs = []
    for check in (True, False):
        model = ml.MLP(6, 3, 32, depth=3, seed=0).double()
        outs.append(train(ml.KFAC(model, lr=0.1, damping=0.1, check_batch=check), model, data))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("beta", [None, 0.9])
def test_shampoo_fused_statistics_equal_dense_sums(beta):
    data = batches(n=3, seed=4)
    model = ml.MLP(6, 3, 32, depth=3, seed=0).double()
    opt = ml.Shampoo(model.parameters(), lr=0.05, eps=1e-3, beta=beta, update_interval=2, model=model)
    sums = {}
    for x, y in data:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        for m in model.layers:
            g = m.weight.grad
            L, R = sums.get(m, (0.0, 0.0))
            if beta is None:
                sums[m] = (L + g @ g.T, R + g.T @ g)
            else:
                sums[m] = (beta * L + (1 - beta) * g @ g.T, beta * R + (1 - beta) * g.T @ g)
        opt.step()
    for m in model.layers:
        torch.testing.assert_close(opt.state[m.weight]["L"], sums[m][0])
        torch.testing.assert_close(opt.state[m.weight]["R"], sums[m][1])


@pytest.mark.parametrize("rows,out_dim,in_dim", [(6, 20, 30), (40, 20, 30), (25, 20, 30), (8, 3, 30)])
@pytest.mark.parametrize("root,eps,relative", [(0.25, 1e-3, False), (0.5, 1e-2, True), (0.25, 0.0, False)])
def test_current_batch_root_update_equals_dense(rows, out_dim, in_dim, root, eps, relative):
    """(G G^T + eps_L I)^-e G (G^T G + eps_R I)^-e from the thin SVD = the eigh roots of the
    formed statistics, at every shape (batch smaller or larger than either dimension)."""
    torch.manual_seed(1)
    gout, x = torch.randn(rows, out_dim), torch.randn(rows, in_dim)
    g = gout.T @ x
    dense = inverse_root(g @ g.T, root, eps, relative) @ g @ inverse_root(g.T @ g, root, eps, relative)
    got = current_batch_root_update(gout, x, root, eps, relative)
    torch.testing.assert_close(got, dense, rtol=1e-7, atol=1e-9 if eps else 1e-6)
    from_grad = current_batch_root_update(None, None, root, eps, relative, grad=g)   # the SVD of G itself
    torch.testing.assert_close(from_grad, dense, rtol=1e-7, atol=1e-9 if eps else 1e-6)
    if eps == 0 and root == 0.25:   # no ridge: the gradient with its singular values set to 1
        u, s, vh = torch.linalg.svd(g, full_matrices=False)
        k = int((s > 1e-9 * s[0]).sum())
        torch.testing.assert_close(got, u[:, :k] @ vh[:k], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("eps_mode", ["absolute", "relative"])
@pytest.mark.parametrize("with_model", [True, False])   # thin QR + SVD of the batch, or the SVD of G
def test_shampoo_current_batch_step_equals_the_dense_step(bias, eps_mode, with_model):
    """Shampoo's defaults (beta=0, update_interval=1) take the SVD path, store no statistics,
    and their steps equal ``fast=False`` (dense eigh roots of G G^T and G^T G)."""
    data = batches(n=3, seed=6)
    outs, opts = [], []
    for fast in (True, False):
        model = ml.MLP(6, 3, 32, depth=3, bias=bias, seed=0).double()
        opt = ml.Shampoo(model.parameters(), lr=0.05, eps=1e-3, eps_mode=eps_mode,
                         model=model if with_model else None, fast=fast)
        outs.append(train(opt, model, data))
        opts.append((opt, model))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b)
    opt, model = opts[0]
    assert set(opt.state[model.layers[1].weight]) == {"step"}                # nothing width x width kept
    assert {"L", "R", "L_root", "R_root"} <= set(opts[1][0].state[opts[1][1].layers[1].weight])


def tensor_bytes(state):
    return {k: v.numel() * v.element_size() for k, v in state.items() if torch.is_tensor(v)}


@pytest.mark.parametrize("name", ["kfac", "foof", "shampoo"])
def test_state_is_factors_and_inverses_only(name):
    """Optimizer state per layer = the factors and their inverses (roots), nothing else:
    (in^2 + out^2) * 2 elements (FOOF: in^2 * 2); no copy of the gradient or the batch."""
    model = ml.MLP(6, 3, 32, depth=3, bias=False, seed=0).float()
    averaged = dict(beta=None, update_interval=10) if name == "shampoo" else dict(ema_decay=0.95, inverse_interval=10)
    opt = ml.make_optimizer(model, name, lr=0.05, **averaged)   # averaged curvature: stored factors
    torch.set_default_dtype(torch.float32)
    train(opt, model, [(x.float(), y) for x, y in batches(n=3)])
    for m in model.layers:
        out_dim, in_dim = m.weight.shape
        elements = 2 * (in_dim ** 2 + (0 if name == "foof" else out_dim ** 2))
        keys = {"kfac": {"A", "B", "A_inv", "B_inv"}, "foof": {"A", "A_inv"},
                "shampoo": {"L", "R", "L_root", "R_root"}}[name]
        got = tensor_bytes(opt.state[m.weight])
        assert set(got) == keys
        assert sum(got.values()) == elements * 4


@pytest.mark.parametrize("kw", [dict(padding=1), dict(padding=0, stride=2), dict(padding=(2, 1), stride=(1, 2)),
                                dict(padding=1, dilation=2)])
def test_conv_patches_equal_unfold(kw):
    from torch import nn
    from mupso_lite.optim.capture import conv_patches
    torch.manual_seed(5)
    m = nn.Conv2d(3, 4, 3, **kw)
    x = torch.randn(2, 3, 7, 6)
    u = F.unfold(x, m.kernel_size, m.dilation, m.padding, m.stride)
    torch.testing.assert_close(conv_patches(m, x), u.transpose(1, 2).reshape(-1, u.shape[1]))


def test_conv_patches_with_ones_and_a_rectangular_dilated_kernel():
    from torch import nn
    from mupso_lite.optim.capture import conv_patches
    torch.manual_seed(7)
    m = nn.Conv2d(2, 3, (3, 2), padding=(1, 2), stride=(2, 1), dilation=(1, 2))
    x = torch.randn(3, 2, 9, 8)
    u = F.unfold(x, m.kernel_size, m.dilation, m.padding, m.stride)
    rows = u.transpose(1, 2).reshape(-1, u.shape[1])
    got = conv_patches(m, x, ones=True)
    torch.testing.assert_close(got, torch.cat([rows, torch.ones(len(rows), 1)], 1))


@pytest.mark.parametrize("kw", [dict(padding=1, padding_mode="reflect"), dict(padding=1, padding_mode="circular"),
                                dict(padding=(1, 2), padding_mode="replicate", stride=2),
                                dict(padding=2, padding_mode="reflect", dilation=2), dict(padding="valid")])
def test_conv_patches_reproduce_the_layer_output(kw):
    """patches @ W^T is the convolution itself, whatever the padding mode (not only zeros)."""
    from torch import nn
    from mupso_lite.optim.capture import conv_patches
    torch.manual_seed(6)
    m = nn.Conv2d(3, 4, 3, bias=False, **kw)
    x = torch.randn(2, 3, 8, 7)
    out = m(x).detach()
    rows = conv_patches(m, x) @ m.weight.detach().reshape(4, -1).T
    torch.testing.assert_close(rows, out.permute(0, 2, 3, 1).reshape(-1, 4))


@pytest.mark.parametrize("foof", [False, True])
@pytest.mark.parametrize("mode", ["given", "trace"])
def test_averaged_kfac_equals_the_plain_formula(foof, mode):
    """Averaged factors (EMA 0.9, inverses every 2 steps after a 1-step warm-up) at width 32 with
    batch 8: the low-rank path is taken on fast=True, and every step equals fast=False's
    (B + rho_B I)^-1 G (A + rho_A I)^-1, with the given or the trace damping."""
    data = batches()
    steps = []
    for fast in (True, False):
        model = ml.MLP(6, 3, 32, depth=3, bias=True, seed=0).double()
        opt = ml.KFAC(model, lr=0.2, damping=0.05, damping_mode=mode, ema_decay=0.9, inverse_interval=2,
                      warmup=1, foof=foof, fast=fast)
        steps.append(list(train(opt, model, data)))
    for a, b in zip(*steps):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("rows,dim", [(2000, 200), (50, 200), (900, 211)])
def test_gram_update_equals_the_dense_ema(rows, dim):
    """The blocked symmetric product (many rows: conv patches) and the plain one equal beta F + alpha x^T x."""
    from mupso_lite.optim.linalg import gram_update_
    torch.manual_seed(8)
    x, f = torch.randn(rows, dim), torch.randn(dim, dim)
    f = f + f.T
    want = 0.9 * f + 0.3 * x.T @ x
    got = gram_update_(f.clone(), x, 0.9, 0.3)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(gram_update_(torch.empty(dim, dim), x, 0.0, 1.0), x.T @ x)   # beta 0 ignores junk


def test_make_optimizer_fast_settings_take_the_current_batch_paths():
    """The documented fast settings (README): no width x width state is kept."""
    data = batches(n=2, rows=8, seed=9)
    for name, opts, keys in (("kfac", dict(ema_decay=0.0, inverse_interval=1), {"step", "rho_a", "rho_b"}),
                             ("shampoo", dict(beta=0.0, update_interval=1), {"step"})):
        model = ml.MLP(6, 3, 32, depth=3, seed=0).double()
        opt = ml.make_optimizer(model, name, lr=0.05, **opts)
        train(opt, model, data)
        assert set(opt.state[model.layers[1].weight]) == keys, name
