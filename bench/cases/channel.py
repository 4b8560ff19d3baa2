"""Channel/spatial family at ResNet-stage sizes."""

import torch_ref
from bench.registry import BenchCase, register

register(
    BenchCase("channel/se", lambda: torch_ref.SELayer(64, 16), [(16, 64, 56, 56)]),
    BenchCase("channel/cbam", lambda: torch_ref.CBAM(64), [(16, 64, 56, 56)]),
    BenchCase(
        "channel/resblock_cbam",
        lambda: torch_ref.ResBlockCBAM(256, 64),
        [(16, 256, 28, 28)],
    ),
    BenchCase(
        "channel/attention_gate",
        lambda: torch_ref.AttentionGate(64, 64, 32),
        [(8, 64, 56, 56), (8, 64, 56, 56)],
    ),
    BenchCase(
        "channel/self_attention", lambda: torch_ref.SelfAttention(128, 64, 128), [(32, 196, 128)]
    ),
)
