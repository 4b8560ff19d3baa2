"""Argument checks of the PyTorch twins, written apart from ``flaxattn.ops.checks``.

torch_ref imports neither flaxattn nor jax, so each twin states its own argument
rules; ``tests/test_errors.py`` checks that both twins refuse the same bad arguments
(``parity_tests`` ``BadArgs`` table) with the same message.
"""

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
