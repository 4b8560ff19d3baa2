"""2-D relative position logits (Shaw et al. 2018; Bello et al. 2019), without tiling.

Bello et al., "Attention Augmented Convolutional Networks", ICCV 2019.
https://arxiv.org/abs/1904.09925

A query at ``(x, y)`` attending to a key at ``(x', y')`` of an ``H x W`` map gets
the extra logit ``q . rel_h[x' - x + H - 1] + q . rel_w[y' - y + W - 1]``. The
height term does not depend on ``y'`` and the width term not on ``x'``, so both
are computed once per query as ``(B, heads, H, W, H)`` and ``(B, heads, H, W, W)``
arrays (``O(HW (H + W))``) and *broadcast*-added to the ``(HW, HW)`` content
logits, where the reference implementation tiles each of them to
``(B, heads, HW, HW)`` first.

Relative offsets become absolute key positions with the skew of Huang et al.
2018 (``rel_to_abs``): pad, flatten, reshape, slice; no gather, so the backward
pass is pads and slices too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def rel_to_abs(x: jax.Array) -> jax.Array:
    """Relative to absolute positions on the last two axes.

    ``x[..., i, m]`` holds the logit for relative offset ``m - (L - 1)`` of query
    ``i``; the result ``out[..., i, j] = x[..., i, j - i + L - 1]``.

    Shapes: ``(..., L, 2L - 1) -> (..., L, L)``.
    """
    *lead, length, width = x.shape
    if width != 2 * length - 1:
        raise ValueError(
            f"rel_to_abs: expected `x` of shape (..., L, 2L - 1), got {tuple(x.shape)}"
        )
    pad = [(0, 0)] * len(lead)
    x = jnp.pad(x, pad + [(0, 0), (0, 1)])  # (..., L, 2L)
    flat = x.reshape(*lead, 2 * length * length)
    flat = jnp.pad(flat, pad + [(0, length - 1)])  # (L + 1) (2L - 1) entries
    return flat.reshape(*lead, length + 1, width)[..., :length, length - 1 :]


def relative_logits_2d(
    q: jax.Array, rel_h: jax.Array, rel_w: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Height and width relative logits of every query, for broadcasting.

    Args:
      q: queries ``(B, H, W, heads, d)``, already scaled as the content logits are.
      rel_h: height table ``(2H - 1, d)``, offsets ``-(H - 1) .. H - 1``.
      rel_w: width table ``(2W - 1, d)``.

    Returns:
      ``(logits_h, logits_w)`` of shapes ``(B, heads, H, W, H)`` and
      ``(B, heads, H, W, W)``: ``logits_h[b, n, x, y, x']`` and
      ``logits_w[b, n, x, y, y']``. Add them to content logits laid out as
      ``(B, heads, H, W, H, W)`` with ``logits_h[..., :, None] + logits_w[..., None, :]``.
    """
    _, h, w, _, d = q.shape
    if rel_h.shape != (2 * h - 1, d) or rel_w.shape != (2 * w - 1, d):
        raise ValueError(
            f"relative_logits_2d: for queries {tuple(q.shape)} expected tables of shapes "
            f"{(2 * h - 1, d)} and {(2 * w - 1, d)}, got {tuple(rel_h.shape)} and "
            f"{tuple(rel_w.shape)}"
        )
    logits_w = rel_to_abs(jnp.einsum("bxynd,md->bnxym", q, rel_w.astype(q.dtype)))
    logits_h = rel_to_abs(jnp.einsum("bxynd,md->bnyxm", q, rel_h.astype(q.dtype)))
    return jnp.swapaxes(logits_h, 2, 3), logits_w


# Logits per block of queries in `attention_2d`: 64M values (256 MB in float32); rows
# of queries that need more are split into blocks, each rematerialised in the backward.
# Blocks cost time: at the bench shape (28x28 map, batch 16, 4 heads, 39M logits;
# bench/cases/aa_conv.py) the step took 216 ms in one block (468 MB temp) against 328 ms
# in ten blocks of 4M logits (84 MB), the default until 2026-11-30, and torch eager 230
# (quiet 2-core CPU, freed memory kept: flaxattn/host_memory.py). Under glibc's default
# malloc every step page-faulted its whole temp buffer, which hid most of that cost
# (467 against 560 ms, c79e78b). `query_block=` trades the time back for memory.
BLOCK_LOGITS = 1 << 26


def attention_2d(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    shape: tuple[int, int],
    rel: tuple[jax.Array, jax.Array] | None = None,
    *,
    query_block: int | None = None,
) -> jax.Array:
    """Softmax attention over all positions of an ``H x W`` map, with optional 2-D
    relative logits, computed in blocks of queries.

    Each block computes its full rows of logits (all keys), softmax and output; the
    block is rematerialised in the backward pass (``jax.checkpoint``), so neither
    pass holds more than one block's ``(B, heads, block, N)`` logits and their
    gradients. With a single block this is plain attention.

    Args:
      q: queries ``(B, N, heads, d)`` (already scaled), ``N = H * W`` row-major.
      k: keys ``(B, N, heads, d)``.
      v: values ``(B, N, heads, dv)``.
      shape: ``(H, W)``.
      rel: ``(logits_h, logits_w)`` of shapes ``(B, heads, N, H)`` and ``(B, heads, N, W)``
        (from :func:`relative_logits_2d`), broadcast-added to each query's logits laid
        out as ``(H, W)``; or ``None``.
      query_block: queries per block; ``None`` picks blocks of about
        :data:`BLOCK_LOGITS` logits.

    Returns:
      ``(B, heads, N, dv)``.
    """
    b, n, nh, _ = q.shape
    h, w = shape
    if query_block is None:
        blocks = max(1, -(-b * nh * n * n // BLOCK_LOGITS))
    else:
        blocks = -(-n // max(1, min(query_block, n)))
    size = -(-n // blocks)
    blocks = -(-n // size)

    def block(qb, rel_b):
        logits = jnp.einsum("bpnd,bqnd->bnpq", qb, k)
        if rel_b is not None:
            lh, lw = rel_b
            shaped = logits.reshape(*logits.shape[:3], h, w) + lh[..., :, None] + lw[..., None, :]
            logits = shaped.reshape(logits.shape)
        return jnp.einsum("bnpq,bqne->bnpe", jax.nn.softmax(logits, axis=-1), v)

    if blocks == 1:
        return block(q, rel)
    pad = blocks * size - n

    def split(x, axis):
        """Pad the query axis to ``blocks * size`` and move the blocks first."""
        x = jnp.pad(x, [(0, pad) if i == axis else (0, 0) for i in range(x.ndim)])
        x = x.reshape(*x.shape[:axis], blocks, size, *x.shape[axis + 1 :])
        return jnp.moveaxis(x, axis, 0)

    # Padded queries attend like any other; their outputs are dropped.
    xs = (split(q, 1), None if rel is None else tuple(split(r, 2) for r in rel))
    out = jax.lax.map(jax.checkpoint(lambda args: block(*args)), xs)  # (blocks, B, heads, size, dv)
    out = jnp.moveaxis(out, 0, 2).reshape(b, nh, blocks * size, -1)
    return out[:, :, :n]
