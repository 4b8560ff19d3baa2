"""Benchmark cases. Families register theirs in ``bench/cases/<family>.py``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from flaxattn.registry import Registry


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


CASES: Registry[BenchCase] = Registry("bench case", "bench.cases")


def register(*cases: BenchCase) -> None:
    for case in cases:
        CASES.add(case.name, case)


def load_all() -> dict[str, BenchCase]:
    """Import every module of ``bench.cases`` (each registers its family)."""
    return CASES.load_all()
