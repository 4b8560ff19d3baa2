"""What a loaded or saved weight may hold: real numbers, finite unless the caller opts in."""

from __future__ import annotations

from collections.abc import Mapping

import ml_dtypes
import numpy as np

# How many keys an error message spells out before it only counts the rest.
_LISTED = 20


def is_float(dtype: np.dtype) -> bool:
    """numpy floats and ml_dtypes' (bfloat16, float8...), which numpy files under kind 'V'."""
    if dtype.kind == "f":
        return True
    try:
        ml_dtypes.finfo(dtype)
    except (TypeError, ValueError):
        return False
    return True


def _keys(keys: list[str]) -> str:
    listed = ", ".join(keys[:_LISTED])
    more = f" and {len(keys) - _LISTED} more" if len(keys) > _LISTED else ""
    return f"{len(keys)} key{'s' if len(keys) != 1 else ''} ({listed}{more})"


def check_values(
    arrays: Mapping[str, np.ndarray], *, where: str, allow_non_finite: bool = False
) -> None:
    """Refuse non-numeric, complex and (unless ``allow_non_finite``) NaN/inf values, naming keys.

    Complex values are always refused: every parameter here is real, and a cast would
    silently drop the imaginary part. ``where`` starts the message (``"load_weights: w.pt"``).
    """
    not_numbers = [
        f"{k} ({a.dtype})"
        for k, a in arrays.items()
        if a.dtype.kind not in "biufc" and not is_float(a.dtype)
    ]
    if not_numbers:
        raise ValueError(f"{where}: values that are not numbers under {_keys(not_numbers)}")
    complex_ = [f"{k} ({a.dtype})" for k, a in arrays.items() if a.dtype.kind == "c"]
    if complex_:
        raise ValueError(
            f"{where}: complex values under {_keys(complex_)}; parameters are real and a cast "
            "would drop the imaginary part"
        )
    if allow_non_finite:
        return
    bad = []
    for k, a in arrays.items():
        if not is_float(a.dtype):
            continue
        finite = np.isfinite(a)
        if not finite.all():
            nan = int(np.isnan(a).sum())
            inf = int(a.size - finite.sum()) - nan
            what = " and ".join(
                s for s in (f"{nan} NaN" * bool(nan), f"{inf} inf" * bool(inf)) if s
            )
            bad.append(f"{k} ({what})")
    if bad:
        raise ValueError(
            f"{where}: non-finite values under {_keys(bad)}; pass allow_non_finite=True to "
            "accept them"
        )
