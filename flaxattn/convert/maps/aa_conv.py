"""Conversion for the attention-augmented convolution family.

Our keys equal upstream's (leaderj1001/Attention-Augmented-Conv2d): ``conv_out``,
``qkv_conv``, ``attn_out``, ``key_rel_w``, ``key_rel_h``; the Wide-ResNet's
``layer1.0.0.conv1.*``. The generic Conv/BatchNorm/Linear rules cover every
tensor, so there are no special rules here, only:

- builders for upstream's ``AugmentedConv``, ``wide_basic`` and ``Wide_ResNet``,
  which read their configuration off the modules' attributes;
- a layout for upstream state_dicts of ``dv = 0`` / ``dv = out_channels`` modules
  (which upstream builds but cannot run): they carry zero-size ``conv_out`` or
  ``attn_out`` tensors, and for ``dv = 0`` an attention branch that contributes no
  output channel. Ours has no such tensors; loading drops them, export writes them
  back (zeros for the unused attention weights).
"""

from __future__ import annotations

import numpy as np

from flaxattn.convert.builders import register_builder
from flaxattn.convert.core import Layout, register_layout
from flaxattn.layers.aa_conv import AugmentedConv
from flaxattn.models.aa_wide_resnet import AAWideResNet, WideBasic

_ATTENTION_KEYS = (
    "qkv_conv.weight",
    "qkv_conv.bias",
    "attn_out.weight",
    "attn_out.bias",
    "key_rel_w",
    "key_rel_h",
)


@register_builder("AugmentedConv")  # attention_augmented_conv.py
def _augmented_conv(m):
    k = m.kernel_size
    pad = (k - 1) // 2
    if m.qkv_conv.kernel_size != (k, k) or m.qkv_conv.padding != (pad, pad):
        raise ValueError(
            f"from_torch: this upstream AugmentedConv has a {m.qkv_conv.kernel_size} qkv_conv "
            f"with padding {m.qkv_conv.padding}; only the current upstream revision "
            f"(qkv_conv with the full kernel {(k, k)} and padding {(pad, pad)}) is supported"
        )
    return AugmentedConv, {
        "in_channels": m.in_channels,
        "out_channels": m.out_channels,
        "kernel_size": k,
        "dk": m.dk,
        "dv": m.dv,
        "Nh": m.Nh,
        "shape": m.shape,
        "relative": bool(m.relative),
        "stride": m.stride,
    }


def _v_for(dv: int, planes: int) -> float:
    """A ``v`` with ``int(v * planes) == dv`` (``dv / planes`` may round down by one)."""
    v = dv / planes
    return v if int(v * planes) == dv else (dv + 0.5) / planes


@register_builder("wide_basic")  # AA-Wide-ResNet/attention_augmented_wide_resnet.py
def _wide_basic(m):
    c1 = m.conv1
    planes = c1.out_channels
    if c1.dk % planes:
        raise ValueError(f"from_torch: wide_basic `dk` (={c1.dk}) is not a multiple of {planes}")
    return WideBasic, {
        "in_planes": c1.in_channels,
        "planes": planes,
        "dropout_rate": m.dropout.p,
        "in_shape": c1.shape,  # upstream's `original_shape`: the input size
        "stride": m.conv2.stride,
        "v": _v_for(c1.dv, planes),
        "k": c1.dk // planes,
        "Nh": c1.Nh,
    }


@register_builder("Wide_ResNet")  # AA-Wide-ResNet/attention_augmented_wide_resnet.py
def _wide_resnet(m):
    blocks = m.layer1[0]
    return AAWideResNet, {
        "depth": 6 * len(blocks) + 4,
        "widen_factor": m.linear.in_features // 60,
        "dropout_rate": blocks[0].dropout.p,
        "num_classes": m.linear.out_features,
        "shape": m.shape,
        "in_channels": m.conv1.in_channels,
    }


def _degenerate_to_canonical(sd: dict, module: AugmentedConv) -> dict:
    drop = set()
    if module.conv_out is None:
        drop |= {k for k in ("conv_out.weight", "conv_out.bias") if k in sd and sd[k].size == 0}
    if module.dv == 0:
        drop |= set(_ATTENTION_KEYS) & set(sd)
    return {k: v for k, v in sd.items() if k not in drop}


def _degenerate_from_canonical(sd: dict, module: AugmentedConv) -> dict:
    out = dict(sd)
    c, k = module.in_channels, module.kernel_size
    dt = next(iter(sd.values())).dtype if sd else np.float32

    def zeros(*shape):
        return np.zeros(shape, dt)

    if module.conv_out is None:
        out["conv_out.weight"] = zeros(0, c, k, k)
        out["conv_out.bias"] = zeros(0)
    if module.dv == 0:
        dk = module.dk
        out["qkv_conv.weight"] = zeros(2 * dk, c, k, k)
        out["qkv_conv.bias"] = zeros(2 * dk)
        out["attn_out.weight"] = zeros(0, 0, 1, 1)
        out["attn_out.bias"] = zeros(0)
        h, w = module.shape
        if module.relative and h > 0 and w > 0:
            out["key_rel_w"] = zeros(2 * w - 1, dk // module.Nh)
            out["key_rel_h"] = zeros(2 * h - 1, dk // module.Nh)
    return out


register_layout(
    AugmentedConv,
    Layout(
        "upstream_degenerate",
        # Upstream always has all three convolutions; ours lacks one when dv is 0 or
        # out_channels (this is only tried when the keys are not our canonical ones).
        lambda keys: {"conv_out.weight", "qkv_conv.weight", "attn_out.weight"} <= keys,
        _degenerate_to_canonical,
        _degenerate_from_canonical,
    ),
)
