"""DilateFormer family: dilated attention (SWDA), MSDA, blocks, stem/merging, the full model.

Layouts: ``DilateAttention``'s twin takes q, k, v as ``(B, d, H, W)`` and returns
``(B, H, W, d)`` (upstream's layout), the Flax one is channels-last throughout;
``MultiDilateLocalAttention`` and ``GlobalAttention`` are channels-last on both
sides; blocks, stages and the model are NCHW in torch.

The checker fails any parameter whose gradient is zero on either side, so every
MSDA/block/model case also asserts that ``attn.qkv`` and ``norm1`` get gradients
(upstream's in-place ``x[i] = ...`` breaks backward; the blog's ``.detach()`` cuts them).
Train mode only differs from eval where there is BatchNorm (stem, merging); the
blocks have no dropout here, so they run in eval mode only.
"""

from flax import nnx

import flaxattn
import torch_ref
from flaxattn.convert import from_torch
from flaxattn.layers import dilate as fl
from flaxattn.models import dilateformer as fm
from parity_tests.registry import BadArgs, BadCall, Case, GoldenCase, register
from torch_ref.layers import dilate as tl

_QKV = dict(layouts=("nchw", "nchw", "nchw"), out_layouts="none")
_LAST = dict(layouts="none", out_layouts="none")


def _with_attn_dropout(torch_module):
    module = from_torch(torch_module)
    for group in module.dilate_attention:
        group.attn_drop.rate = 1e-12
    return module


def _mini(**kw):
    """A 4-stage DilateFormer small enough for float64 parity in seconds."""
    args = dict(
        img_size=32,
        embed_dim=6,
        depths=[1, 1, 1, 1],
        num_heads=[3, 3, 6, 6],
        num_classes=5,
        drop_path=0.0,
    )
    args.update(kw)
    return torch_ref.DilateFormer(**args)


def _two_stage(**kw):
    """A 2-stage DilateFormer (dilated, then global) with two dilation groups."""
    args = dict(
        img_size=28,
        embed_dim=8,
        depths=[1, 1],
        num_heads=[2, 4],
        dilation=[1, 2],
        dilate_attention=[True, False],
        downsamples=[True, False],
        num_classes=3,
        drop_path=0.0,
    )
    args.update(kw)
    return torch_ref.DilateFormer(**args)


register(
    # SWDA: dilations 1-3, kernels 3 and 5; windows larger than the map (zero padding).
    Case("dilate/attention_d1", lambda: tl.DilateAttention(4), [(2, 8, 7, 9)] * 3, **_QKV),
    Case(
        "dilate/attention_d2_batch1",
        lambda: tl.DilateAttention(3, dilation=2),
        [(1, 6, 6, 5)] * 3,
        **_QKV,
    ),
    Case(
        "dilate/attention_d3_k5",
        lambda: tl.DilateAttention(4, kernel_size=5, dilation=3, qk_scale=0.3),
        [(2, 8, 5, 7)] * 3,
        **_QKV,
    ),
    Case(
        "dilate/msda",
        lambda: torch_ref.MultiDilateLocalAttention(12, 6, qkv_bias=True),
        [(2, 7, 9, 12)],
        **_LAST,
    ),
    Case(
        "dilate/msda_k5_two_groups_batch1",
        lambda: torch_ref.MultiDilateLocalAttention(16, 4, kernel_size=5, dilation=[1, 3]),
        [(1, 6, 5, 16)],
        **_LAST,
    ),
    Case("dilate/block", lambda: torch_ref.DilateBlock(12, 3), [(2, 12, 7, 9)]),
    Case(
        "dilate/block_cpe",
        lambda: torch_ref.DilateBlock(12, 6, 2.0, True, cpe_per_block=True, dilation=[1, 2]),
        [(1, 12, 8, 8)],
    ),
    Case(
        "dilate/global_block_cpe",
        lambda: torch_ref.DilateGlobalBlock(12, 3, qkv_bias=True, cpe_per_block=True),
        [(2, 12, 5, 3)],
    ),
    Case(
        "dilate/merging_conv2_2_cpe",
        lambda: torch_ref.DilatePatchMerging(6, 12, "conv2_2", cpe_per_stage=True),
        [(2, 6, 6, 4)],
        modes=("eval", "train"),
        zero_grad_ok=("proj.0.bias",),
    ),
    Case(
        "dilate/merging_avgpool3_2",
        lambda: torch_ref.DilatePatchMerging(6, 12, "avgpool3_2"),
        [(2, 6, 7, 5)],
        modes=("eval", "train"),
        zero_grad_ok=("proj.1.bias",),
    ),
    Case(
        "dilate/merging_avgpool2_2",
        lambda: torch_ref.DilatePatchMerging(4, 8, "avgpool2_2"),
        [(1, 4, 6, 8)],
    ),
    # Training with attention dropout leaves the custom-VJP kernel for autodiff
    # through the windows; a dropout rate of 1e-12 keeps every weight (x1 scale).
    Case(
        "dilate/msda_dropout_path",
        lambda: torch_ref.MultiDilateLocalAttention(12, 3, dilation=[2, 1, 3]),
        [(2, 6, 7, 12)],
        modes=("train",),
        make_flax=_with_attn_dropout,
        dtypes=("float32",),
        **_LAST,
    ),
    Case(
        "dilate/stem_pointconv",
        lambda: torch_ref.DilatePatchEmbed(17, 3, 4, embed_dim=6, patch_way="pointconv"),
        [(2, 3, 17, 12)],
        modes=("eval", "train"),
    ),
    Case(
        "dilate/stem_nonoverlaping",
        lambda: torch_ref.DilatePatchEmbed(
            8, 2, patch_size=(2, 4), embed_dim=5, patch_way="nonoverlaping"
        ),
        [(1, 2, 8, 12)],
    ),
    # The full 4-stage model in float64 is the golden files' job (upstream's own runs,
    # checked against both twins); here the 4-stage model runs in float32, and the
    # train-mode and other configurations on 2-stage models (compiling a model is
    # what costs time here).
    Case("dilate/dilateformer_mini", lambda: _mini(), [(2, 3, 32, 28)], dtypes=("float32",)),
    # Train-mode BatchNorm over a few values per channel (4x4 maps at batch 2) amplifies
    # float32 round-off beyond 1e-4 after a step: the train check runs in float64.
    Case(
        "dilate/dilateformer_two_stage_train",
        lambda: _two_stage(),
        [(2, 3, 28, 32)],
        modes=("train",),
        train_steps=2,
        # A conv bias right before train-mode BatchNorm cancels: its gradient is round-off.
        zero_grad_ok=("stages.0.downsample.proj.0.bias",),
        dtypes=("float64",),
    ),
    Case(
        "dilate/dilateformer_global_first_avgpool_cpe_stage",
        lambda: _two_stage(
            img_size=(32, 16),
            merging_way="avgpool3_2",
            cpe_per_stage=True,
            cpe_per_block=False,
            dilate_attention=[False, True],
            num_classes=0,
        ),
        [(1, 3, 32, 16)],
        dtypes=("float64",),
    ),
)

# Upstream runs (JIAOJIAYUASD/dilateformer); state_dict keys equal ours.
register(
    GoldenCase(
        "dilate_attention_k5.npz",
        lambda kw: tl.DilateAttention(**kw),
        layouts=("nchw", "nchw", "nchw"),
        out_layouts="none",
    ),
    GoldenCase(
        "dilate_msda.npz",
        lambda kw: torch_ref.MultiDilateLocalAttention(**kw),
        layouts="none",
        out_layouts="none",
    ),
    GoldenCase("dilate_block_cpe.npz", lambda kw: torch_ref.DilateBlock(**kw)),
    GoldenCase("dilateformer_mini.npz", lambda kw: torch_ref.DilateFormer(**kw)),
    GoldenCase("dilateformer_mini_rect.npz", lambda kw: torch_ref.DilateFormer(**kw)),
)


def _abstract(make):
    """The module's structure without its weights: call-time checks run before any
    compute, and an eager init of a whole model would compile one kernel per shape."""
    return lambda: nnx.eval_shape(lambda: make(rngs=nnx.Rngs(0)))


def _rngs():
    return nnx.Rngs(0)


register(
    BadArgs(
        "MultiDilateLocalAttention",
        (36, 4),
        match=r"`num_heads` \(=4\) must be a multiple of the number of dilations \(=3\)",
    ),
    BadArgs(
        "MultiDilateLocalAttention",
        (32, 6),
        match=r"`dim` \(=32\) must be divisible by `num_heads` \(=6\)",
    ),
    BadArgs(
        "MultiDilateLocalAttention",
        (24, 6),
        {"kernel_size": 4},
        match=r"`kernel_size` \(=4\) must be odd",
    ),
    BadArgs(
        "MultiDilateLocalAttention",
        (24, 6),
        {"dilation": []},
        match=r"`dilation` \(=\[\]\) must be a non-empty list",
    ),
    BadArgs("DilateAttention", (8,), {"kernel_size": 2}, match=r"`kernel_size` \(=2\) must be odd"),
    BadArgs("DilateAttention", (8,), {"dilation": 0}, match=r"`dilation` \(=0\) must be positive"),
    BadArgs(
        "DilateBlock",
        (24, 4),
        match=r"`num_heads` \(=4\) must be a multiple of the number of dilations \(=3\)",
    ),
    BadArgs("DilateGlobalBlock", (24, 5), match=r"`dim` \(=24\) must be divisible by `num_heads`"),
    BadArgs(
        "DilateFormer",
        kwargs={"img_size": 8, "merging_way": "conv2_2"},
        match=r"`img_size` \(=8\) gives stage 1 a 1x1 map, which merging_way 'conv2_2'",
    ),
    BadArgs(
        "DilateFormer",
        kwargs={"img_size": (2, 32), "patch_way": "nonoverlaping"},
        match=r"`img_size` \(=\(2, 32\)\) is smaller than one 4x4 patch",
    ),
    BadArgs(
        "DilateFormer",
        kwargs={"num_heads": [3, 6, 12]},
        match=r"`num_heads` \(=\[3, 6, 12\]\) must have one entry per stage",
    ),
    BadArgs(
        "DilateFormer",
        kwargs={"downsamples": [True, True, True, True]},
        match=r"`downsamples` \(=\[True, True, True, True\]\) must be True for every stage",
    ),
    BadArgs("DilateFormer", kwargs={"kernel_size": 4}, match=r"`kernel_size` \(=4\) must be odd"),
    BadArgs(
        "DilateFormer",
        kwargs={"patch_way": "overlapping"},
        match=r"`patch_way` \(='overlapping'\) must be one of",
    ),
    BadArgs(
        "DilatePatchMerging",
        (8, 16, "avgpool"),
        match=r"`merging_way` \(='avgpool'\) must be one of",
    ),
    BadCall(
        "MultiDilateLocalAttention channels",
        lambda: fl.MultiDilateLocalAttention(12, 3, rngs=_rngs()),
        [(2, 5, 5, 16)],
        r"expected `x` of shape \(B, H, W, 12\), got \(2, 5, 5, 16\)",
    ),
    BadCall(
        "DilateAttention mismatched k",
        lambda: fl.DilateAttention(4, rngs=_rngs()),
        [(2, 5, 5, 8), (2, 5, 4, 8), (2, 5, 5, 8)],
        r"got `k` of shape \(2, 5, 4, 8\) \(`q`: \(2, 5, 5, 8\)\)",
    ),
    BadCall(
        "DilateAttention head_dim",
        lambda: fl.DilateAttention(4, rngs=_rngs()),
        [(2, 5, 5, 6)] * 3,
        r"d a multiple of head_dim=4, got `q` of shape \(2, 5, 5, 6\)",
    ),
    BadCall(
        "DilateFormer map too small for 2x2 merging",
        _abstract(
            lambda rngs: fm.DilateFormer(
                img_size=32,
                embed_dim=6,
                depths=[1, 1],
                num_heads=[3, 3],
                dilate_attention=[True, False],
                downsamples=[True, False],
                merging_way="conv2_2",
                rngs=rngs,
            )
        ),
        [(1, 4, 12, 3)],
        r"an input of size 4x12 gives stage 0 a 1x3 map, which merging_way 'conv2_2'",
    ),
    BadCall(
        "DilateFormer channels",
        _abstract(lambda rngs: flaxattn.dilateformer_tiny(img_size=32, num_classes=3, rngs=rngs)),
        [(1, 32, 32, 1)],
        r"expected `x` of shape \(B, H, W, 3\), got \(1, 32, 32, 1\)",
    ),
    BadArgs(
        "DilateFormer",
        kwargs={"dilation": [1, 0]},
        match=r"`dilation` \(=\[1, 0\]\) must be a non-empty list of positive ints",
    ),
)
