"""ViT family: every module of torch_ref.layers.vit and the upstream vit_pytorch.ViT itself.

Shapes are small (a few tokens, mostly depth 1) but cover rectangular images and
patches, odd sizes, one channel, batch 1, cls and mean pooling, the single-head
identity output (``square_single_head``), no head, and each functional option.
Eval mode only: without BatchNorm, train mode differs from eval only by dropout,
whose masks PyTorch and JAX draw differently (``tests/test_vit_layouts.py``
tests dropout). Upstream modules convert through ``from_torch`` (their patch
grid must be square: vit-pytorch does not record its image size);
``tests/test_vit_layouts.py`` covers a rectangular grid and the key layouts of
older releases.
"""

from flax import nnx

import flaxattn
import torch_ref
from parity_tests.registry import (
    FUSED_XLA_TOL,
    BadArgs,
    BadCall,
    Case,
    register,
    with_attention_impl,
)
from parity_tests.upstream import vit_pytorch


def _vit(**kw):
    base = dict(
        image_size=(8, 12),
        patch_size=(4, 3),
        num_classes=5,
        dim=16,
        depth=1,
        heads=2,
        mlp_dim=24,
        dim_head=8,
    )
    return {**base, **kw}


def _upstream(**kw):
    return lambda: vit_pytorch().ViT(**_vit(**{"patch_size": (2, 3), **kw}))


register(
    Case(
        "vit/prenorm_feedforward",
        lambda: torch_ref.PreNorm(12, torch_ref.FeedForward(12, 20)),
        [(1, 7, 12)],
        dtypes=("float64",),
    ),
    Case("vit/attention", lambda: torch_ref.Attention(16, heads=3, dim_head=5), [(2, 7, 16)]),
    # attention_impl='xla': jax.nn.dot_product_attention instead of the einsums.
    Case(
        "vit/attention_impl_xla",
        lambda: torch_ref.Attention(16, heads=3, dim_head=5),
        [(2, 7, 16)],
        make_flax=with_attention_impl("xla"),
        tol=FUSED_XLA_TOL,
    ),
    Case(
        "vit/cls_rect_depth2_impl_xla",
        lambda: torch_ref.ViT(**_vit(depth=2)),
        [(2, 3, 8, 12)],
        make_flax=with_attention_impl("xla"),
        tol=FUSED_XLA_TOL,
    ),
    Case(
        "vit/attention_scale",
        lambda: torch_ref.Attention(12, heads=2, dim_head=6, scale=12**-0.5),
        [(2, 4, 12)],
        dtypes=("float64",),
    ),
    Case(
        "vit/transformer",
        lambda: torch_ref.Transformer(16, 2, 2, 8, 24),
        [(2, 9, 16)],
        dtypes=("float64",),
    ),
    Case(
        "vit/transformer_final_norm",
        lambda: torch_ref.Transformer(12, 1, 3, 4, 16, final_norm=True),
        [(1, 6, 12)],
        dtypes=("float64",),
    ),
    Case("vit/cls_rect_depth2", lambda: torch_ref.ViT(**_vit(depth=2)), [(2, 3, 8, 12)]),
    Case("vit/mean_rect", lambda: torch_ref.ViT(**_vit(pool="mean")), [(2, 3, 8, 12)]),
    Case(
        "vit/mean_no_cls_patch_norm_token_norm",
        lambda: torch_ref.ViT(
            **_vit(pool="mean", patch_norm=True, final_norm="tokens", mean_with_cls=False)
        ),
        [(2, 3, 8, 12)],
    ),
    Case(
        "vit/no_head_odd_one_channel_batch1",
        lambda: torch_ref.ViT(
            **_vit(image_size=(9, 15), patch_size=(3, 5), num_classes=0, channels=1)
        ),
        [(1, 1, 9, 15)],
    ),
    Case(
        "vit/square_single_head",
        lambda: torch_ref.ViT(
            **_vit(image_size=12, patch_size=4, heads=1, dim_head=16, final_norm="tokens")
        ),
        [(2, 3, 12, 12)],
    ),
    # The installed vit-pytorch release itself (key layout "vit-pytorch 1.16.1+").
    Case("vit/upstream_cls", _upstream(depth=2), [(2, 3, 8, 12)]),
    Case(
        "vit/upstream_mean",
        _upstream(pool="mean", channels=2),
        [(1, 2, 8, 12)],
        dtypes=("float64",),
    ),
    Case("vit/upstream_no_head", _upstream(num_classes=0), [(2, 3, 8, 12)], dtypes=("float64",)),
)

_KW = dict(num_classes=10, dim=16, depth=1, heads=2, mlp_dim=16)
register(
    BadArgs(
        "ViT",
        kwargs=dict(image_size=30, patch_size=4, **_KW),
        match=r"`image_size` \(=\(30, 30\)\) must be divisible by `patch_size` \(=\(4, 4\)\)",
    ),
    BadArgs(
        "ViT",
        kwargs=dict(image_size=(32, 30), patch_size=(4, 3), pool="max", **_KW),
        match=r"`pool` \(='max'\) must be one of \['cls', 'mean'\]",
    ),
    BadArgs(
        "ViT",
        kwargs=dict(image_size=8, patch_size=4, final_norm="head", **_KW),
        match=r"`final_norm` \(='head'\) must be one of \['pooled', 'tokens'\]",
    ),
    BadArgs(
        "ViT",
        kwargs=dict(image_size=8, patch_size=4, **{**_KW, "num_classes": -1}),
        match=r"`num_classes` \(=-1\) must be >= 0",
    ),
    BadArgs(
        "ViT",
        kwargs=dict(image_size=8, patch_size=4, emb_dropout=1.0, **_KW),
        match=r"`emb_dropout` \(=1.0\) must be in \[0, 1\)",
    ),
    BadArgs("Attention", (16, 0), match=r"`heads` \(=0\) must be positive"),
    BadArgs("FeedForward", (16, 32, -0.1), match=r"`dropout` \(=-0.1\) must be in \[0, 1\)"),
    BadArgs("Transformer", (16, 0, 2, 8, 32), match=r"`depth` \(=0\) must be positive"),
    BadCall(
        "Attention features",
        lambda: flaxattn.Attention(16, 2, 8, rngs=nnx.Rngs(0)),
        [(2, 5, 12)],
        r"Attention: expected `x` of shape \(B, N, 16\), got \(2, 5, 12\)",
    ),
    BadCall(
        "ViT image size",
        lambda: flaxattn.ViT(image_size=32, patch_size=4, **_KW, rngs=nnx.Rngs(0)),
        [(2, 16, 16, 3)],
        r"ViT: expected `img` of shape \(B, 32, 32, 3\), got \(2, 16, 16, 3\)",
    ),
    BadCall(
        "ViT channels",
        lambda: flaxattn.ViT(image_size=(8, 12), patch_size=4, **_KW, rngs=nnx.Rngs(0)),
        [(2, 8, 12, 1)],
        r"ViT: expected `img` of shape \(B, 8, 12, 3\), got \(2, 8, 12, 1\)",
    ),
    BadCall(
        "ViT rank",
        lambda: flaxattn.ViT(image_size=8, patch_size=4, **_KW, rngs=nnx.Rngs(0)),
        [(8, 8, 3)],
        r"ViT: expected `img` of shape \(B, 8, 8, 3\), got \(8, 8, 3\)",
    ),
)
