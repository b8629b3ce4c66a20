"""The width-scaling table: SP and muP for SGD, Adam, K-FAC, Shampoo, FOOF, Muon and SOAP.

Everything that depends on width reads this module and nothing else.

A *parametrization* is a table of exponents of the width M, one per layer role
(input, hidden, output). Like ``mup``, every rule is relative to a base width M0:

    factor(M) = (M / M0) ** (-exponent)

so at M == M0 every parametrization equals SP and hyperparameters tuned on the narrow
base model are the ones the wide model uses (Ishikawa & Karakida, ICLR 2024, Table 1;
the one-step derivation is in notebook 02).

    init std   sigma / sqrt(fan_in at M0) * factor(b)       (b: init exponent)
    lr         lr * factor(c)                                (c: lr exponent)
    damping    rho * factor(d)  per K-FAC factor / Shampoo and SOAP eps

Negative exponents make a quantity *grow* with width (muP-SGD's input-layer lr,
K-FAC's rho_A in hidden layers). The input layer's fan-in is fixed, so its init std is
sigma / sqrt(d_in) at every width.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import nn

from .checks import check_choice, check_positive  # noqa: F401 (re-exported)
from .roles import layer_roles, model_widths

ROLES = ("input", "hidden", "output")
PARAMS = ("sp", "mup")
OPTIMIZERS = ("sgd", "adam", "kfac", "shampoo", "foof", "muon", "soap")

# The muP init is the same for every optimizer; only lr and damping change.
_SP_INIT = (0.0, 0.5, 0.5)
_MUP_INIT = (0.0, 0.5, 1.0)
_ZERO = (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class Rule:
    """Exponents of one (parametrization, optimizer) row; tuples are (input, hidden, output).

    ``damping_a``/``damping_b``: exponents of K-FAC's (and FOOF's) rho_A (input-side factor
    A = E[x x^T]) and rho_B (output-gradient factor B = E[delta delta^T]); ``eps``: exponents
    of Shampoo's absolute eps and of SOAP's eps. ``None`` means the optimizer has no such quantity.
    """

    param: str
    optimizer: str
    init: tuple
    lr: tuple
    damping_a: tuple | None = None
    damping_b: tuple | None = None
    note: str = ""
    eps: tuple | None = None

    def factor(self, kind: str, role: str, width: int, base_width: int) -> float:
        """(width / base_width) ** (-exponent) for ``kind`` in {init, lr, damping_a, damping_b, eps}."""
        exps = getattr(self, kind)
        if exps is None:
            return 1.0
        e = exps[ROLES.index(role)]
        return float((width / base_width) ** (-e))


def rule(param: str, optimizer: str, root: float = 0.25) -> Rule:
    """The scaling rule of ``param`` in {"sp", "mup"} for ``optimizer``.

    ``root`` is Shampoo's inverse-root exponent e (update L^-e G R^-e); muP-Shampoo's
    lr exponents are (2e - 1, 0, 1 - 2e), i.e. (-1/2, 0, 1/2) for the usual e = 1/4.
    They come from a one-step, batch-of-one argument. With a batch of B the first step is
    U diag(s (s^2 + eps)^(-2e)) V^T for G = U S V^T: at e = 1/4 every direction gets the same
    step, at e = 1/2 the weak directions (the examples' differing activation masks, less and
    less aligned with the readout as M grows) get the largest. Then the output's change falls
    with width over widths up to about 16 B (width exponent -0.27 at B = 64 over
    64...1024, -0.05 over 1024...8192): prefer e = 1/4, or at e = 1/2 ``eps_mode="relative"``
    with eps 1e-2...0.1 (``scripts/exp_shampoo_root.py``).

    Muon and SOAP, from the same argument. With a batch of one, G = delta x^T has rank one and
    its orthogonalized step is (delta/|delta|)(x/|x|)^T (Muon; SOAP's first step too), so
    dh = -lr (delta/|delta|) |x|, entries lr |x| / sqrt(fan_out). muP: |x| ~ 1, sqrt(M), sqrt(M)
    at the input, hidden and output layers and fan_out ~ M, M, 1, so lr ~ sqrt(fan_out/fan_in):
    exponents (-1/2, 0, 1/2), the spectral condition (Yang, Simon & Bernstein, arXiv 2310.17813),
    the same as Shampoo at e = 1/4. No damping for Muon. SOAP's eps competes with the rotated
    gradient G' = Q_L^T G Q_R, entries ~ |delta| |x| ~ M^(-1/2), 1, M^(1/2) (delta entries ~ 1/M
    below the output, ~ 1 at the output): eps exponents (1/2, 0, -1/2). Biases and other vectors
    are updated by Adam in both: muP-Adam's lrs (``layer_scales``). SOAP's row holds for its first
    step only: from step 2 on its basis is older than the gradient, and Adam's entrywise division
    makes the step dense in that basis, as Adam's is; on the teacher task (batch 64, widths
    64...2048) the feature change then grows like M^0.5 at the input and hidden layers.
    """
    param = check_choice("param", param, PARAMS)
    optimizer = check_choice("optimizer", optimizer, OPTIMIZERS)
    if param == "sp":
        return Rule("sp", optimizer, _SP_INIT, _ZERO, _ZERO if optimizer in ("kfac", "foof") else None,
                    _ZERO if optimizer == "kfac" else None, "standard init, one lr for all layers, fixed damping",
                    eps=_ZERO if optimizer in ("shampoo", "soap") else None)
    if optimizer == "sgd":
        return Rule("mup", "sgd", _MUP_INIT, (-1.0, 0.0, 1.0), note="lr grows like M at the input layer, falls like 1/M at the output")
    if optimizer == "adam":
        return Rule("mup", "adam", _MUP_INIT, (0.0, 1.0, 1.0), note="Adam normalizes the gradient: lr ~ 1/fan_in for hidden and output")
    if optimizer == "kfac":
        return Rule("mup", "kfac", _MUP_INIT, _ZERO, (0.0, -1.0, -1.0), (1.0, 1.0, 0.0),
                    "one lr for all layers; rho_A ~ |x|^2, rho_B ~ |delta|^2")
    if optimizer == "foof":
        return Rule("mup", "foof", _MUP_INIT, (-1.0, -1.0, 0.0), (0.0, -1.0, -1.0), None,
                    "A-side only: lr must absorb delta ~ 1/M")
    if optimizer == "muon":
        return Rule("mup", "muon", _MUP_INIT, (-0.5, 0.0, 0.5),
                    note="orthogonalized step: lr ~ sqrt(fan_out / fan_in) (spectral condition)")
    if optimizer == "soap":
        return Rule("mup", "soap", _MUP_INIT, (-0.5, 0.0, 0.5),
                    note="first step = Muon's: lr ~ sqrt(fan_out / fan_in); eps ~ |delta| |x|", eps=(0.5, 0.0, -0.5))
    e = float(root)
    if not 0.0 < e <= 0.5:
        raise ValueError(f"root: expected a Shampoo exponent in (0, 0.5], got {root!r}")
    return Rule("mup", "shampoo", _MUP_INIT, (2 * e - 1, 0.0, 1 - 2 * e),
                note="lr ~ sqrt(fan_in / fan_out); eps ~ |x|^2 |delta|^2 (or relative to lambda_max: constant)",
                eps=(1.0, 0.0, -1.0))


@dataclass
class LayerScale:
    """What the table gives one layer at a given width: the numbers the optimizer uses."""

    name: str
    role: str
    fan_in: int
    init_std: float
    lr: float
    bias_lr: float
    damping_a: float | None
    damping_b: float | None
    eps: float | None = None
    damping_bias: float | None = None
    bias_eps: float | None = None


def layer_scales(model, param: str, optimizer: str, lr: float = 1.0, damping: float = 0.0,
                 sigma: float = 1.0, width: int | None = None, base_width: int | None = None,
                 root: float = 0.25) -> list[LayerScale]:
    """Per-layer init std, lr and damping for ``model`` (whose layers carry roles).

    init_std = sigma / sqrt(fan_in) * (M/M0)^(1/2 - b)  for hidden and output layers
               (= sigma / sqrt(fan_in at M0) * (M/M0)^(-b)),  sigma / sqrt(d_in) for the input.
    lr       = lr * (M/M0)^(-c);  damping_{a,b} = damping * (M/M0)^(-d_{a,b});
    eps      = damping * (M/M0)^(-e_eps)  (Shampoo, SOAP: ``damping`` is the base eps).
    Biases: Muon and SOAP update biases with Adam, at muP-Adam's bias lr (= lr at every width).
    For SGD and Adam, a bias of the input or hidden layer is a "vector-like"
    parameter (one infinite dimension, like input weights), so it follows the input layer's
    lr exponent; the output bias (finite size) keeps the base lr. K-FAC and FOOF share the
    layer's lr with the bias and precondition it as A's homogeneous coordinate, damped under
    muP by ``damping_bias`` = rho_A M0/M in hidden and output layers: that coordinate is 1
    while a growing fan-in's |x|^2 grows like M, so the layer's rho_A ~ M would freeze it.
    Shampoo preconditions a bias g (size n) diagonally, u_i = g_i / ((g_i^2 + eps)^e (|g|^2 + eps)^e).
    With entries of size s and eps negligible, u_i ~ s^(1-4e) n^-e. Under muP an input or
    hidden bias has n = M and s ~ 1/M (the backward signal through a 1/M readout), so
    u_i ~ M^(3e-1) and the bias needs ``bias_lr`` = lr (M/M0)^(1-3e) (M^(1/4) at e = 1/4) and
    ``bias_eps`` = eps (M0/M)^2 (its statistic g_i^2 ~ M^-2); the output bias (n fixed, s ~ 1)
    keeps the base lr and eps.
    """
    layers = layer_roles(model)
    width, base_width = model_widths(model, width, base_width)
    r = rule(param, optimizer, root)
    out = []
    for name, module, role in layers:
        fan_in = _fan_in(module)
        ratio = getattr(module, "mup_ratio", width / base_width)   # per layer after ml.parametrize
        if role == "input":
            std = sigma / math.sqrt(fan_in)
        else:
            std = sigma / math.sqrt(fan_in) * ratio ** (0.5 - r.init[ROLES.index(role)])
        layer_lr = lr * r.factor("lr", role, ratio, 1.0)
        if optimizer in ("sgd", "adam"):
            bias_role = "input" if role != "output" else None
            bias_lr = lr * r.factor("lr", bias_role, ratio, 1.0) if bias_role else lr
        elif optimizer in ("muon", "soap"):
            bias_lr = lr   # Adam's bias rule: factor 1 under SP and muP
        else:
            bias_lr = layer_lr
        da = damping * r.factor("damping_a", role, ratio, 1.0) if r.damping_a else None
        db = damping * r.factor("damping_b", role, ratio, 1.0) if r.damping_b else None
        eps = damping * r.factor("eps", role, ratio, 1.0) if r.eps else None
        dbias = bias_eps = None
        if da is not None and param == "mup":
            dbias = da if role == "input" else da / ratio
        if optimizer == "shampoo":
            bias_eps = damping
            if param == "mup" and role != "output":
                bias_lr, bias_eps = lr * ratio ** (1 - 3 * float(root)), damping / ratio ** 2
            elif param == "mup":
                bias_lr = lr
        out.append(LayerScale(name, role, fan_in, std, layer_lr, bias_lr, da, db, eps, dbias, bias_eps))
    return out


def _fan_in(module) -> int:
    """Inputs per output unit; 1 for an nn.Embedding (a one-hot input has |x|^2 = 1)."""
    if isinstance(module, nn.Embedding):
        return 1
    w = module.weight
    return int(w[0].numel())


# ---------------------------------------------------------------- the table as data
@dataclass
class ScalingTable:
    """The exponent table as rows; prints in a terminal and renders as HTML in a notebook."""

    rows: list = field(default_factory=list)
    root: float = 0.25

    def records(self) -> list[dict]:
        """One dict per (param, optimizer): exponents of M with factor (M/M0)^(-exponent)."""
        recs = []
        for r in self.rows:
            recs.append({
                "param": r.param, "optimizer": r.optimizer,
                **{f"init_{k}": r.init[i] for i, k in enumerate(ROLES)},
                **{f"lr_{k}": r.lr[i] for i, k in enumerate(ROLES)},
                **{f"damping_a_{k}": (r.damping_a[i] if r.damping_a else None) for i, k in enumerate(ROLES)},
                **{f"damping_b_{k}": (r.damping_b[i] if r.damping_b else None) for i, k in enumerate(ROLES)},
                **{f"eps_{k}": (r.eps[i] if r.eps else None) for i, k in enumerate(ROLES)},
                "note": r.note,
            })
        return recs

    def to_frame(self):
        """The table as a pandas DataFrame (one row per parametrization and optimizer)."""
        import pandas as pd
        return pd.DataFrame(self.records())

    def _cells(self):
        def fmt(t, scale=False):
            if t is None:
                return "-"
            if scale:  # damping: show the proportionality M^(-d)
                return ", ".join(_power(-x) for x in t)
            return ", ".join(_num(x) for x in t)
        head = ["param", "optimizer", "init b (in, hid, out)", "lr c (in, hid, out)",
                "rho_A / eps scale", "rho_B scale"]
        body = [[r.param, r.optimizer, fmt(r.init), fmt(r.lr), fmt(r.damping_a or r.eps, True),
                 fmt(r.damping_b, True)] for r in self.rows]
        return head, body

    def __repr__(self) -> str:
        head, body = self._cells()
        widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
        line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
        return "\n".join([
            "Width scaling: factor = (M/M0)^(-exponent); damping columns show how it grows with M",
            line(head), line(["-" * w for w in widths]), *map(line, body)])

    def _repr_html_(self) -> str:
        head, body = self._cells()
        th = "".join(f"<th>{h}</th>" for h in head)
        trs = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in body)
        return (f"<table><caption>Width scaling: factor = (M/M<sub>0</sub>)<sup>-exponent</sup>"
                f"</caption><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>")


def _num(x: float) -> str:
    return {0.5: "1/2", -0.5: "-1/2"}.get(x, f"{x:g}")


def _power(x: float) -> str:
    return "1" if x == 0 else ("M" if x == 1 else f"M^{_num(x)}")


def scaling_table(root: float = 0.25) -> ScalingTable:
    """All rows of the table (SP and muP for every optimizer), Shampoo at inverse root ``root``."""
    return ScalingTable([rule(p, o, root) for p in PARAMS for o in OPTIMIZERS], root)
