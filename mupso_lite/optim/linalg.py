"""Damped inverses, inverse p-th roots and the two ways to precondition a gradient.

Both K-FAC and Shampoo precondition a layer gradient G (out x in) from both sides,

    U = P_left  G  P_right,

with P = (F + rho I)^-1 (K-FAC) or (F + eps I)^-e (Shampoo). The factorizations run in
the factor's dtype and are retried in float64 when float32 fails (an indefinite or
ill-conditioned factor); the result is cast back.

When G comes from a batch of R rows, G = Gout^T X (Gout: R x out output gradients of the
mean loss, X: R x in layer inputs), the product can be reassociated:

    P_left G P_right = (P_left Gout^T)(X P_right)         2 R (out^2 + in^2 + out in) flops

instead of 2 (out^2 in + out in^2): about 5x less work at width 1024 and batch 128.
"""
from __future__ import annotations

import torch


def damped_inverse(factor: torch.Tensor, rho: float) -> torch.Tensor:
    """(F + rho I)^-1 for a symmetric PSD F, by Cholesky (float64 retry, eigh last resort)."""
    eye = torch.eye(factor.shape[0], dtype=factor.dtype, device=factor.device)
    for dtype in _dtypes(factor):
        m = (factor.to(dtype) + rho * eye.to(dtype))
        chol, info = torch.linalg.cholesky_ex(m)
        if int(info) == 0:
            return torch.cholesky_inverse(chol).to(factor.dtype)
    return inverse_root(factor, 1.0, rho)


def inverse_root(factor: torch.Tensor, exponent: float, eps: float, relative: bool = False) -> torch.Tensor:
    """(F + eps I)^-exponent for a symmetric PSD F, by eigh (float64 retry);
    with ``relative`` the ridge is eps * lambda_max(F).

    Eigenvalues are clamped at a tiny floor so that a singular, undamped factor still
    gives a finite matrix (its null space only ever meets a zero gradient).
    """
    last = None
    for dtype in _dtypes(factor):
        m = factor.to(dtype)
        m = (m + m.T) / 2
        try:
            evals, evecs = torch.linalg.eigh(m)
        except RuntimeError as err:  # torch raises on non-convergence
            last = err
            continue
        top = max(float(evals.abs().max()), 1e-30)
        ridge = eps * max(float(evals[-1]), 0.0) if relative else eps
        floor = torch.finfo(dtype).eps * top
        scale = (evals.clamp_min(0) + ridge).clamp_min(floor) ** (-exponent)
        return ((evecs * scale) @ evecs.T).to(factor.dtype)
    raise RuntimeError(f"inverse_root: eigendecomposition failed in float64 too ({last})")


def _dtypes(t: torch.Tensor):
    return (t.dtype, torch.float64) if t.dtype != torch.float64 else (torch.float64,)


def precondition(left: torch.Tensor | None, grad: torch.Tensor, right: torch.Tensor | None,
                 gout: torch.Tensor | None = None, x: torch.Tensor | None = None) -> torch.Tensor:
    """left @ grad @ right (either side may be None = identity), on the cheaper path.

    With ``gout`` (R x out) and ``x`` (R x in) such that grad == gout^T x, uses
    (left gout^T)(x right) when that costs fewer flops. The caller checks that identity.
    """
    out_dim, in_dim = grad.shape
    if gout is not None and x is not None:
        rows = gout.shape[0]
        dense = (out_dim * out_dim * in_dim if left is not None else 0) + \
                (out_dim * in_dim * in_dim if right is not None else 0)
        low = rows * ((out_dim * out_dim if left is not None else 0) +
                      (in_dim * in_dim if right is not None else 0) + out_dim * in_dim)
        if low < dense:
            a = gout.T if left is None else left @ gout.T
            b = x if right is None else x @ right
            return a @ b
    u = grad if left is None else left @ grad
    return u if right is None else u @ right


def matches_batch(grad: torch.Tensor, gout: torch.Tensor, x: torch.Tensor, rtol: float = 1e-3) -> bool:
    """Whether grad == gout^T x, checked on one random direction v: |grad v - gout^T (x v)|."""
    v = torch.randn(grad.shape[1], 1, dtype=grad.dtype, device=grad.device)
    a = grad @ v
    b = gout.T.to(grad.dtype) @ (x.to(grad.dtype) @ v)
    return bool(torch.linalg.vector_norm(a - b) <= rtol * torch.linalg.vector_norm(a) + 1e-30)
