"""Multi-scale sliding-window dilated attention (DilateFormer's MSDA kernel), without unfold.

Jiao et al., "DilateFormer: Multi-Scale Dilated Transformer for Visual Recognition",
IEEE Transactions on Multimedia 2023. https://arxiv.org/abs/2302.01791
Official code: JIAOJIAYUASD/dilateformer, ``models/dilateformer.py`` (``DilateAttention``
gathers neighbourhoods with ``nn.Unfold``). Used by :mod:`flaxattn.layers.dilate`.

Neighbourhoods are zero padded as ``nn.Unfold`` pads them: a query near the border
still attends to ``k * k`` keys, the out-of-map ones with logit 0 and value 0.
They are built without unfold: the padded map is
sliced once per window offset (shift-and-stack), each offset's logits are a
fused multiply-reduce and the output a running weighted sum of shifted values, so
nothing ``k * k`` times the size of the map is ever materialised. The backward is
written by hand (``jax.custom_vjp``) in the same form: the key and value gradients
*gather* from the queries that saw each key (``dk[m] = sum_j dlogit_j[m - o_j] q[m - o_j]``)
instead of scattering one padded map per offset, as autodiff of the slices would;
a loop over the kernel rows keeps one accumulator alive per gradient, so a train
step needs less temp memory than an unfold version or autodiff through the slices
(figures and the command that measures them: ``bench/NOTES.md``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from flaxattn.ops.checks import check_positive

# --- argument checks (the torch_ref twins state the same rules: tests/test_errors.py) ---


def check_kernel_size(kernel_size: int) -> None:
    """An odd, positive window side (an even one cannot be centred on its query)."""
    check_positive(kernel_size=kernel_size)
    if kernel_size % 2 == 0:
        raise ValueError(f"`kernel_size` (={kernel_size}) must be odd")


def check_dilation(dilation: Sequence[int]) -> tuple[int, ...]:
    """A non-empty sequence of positive dilation rates, as a tuple."""
    if isinstance(dilation, int):
        raise ValueError(f"`dilation` (={dilation!r}) must be a sequence of ints, e.g. [1, 2, 3]")
    dilation = tuple(dilation)
    if not dilation or not all(isinstance(d, (int, np.integer)) and d > 0 for d in dilation):
        raise ValueError(
            f"`dilation` (={list(dilation)}) must be a non-empty list of positive ints"
        )
    return tuple(int(d) for d in dilation)


def check_heads(dim: int, num_heads: int, num_groups: int | None = None) -> int:
    """``dim`` split into ``num_heads`` heads (and those into ``num_groups`` groups);
    returns the head dimension."""
    check_positive(dim=dim, num_heads=num_heads)
    if dim % num_heads:
        raise ValueError(f"`dim` (={dim}) must be divisible by `num_heads` (={num_heads})")
    if num_groups is not None and num_heads % num_groups:
        raise ValueError(
            f"`num_heads` (={num_heads}) must be a multiple of the number of dilations "
            f"(={num_groups})"
        )
    return dim // num_heads


# --- the kernel --------------------------------------------------------------------------------


def _pad_hw(x: jax.Array, p: int, axis: int = 1) -> jax.Array:
    pads = [(0, 0)] * x.ndim
    pads[axis] = pads[axis + 1] = (p, p)
    return jnp.pad(x, pads)


def _rows(x: jax.Array, start: jax.Array, size: int, axis: int = 1) -> jax.Array:
    return lax.dynamic_slice_in_dim(x, start, size, axis=axis)


def _cols(x: jax.Array, start: int, size: int, axis: int = 2) -> jax.Array:
    return lax.slice_in_dim(x, start, start + size, axis=axis)


def _softmax_rows_cols(x: jax.Array) -> jax.Array:
    """Softmax over the window, laid out as axis 0 (kernel row) and -1 (kernel column)."""
    e = jnp.exp(x - lax.stop_gradient(jnp.max(x, axis=(0, -1), keepdims=True)))
    return e / jnp.sum(e, axis=(0, -1), keepdims=True)


def _window_starts(kernel_size: int, dilation: int) -> tuple[np.ndarray, list[int]]:
    # In a map padded by p = dilation * (k // 2), the window tap (a, b) of the
    # query at (i, j) sits at (i + a * dilation, j + b * dilation).
    return np.arange(kernel_size) * dilation, [b * dilation for b in range(kernel_size)]


def _group_forward(q, k, v, kernel_size, dilation):
    """One dilation group: ``q, k, v (B, H, W, heads, hd)`` (q scaled) -> output, weights.

    The weights are laid out ``(k, B, H, W, heads, k)``: kernel rows first, so the
    loops over rows read contiguous slices.
    """
    _, h, w = q.shape[:3]
    p = dilation * (kernel_size // 2)
    rows, cols = _window_starts(kernel_size, dilation)
    rows = jnp.asarray(rows)
    kp, vp = _pad_hw(k, p), _pad_hw(v, p)

    def row_logits(start):
        kr = _rows(kp, start, h)
        return jnp.stack([jnp.sum(q * _cols(kr, c, w), axis=-1) for c in cols], axis=-1)

    attn = _softmax_rows_cols(lax.map(row_logits, rows))

    def accumulate(out, xs):
        a_row, start = xs
        vr = _rows(vp, start, h)
        for j, c in enumerate(cols):
            out = out + a_row[..., j, None] * _cols(vr, c, w)
        return out, None

    out, _ = lax.scan(accumulate, jnp.zeros_like(q), (attn, rows))
    return out, attn


def _group_backward(q, k, v, attn, dout, kernel_size, dilation):
    """Gradients of :func:`_group_forward` w.r.t. (scaled) q, k and v."""
    _, h, w = q.shape[:3]
    p = dilation * (kernel_size // 2)
    rows, cols = _window_starts(kernel_size, dilation)
    # Tap (a, b) seen from the key's side: the query sits at minus the offset.
    back_rows = jnp.asarray(rows[::-1].copy())
    rows = jnp.asarray(rows)
    kp, vp = _pad_hw(k, p), _pad_hw(v, p)

    def row_dattn(start):
        vr = _rows(vp, start, h)
        return jnp.stack([jnp.sum(dout * _cols(vr, c, w), axis=-1) for c in cols], axis=-1)

    dattn = lax.map(row_dattn, rows)
    dlogits = attn * (dattn - jnp.sum(attn * dattn, axis=(0, -1), keepdims=True))
    dlp, ap = _pad_hw(dlogits, p, axis=2), _pad_hw(attn, p, axis=2)
    qp, dop = _pad_hw(q, p), _pad_hw(dout, p)
    last = (kernel_size - 1) * dilation

    def accumulate(grads, xs):
        dq, dk, dv = grads
        dl_row, start, back, dlp_row, ap_row = xs
        kr = _rows(kp, start, h)
        qr, dor = _rows(qp, back, h), _rows(dop, back, h)
        dlr, ar = _rows(dlp_row, back, h), _rows(ap_row, back, h)
        for j, c in enumerate(cols):
            dq = dq + dl_row[..., j, None] * _cols(kr, c, w)
            dk = dk + _cols(dlr, last - c, w)[..., j, None] * _cols(qr, last - c, w)
            dv = dv + _cols(ar, last - c, w)[..., j, None] * _cols(dor, last - c, w)
        return (dq, dk, dv), None

    zeros = jnp.zeros_like(q)
    (dq, dk, dv), _ = lax.scan(
        accumulate, (zeros, zeros, zeros), (dlogits, rows, back_rows, dlp, ap)
    )
    return dq, dk, dv


def _split_group(qkv, i, heads, scale):
    b, h, w, _, _, cg = qkv.shape
    q, k, v = (qkv[..., j, i, :].reshape(b, h, w, heads, cg // heads) for j in range(3))
    return q * jnp.asarray(scale, q.dtype), k, v


def _dilated_attention_fwd(qkv, kernel_size, dilation, heads, scale):
    b, h, w, _, _, cg = qkv.shape
    outs, attns = [], []
    for i, d in enumerate(dilation):
        out, attn = _group_forward(*_split_group(qkv, i, heads, scale), kernel_size, d)
        outs.append(out.reshape(b, h, w, cg))
        attns.append(attn)
    return jnp.concatenate(outs, axis=-1), (qkv, attns)


def _dilated_attention_bwd(kernel_size, dilation, heads, scale, res, dout):
    qkv, attns = res
    b, h, w, _, _, cg = qkv.shape
    grads = [[], [], []]
    for i, d in enumerate(dilation):
        q, k, v = _split_group(qkv, i, heads, scale)
        do = dout[..., i * cg : (i + 1) * cg].reshape(q.shape)
        dq, dk, dv = _group_backward(q, k, v, attns[i], do, kernel_size, d)
        for g, t in zip(grads, (dq * jnp.asarray(scale, dq.dtype), dk, dv), strict=True):
            g.append(t.reshape(b, h, w, cg))
    return (jnp.stack([jnp.stack(g, axis=-2) for g in grads], axis=-3),)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _dilated_attention(qkv, kernel_size, dilation, heads, scale):
    return _dilated_attention_fwd(qkv, kernel_size, dilation, heads, scale)[0]


_dilated_attention.defvjp(_dilated_attention_fwd, _dilated_attention_bwd)


def dilated_attention(
    qkv: jax.Array,
    *,
    kernel_size: int,
    dilation: Sequence[int],
    heads: int,
    scale: float,
) -> jax.Array:
    """Multi-scale sliding-window dilated attention, without unfold.

    Args:
      qkv: ``(B, H, W, 3, n, C / n)``: q, k and v of ``n = len(dilation)`` head groups
        (MSDA's channel layout ``[3][n][C / n]``), each group ``heads`` heads wide.
      kernel_size: window side ``k`` (odd).
      dilation: one dilation rate per group.
      heads: heads per group.
      scale: logit scale.

    Returns:
      ``(B, H, W, C)``, the groups' outputs side by side (channels ``[n][heads][hd]``).

    Out-of-map keys are zeros that take part in the softmax (``nn.Unfold``'s zero
    padding). Differentiable (custom VJP, see the module docstring).
    """
    if qkv.ndim != 6 or qkv.shape[3] != 3 or qkv.shape[4] != len(dilation):
        raise ValueError(
            f"dilated_attention: expected `qkv` of shape (B, H, W, 3, {len(dilation)}, C/n), "
            f"got {tuple(qkv.shape)}"
        )
    check_kernel_size(kernel_size)
    check_heads(qkv.shape[-1], heads)
    return _dilated_attention(qkv, kernel_size, tuple(dilation), heads, float(scale))
