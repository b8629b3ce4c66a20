"""Optimizer checkpoints that refuse to load into the wrong optimizer.

``torch.optim.Optimizer.load_state_dict`` checks only the number of groups and parameters,
so a K-FAC state saved at width 64 loads into a K-FAC at width 128 (and fails at the next
``step()``, deep inside a matrix product), and a Shampoo state loads into a K-FAC. The
state dicts of ``KFAC`` and ``Shampoo`` therefore carry the optimizer's class and every
parameter's shape, and ``check_loadable`` compares them before anything is replaced.
"""
from __future__ import annotations

import torch

STAMP_KEYS = ("optimizer_class", "param_shapes")


def param_shapes(optimizer: torch.optim.Optimizer) -> list[list[list[int]]]:
    return [[list(p.shape) for p in g["params"]] for g in optimizer.param_groups]


def stamp(optimizer: torch.optim.Optimizer, state_dict: dict) -> dict:
    """``state_dict`` with the optimizer's class name and parameter shapes added."""
    return {**state_dict, "optimizer_class": type(optimizer).__name__, "param_shapes": param_shapes(optimizer)}


def check_loadable(optimizer: torch.optim.Optimizer, state_dict) -> dict:
    """Raise ValueError/TypeError if ``state_dict`` was not saved by this kind of optimizer
    over parameters of the same shapes (same model, same width); return it without the stamp."""
    name = type(optimizer).__name__
    if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
        raise TypeError(f"state_dict: expected a dict from {name}.state_dict() with 'state' and 'param_groups', "
                        f"got {type(state_dict).__name__}" + (f" with keys {sorted(map(str, state_dict))[:6]}"
                                                            if isinstance(state_dict, dict) else ""))
    saved_class = state_dict.get("optimizer_class")
    if saved_class is not None and saved_class != name:
        raise ValueError(f"state_dict: saved by {saved_class}, cannot be loaded into {name}")
    groups = state_dict["param_groups"]
    ours = [g.get("layer") for g in optimizer.param_groups]
    theirs = [g.get("layer") if isinstance(g, dict) else None for g in groups]
    if ours != theirs:
        raise ValueError(f"state_dict: saved for the layers {theirs}, this {name} has the layers {ours} "
                         "(another model?)")
    shapes = state_dict.get("param_shapes")
    if shapes is not None and shapes != param_shapes(optimizer):
        raise ValueError(f"state_dict: saved for parameters of shapes {_short(shapes)}, this {name}'s are "
                         f"{_short(param_shapes(optimizer))} (another width or another model?); build the "
                         "optimizer for the model the checkpoint came from")
    return {k: v for k, v in state_dict.items() if k not in STAMP_KEYS}


def _short(shapes) -> str:
    flat = [tuple(s) for g in shapes for s in g]
    return str(flat[:4])[:-1] + (", ...]" if len(flat) > 4 else "]")
