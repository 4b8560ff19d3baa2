"""Single-head self-attention (twin of ``flaxattn.layers.self_attention``).

Vaswani et al., "Attention Is All You Need", NeurIPS 2017. https://arxiv.org/abs/1706.03762
"""

from __future__ import annotations

import math

import torch
from torch import nn

from torch_ref._checks import check_positive
from torch_ref._twin import Twin


class SelfAttention(Twin):
    """``softmax(q k^T / sqrt(dim_k)) v``. Shapes: ``(B, N, input_dim) -> (B, N, dim_v)``.

    The scale multiplies the logits before the softmax, as in Vaswani et al. (Eq. 1),
    not the softmax output.
    """

    def __init__(self, input_dim: int, dim_k: int, dim_v: int):
        super().__init__()
        check_positive(input_dim=input_dim, dim_k=dim_k, dim_v=dim_v)
        self.q = nn.Linear(input_dim, dim_k)
        self.k = nn.Linear(input_dim, dim_k)
        self.v = nn.Linear(input_dim, dim_v)
        self._norm_fact = 1 / math.sqrt(dim_k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q(x), self.k(x), self.v(x)
        attn = torch.softmax(torch.bmm(q, k.transpose(1, 2)) * self._norm_fact, dim=-1)
        return torch.bmm(attn, v)
