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
from flaxattn.layers.dilate import DilateAttention, DilateBlock, MultiDilateLocalAttention
from flaxattn.layers.dilate import GlobalBlock as DilateGlobalBlock
from flaxattn.layers.dilate import Mlp as DilateMlp
from flaxattn.layers.se import SELayer
from flaxattn.layers.self_attention import SelfAttention
from flaxattn.models.cbam_resnet import CBAMResNet
from flaxattn.models.dilateformer import (
    DilateFormer,
    dilateformer_base,
    dilateformer_small,
    dilateformer_tiny,
)
from flaxattn.models.dilateformer import PatchEmbed as DilatePatchEmbed
from flaxattn.models.dilateformer import PatchMerging as DilatePatchMerging
from flaxattn.ops.nn import BatchNorm, Conv2d, DropPath, LayerNorm, Linear

__version__ = "0.1.0"

__all__ = [
    "CBAMResNet",
    "AttentionGate",
    "BatchNorm",
    "CBAM",
    "ChannelAttention",
    "ChannelGate",
    "Conv2d",
    "DilateAttention",
    "DilateBlock",
    "DilateFormer",
    "DilateGlobalBlock",
    "DilateMlp",
    "DilatePatchEmbed",
    "DilatePatchMerging",
    "DropPath",
    "JongchanCBAM",
    "LayerNorm",
    "Linear",
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
