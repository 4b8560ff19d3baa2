"""Parameter initialisers that draw as PyTorch's defaults do, fast to run eagerly.

``torch_uniform_init`` is torch's kaiming-uniform default with ``a=sqrt(5)``, i.e.
``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, for weights and biases; ``trunc_normal_init``
is ``timm``'s ``trunc_normal_`` (absolute cut-offs); ``constant_init`` a constant.
The modules in :mod:`flaxattn.layers.basic` use them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# Parameter initialisation runs eagerly, and an eager jax.random call compiles one
# kernel per parameter shape (0.2-1 s each on CPU: a model with 60 shapes took
# 10-60 s to build, most of it compiling). The draws below come in fixed-size
# chunks from one compiled kernel per distribution and dtype, and are cut to
# shape on the host; constants are made on the host. Under a trace (nnx.jit,
# nnx.eval_shape) they fall back to plain jax.random.
_CHUNK = 1 << 16


@functools.partial(jax.jit, static_argnums=(2,))
def _uniform_chunk(key: jax.Array, index: jax.Array, dtype) -> jax.Array:
    return jax.random.uniform(jax.random.fold_in(key, index), (_CHUNK,), dtype)


@functools.partial(jax.jit, static_argnums=(4,))
def _truncated_normal_chunk(key: jax.Array, index: jax.Array, lower, upper, dtype) -> jax.Array:
    return jax.random.truncated_normal(
        jax.random.fold_in(key, index), lower, upper, (_CHUNK,), dtype
    )


def _host_draw(draw, key: jax.Array, shape: Sequence[int], dtype) -> np.ndarray:
    size = math.prod(shape)
    wide = jnp.promote_types(dtype, jnp.float32)
    chunks = [np.asarray(draw(key, i, wide)) for i in range(-(-size // _CHUNK))]
    return np.concatenate(chunks)[:size].astype(np.float64).reshape(shape)


def on_device(value: np.ndarray, dtype) -> jax.Array:
    # Cast on the host: jnp.asarray(x, dtype) would compile a convert per shape.
    return jnp.asarray(np.asarray(value, dtype=jnp.dtype(dtype)))


def _traced(key) -> bool:
    return isinstance(key, jax.core.Tracer)


def torch_uniform_init(fan_in: int) -> nnx.Initializer:
    """PyTorch's default init for Linear/Conv weights and biases: ``U(-1/sqrt(fan_in), ...)``."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

    def init(key, shape, dtype=jnp.float32):
        if _traced(key) or math.prod(shape) == 0:
            return jax.random.uniform(key, shape, dtype, -bound, bound)
        u = _host_draw(_uniform_chunk, key, shape, dtype)
        return on_device((2.0 * u - 1.0) * bound, dtype)

    return init


def trunc_normal_init(std: float = 1.0, a: float = -2.0, b: float = 2.0) -> nnx.Initializer:
    """``timm``/``torch.nn.init.trunc_normal_(w, std=std, a=a, b=b)``: N(0, std) cut at the
    *absolute* bounds ``[a, b]`` (with ``std=0.02`` that is +-100 std: a plain normal)."""

    def init(key, shape, dtype=jnp.float32):
        lo, hi = a / std, b / std
        if _traced(key) or math.prod(shape) == 0:
            return std * jax.random.truncated_normal(key, lo, hi, shape, dtype)

        def draw(k, i, d):
            return _truncated_normal_chunk(k, i, lo, hi, d)

        return on_device(std * _host_draw(draw, key, shape, dtype), dtype)

    return init


def constant_init(value: float) -> nnx.Initializer:
    """``value`` everywhere, made on the host (no per-shape compile)."""

    def init(key, shape, dtype=jnp.float32):
        return on_device(np.full(shape, value), dtype)

    return init
