"""K-FAC's first step with a zero readout is kernel ridge regression on the initial features.

With the output layer at zero (``zero_readout=True``) the network's output is f = 0 for every
input, and no earlier layer gets a gradient (it flows through W_L = 0). So step 1 changes only
W_L, and for cross-entropy every quantity K-FAC needs is known in closed form. On a batch of
N examples with last hidden features phi_i = phi(h_{L-1}(x_i)) (rows of Phi, N x M) and one-hot
labels Y (N x C):

    Delta = softmax(0) - Y = 1/C - Y          (per-example output gradients, N x C)
    A = Phi^T Phi / N,   B = Delta^T Delta / N,   G = Delta^T Phi / N
    W_L(1) = -lr (B + rho_B I)^-1 G (A + rho_A I)^-1

and the output on a test input x' after step 1 is (push-through identity
Phi^T (Phi Phi^T / N + rho_A I)^-1 = (Phi^T Phi / N + rho_A I)^-1 Phi^T)

    f(x')^T = lr k(x')^T (K + lambda I)^-1 (Y - 1/C) (B + rho_B I)^-1,
    K = Phi Phi^T / M,   k(x') = Phi phi(x') / M,   lambda = N rho_A / M:

kernel ridge regression of the centred one-hot targets on the kernel of the initial features,
followed by a fixed C x C map (B depends on the labels only). Under the muP table the output
layer's rho_A = rho M / M0 and rho_B = rho, so lambda = N rho / M0 does not depend on the width;
only K does, and as M -> infinity it converges to the NNGP kernel (``nngp_kernel``), with
fluctuations of order 1 / sqrt(M). This is the regime Ishikawa & Karakida (ICLR 2024) describe
for a zero-initialized last layer.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .checks import check_positive
from .roles import layer_roles

ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu}


def _matrix(arg: str, t, cols: int | None = None) -> torch.Tensor:
    """``t`` as a float64 matrix (n x d, n and d >= 1, finite), else ValueError/TypeError naming ``arg``."""
    if not torch.is_tensor(t) and not isinstance(t, np.ndarray):
        raise TypeError(f"{arg}: expected a tensor of shape (n, d), got {type(t).__name__}")
    t = torch.as_tensor(t)
    if t.dtype == torch.bool or not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"{arg}: expected real numbers, got dtype {t.dtype}")
    t = t.double().flatten(1) if t.dim() > 2 else t.double()
    if t.dim() != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{arg}: expected a non-empty matrix (n, d), got shape {tuple(t.shape)}")
    if cols is not None and t.shape[1] != cols:
        raise ValueError(f"{arg}: expected {cols} columns (as the training side), got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{arg}: expected finite numbers, got NaN or Inf")
    return t


def _labels(y, n: int, n_classes: int) -> torch.Tensor:
    """Integer class labels: n of them, each in [0, n_classes)."""
    check_positive("n_classes", n_classes, integer=True)
    if not torch.is_tensor(y) or y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
        raise TypeError(f"y_train: expected integer class labels, got "
                        f"{y.dtype if torch.is_tensor(y) else type(y).__name__}")
    if y.shape != (n,):
        raise ValueError(f"y_train: expected {n} labels (one per training row), got shape {tuple(y.shape)}")
    if int(y.min()) < 0 or int(y.max()) >= n_classes:
        raise ValueError(f"y_train: expected labels in 0..{n_classes - 1}, got {int(y.min())}..{int(y.max())}")
    return y


@torch.no_grad()
def last_hidden_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """phi(x): the input of the model's output layer (its role "output"), shape (n, M)."""
    output = [m for _, m, role in layer_roles(model) if role == "output"]
    if len(output) != 1:
        raise ValueError(f"model: expected one layer with role 'output', got {len(output)}")
    store = {}
    handle = output[0].register_forward_hook(lambda m, i, o: store.__setitem__("x", i[0].detach().flatten(1)))
    try:
        was_training = model.training
        model.eval()
        model(x)
        model.train(was_training)
    finally:
        handle.remove()
    return store["x"]


def _targets(y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Delta = softmax(0) - onehot(y) = 1/C - Y, float64 (N x C)."""
    return 1.0 / n_classes - nn.functional.one_hot(y.long(), n_classes).double()


def kfac_first_step_readout(phi_train, y_train, phi_test, n_classes: int, lr: float, rho_a: float,
                            rho_b: float) -> torch.Tensor:
    """The outputs on ``phi_test`` after one K-FAC step from a zero readout, dense, in float64:

        f(x') = -lr (B + rho_B I)^-1 G (A + rho_A I)^-1 phi(x')
    with A = Phi^T Phi / N, B = Delta^T Delta / N, G = Delta^T Phi / N, Delta = 1/C - Y
    (cross-entropy, empirical Fisher, no bias). Returns (n_test, C)."""
    phi = _matrix("phi_train", phi_train)
    phi_t = _matrix("phi_test", phi_test, cols=phi.shape[1])
    n, m = phi.shape
    _labels(y_train, n, n_classes)
    check_positive("lr", lr)
    check_positive("rho_a", rho_a)
    check_positive("rho_b", rho_b)
    delta = _targets(y_train, n_classes)
    a = phi.T @ phi / n + rho_a * torch.eye(m, dtype=torch.float64)
    b = delta.T @ delta / n + rho_b * torch.eye(n_classes, dtype=torch.float64)
    g = delta.T @ phi / n
    w = -lr * torch.linalg.solve(b, g) @ torch.linalg.inv(a)
    return phi_t @ w.T


def kfac_first_step_kernel(k_train, k_test, y_train, n_classes: int, lr: float, ridge: float,
                           rho_b: float) -> torch.Tensor:
    """The same outputs from a kernel, in float64:

        f(x')^T = lr k(x')^T (K + ridge I)^-1 (Y - 1/C) (B + rho_B I)^-1
    with K = ``k_train`` (N x N), k(x')^T the rows of ``k_test`` (n_test x N), B = Delta^T Delta / N.
    With K = Phi Phi^T / M and ridge = N rho_A / M it equals ``kfac_first_step_readout``;
    with the NNGP kernel it is the infinite-width limit of that step. Returns (n_test, C)."""
    k = _matrix("k_train", k_train)
    n = k.shape[0]
    if k.shape != (n, n):
        raise ValueError(f"k_train: expected a square kernel matrix (N, N), got shape {tuple(k.shape)}")
    kt = _matrix("k_test", k_test, cols=n)
    _labels(y_train, n, n_classes)
    check_positive("lr", lr)
    check_positive("ridge", ridge, allow_zero=True)
    check_positive("rho_b", rho_b)
    delta = _targets(y_train, n_classes)
    b = delta.T @ delta / n + rho_b * torch.eye(n_classes, dtype=torch.float64)
    coef = torch.linalg.solve(k + ridge * torch.eye(n, dtype=torch.float64), -delta)   # (K + ridge)^-1 (Y - 1/C)
    return lr * torch.linalg.solve(b, (kt @ coef).T).T


def empirical_kernel(phi1: torch.Tensor, phi2: torch.Tensor) -> torch.Tensor:
    """K(x, x') = phi(x) . phi(x') / M, float64."""
    phi1 = _matrix("phi1", phi1)
    return phi1 @ _matrix("phi2", phi2, cols=phi1.shape[1]).T / phi1.shape[1]


def _gauss_expectation(act, k11, k22, k12, nodes: int, chunk: int = 8192) -> torch.Tensor:
    """E[act(u) act(v)] for (u, v) ~ N(0, [[k11, k12], [k12, k22]]), elementwise over 1-d float64
    tensors, by ``nodes``-point Gauss-Hermite quadrature in each of two dimensions:
    u = a z1, v = b z1 + c z2 with a = sqrt(k11), b = k12 / a, c = sqrt(k22 - b^2), z1, z2 ~ N(0, 1)."""
    z, w = (torch.from_numpy(t) for t in np.polynomial.hermite_e.hermegauss(nodes))
    w = w / math.sqrt(2 * math.pi)
    a = k11.clamp_min(0.0).sqrt()
    b = torch.where(a > 0, k12 / a.clamp_min(1e-300), torch.zeros_like(k12))
    c = (k22 - b * b).clamp_min(0.0).sqrt()
    out = torch.empty_like(k12)
    for s in range(0, k12.numel(), chunk):
        sl = slice(s, s + chunk)
        inner = act(b[sl, None, None] * z[:, None] + c[sl, None, None] * z[None, :]) @ w   # E_z2[act(v) | z1]
        out[sl] = (act(a[sl, None] * z) * w * inner).sum(1)
    return out


def nngp_kernel(x1, x2=None, depth: int = 3, sigma: float = 1.0, activation: str = "tanh",
                nodes: int = 32) -> torch.Tensor:
    """The infinite-width limit of ``empirical_kernel`` of ``ml.MLP``'s last hidden features
    (no bias; weights N(0, sigma^2 / fan_in) in every layer before the readout, which is the
    input and hidden layers' init of both SP and muP):

        Sigma_1(x, x') = sigma^2 x . x' / d_in,
        Sigma_{l+1}(x, x') = sigma^2 E[act(u) act(v)],  (u, v) ~ N(0, Sigma_l on {x, x'}),
        K(x, x') = E[act(u) act(v)]  under Sigma_{depth-1}   (the features feeding the readout),

    each expectation by ``nodes``-point Gauss-Hermite quadrature in two dimensions (tanh saturates,
    so a large variance needs more nodes: compare with a larger ``nodes``, as
    ``scripts/exp_zero_readout.py quad`` does on digits).
    ``x2=None``: the symmetric kernel of ``x1`` with itself. Returns K (n1 x n2), float64."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {tuple(ACTIVATIONS)}, got {activation!r}")
    if check_positive("depth", depth, integer=True) < 2:
        raise ValueError(f"depth: expected an integer >= 2 (an MLP with a hidden layer feeding the readout), got {depth}")
    if check_positive("nodes", nodes, integer=True) < 2:
        raise ValueError(f"nodes: expected an integer >= 2 (Gauss-Hermite nodes per dimension), got {nodes}")
    check_positive("sigma", sigma)
    act = ACTIVATIONS[activation]
    a = _matrix("x1", x1)
    n1 = a.shape[0]
    both = a if x2 is None else torch.cat([a, _matrix("x2", x2, cols=a.shape[1])])
    if x2 is None:   # the upper triangle is enough
        i, j = torch.triu_indices(n1, n1)
    else:
        i, j = (t.ravel() for t in torch.meshgrid(torch.arange(n1), torch.arange(n1, both.shape[0]), indexing="ij"))
    diag = sigma ** 2 * both.pow(2).sum(1) / both.shape[1]                # Sigma_1(x, x)
    off = sigma ** 2 * (both[i] * both[j]).sum(1) / both.shape[1]         # Sigma_1(x_i, x_j)
    for layer in range(depth - 1):   # Sigma_1 -> ... -> Sigma_{depth-1} -> K
        scale = 1.0 if layer == depth - 2 else sigma ** 2
        off = scale * _gauss_expectation(act, diag[i], diag[j], off, nodes)
        diag = scale * _gauss_expectation(act, diag, diag, diag, nodes)
    k = torch.zeros(n1, both.shape[0] - n1 if x2 is not None else n1, dtype=torch.float64)
    if x2 is None:
        k[i, j] = off
        k[j, i] = off
    else:
        k[i, j - n1] = off
    return k
