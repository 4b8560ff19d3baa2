"""PyTorch twins of the flaxattn modules (NCHW), same class names and arguments.

They follow each mechanism's upstream code and fix only what is broken there;
every fix is named in the class docstring ("Deviation from upstream: ...").
"""

from torch_ref.layers.aa_conv import AugmentedConv
from torch_ref.layers.acmix import ACmix
from torch_ref.layers.attention_gate import AttentionGate
from torch_ref.layers.axial import (
    AxialAttention,
    AxialImageTransformer,
    AxialPositionalEmbedding,
    ChanLayerNorm,
)
from torch_ref.layers.axial import PermuteToFrom as AxialPermuteToFrom
from torch_ref.layers.axial import PreNorm as AxialPreNorm
from torch_ref.layers.axial import SelfAttention as AxialSelfAttention
from torch_ref.layers.axial import Sequential as AxialSequential
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
from torch_ref.layers.reversible import ReversibleBlock, ReversibleSequence
from torch_ref.layers.se import SELayer
from torch_ref.layers.self_attention import SelfAttention
from torch_ref.layers.vit import Attention, FeedForward, PreNorm, Transformer, ViT
from torch_ref.models.aa_wide_resnet import AAWideResNet
from torch_ref.models.acmix_resnet import (
    ACmixResNet,
    acmix_resnet26,
    acmix_resnet38,
    acmix_resnet50,
)
from torch_ref.models.acmix_resnet import Bottleneck as ACmixBottleneck
from torch_ref.models.axial_classifier import AxialClassifier
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
    "CBAM",
    "CBAMResNet",
    "ChanLayerNorm",
    "ChannelAttention",
    "ChannelGate",
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
    "FeedForward",
    "JongchanCBAM",
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
