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


def damped_inverse(factor: torch.Tensor, rho) -> torch.Tensor:
    """(F + rho I)^-1 for a symmetric PSD F, by Cholesky (float64 retry, eigh last resort);
    ``rho`` a number, or a vector for a diagonal damping (F + diag(rho))^-1.

    F + rho I = C C^T, then C^-T C^-1 by ``cholesky_inverse`` (LAPACK potri). On a CPU running
    more than one thread we use ``cholesky_solve(I, C)`` instead: potri is about 1.5x faster
    on an idle machine, but its many small parallel sections stall when other processes share
    the cores (measured 50x slower; docs/performance.md). One host sync (the Cholesky
    status), only when the inverse is refreshed.
    """
    eye = torch.eye(factor.shape[0], dtype=factor.dtype, device=factor.device)
    if torch.is_tensor(rho):   # a diagonal damping: fold it into the factor, then add nothing
        factor, rho = factor + torch.diag(rho.to(factor.dtype)), 0.0
    for dtype in _dtypes(factor):
        e = eye.to(dtype)
        chol, info = torch.linalg.cholesky_ex(torch.add(factor.to(dtype), e, alpha=rho))
        if int(info) == 0:
            if factor.device.type == "cpu" and torch.get_num_threads() > 1:
                inv = torch.cholesky_solve(e, chol)
            else:
                inv = torch.cholesky_inverse(chol)
            # both come back column-major; a row-major copy makes every later product ~20% faster
            return inv.to(factor.dtype).contiguous()
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


HALF = (torch.float16, torch.bfloat16)


def as_curvature(t: torch.Tensor) -> torch.Tensor:
    """``t`` in the dtype the curvature is computed in: float32 for float16 / bfloat16 (no
    half-precision Cholesky on the CPU, and sums of squares lose too much in 8 bits of
    mantissa), else unchanged."""
    return t.float() if t.dtype in HALF else t


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


def gram_update_(f: torch.Tensor, x: torch.Tensor, beta: float, alpha: float) -> torch.Tensor:
    """f <- beta f + alpha x^T x, in place (one fused GEMM per block, no temporary).

    When x has many more rows than columns (a convolution's patches: N H' W' rows), only the
    blocks on and above the diagonal of a 3 x 3 block grid are multiplied and the rest is
    mirrored: 6/9 of the flops, measured 74 -> 56 ms on 8192 x 577 patches on one CPU thread.
    For a batch of a few hundred rows it gains nothing (the mirror copies cost what the
    GEMM saves), and one ``addmm_`` is used."""
    rows, dim = x.shape
    if rows < 4 * dim or dim < 192:
        return f.addmm_(x.T, x, beta=beta, alpha=alpha)
    edges = [round(k * dim / 3) for k in range(4)]
    blocks = [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]
    for i, a in enumerate(blocks):
        for b in blocks[i:]:
            f[a, b].addmm_(x[:, a].T, x[:, b], beta=beta, alpha=alpha)
            if b != a:
                f[b, a] = f[a, b].T
    return f


def matches_batch(grad: torch.Tensor, gout: torch.Tensor, x: torch.Tensor, rtol: float = 1e-3) -> bool:
    """Whether grad == gout^T x, checked on one random direction v: |grad v - gout^T (x v)|.

    v is drawn from its own generator with a fixed seed: the check neither moves the global
    random stream (which the MC Fisher and the user's code draw from) nor depends on what ran
    before, so runs repeat exactly. Any edit of .grad (clipping, accumulation) moves grad v."""
    gen = torch.Generator(device=grad.device).manual_seed(0)
    v = torch.randn(grad.shape[1], 1, dtype=grad.dtype, device=grad.device, generator=gen)
    a = grad @ v
    b = gout.T.to(grad.dtype) @ (x.to(grad.dtype) @ v)
    return bool(torch.linalg.vector_norm(a - b) <= rtol * torch.linalg.vector_norm(a) + 1e-30)


def covers_layer(gout: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether the batch has at least as many rows as the layer has inputs and outputs (a
    convolution's patches, or a batch wider than the layer). Then the current batch's factors
    are full-rank and cheaper to form and invert than to push the gradient through R rows:
    the push-through's last product alone, out x R x in, costs more than the dense solves."""
    return x.shape[0] >= x.shape[1] and gout.shape[0] >= gout.shape[1]


def pushthrough_precondition(gout: torch.Tensor, x: torch.Tensor, n: int, rho_b: float | None,
                             rho_a: float, fisher_gout: torch.Tensor | None = None) -> torch.Tensor:
    """K-FAC's update when the factors are those of the current batch, without inverting them.

    With A = x^T x / R, B = n gout^T gout (R rows, n examples) and G = gout^T x, the
    push-through identity (D^T D + rho I)^-1 D^T = D^T (D D^T + rho I)^-1 gives

        (B + rho_b I)^-1 G (A + rho_a I)^-1 = [(n gout gout^T + rho_b I)^-1 gout]^T [(x x^T / R + rho_a I)^-1 x]

    Each side is solved in R x R (Gram) form when R is smaller than that side's dimension,
    else in the usual dim x dim form (``_spd_solve``: Cholesky, then the small system's inverse
    times the right-hand side); no width x width factor is formed.
    ``rho_b=None``: FOOF (B = I), the left side is gout itself. Needs rho > 0. ``rho_a`` may be
    a vector d (a diagonal damping): with x' = x d^-1/2, x (A + diag d)^-1 = x' (x'^T x'/R + I)^-1 d^-1/2.
    ``fisher_gout``: B from other rows (the MC Fisher's sampled output gradients, B = n s^T s)
    while G keeps the true ones; the left side is then gout (B + rho_b I)^-1 by the Woodbury
    identity, again in R x R form.
    """
    left, right = pushthrough_factors(gout, x, n, rho_b, rho_a, fisher_gout)
    return left.T @ right


def pushthrough_factors(gout: torch.Tensor, x: torch.Tensor, n: int, rho_b: float | None, rho_a,
                        fisher_gout: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(left, right), both R x dim, with ``pushthrough_precondition(...) == left.T @ right``: the
    update in factored form, so that the caller can add it to the weight in one fused GEMM
    (``W.addmm_(left.T, right, alpha=-lr)``) without forming the out x in matrix first."""
    if torch.is_tensor(rho_a):
        scale = rho_a.to(x.dtype).rsqrt()
        right = _side_solve(x * scale, 1.0, 1.0 / x.shape[0]) * scale
    else:
        right = _side_solve(x, rho_a, 1.0 / x.shape[0])
    if rho_b is None:
        left = gout
    elif fisher_gout is None:
        left = _side_solve(gout, rho_b, float(n))
    else:
        left = _side_solve(fisher_gout, rho_b, float(n), rhs=gout)
    return left, right


def current_batch_root_update(gout: torch.Tensor | None, x: torch.Tensor | None, exponent: float, eps: float,
                              relative: bool = False, grad: torch.Tensor | None = None) -> torch.Tensor:
    """Shampoo's update (L + eps_L I)^-e G (R + eps_R I)^-e when the statistics are the
    current batch's, L = G G^T and R = G^T G, from the singular values of G alone.

    With G = P S Q^T (thin SVD), L = P S^2 P^T, and since every column of G lies in the span
    of P, (L + eps I)^-e G = P (S^2 + eps)^-e S Q^T:

        update = P diag(s (s^2 + eps_L)^-e (s^2 + eps_R)^-e) Q^T.

    ``relative``: eps_L = eps_R = eps s_max^2 (lambda_max of L and of R). As eps -> 0 with
    e = 1/4 the update tends to P Q^T, the gradient with all its singular values set to 1.

    With G = gout^T x (R rows) and R < min(out, in), the SVD is taken through thin QRs:
    gout^T = Q1 T1, x^T = Q2 T2, G = Q1 (T1 T2^T) Q2^T, and the R x R SVD T1 T2^T = U S V^T
    gives P = Q1 U, Q = Q2 V. Cost: two thin QRs, one R x R SVD, one out x R x in product; no
    out x out or in x in matrix is formed or decomposed. Otherwise (``grad`` given, or a batch
    at least as large as the layer) the SVD of G itself, which is cheaper than the two
    eigendecompositions of L and R it replaces.
    """
    last = None
    thin = gout is not None and x is not None and gout.shape[0] < min(gout.shape[1], x.shape[1])
    like = gout if thin else grad if grad is not None else gout.T @ x
    for dtype in _dtypes(like):
        try:
            if thin:
                q1, t1 = torch.linalg.qr(gout.T.to(dtype))
                q2, t2 = torch.linalg.qr(x.T.to(dtype))
                u, s, vh = torch.linalg.svd(t1 @ t2.T, full_matrices=False)
                p, q = q1 @ u, q2 @ vh.T
            else:
                p, s, vh = torch.linalg.svd(like.to(dtype), full_matrices=False)
                q = vh.T
        except RuntimeError as err:   # non-convergence: retry in float64
            last = err
            continue
        lam = s * s                                        # the nonzero eigenvalues of L and of R
        top = max(float(lam.max()), 1e-30) if lam.numel() else 1e-30
        ridge = eps * top if relative else eps
        floor = torch.finfo(dtype).eps * top               # as in inverse_root: finite when eps = 0
        scale = s * (lam + ridge).clamp_min(floor) ** (-2 * exponent)
        return ((p * scale) @ q.T).to(like.dtype)
    raise RuntimeError(f"current_batch_root_update: SVD failed in float64 too ({last})")


def _side_solve(d: torch.Tensor, rho: float, scale: float, rhs: torch.Tensor | None = None) -> torch.Tensor:
    """rhs (scale d^T d + rho I)^-1 (rhs defaults to d), in the smaller of the two sizes.

    For rhs = d, push-through: d (scale d^T d + rho I)^-1 = (scale d d^T + rho I)^-1 d.
    For other rows, Woodbury: (scale d^T d + rho I)^-1 = (I - d^T (d d^T + rho/scale I)^-1 d) / rho."""
    rows, dim = d.shape
    if rows < dim:
        k = torch.eye(rows, dtype=d.dtype, device=d.device)
        if rhs is None:
            return _spd_solve(torch.addmm(k, d, d.T, beta=rho, alpha=scale), d)
        inner = _spd_solve(torch.addmm(k, d, d.T, beta=rho / scale, alpha=1.0), d)   # (d d^T + rho/scale)^-1 d
        return (rhs - (rhs @ d.T) @ inner) / rho
    k = torch.eye(dim, dtype=d.dtype, device=d.device)
    return _spd_solve(torch.addmm(k, d.T, d, beta=rho, alpha=scale), (d if rhs is None else rhs).T).T


def _spd_solve(k: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """k^-1 rhs for a small symmetric positive definite k (Cholesky; float64 retry; lstsq last).

    k is at most R x R here and rhs has width columns: forming k^-1 (potri, k^3 / 3 flops) and
    one matmul runs at matmul speed, where the two triangular solves of ``cholesky_solve``
    (about 2 k^2 width flops at a third of it) took 3x longer on one CPU thread."""
    for dtype in _dtypes(k):
        chol, info = torch.linalg.cholesky_ex(k.to(dtype))
        if int(info) == 0:
            return (torch.cholesky_inverse(chol) @ rhs.to(dtype)).to(rhs.dtype)
    return torch.linalg.lstsq(k.double(), rhs.double()).solution.to(rhs.dtype)
