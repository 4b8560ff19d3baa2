"""Vision Transformer.

Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image
Recognition at Scale", ICLR 2021. https://arxiv.org/abs/2010.11929

Twin of ``torch_ref.layers.vit``, which follows lucidrains/vit-pytorch
``vit_pytorch/vit.py`` as released in 0.30-0.40: ``PreNorm``
wrappers, exact GELU, patches flattened ``(p1 p2 c)``, a cls token or mean
pooling, ``mlp_head = Sequential(LayerNorm, Linear)``. Its state_dict keys are
our canonical layout. The keyword arguments past 0.40's reproduce the other
vit-pytorch releases (see :class:`ViT`), and ``flaxattn.convert`` loads every
release's keys from ``0.3.0`` on.

Channels-last: images ``(B, H, W, C)``, tokens ``(B, N, dim)``.

Speed: q/k/v come out of one ``(B*N, dim) x (dim, 3*h*d)`` matmul and feed the
attention dots as per-head views, the logit scale is folded into the query weights,
and the dense layers, LayerNorm and GELU have hand-written backward passes
(:mod:`flaxattn.ops.dense`, :mod:`flaxattn.ops.norm`). ``dtype=jnp.bfloat16``
computes in bfloat16 (softmax and LayerNorm statistics in float32) with float32
parameters. ``Transformer(scan=True)`` runs the blocks under one ``lax.scan``, so
compile time stays flat with depth; parameters keep the per-block layout, so
checkpoints do not depend on it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn.dtypes import promote_dtype

from flaxattn.layers.basic import Dropout, Dtype, LayerNorm, Linear, gelu
from flaxattn.ops.checks import (
    check_choice,
    check_input,
    check_int,
    check_pair,
    check_positive,
    check_rate,
)
from flaxattn.ops.dense import dense
from flaxattn.ops.fused import check_attention_impl, fused_attention, resolve_attention_impl


def pair(t: int | Sequence[int]) -> tuple[int, int]:
    return tuple(t) if isinstance(t, (tuple, list)) else (t, t)


def _check_dropout(**rates: float) -> None:
    check_rate(**rates)


def _dropout(rate: float, rngs: nnx.Rngs) -> Dropout:
    # No RNG stream for a disabled dropout: less state to carry through jit and scan.
    return Dropout(rate, rngs=rngs if rate > 0 else None)


class PreNorm(nnx.Module):
    """``fn(LayerNorm(x))``.

    Args:
      dim: feature size of ``x``.
      fn: the module (or function) applied to the normalised input.

    Shapes: ``(B, N, dim) -> fn's output``.
    """

    def __init__(
        self,
        dim: int,
        fn: Callable,
        *,
        dtype: Dtype = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_positive(dim=dim)
        self.norm = LayerNorm(dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.fn = fn

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fn(self.norm(x))


class FeedForward(nnx.Module):
    """``Linear -> GELU (exact) -> Dropout -> Linear -> Dropout``.

    Args:
      dim: input and output features.
      hidden_dim: hidden features.
      dropout: dropout rate (train mode only).

    Shapes: ``(B, N, dim) -> (B, N, dim)``.
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        dropout: float = 0.0,
        *,
        dtype: Dtype = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_positive(dim=dim, hidden_dim=hidden_dim)
        _check_dropout(dropout=dropout)
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.net = nnx.Sequential(
            Linear(dim, hidden_dim, **kw),
            gelu,
            _dropout(dropout, rngs),
            Linear(hidden_dim, dim, **kw),
            _dropout(dropout, rngs),
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.net(x)


class Attention(nnx.Module):
    """Multi-head self-attention without qkv bias.

    Args:
      dim: token features.
      heads: attention heads.
      dim_head: features per head.
      dropout: on the attention weights and after the output projection.
      scale: logit scale, default ``dim_head ** -0.5`` (vit-pytorch before 0.6.7
        used ``dim ** -0.5``).
      attention_impl: ``'auto'`` (einsums; cuDNN flash attention on an NVIDIA GPU for
        bfloat16/float16), ``'xla'`` or ``'cudnn'`` (``jax.nn.dot_product_attention``);
        see :mod:`flaxattn.ops.fused`. Fused calls cannot drop attention weights:
        with ``dropout > 0`` in train mode ``'auto'`` keeps the einsums and the
        others raise. Parameters are the same whatever the choice.

    ``to_out`` (``Linear`` then ``Dropout``) is ``None`` when ``heads == 1 and
    dim_head == dim``: the attention output is returned as it is.

    Shapes: ``(B, N, dim) -> (B, N, dim)``.
    """

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        dim_head: int = 64,
        dropout: float = 0.0,
        scale: float | None = None,
        *,
        attention_impl: str = "auto",
        dtype: Dtype = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_positive(dim=dim, heads=heads, dim_head=dim_head)
        _check_dropout(dropout=dropout)
        check_attention_impl(attention_impl)
        self.attention_impl = attention_impl
        inner_dim = dim_head * heads
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.dim, self.heads, self.dim_head = dim, heads, dim_head
        self.scale = dim_head**-0.5 if scale is None else scale
        self.dtype = dtype
        self.dropout = _dropout(dropout, rngs)
        self.to_qkv = Linear(dim, inner_dim * 3, bias=False, **kw)
        if heads == 1 and dim_head == dim:
            self.to_out = nnx.data(None)
        else:
            self.to_out = nnx.Sequential(Linear(inner_dim, dim, **kw), _dropout(dropout, rngs))

    def __call__(self, x: jax.Array) -> jax.Array:
        check_input(x, rank=3, last=self.dim, layout=f"(B, N, {self.dim})", where="Attention")
        h, d = self.heads, self.dim_head
        w = self.to_qkv.kernel[...]
        x, w = promote_dtype((x, w), dtype=self.dtype)
        # (dim, 3 * h * d) -> (dim, 3, h, d) with the scale folded into the
        # query columns: a dim x h*d multiply instead of one over the N x N logits.
        w = (
            w.reshape(self.dim, 3, h, d)
            * jnp.asarray([self.scale, 1.0, 1.0], w.dtype)[:, None, None]
        )
        drops = self.dropout.rate > 0 and not self.dropout.deterministic
        impl = resolve_attention_impl(
            self.attention_impl,
            dtype=x.dtype,
            head_dim=d,
            where="Attention",
            fused_ok="dropout on the attention weights in train mode" if drops else None,
        )
        # One (B*N, dim) x (dim, 3*h*d) matmul; the per-head views feed the attention
        # dots as they are. Laying q/k/v out heads-major inside the projection einsum made
        # XLA:CPU compute the transposed product and copy every slice.
        b, n = x.shape[:2]
        qkv = dense(x, w.reshape(self.dim, 3 * h * d)).reshape(b, n, 3, h, d)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        if impl == "default":
            logits = jnp.einsum("bihd,bjhd->bhij", q, k)
            # Softmax in at least float32, whatever the compute dtype.
            attn = jax.nn.softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), -1)
            attn = self.dropout(attn.astype(v.dtype))
            out = jnp.einsum("bhij,bjhd->bihd", attn, v)
        else:  # fused: (B, N, heads, d) in and out
            out = fused_attention(q, k, v, impl)
        if self.to_out is None:  # heads == 1 and dim_head == dim
            return out[:, :, 0]
        return self.to_out(out.reshape(b, n, h * d))


class Transformer(nnx.Module):
    """``depth`` pre-norm blocks ``x + Attention(LN(x))``, ``x + FeedForward(LN(x))``.

    Args:
      dim, depth, heads, dim_head, mlp_dim, dropout, scale: as in :class:`Attention`
        and :class:`FeedForward`.
      final_norm: add a LayerNorm over every output token (``norm``), as
        vit-pytorch 1.4 and later do.
      scan: run the blocks under ``jax.lax.scan`` (Flax only): one compiled block
        whatever the depth. Parameters stay per block (``layers[i]``), stacked on
        the fly, so the two settings load the same checkpoints.
      attention_impl: every block's :class:`Attention` implementation.

    Shapes: ``(B, N, dim) -> (B, N, dim)``.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        dim_head: int,
        mlp_dim: int,
        dropout: float = 0.0,
        final_norm: bool = False,
        scale: float | None = None,
        *,
        scan: bool = False,
        attention_impl: str = "auto",
        dtype: Dtype = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_positive(depth=depth)
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        impl = dict(attention_impl=attention_impl)
        self.scan = scan
        self.layers = nnx.List(
            [
                nnx.List(
                    [
                        PreNorm(
                            dim, Attention(dim, heads, dim_head, dropout, scale, **impl, **kw), **kw
                        ),
                        PreNorm(dim, FeedForward(dim, mlp_dim, dropout, **kw), **kw),
                    ]
                )
                for _ in range(depth)
            ]
        )
        self.norm = LayerNorm(dim, **kw) if final_norm else nnx.data(None)

    @staticmethod
    def _block(layer: nnx.List, x: jax.Array) -> jax.Array:
        attn, ff = layer
        x = attn(x) + x
        return ff(x) + x

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.scan and len(self.layers) > 1:
            x = _scan_layers(self.layers, self._block, x)
        else:
            for layer in self.layers:
                x = self._block(layer, x)
        return self.norm(x) if self.norm is not None else x


def _scan_layers(layers: Sequence[nnx.Module], block: Callable, x: jax.Array) -> jax.Array:
    """``for layer in layers: x = block(layer, x)`` as one ``lax.scan``.

    The layers must be alike (same structure and mode). Their states are
    stacked on the fly; when a dropout draws masks, the advanced RNG counters
    are written back, so the module tree keeps one entry per layer and behaves
    as the unrolled loop does (which also mutates nothing in eval mode).
    """
    graphdef, _ = nnx.split(layers[0])
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *[nnx.state(layer) for layer in layers])
    draws = any(
        isinstance(m, nnx.Dropout) and m.rate > 0 and not m.deterministic
        for _, m in nnx.iter_modules(layers[0])
    )

    def body(carry, state):
        layer = nnx.merge(graphdef, state)
        carry = block(layer, carry)
        return carry, nnx.state(layer, nnx.Not(nnx.Param)) if draws else None

    x, new = jax.lax.scan(body, x, stacked)
    if draws:
        for i, layer in enumerate(layers):
            nnx.update(layer, jax.tree.map(lambda a, i=i: a[i], new))
    return x


class _Patchify(nnx.Module):
    """``'b (h p1) (w p2) c -> b (h w) (p1 p2 c)'``: channels-last, same feature
    order as vit-pytorch's ``'b c (h p1) (w p2) -> b (h w) (p1 p2 c)'``."""

    def __init__(self, patch_size: tuple[int, int]):
        self.patch_size = patch_size

    def __call__(self, img: jax.Array) -> jax.Array:
        b, hh, ww, c = img.shape
        ph, pw = self.patch_size
        x = img.reshape(b, hh // ph, ph, ww // pw, pw, c).transpose(0, 1, 3, 2, 4, 5)
        return x.reshape(b, (hh // ph) * (ww // pw), ph * pw * c)


class ViT(nnx.Module):
    """Vision Transformer classifier.

    Args:
      image_size: ``H`` or ``(H, W)``.
      patch_size: ``P`` or ``(PH, PW)``; must divide the image size.
      num_classes: logits; ``0``: no head, the output is the Transformer's tokens.
      dim, depth, heads, dim_head, mlp_dim: Transformer width, blocks, heads,
        width per head, hidden width of the feed-forward.
      pool: ``'cls'`` (the cls token's output) or ``'mean'`` (mean over tokens).
      channels: image channels.
      dropout: in attention and feed-forward; emb_dropout: on the embedded tokens.
      patch_norm: LayerNorms before and after the patch projection (dual
        PatchNorm, vit-pytorch 1.0 and later).
      final_norm: ``'pooled'``: the head is ``Sequential(LayerNorm, Linear)`` on
        the pooled token (vit-pytorch before 1.4); ``'tokens'``:
        ``transformer.norm`` normalises every token and the head is a Linear
        (vit-pytorch 1.4 and later). Equal functions for ``pool='cls'``.
      mean_with_cls: with ``pool='mean'``, keep a cls token in the sequence and
        average over it too (vit-pytorch before 1.16); ``False``: no cls token.
      scale: attention logit scale, default ``dim_head ** -0.5``.
      scan: run the Transformer blocks under ``lax.scan`` (Flax only; see
        :class:`Transformer`).
      attention_impl: see :class:`Attention` (Flax only).
      dtype: compute dtype (``jnp.bfloat16`` for mixed precision); parameters
        stay in ``param_dtype``.

    vit-pytorch releases as configurations (all other arguments as upstream's)::

        0.3.0-0.6.6   scale=dim ** -0.5 (upstream's bug; 0.3.0 has dim_head = dim // heads)
        0.6.7-0.40.x  defaults
        1.0.0-1.3.x   patch_norm=True
        1.4.0-1.15.x  patch_norm=True, final_norm='tokens'
        1.16.0-       patch_norm=True, final_norm='tokens', mean_with_cls=False

    Shapes: ``(B, H, W, channels) -> (B, num_classes)``, or ``(B, N, dim)`` tokens
    when ``num_classes == 0`` (``N`` = patches, plus one with a cls token).

    Example:

    >>> vit = ViT(image_size=(32, 24), patch_size=8, num_classes=10, dim=64, depth=2,
    ...           heads=4, dim_head=16, mlp_dim=128, rngs=nnx.Rngs(0))
    >>> vit(jnp.ones((2, 32, 24, 3))).shape
    (2, 10)
    >>> vit.pos_embedding.shape  # 4 x 3 patches and the cls token
    (1, 13, 64)

    Deviation from upstream: an image of another size or channel count is a
    ``ValueError``; upstream slices ``pos_embedding`` to the token count, so it
    silently runs smaller images, and any image with the same number of patches.
    """

    def __init__(
        self,
        *,
        image_size: int | tuple[int, int],
        patch_size: int | tuple[int, int],
        num_classes: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_dim: int,
        pool: str = "cls",
        channels: int = 3,
        dim_head: int = 64,
        dropout: float = 0.0,
        emb_dropout: float = 0.0,
        patch_norm: bool = False,
        final_norm: str = "pooled",
        mean_with_cls: bool = True,
        scale: float | None = None,
        scan: bool = False,
        attention_impl: str = "auto",
        dtype: Dtype = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        (ih, iw), (ph, pw) = (
            check_pair("image_size", image_size),
            check_pair("patch_size", patch_size),
        )
        check_positive(image_size=min(ih, iw), patch_size=min(ph, pw), dim=dim, channels=channels)
        if ih % ph or iw % pw:
            raise ValueError(
                f"`image_size` (={(ih, iw)}) must be divisible by `patch_size` (={(ph, pw)})"
            )
        check_choice("pool", pool, ("cls", "mean"))
        check_choice("final_norm", final_norm, ("pooled", "tokens"))
        check_int(num_classes=num_classes)
        if num_classes < 0:
            raise ValueError(f"`num_classes` (={num_classes}) must be >= 0")
        _check_dropout(emb_dropout=emb_dropout)
        num_patches = (ih // ph) * (iw // pw)
        patch_dim = channels * ph * pw
        num_cls = 1 if pool == "cls" or mean_with_cls else 0
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.image_size, self.patch_size, self.channels = (ih, iw), (ph, pw), channels
        self.dtype = dtype

        layers = [_Patchify((ph, pw))]
        if patch_norm:
            layers += [
                LayerNorm(patch_dim, **kw),
                Linear(patch_dim, dim, **kw),
                LayerNorm(dim, **kw),
            ]
        else:
            layers += [Linear(patch_dim, dim, **kw)]
        self.to_patch_embedding = nnx.Sequential(*layers)
        key = rngs.params()
        self.pos_embedding = nnx.Param(
            jax.random.normal(key, (1, num_patches + num_cls, dim), param_dtype)
        )
        if num_cls:
            self.cls_token = nnx.Param(jax.random.normal(rngs.params(), (1, 1, dim), param_dtype))
        else:
            self.cls_token = nnx.data(None)
        self.dropout = _dropout(emb_dropout, rngs)
        self.transformer = Transformer(
            dim,
            depth,
            heads,
            dim_head,
            mlp_dim,
            dropout,
            final_norm == "tokens",
            scale,
            scan=scan,
            attention_impl=attention_impl,
            **kw,
        )
        self.pool = pool
        if num_classes == 0:
            self.mlp_head = nnx.data(None)
        elif final_norm == "tokens":
            self.mlp_head = Linear(dim, num_classes, **kw)
        else:
            self.mlp_head = nnx.Sequential(LayerNorm(dim, **kw), Linear(dim, num_classes, **kw))

    def __call__(self, img: jax.Array) -> jax.Array:
        ih, iw = self.image_size
        if img.ndim != 4 or tuple(img.shape[1:]) != (ih, iw, self.channels):
            raise ValueError(
                f"ViT: expected `img` of shape (B, {ih}, {iw}, {self.channels}), "
                f"got {tuple(img.shape)}"
            )
        x = self.to_patch_embedding(img)
        pos = self.pos_embedding[...]
        if self.cls_token is not None:
            cls = jnp.broadcast_to(self.cls_token[...], (x.shape[0], 1, x.shape[-1]))
            x, cls, pos = promote_dtype((x, cls, pos), dtype=self.dtype)
            x = jnp.concatenate([cls, x], axis=1)
        else:
            x, pos = promote_dtype((x, pos), dtype=self.dtype)
        x = self.dropout(x + pos)
        x = self.transformer(x)
        if self.mlp_head is None:
            return x
        x = x.mean(axis=1) if self.pool == "mean" else x[:, 0]
        return self.mlp_head(x)
