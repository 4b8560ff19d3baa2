"""ACmix: self-attention and convolution sharing one set of 1x1 projections.

Pan et al., "On the Integration of Self-Attention and Convolution", CVPR 2022.
https://arxiv.org/abs/2111.14556
Reference: LeapLabTHU/ACmix ``ResNet/test_bottleneck.py`` (attribute names as
upstream, so its state_dicts load key for key).

Two kernels make it fast on XLA without ``lax.conv_general_dilated_patches``
(unfold), whose backward is catastrophic on CPU:

- :func:`local_attention` computes windowed attention block by block: each
  block of queries (2x2 to 8x8, by head size) meets its halo of keys in one
  batched matmul, and the ``k x k`` window of every query is cut out of the
  dense block logits with a pad-and-reshape "diagonal" trick (no gather, no
  transpose); the backward is made of matmuls, pads and slices. Per-offset
  shift-and-stack forms were as fast for small heads but reduce over the
  head dimension once per offset, which XLA:CPU runs from materialised
  slices (2-4x the temp memory) or, unrolled, compiles slowly for large heads.
- the grouped shift convolution ``dep_conv`` runs as a sum of shifted slices
  in the forward and a hand-written backward (:func:`_shift_conv`): a grouped
  ``lax.conv`` measured 40x slower in the backward.

All modules are channels-last: ``(B, H, W, C)``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flaxattn.ops.checks import check_choice, check_divisible, check_input, check_positive
from flaxattn.ops.nn import Conv2d, Dtype

# --- local attention ------------------------------------------------------------------------


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
    check_choice("pad_mode", pad_mode, ("reflect", "zeros"))
    check_positive(kernel_size=kernel_size, stride=stride, dilation=dilation)
    if kernel_size % 2 == 0:
        raise ValueError(f"`kernel_size` (={kernel_size}) must be odd")
    if k.shape != v.shape or k.ndim != 5 or q.ndim != 5:
        raise ValueError(
            f"local_attention: expected `q` (B, Ho, Wo, heads, d) and `k`, `v` of one shape "
            f"(B, H, W, heads, d), got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    b, h, w, n, d = k.shape
    s, dil, ks = stride, dilation, kernel_size
    p = dil * (ks - 1) // 2
    ho, wo = (h - 1) // s + 1, (w - 1) // s + 1
    if q.shape != (b, ho, wo, n, d):
        raise ValueError(
            f"local_attention: expected `q` of shape {(b, ho, wo, n, d)} for keys of shape "
            f"{tuple(k.shape)} and stride {s}, got {tuple(q.shape)}"
        )
    if pad_mode == "reflect" and p >= min(h, w):
        raise ValueError(
            f"local_attention: reflection padding of {p} needs maps of at least "
            f"{p + 1}x{p + 1}, got {h}x{w} (kernel_size={ks}, dilation={dil})"
        )
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


# --- grouped shift convolution --------------------------------------------------------------


def _sum_over_rows(k: int, row_term: Callable[[jax.Array], jax.Array], init: jax.Array):
    """``init + sum(row_term(a) for a in range(k))`` as a loop over the kernel rows.

    The loop bounds XLA's fusions: unrolled, the ``k * k * Ci``-term sum of a
    convolution lands in one elementwise expression that XLA copies into every
    consumer, a reduction included (a BatchNorm's mean, ``rate2``'s gradient),
    and code generation for ``k = 5`` then takes minutes and gigabytes
    (``optimization_barrier`` does not help: XLA:CPU drops it before fusion).
    """
    return jax.lax.fori_loop(0, k, lambda a, acc: acc + row_term(a), init)


def _shift_conv_forward(fp: jax.Array, wg: jax.Array, stride: int, out_hw: tuple[int, int]):
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
def _shift_conv(f: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
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
    out = _shift_conv_forward(fp, wg, stride, out_hw)
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


_shift_conv.defvjp(_shift_conv_fwd, _shift_conv_bwd)


# --- ACmix -------------------------------------------------------------------------------------


def shift_identity_kernel(kernel_conv: int, out_planes: int, dtype=jnp.float32) -> jax.Array:
    """``dep_conv``'s initial kernel ``(k, k, k*k, out_planes)``: input channel ``a*k + c`` of
    each group is read at offset ``(a, c)`` only, i.e. the ``k*k`` fc outputs become the
    ``k*k`` shifted copies that a ``k x k`` convolution sums."""
    k = kernel_conv
    eye = np.eye(k * k).reshape(k * k, k, k).transpose(1, 2, 0)  # (a, c, i) = [i == a*k + c]
    return jnp.asarray(np.broadcast_to(eye[..., None], (k, k, k * k, out_planes)), dtype)


def position_grid(h: int, w: int, dtype=jnp.float32) -> jax.Array:
    """Upstream's ``position(H, W)`` channels-last: ``(1, H, W, 2)``, channel 0 the
    ``linspace(-1, 1, W)`` column coordinate, channel 1 the row one."""
    loc_w = np.broadcast_to(np.linspace(-1.0, 1.0, w)[None, :], (h, w))
    loc_h = np.broadcast_to(np.linspace(-1.0, 1.0, h)[:, None], (h, w))
    return jnp.asarray(np.stack([loc_w, loc_h], axis=-1)[None], dtype)


def check_acmix_args(
    in_planes: int,
    out_planes: int,
    kernel_att: int,
    head: int,
    kernel_conv: int,
    stride: int,
    dilation: int,
) -> None:
    """Shared by both twins: ``ValueError`` naming the argument and its value."""
    check_positive(
        in_planes=in_planes,
        out_planes=out_planes,
        kernel_att=kernel_att,
        head=head,
        kernel_conv=kernel_conv,
        dilation=dilation,
    )
    check_divisible("out_planes", out_planes, "head", head)
    check_choice("stride", stride, (1, 2))
    for name, value in (("kernel_att", kernel_att), ("kernel_conv", kernel_conv)):
        if value % 2 == 0:
            raise ValueError(f"`{name}` (={value}) must be odd")


def attention_padding(kernel_att: int, dilation: int) -> int:
    """Upstream's ``padding_att``; equals ``dilation * (kernel_att - 1) // 2`` for odd kernels."""
    return (dilation * (kernel_att - 1) + 1) // 2


def check_map_size(h: int, w: int, kernel_att: int, dilation: int, where: str = "ACmix") -> None:
    p = attention_padding(kernel_att, dilation)
    if min(h, w) <= p:
        raise ValueError(
            f"{where}: maps must be at least {p + 1}x{p + 1} for the reflection padding of "
            f"{p} (kernel_att={kernel_att}, dilation={dilation}), got {h}x{w}"
        )


class ACmix(nnx.Module):
    """ACmix: a local self-attention path and a shift-convolution path on shared 1x1 projections.

    ``q, k, v = conv1(x), conv2(x), conv3(x)`` (1x1 convs, ``out_planes`` channels,
    ``head`` heads of ``head_dim = out_planes // head``). The attention path adds a
    positional encoding (``conv_p`` of a ``linspace(-1, 1)`` grid) to the keys
    relative to the query, attends over the ``kernel_att x kernel_att`` window of a
    reflection-padded map with ``q`` scaled by ``head_dim ** -0.5``, and strides by
    subsampling the queries. The convolution path mixes the ``3 * head`` maps of
    every channel of a head with ``fc`` into ``kernel_conv ** 2`` maps, then applies
    the grouped shift convolution ``dep_conv`` (initialised to shift-identity kernels,
    no bias). Output: ``rate1 * attention + rate2 * convolution``, rates initialised to 0.5.

    Deviation from upstream (each one crashes there):
    - stride 2 on odd sizes: the output is ``ceil(H / stride)`` (upstream's
      ``h // stride`` view fails);
    - ``dilation > 1``: the window is dilated as the padding is (upstream pads
      for a dilated window but unfolds an undilated one);
    - ``kernel_conv != 3``: ``dep_conv`` pads by ``kernel_conv // 2`` (upstream: 1);
    - maps too small for the reflection padding raise a ``ValueError`` naming
      the minimum size.
    The positional term ``q . q_pe`` is the same for every key of a window and
    cancels in the softmax, so it is not computed (nor is ``conv_p.bias``'s share,
    whose gradient is zero, as upstream's is up to round-off).

    Args:
      in_planes: input channels.
      out_planes: output channels (a multiple of ``head``).
      kernel_att: attention window side (odd).
      head: attention heads.
      kernel_conv: shift convolution kernel side (odd).
      stride: 1 or 2.
      dilation: attention window dilation.

    Shapes: ``(B, H, W, in_planes) -> (B, ceil(H / stride), ceil(W / stride), out_planes)``;
    ``H, W >= padding_att + 1``.

    Example::

      >>> m = ACmix(16, 32, kernel_att=7, head=4, rngs=nnx.Rngs(0))
      >>> m.dep_conv.kernel.shape, m.fc.kernel.shape
      ((3, 3, 9, 32), (1, 1, 12, 9))
      >>> m(jnp.ones((2, 12, 10, 16))).shape
      (2, 12, 10, 32)
    """

    def __init__(
        self,
        in_planes: int,
        out_planes: int,
        kernel_att: int = 7,
        head: int = 4,
        kernel_conv: int = 3,
        stride: int = 1,
        dilation: int = 1,
        *,
        dtype: Dtype = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_acmix_args(in_planes, out_planes, kernel_att, head, kernel_conv, stride, dilation)
        self.in_planes = in_planes
        self.out_planes = out_planes
        self.head = head
        self.kernel_att = kernel_att
        self.kernel_conv = kernel_conv
        self.stride = stride
        self.dilation = dilation
        self.head_dim = out_planes // head
        self.padding_att = attention_padding(kernel_att, dilation)
        self.dtype = dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.rate1 = nnx.Param(jnp.full((1,), 0.5, param_dtype))
        self.rate2 = nnx.Param(jnp.full((1,), 0.5, param_dtype))
        self.conv1 = Conv2d(in_planes, out_planes, 1, **kw)
        self.conv2 = Conv2d(in_planes, out_planes, 1, **kw)
        self.conv3 = Conv2d(in_planes, out_planes, 1, **kw)
        self.conv_p = Conv2d(2, self.head_dim, 1, **kw)
        kk = kernel_conv * kernel_conv
        self.fc = Conv2d(3 * head, kk, 1, bias=False, **kw)
        self.dep_conv = Conv2d(
            kk * self.head_dim,
            out_planes,
            kernel_conv,
            stride=stride,
            padding=kernel_conv // 2,
            groups=self.head_dim,
            bias=False,
            **kw,
        )
        self.dep_conv.kernel[...] = shift_identity_kernel(kernel_conv, out_planes, param_dtype)

    def attend(self, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        """The attention path's window attention (see :func:`local_attention`); a hook
        for other implementations (``bench/cases/acmix.py`` times an unfold one)."""
        return local_attention(q, k, v, self.kernel_att, stride=self.stride, dilation=self.dilation)

    def _cast(self, *arrays):
        dtype = self.dtype or jnp.result_type(*arrays)
        return [a.astype(dtype) for a in arrays]

    def __call__(self, x: jax.Array) -> jax.Array:
        c_in, c = self.in_planes, self.out_planes
        check_input(x, rank=4, last=c_in, layout=f"(B, H, W, {c_in})", where="ACmix")
        b, h, w, _ = x.shape
        check_map_size(h, w, self.kernel_att, self.dilation)
        n, d, s = self.head, self.head_dim, self.stride
        convs = (self.conv1, self.conv2, self.conv3)
        # q, k and v in one matmul.
        kernel = jnp.concatenate([m.kernel[...][0, 0] for m in convs], axis=-1)
        bias = jnp.concatenate([m.bias[...] for m in convs])
        pk, pb = self.conv_p.kernel[...][0, 0], self.conv_p.bias[...]
        fc = self.fc.kernel[...][0, 0]
        dep = self.dep_conv.kernel[...]
        rate1, rate2 = self.rate1[...], self.rate2[...]
        x, kernel, bias, pk, pb, fc, dep, rate1, rate2 = self._cast(
            x, kernel, bias, pk, pb, fc, dep, rate1, rate2
        )
        qkv = (x @ kernel + bias).reshape(b, h, w, 3, n, d)
        q, k, v = qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2]

        # Attention: upstream's logits are q . (k_j + pe_q - pe_j); pe_q is constant over
        # the window and cancels in the softmax, and k_j - pe_j is padded as one map.
        pe = position_grid(h, w, x.dtype)[0] @ pk + pb  # (H, W, head_dim)
        q_att = q[:, ::s, ::s] * (float(d) ** -0.5)
        att = self.attend(q_att, k - pe[:, :, None, :], v)
        ho, wo = att.shape[1:3]
        out_att = att.reshape(b, ho, wo, c)

        # Convolution: fc mixes [q heads, k heads, v heads] per channel of a head into
        # kernel_conv**2 maps, grouped by channel (d * k**2 + i, as upstream's permute).
        kk = self.kernel_conv**2
        f = jnp.einsum("bhwtnd,tni->bhwdi", qkv, fc.reshape(3, n, kk))
        out_conv = _shift_conv(f, dep, s)
        return rate1 * out_att + rate2 * out_conv
