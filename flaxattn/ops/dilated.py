"""Multi-scale sliding-window dilated attention (DilateFormer's MSDA kernel), without unfold.

Jiao et al., "DilateFormer: Multi-Scale Dilated Transformer for Visual Recognition",
IEEE Transactions on Multimedia 2023. https://arxiv.org/abs/2302.01791
Official code: JIAOJIAYUASD/dilateformer, ``models/dilateformer.py`` (``DilateAttention``
gathers neighbourhoods with ``nn.Unfold``). Used by :mod:`flaxattn.layers.dilate`.

Neighbourhoods are zero padded as ``nn.Unfold`` pads them: a query near the border
still attends to ``k * k`` keys, the out-of-map ones with logit 0 and value 0.
They are built without unfold: the padded map is sliced once per window offset,
each offset's logits are a multiply-add chain over the head dimension and the
output a weighted sum of shifted values, so nothing ``k * k`` times the size of
the map is ever materialised. The kernel works on channels-first maps
(:func:`dilated_attention_channels_first`; see the comment above the kernel for
why); :func:`dilated_attention` takes MSDA's channels-last layout and transposes.
The backward is written by hand (``jax.custom_vjp``) in the same form: the key and
value gradients *gather* from the queries that saw each key
(``dk[m] = sum_j dlogit_j[m - o_j] q[m - o_j]``) instead of scattering one padded
map per offset, as autodiff of the slices would (figures and the command that
measures them: ``bench/NOTES.md``).
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
#
# Layout: channels first, ``(heads, hd, B, H, W)`` per group, so every operation is
# elementwise over whole ``(B, H, W)`` maps (W innermost, vectorised) and the window
# shifts are slices of the two minor axes. The head-dim contractions are written as
# chains of multiply-adds over ``hd`` slices, not as ``jnp.sum``: XLA:CPU runs a
# reduce over a minor axis of 24 channels (channels-last) or a major axis
# (channels-first) several times slower than the fused chain (bench/NOTES.md).
# Optimisation barriers decide what XLA materialises. The per-tap dot products and the
# logit gradient pass one: without it XLA fuses the whole chain into every consumer
# that broadcasts them over ``hd`` (the output and gradient sums) and recomputes it
# ``hd`` times. (A ``lax.map`` over kernel rows materialised them too, but XLA:CPU runs
# the loop body's in-place update on one thread and slices the rows dynamically.) The
# padded q, k and v pass one, so that every window, the centre one included, reads
# them (XLA otherwise made unpadded copies for the centre windows); they are also the
# backward's residuals, never padded twice. Figures: bench/NOTES.md.


def _pad_hw(x: jax.Array, p: int) -> jax.Array:
    return jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(p, p), (p, p)])


def _window(x: jax.Array, a: int, b: int, h: int, w: int) -> jax.Array:
    """``x[..., a:a + h, b:b + w]`` (static offsets)."""
    return lax.slice(x, (0,) * (x.ndim - 2) + (a, b), x.shape[:-2] + (a + h, b + w))


def _taps(kernel_size: int, dilation: int) -> list[tuple[int, int]]:
    # In a map padded by p = dilation * (k // 2), the window tap (a, b) of the
    # query at (i, j) sits at (i + a * dilation, j + b * dilation).
    return [(a * dilation, b * dilation) for a in range(kernel_size) for b in range(kernel_size)]


def _head_dot(x: jax.Array, y: jax.Array) -> jax.Array:
    """``sum(x * y, axis=1)`` for ``(heads, hd, B, H, W)`` maps, as a multiply-add chain."""
    out = x[:, 0] * y[:, 0]
    for c in range(1, x.shape[1]):
        out = out + x[:, c] * y[:, c]
    return out


def _tap_dots(x: jax.Array, yp: jax.Array, kernel_size: int, dilation: int) -> jax.Array:
    """``(k * k, heads, B, H, W)``: ``x`` against the padded ``yp`` shifted to each tap.
    The result passes an optimisation barrier, so that it is materialised once."""
    h, w = x.shape[-2:]
    taps = _taps(kernel_size, dilation)
    return lax.optimization_barrier(
        jnp.stack([_head_dot(x, _window(yp, a, b, h, w)) for a, b in taps])
    )


def _group_forward(qp, kp, vp, kernel_size, dilation, scale):
    """One dilation group, ``q, k, v`` zero padded by ``p = dilation * (k // 2)``
    (``(heads, hd, B, H + 2p, W + 2p)``) -> output ``(heads, hd, B, H, W)`` and the
    attention weights ``(k * k, heads, B, H, W)``."""
    p = dilation * (kernel_size // 2)
    h, w = qp.shape[-2] - 2 * p, qp.shape[-1] - 2 * p
    taps = _taps(kernel_size, dilation)
    logits = _tap_dots(_window(qp, p, p, h, w), kp, kernel_size, dilation)
    rows = [logits[t] * jnp.asarray(scale, logits.dtype) for t in range(len(taps))]
    top = functools.reduce(jnp.maximum, rows)
    exps = [jnp.exp(r - top) for r in rows]
    total = functools.reduce(jnp.add, exps)
    attn = jnp.stack([e / total for e in exps])
    out = functools.reduce(
        jnp.add, (attn[t][:, None] * _window(vp, a, b, h, w) for t, (a, b) in enumerate(taps))
    )
    return out, attn


def _group_backward(qp, kp, vp, attn, dout, kernel_size, dilation, scale):
    """Gradients of :func:`_group_forward` w.r.t. the (unpadded) q, k and v.

    ``dlogit_t = attn_t * (g_t - sum_s attn_s g_s)`` with ``g_t = dout . v_t`` (the
    softmax backward; the sum is ``dout . out``, but from the tap maps it reads one
    channel per tap instead of ``hd``, and the output is no residual). The key and
    value gradients *gather*
    from the queries that saw each key, ``dk[m] = sum_t dlogit_t[m - o_t] q[m - o_t]``,
    instead of scattering one padded map per tap, as autodiff of the slices would.
    The padded maps are the forward's (residuals), not padded again.
    """
    h, w = dout.shape[-2:]
    p = dilation * (kernel_size // 2)
    taps = _taps(kernel_size, dilation)
    g = _tap_dots(dout, vp, kernel_size, dilation)
    delta = functools.reduce(jnp.add, (attn[t] * g[t] for t in range(len(taps))))
    # dl: the gradient of q . k_t (the logits before scaling).
    dl = lax.optimization_barrier(
        jnp.stack(
            [attn[t] * (g[t] - delta) * jnp.asarray(scale, g.dtype) for t in range(len(taps))]
        )
    )
    dq = functools.reduce(
        jnp.add, (dl[t][:, None] * _window(kp, a, b, h, w) for t, (a, b) in enumerate(taps))
    )
    # Tap (a, b) seen from the key's side: the query sits at minus the offset.
    last = 2 * p
    dop, dlp, ap = _pad_hw(dout, p), _pad_hw(dl, p), _pad_hw(attn, p)

    def gather(weights, xp):
        return functools.reduce(
            jnp.add,
            (
                _window(weights[t], last - a, last - b, h, w)[:, None]
                * _window(xp, last - a, last - b, h, w)
                for t, (a, b) in enumerate(taps)
            ),
        )

    return dq, gather(dlp, qp), gather(ap, dop)


def _padded_group(qkv, i, heads, p):
    """Group ``i``'s q, k and v as ``(heads, hd, B, H + 2p, W + 2p)``, zero padded,
    behind a barrier (see the comment above :func:`_pad_hw`)."""
    _, _, cg, b, h, w = qkv.shape
    return lax.optimization_barrier(
        tuple(_pad_hw(qkv[j, i].reshape(heads, cg // heads, b, h, w), p) for j in range(3))
    )


def _dilated_attention_fwd(qkv, kernel_size, dilation, heads, scale):
    _, _, cg, b, h, w = qkv.shape
    outs, attns, padded = [], [], []
    for i, d in enumerate(dilation):
        qkv_p = _padded_group(qkv, i, heads, d * (kernel_size // 2))
        out, attn = _group_forward(*qkv_p, kernel_size, d, scale)
        outs.append(out.reshape(cg, b, h, w))
        attns.append(attn)
        padded.append(qkv_p)
    return jnp.concatenate(outs, axis=0), (padded, attns)


def _dilated_attention_bwd(kernel_size, dilation, heads, scale, res, dout):
    padded, attns = res
    n = len(dilation)
    cg, (b, h, w) = dout.shape[0] // n, dout.shape[1:]
    grads = []
    for i, d in enumerate(dilation):
        qp, kp, vp = padded[i]
        do = dout[i * cg : (i + 1) * cg].reshape(heads, cg // heads, b, h, w)
        dq, dk, dv = _group_backward(qp, kp, vp, attns[i], do, kernel_size, d, scale)
        grads.append([t.reshape(cg, b, h, w) for t in (dq, dk, dv)])
    # One stack in the ``[3][n]`` order: stacking per group and then the groups
    # copied the whole gradient once more.
    flat = [grads[i][j] for j in range(3) for i in range(n)]
    return (jnp.stack(flat).reshape(3, n, cg, b, h, w),)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _dilated_attention(qkv, kernel_size, dilation, heads, scale):
    return _dilated_attention_fwd(qkv, kernel_size, dilation, heads, scale)[0]


_dilated_attention.defvjp(_dilated_attention_fwd, _dilated_attention_bwd)


def _check_args(where, qkv, layout, n_axis, kernel_size, dilation, heads):
    if qkv.ndim != 6 or qkv.shape[n_axis - 1] != 3 or qkv.shape[n_axis] != len(dilation):
        raise ValueError(
            f"{where}: expected `qkv` of shape {layout.format(n=len(dilation))}, "
            f"got {tuple(qkv.shape)}"
        )
    check_kernel_size(kernel_size)
    check_heads(qkv.shape[n_axis + 1], heads)


def dilated_attention_channels_first(
    qkv: jax.Array,
    *,
    kernel_size: int,
    dilation: Sequence[int],
    heads: int,
    scale: float,
) -> jax.Array:
    """Multi-scale sliding-window dilated attention on channels-first maps.

    The kernel itself: :func:`dilated_attention` transposes into this layout and back;
    :class:`~flaxattn.layers.dilate.MultiDilateLocalAttention` produces it straight
    from its qkv projection (the 1x1 convolution as a ``(3C, C) x (C, B*H*W)`` matmul)
    and feeds the result to its output projection the same way: no explicit transpose
    of the activations (a channels-last projection plus transposes measured slower).

    Args:
      qkv: ``(3, n, C / n, B, H, W)``: q, k and v of ``n = len(dilation)`` head groups
        (MSDA's channel layout ``[3][n][C / n]``), each group ``heads`` heads wide.
      kernel_size: window side ``k`` (odd).
      dilation: one dilation rate per group.
      heads: heads per group.
      scale: logit scale.

    Returns:
      ``(C, B, H, W)``, the groups' outputs one after the other (channels ``[n][heads][hd]``).

    Out-of-map keys are zeros that take part in the softmax (``nn.Unfold``'s zero
    padding). Differentiable (custom VJP, see :func:`_group_backward`).
    """
    _check_args(
        "dilated_attention_channels_first",
        qkv,
        "(3, {n}, C/n, B, H, W)",
        1,
        kernel_size,
        dilation,
        heads,
    )
    return _dilated_attention(qkv, kernel_size, tuple(dilation), heads, float(scale))


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
    padding). Differentiable. Computed by :func:`dilated_attention_channels_first`
    between two transposes (``(B*H*W, 3C) -> (3C, B*H*W)`` and back).
    """
    _check_args("dilated_attention", qkv, "(B, H, W, 3, {n}, C/n)", 4, kernel_size, dilation, heads)
    b, h, w, _, n, cg = qkv.shape
    first = qkv.reshape(b * h * w, 3 * n * cg).T.reshape(3, n, cg, b, h, w)
    out = _dilated_attention(first, kernel_size, tuple(dilation), heads, float(scale))
    return out.reshape(n * cg, b * h * w).T.reshape(b, h, w, n * cg)
