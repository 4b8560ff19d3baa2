"""Attention-augmented convolution.

Bello et al., "Attention Augmented Convolutional Networks", ICCV 2019.
https://arxiv.org/abs/1904.09925

Follows leaderj1001/Attention-Augmented-Conv2d (``attention_augmented_conv.py``),
key for key, so its weights load; ``torch_ref.AugmentedConv`` is the PyTorch twin.
The output concatenates a convolution (``out_channels - dv`` channels) with
multi-head self-attention over all positions of the (possibly strided) map
(``dv`` channels), optionally with 2-D relative position logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from flaxattn.layers.basic import Conv2d, Dtype
from flaxattn.ops.checks import check_choice, check_divisible, check_input, check_positive
from flaxattn.ops.fused import check_attention_impl, fused_attention, resolve_attention_impl
from flaxattn.ops.relative import attention_2d, relative_logits_2d


def map_shape(shape: int | Sequence[int], relative: bool) -> tuple[int, int]:
    """``shape`` (an int or ``(H, W)``) as a pair; positive when ``relative``."""
    if isinstance(shape, int) and not isinstance(shape, bool):
        pair = (shape, shape)
    else:
        pair = tuple(shape) if isinstance(shape, (tuple, list)) else ()
        if len(pair) != 2 or not all(isinstance(s, int) for s in pair):
            raise ValueError(f"`shape` (={shape!r}) must be an int or a pair of ints (H, W)")
    if relative and min(pair) < 1:
        raise ValueError(
            f"`shape` (={shape!r}) must be the positive attention map size (H, W) "
            "when `relative=True`"
        )
    return pair


def check_aa_args(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    dk: int,
    dv: int,
    Nh: int,
    shape: int | Sequence[int],
    relative: bool,
    stride: int,
) -> tuple[int, int]:
    """Validate :class:`AugmentedConv`'s arguments (both twins); returns ``shape`` as a pair."""
    check_positive(
        in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size, Nh=Nh
    )
    check_choice("stride", stride, (1, 2))
    if dv < 0:
        raise ValueError(f"`dv` (={dv}) must not be negative")
    if dv > out_channels:
        raise ValueError(f"`dv` (={dv}) must not exceed `out_channels` (={out_channels})")
    check_divisible("dv", dv, "Nh", Nh)
    if dv > 0:
        check_positive(dk=dk)
        check_divisible("dk", dk, "Nh", Nh)
    return map_shape(shape, relative and dv > 0)


class AugmentedConv(nnx.Module):
    """Convolution concatenated with multi-head self-attention over the whole map.

    ``out = concat([conv(x), attn_out(MHA(qkv_conv(x)))], channels)``. ``qkv_conv``
    has the full ``kernel_size`` and ``stride`` (as upstream), so attention runs
    on the output map, whose size is ``ceil(H / stride)`` for odd kernels. Queries
    are scaled by ``(dk / Nh) ** -0.5``; with ``relative=True`` each logit gets
    ``q . key_rel_h[x' - x + H - 1] + q . key_rel_w[y' - y + W - 1]``, added by
    broadcasting (:mod:`flaxattn.ops.relative`): memory ``O(HW (H + W))`` on top
    of the attention weights, not tiled ``(HW)^2`` copies. As no query then needs
    more than its own row of logits, attention runs in blocks of queries, each
    rematerialised in the backward pass: only one ``(block, HW)`` slice of the
    ``(HW)^2`` logits is alive at a time.

    As upstream, the attention output ``(B, Nh, HW, dv / Nh)`` is *reshaped* (not
    transposed) to ``(B, Nh, dv / Nh, H, W)`` before the heads are merged; when
    ``dv / Nh > 1`` this interleaves positions and channels. It is kept so that
    upstream weights compute the same function.

    Deviation from upstream: ``shape`` may be ``(H, W)`` and ``key_rel_h``/``key_rel_w``
    are sized ``2H - 1``/``2W - 1`` (upstream sizes both ``2 * shape - 1`` and fails on
    non-square maps); ``dv = 0`` is a plain convolution (no ``qkv_conv``, ``attn_out``
    or tables) and ``dv = out_channels`` pure attention (no ``conv_out``), where
    upstream crashes on zero-channel convolutions (their upstream state_dicts, with
    zero-size and unused tensors, load through a registered layout).

    Args:
      in_channels: input channels.
      out_channels: output channels: ``out_channels - dv`` from the convolution,
        ``dv`` from attention.
      kernel_size: kernel of ``conv_out`` and ``qkv_conv`` (padding ``(k - 1) // 2``).
      dk: total query/key depth over all heads (divisible by ``Nh``).
      dv: total value depth (divisible by ``Nh``), ``0 <= dv <= out_channels``.
      Nh: number of heads.
      shape: attention map size ``(H, W)`` or an int for square maps; needed with
        ``relative=True``, where the map must have exactly this size.
      relative: add 2-D relative position logits.
      stride: 1 or 2, for both the convolution and ``qkv_conv``.
      query_block: (Flax only) queries per block of the attention loop
        (:func:`~flaxattn.ops.relative.attention_2d`); ``None`` picks blocks of about
        4M logits. Blocks change memory and speed, not the result.
      attention_impl: (Flax only) ``'auto'`` (the blocked einsum path; cuDNN flash
        attention on an NVIDIA GPU for bfloat16/float16 without relative logits),
        ``'xla'`` or ``'cudnn'`` (``jax.nn.dot_product_attention``, ``relative=False``
        only); see :mod:`flaxattn.ops.fused`. Parameters are the same.

    Shapes: ``(B, H, W, in_channels) -> (B, H', W', out_channels)``, ``H' = ceil(H / stride)``
    for odd ``kernel_size``.

    Example::

      >>> aa = AugmentedConv(8, 16, 3, dk=8, dv=4, Nh=2, shape=(6, 5), relative=True,
      ...                    rngs=nnx.Rngs(0))
      >>> jax.eval_shape(aa, jnp.ones((2, 6, 5, 8))).shape
      (2, 6, 5, 16)
      >>> aa.key_rel_h[...].shape, aa.key_rel_w[...].shape
      ((11, 4), (9, 4))
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        dk: int,
        dv: int,
        Nh: int,
        shape: int | Sequence[int] = 0,
        relative: bool = False,
        stride: int = 1,
        *,
        query_block: int | None = None,
        attention_impl: str = "auto",
        dtype: Dtype = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        hw = check_aa_args(
            in_channels, out_channels, kernel_size, dk, dv, Nh, shape, relative, stride
        )
        if query_block is not None:
            check_positive(query_block=query_block)
        self.query_block = query_block
        check_attention_impl(attention_impl)
        self.attention_impl = attention_impl
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.dk, self.dv, self.Nh = dk, dv, Nh
        self.shape = hw
        self.relative = relative
        self.stride = stride
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        padding = (kernel_size - 1) // 2
        conv = out_channels - dv
        self.conv_out = (
            Conv2d(in_channels, conv, kernel_size, stride, padding, **kw)
            if conv
            else nnx.data(None)
        )
        if dv:
            self.qkv_conv = Conv2d(in_channels, 2 * dk + dv, kernel_size, stride, padding, **kw)
            self.attn_out = Conv2d(dv, dv, 1, **kw)
        else:
            self.qkv_conv = nnx.data(None)
            self.attn_out = nnx.data(None)
        if relative and dv:
            h, w = hw
            # torch.randn, as upstream.
            normal = jax.random.normal
            self.key_rel_w = nnx.Param(normal(rngs.params(), (2 * w - 1, dk // Nh), param_dtype))
            self.key_rel_h = nnx.Param(normal(rngs.params(), (2 * h - 1, dk // Nh), param_dtype))
        else:
            self.key_rel_w = nnx.data(None)
            self.key_rel_h = nnx.data(None)

    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.in_channels
        check_input(x, rank=4, last=c, layout=f"(B, H, W, {c})", where="AugmentedConv")
        conv_out = self.conv_out(x) if self.conv_out is not None else None
        if not self.dv:
            return conv_out
        attn = self.attn_out(self._attention(self.qkv_conv(x), tuple(x.shape)))
        return attn if conv_out is None else jnp.concatenate([conv_out, attn], axis=-1)

    def _attention(self, qkv: jax.Array, in_shape: tuple) -> jax.Array:
        b, h, w, _ = qkv.shape
        dk, dv, nh = self.dk, self.dv, self.Nh
        dkh, dvh = dk // nh, dv // nh
        if self.relative and (h, w) != self.shape:
            raise ValueError(
                f"AugmentedConv: `shape` (={self.shape}) must equal the attention map size "
                f"(H, W) with `relative=True`; input {in_shape} gives a {(h, w)} map "
                f"at stride {self.stride}"
            )
        n = h * w
        q = qkv[..., :dk].reshape(b, h, w, nh, dkh) * dkh**-0.5
        k = qkv[..., dk : 2 * dk].reshape(b, n, nh, dkh)
        v = qkv[..., 2 * dk :].reshape(b, n, nh, dvh)
        out = self._attend(q, k, v)  # (B, Nh, HW, dvh)
        # Upstream reshapes (B, Nh, HW, dvh) to (B, Nh, dvh, H, W) without a transpose.
        out = out.reshape(b, nh, dvh, h, w)
        return jnp.transpose(out, (0, 3, 4, 1, 2)).reshape(b, h, w, dv)

    def _attend(self, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        """``q (B, H, W, Nh, dkh)``, ``k``/``v (B, HW, Nh, d)`` -> ``(B, Nh, HW, dvh)``."""
        b, h, w, nh, dkh = q.shape
        impl = resolve_attention_impl(
            self.attention_impl,
            dtype=jnp.result_type(q, k, v),
            head_dim=max(dkh, v.shape[-1]),
            where="AugmentedConv",
            fused_ok="relative position logits" if self.relative else None,
        )
        if impl != "default":
            return fused_attention(q.reshape(b, h * w, nh, dkh), k, v, impl).transpose(0, 2, 1, 3)
        rel = None
        if self.relative:
            lh, lw = relative_logits_2d(q, self.key_rel_h[...], self.key_rel_w[...])
            rel = (lh.reshape(b, nh, h * w, h), lw.reshape(b, nh, h * w, w))
        q = q.reshape(b, h * w, nh, dkh)
        return attention_2d(q, k, v, (h, w), rel, query_block=self.query_block)
