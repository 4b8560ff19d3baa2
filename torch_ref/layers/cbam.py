"""CBAM (twin of ``flaxattn.layers.cbam``), NCHW.

Woo et al., "CBAM: Convolutional Block Attention Module", ECCV 2018.
https://arxiv.org/abs/1807.06521

``ChannelAttention``/``SpatialAttention``/``CBAM``/``ResBlockCBAM`` are the paper's
module (Sec. 3) as commonly re-implemented in PyTorch (``ResBlockCBAM`` applies
``CBAM(places * expansion)`` before the residual sum, as the paper's Fig. 3);
``JongchanCBAM``/``ChannelGate``/``SpatialGate`` follow the authors' code,
Jongchan/attention-module ``MODELS/cbam.py``, key for key. See the Flax file for
how the two differ.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from torch_ref._checks import check_choice, check_positive
from torch_ref._twin import Twin


def _check_ratio(channel: int, ratio: int, ratio_name: str) -> None:
    check_positive(channel=channel, **{ratio_name: ratio})
    if ratio > channel:
        raise ValueError(f"`{ratio_name}` (={ratio}) must not exceed `channel` (={channel})")


class ChannelAttention(Twin):
    """Shapes: ``(B, C, H, W) -> (B, C, 1, 1)`` (the map)."""

    def __init__(self, channel: int, ratio: int = 16):
        super().__init__()
        _check_ratio(channel, ratio, "ratio")
        hidden = channel // ratio
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.max_pool = nn.AdaptiveMaxPool2d(1)
        self.shared_MLP = nn.Sequential(
            nn.Conv2d(channel, hidden, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(hidden, channel, 1, bias=False),
        )
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg_out = self.shared_MLP(self.avg_pool(x))
        max_out = self.shared_MLP(self.max_pool(x))
        return self.sigmoid(avg_out + max_out)


class SpatialAttention(Twin):
    """Shapes: ``(B, C, H, W) -> (B, 1, H, W)`` (the map)."""

    def __init__(self):
        super().__init__()
        self.conv2d = nn.Conv2d(2, 1, kernel_size=7, stride=1, padding=3)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg_out = torch.mean(x, dim=1, keepdim=True)
        max_out, _ = torch.max(x, dim=1, keepdim=True)
        return self.sigmoid(self.conv2d(torch.cat([avg_out, max_out], dim=1)))


class CBAM(Twin):
    """Shapes: ``(B, C, H, W) -> (B, C, H, W)``."""

    def __init__(self, channel: int, ratio: int = 16):
        super().__init__()
        self.channel_attention = ChannelAttention(channel, ratio)
        self.spatial_attention = SpatialAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.channel_attention(x) * x
        return self.spatial_attention(out) * out


class ResBlockCBAM(Twin):
    """ResNet bottleneck with CBAM before the residual add.

    Shapes: ``(B, in_places, H, W) -> (B, places * expansion, ceil(H / s), ceil(W / s))``.
    """

    def __init__(
        self,
        in_places: int,
        places: int,
        stride: int = 1,
        downsampling: bool = False,
        expansion: int = 4,
    ):
        super().__init__()
        check_positive(in_places=in_places, places=places, stride=stride, expansion=expansion)
        out = places * expansion
        if not downsampling and (in_places != out or stride != 1):
            raise ValueError(
                f"without `downsampling` the identity shortcut needs `in_places` (={in_places}) "
                f"== `places * expansion` (={out}) and `stride` (={stride}) == 1"
            )
        self.expansion = expansion
        self.downsampling = downsampling
        self.bottleneck = nn.Sequential(
            nn.Conv2d(in_places, places, kernel_size=1, stride=1, bias=False),
            nn.BatchNorm2d(places),
            nn.ReLU(inplace=True),
            nn.Conv2d(places, places, kernel_size=3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(places),
            nn.ReLU(inplace=True),
            nn.Conv2d(places, out, kernel_size=1, stride=1, bias=False),
            nn.BatchNorm2d(out),
        )
        self.cbam = CBAM(out)
        if downsampling:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_places, out, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out),
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.cbam(self.bottleneck(x))
        residual = self.downsample(x) if self.downsampling else x
        return self.relu(out + residual)


# --- Jongchan/attention-module variant ------------------------------------------------

POOL_TYPES = ("avg", "max", "lp", "lse")


class Flatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.size(0), -1)


def logsumexp_2d(x: torch.Tensor) -> torch.Tensor:
    flat = x.view(x.size(0), x.size(1), -1)
    s, _ = torch.max(flat, dim=2, keepdim=True)
    return s + (flat - s).exp().sum(dim=2, keepdim=True).log()


class ChannelGate(Twin):
    """Shapes: ``(B, C, H, W) -> (B, C, H, W)``."""

    def __init__(
        self,
        gate_channels: int,
        reduction_ratio: int = 16,
        pool_types: Sequence[str] = ("avg", "max"),
    ):
        super().__init__()
        _check_ratio(gate_channels, reduction_ratio, "reduction_ratio")
        pool_types = tuple(pool_types)
        if not pool_types:
            raise ValueError("`pool_types` (=()) must name at least one pool type")
        for p in pool_types:
            check_choice("pool_types", p, POOL_TYPES)
        self.gate_channels = gate_channels
        hidden = gate_channels // reduction_ratio
        self.mlp = nn.Sequential(
            Flatten(),
            nn.Linear(gate_channels, hidden),
            nn.ReLU(),
            nn.Linear(hidden, gate_channels),
        )
        self.pool_types = pool_types

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hw = (x.size(2), x.size(3))
        att = None
        for pool_type in self.pool_types:
            if pool_type == "avg":
                pooled = F.avg_pool2d(x, hw, stride=hw)
            elif pool_type == "max":
                pooled = F.max_pool2d(x, hw, stride=hw)
            elif pool_type == "lp":
                pooled = F.lp_pool2d(x, 2, hw, stride=hw)
            else:
                pooled = logsumexp_2d(x)
            raw = self.mlp(pooled)
            att = raw if att is None else att + raw
        return x * torch.sigmoid(att).unsqueeze(2).unsqueeze(3)


class BasicConv(nn.Module):
    def __init__(
        self,
        in_planes: int,
        out_planes: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        relu: bool = True,
        bn: bool = True,
        bias: bool = False,
    ):
        super().__init__()
        self.conv = nn.Conv2d(
            in_planes, out_planes, kernel_size, stride, padding, dilation, groups, bias
        )
        self.bn = nn.BatchNorm2d(out_planes, eps=1e-5, momentum=0.01, affine=True) if bn else None
        self.relu = nn.ReLU() if relu else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        if self.relu is not None:
            x = self.relu(x)
        return x


class ChannelPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((torch.max(x, 1)[0].unsqueeze(1), torch.mean(x, 1).unsqueeze(1)), dim=1)


class SpatialGate(Twin):
    """Shapes: ``(B, C, H, W) -> (B, C, H, W)``."""

    def __init__(self):
        super().__init__()
        kernel_size = 7
        self.compress = ChannelPool()
        self.spatial = BasicConv(
            2, 1, kernel_size, stride=1, padding=(kernel_size - 1) // 2, relu=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.spatial(self.compress(x)))


class JongchanCBAM(Twin):
    """Upstream's ``CBAM``. Shapes: ``(B, C, H, W) -> (B, C, H, W)``."""

    def __init__(
        self,
        gate_channels: int,
        reduction_ratio: int = 16,
        pool_types: Sequence[str] = ("avg", "max"),
        no_spatial: bool = False,
    ):
        super().__init__()
        self.ChannelGate = ChannelGate(gate_channels, reduction_ratio, pool_types)
        self.no_spatial = no_spatial
        if not no_spatial:
            self.SpatialGate = SpatialGate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ChannelGate(x)
        if not self.no_spatial:
            x = self.SpatialGate(x)
        return x
