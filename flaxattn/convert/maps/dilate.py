"""Conversion for DilateFormer: kwargs adapters for the torch_ref twins, upstream builders.

Upstream's key layout (JIAOJIAYUASD/dilateformer ``models/dilateformer.py``) equals
ours key for key and every tensor maps through the generic rules (the qkv
projection of the dilated attention is a 1x1 ``Conv2d``, OIHW -> HWIO), so there
are no special rules and no :class:`~flaxattn.convert.core.Layout` here.

Upstream modules record no constructor arguments: the builders read them off
attributes (``num_heads``, ``dilation``, ``kernel_size``, ``scale``, dropout
rates, LayerNorm eps) and weight shapes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from flax import nnx

from flaxattn.convert.builders import register_builder, register_kwargs_adapter
from flaxattn.layers import dilate as fl
from flaxattn.layers.basic import BatchNorm2d, LayerNorm, gelu
from flaxattn.models import dilateformer as fm

_ACTIVATIONS: dict[str, Callable] = {
    "GELU": gelu,
    "ReLU": nnx.relu,
    "SiLU": nnx.silu,
    "Identity": lambda x: x,
}
_NORMS: dict[str, Callable] = {"LayerNorm": LayerNorm, "BatchNorm2d": BatchNorm2d}


def _is_torch_class(value) -> bool:
    return isinstance(value, type) and value.__module__.startswith("torch.")


def _activation(value):
    """A torch activation class (``nn.GELU``) -> the Flax function; Flax callables pass."""
    if not _is_torch_class(value):
        return value
    if value.__name__ not in _ACTIVATIONS:
        raise ValueError(
            f"`act_layer` (={value.__name__}) has no Flax counterpart here; "
            f"known: {sorted(_ACTIVATIONS)}"
        )
    return _ACTIVATIONS[value.__name__]  # nn.GELU() is the exact erf form, as `gelu`


def _norm(value):
    """``nn.LayerNorm`` / ``partial(nn.LayerNorm, eps=1e-6)`` / ``nn.BatchNorm2d`` -> Flax."""
    if isinstance(value, functools.partial):
        return functools.partial(_norm(value.func), *value.args, **value.keywords)
    if not _is_torch_class(value):
        return value
    if value.__name__ not in _NORMS:
        raise ValueError(
            f"`norm_layer` (={value.__name__}) has no Flax counterpart here; "
            f"known: {sorted(_NORMS)}"
        )
    return _NORMS[value.__name__]


def _adapt(kwargs: dict) -> dict:
    kwargs = dict(kwargs)
    if "act_layer" in kwargs:
        kwargs["act_layer"] = _activation(kwargs["act_layer"])
    if "norm_layer" in kwargs:
        kwargs["norm_layer"] = _norm(kwargs["norm_layer"])
    return kwargs


for _cls in (
    fl.Mlp,
    fl.DilateBlock,
    fl.GlobalBlock,
    fm.PatchMerging,
    fm.DilateStage,
    fm.GlobalStage,
    fm.DilateFormer,
):
    register_kwargs_adapter(_cls)(_adapt)


# --- upstream builders ----------------------------------------------------------------------


def _norm_of(m) -> Callable:
    """The Flax norm factory that rebuilds the torch norm ``m`` (its eps and momentum)."""
    name = type(m).__name__
    if name == "LayerNorm":
        return LayerNorm if m.eps == 1e-5 else functools.partial(LayerNorm, eps=m.eps)
    if name == "BatchNorm2d":
        if m.eps == 1e-5 and m.momentum == 0.1:
            return BatchNorm2d
        return functools.partial(BatchNorm2d, eps=m.eps, momentum=m.momentum)
    raise ValueError(
        f"`norm_layer` (={name}) has no Flax counterpart here; known: {sorted(_NORMS)}"
    )


def _act_of(m) -> Callable:
    name = type(m).__name__
    if name == "GELU" and getattr(m, "approximate", "none") != "none":
        raise ValueError(f"`act_layer` (=GELU(approximate={m.approximate!r})) is not supported")
    return _activation(type(m))


def _scale_arg(scale: float, head_dim: int) -> float | None:
    return None if scale == head_dim**-0.5 else float(scale)


def _drop_prob(m) -> float:
    return float(getattr(m, "drop_prob", 0.0) or 0.0)  # DropPath, or Identity for 0


@register_builder("Mlp")
def _mlp(m):
    if not all(hasattr(m, a) for a in ("fc1", "act", "fc2", "drop")):
        return None
    return fl.Mlp, {
        "in_features": m.fc1.in_features,
        "hidden_features": m.fc1.out_features,
        "out_features": m.fc2.out_features,
        "act_layer": _act_of(m.act),
        "drop": float(m.drop.p),
    }


@register_builder("DilateAttention")
def _dilate_attention(m):
    if not hasattr(m, "unfold"):
        return None
    return fl.DilateAttention, {
        "head_dim": m.head_dim,
        "qk_scale": _scale_arg(m.scale, m.head_dim),
        "attn_drop": float(m.attn_drop.p),
        "kernel_size": m.kernel_size,
        "dilation": int(m.unfold.dilation),
    }


def _msda_kwargs(m) -> dict:
    first = m.dilate_attention[0]
    return {
        "num_heads": m.num_heads,
        "qkv_bias": m.qkv.bias is not None,
        "qk_scale": _scale_arg(m.scale, m.dim // m.num_heads),
        "attn_drop": float(first.attn_drop.p),
        "kernel_size": m.kernel_size,
        "dilation": [int(d) for d in m.dilation],
    }


@register_builder("MultiDilatelocalAttention")
def _msda(m):
    return fl.MultiDilateLocalAttention, {
        "dim": m.dim,
        **_msda_kwargs(m),
        "proj_drop": float(m.proj_drop.p),
    }


@register_builder("GlobalAttention")
def _global_attention(m):
    if not hasattr(m, "qkv") or not hasattr(m, "num_heads"):
        return None
    dim = m.qkv.in_features
    return fl.GlobalAttention, {
        "dim": dim,
        "num_heads": m.num_heads,
        "qkv_bias": m.qkv.bias is not None,
        "qk_scale": _scale_arg(m.scale, dim // m.num_heads),
        "attn_drop": float(m.attn_drop.p),
        "proj_drop": float(m.proj_drop.p),
    }


def _block_kwargs(m) -> dict:
    dim = m.norm1.normalized_shape[0]
    attn = m.attn
    return {
        "dim": dim,
        "num_heads": attn.num_heads,
        "mlp_ratio": m.mlp.fc1.out_features / dim,
        "qkv_bias": attn.qkv.bias is not None,
        "qk_scale": _scale_arg(attn.scale, dim // attn.num_heads),
        "drop": float(m.mlp.drop.p),
        "drop_path": _drop_prob(m.drop_path),
        "act_layer": _act_of(m.mlp.act),
        "norm_layer": _norm_of(m.norm1),
    }


@register_builder("DilateBlock")
def _dilate_block(m):
    kw = _block_kwargs(m)
    msda = _msda_kwargs(m.attn)
    return fl.DilateBlock, {
        **kw,
        "attn_drop": msda["attn_drop"],
        "kernel_size": msda["kernel_size"],
        "dilation": msda["dilation"],
        "cpe_per_block": bool(m.cpe_per_block),
    }


@register_builder("GlobalBlock")
def _global_block(m):
    if not hasattr(m, "cpe_per_block"):
        return None
    return fl.GlobalBlock, {
        **_block_kwargs(m),
        "attn_drop": float(m.attn.attn_drop.p),
        "cpe_per_block": bool(m.cpe_per_block),
    }


def _patch_way(m) -> tuple[str, dict]:
    proj = m.proj
    if type(proj).__name__ == "Conv2d":
        return "nonoverlaping", {
            "in_chans": proj.in_channels,
            "embed_dim": proj.out_channels,
            "patch_size": tuple(proj.kernel_size),
        }
    way = "overlaping" if tuple(proj[0].stride) == (1, 1) else "pointconv"
    return way, {
        "in_chans": proj[0].in_channels,
        "hidden_dim": proj[0].out_channels,
        "embed_dim": proj[len(proj) - 1].out_channels,
    }


@register_builder("PatchEmbed")
def _patch_embed(m):
    # timm's PatchEmbed has a `norm` and a `flatten`; DilateFormer's neither.
    if hasattr(m, "flatten") or hasattr(m, "norm") or not hasattr(m, "img_size"):
        return None
    way, kw = _patch_way(m)
    return fm.PatchEmbed, {"img_size": tuple(m.img_size), "patch_way": way, **kw}


def _merging_way(m) -> str:
    first = m.proj[0]
    if type(first).__name__ == "Conv2d":
        return f"conv{first.kernel_size[0]}_2"
    k = first.kernel_size if isinstance(first.kernel_size, int) else first.kernel_size[0]
    return f"avgpool{k}_2"


@register_builder("PatchMerging")
def _patch_merging(m):
    if not hasattr(m, "cpe_per_satge"):  # timm/Swin's PatchMerging is another module
        return None
    conv = [c for c in m.proj if type(c).__name__ == "Conv2d"][0]
    return fm.PatchMerging, {
        "in_channels": conv.in_channels,
        "out_channels": conv.out_channels,
        "merging_way": _merging_way(m),
        "cpe_per_stage": bool(m.cpe_per_satge),
        "norm_layer": _norm_of(m.proj[len(m.proj) - 1]),
    }


def _stage_kwargs(m) -> dict:
    blk = m.blocks[0]
    kw = _block_kwargs(blk)
    kw.pop("dim")
    down = m.downsample
    has_down = hasattr(down, "proj")
    return {
        "dim": blk.norm1.normalized_shape[0],
        "depth": len(m.blocks),
        **kw,
        "attn_drop": float(
            (
                blk.attn.dilate_attention[0] if hasattr(blk.attn, "dilate_attention") else blk.attn
            ).attn_drop.p
        ),
        "drop_path": [_drop_prob(b.drop_path) for b in m.blocks],
        "cpe_per_stage": bool(down.cpe_per_satge) if has_down else False,
        "cpe_per_block": bool(blk.cpe_per_block),
        "downsample": has_down,
        "merging_way": _merging_way(down) if has_down else "conv3_2",
    }


@register_builder("Dilatestage")
def _dilate_stage(m):
    kw = _stage_kwargs(m)
    msda = _msda_kwargs(m.blocks[0].attn)
    return fm.DilateStage, {
        **kw,
        "kernel_size": msda["kernel_size"],
        "dilation": msda["dilation"],
    }


@register_builder("Globalstage")
def _global_stage(m):
    return fm.GlobalStage, _stage_kwargs(m)


@register_builder("Dilateformer")
def _dilateformer(m):
    stages = [_stage_kwargs(s) for s in m.stages]
    dilated = [type(s).__name__ == "Dilatestage" for s in m.stages]
    msda = next(
        (_msda_kwargs(s.blocks[0].attn) for s, d in zip(m.stages, dilated, strict=True) if d),
        {"kernel_size": 3, "dilation": [1, 2, 3]},
    )
    way, stem = _patch_way(m.patch_embed)
    rates = [r for s in stages for r in s["drop_path"]]
    head = m.head if type(m.head).__name__ == "Linear" else None
    return fm.DilateFormer, {
        "img_size": tuple(m.patch_embed.img_size),
        "patch_size": stem.get("patch_size", 4),
        "in_chans": stem["in_chans"],
        "num_classes": head.out_features if head is not None else 0,
        "embed_dim": m.embed_dim,
        "depths": [s["depth"] for s in stages],
        "num_heads": [s["num_heads"] for s in stages],
        "kernel_size": msda["kernel_size"],
        "dilation": msda["dilation"],
        "mlp_ratio": m.mlp_ratio,
        "qkv_bias": stages[0]["qkv_bias"],
        "qk_scale": stages[0]["qk_scale"],
        "drop": stages[0]["drop"],
        "attn_drop": stages[0]["attn_drop"],
        # linspace(0, drop_path, n): the last block holds the rate itself.
        "drop_path": rates[-1],
        "norm_layer": _norm_of(m.norm),
        "merging_way": next((s["merging_way"] for s in stages if s["downsample"]), "conv3_2"),
        "patch_way": way,
        "dilate_attention": dilated,
        "downsamples": [s["downsample"] for s in stages],
        "cpe_per_stage": stages[0]["cpe_per_stage"],
        "cpe_per_block": stages[0]["cpe_per_block"],
    }
