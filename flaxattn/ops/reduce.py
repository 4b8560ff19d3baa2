"""Reductions whose gradients behave like PyTorch's under ``jax.jit``.

``jnp.max``'s gradient is a mask ``x == max(x)`` evaluated in the backward pass.
Under ``jit``, XLA may recompute ``x`` there in another fusion, rounded one ulp
differently, and the mask then misses the maximum: the gradient silently
vanishes for that element (seen on XLA:CPU in float64 after a train-mode
BatchNorm). Selecting the maximum by index sends the gradient to exactly one
element, as ``torch.max``/``AdaptiveMaxPool2d`` do, and needs no comparison.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp


def max_reduce(x: jax.Array, axis: int | Sequence[int], keepdims: bool = False) -> jax.Array:
    """``x.max(axis)`` with the gradient routed to the first maximal element."""
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    axes = tuple(sorted(a % x.ndim for a in axes))
    rest = [a for a in range(x.ndim) if a not in axes]
    # Move the reduced axes last and merge them into one.
    moved = jnp.transpose(x, rest + list(axes))
    # An explicit size, not -1: jnp cannot infer -1 for an empty batch (ZeroDivisionError).
    flat = moved.reshape(moved.shape[: len(rest)] + (math.prod(moved.shape[len(rest) :]),))
    idx = jnp.argmax(flat, axis=-1, keepdims=True)
    out = jnp.take_along_axis(flat, idx, axis=-1)[..., 0]
    if keepdims:
        for a in axes:
            out = jnp.expand_dims(out, a)
    return out
