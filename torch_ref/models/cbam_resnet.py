"""A small ResNet of CBAM bottlenecks (twin of ``flaxattn.models.cbam_resnet``), NCHW."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from torch_ref._checks import check_positive
from torch_ref._twin import Twin
from torch_ref.layers.cbam import ResBlockCBAM


class CBAMResNet(Twin):
    """Shapes: ``(B, in_channels, H, W) -> (B, num_classes)``."""

    def __init__(
        self,
        layers: Sequence[int] = (1, 1, 1),
        planes: Sequence[int] = (16, 32, 64),
        in_channels: int = 3,
        num_classes: int = 10,
        expansion: int = 4,
    ):
        super().__init__()
        layers, planes = tuple(layers), tuple(planes)
        if len(layers) != len(planes) or not layers:
            raise ValueError(
                f"`layers` (={layers}) and `planes` (={planes}) must be non-empty and equally long"
            )
        check_positive(in_channels=in_channels, num_classes=num_classes, expansion=expansion)
        for i, n in enumerate(layers):
            check_positive(**{f"layers[{i}]": n})
        self.conv1 = nn.Conv2d(in_channels, planes[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0])
        blocks = []
        width = planes[0]
        for stage, (n, p) in enumerate(zip(layers, planes, strict=True)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(ResBlockCBAM(width, p, stride, i == 0, expansion))
                width = p * expansion
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        for block in self.blocks:
            x = block(x)
        return self.fc(x.mean(dim=(2, 3)))
