"""DilateFormer's dilated attention and blocks (twin of ``flaxattn.layers.dilate``).

Jiao et al., "DilateFormer: Multi-Scale Dilated Transformer for Visual Recognition",
IEEE Transactions on Multimedia 2023. https://arxiv.org/abs/2302.01791
Official code: JIAOJIAYUASD/dilateformer, ``models/dilateformer.py``; attribute names
follow it, so its state_dicts load key for key. Layouts are upstream's: blocks take
``(B, C, H, W)``; ``MultiDilateLocalAttention`` and ``GlobalAttention`` take and
return ``(B, H, W, C)``; ``DilateAttention`` takes ``(B, d, H, W)`` and returns
``(B, H, W, d)``. Neighbourhoods are gathered with ``nn.Unfold`` as upstream does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from torch_ref._checks import check_positive, check_positive_number, check_rate
from torch_ref._twin import Twin


def check_kernel_size(kernel_size: int) -> None:
    """An odd, positive window side (``nn.Unfold`` pads ``dilation * (k - 1) // 2``)."""
    check_positive(kernel_size=kernel_size)
    if kernel_size % 2 == 0:
        raise ValueError(f"`kernel_size` (={kernel_size}) must be odd")


def check_dilation(dilation: Sequence[int]) -> tuple[int, ...]:
    """A non-empty sequence of positive dilation rates, as a tuple."""
    if isinstance(dilation, int):
        raise ValueError(f"`dilation` (={dilation!r}) must be a sequence of ints, e.g. [1, 2, 3]")
    dilation = tuple(dilation)
    if not dilation or not all(isinstance(d, int) and d > 0 for d in dilation):
        raise ValueError(
            f"`dilation` (={list(dilation)}) must be a non-empty list of positive ints"
        )
    return dilation


def check_heads(dim: int, num_heads: int, num_groups: int | None = None) -> int:
    """Upstream's ``head_dim = dim // num_heads``, refusing a remainder (and heads that do
    not split into ``num_groups`` dilation groups)."""
    check_positive(dim=dim, num_heads=num_heads)
    if dim % num_heads:
        raise ValueError(f"`dim` (={dim}) must be divisible by `num_heads` (={num_heads})")
    if num_groups is not None and num_heads % num_groups:
        raise ValueError(
            f"`num_heads` (={num_heads}) must be a multiple of the number of dilations "
            f"(={num_groups})"
        )
    return dim // num_heads


class DropPath(nn.Module):
    """Stochastic depth per sample, as ``timm.layers.DropPath`` (identity in eval mode)."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        check_rate(drop_prob=drop_prob)
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Mlp(Twin):
    """``fc2(drop(act(fc1(x))))``, dropout after each layer. Shapes: ``(..., in) -> (..., out)``."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: type[nn.Module] = nn.GELU,
        drop: float = 0.0,
    ):
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.act(self.fc1(x)))
        return self.drop(self.fc2(x))


class DilateAttention(Twin):
    """Sliding-window dilated attention of one head group (``nn.Unfold`` neighbourhoods).

    Shapes: ``q, k, v: (B, d, H, W) -> (B, H, W, d)``, as upstream.
    """

    def __init__(
        self,
        head_dim: int,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        kernel_size: int = 3,
        dilation: int = 1,
    ):
        super().__init__()
        check_positive(head_dim=head_dim, dilation=dilation)
        check_kernel_size(kernel_size)
        self.head_dim = head_dim
        self.scale = qk_scale or head_dim**-0.5
        self.kernel_size = kernel_size
        self.unfold = nn.Unfold(kernel_size, dilation, dilation * (kernel_size - 1) // 2, 1)
        self.attn_drop = nn.Dropout(attn_drop)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, d, h, w = q.shape
        hd, kk = self.head_dim, self.kernel_size**2
        q = q.reshape(b, d // hd, hd, 1, h * w).permute(0, 1, 4, 3, 2)  # B, heads, N, 1, hd
        k = self.unfold(k).reshape(b, d // hd, hd, kk, h * w).permute(0, 1, 4, 2, 3)
        attn = ((q @ k) * self.scale).softmax(dim=-1)  # B, heads, N, 1, k*k
        attn = self.attn_drop(attn)
        v = self.unfold(v).reshape(b, d // hd, hd, kk, h * w).permute(0, 1, 4, 3, 2)
        return (attn @ v).transpose(1, 2).reshape(b, h, w, d)


class MultiDilateLocalAttention(Twin):
    """Multi-scale dilated attention. Shapes: ``(B, H, W, C) -> (B, H, W, C)``, as upstream.

    Upstream calls it ``MultiDilatelocalAttention``.

    Deviation from upstream: upstream writes each group's output into a view of
    its input (``x[i] = ...``), which overwrites the caller's tensor and makes
    backward fail (an in-place change of a tensor saved for backward, or of a view
    of a leaf); adding ``.detach()`` there, as some copies do, hides the error by cutting the
    gradients of ``qkv`` and of everything before it (``norm1``). Here the group
    outputs are stacked: the same forward, the input untouched, every gradient intact.
    """

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
    ):
        super().__init__()
        dilation = check_dilation(dilation)
        head_dim = check_heads(dim, num_heads, len(dilation))
        check_kernel_size(kernel_size)
        self.dim = dim
        self.num_heads = num_heads
        self.dilation = dilation
        self.kernel_size = kernel_size
        self.scale = qk_scale or head_dim**-0.5
        self.num_dilation = len(dilation)
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=qkv_bias)
        self.dilate_attention = nn.ModuleList(
            [
                DilateAttention(
                    head_dim=head_dim,
                    qk_scale=qk_scale,
                    attn_drop=attn_drop,
                    kernel_size=kernel_size,
                    dilation=d,
                )
                for d in dilation
            ]
        )
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        n = self.num_dilation
        qkv = self.qkv(x.permute(0, 3, 1, 2))
        qkv = qkv.reshape(b, 3, n, c // n, h, w).permute(2, 1, 0, 3, 4, 5)  # n, 3, B, C/n, H, W
        x = torch.stack(
            [attn(qkv[i][0], qkv[i][1], qkv[i][2]) for i, attn in enumerate(self.dilate_attention)]
        )  # n, B, H, W, C/n
        x = x.permute(1, 2, 3, 0, 4).reshape(b, h, w, c)
        return self.proj_drop(self.proj(x))


class _Block(Twin):
    """Shared body of ``DilateBlock`` and ``GlobalBlock``; ``(B, C, H, W) -> (B, C, H, W)``."""

    attn: nn.Module

    def _init_common(
        self, *, dim, mlp_ratio, drop, drop_path, act_layer, norm_layer, cpe_per_block, attn
    ):
        check_positive(dim=dim)
        check_positive_number(mlp_ratio=mlp_ratio)
        self.dim = dim
        self.mlp_ratio = mlp_ratio
        self.cpe_per_block = cpe_per_block
        if cpe_per_block:
            self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = norm_layer(dim)
        self.attn = attn()
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(
            in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, drop=drop
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cpe_per_block:
            x = x + self.pos_embed(x)
        x = x.permute(0, 2, 3, 1)
        x = x + self.drop_path(self.attn(self.norm1(x)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x.permute(0, 3, 1, 2)


class DilateBlock(_Block):
    """CPE (optional), pre-norm MSDA and MLP with stochastic depth.

    Shapes: ``(B, C, H, W) -> (B, C, H, W)``. ``norm_layer`` defaults to
    ``nn.LayerNorm`` (eps 1e-5); the full model passes eps 1e-6.

    Deviation from upstream: gradients reach ``qkv`` and ``norm1`` (see
    :class:`MultiDilateLocalAttention`).
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
        act_layer: type[nn.Module] = nn.GELU,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        kernel_size: int = 3,
        dilation: Sequence[int] = (1, 2, 3),
        cpe_per_block: bool = False,
    ):
        super().__init__()
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
        )


class GlobalAttention(Twin):
    """Multi-head self-attention over all positions. Shapes: ``(B, H, W, C) -> (B, H, W, C)``."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__()
        head_dim = check_heads(dim, num_heads)
        self.num_heads = num_heads
        self.scale = qk_scale or head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        nh = self.num_heads
        qkv = self.qkv(x).reshape(b, h * w, 3, nh, c // nh).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        attn = self.attn_drop(attn)
        x = (attn @ v).transpose(1, 2).reshape(b, h, w, c)
        return self.proj_drop(self.proj(x))


class GlobalBlock(_Block):
    """``DilateBlock`` with ``GlobalAttention``. Shapes: ``(B, C, H, W) -> (B, C, H, W)``."""

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
        act_layer: type[nn.Module] = nn.GELU,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        cpe_per_block: bool = False,
    ):
        super().__init__()
        self.num_heads = num_heads

        def attn():
            return GlobalAttention(
                dim, num_heads=num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale, attn_drop=attn_drop
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
        )
