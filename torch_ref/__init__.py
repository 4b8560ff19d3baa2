"""PyTorch twins of the flaxattn modules (NCHW), same class names and arguments.

They follow each mechanism's upstream code and fix only what is broken there;
every fix is named in the class docstring ("Deviation from upstream: ...").
"""

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
from torch_ref.layers.dilate import DilateAttention, DilateBlock, MultiDilateLocalAttention
from torch_ref.layers.dilate import GlobalBlock as DilateGlobalBlock
from torch_ref.layers.dilate import Mlp as DilateMlp
from torch_ref.layers.se import SELayer
from torch_ref.layers.self_attention import SelfAttention
from torch_ref.models.cbam_resnet import CBAMResNet
from torch_ref.models.dilateformer import (
    DilateFormer,
    dilateformer_base,
    dilateformer_small,
    dilateformer_tiny,
)
from torch_ref.models.dilateformer import PatchEmbed as DilatePatchEmbed
from torch_ref.models.dilateformer import PatchMerging as DilatePatchMerging

__all__ = [
    "CBAMResNet",
    "AttentionGate",
    "CBAM",
    "ChannelAttention",
    "ChannelGate",
    "DilateAttention",
    "DilateBlock",
    "DilateFormer",
    "DilateGlobalBlock",
    "DilateMlp",
    "DilatePatchEmbed",
    "DilatePatchMerging",
    "JongchanCBAM",
    "MultiDilateLocalAttention",
    "ResBlockCBAM",
    "SELayer",
    "SelfAttention",
    "SpatialAttention",
    "SpatialGate",
    "dilateformer_base",
    "dilateformer_small",
    "dilateformer_tiny",
]
