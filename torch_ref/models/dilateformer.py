"""DilateFormer (twin of ``flaxattn.models.dilateformer``), NCHW.

Jiao et al., "DilateFormer: Multi-Scale Dilated Transformer for Visual Recognition",
IEEE Transactions on Multimedia 2023. https://arxiv.org/abs/2302.01791
Official code: JIAOJIAYUASD/dilateformer, ``models/dilateformer.py`` (class
``Dilateformer``); module names follow it key for key, so its checkpoints load
with ``load_state_dict(strict=True)``. See the Flax file for the deviations.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import nn

from torch_ref._checks import check_choice, check_int, check_pair, check_positive, check_rate
from torch_ref._twin import Twin
from torch_ref.layers.dilate import (
    DilateBlock,
    GlobalBlock,
    check_dilation,
    check_heads,
    check_kernel_size,
)

PATCH_WAYS = ("overlaping", "nonoverlaping", "pointconv")
MERGING_WAYS = ("conv3_2", "conv2_2", "avgpool3_2", "avgpool2_2")
# (kernel, stride, padding) of the convolutions that change the map size, as upstream
# builds them: the stems' four convs, and the merging conv or pool of each way.
STEM_CONVS = {
    "overlaping": ((3, 1, 1), (3, 2, 1), (3, 1, 1), (3, 2, 1)),
    "pointconv": ((3, 2, 1), (1, 1, 0), (3, 2, 1), (1, 1, 0)),
}
MERGING_CONV = {
    "conv3_2": (3, 2, 1),
    "avgpool3_2": (3, 2, 1),
    "conv2_2": (2, 2, 0),
    "avgpool2_2": (2, 2, 0),
}


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = check_pair(name, value)
    check_positive(**{f"{name}[0]": pair[0], f"{name}[1]": pair[1]})
    return pair


def _conv_out(n: int, kernel: int, stride: int, padding: int) -> int:
    """torch's output size of a convolution or pool (``ceil_mode=False``)."""
    return (n + 2 * padding - kernel) // stride + 1


def feature_sizes(
    size: tuple[int, int],
    *,
    patch_size: int | Sequence[int] = 4,
    patch_way: str = "overlaping",
    merging_way: str = "conv3_2",
    downsamples: Sequence[bool] = (True, True, True, False),
    what: str | None = None,
) -> list[tuple[int, int]]:
    """The ``(H, W)`` of each stage's map, from the size formula of every conv on the way.

    Raises ``ValueError`` naming the size (as ``what`` when given) and the stage, where a
    map would come out empty (upstream fails inside the convolution instead).
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
        h, w = _conv_out(h, ph, ph, 0), _conv_out(w, pw, pw, 0)
    else:
        for k, s, p in STEM_CONVS[patch_way]:
            h, w = _conv_out(h, k, s, p), _conv_out(w, k, s, p)
    sizes = [(h, w)]
    k, s, p = MERGING_CONV[merging_way]
    for i, down in enumerate(downsamples[:-1]):
        if down:
            out_h, out_w = _conv_out(h, k, s, p), _conv_out(w, k, s, p)
            if out_h < 1 or out_w < 1:
                raise ValueError(
                    f"{label} gives stage {i} a {h}x{w} map, which merging_way "
                    f"{merging_way!r} ({k}x{k}, stride {s}) cannot merge: stage {i + 1}'s map "
                    "would be empty"
                )
            h, w = out_h, out_w
        sizes.append((h, w))
    return sizes


def check_stages(embed_dim, num_heads, kernel_size, dilation, dilate_attention) -> None:
    """Every stage's width ``embed_dim * 2**i`` splits into its heads (and dilation groups)."""
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


class PatchEmbed(Twin):
    """Stem: ``(B, in_chans, H, W) -> (B, embed_dim, H/4, W/4)`` (``/patch_size``
    for ``'nonoverlaping'``).

    Deviation from upstream: any size the stem allows is accepted (upstream asserts
    ``img_size``), and ``patch_way`` defaults to ``'overlaping'`` (upstream's default
    ``None`` is refused by its own check).
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        in_chans: int = 3,
        hidden_dim: int = 16,
        patch_size: int | Sequence[int] = 4,
        embed_dim: int = 96,
        patch_way: str = "overlaping",
    ):
        super().__init__()
        check_choice("patch_way", patch_way, PATCH_WAYS)
        check_positive(in_chans=in_chans, hidden_dim=hidden_dim, embed_dim=embed_dim)
        self.img_size = _pair(img_size, "img_size")
        self.patch_size = _pair(patch_size, "patch_size")
        self.patch_way = patch_way
        what = f"`img_size` (={img_size!r})"
        feature_sizes(self.img_size, patch_size=patch_size, patch_way=patch_way, what=what)
        c1, c2, c4 = hidden_dim, hidden_dim * 2, hidden_dim * 4
        if patch_way == "nonoverlaping":
            p = self.patch_size
            self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=p, stride=p)
            return
        if patch_way == "overlaping":
            specs = [(3, 1, 1), (3, 2, 1), (3, 1, 1), (3, 2, 1)]
        else:
            specs = [(3, 2, 1), (1, 1, 0), (3, 2, 1), (1, 1, 0)]
        widths = [in_chans, c1, c2, c4, embed_dim]
        layers: list[nn.Module] = []
        for i, (k, s, p) in enumerate(specs):
            layers.append(nn.Conv2d(widths[i], widths[i + 1], k, stride=s, padding=p, bias=False))
            if i < 3:
                layers += [nn.BatchNorm2d(widths[i + 1]), nn.GELU()]
        self.proj = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feature_sizes(tuple(x.shape[2:]), patch_size=self.patch_size, patch_way=self.patch_way)
        return self.proj(x)


class PatchMerging(Twin):
    """Stride-2 downsampling between stages. ``(B, C_in, H, W) -> (B, C_out, H', W')``.

    Deviation from upstream: the ``'avgpool3_2'``/``'avgpool2_2'`` ways crash upstream
    (``nn.AvgPool2d(in_channels, out_channels, kernel_size=...)``, and a norm over
    ``out_channels`` after a pool that keeps ``in_channels``); here they pool, then a
    1x1 conv maps to ``out_channels`` before the norm. Upstream's ``cpe_per_satge``
    is spelt ``cpe_per_stage``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        merging_way: str = "conv3_2",
        cpe_per_stage: bool = False,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
    ):
        super().__init__()
        check_choice("merging_way", merging_way, MERGING_WAYS)
        check_positive(in_channels=in_channels, out_channels=out_channels)
        self.merging_way = merging_way
        self.cpe_per_stage = cpe_per_stage
        k = 3 if merging_way.endswith("3_2") else 2
        pad = 1 if k == 3 else 0
        if merging_way.startswith("conv"):
            layers = [nn.Conv2d(in_channels, out_channels, kernel_size=k, stride=2, padding=pad)]
        else:
            layers = [
                nn.AvgPool2d(kernel_size=k, stride=2, padding=pad),
                nn.Conv2d(in_channels, out_channels, kernel_size=1),
            ]
        self.proj = nn.Sequential(*layers, norm_layer(out_channels))
        if cpe_per_stage:
            self.pos_embed = nn.Conv2d(
                out_channels, out_channels, 3, padding=1, groups=out_channels
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merging_way.endswith("2_2") and min(x.shape[2:]) < 2:
            raise ValueError(
                f"PatchMerging ({self.merging_way!r}) needs maps of at least 2x2, got `x` of "
                f"shape {tuple(x.shape)}"
            )
        x = self.proj(x)
        if self.cpe_per_stage:
            x = x + self.pos_embed(x)
        return x


class _Stage(Twin):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x)

    def _downsample(self, dim, downsample, merging_way, cpe_per_stage):
        self.downsample = (
            PatchMerging(
                in_channels=dim,
                out_channels=int(dim * 2),
                merging_way=merging_way,
                cpe_per_stage=cpe_per_stage,
            )
            if downsample
            else nn.Identity()
        )


class DilateStage(_Stage):
    """``DilateBlock`` s then an optional ``PatchMerging``. Upstream: ``Dilatestage``."""

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
        act_layer: type[nn.Module] = nn.GELU,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        cpe_per_stage: bool = False,
        cpe_per_block: bool = False,
        downsample: bool = True,
        merging_way: str = "conv3_2",
    ):
        super().__init__()
        check_positive(depth=depth)
        self.blocks = nn.ModuleList(
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
                )
                for rate in _drop_rates(drop_path, depth)
            ]
        )
        self._downsample(dim, downsample, merging_way, cpe_per_stage)


class GlobalStage(_Stage):
    """``GlobalBlock`` s then an optional ``PatchMerging``. Upstream: ``Globalstage``."""

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
        act_layer: type[nn.Module] = nn.GELU,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        cpe_per_stage: bool = False,
        cpe_per_block: bool = False,
        downsample: bool = True,
        merging_way: str = "conv3_2",
    ):
        super().__init__()
        check_positive(depth=depth)
        self.blocks = nn.ModuleList(
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
                )
                for rate in _drop_rates(drop_path, depth)
            ]
        )
        self._downsample(dim, downsample, merging_way, cpe_per_stage)


class DilateFormer(Twin):
    """DilateFormer classifier (upstream ``Dilateformer``). ``(B, in_chans, H, W) -> (B, classes)``.

    Deviations from upstream: gradients reach every ``qkv`` and ``norm1`` (see
    ``MultiDilateLocalAttention``); any input size the strides allow is accepted
    (upstream asserts ``img_size``); the avg-pool merging ways work; upstream's
    ``cpe_per_satge`` is spelt ``cpe_per_stage``. Arguments as the Flax twin.
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
        norm_layer: type[nn.Module] = functools.partial(nn.LayerNorm, eps=1e-6),  # noqa: B008
        merging_way: str = "conv3_2",
        patch_way: str = "overlaping",
        dilate_attention: Sequence[bool] = (True, True, False, False),
        downsamples: Sequence[bool] = (True, True, True, False),
        cpe_per_stage: bool = False,
        cpe_per_block: bool = True,
    ):
        super().__init__()
        depths, num_heads = tuple(depths), tuple(num_heads)
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
        self.num_classes = num_classes
        self.num_layers = n
        self.embed_dim = embed_dim
        self.num_features = int(embed_dim * 2 ** (n - 1))
        self.mlp_ratio = mlp_ratio
        self._size_args = dict(
            patch_size=patch_size,
            patch_way=patch_way,
            merging_way=merging_way,
            downsamples=tuple(downsamples),
        )
        what = f"`img_size` (={img_size!r})"
        feature_sizes(_pair(img_size, "img_size"), **self._size_args, what=what)
        self.patch_embed = PatchEmbed(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            patch_way=patch_way,
        )
        dpr = [x.item() for x in torch.linspace(0, drop_path, sum(depths))]
        self.stages = nn.ModuleList()
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
            self.stages.append(stage)
        self.norm = norm_layer(self.num_features)
        self.avgpool = nn.AdaptiveAvgPool1d(1)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        feature_sizes(tuple(x.shape[2:]), **self._size_args)
        x = self.patch_embed(x)
        for stage in self.stages:
            x = stage(x)
        x = self.norm(x.flatten(2).transpose(1, 2))  # B, L, C
        return torch.flatten(self.avgpool(x.transpose(1, 2)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def dilateformer_tiny(**kwargs) -> DilateFormer:
    """DilateFormer-Tiny: width 72, depths (2, 2, 6, 2), heads (3, 6, 12, 24)."""
    return DilateFormer(embed_dim=72, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), **kwargs)


def dilateformer_small(**kwargs) -> DilateFormer:
    """DilateFormer-Small: width 72, depths (3, 5, 8, 3), heads (3, 6, 12, 24)."""
    return DilateFormer(embed_dim=72, depths=(3, 5, 8, 3), num_heads=(3, 6, 12, 24), **kwargs)


def dilateformer_base(**kwargs) -> DilateFormer:
    """DilateFormer-Base: width 96, depths (4, 8, 10, 3), heads (3, 6, 12, 24)."""
    return DilateFormer(embed_dim=96, depths=(4, 8, 10, 3), num_heads=(3, 6, 12, 24), **kwargs)
