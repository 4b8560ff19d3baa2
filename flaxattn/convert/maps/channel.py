"""Upstream builders for the channel/spatial family.

Upstream modules record no constructor arguments, so each builder reads them off
weight shapes. All three upstream layouts equal ours key for key.
"""

from __future__ import annotations

from flaxattn.convert.builders import register_builder
from flaxattn.layers.attention_gate import AttentionGate
from flaxattn.layers.cbam import JongchanCBAM
from flaxattn.layers.se import SELayer


@register_builder("SELayer")  # moskomule/senet.pytorch senet/se_module.py
def _se(m):
    hidden, channel = m.fc[0].weight.shape
    return SELayer, {"channel": channel, "reduction": channel // hidden}


@register_builder("CBAM")  # Jongchan/attention-module MODELS/cbam.py
def _jongchan_cbam(m):
    gate = getattr(m, "ChannelGate", None)
    if gate is None:
        return None
    hidden, channel = gate.mlp[1].weight.shape
    return JongchanCBAM, {
        "gate_channels": channel,
        "reduction_ratio": channel // hidden,
        "pool_types": tuple(gate.pool_types),
        "no_spatial": bool(m.no_spatial),
    }


@register_builder("Attention_block")  # LeeJunHyun/Image_Segmentation network.py
def _attention_block(m):
    f_int, f_g = m.W_g[0].weight.shape[:2]
    f_l = m.W_x[0].weight.shape[1]
    return AttentionGate, {"F_g": f_g, "F_l": f_l, "F_int": f_int}
