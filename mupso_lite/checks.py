"""Argument checks shared by every module: each raises an error that names the argument,
says what was wanted and shows what was given."""
from __future__ import annotations

import math
import numbers


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
    if isinstance(value, int) and not integer and abs(value) > 1e308:   # float(value) would overflow
        raise ValueError(f"{arg}: expected {want}, got an integer with {len(str(abs(value)))} digits, "
                         "too large for a float")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{arg}: expected {want}, got {value!r}")
    return value


def check_decay(arg: str, value, none: str | None = None):
    """A decay or momentum: a number in [0, 1) (not a bool), or None where ``none`` says what None
    means; else ValueError naming ``arg``."""
    if value is None and none is not None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        want = f"None ({none}) or a number in [0, 1)" if none is not None else "a number in [0, 1)"
        raise ValueError(f"{arg}: expected {want}, got {value!r}")
    return value


def check_seed(arg: str, value) -> int:
    """A random seed: an integer in 0 .. 2**32 - 1 (what torch and numpy both accept); numpy
    integers are taken as ints."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = int(value)
    check_positive(arg, value, integer=True, allow_zero=True)
    if value >= 2 ** 32:
        raise ValueError(f"{arg}: expected an integer in 0..{2 ** 32 - 1}, got {value}")
    return value
