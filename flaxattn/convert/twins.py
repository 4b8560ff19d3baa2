"""Which Flax class is the twin of which torch_ref class: one explicit table.

:func:`flaxattn.convert.from_torch` looks a torch_ref module's class up here (by its
import path) to find the Flax class to build; nothing rewrites module paths.
``tests/test_twins.py`` walks every ``torch_ref`` twin class and checks that it is in the
table, that its Flax twin exists, and that the two constructors take the same arguments.
A new mechanism adds its classes here. Upstream classes (``vit_pytorch.ViT``...) are not
twins: each family registers a builder for them (``flaxattn/convert/maps``).
"""

from __future__ import annotations

from flaxattn.registry import resolve

# torch_ref class path (under ``torch_ref``) -> Flax class path (under ``flaxattn``).
TWINS: dict[str, str] = {
    "layers.aa_conv.AugmentedConv": "layers.aa_conv.AugmentedConv",
    "layers.acmix.ACmix": "layers.acmix.ACmix",
    "layers.attention_gate.AttentionGate": "layers.attention_gate.AttentionGate",
    "layers.axial.AxialAttention": "layers.axial.AxialAttention",
    "layers.axial.AxialImageTransformer": "layers.axial.AxialImageTransformer",
    "layers.axial.AxialPositionalEmbedding": "layers.axial.AxialPositionalEmbedding",
    "layers.axial.ChanLayerNorm": "layers.axial.ChanLayerNorm",
    "layers.axial.PermuteToFrom": "layers.axial.PermuteToFrom",
    "layers.axial.PreNorm": "layers.axial.PreNorm",
    "layers.axial.SelfAttention": "layers.axial.SelfAttention",
    "layers.axial.Sequential": "layers.axial.Sequential",
    "layers.cbam.CBAM": "layers.cbam.CBAM",
    "layers.cbam.ChannelAttention": "layers.cbam.ChannelAttention",
    "layers.cbam.ChannelGate": "layers.cbam.ChannelGate",
    "layers.cbam.JongchanCBAM": "layers.cbam.JongchanCBAM",
    "layers.cbam.ResBlockCBAM": "layers.cbam.ResBlockCBAM",
    "layers.cbam.SpatialAttention": "layers.cbam.SpatialAttention",
    "layers.cbam.SpatialGate": "layers.cbam.SpatialGate",
    "layers.dilate.DilateAttention": "layers.dilate.DilateAttention",
    "layers.dilate.DilateBlock": "layers.dilate.DilateBlock",
    "layers.dilate.GlobalAttention": "layers.dilate.GlobalAttention",
    "layers.dilate.GlobalBlock": "layers.dilate.GlobalBlock",
    "layers.dilate.Mlp": "layers.dilate.Mlp",
    "layers.dilate.MultiDilateLocalAttention": "layers.dilate.MultiDilateLocalAttention",
    "layers.reversible.ReversibleSequence": "layers.reversible.ReversibleSequence",
    "layers.se.SELayer": "layers.se.SELayer",
    "layers.self_attention.SelfAttention": "layers.self_attention.SelfAttention",
    "layers.vit.Attention": "layers.vit.Attention",
    "layers.vit.FeedForward": "layers.vit.FeedForward",
    "layers.vit.PreNorm": "layers.vit.PreNorm",
    "layers.vit.Transformer": "layers.vit.Transformer",
    "layers.vit.ViT": "layers.vit.ViT",
    "models.aa_wide_resnet.AAWideResNet": "models.aa_wide_resnet.AAWideResNet",
    "models.aa_wide_resnet.WideBasic": "models.aa_wide_resnet.WideBasic",
    "models.acmix_resnet.ACmixResNet": "models.acmix_resnet.ACmixResNet",
    "models.acmix_resnet.Bottleneck": "models.acmix_resnet.Bottleneck",
    "models.axial_classifier.AxialClassifier": "models.axial_classifier.AxialClassifier",
    "models.cbam_resnet.CBAMResNet": "models.cbam_resnet.CBAMResNet",
    "models.dilateformer.DilateFormer": "models.dilateformer.DilateFormer",
    "models.dilateformer.DilateStage": "models.dilateformer.DilateStage",
    "models.dilateformer.GlobalStage": "models.dilateformer.GlobalStage",
    "models.dilateformer.PatchEmbed": "models.dilateformer.PatchEmbed",
    "models.dilateformer.PatchMerging": "models.dilateformer.PatchMerging",
}


def flax_twin(torch_cls: type) -> type | None:
    """The Flax class of a torch_ref class, or ``None`` when it has no entry."""
    module = torch_cls.__module__
    if not module.startswith("torch_ref."):
        return None
    path = TWINS.get(f"{module[len('torch_ref.') :]}.{torch_cls.__qualname__}")
    return None if path is None else resolve(path, "flaxattn")


# Top-level names of ``flaxattn`` with no torch_ref twin: every other name of
# ``flaxattn.__all__`` is also in ``torch_ref.__all__``, and is the twin of it
# (``tests/test_twins.py`` checks both lists against this table and TWINS).
FLAX_ONLY: tuple[str, ...] = (
    "BatchNorm",
    "Conv2d",
    "DropPath",
    "Dropout",
    "LayerNorm",
    "Linear",
    "local_attention",
)
