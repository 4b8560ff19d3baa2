"""Depthwise and grouped convolutions as sums of shifted slices, with hand-written backwards.

XLA:CPU's depthwise/grouped ``lax.conv`` is slow and its backward slower still; both
kernels here slice a padded map once per kernel tap instead, and differentiate by hand
(``jax.custom_vjp``) in the same form.

- :func:`depthwise_conv2d`: ``Conv2d(C, C, k, padding=k // 2, groups=C)``, stride 1
  (DilateFormer's conditional position embedding, :class:`flaxattn.layers.dilate.DepthwiseConv2d`).
- :func:`shift_conv`: a grouped ``k x k`` convolution with stride (ACmix's ``dep_conv``,
  :class:`flaxattn.layers.acmix.ACmix`).

Measured speed-ups: ``bench/NOTES.md``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

# --- depthwise conv (DilateFormer's CPE) ---------------------------------------------------


def _depthwise_taps(xp: jax.Array, w: jax.Array, h: int, wd: int, flip: bool) -> jax.Array:
    kh, kw = w.shape[:2]
    out = None
    for a in range(kh):
        for b in range(kw):
            tap = w[kh - 1 - a, kw - 1 - b] if flip else w[a, b]
            term = tap * xp[:, a : a + h, b : b + wd]
            out = term if out is None else out + term
    return out


def _pad_same(x: jax.Array, w: jax.Array) -> jax.Array:
    ph, pw = w.shape[0] // 2, w.shape[1] // 2
    return jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))


@jax.custom_vjp
def depthwise_conv2d(x: jax.Array, w: jax.Array) -> jax.Array:
    """``(B, H, W, C)`` x ``(kh, kw, C)``, stride 1, zero 'same' padding (odd kernel)."""
    return _depthwise_taps(_pad_same(x, w), w, x.shape[1], x.shape[2], flip=False)


def _depthwise_fwd(x, w):
    return depthwise_conv2d(x, w), (x, w)


def _depthwise_bwd(res, dy):
    x, w = res
    h, wd = x.shape[1:3]
    # The input gradient is the same sliding sum over dy with the kernel flipped.
    dx = _depthwise_taps(_pad_same(dy, w), w, h, wd, flip=True)
    xp = _pad_same(x, w)
    dw = jnp.stack(
        [
            jnp.stack(
                [
                    jnp.sum(xp[:, a : a + h, b : b + wd] * dy, axis=(0, 1, 2))
                    for b in range(w.shape[1])
                ]
            )
            for a in range(w.shape[0])
        ]
    )
    return dx, dw


depthwise_conv2d.defvjp(_depthwise_fwd, _depthwise_bwd)


# --- grouped shift convolution (ACmix's dep_conv) ----------------------------------------


def _sum_over_rows(k: int, row_term: Callable[[jax.Array], jax.Array], init: jax.Array):
    """``init + sum(row_term(a) for a in range(k))`` as a loop over the kernel rows.

    The loop bounds XLA's fusions: unrolled, the ``k * k * Ci``-term sum of a
    convolution lands in one elementwise expression that XLA copies into every
    consumer, a reduction included (a BatchNorm's mean, ``rate2``'s gradient),
    and code generation for ``k = 5`` then takes minutes and gigabytes
    (``optimization_barrier`` does not help: XLA:CPU drops it before fusion).
    """
    return jax.lax.fori_loop(0, k, lambda a, acc: acc + row_term(a), init)


def shift_conv_forward(fp: jax.Array, wg: jax.Array, stride: int, out_hw: tuple[int, int]):
    k, _, ci, g, co = wg.shape
    ho, wo = out_hw
    span_w = (wo - 1) * stride + 1

    def row_term(a):
        rows = jax.lax.dynamic_slice_in_dim(fp, a, (ho - 1) * stride + 1, axis=1)[:, ::stride]
        wa = jax.lax.dynamic_index_in_dim(wg, a, keepdims=False)  # (k, ci, g, co)
        out = None
        for c in range(k):
            win = rows[:, :, c : c + span_w : stride]
            for i in range(ci):
                term = win[..., i, None] * wa[c, i]
                out = term if out is None else out + term
        return out

    return _sum_over_rows(k, row_term, jnp.zeros(fp.shape[:1] + (ho, wo, g, co), fp.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def shift_conv(f: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """Grouped ``k x k`` convolution, zero padding ``k // 2``, as a sum of shifted slices.

    ``f`` is ``(B, H, W, G, Ci)`` (group-major channels), ``kernel`` the
    ``Conv2d`` kernel ``(k, k, Ci, G * Co)``; returns ``(B, Ho, Wo, G * Co)``,
    ``Ho = ceil(H / stride)``. Every output element is one fused sum of
    ``k * k * Ci`` products; the backward (below) is one fused sum for the input
    gradient and ``k * k`` small contractions for the kernel gradient.
    """
    return _shift_conv_fwd(f, kernel, stride)[0]


def _shift_conv_fwd(f, kernel, stride):
    b, h, w, g, ci = f.shape
    k = kernel.shape[0]
    wg = kernel.reshape(k, k, ci, g, kernel.shape[-1] // g)
    fp = jnp.pad(f, ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0), (0, 0)))
    out_hw = ((h - 1) // stride + 1, (w - 1) // stride + 1)
    out = shift_conv_forward(fp, wg, stride, out_hw)
    # An explicit size, not -1: jnp cannot infer -1 for an empty batch.
    return out.reshape(out.shape[:3] + (math.prod(out.shape[3:]),)), (fp, wg)


def _shift_conv_bwd(stride, res, gout):
    fp, wg = res
    k, _, ci, g, co = wg.shape
    p = k // 2
    b, hp, wp = fp.shape[:3]
    h, w = hp - 2 * p, wp - 2 * p
    ho, wo = gout.shape[1:3]
    gout = gout.reshape(b, ho, wo, g, co)
    # Input gradient: out[i] reads fp[i*stride + a]; spread the output gradient on
    # the stride grid (interior padding), then gather it back per offset.
    gd = jax.lax.pad(
        gout,
        jnp.zeros((), gout.dtype),
        [(0, 0, 0), (0, 0, stride - 1), (0, 0, stride - 1), (0, 0, 0), (0, 0, 0)],
    )
    e = k - 1
    gd = jnp.pad(gd, ((0, 0), (e, hp - gd.shape[1]), (e, wp - gd.shape[2]), (0, 0), (0, 0)))

    def row_term(a):
        rows = jax.lax.dynamic_slice_in_dim(gd, e - a + p, h, axis=1)
        wa = jax.lax.dynamic_index_in_dim(wg, a, keepdims=False).transpose(0, 2, 3, 1)
        df = None
        for c in range(k):
            win = rows[:, :, e - c + p : e - c + p + w]
            for o in range(co):
                term = win[..., o, None] * wa[c, :, o]  # (g, ci)
                df = term if df is None else df + term
        return df

    df = _sum_over_rows(k, row_term, jnp.zeros((b, h, w, g, ci), fp.dtype))
    # Kernel gradient: dw[a, c] = sum_p fp[p] * gd0[p - (a, c)] over the padded grid, with
    # gd0 the output gradient on the stride grid. Shifting the (smaller) output gradient
    # makes one contraction over all positions for every offset at once; a contraction
    # per offset copied a window of `fp` each time.
    # Group-major layouts put the contracted positions last: no copies for the dot.
    gd0 = gd[:, e : e + (ho - 1) * stride + 1, e : e + (wo - 1) * stride + 1]
    gd0 = gd0.transpose(3, 4, 0, 1, 2)  # (g, co, B, Hd, Wd)
    rest_h, rest_w = hp - gd0.shape[3], wp - gd0.shape[4]
    shifted = jnp.stack(
        [
            jnp.pad(gd0, ((0, 0), (0, 0), (0, 0), (a, rest_h - a), (c, rest_w - c)))
            for a in range(k)
            for c in range(k)
        ],
        axis=1,
    )  # (g, k*k, co, B, Hp, Wp)
    dwg = jnp.einsum("gibhw,gtobhw->tigo", fp.transpose(3, 4, 0, 1, 2), shifted)
    return df, dwg.reshape(k, k, ci, g * co)


shift_conv.defvjp(_shift_conv_fwd, _shift_conv_bwd)
