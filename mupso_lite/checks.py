"""Argument checks shared by every module: each raises an error that names the argument,
says what was wanted and shows what was given."""
from __future__ import annotations

import math


def check_choice(arg: str, value, choices) -> str:
    """Return ``value`` lower-cased if it is one of ``choices``, else raise ValueError naming ``arg``."""
    if not isinstance(value, str) or value.lower().replace("-", "").replace("_", "") not in choices:
        raise ValueError(f"{arg}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
    return value.lower().replace("-", "").replace("_", "")


def check_positive(arg: str, value, integer: bool = False, allow_zero: bool = False):
    """Raise ValueError/TypeError naming ``arg`` unless ``value`` is a finite number > 0 (>= 0)."""
    if integer:
        want = "an integer >= 0" if allow_zero else "a positive integer"
    else:
        want = "a finite number >= 0" if allow_zero else "a finite number > 0"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise TypeError(f"{arg}: expected {want}, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{arg}: expected {want}, got {value!r}")
    return value
