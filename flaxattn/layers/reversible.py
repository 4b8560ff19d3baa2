"""Reversible residual sequences (the modules): :class:`ReversibleSequence` of
:class:`ReversibleBlock` s, differentiated by :func:`flaxattn.ops.reversible.reversible_coupling`.

Gomez et al., "The Reversible Residual Network: Backpropagation Without Storing
Activations", NeurIPS 2017. https://arxiv.org/abs/1707.04585
Upstream: lucidrains/axial-attention ``axial_attention/reversible.py``. See
:mod:`flaxattn.ops.reversible` for the coupling, its memory and its RNG replay.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from flaxattn.ops.reversible import add_to_stream, reversible_coupling


class Deterministic(nnx.Module):
    """Holds one coupling function as ``net``.

    Upstream's wrapper records the torch RNG state for the backward; here the
    sequence replays the module's own state (see the module docstring). It stays
    for the parameter paths (``blocks.0.f.net...``), which match upstream's
    state_dict keys.
    """

    def __init__(self, net: Callable):
        self.net = net

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.net(x)


class ReversibleBlock(nnx.Module):
    """One coupling ``y1 = x1 + f(x2)``, ``y2 = x2 + g(y1)`` of two streams."""

    def __init__(self, f: nnx.Module, g: nnx.Module):
        self.f = Deterministic(f)
        self.g = Deterministic(g)

    def __call__(self, x1: jax.Array, x2: jax.Array) -> tuple[jax.Array, jax.Array]:
        y1 = add_to_stream(x1, self.f(x2))
        return y1, add_to_stream(x2, self.g(y1))


class ReversibleSequence(nnx.Module):
    """Reversible blocks on two copies of the input; returns the mean of the two streams.

    Args:
      blocks: ``(f, g)`` module pairs, each a map from ``x`` to a tensor of ``x``'s shape.
      reconstruct: differentiate with :func:`reversible_coupling` (activations
        reconstructed from the outputs; memory flat in depth) or, when False,
        with plain autodiff of the same coupling (activations stored).

    Shapes: ``x -> x.shape``; the output dtype is the stream dtype
    (``promote_types(x.dtype, float32)``).
    """

    def __init__(self, blocks: Sequence[tuple[nnx.Module, nnx.Module]], reconstruct: bool = True):
        self.blocks = nnx.List([ReversibleBlock(f, g) for f, g in blocks])
        self.reconstruct = reconstruct

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        if self.reconstruct:
            y1, y2 = reversible_coupling([(b.f, b.g) for b in self.blocks], x, x)
        else:
            y1 = y2 = x
            for block in self.blocks:
                y1, y2 = block(y1, y2)
        # Upstream: torch.stack(y.chunk(2)).mean(0); halving is exact.
        return (y1 + y2) / 2
