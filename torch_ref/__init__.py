"""PyTorch twins of the flaxattn modules (NCHW), same class names and arguments.

They follow each mechanism's upstream code and fix only what is broken there;
every fix is named in the class docstring ("Deviation from upstream: ...").
"""

from torch_ref.layers.acmix import ACmix
from torch_ref.layers.attention_gate import AttentionGate
from torch_ref.layers.cbam import (
    CBAM,
    ChannelAttention,
    ChannelGate,
    JongchanCBAM,
    ResBlockCBAM,
    SpatialAttention,
    SpatialGate,
)
from torch_ref.layers.se import SELayer
from torch_ref.layers.self_attention import SelfAttention
from torch_ref.models.acmix_resnet import (
    ACmixResNet,
    acmix_resnet26,
    acmix_resnet38,
    acmix_resnet50,
)
from torch_ref.models.acmix_resnet import Bottleneck as ACmixBottleneck
from torch_ref.models.cbam_resnet import CBAMResNet

__all__ = [
    "ACmix",
    "ACmixBottleneck",
    "ACmixResNet",
    "acmix_resnet26",
    "acmix_resnet38",
    "acmix_resnet50",
    "CBAMResNet",
    "AttentionGate",
    "CBAM",
    "ChannelAttention",
    "ChannelGate",
    "JongchanCBAM",
    "ResBlockCBAM",
    "SELayer",
    "SelfAttention",
    "SpatialAttention",
    "SpatialGate",
]
