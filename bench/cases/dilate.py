"""DilateFormer family at DilateFormer-Tiny's stage-1 size (dim 72, 56x56) and the whole model.

``dilate/msda`` also times two other JAX implementations of the same module, for
the time and memory comparison (``compiled temp memory`` column):

- ``[unfold]``: neighbourhoods gathered with ``lax.conv_general_dilated_patches``
  (XLA's ``nn.Unfold``), then einsums, as the torch twin does;
- ``[stack]``: the shifted windows stacked into a ``(B, H, W, k*k, d)`` tensor
  (``flaxattn.ops.local.neighbourhood``), then einsums.

flaxattn's own version slices the padded map once per window offset and never
materialises the ``k*k``-fold neighbourhood.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx
from torch import nn

import torch_ref
from bench.registry import BenchCase, register
from flaxattn.convert import from_torch
from flaxattn.layers.dilate import MultiDilateLocalAttention
from flaxattn.ops.local import neighbourhood, window_padding


def _gather(x: jax.Array, kernel_size: int, dilation: int, head_dim: int, how: str):
    """The ``(B, H, W, heads, hd, k*k)`` neighbourhood of every position, materialised."""
    b, h, w, d = x.shape
    k = kernel_size
    if how == "unfold":
        p = window_padding(k, dilation)
        patches = jax.lax.conv_general_dilated_patches(
            x,
            (k, k),
            (1, 1),
            ((p, p), (p, p)),
            rhs_dilation=(dilation, dilation),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )  # (B, H, W, d * k * k), channel-major
        return patches.reshape(b, h, w, d // head_dim, head_dim, k * k)
    win = neighbourhood(x, k, dilation=dilation)  # (B, H, W, k*k, d)
    return win.reshape(b, h, w, k * k, d // head_dim, head_dim).transpose(0, 1, 2, 4, 5, 3)


class _GatheredMSDA(nnx.Module):
    """MSDA with the neighbourhoods gathered into tensors (``how``: unfold or stack)."""

    def __init__(self, base: MultiDilateLocalAttention, how: str):
        self.base = base
        self.how = how

    def __call__(self, x: jax.Array) -> jax.Array:
        m = self.base
        b, h, w, c = x.shape
        n = m.num_dilation
        qkv = m.qkv(x).reshape(b, h, w, 3, n, c // n)
        outs = []
        for i, att in enumerate(m.dilate_attention):
            q, k, v = qkv[..., 0, i, :], qkv[..., 1, i, :], qkv[..., 2, i, :]
            hd = att.head_dim
            q = q.reshape(b, h, w, c // n // hd, hd) * att.scale
            kn = _gather(k, att.kernel_size, att.dilation, hd, self.how)
            vn = _gather(v, att.kernel_size, att.dilation, hd, self.how)
            attn = jax.nn.softmax(jnp.einsum("bxyhd,bxyhdk->bxyhk", q, kn), axis=-1)
            outs.append(jnp.einsum("bxyhk,bxyhdk->bxyhd", attn, vn).reshape(b, h, w, c // n))
        return m.proj(jnp.concatenate(outs, axis=-1))


def _gathered(how: str):
    def make(torch_module):
        return _GatheredMSDA(from_torch(torch_module, param_dtype=jnp.float32), how)

    return make


register(
    BenchCase(
        "dilate/msda",
        lambda: torch_ref.MultiDilateLocalAttention(72, 3, qkv_bias=True),
        [(8, 56, 56, 72)],
        layouts="none",
        variants={"unfold": _gathered("unfold"), "stack": _gathered("stack")},
    ),
    BenchCase(
        "dilate/block",
        lambda: torch_ref.DilateBlock(
            72,
            3,
            qkv_bias=True,
            cpe_per_block=True,
            norm_layer=functools.partial(nn.LayerNorm, eps=1e-6),
        ),
        [(8, 72, 56, 56)],
    ),
    BenchCase(
        "dilate/dilateformer_tiny",
        lambda: torch_ref.dilateformer_tiny(),
        [(8, 3, 224, 224)],
    ),
)
