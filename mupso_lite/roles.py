"""Layer roles (input, hidden, output) and the width bookkeeping every width rule reads.

A role is stored on each weight layer as ``module.mup_role``; the model's width and base
width as ``model.mup_width`` and ``model.mup_base_width``. ``ml.MLP`` and ``ml.CNN`` set these
themselves; ``tag_roles`` does it for a user's own model (first weight layer: input, last:
output, the others: hidden). This module knows nothing of the scaling table, so the table
(``scaling.py``), the models and the optimizers can all read it.
"""
from __future__ import annotations

from torch import nn

from .checks import check_positive

WEIGHT_LAYERS = (nn.Linear, nn.Conv2d)


def tag_roles(model: nn.Module, width: int, base_width: int | None = None) -> nn.Module:
    """Tag the weight layers (nn.Linear, nn.Conv2d) of ``model`` in registration order.

    First layer: "input", last: "output", others: "hidden". ``width`` is the model's
    width M (hidden units or channels); ``base_width`` M0 defaults to ``width``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    check_positive("width", width, integer=True)
    base_width = width if base_width is None else base_width
    check_positive("base_width", base_width, integer=True)
    layers = [m for m in model.modules() if isinstance(m, WEIGHT_LAYERS)]
    if len(layers) < 2:
        raise ValueError(f"model: expected at least 2 weight layers (nn.Linear or nn.Conv2d) to tag, "
                         f"found {len(layers)}")
    for i, m in enumerate(layers):
        m.mup_role = "input" if i == 0 else ("output" if i == len(layers) - 1 else "hidden")
    model.mup_width, model.mup_base_width = int(width), int(base_width)
    return model


def layer_roles(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(name, module, role) for every role-tagged weight layer, in registration order."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module with layer roles, got {type(model).__name__}")
    out = [(n, m, m.mup_role) for n, m in model.named_modules() if hasattr(m, "mup_role")]
    if not out:
        raise ValueError("model: expected weight layers tagged with roles (input/hidden/output), "
                         f"got a {type(model).__name__} without any; call ml.tag_roles(model, width=...) "
                         "or build it with ml.MLP / ml.CNN")
    owner: dict = {}
    for name, module, _ in out:
        for p in module.parameters(recurse=False):
            if owner.setdefault(id(p), name) != name:
                raise ValueError(f"model: layers {owner[id(p)]!r} and {name!r} share one parameter (tied weights); "
                                 "each role-tagged layer needs its own weight (its lr and damping depend on its "
                                 "role): untie them")
    return out


def weight_layers(model: nn.Module) -> dict:
    """{name: module} of the layers K-FAC and Shampoo precondition: the role-tagged ones if the
    model has roles, else every nn.Linear and nn.Conv2d (roles matter only to the width rules)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    tagged = {n: m for n, m in model.named_modules() if hasattr(m, "mup_role")}
    layers = tagged or {n: m for n, m in model.named_modules()   # grouped convs are left to SGD
                        if isinstance(m, WEIGHT_LAYERS) and getattr(m, "groups", 1) == 1}
    if not layers:
        raise ValueError(f"model: expected at least one nn.Linear or nn.Conv2d layer, got a "
                         f"{type(model).__name__} without any")
    return layers


def model_widths(model, width=None, base_width=None) -> tuple[int, int]:
    """The (width, base_width) pair: the arguments if given, else the model's own tags."""
    width = width if width is not None else getattr(model, "mup_width", None)
    base_width = base_width if base_width is not None else getattr(model, "mup_base_width", width)
    if width is None:
        raise ValueError("width: expected the model's width, got None (tag the model with "
                         "ml.tag_roles(model, width=...) or pass width=...)")
    check_positive("width", width, integer=True)
    check_positive("base_width", base_width, integer=True)
    return int(width), int(base_width)
