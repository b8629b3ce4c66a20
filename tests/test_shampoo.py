"""Shampoo against dense float64 math: (L + eps I)^-e G (R + eps I)^-e with L, R running sums."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mupso_lite as ml


def dense_root(m, e, eps):
    ev, u = torch.linalg.eigh(m)
    return u @ torch.diag((ev.clamp_min(0) + eps) ** -e) @ u.T


def make_net(bias=False, width=6, seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, width, bias=bias), nn.Tanh(), nn.Linear(width, 3, bias=bias)).double()
    return ml.tag_roles(net, width=width)


def batch(seed, n=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


@pytest.mark.parametrize("root", [0.25, 0.5])
@pytest.mark.parametrize("with_model", [False, True])   # True: the low-rank batch path
@pytest.mark.parametrize("beta", [None, 0.0])           # running sums; this batch's statistics (default)
def test_two_steps_equal_dense(root, with_model, beta):
    net = make_net(width=16)
    eps, lr = 1e-3, 0.1
    opt = ml.Shampoo(net.parameters(), lr=lr, eps=eps, root=root, update_interval=1, beta=beta,
                     model=net if with_model else None)
    sums = {}
    for step in range(2):
        x, y = batch(step)
        w = [m.weight.detach().clone() for m in (net[0], net[2])]
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        grads = [m.weight.grad.clone() for m in (net[0], net[2])]
        opt.step()
        for k, (m, w0, g) in enumerate(zip((net[0], net[2]), w, grads)):
            L, R = sums.get(k, (0, 0)) if beta is None else (0, 0)
            L, R = L + g @ g.T, R + g.T @ g          # running sums from zero, or this batch's
            sums[k] = (L, R)
            expected = w0 - lr * dense_root(L, root, eps) @ g @ dense_root(R, root, eps)
            torch.testing.assert_close(m.weight.detach(), expected)
            if beta is None:
                torch.testing.assert_close(opt.state[m.weight]["L"], L)   # eps never accumulates
                torch.testing.assert_close(opt.state[m.weight]["R"], R)
            else:   # nothing width x width is kept between steps
                assert "L" not in opt.state[m.weight] and "R" not in opt.state[m.weight]


def test_relative_eps_uses_lambda_max():
    net = make_net()
    opt = ml.Shampoo(net.parameters(), lr=0.1, eps=1e-2, eps_mode="relative")
    w0 = net[2].weight.detach().clone()
    x, y = batch(0)
    F.cross_entropy(net(x), y).backward()
    g = net[2].weight.grad.clone()
    opt.step()
    L, R = g @ g.T, g.T @ g
    lam = torch.linalg.eigvalsh(L)[-1]
    expected = w0 - 0.1 * dense_root(L, 0.25, 1e-2 * lam) @ g @ dense_root(R, 0.25, 1e-2 * lam)
    torch.testing.assert_close(net[2].weight.detach(), expected)


def first_layer_roots(net, opt, steps):
    """The first layer's left inverse root after each of ``steps`` optimizer steps."""
    roots = []
    for step in range(steps):
        x, y = batch(step)
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
        roots.append(opt.state[net[0].weight]["L_root"].clone())
    return roots


def test_update_interval_caches_roots_but_sums_every_step():
    net = make_net()
    opt = ml.Shampoo(net.parameters(), lr=0.05, eps=1e-3, update_interval=3, warmup=0)
    roots = first_layer_roots(net, opt, 4)
    assert torch.equal(roots[0], roots[1]) and torch.equal(roots[1], roots[2])
    assert not torch.equal(roots[2], roots[3])   # refreshed at step 3


def test_warm_up_refreshes_roots_every_step_then_every_interval():
    net = make_net()
    opt = ml.Shampoo(net.parameters(), lr=0.05, eps=1e-3, update_interval=3, warmup=2)
    assert ml.Shampoo(net.parameters(), update_interval=3).warmup == 20
    assert ml.Shampoo(net.parameters(), update_interval=1).warmup == 0
    roots = first_layer_roots(net, opt, 6)
    fresh = [k == 0 or not torch.equal(roots[k - 1], roots[k]) for k in range(6)]
    assert fresh == [True, True, False, True, False, False]   # warm-up 0, 1; then steps 3, 6, ...


def test_warm_up_keeps_the_slider_range_trainable():
    """digits, width 256, muP: lr 0.3 with eps 1e-6 blew up (loss 2.4 -> 260) when the first root,
    built from one batch, was reused for ten steps; with the warm-up it trains."""
    data = ml.datasets.digits()
    model = ml.MLP(64, 10, 256, base_width=64, seed=0)
    recs = ml.run(model, ml.make_optimizer(model, "shampoo", lr=0.3, damping=1e-6), data, steps=60)
    assert not recs[-1]["diverged"] and max(r["loss"] for r in recs) <= recs[0]["loss"] * 1.5
    assert recs[-1]["test_accuracy"] > 0.9


def test_bias_rule_is_diagonal_left_statistic():
    net = make_net(bias=True)
    opt = ml.Shampoo(net.parameters(), lr=0.1, eps=1e-3)
    b0 = net[2].bias.detach().clone()
    x, y = batch(0)
    F.cross_entropy(net(x), y).backward()
    g = net[2].bias.grad.clone()
    opt.step()
    expected = b0 - 0.1 * g / ((g * g + 1e-3) ** 0.25 * ((g * g).sum() + 1e-3) ** 0.25)
    torch.testing.assert_close(net[2].bias.detach(), expected)


def test_conv_weight_is_reshaped_to_out_by_in_k_k():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, bias=False), nn.Flatten(), nn.Linear(3 * 2 * 2, 2, bias=False)).double()
    opt = ml.Shampoo(net.parameters(), lr=0.1, eps=1e-3, beta=None)   # running sums: L, R are stored
    w0 = net[0].weight.detach().clone()
    F.cross_entropy(net(torch.randn(3, 2, 4, 4, dtype=torch.float64)), torch.tensor([0, 1, 0])).backward()
    g = net[0].weight.grad.reshape(3, -1).clone()
    opt.step()
    assert opt.state[net[0].weight]["L"].shape == (3, 3) and opt.state[net[0].weight]["R"].shape == (18, 18)
    expected = w0.reshape(3, -1) - 0.1 * dense_root(g @ g.T, 0.25, 1e-3) @ g @ dense_root(g.T @ g, 0.25, 1e-3)
    torch.testing.assert_close(net[0].weight.detach().reshape(3, -1), expected)


@pytest.mark.parametrize("graft", ["sgd", "adam"])
def test_grafting_takes_the_norm_of_the_grafted_update(graft):
    net = make_net()
    opt = ml.Shampoo(net.parameters(), lr=1.0, eps=1e-3, grafting=graft)
    w0 = net[0].weight.detach().clone()
    x, y = batch(0)
    F.cross_entropy(net(x), y).backward()
    g = net[0].weight.grad.clone()
    opt.step()
    step_norm = torch.linalg.vector_norm(net[0].weight.detach() - w0)
    # Adam at its first step (bias-corrected, beta1 = 0) moves each entry by g / |g|
    target = torch.linalg.vector_norm(g) if graft == "sgd" else torch.linalg.vector_norm(g / (g.abs() + 1e-8))
    torch.testing.assert_close(step_norm, target)


def test_ema_statistics():
    net = make_net()
    opt = ml.Shampoo(net.parameters(), lr=0.1, eps=1e-3, beta=0.9)
    gs = []
    for step in range(2):
        x, y = batch(step)
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        gs.append(net[0].weight.grad.clone())
        opt.step()
    expected = 0.9 * 0.1 * gs[0] @ gs[0].T + 0.1 * gs[1] @ gs[1].T
    torch.testing.assert_close(opt.state[net[0].weight]["L"], expected)
