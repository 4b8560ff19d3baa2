"""A small axial-transformer classifier (twin of ``flaxattn.models.axial_classifier``), NCHW."""

from __future__ import annotations

import torch
from torch import nn

from torch_ref._checks import check_positive
from torch_ref._twin import Twin
from torch_ref.layers.axial import AxialImageTransformer


class AxialClassifier(Twin):
    """Shapes: ``(B, in_channels, H, W) -> (B, num_classes)``."""

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        dim: int = 32,
        depth: int = 2,
        heads: int = 4,
        dim_heads: int | None = None,
        stem_stride: int = 2,
        reversible: bool | str = True,
    ):
        super().__init__()
        check_positive(in_channels=in_channels, num_classes=num_classes, stem_stride=stem_stride)
        self.stem = nn.Conv2d(in_channels, dim, 3, stride=stem_stride, padding=1)
        self.transformer = AxialImageTransformer(
            dim, depth, heads, dim_heads, dim_index=1, reversible=reversible
        )
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.transformer(self.stem(x))
        return self.fc(self.norm(x.mean(dim=(2, 3))))
