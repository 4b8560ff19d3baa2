"""Attention-augmented Wide-ResNet (twin of ``flaxattn.models.aa_wide_resnet``), NCHW.

Bello et al., "Attention Augmented Convolutional Networks", ICCV 2019.
https://arxiv.org/abs/1904.09925

Follows leaderj1001/Attention-Augmented-Conv2d
``AA-Wide-ResNet/attention_augmented_wide_resnet.py`` (``Wide_ResNet``,
``wide_basic``), key for key.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from torch_ref._checks import check_choice, check_positive
from torch_ref._twin import Twin
from torch_ref.layers.aa_conv import AugmentedConv, map_shape


def conv3x3_out(shape: tuple[int, int], stride: int) -> tuple[int, int]:
    """Map size after a 3x3 convolution with padding 1: torch's ``(n + 2p - k) // s + 1``."""
    return tuple((n + 2 * 1 - 3) // stride + 1 for n in shape)


def wrn_stages(depth: int, widen_factor: int) -> tuple[int, list[int]]:
    """Upstream's ``(depth - 4) / 6`` blocks per stage and widths ``[20, 20k, 40k, 60k]``."""
    check_positive(depth=depth, widen_factor=widen_factor)
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"`depth` (={depth}) must be 6n + 4 with n >= 1 (10, 16, 22, 28, ...)")
    k = widen_factor
    return (depth - 4) // 6, [20, 20 * k, 40 * k, 60 * k]


class WideBasic(Twin):
    """Upstream's ``wide_basic``; see :class:`flaxattn.models.aa_wide_resnet.WideBasic`.

    Deviation from upstream: ``in_shape`` is the block's input map size (upstream
    passes the output size and doubles it for stride 2, wrong for odd sizes).

    Shapes: ``(B, in_planes, H, W) -> (B, planes, ceil(H / stride), ceil(W / stride))``.
    """

    def __init__(
        self,
        in_planes: int,
        planes: int,
        dropout_rate: float,
        in_shape: int | Sequence[int],
        stride: int = 1,
        v: float = 0.2,
        k: int = 2,
        Nh: int = 4,
    ):
        super().__init__()
        check_positive(in_planes=in_planes, planes=planes)
        hw = map_shape(in_shape, True)
        out_hw = conv3x3_out(hw, stride)
        aa = dict(kernel_size=3, dk=k * planes, dv=int(v * planes), Nh=Nh, relative=True)
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = AugmentedConv(in_planes, planes, shape=hw, **aa)
        self.dropout = nn.Dropout(p=dropout_rate)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = AugmentedConv(planes, planes, shape=out_hw, stride=stride, **aa)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                AugmentedConv(in_planes, planes, shape=out_hw, stride=stride, **aa)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dropout(self.conv1(F.relu(self.bn1(x))))
        out = self.conv2(F.relu(self.bn2(out)))
        return out + self.shortcut(x)


def _weights_init(m: nn.Module) -> None:
    if isinstance(m, nn.Conv2d):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, 0.0, 0.01)
        nn.init.zeros_(m.bias)


class AAWideResNet(Twin):
    """Upstream's ``Wide_ResNet``; see :class:`flaxattn.models.aa_wide_resnet.AAWideResNet`.

    Deviation from upstream: global average pooling instead of ``avg_pool2d(out, 8)``
    (equal on 32x32 inputs); stage map sizes computed as ``ceil(H / 2)`` instead of
    ``shape // 2``, ``shape // 4``; ``shape`` may be ``(H, W)``; ``in_channels`` is an
    argument (upstream fixes 3); no ``print``. Added: ``stem_stride`` (1 is upstream).

    Shapes: ``(B, in_channels, H, W) -> (B, num_classes)``.
    """

    def __init__(
        self,
        depth: int,
        widen_factor: int,
        dropout_rate: float,
        num_classes: int,
        shape: int | Sequence[int],
        in_channels: int = 3,
        stem_stride: int = 1,
    ):
        super().__init__()
        n, widths = wrn_stages(depth, widen_factor)
        check_positive(num_classes=num_classes, in_channels=in_channels)
        check_choice("stem_stride", stem_stride, (1, 2))
        hw = conv3x3_out(map_shape(shape, True), stem_stride)
        self.shape = hw
        self.conv1 = AugmentedConv(
            in_channels, widths[0], 3, 2 * widths[0], int(0.2 * widths[0]), 4, hw, True, stem_stride
        )
        in_planes = widths[0]
        for i, (planes, stride) in enumerate(zip(widths[1:], (1, 2, 2), strict=True)):
            blocks = []
            for s in [stride] + [1] * (n - 1):
                blocks.append(WideBasic(in_planes, planes, dropout_rate, hw, s))
                in_planes, hw = planes, conv3x3_out(hw, s)
            setattr(self, f"layer{i + 1}", nn.Sequential(nn.Sequential(*blocks)))
        self.bn1 = nn.BatchNorm2d(widths[3], momentum=0.9)
        self.linear = nn.Linear(widths[3], num_classes)
        self.apply(_weights_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        out = F.relu(self.bn1(out))
        return self.linear(out.mean(dim=(2, 3)))
