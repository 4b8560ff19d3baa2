"""DilateFormer: a pyramid vision transformer with multi-scale dilated attention.

Jiao et al., "DilateFormer: Multi-Scale Dilated Transformer for Visual Recognition",
IEEE Transactions on Multimedia 2023. https://arxiv.org/abs/2302.01791
Official code: JIAOJIAYUASD/dilateformer, ``models/dilateformer.py`` (class
``Dilateformer``). Attribute names follow it (``patch_embed.proj.0``,
``stages.1.blocks.0.attn.qkv``, ``stages.0.downsample.proj.1``, ``norm``, ``head``),
so the official checkpoints load with ``flaxattn.convert.load_state_dict``.

The network: a convolutional stem (:class:`PatchEmbed`, stride 4), four stages
of blocks, :class:`~flaxattn.layers.dilate.DilateBlock` (multi-scale dilated
attention) in the stages named by ``dilate_attention`` and
:class:`~flaxattn.layers.dilate.GlobalBlock` (full self-attention) in the others,
a :class:`PatchMerging` (stride 2, width x2) after every stage but the last, then
LayerNorm, global average pooling and a linear head.

Deviations from upstream (the torch_ref twin makes the same ones):

- Any input size the strides allow is accepted; upstream asserts ``img_size``,
  which here only sets the size checked at construction. Sizes round as the
  convolutions do (see :func:`feature_sizes`); a size that would leave a stage
  with an empty map raises a ``ValueError`` naming the size and the stage.
- ``merging_way='avgpool3_2'``/``'avgpool2_2'`` crash upstream (``nn.AvgPool2d``
  gets the channel counts as pooling arguments, and the norm expects twice the
  input's channels). Here: average pooling, a 1x1 conv to ``out_channels``, the norm
  (``proj.0``, ``proj.1``, ``proj.2``).
- Upstream spells one argument ``cpe_per_satge``; here it is ``cpe_per_stage``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flaxattn.layers.basic import BatchNorm2d, Conv2d, Dtype, LayerNorm, Linear, gelu
from flaxattn.layers.dilate import DepthwiseConv2d, DilateBlock, GlobalBlock
from flaxattn.ops.checks import (
    check_choice,
    check_input,
    check_int,
    check_pair,
    check_positive,
    check_rate,
)
from flaxattn.ops.dilated import check_dilation, check_heads, check_kernel_size
from flaxattn.ops.init import constant_init, trunc_normal_init

PATCH_WAYS = ("overlaping", "nonoverlaping", "pointconv")
MERGING_WAYS = ("conv3_2", "conv2_2", "avgpool3_2", "avgpool2_2")


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = check_pair(name, value)
    check_positive(**{f"{name}[0]": pair[0], f"{name}[1]": pair[1]})
    return pair


def _half_ceil(n: int) -> int:
    return (n + 1) // 2  # a 3x3 conv or pool with stride 2 and padding 1


def feature_sizes(
    size: tuple[int, int],
    *,
    patch_size: int | Sequence[int] = 4,
    patch_way: str = "overlaping",
    merging_way: str = "conv3_2",
    downsamples: Sequence[bool] = (True, True, True, False),
    what: str | None = None,
) -> list[tuple[int, int]]:
    """The ``(H, W)`` of the map each stage works on, for an image of ``size``.

    The stride-2 3x3 ways (the stems, ``'conv3_2'``, ``'avgpool3_2'``) round up, the
    non-overlapping ways (``'nonoverlaping'`` stem, ``'conv2_2'``, ``'avgpool2_2'``)
    round down, as their convolutions and pools do. Raises ``ValueError``, naming the
    size (as ``what`` when given) and the stage, when a map would come out empty.
    """
    h, w = size
    label = what or f"an input of size {h}x{w}"
    if h < 1 or w < 1:
        raise ValueError(f"{label} is empty")
    if patch_way == "nonoverlaping":
        ph, pw = _pair(patch_size, "patch_size")
        if h < ph or w < pw:
            raise ValueError(
                f"{label} is smaller than one {ph}x{pw} patch (patch_way 'nonoverlaping')"
            )
        h, w = h // ph, w // pw
    else:  # two stride-2 3x3 convs
        h, w = _half_ceil(_half_ceil(h)), _half_ceil(_half_ceil(w))
    sizes = [(h, w)]
    for i, down in enumerate(downsamples[:-1]):
        if down:
            if merging_way.endswith("2_2"):
                if h < 2 or w < 2:
                    raise ValueError(
                        f"{label} gives stage {i} a {h}x{w} map, which merging_way "
                        f"{merging_way!r} (2x2, stride 2) cannot merge: stage {i + 1}'s map "
                        "would be empty"
                    )
                h, w = h // 2, w // 2
            else:
                h, w = _half_ceil(h), _half_ceil(w)
        sizes.append((h, w))
    return sizes


class PatchEmbed(nnx.Module):
    """DilateFormer's stem: image to a ``(H/4, W/4, embed_dim)`` map (``/patch_size`` for
    ``'nonoverlaping'``).

    Args:
      img_size: nominal input size (checked at construction; any size the stem
        allows is accepted at call time).
      in_chans: image channels.
      hidden_dim: width of the first conv of the overlapping/pointconv stems.
      patch_size: patch side of the ``'nonoverlaping'`` stem.
      embed_dim: output channels.
      patch_way: ``'overlaping'`` (3x3 convs, strides 1-2-1-2, BatchNorm and GELU
        between them; the official models), ``'nonoverlaping'`` (one patchify
        conv), ``'pointconv'`` (3x3 stride 2 and 1x1 convs alternating).

    Shapes: ``(B, H, W, in_chans) -> (B, H', W', embed_dim)``.
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        in_chans: int = 3,
        hidden_dim: int = 16,
        patch_size: int | Sequence[int] = 4,
        embed_dim: int = 96,
        patch_way: str = "overlaping",
        *,
        dtype: Dtype = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_choice("patch_way", patch_way, PATCH_WAYS)
        check_positive(in_chans=in_chans, hidden_dim=hidden_dim, embed_dim=embed_dim)
        self.img_size = _pair(img_size, "img_size")
        self.patch_size = _pair(patch_size, "patch_size")
        self.in_chans = in_chans
        self.patch_way = patch_way
        what = f"`img_size` (={img_size!r})"
        feature_sizes(self.img_size, patch_size=patch_size, patch_way=patch_way, what=what)
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        c1, c2, c4 = hidden_dim, hidden_dim * 2, hidden_dim * 4
        if patch_way == "nonoverlaping":
            p = self.patch_size
            self.proj = Conv2d(in_chans, embed_dim, p, stride=p, **kw)
            return
        if patch_way == "overlaping":
            specs = [(3, 1, 1), (3, 2, 1), (3, 1, 1), (3, 2, 1)]
        else:
            specs = [(3, 2, 1), (1, 1, 0), (3, 2, 1), (1, 1, 0)]
        widths = [in_chans, c1, c2, c4, embed_dim]
        layers = []
        for i, (k, s, p) in enumerate(specs):
            layers.append(
                Conv2d(widths[i], widths[i + 1], k, stride=s, padding=p, bias=False, **kw)
            )
            if i < 3:
                layers += [BatchNorm2d(widths[i + 1], **kw), gelu]
        self.proj = nnx.Sequential(*layers)

    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.in_chans
        check_input(x, rank=4, last=c, layout=f"(B, H, W, {c})", where="PatchEmbed")
        feature_sizes(x.shape[1:3], patch_size=self.patch_size, patch_way=self.patch_way)
        return self.proj(x)


def _avg_pool(kernel: int, stride: int, padding: int) -> Callable[[jax.Array], jax.Array]:
    # nn.AvgPool2d's default count_include_pad=True: border windows divide by k*k.
    pad = ((padding, padding), (padding, padding))
    return functools.partial(
        nnx.avg_pool, window_shape=(kernel, kernel), strides=(stride, stride), padding=pad
    )


class PatchMerging(nnx.Module):
    """Stride-2 downsampling between stages, optionally with a depthwise 3x3 CPE.

    Args:
      in_channels, out_channels: widths.
      merging_way: ``'conv3_2'`` (3x3 conv, stride 2, padding 1; the official
        models), ``'conv2_2'`` (2x2 conv, stride 2), ``'avgpool3_2'``/``'avgpool2_2'``
        (average pooling, then a 1x1 conv to ``out_channels``: upstream crashes on these).
      cpe_per_stage: add a depthwise 3x3 conv of the result (``pos_embed``).
      norm_layer: after the conv; ``norm_layer(out_channels, dtype=..., param_dtype=...,
        rngs=...)``, BatchNorm by default.

    Shapes: ``(B, H, W, in_channels) -> (B, H', W', out_channels)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        merging_way: str = "conv3_2",
        cpe_per_stage: bool = False,
        norm_layer: Callable[..., nnx.Module] = BatchNorm2d,
        *,
        dtype: Dtype = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_choice("merging_way", merging_way, MERGING_WAYS)
        check_positive(in_channels=in_channels, out_channels=out_channels)
        self.in_channels = in_channels
        self.merging_way = merging_way
        self.cpe_per_stage = cpe_per_stage
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        k = 3 if merging_way.endswith("3_2") else 2
        pad = 1 if k == 3 else 0
        if merging_way.startswith("conv"):
            layers = [Conv2d(in_channels, out_channels, k, stride=2, padding=pad, **kw)]
        else:
            layers = [_avg_pool(k, 2, pad), Conv2d(in_channels, out_channels, 1, **kw)]
        self.proj = nnx.Sequential(*layers, norm_layer(out_channels, **kw))
        self.pos_embed = DepthwiseConv2d(out_channels, 3, **kw) if cpe_per_stage else nnx.data(None)

    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.in_channels
        check_input(x, rank=4, last=c, layout=f"(B, H, W, {c})", where="PatchMerging")
        if self.merging_way.endswith("2_2") and min(x.shape[1:3]) < 2:
            raise ValueError(
                f"PatchMerging ({self.merging_way!r}) needs maps of at least 2x2, got `x` of "
                f"shape {tuple(x.shape)}"
            )
        x = self.proj(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed(x)
        return x


def check_stages(
    embed_dim: int,
    num_heads: Sequence[int],
    kernel_size: int,
    dilation: Sequence[int],
    dilate_attention: Sequence[bool],
) -> None:
    """Every stage's width splits into its heads (and dilation groups), before anything is built."""
    dilation = check_dilation(dilation)
    if any(dilate_attention):
        check_kernel_size(kernel_size)
    for i, (heads, dilated) in enumerate(zip(num_heads, dilate_attention, strict=True)):
        check_heads(int(embed_dim * 2**i), heads, len(dilation) if dilated else None)


def _drop_rates(drop_path: float | Sequence[float], depth: int) -> list[float]:
    if isinstance(drop_path, (int, float)):
        return [float(drop_path)] * depth
    rates = [float(r) for r in drop_path]
    if len(rates) != depth:
        raise ValueError(f"`drop_path` (={rates}) must be a float or a list of `depth` (={depth})")
    return rates


class _Stage(nnx.Module):
    def __call__(self, x: jax.Array) -> jax.Array:
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x) if self.downsample is not None else x

    def _downsample(self, dim, downsample, merging_way, cpe_per_stage, kw):
        self.downsample = (
            PatchMerging(
                in_channels=dim,
                out_channels=int(dim * 2),
                merging_way=merging_way,
                cpe_per_stage=cpe_per_stage,
                **kw,
            )
            if downsample
            else nnx.data(None)
        )


class DilateStage(_Stage):
    """``depth`` :class:`~flaxattn.layers.dilate.DilateBlock` s, then an optional
    :class:`PatchMerging` to ``2 * dim`` channels. Upstream: ``Dilatestage``.

    ``drop_path`` is a rate or one rate per block; the other arguments go to the
    blocks and the merging (see there). Shapes: ``(B, H, W, dim) -> (B, H', W', dim')``.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        kernel_size: int,
        dilation: Sequence[int],
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float | Sequence[float] = 0.0,
        act_layer: Callable[[jax.Array], jax.Array] = gelu,
        norm_layer: Callable[..., nnx.Module] = LayerNorm,
        cpe_per_stage: bool = False,
        cpe_per_block: bool = False,
        downsample: bool = True,
        merging_way: str = "conv3_2",
        *,
        dtype: Dtype = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_positive(depth=depth)
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.blocks = nnx.List(
            [
                DilateBlock(
                    dim=dim,
                    num_heads=num_heads,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    qk_scale=qk_scale,
                    drop=drop,
                    attn_drop=attn_drop,
                    drop_path=rate,
                    act_layer=act_layer,
                    norm_layer=norm_layer,
                    kernel_size=kernel_size,
                    dilation=dilation,
                    cpe_per_block=cpe_per_block,
                    **kw,
                )
                for rate in _drop_rates(drop_path, depth)
            ]
        )
        self._downsample(dim, downsample, merging_way, cpe_per_stage, kw)


class GlobalStage(_Stage):
    """``depth`` :class:`~flaxattn.layers.dilate.GlobalBlock` s, then an optional
    :class:`PatchMerging`. Upstream: ``Globalstage``. Arguments as :class:`DilateStage`."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float | Sequence[float] = 0.0,
        act_layer: Callable[[jax.Array], jax.Array] = gelu,
        norm_layer: Callable[..., nnx.Module] = LayerNorm,
        cpe_per_stage: bool = False,
        cpe_per_block: bool = False,
        downsample: bool = True,
        merging_way: str = "conv3_2",
        *,
        dtype: Dtype = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_positive(depth=depth)
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.blocks = nnx.List(
            [
                GlobalBlock(
                    dim=dim,
                    num_heads=num_heads,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    qk_scale=qk_scale,
                    drop=drop,
                    attn_drop=attn_drop,
                    drop_path=rate,
                    act_layer=act_layer,
                    norm_layer=norm_layer,
                    cpe_per_block=cpe_per_block,
                    **kw,
                )
                for rate in _drop_rates(drop_path, depth)
            ]
        )
        self._downsample(dim, downsample, merging_way, cpe_per_stage, kw)


def _init_weights(module: nnx.Module, rngs: nnx.Rngs, std: float = 0.02) -> None:
    """Upstream's ``_init_weights``: Linear weights ~ N(0, std) cut at +-2 (absolute,
    as ``timm.trunc_normal_``), Linear biases 0; LayerNorms already start at 1 and 0."""
    weight_init, zero = trunc_normal_init(std), constant_init(0.0)
    for _, m in nnx.iter_modules(module):
        if isinstance(m, nnx.Linear):
            m.kernel[...] = weight_init(rngs.params(), m.kernel.shape, m.kernel.dtype)
            if m.bias is not None:
                m.bias[...] = zero(None, m.bias.shape, m.bias.dtype)


_LN_EPS6 = functools.partial(LayerNorm, eps=1e-6)


class DilateFormer(nnx.Module):
    """DilateFormer classifier (upstream ``Dilateformer``).

    Args:
      img_size: nominal input size, an int or ``(H, W)``.
      patch_size: patch side of the ``'nonoverlaping'`` stem (the other stems stride 4).
      in_chans: image channels.
      num_classes: classes; 0 drops the head (the output is the pooled features).
      embed_dim: width of stage 0; stage ``i`` is ``embed_dim * 2**i`` wide.
      depths: blocks per stage.
      num_heads: heads per stage (multiples of ``len(dilation)`` in dilated stages).
      kernel_size: window side of the dilated attention (odd).
      dilation: dilation rates, one per head group.
      mlp_ratio, qkv_bias, qk_scale, drop, attn_drop: block arguments.
      drop_path: stochastic depth, rising linearly from 0 to this over all blocks.
      norm_layer: the blocks' and the final norm (LayerNorm eps 1e-6).
      merging_way: see :class:`PatchMerging`.
      patch_way: see :class:`PatchEmbed`.
      dilate_attention: per stage, dilated (True) or global (False) attention.
      downsamples: per stage, merge after it; must be True for all but the last
        (the next stage is twice as wide), False for the last.
      cpe_per_stage: depthwise conv after each merging (upstream ``cpe_per_satge``).
      cpe_per_block: depthwise conv at the start of each block.

    Shapes: ``(B, H, W, in_chans) -> (B, num_classes)``.

    Example::

      >>> model = DilateFormer(  # two stages: dilated attention, then global
      ...     img_size=32, embed_dim=12, depths=(1, 1), num_heads=(3, 6),
      ...     dilate_attention=(True, False), downsamples=(True, False),
      ...     num_classes=10, rngs=nnx.Rngs(0),
      ... )
      >>> forward = nnx.jit(lambda model, x: model(x))
      >>> forward(model, jnp.ones((1, 32, 24, 3))).shape  # any size the strides allow
      (1, 10)

    ``dilateformer_tiny(num_classes=..., rngs=...)`` and friends build the presets.
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        patch_size: int | Sequence[int] = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        kernel_size: int = 3,
        dilation: Sequence[int] = (1, 2, 3),
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.1,
        norm_layer: Callable[..., nnx.Module] = _LN_EPS6,
        merging_way: str = "conv3_2",
        patch_way: str = "overlaping",
        dilate_attention: Sequence[bool] = (True, True, False, False),
        downsamples: Sequence[bool] = (True, True, True, False),
        cpe_per_stage: bool = False,
        cpe_per_block: bool = True,
        *,
        dtype: Dtype = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        depths, num_heads = tuple(depths), tuple(num_heads)
        dilate_attention, downsamples = tuple(dilate_attention), tuple(downsamples)
        n = len(depths)
        for name, seq in (
            ("num_heads", num_heads),
            ("dilate_attention", dilate_attention),
            ("downsamples", downsamples),
        ):
            if len(seq) != n:
                raise ValueError(
                    f"`{name}` (={list(seq)}) must have one entry per stage, as "
                    f"`depths` (={list(depths)})"
                )
        if n == 0:
            raise ValueError("`depths` (=[]) must name at least one stage")
        if list(downsamples) != [True] * (n - 1) + [False]:
            raise ValueError(
                f"`downsamples` (={list(downsamples)}) must be True for every stage but the "
                "last (each stage is twice as wide as the one before) and False for the last"
            )
        check_positive(in_chans=in_chans, embed_dim=embed_dim)
        check_int(num_classes=num_classes)
        if num_classes < 0:
            raise ValueError(f"`num_classes` (={num_classes}) must be positive, or 0 for no head")
        check_rate(drop_path=drop_path)
        check_choice("merging_way", merging_way, MERGING_WAYS)
        check_choice("patch_way", patch_way, PATCH_WAYS)
        check_stages(embed_dim, num_heads, kernel_size, dilation, dilate_attention)
        self.img_size = _pair(img_size, "img_size")
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.num_layers = n
        self.embed_dim = embed_dim
        self.num_features = int(embed_dim * 2 ** (n - 1))
        self.patch_way = patch_way
        self.merging_way = merging_way
        self.downsamples = downsamples
        feature_sizes(self.img_size, **self._size_args(), what=f"`img_size` (={img_size!r})")
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.patch_embed = PatchEmbed(
            img_size=img_size,
            in_chans=in_chans,
            patch_size=patch_size,
            embed_dim=embed_dim,
            patch_way=patch_way,
            **kw,
        )
        # float32 as torch.linspace makes them upstream.
        dpr = np.linspace(0.0, drop_path, sum(depths), dtype=np.float32).tolist()
        stages = []
        for i in range(n):
            common = dict(
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                qk_scale=qk_scale,
                drop=drop,
                attn_drop=attn_drop,
                drop_path=dpr[sum(depths[:i]) : sum(depths[: i + 1])],
                norm_layer=norm_layer,
                cpe_per_stage=cpe_per_stage,
                cpe_per_block=cpe_per_block,
                downsample=downsamples[i],
                merging_way=merging_way,
                **kw,
            )
            dim = int(embed_dim * 2**i)
            if dilate_attention[i]:
                stage = DilateStage(
                    dim=dim,
                    depth=depths[i],
                    num_heads=num_heads[i],
                    kernel_size=kernel_size,
                    dilation=dilation,
                    **common,
                )
            else:
                stage = GlobalStage(dim=dim, depth=depths[i], num_heads=num_heads[i], **common)
            stages.append(stage)
        self.stages = nnx.List(stages)
        self.norm = norm_layer(self.num_features, **kw)
        self.head = (
            Linear(self.num_features, num_classes, **kw) if num_classes > 0 else nnx.data(None)
        )
        _init_weights(self, rngs)

    def _size_args(self) -> dict:
        return dict(
            patch_size=self.patch_size,
            patch_way=self.patch_way,
            merging_way=self.merging_way,
            downsamples=self.downsamples,
        )

    def forward_features(self, x: jax.Array) -> jax.Array:
        """``(B, H, W, in_chans) -> (B, num_features)``: the pooled, normalised features."""
        c = self.in_chans
        check_input(x, rank=4, last=c, layout=f"(B, H, W, {c})", where="DilateFormer")
        feature_sizes(x.shape[1:3], **self._size_args())
        x = self.patch_embed(x)
        for stage in self.stages:
            x = stage(x)
        b, h, w, c = x.shape
        x = self.norm(x.reshape(b, h * w, c))  # not -1: B may be 0
        return x.mean(axis=1)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.forward_features(x)
        return self.head(x) if self.head is not None else x


def dilateformer_tiny(**kwargs) -> DilateFormer:
    """DilateFormer-Tiny: width 72, depths (2, 2, 6, 2), heads (3, 6, 12, 24); ~17.2M params."""
    return DilateFormer(embed_dim=72, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), **kwargs)


def dilateformer_small(**kwargs) -> DilateFormer:
    """DilateFormer-Small: width 72, depths (3, 5, 8, 3), heads (3, 6, 12, 24); ~24.1M params."""
    return DilateFormer(embed_dim=72, depths=(3, 5, 8, 3), num_heads=(3, 6, 12, 24), **kwargs)


def dilateformer_base(**kwargs) -> DilateFormer:
    """DilateFormer-Base: width 96, depths (4, 8, 10, 3), heads (3, 6, 12, 24); ~47.4M params."""
    return DilateFormer(embed_dim=96, depths=(4, 8, 10, 3), num_heads=(3, 6, 12, 24), **kwargs)
