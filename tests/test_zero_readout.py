"""Zero readout + K-FAC: step 1 is kernel ridge regression on the initial features (mupso_lite.kernel),
the kernel tends to the NNGP kernel like 1/sqrt(M), and whether the hidden features stay put afterwards
is set by the step size lr / rho^2 (large-damping K-FAC is muP-SGD with that learning rate)."""
import dataclasses
import math

import numpy as np
import pytest
import torch

import mupso_lite as ml
from mupso_lite import kernel as kn


@pytest.fixture(scope="module")
def digits():
    return ml.datasets.digits()


def one_kfac_step(model, x, y, rho, lr=0.1):
    opt = ml.make_optimizer(model, "kfac", lr=lr, damping=rho)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return opt


@pytest.mark.parametrize("rho", [0.1, 10.0])
@pytest.mark.parametrize("width", [64, 256])
def test_first_step_is_the_dense_formula_and_kernel_ridge_regression(digits, rho, width):
    x, y, xt = digits.x_train[:48].double(), digits.y_train[:48], digits.x_test[:40].double()
    model = ml.MLP(64, 10, width, 3, base_width=64, zero_readout=True, seed=1).double()
    hidden = [layer.weight.clone() for layer in model.layers[:2]]
    phi, phi_t = kn.last_hidden_features(model, x), kn.last_hidden_features(model, xt)
    opt = one_kfac_step(model, x, y, rho)
    with torch.no_grad():
        f1 = model(xt)
    st = opt.state[model.layers[2].weight]
    assert st["rho_a"] == pytest.approx(rho * width / 64) and st["rho_b"] == pytest.approx(rho)   # the table
    dense = kn.kfac_first_step_readout(phi, y, phi_t, 10, 0.1, st["rho_a"], st["rho_b"])
    assert float((f1 - dense).norm() / dense.norm()) < 1e-12
    # push-through: the same outputs from the kernel K = Phi Phi^T / M with ridge N rho_A / M = N rho / M0
    ridge = len(x) * rho / 64
    kernel = kn.kfac_first_step_kernel(kn.empirical_kernel(phi, phi), kn.empirical_kernel(phi_t, phi), y, 10,
                                       0.1, ridge, rho)
    assert float((kernel - dense).norm() / dense.norm()) < 1e-12
    # a wrong ridge (rho_A not scaled with the width) gives other outputs, except at the base width
    wrong = kn.kfac_first_step_kernel(kn.empirical_kernel(phi, phi), kn.empirical_kernel(phi_t, phi), y, 10,
                                      0.1, len(x) * rho / width, rho)
    assert (float((wrong - dense).norm() / dense.norm()) > 1e-3) == (width != 64)
    # the hidden layers got no gradient through W_L = 0
    assert all(torch.equal(h, layer.weight) for h, layer in zip(hidden, model.layers[:2]))


def test_gauss_quadrature_matches_closed_form_and_monte_carlo():
    # ReLU has a closed form (arc-cosine kernel): E[relu(u) relu(v)] = sqrt(k11 k22) (sin t + (pi - t) cos t) / (2 pi)
    k11, k22 = torch.tensor([1.0, 0.5, 2.0, 1.0]), torch.tensor([1.0, 2.0, 1.5, 1.0])
    k12 = torch.tensor([0.3, -0.6, 1.2, 1.0])
    got = kn._gauss_expectation(torch.relu, k11.double(), k22.double(), k12.double(), nodes=64)
    t = torch.acos((k12 / (k11 * k22).sqrt()).clamp(-1, 1))
    want = (k11 * k22).sqrt() * (torch.sin(t) + (math.pi - t) * torch.cos(t)) / (2 * math.pi)
    assert torch.allclose(got, want.double(), atol=2e-3)
    # tanh against Monte Carlo (2e5 samples: standard error ~1e-3)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(200_000, 2, generator=g, dtype=torch.float64)
    got = kn._gauss_expectation(torch.tanh, k11.double(), k22.double(), k12.double(), nodes=32)
    for i in range(len(k11)):
        cov = torch.tensor([[k11[i], k12[i]], [k12[i], k22[i]]], dtype=torch.float64)
        uv = z @ torch.linalg.cholesky(cov + 1e-12 * torch.eye(2, dtype=torch.float64)).T
        assert float((torch.tanh(uv[:, 0]) * torch.tanh(uv[:, 1])).mean()) == pytest.approx(float(got[i]), abs=5e-3)


def test_finite_width_kernel_converges_to_nngp_like_one_over_sqrt_width(digits):
    x = digits.x_train[:24]
    k_inf = kn.nngp_kernel(x)
    assert torch.allclose(k_inf, k_inf.T) and bool((torch.linalg.eigvalsh(k_inf) > -1e-9).all())
    assert torch.allclose(kn.nngp_kernel(x[:5], x[5:9]), k_inf[:5, 5:9], atol=1e-12)
    widths = [64, 256, 1024, 4096]
    err = [np.mean([float((kn.empirical_kernel(*(2 * [kn.last_hidden_features(
        ml.MLP(64, 10, w, 3, base_width=64, seed=s), x)])) - k_inf).norm() / k_inf.norm()) for s in range(3)])
        for w in widths]
    assert all(a > b for a, b in zip(err, err[1:])), err
    assert abs(ml.fit_slope(widths, err) + 0.5) < 0.15, err


def test_large_damping_kfac_is_mup_sgd_with_lr_over_rho_squared(digits):
    """(B + rho_B)^-1 G (A + rho_A)^-1 -> G / (rho_A rho_B) = G lr-factor (M/M0, 1, M0/M) / rho^2 under the table."""
    x, y = digits.x_train[:64].double(), digits.y_train[:64]
    rho, eta = 1e4, 0.3
    updates = {}
    for name in ("kfac", "sgd"):
        model = ml.MLP(64, 10, 256, 3, base_width=64, seed=0).double()
        before = [layer.weight.detach().clone() for layer in model.layers]
        if name == "kfac":
            one_kfac_step(model, x, y, rho, lr=eta * rho ** 2)
        else:
            opt = ml.make_optimizer(model, "sgd", lr=eta)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        updates[name] = [layer.weight.detach() - b for layer, b in zip(model.layers, before)]
    for k, s in zip(updates["kfac"], updates["sgd"]):
        assert float((k - s).norm() / s.norm()) < 5e-3, float((k - s).norm() / s.norm())


def test_damping_and_step_size_decide_whether_zero_readout_features_move(digits):
    data = dataclasses.replace(digits, x_train=digits.x_train[:256], y_train=digits.y_train[:256])

    def hidden_change(zero, rho, lr):
        model = ml.MLP(64, 10, 128, 3, base_width=64, zero_readout=zero, seed=0)
        recs = ml.run(model, ml.make_optimizer(model, "kfac", lr=lr, damping=rho), data, steps=20, batch_size=64)
        return recs[-1]["feature_change"]["layers.1"]

    ratio = {(rho, lr): hidden_change(True, rho, lr) / hidden_change(False, rho, lr)
             for rho, lr in ((0.1, 0.1), (10.0, 0.1), (10.0, 50.0))}
    assert ratio[(0.1, 0.1)] > 0.5, ratio       # small damping: K-FAC normalizes delta, the zero readout costs little
    assert ratio[(10.0, 0.1)] < 0.02, ratio     # large damping, same lr: hidden features barely move
    assert ratio[(10.0, 50.0)] > 0.3, ratio     # large damping, lr / rho^2 = 0.5: they move again


def _kernel_calls():
    phi, y = torch.randn(6, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    k = phi @ phi.T / 4
    return phi, y, k


@pytest.mark.parametrize("call,err,words", [
    (lambda phi, y, k: kn.kfac_first_step_readout(phi, y, phi, 3, float("nan"), 0.1, 0.1), ValueError, "lr"),
    (lambda phi, y, k: kn.kfac_first_step_readout(phi, y, phi, 3, 0.1, -0.1, 0.1), ValueError, "rho_a"),
    (lambda phi, y, k: kn.kfac_first_step_readout(phi, y, phi, 3, 0.1, 0.1, 0.0), ValueError, "rho_b"),
    (lambda phi, y, k: kn.kfac_first_step_readout(phi, y.double(), phi, 3, 0.1, 0.1, 0.1), TypeError, "y_train"),
    (lambda phi, y, k: kn.kfac_first_step_readout(phi, y, phi, 2, 0.1, 0.1, 0.1), ValueError, "0..1"),
    (lambda phi, y, k: kn.kfac_first_step_readout(phi, y[:5], phi, 3, 0.1, 0.1, 0.1), ValueError, "6 labels"),
    (lambda phi, y, k: kn.kfac_first_step_readout(phi, y, phi[:, :3], 3, 0.1, 0.1, 0.1), ValueError, "phi_test"),
    (lambda phi, y, k: kn.kfac_first_step_readout(phi[:0], y[:0], phi, 3, 0.1, 0.1, 0.1), ValueError, "phi_train"),
    (lambda phi, y, k: kn.kfac_first_step_kernel(k, k, y, 3, 0.1, -1.0, 0.1), ValueError, "ridge"),
    (lambda phi, y, k: kn.kfac_first_step_kernel(k[:, :5], k, y, 3, 0.1, 0.1, 0.1), ValueError, "square"),
    (lambda phi, y, k: kn.kfac_first_step_kernel(k, k * float("inf"), y, 3, 0.1, 0.1, 0.1), ValueError, "finite"),
    (lambda phi, y, k: kn.nngp_kernel(phi, depth=0), ValueError, "depth"),
    (lambda phi, y, k: kn.nngp_kernel(phi, depth=1), ValueError, "depth"),
    (lambda phi, y, k: kn.nngp_kernel(phi, nodes=1), ValueError, "nodes"),
    (lambda phi, y, k: kn.nngp_kernel(phi, sigma=-1.0), ValueError, "sigma"),
    (lambda phi, y, k: kn.nngp_kernel(torch.empty(0, 4)), ValueError, "x1"),
    (lambda phi, y, k: kn.nngp_kernel(phi, phi[:, :2]), ValueError, "x2"),
    (lambda phi, y, k: kn.empirical_kernel(phi, phi[:, :2]), ValueError, "phi2"),
])
def test_kernel_functions_refuse_bad_input_with_the_argument_named(call, err, words):
    """Before, these returned numbers (NaN lr, negative damping or ridge, depth 0, one node, float
    labels, empty features)."""
    with pytest.raises(err, match=words):
        call(*_kernel_calls())
