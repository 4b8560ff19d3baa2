"""Channel/spatial family: SE, CBAM (seed and Jongchan), Attention U-Net gate, self-attention.

Shapes cover square, non-square and odd maps and batch 1 (eval mode only:
train-mode BatchNorm needs more than one value per channel, which a 1x1 map
at batch 1 would not have; batch 1 with a larger map is fine).
"""

from flax import nnx

import flaxattn
import torch_ref
from parity_tests.registry import BadArgs, BadCall, Case, GoldenCase, register

# A conv bias directly followed by train-mode BatchNorm cancels: its gradient is zero.
_GATE_BIASES = ("W_g.0.bias", "W_x.0.bias", "psi.0.bias")

register(
    Case("channel/se", lambda: torch_ref.SELayer(32, 8), [(2, 32, 5, 6)]),
    Case("channel/se_batch1_odd", lambda: torch_ref.SELayer(24, 4), [(1, 24, 7, 3)]),
    Case("channel/channel_attention", lambda: torch_ref.ChannelAttention(32, 8), [(2, 32, 9, 7)]),
    Case("channel/spatial_attention", lambda: torch_ref.SpatialAttention(), [(2, 5, 9, 7)]),
    Case("channel/cbam", lambda: torch_ref.CBAM(32), [(2, 32, 9, 7)]),
    Case("channel/cbam_square_batch1", lambda: torch_ref.CBAM(16, 4), [(1, 16, 8, 8)]),
    Case(
        "channel/resblock_cbam_identity",
        lambda: torch_ref.ResBlockCBAM(64, 16),
        [(2, 64, 7, 5)],
        modes=("eval", "train"),
    ),
    Case(
        "channel/resblock_cbam_down_s2_odd",
        lambda: torch_ref.ResBlockCBAM(16, 16, stride=2, downsampling=True),
        [(2, 16, 9, 7)],
        modes=("eval", "train"),
    ),
    Case(
        "channel/resblock_cbam_batch1",
        lambda: torch_ref.ResBlockCBAM(16, 16, stride=1, downsampling=True),
        [(1, 16, 6, 10)],
        modes=("eval", "train"),
    ),
    Case(
        "channel/jongchan_cbam",
        lambda: torch_ref.JongchanCBAM(32, 8),
        [(2, 32, 9, 7)],
        modes=("eval", "train"),
    ),
    Case(
        "channel/jongchan_cbam_all_pools",
        lambda: torch_ref.JongchanCBAM(32, 8, ["avg", "max", "lp", "lse"]),
        [(2, 32, 6, 11)],
        modes=("eval", "train"),
    ),
    Case(
        "channel/jongchan_cbam_no_spatial",
        lambda: torch_ref.JongchanCBAM(16, 4, ["lse", "avg"], no_spatial=True),
        [(1, 16, 5, 5)],
    ),
    Case(
        "channel/attention_gate",
        lambda: torch_ref.AttentionGate(12, 10, 6),
        [(2, 12, 6, 9), (2, 10, 6, 9)],
        modes=("eval", "train"),
        zero_grad_ok=_GATE_BIASES,
    ),
    Case(
        "channel/attention_gate_batch1",
        lambda: torch_ref.AttentionGate(8, 8, 4),
        [(1, 8, 5, 7), (1, 8, 5, 7)],
        modes=("eval", "train"),
        zero_grad_ok=_GATE_BIASES,
    ),
    Case("channel/self_attention", lambda: torch_ref.SelfAttention(16, 8, 12), [(2, 10, 16)]),
    Case("channel/self_attention_batch1", lambda: torch_ref.SelfAttention(7, 5, 3), [(1, 13, 7)]),
)

# Upstream runs: moskomule SELayer, Jongchan CBAM, LeeJunHyun Attention_block.
register(
    GoldenCase("se.npz", lambda kw: torch_ref.SELayer(**kw)),
    GoldenCase("cbam_jongchan.npz", lambda kw: torch_ref.JongchanCBAM(**kw)),
    GoldenCase("cbam_jongchan_lse.npz", lambda kw: torch_ref.JongchanCBAM(**kw)),
    GoldenCase("cbam_jongchan_train.npz", lambda kw: torch_ref.JongchanCBAM(**kw)),
    GoldenCase("attention_gate_eval.npz", lambda kw: torch_ref.AttentionGate(**kw)),
    GoldenCase(
        "attention_gate_train.npz",
        lambda kw: torch_ref.AttentionGate(**kw),
        zero_grad_ok=_GATE_BIASES,
    ),
)

# Bad input: both twins refuse these constructor arguments; Flax modules refuse these inputs.
register(
    BadArgs("SELayer", (32, 64), match=r"`reduction` \(=64\) must not exceed `channel` \(=32\)"),
    BadArgs("SELayer", (0,), match=r"`channel` \(=0\) must be positive"),
    BadArgs("SELayer", (16, -2), match=r"`reduction` \(=-2\) must be positive"),
    BadArgs("ChannelAttention", (8, 16), match=r"`ratio` \(=16\) must not exceed `channel`"),
    BadArgs("CBAM", (4,), match=r"`ratio` \(=16\) must not exceed `channel` \(=4\)"),
    BadArgs("ResBlockCBAM", (16, 8), match=r"identity shortcut needs `in_places` \(=16\)"),
    BadArgs("ResBlockCBAM", (32, 8, 2), match=r"`stride` \(=2\) == 1"),
    BadArgs("ResBlockCBAM", (16, 0, 1, True), match=r"`places` \(=0\) must be positive"),
    BadArgs("JongchanCBAM", (32, 8, ["avg", "median"]), match=r"`pool_types` \(='median'\)"),
    BadArgs("JongchanCBAM", (32, 8, []), match=r"`pool_types` \(=\(\)\)"),
    BadArgs("AttentionGate", (12, 0, 6), match=r"`F_l` \(=0\) must be positive"),
    BadArgs("SelfAttention", (16, 0, 8), match=r"`dim_k` \(=0\) must be positive"),
    BadCall(
        "SELayer channels",
        lambda: flaxattn.SELayer(32, 8, rngs=nnx.Rngs(0)),
        [(2, 5, 5, 16)],
        r"SELayer: expected `x` of shape \(B, H, W, 32\), got \(2, 5, 5, 16\)",
    ),
    BadCall(
        "CBAM rank",
        lambda: flaxattn.CBAM(32, rngs=nnx.Rngs(0)),
        [(5, 5, 32)],
        r"expected `x` of shape \(B, H, W, 32\), got \(5, 5, 32\)",
    ),
    BadCall(
        "AttentionGate mismatched maps",
        lambda: flaxattn.AttentionGate(4, 6, 3, rngs=nnx.Rngs(0)),
        [(2, 5, 5, 4), (2, 4, 5, 6)],
        r"`g` and `x` must share \(B, H, W\)",
    ),
    BadCall(
        "SelfAttention features",
        lambda: flaxattn.SelfAttention(16, 8, 8, rngs=nnx.Rngs(0)),
        [(2, 10, 12)],
        r"expected `x` of shape \(B, N, 16\), got \(2, 10, 12\)",
    ),
)
