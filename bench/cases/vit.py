"""ViT: a small ViT train step (CIFAR-sized images)."""

import torch_ref
from bench.registry import BenchCase, register

_SMALL = dict(image_size=32, patch_size=4, num_classes=10, dim=192, depth=6, heads=3, mlp_dim=768)

register(
    BenchCase(
        "vit/small",
        lambda: torch_ref.ViT(**_SMALL, dim_head=64),
        [(64, 3, 32, 32)],
        flops=True,
    ),
)
