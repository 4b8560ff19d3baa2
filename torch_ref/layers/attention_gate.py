"""Attention U-Net gate (twin of ``flaxattn.layers.attention_gate``), NCHW.

Oktay et al., "Attention U-Net: Learning Where to Look for the Pancreas", MIDL 2018.
https://arxiv.org/abs/1804.03999
Follows LeeJunHyun/Image_Segmentation ``network.py`` ``Attention_block``.
"""

from __future__ import annotations

import torch
from torch import nn

from torch_ref._checks import check_positive
from torch_ref._twin import Twin


class AttentionGate(Twin):
    """Shapes: ``g (B, F_g, H, W)``, ``x (B, F_l, H, W) -> (B, F_l, H, W)``."""

    def __init__(self, F_g: int, F_l: int, F_int: int):
        super().__init__()
        check_positive(F_g=F_g, F_l=F_l, F_int=F_int)
        self.W_g = nn.Sequential(
            nn.Conv2d(F_g, F_int, kernel_size=1, stride=1, padding=0, bias=True),
            nn.BatchNorm2d(F_int),
        )
        self.W_x = nn.Sequential(
            nn.Conv2d(F_l, F_int, kernel_size=1, stride=1, padding=0, bias=True),
            nn.BatchNorm2d(F_int),
        )
        self.psi = nn.Sequential(
            nn.Conv2d(F_int, 1, kernel_size=1, stride=1, padding=0, bias=True),
            nn.BatchNorm2d(1),
            nn.Sigmoid(),
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        psi = self.psi(self.relu(self.W_g(g) + self.W_x(x)))
        return x * psi
