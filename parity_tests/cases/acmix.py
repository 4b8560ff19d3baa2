"""ACmix family: ACmix, its ResNet bottleneck and a small ACmix ResNet.

The configurations combine the features the issue lists, so that few compiles
cover them: stride 1 and 2, odd, even and non-square maps, batch 1, head counts
1-4, dilation 1 and 2, ``kernel_conv`` 3 and 5, train-mode BatchNorm. The golden
upstream runs add stride 1 and 2 on even maps with the default 7x7 window.

``conv_p.bias`` only shifts every logit of a window by the same amount, so its
gradient is structurally zero (round-off in the unfold form, exactly 0 in flaxattn).
"""

from flax import nnx
from torch import nn

import flaxattn
import torch_ref
from parity_tests.registry import BadArgs, BadCall, Case, GoldenCase, register

_PE_BIAS = ("conv_p.bias",)


def _pe_biases(module) -> tuple[str, ...]:
    return tuple(n for n, _ in module.named_parameters() if n.endswith("conv_p.bias"))


# BatchNorm after ACmix makes the block almost invariant to scaling both rates
# together, so their gradients are differences of large, nearly cancelling terms:
# in float32 they carry ~5e-4 relative round-off (float64 stays at 1e-9).
_BN_RATES_TOL = {"float32": {"rtol": 2e-3, "atol": 1e-6}}


def _bottleneck_s2():
    down = nn.Sequential(nn.Conv2d(16, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
    return torch_ref.ACmixBottleneck(16, 4, 3, 2, 3, stride=2, downsample=down)


def _tiny_resnet():
    # ImageNet stem and 4 stages on a 35x33 image: stage maps 9x9, 5x5, 3x3, 2x2.
    return torch_ref.ACmixResNet([1, 1, 1, 1], k_att=3, head=2, num_classes=5, base_planes=8)


_RESNET_PE = _pe_biases(_tiny_resnet())

register(
    Case(
        "acmix/acmix_s1_head3_batch1_odd",
        lambda: torch_ref.ACmix(8, 12, kernel_att=3, head=3),
        [(1, 8, 9, 7)],
        zero_grad_ok=_PE_BIAS,
    ),
    Case(
        "acmix/acmix_s2_odd_dilation2_kconv5",
        lambda: torch_ref.ACmix(6, 8, kernel_att=3, head=2, kernel_conv=5, stride=2, dilation=2),
        [(2, 6, 9, 11)],
        zero_grad_ok=_PE_BIAS,
    ),
    Case(
        "acmix/acmix_s2_head1_k7_dilation2",
        lambda: torch_ref.ACmix(4, 4, kernel_att=7, head=1, stride=2, dilation=2),
        [(1, 4, 13, 8)],
        zero_grad_ok=_PE_BIAS,
        dtypes=("float64",),
    ),
    Case(
        "acmix/bottleneck_s2_projection",
        _bottleneck_s2,
        [(2, 16, 9, 7)],
        modes=("train",),
        train_steps=2,
        zero_grad_ok=("conv2.conv_p.bias",),
        tol=_BN_RATES_TOL,
    ),
    Case(
        "acmix/resnet_tiny",
        _tiny_resnet,
        [(2, 3, 35, 33)],
        modes=("train",),
        train_steps=1,
        zero_grad_ok=_RESNET_PE,
        # float32 train mode is covered by the bottleneck case; the network's float32
        # compile alone would double this case's share of the suite's time.
        dtypes=("float64",),
        slow=True,
    ),
)

# Upstream runs: LeapLabTHU/ACmix ACmix (stride 1 and 2) and Bottleneck (train mode).
register(
    GoldenCase("acmix_s1.npz", lambda kw: torch_ref.ACmix(**kw), zero_grad_ok=_PE_BIAS),
    GoldenCase("acmix_s2.npz", lambda kw: torch_ref.ACmix(**kw), zero_grad_ok=_PE_BIAS),
    GoldenCase(
        "acmix_bottleneck_train.npz",
        lambda kw: torch_ref.ACmixBottleneck(**kw),
        zero_grad_ok=("conv2.conv_p.bias",),
    ),
)

register(
    BadArgs("ACmix", (16, 30), {"head": 4}, r"`out_planes` \(=30\) must be divisible by `head`"),
    BadArgs("ACmix", (16, 16), {"stride": 3}, match=r"`stride` \(=3\) must be one of \[1, 2\]"),
    BadArgs("ACmix", (16, 16, 6), match=r"`kernel_att` \(=6\) must be odd"),
    BadArgs("ACmix", (16, 16), {"kernel_conv": 4}, match=r"`kernel_conv` \(=4\) must be odd"),
    BadArgs("ACmix", (16, 16), {"dilation": 0}, match=r"`dilation` \(=0\) must be positive"),
    BadArgs("ACmix", (16, 16), {"head": 0}, match=r"`head` \(=0\) must be positive"),
    BadArgs(
        "ACmixBottleneck",
        (32, 16, 7, 4, 3),
        match=r"identity shortcut needs `inplanes` \(=32\) == `planes \* 4` \(=64\)",
    ),
    BadArgs("ACmixResNet", ([1, 2, 3],), match=r"`layers` \(=\(1, 2, 3\)\) must be 4 positive"),
    BadArgs("ACmixResNet", ([1, 1, 1, 1],), {"stem": "deep"}, match=r"`stem` \(='deep'\)"),
    BadArgs(
        "ACmixResNet",
        ([1, 1, 1, 1],),
        {"replace_stride_with_dilation": [True]},
        match=r"`replace_stride_with_dilation` \(=\[True\]\) must be None or 3 flags",
    ),
    BadCall(
        "ACmix map smaller than the reflection padding",
        lambda: flaxattn.ACmix(8, 8, rngs=nnx.Rngs(0)),
        [(2, 3, 5, 8)],
        r"ACmix: maps must be at least 4x4 for the reflection padding of 3 "
        r"\(kernel_att=7, dilation=1\), got 3x5",
    ),
    BadCall(
        "ACmix dilated map too small",
        lambda: flaxattn.ACmix(8, 8, kernel_att=3, dilation=3, rngs=nnx.Rngs(0)),
        [(1, 6, 3, 8)],
        r"maps must be at least 4x4 for the reflection padding of 3 \(kernel_att=3, dilation=3\)",
    ),
    BadCall(
        "ACmix channels",
        lambda: flaxattn.ACmix(8, 8, rngs=nnx.Rngs(0)),
        [(2, 8, 8, 6)],
        r"ACmix: expected `x` of shape \(B, H, W, 8\), got \(2, 8, 8, 6\)",
    ),
    BadArgs(
        "ACmixResNet",
        ([1, 1, 1, 1],),
        {"replace_stride_with_dilation": [True]},
        match=r"`replace_stride_with_dilation` \(=\[True\]\) must be None or 3 flags",
    ),
)
