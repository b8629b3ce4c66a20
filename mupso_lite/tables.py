"""Readable notebook tables: every number with a few significant digits (no ``np.float64(0.1)``
or ``1.000000e-06``), NaN as a dash. ``ml.plots.table(df)`` is the one to call."""
from __future__ import annotations

import math

import numpy as np


def number_text(v, digits: int = 3) -> str:
    """A number as a table shows it: ``digits`` significant digits (0.1, 0.000316 as 3.16e-04,
    1024), integers whole, NaN and None as "–"; anything else as ``str``."""
    if v is None or (isinstance(v, (float, np.floating)) and math.isnan(v)):
        return "–"
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.number)):
        return str(v)
    if isinstance(v, (int, np.integer)) or (float(v).is_integer() and abs(v) < 1e6):
        return str(int(v))
    if v != 0 and not 1e-3 <= abs(v) < 1e6:
        return f"{v:.{digits - 1}e}"
    return f"{float(v):.{digits}g}"


def table(df, digits: int = 3, index: bool = False):
    """``df`` as a readable notebook table (a pandas ``Styler``): every number through
    ``number_text`` (no ``np.float64(0.1)`` or ``1.000000e-06``), the index hidden unless ``index``."""
    import pandas as pd
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"df: expected a pandas DataFrame, got {type(df).__name__}")
    styled = df.style.format(lambda v: number_text(v, digits))
    if index:
        return styled.format_index(lambda v: number_text(v, digits))
    return styled.hide(axis="index")
