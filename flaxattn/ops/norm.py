"""LayerNorm and exact GELU with hand-written VJPs (PyTorch's formulas).

Differentiated by autodiff inside a train step, both cost XLA:CPU several times
PyTorch's time (figures in ``bench/NOTES.md``, issue 15): autodiff of LayerNorm's
two-pass variance yields a chain of broadcasts, transposed copies and row reductions
that XLA fuses poorly with the neighbouring matmuls, and autodiff of ``x * Phi(x)``
evaluates ``erf`` a second time in the backward pass. Here the forward saves what the
backward needs (``xhat`` and ``1/std``; ``Phi(x)``) and the backward is the closed form
PyTorch uses:

  LayerNorm: ``g = dy * scale``;
  ``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))``,
  ``dscale = sum(dy * xhat)``, ``dbias = sum(dy)`` over every axis but the last.

  GELU: ``dx = dy * (Phi(x) + x * phi(x))``, ``phi(x) = exp(-x^2 / 2) / sqrt(2 pi)``.

Both compute in the dtype they are given; the callers pass at least float32 to
LayerNorm (statistics in float32 whatever the compute dtype).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    """``(x - mean) / sqrt(var + eps) * scale + bias`` over the last axis (biased,
    two-pass variance, as ``torch.nn.LayerNorm``). ``scale``, ``bias``: ``(D,)``."""
    return _layer_norm_fwd(x, scale, bias, eps)[0]


def _layer_norm_fwd(x, scale, bias, eps):
    mean = jnp.mean(x, axis=-1, keepdims=True)
    xc = x - mean
    rstd = jax.lax.rsqrt(jnp.mean(xc * xc, axis=-1, keepdims=True) + eps)
    xhat = xc * rstd
    return xhat * scale + bias, (xhat, rstd, scale)


def _layer_norm_bwd(eps, res, dy):
    del eps
    xhat, rstd, scale = res
    g = dy * scale
    dx = rstd * (
        g - jnp.mean(g, axis=-1, keepdims=True) - xhat * jnp.mean(g * xhat, axis=-1, keepdims=True)
    )
    rows = tuple(range(dy.ndim - 1))
    return dx, jnp.sum(dy * xhat, axis=rows), jnp.sum(dy, axis=rows)


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


@jax.custom_vjp
def gelu(x: jax.Array) -> jax.Array:
    """``torch.nn.GELU()``: ``x * Phi(x)``, the exact erf form."""
    return _gelu_fwd(x)[0]


def _gelu_fwd(x):
    cdf = 0.5 * (1.0 + jax.lax.erf(x * _INV_SQRT2))
    return x * cdf, (x, cdf)


def _gelu_bwd(res, dy):
    x, cdf = res
    return (dy * (cdf + x * jnp.exp(-0.5 * x * x) * _INV_SQRT_2PI),)


gelu.defvjp(_gelu_fwd, _gelu_bwd)
