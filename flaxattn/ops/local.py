"""Neighbourhood gathering for local (windowed) attention, without unfold.

``lax.conv_general_dilated_patches`` (unfold) is slow on XLA:CPU and its
backward is worse. A ``k x k`` window is instead built by padding once and
slicing the padded map once per window offset ("shift-and-stack"): each slice
is a strided view whose backward is a pad, which XLA fuses well.

Offsets are ordered row-major, ``(a, b)`` for ``a, b in range(k)``, the order of
``torch.nn.Unfold``'s kernel positions, so a stacked result matches
``unfold(x).view(B, C, k*k, H', W')`` moved to channels-last.

:func:`local_attention` (ACmix's attention path, :class:`flaxattn.layers.acmix.ACmix`)
goes further: each block of queries (2x2 to 8x8, by head size) meets its halo of keys
in one batched matmul, and the ``k x k`` window of every query is cut out of the dense
block logits with a pad-and-reshape "diagonal" trick (no gather, no transpose); the
backward is made of matmuls, pads and slices. Per-offset shift-and-stack forms were as
fast for small heads but reduce over the head dimension once per offset, which XLA:CPU
runs from materialised slices (more temp memory) or, unrolled, compiles slowly for large
heads. Measured figures: ``bench/NOTES.md``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from flaxattn.ops.checks import check_choice, check_positive

PAD_MODES = ("zeros", "reflect")


def window_padding(kernel_size: int, dilation: int = 1) -> int:
    """Symmetric padding that keeps an odd window centred: ``dilation * (k - 1) // 2``."""
    return dilation * (kernel_size - 1) // 2


def shifted_windows(
    x: jax.Array,
    kernel_size: int,
    *,
    dilation: int = 1,
    stride: int = 1,
    pad_mode: str = "zeros",
    padding: int | None = None,
) -> list[jax.Array]:
    """The ``kernel_size**2`` shifted views of ``x`` (``(B, H, W, C)``), one per window offset.

    View ``a * k + b`` at output position ``(i, j)`` holds
    ``x[i * stride + a * dilation - padding, j * stride + b * dilation - padding]``
    (zero or reflected outside the map). Each view is ``(B, H', W', C)`` with
    ``H' = (H + 2 * padding - dilation * (k - 1) - 1) // stride + 1``, i.e.
    ``ceil(H / stride)`` for the default padding and an odd ``k``.

    Args:
      x: ``(B, H, W, C)``.
      kernel_size: window side ``k``.
      dilation: spacing between window taps.
      stride: step between output positions (queries are subsampled).
      pad_mode: ``'zeros'`` (``nn.Unfold``) or ``'reflect'`` (``nn.ReflectionPad2d``).
      padding: defaults to :func:`window_padding`.
    """
    if pad_mode not in PAD_MODES:
        raise ValueError(f"`pad_mode` (={pad_mode!r}) must be one of {list(PAD_MODES)}")
    k, d, s = kernel_size, dilation, stride
    p = window_padding(k, d) if padding is None else padding
    _, h, w, _ = x.shape
    if pad_mode == "reflect" and p >= min(h, w):
        raise ValueError(
            f"reflection padding of {p} needs maps larger than {p} pixels, got {h}x{w} "
            f"(kernel_size={k}, dilation={d})"
        )
    if p:
        mode = "constant" if pad_mode == "zeros" else "reflect"
        x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode=mode)
    ho = (h + 2 * p - d * (k - 1) - 1) // s + 1
    wo = (w + 2 * p - d * (k - 1) - 1) // s + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"a {k}x{k} window (dilation {d}) does not fit a {h}x{w} map")
    return [
        x[:, a * d : a * d + (ho - 1) * s + 1 : s, b * d : b * d + (wo - 1) * s + 1 : s, :]
        for a in range(k)
        for b in range(k)
    ]


def neighbourhood(x: jax.Array, kernel_size: int, **kwargs) -> jax.Array:
    """``(B, H, W, C) -> (B, H', W', k*k, C)``: :func:`shifted_windows` stacked on axis -2."""
    return jnp.stack(shifted_windows(x, kernel_size, **kwargs), axis=-2)


# --- block-wise local attention (ACmix's attention path) ------------------------------


def _diagonal(d: jax.Array, ax_x: int, ax_u: int, stride: int, dilation: int, k: int):
    """``e[..., x, ..., a, ...] = d[..., x, ..., x * stride + a * dilation, ...]`` (``u`` -> ``a``).

    Flattening everything from ``x`` on, padding the flat axis and reshaping
    it to rows one stride longer shifts row ``x`` left by ``x * stride`` along
    ``u``; a strided slice of ``u`` then keeps the window taps. One fused copy.
    """
    shape = d.shape
    bx = shape[ax_x]
    inner = math.prod(shape[ax_u + 1 :])
    row = math.prod(shape[ax_x + 1 :])
    lead = shape[:ax_x]
    flat = d.reshape(lead + (bx * row,))
    flat = jnp.pad(flat, [(0, 0)] * len(lead) + [(0, bx * stride * inner)])
    shifted = flat.reshape(lead + (bx, row + stride * inner))[..., :row].reshape(shape)
    index = [slice(None)] * len(shape)
    index[ax_u] = slice(0, (k - 1) * dilation + 1, dilation)
    return shifted[tuple(index)]


def _overlapping_blocks(x: jax.Array, axis: int, count: int, step: int, size: int) -> jax.Array:
    """Split ``axis`` into ``count`` blocks ``x[i*step : i*step + size]`` (``size >= step``).

    Built from whole-block reshapes of the axis shifted by ``0, step, 2*step...``,
    so the number of operations does not grow with ``count``. The axis is
    zero-extended as needed: those entries are only seen by queries past the map.
    """
    pieces = -(-size // step)  # reshaped copies needed to cover `size`
    need = (count + pieces - 1) * step
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, max(0, need - x.shape[axis]))
    x = jnp.pad(x, pad)
    parts = []
    for j in range(pieces):
        part = jax.lax.slice_in_dim(x, j * step, (count + j) * step, axis=axis)
        part = part.reshape(x.shape[:axis] + (count, step) + x.shape[axis + 1 :])
        parts.append(jax.lax.slice_in_dim(part, 0, min(step, size - j * step), axis=axis + 1))
    return jnp.concatenate(parts, axis=axis + 1) if len(parts) > 1 else parts[0]


def check_window_args(
    where: str, q, k, v, kernel_size: int, stride: int, dilation: int, pad_mode: str
) -> None:
    """The contract of the window-attention kernels (:func:`local_attention`, the Pallas
    ``window_attention``): odd kernel, q ``(B, Ho, Wo, heads, d)`` for k, v
    ``(B, H, W, heads, d)`` and the stride, reflection padding smaller than the map."""
    check_choice("pad_mode", pad_mode, ("reflect", "zeros"))
    check_positive(kernel_size=kernel_size, stride=stride, dilation=dilation)
    if kernel_size % 2 == 0:
        raise ValueError(f"`kernel_size` (={kernel_size}) must be odd")
    if k.shape != v.shape or k.ndim != 5 or q.ndim != 5:
        raise ValueError(
            f"{where}: expected `q` (B, Ho, Wo, heads, d) and `k`, `v` of one shape "
            f"(B, H, W, heads, d), got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    b, h, w, n, d = k.shape
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    if q.shape != (b, ho, wo, n, d):
        raise ValueError(
            f"{where}: expected `q` of shape {(b, ho, wo, n, d)} for keys of shape "
            f"{tuple(k.shape)} and stride {stride}, got {tuple(q.shape)}"
        )
    p = dilation * (kernel_size - 1) // 2
    if pad_mode == "reflect" and p >= min(h, w):
        raise ValueError(
            f"{where}: reflection padding of {p} needs maps of at least "
            f"{p + 1}x{p + 1}, got {h}x{w} (kernel_size={kernel_size}, dilation={dilation})"
        )


def local_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    kernel_size: int,
    *,
    stride: int = 1,
    dilation: int = 1,
    pad_mode: str = "reflect",
    block: int | None = None,
) -> jax.Array:
    """Softmax attention of every query over its ``kernel_size x kernel_size`` neighbourhood.

    The map of keys and values is padded by ``dilation * (kernel_size - 1) // 2``
    (reflected, as ``nn.ReflectionPad2d``, or zeros, as ``nn.Unfold``: padded
    zeros then take part in the softmax). Query ``(i, j)`` attends to the padded
    positions ``(i * stride + a * dilation, j * stride + b * dilation)``,
    ``a, b < kernel_size``: the window centred on input pixel ``(i * stride, j * stride)``.
    ``q`` is not scaled here.

    Args:
      q: ``(B, Ho, Wo, heads, d)``, the queries at the output positions
        (``Ho = ceil(H / stride)`` for an odd ``kernel_size``).
      k, v: ``(B, H, W, heads, d)``.
      kernel_size: window side (odd).
      stride, dilation: see above.
      pad_mode: ``'reflect'`` or ``'zeros'``.
      block: side of the query blocks; each block meets a halo of
        ``(block - 1) * stride + (kernel_size - 1) * dilation + 1`` keys per side.
        Larger blocks make larger matmuls but waste more of them on pairs outside
        the windows; by default 8 for ``d >= 32``, 4 for ``d >= 8``, else 2
        (the fastest measured on CPU for a 7x7 window).

    Returns:
      ``(B, Ho, Wo, heads, d)``.
    """
    check_window_args("local_attention", q, k, v, kernel_size, stride, dilation, pad_mode)
    b, h, w, n, d = k.shape
    s, dil, ks = stride, dilation, kernel_size
    p = dil * (ks - 1) // 2
    ho, wo = (h - 1) // s + 1, (w - 1) // s + 1
    if block is None:
        block = 8 if d >= 32 else 4 if d >= 8 else 2
    check_positive(block=block)
    bh, bw = min(block, ho), min(block, wo)
    ni, nj = -(-ho // bh), -(-wo // bw)
    lh = (bh - 1) * s + (ks - 1) * dil + 1
    lw = (bw - 1) * s + (ks - 1) * dil + 1

    # Queries in blocks: (B, ni, nj, heads, bh, bw, d), zero-padded to whole blocks.
    qb = jnp.pad(q, ((0, 0), (0, ni * bh - ho), (0, nj * bw - wo), (0, 0), (0, 0)))
    qb = qb.reshape(b, ni, bh, nj, bw, n, d).transpose(0, 1, 3, 5, 2, 4, 6)

    def halo(x):
        mode = "reflect" if pad_mode == "reflect" else "constant"
        x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0), (0, 0)), mode=mode)
        x = _overlapping_blocks(x, 1, ni, bh * s, lh)  # (B, ni, lh, W', heads, d)
        x = _overlapping_blocks(x, 3, nj, bw * s, lw)  # (B, ni, lh, nj, lw, heads, d)
        return x.transpose(0, 1, 3, 5, 2, 4, 6)  # (B, ni, nj, heads, lh, lw, d)

    kb, vb = halo(k), halo(v)

    def window(dense):  # (..., x, y, u, v) -> (..., x, y, a, c)
        dense = _diagonal(dense, dense.ndim - 3, dense.ndim - 1, s, dil, ks)
        return _diagonal(dense, dense.ndim - 4, dense.ndim - 2, s, dil, ks)

    dense_shape = jax.ShapeDtypeStruct((b, ni, nj, n, bh, bw, lh, lw), qb.dtype)
    unwindow = jax.linear_transpose(window, dense_shape)  # zeros off the windows

    logits = window(jnp.einsum("bijnxyd,bijnuvd->bijnxyuv", qb, kb))
    shape = logits.shape
    att = jax.nn.softmax(logits.reshape(shape[:-2] + (ks * ks,)), axis=-1).reshape(shape)
    (att_dense,) = unwindow(att)
    out = jnp.einsum("bijnxyuv,bijnuvd->bijnxyd", att_dense, vb)
    out = out.transpose(0, 1, 4, 2, 5, 3, 6).reshape(b, ni * bh, nj * bw, n, d)
    return out[:, :ho, :wo]
