"""Argument and shape validation with errors that name the value and the expectation."""

from __future__ import annotations

from collections.abc import Sequence


def check_positive(**values: int | float) -> None:
    """Raise ``ValueError`` for the first non-positive value, naming it."""
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"`{name}` (={value}) must be positive")


def check_divisible(name: str, value: int, by_name: str, by: int) -> None:
    if by <= 0 or value % by:
        raise ValueError(f"`{name}` (={value}) must be divisible by `{by_name}` (={by})")


def check_choice(name: str, value, choices: Sequence) -> None:
    if value not in choices:
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
