"""Argument checks for the twins, written apart from ``flaxattn.ops.checks`` (no jax, no flaxattn).

Same function names, messages and exception types as ``flaxattn.ops.checks``, so a twin and
its Flax module refuse the same arguments the same way; ``tests/test_errors.py`` runs both
over one table of bad arguments. A bool is never an int here, and a float never an int.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real


def _kind(value) -> str:
    """'bool', 'int', 'real' or 'other'."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, Integral):
        return "int"
    if isinstance(value, Real):
        return "real"
    return "other"


def _wrong_type(name: str, value, expected: str) -> TypeError:
    return TypeError(f"`{name}` (={value!r}) must be {expected}, got {type(value).__name__}")


def check_int(**values) -> None:
    for name, value in values.items():
        if _kind(value) != "int":
            raise _wrong_type(name, value, "an int")


def check_positive(**values) -> None:
    for name, value in values.items():
        if _kind(value) != "int":
            raise _wrong_type(name, value, "an int")
        if not value > 0:
            raise ValueError(f"`{name}` (={value}) must be positive")


def check_positive_number(**values) -> None:
    for name, value in values.items():
        if _kind(value) not in ("int", "real"):
            raise _wrong_type(name, value, "a number")
        if math.isnan(value) or math.isinf(value) or value <= 0:
            raise ValueError(f"`{name}` (={value}) must be positive and finite")


def check_rate(**values) -> None:
    for name, value in values.items():
        if _kind(value) not in ("int", "real"):
            raise _wrong_type(name, value, "a number")
        if not (value >= 0.0 and value < 1.0):
            raise ValueError(f"`{name}` (={value}) must be in [0, 1)")


def check_bool(**values) -> None:
    for name, value in values.items():
        if _kind(value) != "bool":
            raise _wrong_type(name, value, "a bool")


def check_pair(name: str, value) -> tuple[int, int]:
    if _kind(value) == "int":
        return value, value
    if not isinstance(value, (tuple, list)):
        raise _wrong_type(name, value, "an int or a pair of ints")
    if len(value) != 2:
        raise ValueError(
            f"`{name}` (={value!r}) must be an int or a pair of ints, got length {len(value)}"
        )
    first, second = value
    check_int(**{f"{name}[0]": first})
    check_int(**{f"{name}[1]": second})
    return first, second


def check_divisible(name: str, value, by_name: str, by) -> None:
    check_int(**{name: value})
    check_int(**{by_name: by})
    if by <= 0 or value % by != 0:
        raise ValueError(f"`{name}` (={value}) must be divisible by `{by_name}` (={by})")


def check_choice(name: str, value, choices: Sequence) -> None:
    for choice in choices:
        # 1 == 1.0 == True in Python; only a bool matches a bool and only an int an int.
        if (_kind(value) == "bool") != (_kind(choice) == "bool"):
            continue
        if _kind(choice) == "int" and _kind(value) != "int":
            continue
        if value == choice:
            return
    raise ValueError(f"`{name}` (={value!r}) must be one of {list(choices)}")


def check_batch(x, *, where: str, name: str = "x") -> None:
    batch = x.shape[0]
    if batch == 0:
        raise ValueError(
            f"{where}: `{name}` has batch size 0 (shape {tuple(x.shape)}); need at least one sample"
        )
