"""Reductions whose gradients behave like PyTorch's under ``jax.jit``.

``jnp.max``'s gradient is a mask ``x == max(x)`` evaluated in the backward pass.
Under ``jit``, XLA may recompute ``x`` there in another fusion, rounded one ulp
differently, and the mask then misses the maximum: the gradient silently
vanishes for that element (seen on XLA:CPU in float64 after a train-mode
BatchNorm). Selecting the maximum by index sends the gradient to exactly one
element, as ``torch.max``/``AdaptiveMaxPool2d`` do.

The index is found in the forward pass with two plain reductions, ``m = max(x)`` and
the smallest position where ``x == m``; ``jnp.argmax``'s variadic (value, index)
reduction is several times slower on XLA:CPU (issue 15; figures in ``bench/NOTES.md``).
A ``jax.custom_vjp`` saves the index, and the backward sends the cotangent to it. XLA
may still recompute ``x`` for the comparison in another fusion than for the maximum
(``optimization_barrier`` does not stop it: XLA:CPU drops barriers before fusion); if
a rounding difference ever left a row without a match, that step falls back to
``jnp.argmax`` (a ``lax.cond``), so the gradient never vanishes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp


# Positions are counted in float32 where exact (below 2**24): XLA:CPU runs the masked
# minimum as a vectorised float reduction (int32 measured no faster in ResBlockCBAM's step).
def _pos_dtype(size: int):
    return jnp.float32 if size < 2**24 else jnp.int32


def _positions(shape: tuple[int, ...], axes: tuple[int, ...], dtype) -> jax.Array:
    """Row-major position of each element within the reduced axes (broadcastable to ``shape``)."""
    pos = None
    stride = 1
    for a in reversed(axes):
        dims = tuple(s if i in axes else 1 for i, s in enumerate(shape))
        iota = jax.lax.broadcasted_iota(dtype, dims, a)
        pos = iota * stride if pos is None else pos + iota * stride
        stride *= shape[a]
    return pos


@partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _max_first(x: jax.Array, axes: tuple[int, ...], shape: tuple[int, ...]) -> jax.Array:
    return _max_first_fwd(x, axes, shape)[0]


def _argmax_index(x, axes, shape, dtype):
    """The same index through ``jnp.argmax`` (slow on XLA:CPU; the fallback)."""
    rest = [a for a in range(x.ndim) if a not in axes]
    moved = jnp.transpose(x, rest + list(axes))
    flat = moved.reshape(moved.shape[: len(rest)] + (math.prod(shape[a] for a in axes),))
    idx = jnp.argmax(flat, axis=-1).astype(dtype)
    return jnp.expand_dims(idx, axes)


def _max_first_fwd(x, axes, shape):
    m = jnp.max(x, axes, keepdims=True)
    size = math.prod(shape[a] for a in axes)
    dtype = _pos_dtype(size)
    # A NaN maximum: the gradient goes to the first NaN, as jnp.argmax and torch.max do.
    hit = (x == m) | jnp.isnan(x)
    idx = jnp.min(jnp.where(hit, _positions(shape, axes, dtype), size), axes, keepdims=True)
    # XLA may compute ``x`` for the comparison in another fusion than for the maximum,
    # rounded differently; should no element then equal the maximum, take argmax's index.
    missed = jnp.any(idx >= size)
    idx = jax.lax.cond(
        missed, lambda x, i: _argmax_index(x, axes, shape, dtype), lambda x, i: i, x, idx
    )
    return m, idx


def _max_first_bwd(axes, shape, idx, g):
    pos = _positions(shape, axes, idx.dtype)
    return (jnp.where(pos == idx, g, jnp.zeros((), g.dtype)),)


_max_first.defvjp(_max_first_fwd, _max_first_bwd)


def max_reduce(x: jax.Array, axis: int | Sequence[int], keepdims: bool = False) -> jax.Array:
    """``x.max(axis)`` with the gradient routed to the first maximal element."""
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    axes = tuple(sorted(a % x.ndim for a in axes))
    if not jnp.issubdtype(x.dtype, jnp.floating):
        out = jnp.max(x, axes, keepdims=True)
    else:
        out = _max_first(x, axes, tuple(x.shape))
    return out if keepdims else jnp.squeeze(out, axes)
