"""flaxattn: vision attention mechanisms in JAX/Flax NNX with PyTorch twins.

Importing flaxattn never imports torch. Modules are channels-last (images
``(B, H, W, C)``); ``flaxattn.convert`` maps weights to and from PyTorch and
``flaxattn.parity`` proves two twins compute the same outputs and gradients.
"""

from flaxattn.layers.aa_conv import AugmentedConv
from flaxattn.layers.acmix import ACmix
from flaxattn.layers.attention_gate import AttentionGate
from flaxattn.layers.axial import (
    AxialAttention,
    AxialImageTransformer,
    AxialPositionalEmbedding,
    ChanLayerNorm,
)
from flaxattn.layers.axial import PermuteToFrom as AxialPermuteToFrom
from flaxattn.layers.axial import PreNorm as AxialPreNorm
from flaxattn.layers.axial import SelfAttention as AxialSelfAttention
from flaxattn.layers.axial import Sequential as AxialSequential
from flaxattn.layers.basic import BatchNorm, Conv2d, Dropout, DropPath, LayerNorm, Linear
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
from flaxattn.layers.reversible import ReversibleBlock, ReversibleSequence
from flaxattn.layers.se import SELayer
from flaxattn.layers.self_attention import SelfAttention
from flaxattn.layers.vit import Attention, FeedForward, PreNorm, Transformer, ViT
from flaxattn.models.aa_wide_resnet import AAWideResNet
from flaxattn.models.acmix_resnet import (
    ACmixResNet,
    acmix_resnet26,
    acmix_resnet38,
    acmix_resnet50,
)
from flaxattn.models.acmix_resnet import Bottleneck as ACmixBottleneck
from flaxattn.models.axial_classifier import AxialClassifier
from flaxattn.models.cbam_resnet import CBAMResNet
from flaxattn.models.dilateformer import (
    DilateFormer,
    dilateformer_base,
    dilateformer_small,
    dilateformer_tiny,
)
from flaxattn.models.dilateformer import PatchEmbed as DilatePatchEmbed
from flaxattn.models.dilateformer import PatchMerging as DilatePatchMerging
from flaxattn.ops.local import local_attention

__version__ = "0.1.0"

__all__ = [
    "AAWideResNet",
    "ACmix",
    "acmix_resnet26",
    "acmix_resnet38",
    "acmix_resnet50",
    "ACmixBottleneck",
    "ACmixResNet",
    "Attention",
    "AttentionGate",
    "AugmentedConv",
    "AxialAttention",
    "AxialClassifier",
    "AxialImageTransformer",
    "AxialPermuteToFrom",
    "AxialPositionalEmbedding",
    "AxialPreNorm",
    "AxialSelfAttention",
    "AxialSequential",
    "BatchNorm",
    "CBAM",
    "CBAMResNet",
    "ChanLayerNorm",
    "ChannelAttention",
    "ChannelGate",
    "Conv2d",
    "DilateAttention",
    "DilateBlock",
    "DilateFormer",
    "dilateformer_base",
    "dilateformer_small",
    "dilateformer_tiny",
    "DilateGlobalBlock",
    "DilateMlp",
    "DilatePatchEmbed",
    "DilatePatchMerging",
    "DropPath",
    "Dropout",
    "FeedForward",
    "JongchanCBAM",
    "LayerNorm",
    "Linear",
    "local_attention",
    "MultiDilateLocalAttention",
    "PreNorm",
    "ResBlockCBAM",
    "ReversibleBlock",
    "ReversibleSequence",
    "SELayer",
    "SelfAttention",
    "SpatialAttention",
    "SpatialGate",
    "Transformer",
    "ViT",
]
