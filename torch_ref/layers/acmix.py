"""ACmix (twin of ``flaxattn.layers.acmix``), NCHW.

Pan et al., "On the Integration of Self-Attention and Convolution", CVPR 2022.
https://arxiv.org/abs/2111.14556
Follows LeapLabTHU/ACmix ``ResNet/test_bottleneck.py`` key for key, in its unfold
form (the reference the fast Flax kernels are checked against).
"""

from __future__ import annotations

import torch
from torch import nn

from torch_ref._checks import check_choice, check_divisible, check_positive
from torch_ref._twin import Twin


def position(h: int, w: int, dtype: torch.dtype, device=None) -> torch.Tensor:
    """``(1, 2, H, W)``: channel 0 the ``linspace(-1, 1, W)`` column coordinate, 1 the row one."""
    loc_w = torch.linspace(-1.0, 1.0, w, dtype=dtype, device=device).unsqueeze(0).repeat(h, 1)
    loc_h = torch.linspace(-1.0, 1.0, h, dtype=dtype, device=device).unsqueeze(1).repeat(1, w)
    return torch.cat([loc_w.unsqueeze(0), loc_h.unsqueeze(0)], 0).unsqueeze(0)


def _check_args(in_planes, out_planes, kernel_att, head, kernel_conv, stride, dilation) -> None:
    check_positive(
        in_planes=in_planes,
        out_planes=out_planes,
        kernel_att=kernel_att,
        head=head,
        kernel_conv=kernel_conv,
        dilation=dilation,
    )
    check_divisible("out_planes", out_planes, "head", head)
    check_choice("stride", stride, (1, 2))
    for name, value in (("kernel_att", kernel_att), ("kernel_conv", kernel_conv)):
        if value % 2 == 0:
            raise ValueError(f"`{name}` (={value}) must be odd")


class ACmix(Twin):
    """Shapes: ``(B, in_planes, H, W) -> (B, out_planes, ceil(H / stride), ceil(W / stride))``.

    Deviation from upstream (each one crashes there):
    - stride 2 on odd sizes: the attention output is ``ceil(h / stride)``, the size
      of the strided unfold and of ``dep_conv``'s output (upstream views it as
      ``h // stride``);
    - ``dilation > 1``: the unfold is dilated as the reflection padding is
      (upstream pads for a dilated window but unfolds an undilated one);
    - ``kernel_conv != 3``: ``dep_conv`` pads by ``kernel_conv // 2`` (upstream: 1,
      so its output no longer matches the attention path);
    - maps smaller than ``padding_att + 1`` raise a ``ValueError`` naming the
      minimum size (upstream: ``ReflectionPad2d``'s RuntimeError).
    Also: the position grid is built in the input's dtype and device (upstream
    uses the default dtype and ``.cuda()``); ``dep_conv`` has no bias, as upstream
    ends up after ``reset_parameters`` sets it to ``None``.
    """

    def __init__(
        self,
        in_planes: int,
        out_planes: int,
        kernel_att: int = 7,
        head: int = 4,
        kernel_conv: int = 3,
        stride: int = 1,
        dilation: int = 1,
    ):
        super().__init__()
        _check_args(in_planes, out_planes, kernel_att, head, kernel_conv, stride, dilation)
        self.in_planes = in_planes
        self.out_planes = out_planes
        self.head = head
        self.kernel_att = kernel_att
        self.kernel_conv = kernel_conv
        self.stride = stride
        self.dilation = dilation
        self.rate1 = nn.Parameter(torch.empty(1))
        self.rate2 = nn.Parameter(torch.empty(1))
        self.head_dim = out_planes // head

        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=1)
        self.conv2 = nn.Conv2d(in_planes, out_planes, kernel_size=1)
        self.conv3 = nn.Conv2d(in_planes, out_planes, kernel_size=1)
        self.conv_p = nn.Conv2d(2, self.head_dim, kernel_size=1)

        # upstream's padding: (dilation * (kernel_att - 1) + 1) // 2
        self.padding_att = (dilation * (kernel_att - 1) + 1) // 2
        self.pad_att = nn.ReflectionPad2d(self.padding_att)
        self.unfold = nn.Unfold(kernel_size=kernel_att, dilation=dilation, stride=stride)
        self.softmax = nn.Softmax(dim=1)

        kk = kernel_conv * kernel_conv
        self.fc = nn.Conv2d(3 * head, kk, kernel_size=1, bias=False)
        self.dep_conv = nn.Conv2d(
            kk * self.head_dim,
            out_planes,
            kernel_size=kernel_conv,
            bias=False,
            groups=self.head_dim,
            padding=kernel_conv // 2,
            stride=stride,
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.rate1, 0.5)
        nn.init.constant_(self.rate2, 0.5)
        k = self.kernel_conv
        kernel = torch.zeros(k * k, k, k)
        for i in range(k * k):
            kernel[i, i // k, i % k] = 1.0
        with torch.no_grad():
            self.dep_conv.weight.copy_(kernel.repeat(self.out_planes, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.conv1(x), self.conv2(x), self.conv3(x)
        scaling = float(self.head_dim) ** -0.5
        b, c, h, w = q.shape
        ka = self.kernel_att
        p = self.padding_att
        if min(h, w) <= p:  # ReflectionPad2d needs padding < size
            raise ValueError(
                f"ACmix: maps must be at least {p + 1}x{p + 1} for the reflection padding of "
                f"{p} (kernel_att={ka}, dilation={self.dilation}), got {h}x{w}"
            )
        s, n, d = self.stride, self.head, self.head_dim
        h_out, w_out = (h - 1) // s + 1, (w - 1) // s + 1

        # attention, with the positional encoding
        pe = self.conv_p(position(h, w, x.dtype, x.device))
        q_att = q.view(b * n, d, h, w) * scaling
        k_att = k.view(b * n, d, h, w)
        v_att = v.view(b * n, d, h, w)
        if s > 1:
            q_att = q_att[:, :, ::s, ::s]
            q_pe = pe[:, :, ::s, ::s]
        else:
            q_pe = pe
        unfold_k = self.unfold(self.pad_att(k_att)).view(b * n, d, ka * ka, h_out, w_out)
        unfold_rpe = self.unfold(self.pad_att(pe)).view(1, d, ka * ka, h_out, w_out)
        att = (q_att.unsqueeze(2) * (unfold_k + q_pe.unsqueeze(2) - unfold_rpe)).sum(1)
        att = self.softmax(att)
        out_att = self.unfold(self.pad_att(v_att)).view(b * n, d, ka * ka, h_out, w_out)
        out_att = (att.unsqueeze(1) * out_att).sum(2).view(b, self.out_planes, h_out, w_out)

        # convolution
        f_all = self.fc(
            torch.cat([q.view(b, n, d, h * w), k.view(b, n, d, h * w), v.view(b, n, d, h * w)], 1)
        )
        f_conv = f_all.permute(0, 2, 1, 3).reshape(b, -1, h, w)
        out_conv = self.dep_conv(f_conv)
        return self.rate1 * out_att + self.rate2 * out_conv
