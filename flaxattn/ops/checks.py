"""Argument and shape validation with errors that name the value and the expectation.

Types are checked before values, so ``CBAM("32")`` or ``CBAM(32.0)`` gets a ``TypeError``
naming the argument (not Python's "'<=' not supported..."): an int is an ``int`` or a numpy
integer, never a ``bool`` (``True`` is an int to Python, never a channel count to us).
``torch_ref/_checks.py`` holds the same functions, written independently for the twins;
``tests/test_errors.py`` checks that both agree.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _type_error(name: str, value, expected: str) -> TypeError:
    return TypeError(f"`{name}` (={value!r}) must be {expected}, got {type(value).__name__}")


def check_int(**values: int) -> None:
    """Raise ``TypeError`` for the first value that is not an int (bools and floats are not)."""
    for name, value in values.items():
        if not _is_int(value):
            raise _type_error(name, value, "an int")


def check_positive(**values: int) -> None:
    """Raise for the first value that is not a positive int, naming it.

    ``TypeError`` for a non-int (str, float, bool, None), ``ValueError`` for ``<= 0``.
    Real-valued arguments (``mlp_ratio``) go through :func:`check_positive_number`.
    """
    for name, value in values.items():
        check_int(**{name: value})
        if value <= 0:
            raise ValueError(f"`{name}` (={value}) must be positive")


def check_positive_number(**values: float) -> None:
    """Raise for the first value that is not a finite positive real (int or float, no bool)."""
    for name, value in values.items():
        if not _is_real(value):
            raise _type_error(name, value, "a number")
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"`{name}` (={value}) must be positive and finite")


def check_rate(**values: float) -> None:
    """Raise for the first value that is not a real in ``[0, 1)`` (dropout, drop-path rates)."""
    for name, value in values.items():
        if not _is_real(value):
            raise _type_error(name, value, "a number")
        if not 0.0 <= value < 1.0:
            raise ValueError(f"`{name}` (={value}) must be in [0, 1)")


def check_bool(**values: bool) -> None:
    """Raise ``TypeError`` for the first value that is not a bool (``"no"`` would be true)."""
    for name, value in values.items():
        if not isinstance(value, bool):
            raise _type_error(name, value, "a bool")


def check_pair(name: str, value: int | Sequence[int]) -> tuple[int, int]:
    """An int or a pair of ints as ``(a, b)``; anything else (``(28,)``, ``"28"``) raises."""
    if _is_int(value):
        return (value, value)
    if not isinstance(value, (tuple, list)):
        raise _type_error(name, value, "an int or a pair of ints")
    if len(value) != 2:
        raise ValueError(
            f"`{name}` (={value!r}) must be an int or a pair of ints, got length {len(value)}"
        )
    for i, v in enumerate(value):
        check_int(**{f"{name}[{i}]": v})
    return (value[0], value[1])


def check_divisible(name: str, value: int, by_name: str, by: int) -> None:
    check_int(**{name: value, by_name: by})
    if by <= 0 or value % by:
        raise ValueError(f"`{name}` (={value}) must be divisible by `{by_name}` (={by})")


def _same_kind(value, choice) -> bool:
    # 1 == 1.0 == True to Python; a choice of 1 accepts neither 1.0 nor True.
    if isinstance(choice, bool) or isinstance(value, bool):
        return isinstance(choice, bool) and isinstance(value, bool)
    if _is_int(choice):
        return _is_int(value)
    return True


def check_choice(name: str, value, choices: Sequence) -> None:
    if not any(_same_kind(value, c) and value == c for c in choices):
        raise ValueError(f"`{name}` (={value!r}) must be one of {list(choices)}")


def check_input(
    x, *, rank: int, last: int | None = None, layout: str, where: str, name: str = "x"
) -> None:
    """Check an input's rank and, when given, its last (channel/feature) axis.

    ``layout`` is the expected shape written out, e.g. ``"(B, H, W, 32)"``.
    """
    shape = tuple(x.shape)
    if len(shape) != rank or (last is not None and shape[-1] != last):
        raise ValueError(f"{where}: expected `{name}` of shape {layout}, got {shape}")


def check_batch(x, *, where: str, name: str = "x") -> None:
    """Refuse an empty batch (``B == 0``) naming the batch size, for modules that cannot
    return an empty result (train-mode BatchNorm has no statistics over zero samples)."""
    if x.shape[0] == 0:
        raise ValueError(
            f"{where}: `{name}` has batch size 0 (shape {tuple(x.shape)}); need at least one sample"
        )
