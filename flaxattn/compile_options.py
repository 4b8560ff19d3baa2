"""XLA:CPU compile options chosen from a model's convolutions.

XLA:CPU hands every 2-D convolution to YNNPACK by default. YNNPACK runs a ``k x k``
convolution from many input channels to few output channels on one thread, while
XLA's own (Eigen) convolution runs it on every core. The axial transformer's
feed-forward has two such convolutions in each block: the forward of its
``4 * dim -> dim`` convolution, and the input gradient of its ``dim -> 4 * dim``
one, which is a ``4 * dim -> dim`` convolution too. On narrow convolutions
(ResBlockCBAM's ``16 -> 16``) YNNPACK is the faster of the two, so the choice is
made per model, not globally: :func:`cpu_compiler_options` turns YNNPACK's
convolutions off for a model that has a wide-to-narrow convolution in either
direction. Figures: ``bench/NOTES.md`` (issue 15).

Use it as ``jax.jit(step, compiler_options=cpu_compiler_options(model))``;
``train.step.make_train_step`` takes the same dictionary.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

# A convolution counts as wide-to-narrow when it contracts at least this many input
# channels into at most this many output channels (XLA:CPU's YNNPACK convolution used
# one thread at 256 -> 64 and both at 64 -> 256).
WIDE_IN = 128
NARROW_OUT = 64

# XLA:CPU's default YNNPACK fusion types (jax 0.10.2) without INDIVIDUAL_CONVOLUTION.
_NO_YNN_CONV = {
    "xla_cpu_experimental_ynn_fusion_type": (
        "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
    )
}


def wide_to_narrow(c_in: int, c_out: int) -> bool:
    """Whether a ``c_in -> c_out`` convolution, or its input gradient, maps many
    channels to few."""
    return any(i >= WIDE_IN and o <= NARROW_OUT for i, o in ((c_in, c_out), (c_out, c_in)))


def _spatial_convs(model: nnx.Module):
    for _, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Conv) and max(node.kernel_size) > 1:
            yield node


@functools.cache
def _accepted(options: tuple) -> bool:
    """Whether this XLA knows the options (their names change between XLA versions)."""
    try:
        jax.jit(lambda x: x + 1).lower(jnp.zeros(())).compile(compiler_options=dict(options))
    except Exception as e:  # XLA raises a plain runtime error for an unknown option
        if "compile option" in str(e) or "enum value" in str(e):
            return False
        raise
    return True


def cpu_compiler_options(model: nnx.Module) -> dict | None:
    """Compile options for ``model``'s train or eval step on XLA:CPU, or ``None``.

    ``None`` on other backends, for models without a wide-to-narrow convolution
    (:func:`wide_to_narrow`, ``groups == 1``), and where this XLA lacks the option.
    """
    if jax.default_backend() != "cpu":
        return None
    if not any(
        conv.feature_group_count == 1 and wide_to_narrow(conv.in_features, conv.out_features)
        for conv in _spatial_convs(model)
    ):
        return None
    return dict(_NO_YNN_CONV) if _accepted(tuple(_NO_YNN_CONV.items())) else None
