"""A small ResNet of CBAM bottlenecks for image classification.

Woo et al., "CBAM: Convolutional Block Attention Module", ECCV 2018.
https://arxiv.org/abs/1807.06521

CIFAR-style: a 3x3 stem without max pooling, then stages of
:class:`~flaxattn.layers.cbam.ResBlockCBAM` (the first block of each stage
projects and, after the first stage, strides by 2), global average pooling and
a linear classifier. Sized for small images (MNIST, CIFAR); scale it with
``layers`` and ``planes``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from flaxattn.layers.basic import BatchNorm2d, Conv2d, Dtype, Linear
from flaxattn.layers.cbam import ResBlockCBAM
from flaxattn.ops.checks import check_input, check_positive


class CBAMResNet(nnx.Module):
    """Args:
      layers: blocks per stage.
      planes: bottleneck width per stage (outputs ``planes * expansion`` channels).
      in_channels: image channels.
      num_classes: classifier outputs.
      expansion: bottleneck expansion.

    Shapes: ``(B, H, W, in_channels) -> (B, num_classes)``.
    """

    def __init__(
        self,
        layers: Sequence[int] = (1, 1, 1),
        planes: Sequence[int] = (16, 32, 64),
        in_channels: int = 3,
        num_classes: int = 10,
        expansion: int = 4,
        *,
        dtype: Dtype = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        layers, planes = tuple(layers), tuple(planes)
        if len(layers) != len(planes) or not layers:
            raise ValueError(
                f"`layers` (={layers}) and `planes` (={planes}) must be non-empty and equally long"
            )
        check_positive(in_channels=in_channels, num_classes=num_classes, expansion=expansion)
        for i, n in enumerate(layers):
            check_positive(**{f"layers[{i}]": n})
        self.in_channels = in_channels
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.conv1 = Conv2d(in_channels, planes[0], 3, padding=1, bias=False, **kw)
        self.bn1 = BatchNorm2d(planes[0], **kw)
        blocks = []
        width = planes[0]
        for stage, (n, p) in enumerate(zip(layers, planes, strict=True)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(ResBlockCBAM(width, p, stride, i == 0, expansion, **kw))
                width = p * expansion
        self.blocks = nnx.List(blocks)
        self.fc = Linear(width, num_classes, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.in_channels
        check_input(x, rank=4, last=c, layout=f"(B, H, W, {c})", where="CBAMResNet")
        x = nnx.relu(self.bn1(self.conv1(x)))
        for block in self.blocks:
            x = block(x)
        return self.fc(x.mean(axis=(1, 2)))
