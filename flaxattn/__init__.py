"""flaxattn: vision attention mechanisms in JAX/Flax NNX with PyTorch twins.

Importing flaxattn never imports torch. Modules are channels-last (images
``(B, H, W, C)``); ``flaxattn.convert`` maps weights to and from PyTorch and
``flaxattn.parity`` proves two twins compute the same outputs and gradients.
"""

from flaxattn.layers.attention_gate import AttentionGate
from flaxattn.layers.cbam import (
    CBAM,
    ChannelAttention,
    ChannelGate,
    JongchanCBAM,
    ResBlockCBAM,
    SpatialAttention,
    SpatialGate,
)
from flaxattn.layers.se import SELayer
from flaxattn.layers.self_attention import SelfAttention
from flaxattn.layers.vit import Attention, FeedForward, PreNorm, Transformer, ViT
from flaxattn.models.cbam_resnet import CBAMResNet
from flaxattn.ops.nn import BatchNorm, Conv2d, DropPath, LayerNorm, Linear

__version__ = "0.1.0"

__all__ = [
    "Attention",
    "FeedForward",
    "PreNorm",
    "Transformer",
    "ViT",
    "CBAMResNet",
    "AttentionGate",
    "BatchNorm",
    "CBAM",
    "ChannelAttention",
    "ChannelGate",
    "Conv2d",
    "DropPath",
    "JongchanCBAM",
    "LayerNorm",
    "Linear",
    "ResBlockCBAM",
    "SELayer",
    "SelfAttention",
    "SpatialAttention",
    "SpatialGate",
]
