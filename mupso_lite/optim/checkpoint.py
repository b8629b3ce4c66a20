"""Optimizer checkpoints that refuse to load into the wrong optimizer.

``torch.optim.Optimizer.load_state_dict`` checks only the number of groups and parameters,
so a K-FAC state saved at width 64 loads into a K-FAC at width 128 (and fails at the next
``step()``, deep inside a matrix product), a Shampoo state loads into a K-FAC, and an SGD
state from another width silently replaces every layer's width-scaled lr. The state dicts of
``KFAC``, ``Shampoo``, ``MuSGD`` and ``MuAdam`` (``Checkpointed``) therefore carry the optimizer's class, its variant
(K-FAC or FOOF and the damping mode; Shampoo's root and eps mode: ``variant()``) and every
parameter's shape, and ``check_loadable`` compares them, and checks that every saved number is
finite, before anything is replaced: a state is loaded whole or not at all.
"""
from __future__ import annotations

import math

import torch

STAMP_KEYS = ("optimizer_class", "optimizer_variant", "param_shapes")


class Checkpointed:
    """Mixin for a ``torch.optim.Optimizer``: ``state_dict`` is stamped, ``load_state_dict``
    checked by ``check_loadable`` (whole or nothing)."""

    def variant(self) -> dict:
        """What a checkpoint must match besides the class and the shapes (nothing by default)."""
        return {}

    def state_dict(self):
        return stamp(self, super().state_dict())

    def load_state_dict(self, state_dict):
        """Load a state saved by the same kind of optimizer over the same layers and shapes, with
        finite numbers only (else ValueError, and nothing changes)."""
        super().load_state_dict(check_loadable(self, state_dict))


class MuSGD(Checkpointed, torch.optim.SGD):
    """``torch.optim.SGD`` whose checkpoints refuse another width (``make_optimizer(..., "sgd")``)."""


class MuAdam(Checkpointed, torch.optim.Adam):
    """``torch.optim.Adam`` whose checkpoints refuse another width (``make_optimizer(..., "adam")``)."""


def param_shapes(optimizer: torch.optim.Optimizer) -> list[list[list[int]]]:
    return [[list(p.shape) for p in g["params"]] for g in optimizer.param_groups]


def stamp(optimizer: torch.optim.Optimizer, state_dict: dict) -> dict:
    """``state_dict`` with the optimizer's class name and parameter shapes added."""
    return {**state_dict, "optimizer_class": type(optimizer).__name__, "optimizer_variant": optimizer.variant(),
            "param_shapes": param_shapes(optimizer)}


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
    saved_variant, variant = state_dict.get("optimizer_variant"), optimizer.variant()
    if saved_variant is not None and saved_variant != variant:
        raise ValueError(f"state_dict: saved by a {saved_class or name} with {saved_variant}, cannot be loaded into "
                         f"one with {variant}: its learning rates and dampings belong to the other")
    _check_finite(state_dict)
    return {k: v for k, v in state_dict.items() if k not in STAMP_KEYS}


def _check_finite(state_dict: dict) -> None:
    """Every saved tensor and number is finite: a NaN factor would make every parameter NaN at
    the next step."""
    state = state_dict["state"]
    for key, st in (state.items() if isinstance(state, dict) else []):
        for name, v in (st.items() if isinstance(st, dict) else []):
            bad = (torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())) or \
                  (isinstance(v, float) and not math.isfinite(v))
            if bad:
                raise ValueError(f"state_dict: the saved state holds NaN or Inf ({name!r} of parameter {key}); "
                                 "refusing it: the next step would make every parameter NaN")
    for g in state_dict["param_groups"] if isinstance(state_dict["param_groups"], list) else []:
        for name, v in (g.items() if isinstance(g, dict) else []):
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"state_dict: param group {name} is {v}, expected a finite number")


def _short(shapes) -> str:
    flat = [tuple(s) for g in shapes for s in g]
    return str(flat[:4])[:-1] + (", ...]" if len(flat) > 4 else "]")
