"""Dropout masks that are cheap to draw on every backend (used by
:class:`flaxattn.layers.basic.Dropout`).

``nnx.Dropout`` draws its mask with ``jax.random.bernoulli``: threefry, which
XLA:CPU runs as a loop of small kernels; in a ViT train step with dropout that
loop can take as long as the rest of the step (figures: ``bench/NOTES.md``).

Here the key of each call still comes from the module's ``nnx.Rngs`` stream
(``fold_in`` per call, as ``nnx.Dropout`` does), and only the per-element bits
come from a keyed counter hash: element ``i`` gets ``h(h(i * phi ^ k0) + k1)``,
``h`` being the "lowbias32" integer finaliser (a bijection of ``uint32`` with
full avalanche). That is a handful of vectorised integer ops per element, fused
into the surrounding computation. It is a statistical generator, not a
cryptographic one; ``tests/test_dropout.py`` checks the keep rate, independence
across keys and neighbouring elements, and determinism.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

_PHI = 0x9E3779B9  # 2^32 / golden ratio: spreads consecutive counters apart


def _lowbias32(x: jax.Array) -> jax.Array:
    # Chris Wellons' hash-prospector "lowbias32": lower bias than MurmurHash3's fmix32.
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def _key_words(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Two ``uint32`` words of a typed key (any PRNG implementation) or a raw key array."""
    data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    words = jnp.asarray(data).reshape(-1).astype(jnp.uint32)
    return words[0], words[-1]


def random_bits(key: jax.Array, shape: Sequence[int]) -> jax.Array:
    """``uint32`` bits of ``shape`` from ``key`` by a keyed counter hash (see module doc)."""
    n = math.prod(shape)
    if n >= 2**32:
        raise ValueError(f"`shape` (={tuple(shape)}) must have fewer than 2**32 elements")
    k0, k1 = _key_words(key)
    i = jax.lax.iota(jnp.uint32, n).reshape(shape)
    return _lowbias32(_lowbias32((i * jnp.uint32(_PHI)) ^ k0) + k1)


def keep_mask(key: jax.Array, keep_prob: float, shape: Sequence[int]) -> jax.Array:
    """Boolean mask, each entry ``True`` with probability ``keep_prob`` (to within 2**-32)."""
    threshold = jnp.uint32(min(round(keep_prob * 2**32), 2**32 - 1))
    return random_bits(key, shape) < threshold
