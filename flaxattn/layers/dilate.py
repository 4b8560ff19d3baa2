"""DilateFormer's multi-scale dilated attention and its transformer blocks.

Jiao et al., "DilateFormer: Multi-Scale Dilated Transformer for Visual Recognition",
IEEE Transactions on Multimedia 2023. https://arxiv.org/abs/2302.01791
Official code: JIAOJIAYUASD/dilateformer, ``models/dilateformer.py``.

- :class:`DilateAttention` (sliding-window dilated attention, SWDA): every query
  attends to the ``k x k`` keys around it, ``dilation`` pixels apart.
- :class:`MultiDilateLocalAttention` (MSDA): a 1x1-conv qkv projection, the heads
  split into one group per dilation rate, one :class:`DilateAttention` per group,
  a linear output projection. Upstream calls it ``MultiDilatelocalAttention``.
- :class:`DilateBlock`: optional depthwise 3x3 conditional position embedding
  (CPE), pre-norm MSDA and :class:`Mlp` with stochastic depth.
- :class:`GlobalAttention`, :class:`GlobalBlock`: plain multi-head self-attention
  blocks for DilateFormer's later stages.

Neighbourhoods are zero padded as ``nn.Unfold`` pads them: a query near the border
still attends to ``k * k`` keys, the out-of-map ones with logit 0 and value 0. The
kernel, :func:`flaxattn.ops.dilated.dilated_attention`, never unfolds (see there);
the CPE's depthwise convolution is :func:`flaxattn.ops.depthwise.depthwise_conv2d`.

All modules are channels-last: images ``(B, H, W, C)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from flaxattn.layers.basic import Conv2d, Dropout, DropPath, Dtype, LayerNorm, Linear, gelu
from flaxattn.ops import pallas_local
from flaxattn.ops.checks import check_input, check_positive, check_positive_number
from flaxattn.ops.depthwise import depthwise_conv2d
from flaxattn.ops.dilated import (
    check_dilation,
    check_heads,
    check_kernel_size,
    dilated_attention,
    dilated_attention_channels_first,
)
from flaxattn.ops.fused import WINDOW_IMPLS, check_attention_impl, resolve_attention_impl
from flaxattn.ops.local import shifted_windows


def _dropping(dropout: nnx.Dropout) -> bool:
    return dropout.rate > 0.0 and not dropout.deterministic


def _matmul(a: jax.Array, b: jax.Array, precision) -> jax.Array:
    """``(M, K) @ (K, N)``. MSDA's projections to and from channels-first maps are
    written with these and hand-written VJPs: on XLA:CPU that train step measured about
    15% faster than autodiff through one transposed-operand ``dot_general`` per
    projection (fewer layout copies in the backward; bench/NOTES.md)."""
    return jax.lax.dot_general(a, b, (((1,), (0,)), ((), ())), precision=precision)


# The biases are added inside the custom VJPs so that their gradients are sums over
# the same array the weight and input gradients read: summed outside, over another
# view of it, XLA materialised that view twice (the kernel's whole gradient was
# concatenated once per layout).


def _transposed(y: jax.Array) -> jax.Array:
    """``y.T`` as a copy of the materialised ``y``. XLA folds the transpose of a dot's
    result into the dot (operands swapped), and on XLA:CPU the folded forms of these
    projections run in a slower matmul kernel than the product plus a copy
    (bench/NOTES.md); the barrier keeps the two apart."""
    return jax.lax.optimization_barrier(y).T


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _rows_to_channels_first(
    x: jax.Array, w: jax.Array, b: jax.Array | None, precision
) -> jax.Array:
    """``(w^T x^T) + b``: rows ``x (N, C)`` times ``w (C, O)`` plus the bias ``b (O,)``
    (or none), returned ``(O, N)``."""
    y = _matmul(w.T, x.T, precision)
    return y if b is None else y + b[:, None]


def _rows_to_channels_first_fwd(x, w, b, precision):
    return _rows_to_channels_first(x, w, b, precision), (x, w, b is None)


def _rows_to_channels_first_bwd(precision, res, dy):
    x, w, no_bias = res
    db = None if no_bias else jnp.sum(dy, axis=1)
    return _transposed(_matmul(w, dy, precision)), _transposed(_matmul(dy, x, precision)), db


_rows_to_channels_first.defvjp(_rows_to_channels_first_fwd, _rows_to_channels_first_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _channels_first_to_rows(
    x: jax.Array, w: jax.Array, b: jax.Array | None, precision
) -> jax.Array:
    """``(w^T x)^T + b``: channels-first ``x (C, N)`` times ``w (C, O)`` plus the bias
    ``b (O,)`` (or none), returned ``(N, O)``."""
    y = _matmul(w.T, x, precision).T
    return y if b is None else y + b


def _channels_first_to_rows_fwd(x, w, b, precision):
    return _channels_first_to_rows(x, w, b, precision), (x, w, b is None)


def _channels_first_to_rows_bwd(precision, res, dy):
    x, w, no_bias = res
    db = None if no_bias else jnp.sum(dy, axis=0)
    return _matmul(w, dy.T, precision), _matmul(x, dy, precision), db


_channels_first_to_rows.defvjp(_channels_first_to_rows_fwd, _channels_first_to_rows_bwd)


def _pointwise_channels_first(conv: Conv2d, x: jax.Array) -> jax.Array:
    """A 1x1, stride-1 :class:`Conv2d` of channels-last ``x (B, H, W, C)``, returned
    channels-first ``(C_out, B, H, W)``."""
    b, h, w, c = x.shape
    bias = conv.bias[...] if conv.bias is not None else None
    x, kernel, bias = conv.promote_dtype((x, conv.kernel[...][0, 0], bias), dtype=conv.dtype)
    y = _rows_to_channels_first(x.reshape(b * h * w, c), kernel, bias, conv.precision)
    return y.reshape(kernel.shape[1], b, h, w)


def _linear_from_channels_first(linear: Linear, x: jax.Array) -> jax.Array:
    """``linear`` applied to the channels of channels-first ``x (C, B, H, W)``, returned
    channels-last ``(B, H, W, C_out)``."""
    c, b, h, w = x.shape
    bias = linear.bias[...] if linear.bias is not None else None
    x, kernel, bias = linear.promote_dtype((x, linear.kernel[...], bias), dtype=linear.dtype)
    y = _channels_first_to_rows(x.reshape(c, b * h * w), kernel, bias, linear.precision)
    return y.reshape(b, h, w, kernel.shape[1])


class DepthwiseConv2d(Conv2d):
    """``Conv2d(C, C, k, padding=k // 2, groups=C)`` (parameters and conversion as
    Conv2d's), computed by :func:`flaxattn.ops.depthwise.depthwise_conv2d` (a sum of
    shifted maps with a hand-written backward; XLA:CPU's depthwise convolution is slow).

    Shapes: ``(B, H, W, C) -> (B, H, W, C)``.
    """

    def __init__(self, channels: int, kernel_size: int = 3, **kw):
        super().__init__(
            channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, **kw
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        bias = self.bias[...] if self.bias is not None else None
        x, kernel, bias = self.promote_dtype((x, self.kernel[...], bias), dtype=self.dtype)
        y = depthwise_conv2d(x, kernel[:, :, 0, :])
        return y + bias if bias is not None else y


# --- blocks ----------------------------------------------------------------------------------


class Mlp(nnx.Module):
    """Two-layer perceptron ``fc2(drop(act(fc1(x))))`` with dropout after each layer.

    Args:
      in_features: input width.
      hidden_features: hidden width (default ``in_features``).
      out_features: output width (default ``in_features``).
      act_layer: the activation, a function (torch_ref takes the ``nn.GELU`` class).
      drop: dropout rate.

    Shapes: ``(..., in_features) -> (..., out_features)``.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: Callable[[jax.Array], jax.Array] = gelu,
        drop: float = 0.0,
        *,
        dtype: Dtype = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.fc1 = Linear(in_features, hidden_features, **kw)
        self.act = act_layer
        self.fc2 = Linear(hidden_features, out_features, **kw)
        self.drop = Dropout(drop, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.drop(self.act(self.fc1(x)))
        return self.drop(self.fc2(x))


def _resolve(impl: str, dtype, head_dim: int, drops: Sequence, where: str) -> str:
    return resolve_attention_impl(
        impl,
        dtype=dtype,
        head_dim=head_dim,
        where=where,
        window=True,
        fused_ok="dropout on the attention weights in train mode"
        if any(_dropping(d) for d in drops)
        else None,
    )


class DilateAttention(nnx.Module):
    """Sliding-window dilated attention (SWDA) of one group of heads.

    Each query at ``(i, j)`` attends to the ``kernel_size**2`` keys at
    ``(i + a * dilation, j + b * dilation)``, ``a, b`` in ``-(k//2) .. k//2``;
    keys outside the map are zeros that still take part in the softmax (as
    upstream's ``nn.Unfold`` padding does).

    Args:
      head_dim: channels per head; the inputs' ``d`` must be a multiple of it.
      qk_scale: logit scale (default ``head_dim ** -0.5``; 0 or None mean the default,
        as upstream's ``qk_scale or ...``).
      attn_drop: dropout on the attention weights (while it is active, in training,
        the module differentiates through the windows instead of the kernel's
        hand-written backward: same result, more memory).
      kernel_size: window side ``k`` (odd).
      dilation: spacing between window taps.
      attention_impl: (Flax only) ``'auto'`` (the Pallas kernel on a GPU, else XLA),
        ``'xla'`` (:func:`~flaxattn.ops.dilated.dilated_attention`) or ``'pallas'``
        (:func:`~flaxattn.ops.pallas_local.dilated_attention`); with attention dropout
        active only the XLA windows run (``'pallas'`` then raises).

    Shapes: ``q, k, v: (B, H, W, d) -> (B, H, W, d)``, ``d = heads * head_dim``
    (channels head-major, as upstream). Upstream takes ``(B, d, H, W)`` and returns
    ``(B, H, W, d)``; its twin ``torch_ref.layers.dilate.DilateAttention`` does too.
    """

    attention_impls = WINDOW_IMPLS

    def __init__(
        self,
        head_dim: int,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        kernel_size: int = 3,
        dilation: int = 1,
        *,
        attention_impl: str = "auto",
        dtype: Dtype = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_positive(head_dim=head_dim, dilation=dilation)
        check_attention_impl(attention_impl, WINDOW_IMPLS)
        self.attention_impl = attention_impl
        check_kernel_size(kernel_size)
        self.head_dim = head_dim
        self.scale = qk_scale or head_dim**-0.5
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.dtype = dtype
        self.attn_drop = Dropout(attn_drop, rngs=rngs)

    def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        hd = self.head_dim
        for name, t in (("q", q), ("k", k), ("v", v)):
            if t.ndim != 4 or t.shape != q.shape or t.shape[-1] % hd:
                raise ValueError(
                    f"DilateAttention: expected `q`, `k`, `v` of one shape (B, H, W, d) with d "
                    f"a multiple of head_dim={hd}, got `{name}` of shape {tuple(t.shape)} "
                    f"(`q`: {tuple(q.shape)})"
                )
        if self.dtype is not None:
            q, k, v = (t.astype(self.dtype) for t in (q, k, v))
        impl = _resolve(self.attention_impl, q.dtype, hd, [self.attn_drop], "DilateAttention")
        if not _dropping(self.attn_drop):
            qkv = jnp.stack([q, k, v], axis=3)[:, :, :, :, None, :]
            kernel = pallas_local.dilated_attention if impl == "pallas" else dilated_attention
            return kernel(
                qkv,
                kernel_size=self.kernel_size,
                dilation=(self.dilation,),
                heads=q.shape[-1] // hd,
                scale=self.scale,
            )
        return self._with_dropout(q, k, v)

    def _with_dropout(self, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        # The kernel has no dropout on the attention weights: with it active
        # (training with attn_drop > 0), plain autodiff through the shifted windows.
        b, h, w, d = q.shape
        hd = self.head_dim
        heads = d // hd
        q = (q * jnp.asarray(self.scale, q.dtype)).reshape(b, h, w, heads, hd)
        win = dict(dilation=self.dilation)
        logits = jnp.stack(
            [
                jnp.sum(q * kj.reshape(b, h, w, heads, hd), axis=-1)
                for kj in shifted_windows(k, self.kernel_size, **win)
            ],
            axis=-1,
        )  # (B, H, W, heads, k*k)
        attn = self.attn_drop(jax.nn.softmax(logits, axis=-1))
        out = None
        for j, vj in enumerate(shifted_windows(v, self.kernel_size, **win)):
            term = attn[..., j : j + 1] * vj.reshape(b, h, w, heads, hd)
            out = term if out is None else out + term
        return out.reshape(b, h, w, d)


class MultiDilateLocalAttention(nnx.Module):
    """Multi-scale dilated attention (MSDA).

    A 1x1-conv projection makes q, k and v; their channels are laid out
    ``[3][len(dilation)][dim / len(dilation)]``, so the heads split into one
    contiguous group per dilation rate. Group ``i`` runs :class:`DilateAttention`
    with ``dilation[i]``; the group outputs are concatenated in order and projected.

    Args:
      dim: channels ``C``.
      num_heads: heads, a multiple of ``len(dilation)``; ``dim`` divisible by it.
      qkv_bias: bias in the qkv projection.
      qk_scale: logit scale (default ``(dim // num_heads) ** -0.5``).
      attn_drop: dropout on attention weights.
      proj_drop: dropout after the output projection.
      kernel_size: window side (odd).
      dilation: one dilation rate per head group.
      attention_impl: see :class:`DilateAttention` (Flax only).

    Shapes: ``(B, H, W, C) -> (B, H, W, C)`` (channels-last in upstream too).
    """

    attention_impls = WINDOW_IMPLS

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        kernel_size: int = 3,
        dilation: Sequence[int] = (1, 2, 3),
        *,
        attention_impl: str = "auto",
        dtype: Dtype = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        dilation = check_dilation(dilation)
        check_attention_impl(attention_impl, WINDOW_IMPLS)
        self.attention_impl = attention_impl
        head_dim = check_heads(dim, num_heads, len(dilation))
        check_kernel_size(kernel_size)
        self.dim = dim
        self.num_heads = num_heads
        self.dilation = dilation
        self.kernel_size = kernel_size
        self.num_dilation = len(dilation)
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.qkv = Conv2d(dim, dim * 3, 1, bias=qkv_bias, **kw)
        self.dilate_attention = nnx.List(
            [
                DilateAttention(
                    head_dim=head_dim,
                    qk_scale=qk_scale,
                    attn_drop=attn_drop,
                    kernel_size=kernel_size,
                    dilation=d,
                    attention_impl=attention_impl,
                    **kw,
                )
                for d in dilation
            ]
        )
        self.proj = Linear(dim, dim, **kw)
        self.proj_drop = Dropout(proj_drop, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.dim
        check_input(x, rank=4, last=c, layout=f"(B, H, W, {c})", where="MultiDilateLocalAttention")
        b, h, w, _ = x.shape
        n = self.num_dilation
        groups = self.dilate_attention
        # The dtype the projection computes in (its promote_dtype), before it runs.
        dtype = groups[0].dtype or self.qkv.dtype or jnp.result_type(x, self.qkv.kernel[...])
        drops = [g.attn_drop for g in groups]
        impl = _resolve(
            self.attention_impl, dtype, c // self.num_heads, drops, "MultiDilateLocalAttention"
        )
        if impl == "pallas" or any(_dropping(g.attn_drop) for g in groups):
            qkv = self.qkv(x).reshape(b, h, w, 3, n, c // n)
        if any(_dropping(g.attn_drop) for g in groups):
            out = jnp.concatenate(
                [
                    g(qkv[..., 0, i, :], qkv[..., 1, i, :], qkv[..., 2, i, :])
                    for i, g in enumerate(groups)
                ],
                axis=-1,
            )
        elif impl == "pallas":
            if groups[0].dtype is not None:
                qkv = qkv.astype(groups[0].dtype)
            out = pallas_local.dilated_attention(qkv, **self._kernel_args())
        else:
            # All groups in one kernel call on channels-first maps; the projections
            # are matmuls that read and write that layout (no explicit transpose).
            qkv = _pointwise_channels_first(self.qkv, x).reshape(3, n, c // n, b, h, w)
            if groups[0].dtype is not None:
                qkv = qkv.astype(groups[0].dtype)
            out = dilated_attention_channels_first(qkv, **self._kernel_args())
            return self.proj_drop(_linear_from_channels_first(self.proj, out))
        return self.proj_drop(self.proj(out))

    def _kernel_args(self) -> dict:
        return dict(
            kernel_size=self.kernel_size,
            dilation=self.dilation,
            heads=self.num_heads // self.num_dilation,
            scale=self.dilate_attention[0].scale,
        )


class _Block(nnx.Module):
    """Shared body of :class:`DilateBlock` and :class:`GlobalBlock` (``attn`` set by them)."""

    attn: nnx.Module

    def _init_common(
        self, *, dim, mlp_ratio, drop, drop_path, act_layer, norm_layer, cpe_per_block, attn, kw
    ):
        check_positive(dim=dim)
        check_positive_number(mlp_ratio=mlp_ratio)
        self.dim = dim
        self.cpe_per_block = cpe_per_block
        self.pos_embed = DepthwiseConv2d(dim, 3, **kw) if cpe_per_block else nnx.data(None)
        self.norm1 = norm_layer(dim, **kw)
        self.attn = attn()
        self.drop_path = DropPath(drop_path, rngs=kw["rngs"])
        self.norm2 = norm_layer(dim, **kw)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.dim
        check_input(x, rank=4, last=c, layout=f"(B, H, W, {c})", where=type(self).__name__)
        if self.pos_embed is not None:
            x = x + self.pos_embed(x)
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class DilateBlock(_Block):
    """DilateFormer block: ``x += cpe(x)`` (optional), ``x += msda(norm1(x))``,
    ``x += mlp(norm2(x))``, both branches with stochastic depth.

    Args:
      dim: channels ``C``.
      num_heads: heads of :class:`MultiDilateLocalAttention`.
      mlp_ratio: MLP hidden width is ``int(dim * mlp_ratio)``.
      qkv_bias, qk_scale, attn_drop, kernel_size, dilation: see
        :class:`MultiDilateLocalAttention`.
      drop: dropout in the MLP.
      drop_path: stochastic depth rate of both residual branches (``'dropout'`` RNG stream).
      act_layer: MLP activation (a function).
      norm_layer: ``norm_layer(dim, dtype=..., param_dtype=..., rngs=...)``; the default
        is LayerNorm with PyTorch's eps 1e-5 (the full model passes eps 1e-6).
      cpe_per_block: add a depthwise 3x3 conv of the input first (``pos_embed``).

    Shapes: ``(B, H, W, C) -> (B, H, W, C)``; upstream is ``(B, C, H, W)``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        act_layer: Callable[[jax.Array], jax.Array] = gelu,
        norm_layer: Callable[..., nnx.Module] = LayerNorm,
        kernel_size: int = 3,
        dilation: Sequence[int] = (1, 2, 3),
        cpe_per_block: bool = False,
        *,
        dtype: Dtype = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.num_heads = num_heads
        self.kernel_size = kernel_size
        self.dilation = check_dilation(dilation)

        def attn():
            return MultiDilateLocalAttention(
                dim,
                num_heads=num_heads,
                qkv_bias=qkv_bias,
                qk_scale=qk_scale,
                attn_drop=attn_drop,
                kernel_size=kernel_size,
                dilation=dilation,
                **kw,
            )

        self._init_common(
            dim=dim,
            mlp_ratio=mlp_ratio,
            drop=drop,
            drop_path=drop_path,
            act_layer=act_layer,
            norm_layer=norm_layer,
            cpe_per_block=cpe_per_block,
            attn=attn,
            kw=kw,
        )


class GlobalAttention(nnx.Module):
    """Multi-head self-attention over all ``H * W`` positions (DilateFormer's later stages).

    Args:
      dim: channels ``C``, divisible by ``num_heads``.
      num_heads: heads.
      qkv_bias: bias in the qkv Linear.
      qk_scale: logit scale (default ``head_dim ** -0.5``).
      attn_drop, proj_drop: dropout rates.

    Shapes: ``(B, H, W, C) -> (B, H, W, C)`` (channels-last in upstream too).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        *,
        dtype: Dtype = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        head_dim = check_heads(dim, num_heads)
        self.dim = dim
        self.num_heads = num_heads
        self.scale = qk_scale or head_dim**-0.5
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias, **kw)
        self.attn_drop = Dropout(attn_drop, rngs=rngs)
        self.proj = Linear(dim, dim, **kw)
        self.proj_drop = Dropout(proj_drop, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.dim
        check_input(x, rank=4, last=c, layout=f"(B, H, W, {c})", where="GlobalAttention")
        b, h, w, _ = x.shape
        nh = self.num_heads
        qkv = self.qkv(x).reshape(b, h * w, 3, nh, c // nh)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        logits = jnp.einsum("bnhd,bmhd->bhnm", q, k) * jnp.asarray(self.scale, q.dtype)
        attn = self.attn_drop(jax.nn.softmax(logits, axis=-1))
        out = jnp.einsum("bhnm,bmhd->bnhd", attn, v).reshape(b, h, w, c)
        return self.proj_drop(self.proj(out))


class GlobalBlock(_Block):
    """:class:`DilateBlock` with :class:`GlobalAttention` in place of MSDA.

    Args: as :class:`DilateBlock`, without ``kernel_size`` and ``dilation``.

    Shapes: ``(B, H, W, C) -> (B, H, W, C)``; upstream is ``(B, C, H, W)``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        act_layer: Callable[[jax.Array], jax.Array] = gelu,
        norm_layer: Callable[..., nnx.Module] = LayerNorm,
        cpe_per_block: bool = False,
        *,
        dtype: Dtype = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.num_heads = num_heads

        def attn():
            return GlobalAttention(
                dim,
                num_heads=num_heads,
                qkv_bias=qkv_bias,
                qk_scale=qk_scale,
                attn_drop=attn_drop,
                **kw,
            )

        self._init_common(
            dim=dim,
            mlp_ratio=mlp_ratio,
            drop=drop,
            drop_path=drop_path,
            act_layer=act_layer,
            norm_layer=norm_layer,
            cpe_per_block=cpe_per_block,
            attn=attn,
            kw=kw,
        )
