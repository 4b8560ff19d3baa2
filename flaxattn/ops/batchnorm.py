"""Train-mode batch normalisation with PyTorch's closed-form backward (a ``jax.custom_vjp``).

Autodiff of ``(x - mean(x)) * rsqrt(var(x) + eps)`` gives XLA a chain of broadcasts and
reductions that it lays out badly on CPU (it copied the channels-last activation to
channels-major before each mean: issue 15's profile, ``bench/PROFILES.md``). Here the
statistics are reductions over the leading axis of an ``(N, C)`` view, and the backward is
the closed form PyTorch's ``native_batch_norm_backward`` uses, one reduction pass (``sum(dy)``
and ``sum(dy * xhat)``) and one elementwise pass::

    xhat = (x - mean) * rstd,  y = xhat * scale + bias,  g = dy * scale
    dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
    dscale = sum(dy * xhat),  dbias = sum(dy)

(means and sums over every axis but the channels). The batch mean and biased variance are
returned too, for the running statistics; cotangents reaching them are honoured as well
(``d mean -> dx += d_mean / n``, ``d var -> dx += d_var * 2 (x - mean) / n``), so the op
is a true function of ``x`` whatever uses its outputs. The variance is two-pass
(``mean((x - mean)^2)``), as PyTorch's and :class:`flaxattn.layers.basic.LayerNorm`'s: the
one-pass ``E[x^2] - E[x]^2`` loses every digit on inputs whose mean is large against their
spread.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp


def _flat(x: jax.Array) -> jax.Array:
    # An explicit size, not -1: -1 cannot be inferred for an empty batch.
    return x.reshape(math.prod(x.shape[:-1]), x.shape[-1])


def _stats(x2: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean and biased variance over axis 0: the corrected two-pass algorithm.

    The second pass sums ``d = x - mean`` as well as ``d**2``; ``sum(d)`` (zero but for
    round-off) corrects both the mean and the variance for the first pass's error (Chan,
    Golub and LeVeque, 1983). XLA:CPU sums the rows of an ``(N, C)`` view one after the
    other, less accurately than the channels-major reduction autodiff's form got; without
    the correction a float32 parity case whose gradients are differences of nearly equal
    terms (ACmix's ``rate1``/``rate2`` before a BatchNorm) moved from 1e-3 to 3e-3 of
    float64 (torch: 4e-4, it accumulates in double).
    """
    n = x2.shape[0]
    mean = x2.mean(0)
    d = x2 - mean
    s1 = d.sum(0)
    s2 = jnp.square(d).sum(0)
    return mean + s1 / n, (s2 - s1 * s1 / n) / n


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def _bn(x, scale, bias, eps):
    return _bn_fwd(x, scale, bias, eps)[0]


def _bn_fwd(x, scale, bias, eps):
    x2 = _flat(x)
    mean, var = _stats(x2)
    rstd = jax.lax.rsqrt(var + eps)
    y = (x2 - mean) * (rstd * scale) + bias
    return (y.reshape(x.shape), mean, var), (x2, mean, rstd, scale)


def _bn_bwd(eps, res, cts):
    del eps
    x2, mean, rstd, scale = res
    dy, dmean, dvar = cts
    shape = dy.shape
    dy = _flat(dy)
    n = x2.shape[0]
    xhat = (x2 - mean) * rstd
    dbias = dy.sum(0)
    dscale = (dy * xhat).sum(0)
    # dx = a * dy + b * xhat + c, with per-channel a, b, c.
    a = rstd * scale
    b = -a * dscale / n + 2.0 * dvar / (n * rstd)
    c = -a * dbias / n + dmean / n
    dx = dy * a + xhat * b + c
    return dx.reshape(shape), dscale, dbias


_bn.defvjp(_bn_fwd, _bn_bwd)


def batch_norm_train(
    x: jax.Array,
    scale: jax.Array | None,
    bias: jax.Array | None,
    eps: float,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Normalise ``x`` (channels last) with its own batch statistics.

    Args:
      x: ``(..., C)``, at least two values per channel; floating point (the caller picks
        the statistics dtype, :class:`~flaxattn.layers.basic.BatchNorm` uses at least
        float32).
      scale, bias: ``(C,)`` in ``x``'s dtype, or ``None`` (no affine transform).
      eps: added to the variance.

    Returns:
      ``(y, mean, var)``: ``y`` like ``x``; the batch ``mean`` and *biased* ``var``, ``(C,)``.
    """
    c = x.shape[-1]
    scale = jnp.ones((c,), x.dtype) if scale is None else scale
    bias = jnp.zeros((c,), x.dtype) if bias is None else bias
    return _bn(x, scale, bias, float(eps))
