"""parametrize(): muP for any torch model, from a narrow copy of it (the base model).

Like ``mup.set_base_shapes``, the roles come from shapes. Build the model twice, at the
width you want (``model``) and at the width you tune at (``base_model``), and compare each
weight's two dimensions (fan_out, fan_in) with the base's:

    only fan_out grows   "input"    the first Linear, an Embedding (its fan_in is the vocabulary)
    both grow            "hidden"   both by the same ratio M/M0, else the model is refused
    only fan_in grows    "output"   the readout, each head of a multi-head model
    neither grows        untouched  a fixed-size layer; it is not preconditioned (see below)

A 1-D parameter that grows (a bias, LayerNorm or BatchNorm affine parameter) is "vector-like",
and so is the weight of a depthwise convolution (groups = channels: k*k weights per channel).
Each tagged layer gets ``module.mup_role`` and ``module.mup_ratio`` = M/M0; each parameter
``param.mup_role`` and ``param.mup_ratio`` (``ml.make_optimizer`` and ``ml.layer_scales``
read these). The weights are then drawn afresh from the scaling table (``ml.init_weights``):

    input    N(0, sigma^2 / fan_in)          (an Embedding's fan_in is 1: one-hot inputs)
    hidden   N(0, sigma^2 / fan_in)          (= the base model's std times (M0/M)^(1/2))
    output   N(0, sigma^2 / fan_in * M0/M)   (muP: the readout shrinks like 1/M)

biases are set to zero (an Embedding's padding row too); LayerNorm/BatchNorm parameters keep
their own initialization.

Refused, before anything is changed: tied weights (one tensor in two layers, e.g. an embedding
shared with the readout: the two roles need different inits and learning rates), weights that
are computed from other parameters (weight_norm, spectral_norm, torch.nn.utils.parametrize)
and lazy modules not yet run. A model with no input-like or no output-like layer gets a
warning naming its first or last layers: the usual cause is a base model built with another
d_in, d_out or vocabulary, so that a fixed dimension looks like it grows.

What ``make_optimizer`` does with parameters the optimizer does not precondition (vector-like
parameters other than biases, fixed-size layers, anything else): K-FAC and FOOF (and SGD)
update them with SGD at the lr the muP-SGD table gives a vector-like parameter, lr (M/M0) for
one that grows (its gradient entries are ~ 1/M) and lr for a fixed-size one. Shampoo instead
preconditions vectors diagonally and gives growing ones the bias rule of ``scaling.layer_scales``.
Muon and SOAP (and Adam) update them with Adam at muP-Adam's lr for a vector-like parameter:
the base lr at every width (Muon's and SOAP's ``adam_lr``, which defaults to ``lr``).
"""
from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from .checks import check_choice, check_positive

SUPPORTED = (nn.Linear, nn.Conv2d, nn.Embedding)


def fan_out_in(module: nn.Module) -> tuple[int, int]:
    """(fan_out, fan_in) of a weight layer: Linear (out, in), Conv2d (out, in k k), Embedding (dim, vocab)."""
    w = module.weight
    if isinstance(module, nn.Embedding):
        return int(w.shape[1]), int(w.shape[0])
    return int(w.shape[0]), int(w[0].numel())


def _check_structure(m: nn.Module, arg: str) -> None:
    """Refuse lazy (uninitialized) parameters, parameters shared by two modules one of which is a
    weight layer (tied weights), and weight layers whose weight is not a plain parameter."""
    owners: dict = {}
    for mname, mod in m.named_modules():   # a module registered twice is one module, listed once
        for pname, p in mod.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            if isinstance(p, nn.parameter.UninitializedParameter):
                raise ValueError(f"{arg}: parameter {full!r} is not initialized yet (a lazy module); run one "
                                 "forward pass on it first, so that its shape is known")
            owners.setdefault(id(p), []).append((full, mod))
    for names in owners.values():
        if len(names) > 1 and any(isinstance(mod, SUPPORTED) for _, mod in names):
            (a, _), (b, _) = names[:2]
            raise ValueError(
                f"{arg}: {a!r} and {b!r} are one tensor (tied weights, e.g. head.weight = emb.weight); "
                "muP gives each layer its own role (an embedding and a readout: different inits and "
                "learning rates), which one tensor cannot have, and the optimizer would hold it twice. "
                f"Untie them (give {b.rsplit('.', 1)[0]!r} its own weight) in model and base_model alike")
    for mname, mod in m.named_modules():
        if isinstance(mod, SUPPORTED) and mod._parameters.get("weight") is not getattr(mod, "weight", None):
            raise ValueError(f"{arg}: layer {mname!r} computes its weight from other parameters (weight_norm, "
                             "spectral_norm or torch.nn.utils.parametrize), so it cannot be re-drawn or given a "
                             "role; build the model without that reparametrization")


def _warn_missing_roles(model, base_modules, delta_modules) -> None:
    """Warn when no tagged layer is input-like or none is output-like, naming the first/last layers."""
    tagged = [(n, m) for n, m in model.named_modules() if hasattr(m, "mup_role")]
    roles = {m.mup_role for _, m in tagged}
    for role, layers, dims in (("input", tagged[:3], "d_in or vocabulary"),
                               ("output", tagged[-3:], "d_out or vocabulary")):
        if role in roles:
            continue
        shown = "; ".join(
            f"{n!r} {m.mup_role}: {fan_out_in(m)} here, {fan_out_in(base_modules[n])} in base_model"
            + ("" if delta_modules is None else f", {fan_out_in(delta_modules[n])} in delta_model")
            for n, m in layers)
        grows, fixed = ("fan_out", "fan_in") if role == "input" else ("fan_in", "fan_out")
        warnings.warn(
            f"model: no {role}-like layer (one whose {grows} grows and {fixed} is fixed) among its tagged "
            f"layers: {shown}. Likely base_model was built with another {dims} than model, so a fixed "
            f"dimension looks like it grows and the {role} layer is read as hidden; build base_model with "
            f"model's {dims}, changing only the width", UserWarning, stacklevel=3)


def _role(name, shape, base_shape, delta_shape):
    """(role, ratio) of one weight from its (fan_out, fan_in) here, at the base and at the delta."""
    grows = [b != d for b, d in zip(base_shape, delta_shape)]
    ratios = [m / b for m, b in zip(shape, base_shape)]
    for g, m, b in zip(grows, shape, base_shape):
        if not g and m != b:
            raise ValueError(f"model: {name} has (fan_out, fan_in) {tuple(shape)} where the base model has "
                             f"{tuple(base_shape)}, but delta_model does not vary that dimension; build "
                             "delta_model at another width than base_model")
    if grows == [True, True]:
        if not math.isclose(ratios[0], ratios[1], rel_tol=1e-9):
            raise ValueError(
                f"model: {name} has (fan_out, fan_in) {tuple(shape)} against {tuple(base_shape)} in the base "
                f"model: its two dimensions grow by different factors ({ratios[0]:g} and {ratios[1]:g}). "
                "The muP rules assume one width ratio per layer; scale every hidden size of the model "
                "by the same factor (e.g. d_model and the MLP's hidden size both 4x), and build base_model "
                "with model's d_in, d_out and vocabulary")
        return "hidden", ratios[0]
    if grows == [True, False]:
        return "input", ratios[0]
    if grows == [False, True]:
        return "output", ratios[1]
    return None, 1.0


def parametrize(model: nn.Module, base_model: nn.Module, param: str = "mup", delta_model: nn.Module | None = None,
                sigma: float = 1.0, seed: int | None = 0) -> nn.Module:
    """Tag ``model``'s layers with roles and width ratios against ``base_model`` and re-draw its
    weights from the scaling table of ``param`` ("mup" or "sp"). Returns ``model``.

    ``base_model`` is the same architecture at the base width M0 (where the hyperparameters
    are tuned; at M == M0 muP and SP coincide). When ``model`` is built at the base width
    itself, pass ``delta_model`` (any other width) to say which dimensions grow.
    """
    param = check_choice("param", param, ("sp", "mup"))
    check_positive("sigma", sigma)
    for arg, m in (("model", model), ("base_model", base_model), ("delta_model", delta_model)):
        if m is not None and not isinstance(m, nn.Module):
            raise TypeError(f"{arg}: expected a torch.nn.Module, got {type(m).__name__}")
    if getattr(model, "mup_parametrized", False):
        raise ValueError("model: already parametrized (its weights were drawn from the table once); "
                         "build a fresh model and call ml.parametrize on that")
    if model is base_model:
        raise ValueError("base_model: expected a separate instance at the base width, got model itself")
    for arg, m in (("model", model), ("base_model", base_model), ("delta_model", delta_model)):
        if m is not None:
            _check_structure(m, arg)
    delta_model = base_model if delta_model is None else delta_model
    base, delta = dict(base_model.named_parameters()), dict(delta_model.named_parameters())
    own = dict(model.named_parameters())
    if set(own) != set(base) or set(own) != set(delta):
        diff = sorted(set(own) ^ set(base)) or sorted(set(own) ^ set(delta))
        raise ValueError(f"base_model: expected the same parameters as model (same architecture, other width), "
                         f"got different names, e.g. {diff[:3]}")
    ref = delta if delta_model is not base_model else own

    layer_params, ratios = set(), []
    base_modules, delta_modules = dict(base_model.named_modules()), dict(delta_model.named_modules())
    ref_modules = delta_modules if delta_model is not base_model else dict(model.named_modules())
    for name, module in model.named_modules():
        if not isinstance(module, SUPPORTED):
            continue
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            continue   # grouped convolutions: left to the "other parameters" rule below
        role, ratio = _role(f"layer {name!r}", fan_out_in(module), fan_out_in(base_modules[name]),
                            fan_out_in(ref_modules[name]))
        layer_params.update(id(p) for p in module.parameters(recurse=False))
        if role is None:
            continue
        module.mup_role, module.mup_ratio = role, float(ratio)
        for p in module.parameters(recurse=False):
            p.mup_role, p.mup_ratio = (role if p is module.weight else f"{role} bias"), float(ratio)
        ratios.append(ratio)

    grouped_convs = {id(m.weight): m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups != 1}
    for pname, p in own.items():
        if id(p) in layer_params:
            continue
        b, r = base[pname], ref[pname]
        growing = [i for i, (x, y) in enumerate(zip(b.shape, r.shape)) if x != y]
        if not growing:
            if tuple(p.shape) != tuple(b.shape):
                raise ValueError(f"model: parameter {pname!r} has shape {tuple(p.shape)} and {tuple(b.shape)} in the "
                                 "base model, but delta_model does not vary it; build delta_model at another width")
            continue
        grouped = grouped_convs.get(id(p))
        if grouped is not None and growing != [0]:
            raise ValueError(f"model: {pname!r} is the weight of a grouped nn.Conv2d (groups={grouped.groups}) whose "
                             f"channels per group grow with the width (shape {tuple(p.shape)}, base "
                             f"{tuple(b.shape)}), so no role can be read from it; use groups=1, or a depthwise "
                             "convolution (groups = channels: a fixed fan-in of k*k per channel, read as a vector)")
        if p.dim() != 1 and grouped is None:
            raise ValueError(f"model: parameter {pname!r} (shape {tuple(p.shape)}, base {tuple(b.shape)}) grows with "
                             "the width but is not the weight of an nn.Linear, nn.Conv2d or nn.Embedding, so no "
                             "role can be read from it; write that part of the model with those layers (for "
                             "attention: nn.Linear projections instead of nn.MultiheadAttention)")
        p.mup_role, p.mup_ratio = "vector", float(p.shape[0] / b.shape[0])
        ratios.append(p.mup_ratio)
    if not any(hasattr(m, "mup_role") for m in model.modules()):
        if delta_model is base_model:
            raise ValueError("model: it has the base model's shapes everywhere (it is built at the base width); "
                             "pass delta_model=the same architecture at another width, so the dimensions that "
                             "grow can be told apart")
        raise ValueError("delta_model: no weight layer differs in shape between base_model and delta_model; "
                         "build delta_model at another width")

    _warn_missing_roles(model, base_modules, delta_modules if delta_model is not base_model else None)

    # width bookkeeping for the tools that read one model width (make_optimizer, coord_check)
    widest = max(ratios)
    model.mup_ratio, model.param, model.mup_parametrized = float(widest), param, True
    input_layers = [m for m in model.modules() if getattr(m, "mup_role", None) == "input"]
    ref_layer = input_layers[0] if input_layers else next(m for m in model.modules() if hasattr(m, "mup_role"))
    name = next(n for n, m in model.named_modules() if m is ref_layer)
    width, base_width = fan_out_in(ref_layer)[0], fan_out_in(base_modules[name])[0]
    if ref_layer.mup_role == "output":
        width, base_width = fan_out_in(ref_layer)[1], fan_out_in(base_modules[name])[1]
    model.mup_width, model.mup_base_width = int(width), int(base_width)

    from .models import init_weights
    gen = None if seed is None else torch.Generator().manual_seed(int(seed))
    init_weights(model, param, sigma=sigma, generator=gen)
    return model
