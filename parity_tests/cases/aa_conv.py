"""Attention-augmented convolution family: AugmentedConv, the Wide-ResNet block and network.

Square, non-square and odd maps, stride 1 and 2, relative logits on and off,
1 to 4 heads, ``dv / Nh`` of 1 and 2 (upstream's reshape interleaves positions and
channels when it is above 1), pure convolution (``dv = 0``) and pure attention
(``dv = out_channels``), batch 1. The relative tables are parameters, so their
gradients are checked like every other one.
"""

from flax import nnx

import flaxattn
import torch_ref
from parity_tests.registry import (
    FUSED_XLA_TOL,
    BadArgs,
    BadCall,
    Case,
    GoldenCase,
    register,
    with_attention_impl,
)

AA = torch_ref.AugmentedConv


def _biases(*convs: str) -> tuple[str, ...]:
    """Biases of AugmentedConvs whose output only feeds train-mode BatchNorm: they
    cancel there, so their gradient is structurally zero in train mode."""
    return tuple(f"{c}.{part}.bias" for c in convs for part in ("conv_out", "attn_out"))


register(
    Case("aa_conv/norel_odd", lambda: AA(3, 10, 5, dk=4, dv=2, Nh=2), [(2, 3, 9, 7)]),
    Case(
        "aa_conv/norel_odd_impl_xla",
        lambda: AA(3, 10, 5, dk=4, dv=2, Nh=2),
        [(2, 3, 9, 7)],
        make_flax=with_attention_impl("xla"),
        tol=FUSED_XLA_TOL,
    ),
    Case(
        "aa_conv/norel_k1_s2",
        lambda: AA(4, 8, 1, dk=4, dv=4, Nh=2, stride=2),
        [(2, 4, 7, 6)],
    ),
    Case(
        "aa_conv/rel_square",
        lambda: AA(4, 16, 3, dk=8, dv=4, Nh=2, shape=8, relative=True),
        [(2, 4, 8, 8)],
    ),
    Case(
        "aa_conv/rel_nonsquare_heads3",
        lambda: AA(6, 12, 3, dk=12, dv=6, Nh=3, shape=(5, 7), relative=True),
        [(2, 6, 5, 7)],
    ),
    Case(
        "aa_conv/rel_s2_odd",
        lambda: AA(4, 8, 3, dk=8, dv=4, Nh=4, shape=(5, 4), relative=True, stride=2),
        [(2, 4, 9, 7)],
    ),
    Case(
        "aa_conv/rel_batch1_heads1",
        lambda: AA(5, 7, 3, dk=6, dv=3, Nh=1, shape=(6, 3), relative=True),
        [(1, 5, 6, 3)],
    ),
    Case(
        "aa_conv/pure_attention",
        lambda: AA(4, 8, 3, dk=8, dv=8, Nh=2, shape=(4, 6), relative=True),
        [(2, 4, 4, 6)],
    ),
    Case("aa_conv/pure_conv", lambda: AA(4, 8, 3, dk=8, dv=0, Nh=2), [(2, 4, 5, 6)]),
    # The training registry's configuration (maps 28 -> 14 -> 14 -> 7 -> 4: an odd
    # size at stride 2). float32 only: building a network compiles an initialiser
    # per parameter shape, and in float32 this build is shared with the train smoke
    # test, the conversion round trip and the bench smoke test; the layer cases
    # above check float64. Non-square stage sizes: tests/test_aa_conv.py.
    Case(
        "aa_conv/aa_wide_resnet",
        lambda: torch_ref.AAWideResNet(10, 1, 0.0, 10, shape=28, in_channels=1, stem_stride=2),
        [(2, 1, 28, 28)],
        modes=("eval", "train"),
        dtypes=("float32",),
        # After two SGD steps the stem's attn_out.bias gradient (a sum over 2x14x14
        # positions, through 9 attention layers and train-mode BatchNorm) differs by
        # up to 2e-4 of its size in float32.
        tol={"float32": {"rtol": 5e-4}},
        zero_grad_ok=_biases(
            "layer1.0.0.conv1",
            "layer2.0.0.conv1",
            "layer3.0.0.conv1",
            "layer3.0.0.conv2",
            "layer3.0.0.shortcut.0",
        ),
    ),
)

# Upstream runs (the gradients from upstream with `q = q * scale`, see the golden README).
register(
    GoldenCase("aaconv_norel.npz", lambda kw: AA(**kw)),
    GoldenCase("aaconv_rel_s1.npz", lambda kw: AA(**kw)),
    GoldenCase("aaconv_rel_s2.npz", lambda kw: AA(**kw)),
)


def _aa(*args, **kwargs):
    return lambda: flaxattn.AugmentedConv(*args, **kwargs, rngs=nnx.Rngs(0))


register(
    BadArgs(
        "AugmentedConv", (4, 8, 3, 6, 4, 4), match=r"`dk` \(=6\) must be divisible by `Nh` \(=4\)"
    ),
    BadArgs(
        "AugmentedConv", (4, 8, 3, 8, 6, 4), match=r"`dv` \(=6\) must be divisible by `Nh` \(=4\)"
    ),
    BadArgs("AugmentedConv", (4, 8, 3, 8, 4, 0), match=r"`Nh` \(=0\) must be positive"),
    BadArgs(
        "AugmentedConv",
        (4, 8, 3, 8, 10, 2),
        match=r"`dv` \(=10\) must not exceed `out_channels` \(=8\)",
    ),
    BadArgs(
        "AugmentedConv",
        (4, 8, 3, 8, 4, 2),
        {"stride": 3},
        match=r"`stride` \(=3\) must be one of \[1, 2\]",
    ),
    BadArgs(
        "AugmentedConv",
        (4, 8, 3, 8, 4, 2),
        {"relative": True},
        match=r"`shape` \(=0\) must be the positive attention map size",
    ),
    BadArgs(
        "AugmentedConv",
        (4, 8, 3, 8, 4, 2),
        {"shape": (4, 5, 6), "relative": True},
        match=r"`shape` \(=\(4, 5, 6\)\) must be an int or a pair",
    ),
    BadArgs(
        "AugmentedConv",
        (4, 8, 3, 8, 4, 2),
        {"query_block": 0},
        match=r"`query_block` \(=0\) must be positive",
        torch=False,
    ),
    BadArgs(
        "AAWideResNet",
        (10, 1, 0.0, 10, 28),
        {"stem_stride": 4},
        match=r"`stem_stride` \(=4\) must be one of \[1, 2\]",
    ),
    BadArgs("AAWideResNet", (12, 1, 0.0, 10, 8), match=r"`depth` \(=12\) must be 6n \+ 4"),
    BadCall(
        "AugmentedConv relative shape",
        _aa(4, 8, 3, 8, 4, 2, shape=8, relative=True),
        [(2, 10, 10, 4)],
        r"`shape` \(=\(8, 8\)\) must equal the attention map size .* gives a \(10, 10\) map",
    ),
    BadCall(
        "AugmentedConv relative shape stride 2",
        _aa(4, 8, 3, 8, 4, 2, shape=(8, 8), relative=True, stride=2),
        [(2, 8, 8, 4)],
        r"`shape` \(=\(8, 8\)\) must equal .* gives a \(4, 4\) map at stride 2",
    ),
    BadCall(
        "AugmentedConv channels",
        _aa(4, 8, 3, 8, 4, 2),
        [(2, 6, 6, 3)],
        r"AugmentedConv: expected `x` of shape \(B, H, W, 4\), got \(2, 6, 6, 3\)",
    ),
    BadArgs(
        "AugmentedConv",
        (4, 8, 3, 8, 4, 2),
        {"shape": 0, "relative": True},
        match=r"`shape` \(=0\) must be the positive attention map size",
    ),
)
