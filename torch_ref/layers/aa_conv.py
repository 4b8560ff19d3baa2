"""Attention-augmented convolution (twin of ``flaxattn.layers.aa_conv``), NCHW.

Bello et al., "Attention Augmented Convolutional Networks", ICCV 2019.
https://arxiv.org/abs/1904.09925

Follows leaderj1001/Attention-Augmented-Conv2d ``attention_augmented_conv.py``
(state_dict keys ``conv_out.*``, ``qkv_conv.*``, ``attn_out.*``, ``key_rel_w``,
``key_rel_h``), fixing what is broken there (see the class docstring).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from torch_ref._checks import check_choice, check_divisible, check_positive
from torch_ref._twin import Twin


def rel_to_abs(x: torch.Tensor) -> torch.Tensor:
    """``(..., L, 2L - 1) -> (..., L, L)``: ``out[..., i, j] = x[..., i, j - i + L - 1]``."""
    *lead, length, width = x.shape
    flat = F.pad(x, (0, 1)).reshape(*lead, 2 * length * length)
    flat = F.pad(flat, (0, length - 1))
    return flat.reshape(*lead, length + 1, width)[..., :length, length - 1 :]


def map_shape(shape: int | Sequence[int], relative: bool) -> tuple[int, int]:
    """``shape`` (an int or ``(H, W)``) as a pair; positive when ``relative``."""
    if isinstance(shape, int) and not isinstance(shape, bool):
        pair = (shape, shape)
    else:
        pair = tuple(shape) if isinstance(shape, (tuple, list)) else ()
        if len(pair) != 2 or not all(isinstance(s, int) for s in pair):
            raise ValueError(f"`shape` (={shape!r}) must be an int or a pair of ints (H, W)")
    if relative and min(pair) < 1:
        raise ValueError(
            f"`shape` (={shape!r}) must be the positive attention map size (H, W) "
            "when `relative=True`"
        )
    return pair


def _check_args(in_channels, out_channels, kernel_size, dk, dv, Nh, stride) -> None:
    check_positive(
        in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size, Nh=Nh
    )
    check_choice("stride", stride, (1, 2))
    if dv < 0:
        raise ValueError(f"`dv` (={dv}) must not be negative")
    if dv > out_channels:
        raise ValueError(f"`dv` (={dv}) must not exceed `out_channels` (={out_channels})")
    check_divisible("dv", dv, "Nh", Nh)
    if dv > 0:
        check_positive(dk=dk)
        check_divisible("dk", dk, "Nh", Nh)


class AugmentedConv(Twin):
    """Convolution concatenated with multi-head self-attention over the whole map.

    See :class:`flaxattn.layers.aa_conv.AugmentedConv` for the arguments. Relative
    logits are broadcast-added as ``(B, Nh, H, W, H, 1)`` and ``(B, Nh, H, W, 1, W)``
    terms instead of upstream's ``repeat`` to ``(B, Nh, HW, HW)`` (same values).

    Deviation from upstream:

    - upstream scales the queries in place (``q *= dkh ** -0.5`` on a view returned
      by ``torch.split``), which autograd rejects whenever gradients are enabled;
      here ``q = q * dkh ** -0.5``;
    - upstream's relative logits only work on square maps of size ``shape``
      (both tables ``2 * shape - 1``); here ``shape`` may be ``(H, W)``, ``key_rel_h``
      is ``(2H - 1, dk / Nh)`` and ``key_rel_w`` is ``(2W - 1, dk / Nh)``, and a map of
      another size raises ``ValueError`` naming both sizes;
    - upstream crashes for ``dv = 0`` and ``dv = out_channels`` (zero-channel
      convolutions); here ``dv = 0`` is a plain convolution (no ``qkv_conv``,
      ``attn_out``, tables) and ``dv = out_channels`` pure attention (no ``conv_out``);
    - upstream ``assert``s its arguments; here bad ones raise ``ValueError``.

    Kept from upstream: the attention output ``(B, Nh, HW, dv / Nh)`` is reshaped,
    not transposed, to ``(B, Nh, dv / Nh, H, W)``.

    Shapes: ``(B, in_channels, H, W) -> (B, out_channels, H', W')``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        dk: int,
        dv: int,
        Nh: int,
        shape: int | Sequence[int] = 0,
        relative: bool = False,
        stride: int = 1,
    ):
        super().__init__()
        _check_args(in_channels, out_channels, kernel_size, dk, dv, Nh, stride)
        hw = map_shape(shape, relative and dv > 0)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.dk, self.dv, self.Nh = dk, dv, Nh
        self.shape = hw
        self.relative = relative
        self.stride = stride
        padding = (kernel_size - 1) // 2
        conv = out_channels - dv
        self.conv_out = (
            nn.Conv2d(in_channels, conv, kernel_size, stride=stride, padding=padding)
            if conv
            else None
        )
        if dv:
            self.qkv_conv = nn.Conv2d(
                in_channels, 2 * dk + dv, kernel_size, stride=stride, padding=padding
            )
            self.attn_out = nn.Conv2d(dv, dv, kernel_size=1, stride=1)
        else:
            self.qkv_conv = self.attn_out = None
        if relative and dv:
            h, w = hw
            self.key_rel_w = nn.Parameter(torch.randn(2 * w - 1, dk // Nh))
            self.key_rel_h = nn.Parameter(torch.randn(2 * h - 1, dk // Nh))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv_out = self.conv_out(x) if self.conv_out is not None else None
        if not self.dv:
            return conv_out
        attn = self.attn_out(self.attention(self.qkv_conv(x), tuple(x.shape)))
        return attn if conv_out is None else torch.cat((conv_out, attn), dim=1)

    def attention(self, qkv: torch.Tensor, in_shape: tuple) -> torch.Tensor:
        b, _, h, w = qkv.shape
        dk, dv, nh = self.dk, self.dv, self.Nh
        dkh, dvh = dk // nh, dv // nh
        if self.relative and (h, w) != self.shape:
            raise ValueError(
                f"AugmentedConv: `shape` (={self.shape}) must equal the attention map size "
                f"(H, W) with `relative=True`; input {in_shape} gives a {(h, w)} map "
                f"at stride {self.stride}"
            )
        n = h * w
        q, k, v = torch.split(qkv, [dk, dk, dv], dim=1)
        q = q.reshape(b, nh, dkh, h, w) * dkh**-0.5
        k = k.reshape(b, nh, dkh, n)
        v = v.reshape(b, nh, dvh, n)
        logits = torch.matmul(q.reshape(b, nh, dkh, n).transpose(2, 3), k)
        if self.relative:
            rel_h, rel_w = self.relative_logits(q)
            logits = logits.view(b, nh, h, w, h, w) + rel_h.unsqueeze(-1) + rel_w.unsqueeze(-2)
            logits = logits.view(b, nh, n, n)
        weights = F.softmax(logits, dim=-1)
        out = torch.matmul(weights, v.transpose(2, 3))  # (B, Nh, HW, dvh)
        return out.reshape(b, dv, h, w)  # upstream's reshape, no transpose

    def relative_logits(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``q (B, Nh, dkh, H, W)`` -> ``(B, Nh, H, W, H)`` and ``(B, Nh, H, W, W)`` logits."""
        rel_w = rel_to_abs(torch.einsum("bndxy,md->bnxym", q, self.key_rel_w))
        rel_h = rel_to_abs(torch.einsum("bndxy,md->bnyxm", q, self.key_rel_h))
        return rel_h.transpose(2, 3), rel_w
