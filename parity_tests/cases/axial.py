"""Axial family: SelfAttention, AxialAttention, AxialPositionalEmbedding, ChanLayerNorm and
AxialImageTransformer (reversible, coupling, plain residuals), against the torch_ref
twins and against the upstream package (PyPI ``axial-attention`` 0.6.1) directly.

Layouts: ``dim_index`` means the same axis in both twins and ``from_torch`` keeps
it, so inputs pass unchanged (``layouts="none"``); only ``ChanLayerNorm`` is
channels-first in torch and channels-last in Flax.

There is no golden file for this family: its upstream is on PyPI and is run here.
Upstream's reversible backward only works in train mode (it records the RNG
state only while training and its backward then fails in eval mode with
"expected a torch.ByteTensor, but got NoneType"), so its reversible case runs
in train mode; nothing in these modules depends on the mode otherwise.
"""

import importlib

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


def _upstream():
    return importlib.import_module("axial_attention")


NONE = {"layouts": "none", "out_layouts": "none"}

register(
    # SelfAttention on (B, T, dim), with cross-attention and an explicit head width.
    Case("axial/self_attention", lambda: torch_ref.AxialSelfAttention(16, 4), [(2, 7, 16)]),
    Case(
        "axial/self_attention_kv_impl_xla",
        lambda: torch_ref.AxialSelfAttention(12, 3, 5),
        [(2, 7, 12), (2, 4, 12)],
        make_flax=with_attention_impl("xla"),
        tol=FUSED_XLA_TOL,
    ),
    Case(
        "axial/self_attention_kv_batch1",
        lambda: torch_ref.AxialSelfAttention(12, 3, 5),
        [(1, 7, 12), (1, 4, 12)],
    ),
    # AxialAttention: 2-D and 3-D, summed and sequential, several head counts and layouts.
    Case(
        "axial/attention_2d_sum",
        lambda: torch_ref.AxialAttention(16, 2, heads=4),
        [(2, 5, 7, 16)],
        **NONE,
    ),
    Case(
        "axial/attention_2d_sequential_nchw_batch1",
        lambda: torch_ref.AxialAttention(12, 2, heads=2, dim_index=1, sum_axial_out=False),
        [(1, 12, 6, 5)],
        **NONE,
    ),
    Case(
        "axial/attention_3d_sum",
        lambda: torch_ref.AxialAttention(8, 3, heads=8),
        [(2, 3, 4, 5, 8)],
        **NONE,
    ),
    Case(
        "axial/attention_3d_sequential_mid_axis",
        lambda: torch_ref.AxialAttention(16, 3, 1, 6, dim_index=2, sum_axial_out=False),
        [(2, 3, 16, 4, 5)],
        **NONE,
    ),
    Case(
        "axial/pos_emb_2d",
        lambda: torch_ref.AxialPositionalEmbedding(8, (5, 7)),
        [(2, 8, 5, 7)],
        **NONE,
    ),
    Case(
        "axial/pos_emb_3d_last_batch1",
        lambda: torch_ref.AxialPositionalEmbedding(6, (3, 4, 5), -1),
        [(1, 3, 4, 5, 6)],
        **NONE,
    ),
    Case("axial/chan_layer_norm", lambda: torch_ref.ChanLayerNorm(8), [(2, 8, 5, 6)]),
    # AxialImageTransformer: reversible (custom VJP / autograd.Function on both sides),
    # the same coupling with plain autodiff, and upstream's plain residual stack.
    Case(
        "axial/ait_reversible_pos_emb",
        lambda: torch_ref.AxialImageTransformer(16, 2, heads=4, axial_pos_emb_shape=(6, 5)),
        [(2, 16, 6, 5)],
        **NONE,
    ),
    Case(
        "axial/ait_coupling",
        lambda: torch_ref.AxialImageTransformer(16, 1, heads=2, reversible="coupling"),
        [(2, 16, 5, 7)],
        dtypes=("float64",),  # the reversible cases cover float32
        **NONE,
    ),
    Case(
        "axial/ait_residual_square_batch1",
        lambda: torch_ref.AxialImageTransformer(
            16, 1, heads=4, reversible=False, axial_pos_emb_shape=(5, 5)
        ),
        [(1, 16, 5, 5)],
        **NONE,
    ),
    Case(
        "axial/ait_channels_last",
        lambda: torch_ref.AxialImageTransformer(
            8, 1, heads=2, dim_heads=3, dim_index=-1, axial_pos_emb_shape=(4, 6)
        ),
        [(2, 4, 6, 8)],
        dtypes=("float64",),
        **NONE,
    ),
    # The training registry's classifier: NCHW in torch, NHWC in Flax, the same weights.
    Case(
        "axial/classifier",
        lambda: torch_ref.AxialClassifier(1, 10, dim=8, depth=1, heads=2),
        [(2, 1, 12, 10)],
        dtypes=("float64",),
    ),
    # The upstream package's own modules, through from_torch's builders.
    Case(
        "axial/upstream_ait_reversible",
        lambda: _upstream().AxialImageTransformer(16, 1, heads=4, axial_pos_emb_shape=(6, 5)),
        [(2, 16, 6, 5)],
        modes=("train",),
        train_steps=1,
        **NONE,
    ),
    Case(
        "axial/upstream_ait_residual",
        lambda: _upstream().AxialImageTransformer(16, 1, heads=4, reversible=False),
        [(2, 16, 7, 5)],
        **NONE,
    ),
    Case(
        "axial/upstream_axial_attention",
        lambda: _upstream().AxialAttention(16, 2, heads=4),
        [(2, 5, 6, 16)],
        **NONE,
    ),
    Case(
        "axial/upstream_axial_attention_3d_sequential",
        lambda: _upstream().AxialAttention(8, 3, heads=2, dim_index=1, sum_axial_out=False),
        [(1, 8, 3, 4, 5)],
        **NONE,
    ),
    Case(
        "axial/upstream_pos_emb",
        lambda: _upstream().AxialPositionalEmbedding(8, (5, 7)),
        [(2, 8, 5, 7)],
        **NONE,
    ),
    Case(
        "axial/upstream_self_attention",
        lambda: _upstream().SelfAttention(16, 4),
        [(2, 9, 16)],
        **NONE,
    ),
)


def _flax(cls, *args, **kwargs):
    return lambda: getattr(flaxattn, cls)(*args, **kwargs, rngs=nnx.Rngs(0))


register(
    BadArgs(
        "AxialAttention", (10,), {"heads": 3}, r"`dim` \(=10\) must be divisible by `heads` \(=3\)"
    ),
    BadArgs(
        "AxialAttention",
        (16,),
        {"heads": 4, "dim_heads": 8, "dim_index": 0},
        r"`dim_index` \(=0\) must name a non-batch axis of a 4-D input",
    ),
    BadArgs("AxialAttention", (16, 0), match=r"`num_dimensions` \(=0\) must be positive"),
    BadArgs(
        "AxialImageTransformer",
        (10, 2),
        {"heads": 4},
        r"`dim` \(=10\) must be divisible by `heads` \(=4\)",
    ),
    BadArgs("AxialImageTransformer", (16, 0), match=r"`depth` \(=0\) must be positive"),
    BadArgs(
        "AxialImageTransformer",
        (16, 1),
        {"reversible": "yes"},
        r"`reversible` \(='yes'\) must be one of \[True, False, 'coupling'\]",
    ),
    BadArgs(
        "AxialImageTransformer",
        (16, 1),
        {"axial_pos_emb_shape": (4,)},
        r"`axial_pos_emb_shape` \(=\(4,\)\) must be \(H, W\)",
    ),
    BadArgs("AxialSelfAttention", (10, 3), match=r"`dim` \(=10\) must be divisible by `heads`"),
    BadArgs("AxialSelfAttention", (10, 2, 0), match=r"`dim_heads` \(=0\) must be positive"),
    BadArgs("AxialPositionalEmbedding", (8, (5, 0)), match=r"`shape\[1\]` \(=0\) must be positive"),
    BadArgs(
        "AxialPositionalEmbedding",
        (8, (5, 7), 4),
        match=r"`emb_dim_index` \(=4\) must name a non-batch axis of a 4-D input",
    ),
    BadCall(
        "AxialAttention rank",
        _flax("AxialAttention", 16, heads=4),
        [(2, 5, 16)],
        r"expected `x` of shape \(B, A1, A2, 16\) \(embedding axis 3\), got \(2, 5, 16\)",
    ),
    BadCall(
        "AxialAttention embedding size",
        _flax("AxialAttention", 16, heads=4),
        [(2, 5, 7, 12)],
        r"expected `x` of shape \(B, A1, A2, 16\) \(embedding axis 3\), got \(2, 5, 7, 12\)",
    ),
    BadCall(
        "AxialImageTransformer rank",
        _flax("AxialImageTransformer", 16, 1, heads=4),
        [(2, 6, 16)],
        r"expected `x` of shape \(B, H, W, 16\), got \(2, 6, 16\)",
    ),
    BadCall(
        "AxialImageTransformer embedding size",
        _flax("AxialImageTransformer", 16, 1, heads=4, dim_index=1),
        [(2, 8, 6, 5)],
        r"expected `x` of shape \(B, 16, H, W\), got \(2, 8, 6, 5\)",
    ),
    BadCall(
        "AxialImageTransformer positional embedding smaller than the input",
        _flax("AxialImageTransformer", 8, 1, heads=2, axial_pos_emb_shape=(4, 4)),
        [(2, 6, 4, 8)],
        r"expected `x` of shape \(B, 4, 4, 8\) \(embedding axis 3, axial `shape` \(=\(4, 4\)\)\), "
        r"got \(2, 6, 4, 8\)",
    ),
    BadCall(
        "AxialPositionalEmbedding smaller than the input",
        _flax("AxialPositionalEmbedding", 8, (5, 7), 1),
        [(2, 8, 5, 9)],
        r"expected `x` of shape \(B, 8, 5, 7\) \(embedding axis 1, axial `shape` \(=\(5, 7\)\)\), "
        r"got \(2, 8, 5, 9\)",
    ),
    BadCall(
        "AxialSelfAttention kv batch",
        _flax("AxialSelfAttention", 16, 4),
        [(2, 7, 16), (3, 4, 16)],
        r"expected `kv` of shape \(2, S, 16\), got \(3, 4, 16\)",
    ),
    BadCall(
        "AxialSelfAttention features",
        _flax("AxialSelfAttention", 16, 4),
        [(2, 7, 12)],
        r"expected `x` of shape \(B, T, 16\), got \(2, 7, 12\)",
    ),
    BadArgs(
        "AxialAttention",
        (16, 2, 4),
        {"dim_index": 0},
        match=r"`dim_index` \(=0\) must name a non-batch axis of a 4-D input",
    ),
)
