"""Squeeze-and-Excitation.

Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018. https://arxiv.org/abs/1709.01507
Reference: moskomule/senet.pytorch ``senet/se_module.py`` (same attribute names,
so its state_dicts load as they are).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from flaxattn.layers.basic import Dtype, Linear
from flaxattn.ops.checks import check_input, check_positive


class SELayer(nnx.Module):
    """Channel gate: global average pool, bottleneck MLP, sigmoid, rescale.

    Args:
      channel: number of channels ``C``.
      reduction: bottleneck ratio; the hidden width is ``channel // reduction``.

    Shapes: ``(B, H, W, C) -> (B, H, W, C)``.

    Example::

      >>> layer = SELayer(32, reduction=8, rngs=nnx.Rngs(0))
      >>> layer.fc.layers[0].kernel.shape
      (32, 4)
      >>> layer(jnp.ones((2, 5, 6, 32))).shape
      (2, 5, 6, 32)
    """

    def __init__(
        self,
        channel: int,
        reduction: int = 16,
        *,
        dtype: Dtype = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_positive(channel=channel, reduction=reduction)
        if reduction > channel:
            raise ValueError(f"`reduction` (={reduction}) must not exceed `channel` (={channel})")
        self.channel = channel
        hidden = channel // reduction
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        # Indices 0 and 2 hold the weights, as in upstream's nn.Sequential.
        self.fc = nnx.Sequential(
            Linear(channel, hidden, bias=False, **kw),
            nnx.relu,
            Linear(hidden, channel, bias=False, **kw),
            nnx.sigmoid,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.channel
        check_input(x, rank=4, last=c, layout=f"(B, H, W, {c})", where="SELayer")
        y = self.fc(x.mean(axis=(1, 2)))
        return x * y[:, None, None, :].astype(x.dtype)
