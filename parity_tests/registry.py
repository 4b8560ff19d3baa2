"""The one registry of parity cases.

A case names a torch_ref twin (or an upstream module) and the inputs to run it
on; ``test_parity.py`` checks every case in float64 and float32, in each of its
modes, with :func:`flaxattn.parity.check_parity`: outputs, input gradients,
every parameter gradient (non-zero), and in train mode the buffers after
several SGD steps. Families add cases in ``parity_tests/cases/<family>.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from flaxattn.registry import Registry


@dataclasses.dataclass(frozen=True)
class Case:
    """One parity case.

    Args:
      name: unique id (``family/what``).
      make_torch: builds the torch module (float32; the checker casts it).
      shapes: input shapes in the torch layout.
      modes: ``'eval'`` and/or ``'train'``.
      layouts / out_layouts: see :func:`flaxattn.parity.check_parity`.
      train_steps: SGD steps in train mode (running statistics must track).
      zero_grad_ok: parameters whose gradient is structurally zero.
      tol: per dtype ``{'rtol': ..., 'atol': ...}`` overrides, with a reason in a comment.
      make_flax: builds the Flax module from the torch one; default ``from_torch``.
      make_inputs: draws inputs from a numpy Generator instead of ``shapes``.
      dtypes: which dtypes to run.
      slow: mark as slow (still in the default suite).
    """

    name: str
    make_torch: Callable[[], Any]
    shapes: Sequence[Sequence[int]] = ()
    modes: Sequence[str] = ("eval",)
    layouts: Sequence[str] | str = "auto"
    out_layouts: Sequence[str] | str = "auto"
    train_steps: int = 3
    zero_grad_ok: Sequence[str] = ()
    tol: dict = dataclasses.field(default_factory=dict)
    make_flax: Callable[[Any], Any] | None = None
    make_inputs: Callable | None = None
    dtypes: Sequence[str] = ("float64", "float32")
    slow: bool = False


@dataclasses.dataclass(frozen=True)
class GoldenCase:
    """A golden upstream run (``parity_tests/golden/<file>``) and the twin that must match it.

    Args:
      file: the ``.npz`` file name.
      make_torch: the torch_ref twin from the upstream constructor kwargs (``meta``).
      key_map: renames upstream state_dict/gradient keys to the twin's, if they differ.
      layouts / out_layouts: how the stored (upstream-layout) inputs/outputs map to Flax.
      zero_grad_ok: gradients that are structurally zero (see the golden README).
    """

    file: str
    make_torch: Callable[[dict], Any]
    key_map: Callable[[str], str] | None = None
    layouts: Sequence[str] | str = "auto"
    out_layouts: Sequence[str] | str = "auto"
    zero_grad_ok: Sequence[str] = ()


@dataclasses.dataclass(frozen=True)
class BadArgs:
    """Constructor arguments both twins must refuse with a ``ValueError`` matching ``match``.

    ``cls`` is the class path under ``flaxattn``/``torch_ref`` (``"SELayer"`` or
    ``"layers.axial.SelfAttention"``); ``torch=False`` for Flax-only arguments.
    """

    cls: str
    args: tuple = ()
    kwargs: dict = dataclasses.field(default_factory=dict)
    match: str = ""
    torch: bool = True


@dataclasses.dataclass(frozen=True)
class BadCall:
    """A Flax module called on inputs it must refuse with a ``ValueError`` matching ``match``."""

    name: str
    make_flax: Callable[[], Any]
    shapes: Sequence[Sequence[int]]
    match: str


CASES: Registry[Case] = Registry("parity case", "parity_tests.cases")
GOLDEN: Registry[GoldenCase] = Registry("parity case")
BAD: list[BadArgs | BadCall] = []


def register(*cases: Case | GoldenCase | BadArgs | BadCall) -> None:
    for case in cases:
        if isinstance(case, (BadArgs, BadCall)):
            BAD.append(case)
        elif isinstance(case, GoldenCase):
            GOLDEN.add(case.file, case)
        else:
            CASES.add(case.name, case)


def load_all() -> dict[str, Case]:
    """Import every module of ``parity_tests.cases`` (each registers its family)."""
    return CASES.load_all()


def with_attention_impl(impl: str) -> Callable[[Any], Any]:
    """``make_flax`` for a case whose Flax module runs ``attention_impl=impl`` (issue 16)."""

    def make(torch_module):
        from flaxattn.convert import from_torch
        from flaxattn.layers.basic import set_attention_impl

        return set_attention_impl(from_torch(torch_module), impl)

    return make


# jax.nn.dot_product_attention(implementation='xla') takes its softmax in float32 whatever
# the input dtype, so float64 cases through it agree to float32 round-off only.
FUSED_XLA_TOL = {"float64": {"rtol": 1e-6, "atol": 1e-7}}
