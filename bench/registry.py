"""Benchmark cases. Families register theirs in ``bench/cases/<family>.py``."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable, Sequence
from typing import Any


@dataclasses.dataclass(frozen=True)
class BenchCase:
    """A train step to time in both frameworks.

    Args:
      name: unique id (``family/what``).
      make_torch: the torch_ref twin (float32); the Flax side is ``from_torch`` of it
        (same weights) unless ``make_flax`` says otherwise.
      shapes: input shapes in the torch layout.
      layouts: per input, as in :func:`flaxattn.parity.check_parity`.
      variants: other Flax implementations of the same module, timed and
        memory-measured beside the main one (``{"unfold": fn(torch_module) -> nnx.Module}``).
      flops: report achieved FLOP/s against a large matmul measured in the same run.
      compile: also time ``torch.compile`` (slow to compile on CPU).
    """

    name: str
    make_torch: Callable[[], Any]
    shapes: Sequence[Sequence[int]]
    layouts: Sequence[str] | str = "auto"
    make_flax: Callable[[Any], Any] | None = None
    variants: dict[str, Callable[[Any], Any]] = dataclasses.field(default_factory=dict)
    flops: bool = False
    compile: bool = True


CASES: dict[str, BenchCase] = {}


def register(*cases: BenchCase) -> None:
    for case in cases:
        if case.name in CASES:
            raise ValueError(f"bench case {case.name!r} is registered twice")
        CASES[case.name] = case


def load_all() -> dict[str, BenchCase]:
    from bench import cases

    for info in pkgutil.iter_modules(cases.__path__):
        importlib.import_module(f"bench.cases.{info.name}")
    return CASES
