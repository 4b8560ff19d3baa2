"""Squeeze-and-Excitation (twin of ``flaxattn.layers.se``), NCHW.

Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018. https://arxiv.org/abs/1709.01507
Follows moskomule/senet.pytorch ``senet/se_module.py``.
"""

from __future__ import annotations

import torch
from torch import nn

from torch_ref._checks import check_positive
from torch_ref._twin import Twin


class SELayer(Twin):
    """Shapes: ``(B, C, H, W) -> (B, C, H, W)``."""

    def __init__(self, channel: int, reduction: int = 16):
        super().__init__()
        check_positive(channel=channel, reduction=reduction)
        if reduction > channel:
            raise ValueError(f"`reduction` (={reduction}) must not exceed `channel` (={channel})")
        hidden = channel // reduction
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channel, hidden, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channel, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        y = self.fc(self.avg_pool(x).view(b, c)).view(b, c, 1, 1)
        return x * y
