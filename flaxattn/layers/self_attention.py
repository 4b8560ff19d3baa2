"""Single-head scaled dot-product self-attention over tokens.

Vaswani et al., "Attention Is All You Need", NeurIPS 2017. https://arxiv.org/abs/1706.03762
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from flaxattn.layers.basic import Dtype, Linear
from flaxattn.ops.checks import check_input, check_positive


class SelfAttention(nnx.Module):
    """``softmax(q k^T / sqrt(dim_k)) v`` with separate q, k, v projections.

    The scale is applied to the logits before the softmax, as in the paper (Eq. 1);
    scaling the attention *weights* after the softmax instead, as some tutorial code
    does, only rescales the output and leaves the softmax unscaled.

    Args:
      input_dim: token feature size ``D``.
      dim_k: query/key size.
      dim_v: value (and output) size.

    Shapes: ``(B, N, D) -> (B, N, dim_v)``.
    """

    def __init__(
        self,
        input_dim: int,
        dim_k: int,
        dim_v: int,
        *,
        dtype: Dtype = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_positive(input_dim=input_dim, dim_k=dim_k, dim_v=dim_v)
        self.input_dim = input_dim
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.q = Linear(input_dim, dim_k, **kw)
        self.k = Linear(input_dim, dim_k, **kw)
        self.v = Linear(input_dim, dim_v, **kw)
        self.scale = 1.0 / math.sqrt(dim_k)

    def __call__(self, x: jax.Array) -> jax.Array:
        d = self.input_dim
        check_input(x, rank=3, last=d, layout=f"(B, N, {d})", where="SelfAttention")
        q, k, v = self.q(x), self.k(x), self.v(x)
        logits = jnp.einsum("bnd,bmd->bnm", q * self.scale, k)
        return jnp.einsum("bnm,bmd->bnd", jax.nn.softmax(logits, axis=-1), v)
