"""K-FAC against dense float64 math built from explicit per-example inputs and gradients."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mupso_lite as ml
from mupso_lite.optim.linalg import damped_inverse, inverse_root, precondition



@pytest.fixture(autouse=True)
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def small_net(bias: bool, hidden: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, hidden, bias=bias), nn.Tanh(), nn.Linear(hidden, 3, bias=bias)).double()
    if bias:
        for m in (net[0], net[2]):
            nn.init.normal_(m.bias)
    return ml.tag_roles(net, width=hidden)


def per_example(net, x, y):
    """Explicit per-example layer inputs (with a 1 for the bias) and output gradients of each
    example's own loss, one example at a time."""
    xs, ds = {0: [], 2: []}, {0: [], 2: []}
    for i in range(x.shape[0]):
        h1 = net[0](x[i: i + 1])
        a1 = torch.tanh(h1)
        f = net[2](a1)
        loss = F.cross_entropy(f, y[i: i + 1])
        g1, g2 = torch.autograd.grad(loss, [h1, f])
        for k, inp, g in ((0, x[i], g1[0]), (2, a1[0].detach(), g2[0])):
            if net[k].bias is not None:
                inp = torch.cat([inp, torch.ones(1)])
            xs[k].append(inp)
            ds[k].append(g)
    return {k: torch.stack(v) for k, v in xs.items()}, {k: torch.stack(v) for k, v in ds.items()}


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("hidden", [4, 32])  # 32 > batch: the low-rank path is taken
@pytest.mark.parametrize("fast", [False, True])  # True (default): push-through, no factor is formed
def test_kfac_step_equals_dense(bias, hidden, fast):
    net = small_net(bias, hidden)
    x, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    xs, ds = per_example(net, x, y)
    before = {k: torch.cat([net[k].weight.detach()] + ([net[k].bias.detach()[:, None]] if bias else []), 1)
              for k in (0, 2)}
    lr, ra, rb = 0.3, 0.05, 0.02
    opt = ml.KFAC(net, lr=lr, damping_a=ra, damping_b=rb, fast=fast)
    loss = F.cross_entropy(net(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    for k in (0, 2):
        X, D = xs[k], ds[k]
        n = X.shape[0]
        A, B, G = X.T @ X / n, D.T @ D / n, D.T @ X / n
        st = opt.state[net[k].weight]
        if not fast or (n >= A.shape[0] and n >= B.shape[0]):   # formed (and stored) factors of this batch
            torch.testing.assert_close(st["A"], A)
            torch.testing.assert_close(st["B"], B)
        else:   # push-through: no factor is formed
            assert "A" not in st and "B" not in st
        expected = before[k] - lr * torch.linalg.solve(B + rb * torch.eye(len(B)), G) @ \
            torch.linalg.inv(A + ra * torch.eye(len(A)))
        got = torch.cat([net[k].weight.detach()] + ([net[k].bias.detach()[:, None]] if bias else []), 1)
        torch.testing.assert_close(got, expected)


def test_foof_is_input_side_only():
    net = small_net(False)
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1])
    xs, ds = per_example(net, x, y)
    w0 = net[2].weight.detach().clone()
    opt = ml.KFAC(net, lr=0.5, damping=0.1, foof=True)
    F.cross_entropy(net(x), y).backward()
    opt.step()
    X, D = xs[2], ds[2]
    expected = w0 - 0.5 * (D.T @ X / 5) @ torch.linalg.inv(X.T @ X / 5 + 0.1 * torch.eye(4))
    torch.testing.assert_close(net[2].weight.detach(), expected)


def test_conv_factors_equal_unfolded_patches():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=True), nn.Tanh(), nn.Flatten(),
                        nn.Linear(3 * 4 * 4, 2)).double()
    ml.tag_roles(net, width=3)
    x, y = torch.randn(4, 2, 4, 4), torch.tensor([0, 1, 1, 0])
    conv = net[0]
    # explicit: loop over examples and output positions, building each patch by hand
    A = torch.zeros(2 * 9 + 1, 2 * 9 + 1)
    B = torch.zeros(3, 3)
    xp = F.pad(x, (1, 1, 1, 1))
    for i in range(4):
        h = F.conv2d(x[i: i + 1], conv.weight, conv.bias, padding=1).detach().requires_grad_(True)
        rest = net[3](torch.tanh(h).flatten(1))
        (d,) = torch.autograd.grad(F.cross_entropy(rest, y[i: i + 1]), h)
        for r in range(4):
            for c in range(4):
                patch = torch.cat([xp[i, :, r: r + 3, c: c + 3].reshape(-1), torch.ones(1)])
                A += torch.outer(patch, patch)
                B += torch.outer(d[0, :, r, c], d[0, :, r, c])
    A /= 4 * 16   # mean over examples and locations
    B /= 4        # sum over locations, mean over examples
    opt = ml.KFAC(net, lr=0.1, damping=0.1, fast=False)   # fast=False stores the factors to compare
    F.cross_entropy(net(x), y).backward()
    opt.step()
    st = opt.state[conv.weight]
    torch.testing.assert_close(st["A"], A)
    torch.testing.assert_close(st["B"], B)


def test_kronecker_factors_equal_gauss_newton_of_deep_linear_net():
    """One example, squared loss, residual 1, one output: B (x) A is the exact GN block."""
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Linear(4, 5, bias=False),
                        nn.Linear(5, 1, bias=False)).double()
    ml.tag_roles(net, width=4)
    x = torch.randn(1, 3)
    y = net(x).detach() - 1.0                         # residual f - y = 1
    opt = ml.KFAC(net, lr=0.1, damping=0.1, fast=False)
    ml.half_mse(net(x), y).backward()
    weights = [m.weight.detach().clone() for m in net]
    opt.step()
    for k, m in enumerate(net):
        def f_of(wk, k=k):
            ws = list(weights)
            ws[k] = wk.reshape(weights[k].shape)
            out = x
            for w in ws:
                out = out @ w.T
            return out.reshape(-1)
        J = torch.autograd.functional.jacobian(f_of, weights[k].reshape(-1))   # (1, out*in), row-major vec
        st = opt.state[m.weight]
        torch.testing.assert_close(torch.kron(st["B"], st["A"]), J.T @ J)


def test_ema_first_step_exact_then_decays():
    net = small_net(False)
    opt = ml.KFAC(net, lr=0.1, damping=0.1, ema_decay=0.9, inverse_interval=1)
    batches = [(torch.randn(5, 3), torch.randint(0, 3, (5,))) for _ in range(2)]
    seen = []
    for x, y in batches:
        xs, _ = per_example(net, x, y)
        seen.append(xs[0].T @ xs[0] / 5)
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
        if len(seen) == 1:
            torch.testing.assert_close(opt.state[net[0].weight]["A"], seen[0])
    torch.testing.assert_close(opt.state[net[0].weight]["A"], 0.9 * seen[0] + 0.1 * seen[1])


def test_damping_modes_pi_and_trace():
    net = small_net(False)
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1])
    for mode in ("pi", "trace"):
        opt = ml.KFAC(net, lr=0.1, damping=0.04, damping_mode=mode, fast=False)
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
        for m in (net[0], net[2]):
            st = opt.state[m.weight]
            ta, tb = float(torch.trace(st["A"])), float(torch.trace(st["B"]))
            if mode == "trace":
                expected = (0.04 * ta, 0.04 * tb)
            else:
                pi = ((ta / st["A"].shape[0]) / (tb / st["B"].shape[0])) ** 0.5
                expected = (0.2 * pi, 0.2 / pi)
            assert (st["rho_a"], st["rho_b"]) == pytest.approx(expected)
        opt.remove_hooks()


def test_mc_fisher_samples_labels_from_the_model():
    net = small_net(False)
    x, y = torch.randn(64, 3), torch.zeros(64, dtype=torch.long)
    g_true = torch.autograd.grad(F.cross_entropy(net(x), y), net[2].weight)[0]
    w0 = [p.detach().clone() for p in net.parameters()]
    emp = ml.KFAC(net, fisher="empirical", fast=False)
    F.cross_entropy(net(x), y).backward()
    emp.step()
    b_emp = emp.state[net[2].weight]["B"].clone()
    emp.remove_hooks()
    net.zero_grad()
    with torch.no_grad():
        for p, q in zip(net.parameters(), w0):
            p.copy_(q)
    mc = ml.KFAC(net, fisher="mc", fast=False)
    torch.manual_seed(0)
    out = net(x)
    mc.sample_fisher(out)
    F.cross_entropy(out, y).backward()
    g_after_sampling = net[2].weight.grad.clone()
    mc.step()
    b_mc = mc.state[net[2].weight]["B"]
    # the output layer's true Fisher factor is E_x[diag(p) - p p^T]; MC estimates it, the
    # empirical one (all labels 0) does not
    p = torch.softmax(out.detach(), 1)
    b_true = (torch.diag_embed(p) - p[:, :, None] * p[:, None, :]).mean(0)
    assert (b_mc - b_true).abs().max() < 0.5 * (b_emp - b_true).abs().max()
    # the extra backward of the sampled loss leaves the gradient of the true loss untouched
    torch.testing.assert_close(g_after_sampling, g_true)


def test_layer_used_twice_is_refused():
    lin = nn.Linear(4, 4)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.mid, self.out = nn.Linear(3, 4), lin, nn.Linear(4, 2)

        def forward(self, x):
            return self.out(self.mid(self.mid(self.inp(x))))

    model = ml.tag_roles(Twice().double(), width=4)
    opt = ml.KFAC(model)
    model(torch.randn(2, 3)).sum().backward()
    with pytest.raises(RuntimeError, match="called twice"):
        opt.step()


def test_precondition_paths_agree_and_inverses_are_exact():
    torch.manual_seed(3)
    gout, x = torch.randn(5, 40), torch.randn(5, 30)
    grad = gout.T @ x
    L = torch.randn(40, 40)
    L = L @ L.T
    R = torch.randn(30, 30)
    R = R @ R.T
    li, ri = damped_inverse(L, 0.1), inverse_root(R, 0.25, 0.1)
    torch.testing.assert_close(li, torch.linalg.inv(L + 0.1 * torch.eye(40)))
    ev, U = torch.linalg.eigh(R)
    torch.testing.assert_close(ri, U @ torch.diag((ev + 0.1) ** -0.25) @ U.T)
    torch.testing.assert_close(precondition(li, grad, ri, gout, x), li @ grad @ ri)
    torch.testing.assert_close(precondition(None, grad, ri, gout, x), grad @ ri)


def test_float32_factor_falls_back_to_float64():
    # an indefinite float32 matrix whose Cholesky fails: the float64 retry and then eigh still answer
    f = torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=torch.float32)
    inv = damped_inverse(f, 0.0)
    assert inv.dtype == torch.float32 and torch.isfinite(inv).all()


def test_kfac_runs_in_float32_and_keeps_dtype():
    model = ml.MLP(8, 3, width=16, depth=3, seed=0).float()
    opt = ml.make_optimizer(model, "kfac", lr=0.1, fast=False)   # stores the factors whose dtype we check
    x, y = torch.randn(10, 8, dtype=torch.float32), torch.randint(0, 3, (10,))
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    st = opt.state[model.layers[1].weight]
    assert st["A"].dtype == torch.float32 and st["A_inv"].dtype == torch.float32
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_step_without_captured_batch_errors_clearly():
    net = small_net(False)
    opt = ml.KFAC(net)
    with torch.no_grad():
        out = net(torch.randn(2, 3))
    net[0].weight.grad = torch.zeros_like(net[0].weight)
    with pytest.raises(RuntimeError, match="forward and backward"):
        opt.step()
    assert out.shape == (2, 3)


def test_warm_up_refreshes_inverses_while_the_factor_average_is_young():
    """digits, muP, lr 0.05, rho 1e-2, averaged factors (decay 0.95, inverses every 10 steps): an
    inverse built from one batch and reused for 10 steps blows the loss up (warmup=0); refreshing
    every step during the warm-up trains."""
    data = ml.datasets.digits()

    def run(**opts):
        model = ml.MLP(64, 10, 64, base_width=64, seed=0)
        opt = ml.make_optimizer(model, "kfac", lr=0.05, damping=1e-2, ema_decay=0.95, inverse_interval=10, **opts)
        return opt, ml.run(model, opt, data, steps=60, divergence=None)
    opt, recs = run()
    assert opt.warmup == 20 and opt.inverse_interval == 10
    losses = [r["loss"] for r in recs]
    assert max(losses) < 3 * losses[0] and losses[-1] < 0.5 and recs[-1]["test_accuracy"] > 0.8
    _, cold = run(warmup=0)
    assert max(r["loss"] for r in cold) > 30 * losses[0]


def test_auto_fisher_is_mc_for_the_squared_loss():
    """The default fisher="auto" samples targets (MC) for the squared loss: its run equals
    fisher="mc" exactly, and for cross-entropy it equals fisher="empirical"."""
    reg = ml.datasets.teacher(task="regression", n_train=256)

    def run(data, **opts):
        model = ml.MLP(data.d_in, data.d_out, 32, base_width=16, seed=0)
        opt = ml.make_optimizer(model, "kfac", lr=0.1, **opts)
        return opt, [r["loss"] for r in ml.run(model, opt, data, steps=8)]
    opt, auto = run(reg)
    assert opt.fisher == "auto" and opt.fisher_for("mse") == "mc" and opt.fisher_for("cross_entropy") == "empirical"
    assert auto == run(reg, fisher="mc")[1] != run(reg, fisher="empirical")[1]
    assert auto[-1] < 0.2 * auto[0]
    digits = ml.datasets.digits()
    assert run(digits)[1] == run(digits, fisher="empirical")[1] != run(digits, fisher="mc")[1]


def test_the_batch_check_leaves_the_global_random_stream_alone():
    from mupso_lite.optim.linalg import matches_batch
    g = torch.Generator().manual_seed(0)
    x, gout = torch.randn(8, 5, generator=g), torch.randn(8, 3, generator=g)
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    assert matches_batch(gout.T @ x, gout, x) and not matches_batch(gout.T @ x + 1, gout, x)
    assert torch.equal(torch.rand(3), expected)
    # so switching the check does not change which labels the MC Fisher samples
    losses = []
    for check in (True, False):
        model = ml.MLP(64, 10, 32, seed=0)
        recs = ml.run(model, ml.make_optimizer(model, "kfac", lr=0.1, fisher="mc", check_batch=check), "digits",
                      steps=4, seed=3)
        losses.append([r["loss"] for r in recs])
    assert losses[0] == losses[1]


def test_damping_mode_given_and_its_old_name():
    net = small_net(bias=False)
    opt = ml.KFAC(net, lr=0.1, damping=0.1)
    assert opt.damping_mode == "given"
    with pytest.warns(FutureWarning, match='now called "given"'):
        old = ml.KFAC(small_net(bias=False), lr=0.1, damping=0.1, damping_mode="fixed")
    assert old.damping_mode == "given"


@pytest.mark.parametrize("name", ["kfac", "shampoo"])
def test_plain_torch_models_need_no_roles(name):
    """ml.KFAC / ml.Shampoo on a plain nn.Sequential take exactly the steps they take on the same
    network with role tags (roles only matter to make_optimizer's width rules)."""
    def build(tagged):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))
        if tagged:
            ml.tag_roles(net, width=8)
        if name == "kfac":
            return net, ml.KFAC(net, lr=0.1, damping=0.1, inverse_interval=2)
        return net, ml.Shampoo(net.parameters(), lr=0.05, eps=1e-3, model=net, update_interval=2)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(4)]
    finals = []
    for tagged in (False, True):
        net, opt = build(tagged)
        for x, y in batches:
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
        finals.append([p.detach().clone() for p in net.parameters()])
        if name == "kfac":
            assert list(opt.modules_by_name) == ["0", "2", "4"]
    assert all(torch.equal(a, b) for a, b in zip(*finals))
    assert not torch.equal(finals[0][0], build(False)[0][0].weight.detach())  # it did step


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name,opts", [("kfac", {}), ("kfac", {"ema_decay": 0.95, "inverse_interval": 10}),
                                       ("foof", {}), ("shampoo", {})])
def test_half_precision_models_train_with_float32_curvature(dtype, name, opts):
    """CPU LAPACK has no half-precision Cholesky: K-FAC and FOOF keep the curvature in float32 and
    cast the update to the weight's dtype (before, the first step raised NotImplementedError)."""
    model = ml.MLP(64, 10, 64, base_width=64, seed=0).to(dtype)
    opt = ml.make_optimizer(model, name, lr=0.1, **opts)
    recs = ml.run(model, opt, "digits", steps=20, device="cpu")
    assert not recs[-1]["diverged"] and recs[-1]["loss"] < 0.5 * recs[0]["loss"], [r["loss"] for r in recs]
    assert all(p.dtype == dtype for p in model.parameters())
    if opts:   # averaged factors are stored, in float32
        st = opt.state[model.layers[1].weight]
        assert st["A"].dtype == st["A_inv"].dtype == torch.float32
