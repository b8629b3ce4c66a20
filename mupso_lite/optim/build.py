"""make_optimizer: read the scaling table and return a configured optimizer.

The optimizers themselves know nothing about width; this function turns one base lr and
one base damping, tuned at the base width M0, into per-layer param groups at width M.
muP-SGD and muP-Adam are ``torch.optim.SGD`` / ``torch.optim.Adam`` with these groups (subclassed
as ``MuSGD`` / ``MuAdam`` only so that their checkpoints refuse another width). Muon and SOAP
get one group per weight matrix with the table's lr (and SOAP's eps) and Adam groups, at
muP-Adam's lrs from a base ``adam_lr``, for biases and everything else.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..roles import layer_roles, model_widths
from ..checks import check_choice, check_positive
from ..scaling import OPTIMIZERS, PARAMS, layer_scales
from .checkpoint import MuAdam, MuSGD
from .kfac import KFAC
from .muon import Muon
from .shampoo import Shampoo
from .soap import SOAP

DEFAULT_DAMPING = {"kfac": 0.1, "foof": 0.01, "shampoo": 1e-4, "soap": 1e-8}
KFAC_DAMPING = ("table", "fixed", "pi", "trace")
MUON_LR_RULES = ("table", "original", "matchrmsadamw")
ADAM_EPS = 1e-8   # the Adam-updated parts of Muon and SOAP: torch Adam's eps, as ml.MuAdam


def make_optimizer(model: nn.Module, name: str, lr: float, damping: float | None = None,
                   param: str | None = None, base_width: int | None = None, allow_mixed: bool = False,
                   **options):
    """An optimizer for ``model`` with per-layer lr (and damping) from the scaling table.

    Args:
        model: a role-tagged model (``ml.MLP``, ``ml.CNN`` or ``ml.tag_roles``).
        name: "sgd", "adam", "kfac", "shampoo", "foof", "muon" or "soap".
        lr: the base learning rate (the one tuned at the base width).
        damping: K-FAC/FOOF rho or Shampoo/SOAP eps at the base width (ignored by sgd, adam, muon).
        param: "sp" or "mup" (default: the model's own, else "mup"); a value that differs
            from the model's own is refused unless ``allow_mixed=True``.
        base_width: M0 (default: the model's; a different value is refused).
        allow_mixed: take learning rates (and damping) from ``param``'s row although the model
            was initialized from another row: an experiment, e.g. muP init with SP's one lr.
        options: passed to the optimizer. For K-FAC and FOOF, ``damping_mode`` is one of
            "table" (default: rho_A, rho_B scaled per layer by the table), "fixed" (rho at
            every width, the unscaled baseline), "pi" or "trace". For Shampoo, ``eps_mode``
            "absolute" (eps scaled by the table under muP) or "relative" (constant eps);
            with ``grafting`` the lr follows the grafted optimizer's row of the table.
            For Muon and SOAP (see ``muon_soap_groups``): ``adam_lr``, ``io`` and, for Muon,
            ``lr_rule``.
    """
    name = check_choice("name", name, OPTIMIZERS)
    check_positive("lr", lr)
    if damping is None:
        damping = DEFAULT_DAMPING.get(name, 0.0)
    check_positive("damping", damping, allow_zero=True)
    layers = layer_roles(model)  # raises a clear error for a model without roles
    own_param = getattr(model, "param", None)
    param = check_choice("param", param if param is not None else own_param or "mup", PARAMS)
    if own_param is not None and param != own_param and not allow_mixed:
        raise ValueError(f"param: the model was initialized with param={own_param!r}, got param={param!r}; "
                         "init and learning rates must come from the same row of the table (omit param= "
                         "to use the model's, or pass allow_mixed=True for a deliberate mix)")
    own_base = getattr(model, "mup_base_width", None)
    if base_width is not None and own_base is not None and base_width != own_base:
        raise ValueError(f"base_width: the model was built with base_width={own_base}, got base_width="
                         f"{base_width!r}; omit base_width= to use the model's")
    width, base_width = model_widths(model, None, base_width)
    if name in ("muon", "soap"):
        return muon_soap_groups(model, name, lr, damping, param, width, base_width, **options)
    root = options.get("root", 0.25)
    lr_rule = name
    if name == "shampoo" and options.get("grafting"):
        lr_rule = check_choice("grafting", options["grafting"], ("sgd", "adam"))
    scales = layer_scales(model, param, lr_rule, lr=lr, damping=damping, width=width,
                          base_width=base_width, root=root)
    damp = {s.name: s for s in layer_scales(model, param, name, lr=lr, damping=damping,
                                            width=width, base_width=base_width, root=root)}
    taken = {id(p) for _, m, _ in layers for p in m.parameters(recurse=False)}
    rest = [p for p in model.parameters() if id(p) not in taken and p.requires_grad]
    root_e = float(root)

    if name in ("sgd", "adam"):
        groups = []
        for s, (_, m, _) in zip(scales, layers):
            groups.append({"params": [m.weight], "lr": s.lr, "layer": s.name})
            if bias_of(m) is not None:
                groups.append({"params": [bias_of(m)], "lr": s.bias_lr, "layer": s.name + ".bias"})
        groups += other_groups(rest, param, name, lr)
        cls = MuSGD if name == "sgd" else MuAdam
        return cls(groups, lr=lr, **options)

    if name in ("kfac", "foof"):
        mode = check_choice("damping_mode", options.pop("damping_mode", "table"), KFAC_DAMPING)
        groups = []
        for s, (_, m, _) in zip(scales, layers):
            g = {"params": [p for p in (m.weight, bias_of(m)) if p is not None], "lr": s.lr, "layer": s.name}
            if mode == "table":
                g["damping_a"], g["damping_b"] = damp[s.name].damping_a, damp[s.name].damping_b
                if bias_of(m) is not None:   # muP: the bias coordinate is damped at its own scale
                    g["damping_bias"] = damp[s.name].damping_bias
            groups.append(g)
        groups += other_groups(rest, param, "sgd", lr)   # K-FAC updates these with SGD
        if name == "foof":
            options["foof"] = True
        # "table" and "fixed" both hand KFAC per-layer rho_A, rho_B to use as given (scaled or not)
        return KFAC(model, lr=lr, damping=damping, damping_mode="given" if mode in ("table", "fixed") else mode,
                    params=groups, **options)

    eps_mode = check_choice("eps_mode", options.get("eps_mode", "absolute"), ("absolute", "relative"))
    groups = []
    for s, (_, m, _) in zip(scales, layers):
        eps = damp[s.name].eps if eps_mode == "absolute" else damping
        groups.append({"params": [m.weight], "lr": s.lr, "eps": eps, "layer": s.name})
        if bias_of(m) is not None:   # a vector with its own diagonal preconditioner: its own lr and eps
            bias_eps = damp[s.name].bias_eps if eps_mode == "absolute" else damping
            groups.append({"params": [bias_of(m)], "lr": damp[s.name].bias_lr if not options.get("grafting")
                           else s.bias_lr, "eps": bias_eps, "layer": s.name + ".bias"})
    groups += other_groups(rest, param, "shampoo", lr, eps=damping, root=root_e)
    options.setdefault("model", model)
    return Shampoo(groups, lr=lr, eps=damping, **options)


def muon_soap_groups(model, name: str, lr: float, damping: float, param: str, width: int, base_width: int,
                     adam_lr: float | None = None, io: str | None = None, lr_rule: str = "table", **options):
    """``make_optimizer`` for "muon" and "soap": one group per weight matrix, Adam for the rest.

    Matrices: lr from the table (muP: lr (M/M0)^(1/2), lr, lr (M0/M)^(1/2) for input, hidden,
    output) and, for SOAP, eps = damping scaled by the table. Biases, parameters outside the role
    layers, and with ``io="adam"`` the input and output layers (as Muon's authors treat the
    embedding and the classifier head): Adam at muP-Adam's lrs from the base ``adam_lr``, eps 1e-8.
    ``adam_lr`` defaults to ``lr``, one base lr to tune as for the other optimizers: then a hidden
    bias (Adam: entries +-lr) moves its pre-activations as much as the orthogonalized weight step
    does (entries lr |x| / sqrt(fan_out) ~ lr). The reference tunes them apart (Muon 0.02, Adam
    3e-4 ... 1e-2): pass ``adam_lr`` when the Adam parts matter (``io="adam"``).
    ``io``: "muon" / "soap" (default: every role layer by the optimizer) or "adam".
    ``lr_rule`` (Muon only): "table" (default), or, for comparisons, "original" (the reference's
    lr sqrt(max(1, rows/cols)) per matrix, no width factor) or "match_rms_adamw" (torch.optim.Muon's
    0.2 lr sqrt(max(rows, cols))).
    ``weight_decay`` wd (decoupled, W <- W (1 - lr_group wd_group)) is set per group so that the
    shrink per step is the base one in every group at every width: lr_group wd_group = lr wd
    (adam_lr wd for the Adam groups), so wd_group = wd lr / lr_group takes the lr's width factors
    inverted (``docs/family.md`` section 5).
    """
    adam_lr = lr if adam_lr is None else check_positive("adam_lr", adam_lr)
    io = check_choice("io", io if io is not None else name, (name, "adam"))
    if name == "soap" and lr_rule != "table":
        raise ValueError(f"lr_rule: only Muon has lr rules besides the table, got lr_rule={lr_rule!r} for soap")
    lr_rule = check_choice("lr_rule", lr_rule, MUON_LR_RULES)
    layers = layer_roles(model)
    scales = layer_scales(model, param, name, lr=lr, damping=damping, width=width, base_width=base_width)
    adam = layer_scales(model, param, "adam", lr=adam_lr, width=width, base_width=base_width)
    flag = "use_muon" if name == "muon" else "use_soap"
    groups = []
    for s, a, (_, m, role) in zip(scales, adam, layers):
        if io == "adam" and role in ("input", "output"):
            groups.append({"params": [m.weight], "lr": a.lr, "eps": ADAM_EPS, "layer": s.name, flag: False})
        else:
            rows, cols = m.weight.shape[0], m.weight[0].numel()   # the matrix Muon orthogonalizes
            g_lr = {"table": s.lr, "original": lr * math.sqrt(max(1.0, rows / cols)),
                    "matchrmsadamw": 0.2 * lr * math.sqrt(max(rows, cols))}[lr_rule]
            groups.append({"params": [m.weight], "lr": g_lr, "layer": s.name, flag: True,
                           **({"eps": s.eps} if name == "soap" else {})})
        if bias_of(m) is not None:
            groups.append({"params": [bias_of(m)], "lr": a.bias_lr, "eps": ADAM_EPS, "layer": s.name + ".bias",
                           flag: False})
    taken = {id(p) for _, m, _ in layers for p in m.parameters(recurse=False)}
    rest = [p for p in model.parameters() if id(p) not in taken and p.requires_grad]
    groups += [{**g, "eps": ADAM_EPS, flag: False} for g in other_groups(rest, param, "adam", adam_lr)]
    wd = check_positive("weight_decay", options.pop("weight_decay", 0.0), allow_zero=True)
    for g in groups:   # decoupled decay: the same shrink per step, lr wd, in every group at every width
        g["weight_decay"] = wd * (adam_lr if not g[flag] else lr) / g["lr"]
    if name == "muon":
        return Muon(groups, lr=lr, lr_rule=lr_rule, **options)
    return SOAP(groups, lr=lr, eps=damping, **options)


def other_groups(params, param: str, rule: str, lr: float, eps: float | None = None, root: float = 0.25) -> list[dict]:
    """Param groups for the parameters outside the role-tagged layers (LayerNorm/BatchNorm
    affine parameters, fixed-size layers, ...). A vector-like one that grows with width
    (``ml.parametrize`` marks it with ``mup_ratio`` = M/M0) gets, under muP, the lr of a
    vector-like parameter: SGD (and K-FAC, which updates these with SGD) lr (M/M0), since its
    gradient entries are ~ 1/M; Adam lr; Shampoo the bias rule of ``scaling.layer_scales``,
    lr (M/M0)^(1-3e) and eps (M0/M)^2. Everything else keeps lr (and eps)."""
    groups: dict = {}
    for p in params:
        ratio = getattr(p, "mup_ratio", 1.0) if param == "mup" else 1.0
        if rule == "shampoo":
            key = (lr * ratio ** (1 - 3 * root), eps / ratio ** 2)
        else:
            key = (lr * ratio if rule == "sgd" else lr, None)
        groups.setdefault(key, []).append(p)
    out = []
    for (g_lr, g_eps), ps in groups.items():
        g = {"params": ps, "lr": g_lr, "layer": None}
        if rule == "shampoo":
            g["eps"] = g_eps
        out.append(g)
    return out


def bias_of(module: nn.Module):
    """The layer's bias, or None (an nn.Embedding has no bias attribute at all)."""
    return getattr(module, "bias", None)
