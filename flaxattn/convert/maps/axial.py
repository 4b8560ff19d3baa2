"""Conversion for the axial family (lucidrains/axial-attention and its torch_ref twins).

- Keys: the twins mirror upstream's module tree, so upstream state_dicts are the
  canonical layout, for the reversible transformer (``layers.blocks.{i}.{f,g}.net...``)
  and the non-reversible one (``layers.blocks.{i}.{0,1}...``) alike.
- ``ChanLayerNorm.g``/``b``: ``(dim,)`` in Flax, ``(1, dim, 1, 1)`` in PyTorch.
- Builders read an upstream module's configuration off its attributes and
  weights; ``dim_heads`` is always passed explicitly.
- ``dim_index`` is kept as it is (see ``flaxattn.layers.axial``). The positional
  embedding's parameter shapes follow it; a state_dict saved with the embedding
  on axis 1 (upstream's default) loads into a channels-last module with
  ``load_state_dict(module, sd, layout="channels_first")`` and the other way
  round with ``layout="channels_last"``; the module then exports that layout
  back. Nothing else in these modules depends on the layout.
"""

from __future__ import annotations

import numpy as np

from flaxattn.convert.builders import register_builder
from flaxattn.convert.core import Layout, leaf, register_layout, register_rule
from flaxattn.layers.axial import (
    AxialAttention,
    AxialImageTransformer,
    AxialPositionalEmbedding,
    ChanLayerNorm,
    SelfAttention,
)


def _chan_to_torch(a: np.ndarray) -> np.ndarray:
    return a.reshape(1, -1, 1, 1)


def _chan_to_flax(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1)


@register_rule(ChanLayerNorm)
def chan_layer_norm_rule(m, prefix, path):
    return leaf(m, prefix, path, "g", "g", _chan_to_flax, _chan_to_torch) + leaf(
        m, prefix, path, "b", "b", _chan_to_flax, _chan_to_torch
    )


# --- positional-embedding layouts ------------------------------------------------------


def _pos_emb(module) -> tuple[AxialPositionalEmbedding | None, str]:
    if isinstance(module, AxialPositionalEmbedding):
        return module, ""
    return getattr(module, "pos_emb", None), "pos_emb."


def _move_pos_emb(sd: dict, module, *, to_module: bool, emb_axis: int) -> dict:
    pe, prefix = _pos_emb(module)
    if pe is None:
        return dict(sd)
    out = dict(sd)
    for i in range(pe.num_axials):
        key = f"{prefix}param_{i}"
        if key in out:
            src, dst = (emb_axis, pe.emb) if to_module else (pe.emb, emb_axis)
            out[key] = np.moveaxis(np.asarray(out[key]), src, dst)
    return out


def _emb_layout(name: str, emb_axis: int) -> Layout:
    # Same keys as the canonical layout, so never recognised automatically: name it.
    return Layout(
        name,
        matches=lambda keys: False,
        to_canonical=lambda sd, m: _move_pos_emb(sd, m, to_module=True, emb_axis=emb_axis),
        from_canonical=lambda sd, m: _move_pos_emb(sd, m, to_module=False, emb_axis=emb_axis),
    )


for _cls in (AxialImageTransformer, AxialPositionalEmbedding):
    register_layout(_cls, _emb_layout("channels_first", 1))
    register_layout(_cls, _emb_layout("channels_last", -1))


# --- upstream builders (axial_attention 0.6.1) ---------------------------------------------


def _is_upstream(m) -> bool:
    return type(m).__module__.startswith("axial_attention")


def _self_attention_kwargs(sa) -> dict:
    return {"heads": sa.heads, "dim_heads": sa.dim_heads}


@register_builder("SelfAttention")
def _self_attention(m):
    if not _is_upstream(m):
        return None
    return SelfAttention, {"dim": m.to_q.in_features, **_self_attention_kwargs(m)}


@register_builder("ChanLayerNorm")
def _chan_layer_norm(m):
    if not _is_upstream(m):
        return None
    return ChanLayerNorm, {"dim": m.g.shape[1], "eps": m.eps}


@register_builder("AxialAttention")
def _axial_attention(m):
    if not _is_upstream(m):
        return None
    first = m.axial_attentions[0]
    return AxialAttention, {
        "dim": m.dim,
        "num_dimensions": m.total_dimensions - 2,
        **_self_attention_kwargs(first.fn),
        "dim_index": m.dim_index,
        "sum_axial_out": m.sum_axial_out,
    }


def _pos_emb_config(m) -> tuple[int, tuple[int, ...], int]:
    """``(dim, shape, emb_dim_index)`` of an upstream positional embedding.

    Upstream keeps no index: it is the axis on which every ``param_{i}`` has
    the embedding size and the remaining axes hold the axial sizes in order.
    When several axes fit (the embedding size equals an axial size), the
    parameter shapes, hence the function, are the same for each; take the first.
    """
    shapes = [tuple(getattr(m, f"param_{i}").shape) for i in range(m.num_axials)]
    total = len(shapes[0])
    for emb in range(1, total):
        axial = [a for a in range(1, total) if a != emb]
        dim = shapes[0][emb]
        sizes = tuple(s[a] for s, a in zip(shapes, axial, strict=False))
        expected = []
        for size, axis in zip(sizes, axial, strict=False):
            shape = [1] * total
            shape[emb] = dim
            shape[axis] = size
            expected.append(tuple(shape))
        if expected == shapes:
            return dim, sizes, emb
    raise ValueError(f"from_torch: unrecognised AxialPositionalEmbedding parameter shapes {shapes}")


@register_builder("AxialPositionalEmbedding")
def _axial_pos_emb(m):
    if not _is_upstream(m):
        return None
    dim, shape, emb = _pos_emb_config(m)
    return AxialPositionalEmbedding, {"dim": dim, "shape": shape, "emb_dim_index": emb}


@register_builder("AxialImageTransformer")
def _axial_image_transformer(m):
    if not _is_upstream(m):
        return None
    layers = m.layers
    reversible = type(layers).__name__ == "ReversibleSequence"
    first = layers.blocks[0]
    attn = first.f.net if reversible else first[0]  # PermuteToFrom(PreNorm(SelfAttention))
    dim_index = attn.permutation[-1]
    shape = None
    if type(m.pos_emb).__name__ == "AxialPositionalEmbedding":
        _, shape, _ = _pos_emb_config(m.pos_emb)
    return AxialImageTransformer, {
        "dim": attn.fn.norm.normalized_shape[0],
        "depth": len(layers.blocks) // 2,
        **_self_attention_kwargs(attn.fn.fn),
        "dim_index": dim_index,
        "reversible": reversible,
        "axial_pos_emb_shape": shape,
    }
