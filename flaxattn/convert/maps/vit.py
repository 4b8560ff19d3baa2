"""ViT: the vit-pytorch builder and key layouts of every vit-pytorch release.

Our canonical layout is vit-pytorch 0.10-0.40's (``PreNorm``
wrappers, ``mlp_head.0`` LayerNorm + ``mlp_head.1`` Linear); with
``patch_norm=True`` it is also 1.0-1.3's (``to_patch_embedding.1/.2/.3``).
The other releases, read off the history of ``vit_pytorch/vit.py``:

| releases       | keys (``transformer.layers.{i}`` written ``L{i}``)                       |
|----------------|---------------------------------------------------------------------------|
| 0.3.0-0.6.x    | ``patch_to_embedding``; ``Residual`` wrappers: ``L{i}.{j}.fn.norm``,       |
|                | ``L{i}.0.fn.fn.to_qkv``, ``L{i}.1.fn.fn.net.0``                           |
| 0.7.0-0.9.x    | ``to_patch_embedding.1``; the same ``Residual`` wrappers                  |
| 0.10.0-1.3.x   | canonical (1.0: LayerNorms around the patch projection)                   |
| 1.4.0-1.16.0   | no ``PreNorm``: ``L{i}.0.norm``, ``L{i}.0.to_qkv``, ``L{i}.1.net.0`` (the |
|                | LayerNorm), ``L{i}.1.net.1/.4``; ``transformer.norm``; ``mlp_head`` Linear |
|                | (1.16.0, mean pooling: ``cls_token`` of shape ``(1, 0, dim)``)            |
| 1.16.1-        | as 1.4, ``cls_token`` ``(1|0, dim)`` and ``pos_embedding`` ``(N, dim)``   |
|                | without the batch axis; 1.17.2: ``num_classes=0`` has no ``mlp_head``     |

Releases before 0.3.0 (October-November 2020) had a hidden layer in
``mlp_head`` and are not supported. 0.3.0-0.6.6 scaled the logits by
``dim ** -0.5``, which their keys cannot tell: load those checkpoints into a
``ViT(scale=dim ** -0.5)``; ``from_torch`` reads the scale off the module.
Functional differences (patch norms, where the final norm sits, mean pooling
with or without a cls token) are :class:`flaxattn.ViT` arguments; the layouts
below only rename and reshape.
"""

from __future__ import annotations

import math
import re

import numpy as np

from flaxattn.convert.builders import from_torch, register_builder, register_kwargs_adapter
from flaxattn.convert.core import Layout, register_layout
from flaxattn.layers.vit import PreNorm, ViT

# --- torch_ref.PreNorm: its `fn` argument is a torch module -----------------------------


@register_kwargs_adapter(PreNorm)
def _prenorm_kwargs(kwargs: dict) -> dict:
    return {**kwargs, "fn": from_torch(kwargs["fn"])}


# --- key layouts ------------------------------------------------------------------------

_BLOCK = re.compile(r"^transformer\.layers\.(\d+)\.([01])\.(.*)$")


def _residual_wrap(key: str) -> str:
    """canonical -> 0.3-0.9: each PreNorm sat in a ``Residual(fn)``."""
    m = _BLOCK.match(key)
    return f"transformer.layers.{m[1]}.{m[2]}.fn.{m[3]}" if m else key


def _residual_unwrap(key: str) -> str:
    m = _BLOCK.match(key)
    if m and m[3].startswith("fn."):
        return f"transformer.layers.{m[1]}.{m[2]}.{m[3][3:]}"
    return key


_PATCH_OLD, _PATCH_NEW = "patch_to_embedding.", "to_patch_embedding.1."

# canonical <-> 1.4+, inside block i: (canonical suffix, upstream suffix)
_NO_PRENORM = (
    ("0.norm.", "0.norm."),
    ("0.fn.", "0."),
    ("1.norm.", "1.net.0."),
    ("1.fn.net.0.", "1.net.1."),
    ("1.fn.net.3.", "1.net.4."),
)


def _strip_prenorm(key: str) -> str:
    m = _BLOCK.match(key)
    if m:
        rest = f"{m[2]}.{m[3]}"
        for ours, theirs in _NO_PRENORM:
            if rest.startswith(ours):
                return f"transformer.layers.{m[1]}.{theirs}{rest[len(ours) :]}"
    return key


def _add_prenorm(key: str) -> str:
    m = _BLOCK.match(key)
    if m:
        rest = f"{m[2]}.{m[3]}"
        # Longest upstream prefix first: "0.norm." before "0.".
        for ours, theirs in sorted(_NO_PRENORM, key=lambda p: -len(p[1])):
            if rest.startswith(theirs):
                return f"transformer.layers.{m[1]}.{ours}{rest[len(theirs) :]}"
    return key


def _rename(sd: dict, fn) -> dict:
    return {fn(k): v for k, v in sd.items()}


def _pre07_to_canonical(sd, module):
    sd = _rename(sd, _residual_unwrap)
    return _rename(
        sd, lambda k: _PATCH_NEW + k[len(_PATCH_OLD) :] if k.startswith(_PATCH_OLD) else k
    )


def _pre07_from_canonical(sd, module):
    sd = _rename(sd, lambda k: _PATCH_OLD + k[len(_PATCH_NEW) :] if k.startswith(_PATCH_NEW) else k)
    return _rename(sd, _residual_wrap)


def _unbatched(keys) -> bool:
    return len(keys.shapes.get("pos_embedding", ())) == 2


def _has_block_key(keys, pattern: str) -> bool:
    rx = re.compile(pattern)
    return any(rx.match(k) for k in keys)


def _v14_to_canonical(sd, module, unbatched: bool):
    sd = _rename(sd, _add_prenorm)
    if unbatched:
        sd = {k: v[None] if k in ("pos_embedding", "cls_token") else v for k, v in sd.items()}
    cls = sd.get("cls_token")
    # Mean pooling without a cls token: upstream keeps an empty (.., 0, dim) table.
    if cls is not None and cls.size == 0 and module.cls_token is None:
        del sd["cls_token"]
    return sd


def _v14_from_canonical(sd, module, unbatched: bool):
    sd = _rename(sd, _strip_prenorm)
    if "pos_embedding" in sd and "cls_token" not in sd:
        pos = sd["pos_embedding"]
        sd["cls_token"] = np.zeros((1, 0, pos.shape[-1]), pos.dtype)
    if unbatched:
        sd = {k: v[0] if k in ("pos_embedding", "cls_token") else v for k, v in sd.items()}
    return sd


_RESIDUAL_KEY = r"^transformer\.layers\.\d+\.\d\.fn\.norm\."
_FLAT_ATTN_KEY = r"^transformer\.layers\.\d+\.0\.to_qkv\.weight$"

register_layout(
    ViT,
    Layout(
        "vit-pytorch 0.3-0.6",
        lambda keys: any(k.startswith(_PATCH_OLD) for k in keys),
        _pre07_to_canonical,
        _pre07_from_canonical,
    ),
)
register_layout(
    ViT,
    Layout(
        "vit-pytorch 0.7-0.9",
        lambda keys: _has_block_key(keys, _RESIDUAL_KEY),
        lambda sd, m: _rename(sd, _residual_unwrap),
        lambda sd, m: _rename(sd, _residual_wrap),
    ),
)
register_layout(
    ViT,
    Layout(
        "vit-pytorch 1.4-1.16.0",
        lambda keys: _has_block_key(keys, _FLAT_ATTN_KEY) and not _unbatched(keys),
        lambda sd, m: _v14_to_canonical(sd, m, False),
        lambda sd, m: _v14_from_canonical(sd, m, False),
    ),
)
register_layout(
    ViT,
    Layout(
        "vit-pytorch 1.16.1+",
        lambda keys: _has_block_key(keys, _FLAT_ATTN_KEY) and _unbatched(keys),
        lambda sd, m: _v14_to_canonical(sd, m, True),
        lambda sd, m: _v14_from_canonical(sd, m, True),
    ),
)


# --- from_torch(vit_pytorch.ViT(...)) ---------------------------------------------------


def _unwrap(m):
    """Through vit-pytorch's ``Residual``/``PreNorm`` wrappers (both keep ``fn``)."""
    while hasattr(m, "fn"):
        m = m.fn
    return m


def _of_type(modules, name: str) -> list:
    return [m for m in modules if type(m).__name__ == name]


@register_builder("ViT")  # lucidrains/vit-pytorch vit_pytorch/vit.py, releases 0.3.0 on
def _vit_pytorch(m):
    if not (hasattr(m, "pos_embedding") and hasattr(m, "transformer")):
        return None
    if hasattr(m, "to_patch_embedding"):
        embed = list(m.to_patch_embedding)
        lengths = embed[0].axes_lengths
        ph, pw = lengths["p1"], lengths["p2"]
    else:  # 0.3-0.6: a bare Linear and an int patch size
        embed = [m.patch_to_embedding]
        ph = pw = m.patch_size
    (linear,) = _of_type(embed, "Linear")
    dim, patch_dim = linear.weight.shape
    cls = m.cls_token
    num_cls = cls.shape[-2] if cls.ndim == 3 else cls.shape[0]
    num_patches = m.pos_embedding.shape[-2] - num_cls
    grid = math.isqrt(num_patches)
    if grid * grid != num_patches:
        raise ValueError(
            f"from_torch: vit_pytorch.ViT does not record its image size and its "
            f"{num_patches} patches are not a square grid; build flaxattn.ViT(image_size=...) "
            "with the same arguments and load the state_dict with load_state_dict"
        )

    attn_wrap, ff_wrap = m.transformer.layers[0]
    attn, ff = _unwrap(attn_wrap), _unwrap(ff_wrap)
    heads = attn.heads
    dim_head = attn.to_qkv.weight.shape[0] // (3 * heads)
    project_out = not (heads == 1 and dim_head == dim)
    if isinstance(attn.to_out, type(linear)) or (
        not project_out and type(attn.to_out).__name__ != "Identity"
    ):
        raise ValueError(
            "from_torch: this vit-pytorch release's attention output projection "
            "(a bare Linear, or one with heads == 1 and dim_head == dim) is not supported"
        )
    ff_linears = _of_type(ff.net, "Linear")
    dropouts = _of_type(ff.net, "Dropout")

    head = m.mlp_head
    if head is None:
        num_classes = 0
    elif type(head).__name__ == "Linear":
        num_classes = head.out_features
    elif [type(h).__name__ for h in head] == ["LayerNorm", "Linear"]:
        num_classes = head[1].out_features
    else:
        raise ValueError(
            "from_torch: vit-pytorch releases before 0.3.0 (a hidden layer in mlp_head) "
            "are not supported"
        )
    final_norm = "tokens" if getattr(m.transformer, "norm", None) is not None else "pooled"
    scale = float(attn.scale)
    return ViT, {
        "image_size": (grid * ph, grid * pw),
        "patch_size": (ph, pw),
        "num_classes": num_classes,
        "dim": dim,
        "depth": len(m.transformer.layers),
        "heads": heads,
        "mlp_dim": ff_linears[0].out_features,
        "pool": getattr(m, "pool", "cls"),
        "channels": patch_dim // (ph * pw),
        "dim_head": dim_head,
        "dropout": float(dropouts[0].p) if dropouts else 0.0,
        "emb_dropout": float(m.dropout.p),
        "patch_norm": bool(_of_type(embed, "LayerNorm")),
        "final_norm": final_norm,
        "mean_with_cls": num_cls == 1,
        "scale": None if math.isclose(scale, dim_head**-0.5, rel_tol=1e-12) else scale,
    }
