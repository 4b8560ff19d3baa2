"""flaxattn: vision attention mechanisms in JAX/Flax NNX with PyTorch twins.

Importing flaxattn never imports torch. Modules are channels-last (images
``(B, H, W, C)``); ``flaxattn.convert`` maps weights to and from PyTorch and
``flaxattn.parity`` proves two twins compute the same outputs and gradients.
"""

from flaxattn.layers.acmix import ACmix, local_attention
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
from flaxattn.models.acmix_resnet import (
    ACmixResNet,
    acmix_resnet26,
    acmix_resnet38,
    acmix_resnet50,
)
from flaxattn.models.acmix_resnet import Bottleneck as ACmixBottleneck
from flaxattn.models.cbam_resnet import CBAMResNet
from flaxattn.ops.nn import BatchNorm, Conv2d, DropPath, LayerNorm, Linear

__version__ = "0.1.0"

__all__ = [
    "ACmix",
    "ACmixBottleneck",
    "ACmixResNet",
    "acmix_resnet26",
    "acmix_resnet38",
    "acmix_resnet50",
    "local_attention",
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
