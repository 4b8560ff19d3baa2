"""A 1x1 convolution (a matmul over the last axis) with its backward written as two GEMMs.

``y = x @ kernel`` for ``x`` of shape ``(..., Ci)`` and ``kernel`` ``(Ci, Co)``. Autodiff
of the ``dot_general`` gives the right products, but on XLA:CPU the kernel gradient of a
channels-last activation came out as a copy of the output gradient to channels-major
(with everything fused into that copy recomputed in transposed order) feeding a slow
Eigen dot, the two together slower than the rest of that conv's work (ResBlockCBAM's train
step, issue 15; figures in ``bench/NOTES.md``). Written by hand on ``(N, C)`` views::

    dx = dy @ kernel^T            (contracting the channels: the forward's kind of GEMM)
    dkernel = x2^T @ dy2          (contracting N = B*H*W on the row-major views)

XLA lays both out without copies.
"""

from __future__ import annotations

import math
from functools import partial

import jax


def _flat(x: jax.Array) -> jax.Array:
    # An explicit size, not -1: -1 cannot be inferred for an empty batch.
    return x.reshape(math.prod(x.shape[:-1]), x.shape[-1])


def _dot_last(x, kernel, precision):
    return jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())), precision=precision)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def pointwise_conv(
    x: jax.Array, kernel: jax.Array, precision: jax.lax.PrecisionLike = None
) -> jax.Array:
    """``x @ kernel`` over the last axis: ``(..., Ci) x (Ci, Co) -> (..., Co)``.

    ``x`` and ``kernel`` share a dtype (callers promote first, as ``Conv2d`` does).
    """
    return _dot_last(x, kernel, precision)


def _fwd(x, kernel, precision):
    return _dot_last(x, kernel, precision), (x, kernel)


def _bwd(precision, res, dy):
    x, kernel = res
    dx = jax.lax.dot_general(dy, kernel, (((dy.ndim - 1,), (1,)), ((), ())), precision=precision)
    dkernel = jax.lax.dot_general(
        _flat(x), _flat(dy), (((0,), (0,)), ((), ())), precision=precision
    )
    return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


pointwise_conv.defvjp(_fwd, _bwd)
