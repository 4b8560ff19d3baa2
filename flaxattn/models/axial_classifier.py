"""A small image classifier around the axial image transformer.

Ho et al., "Axial Attention in Multidimensional Transformers", 2019.
https://arxiv.org/abs/1912.12180

A strided 3x3 conv stem to ``dim`` channels, an
:class:`~flaxattn.layers.axial.AxialImageTransformer` (reversible by default),
global average pooling, LayerNorm and a linear classifier. No positional
embedding: the transformer's 3x3 conv feed-forwards see position through their
zero padding, and the model then takes any image size.

Channels-last here (the transformer runs with ``dim_index=-1``); the torch_ref
twin is channels-first (``dim_index=1``). No parameter depends on the layout,
so the two load each other's weights key for key.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from flaxattn.layers.axial import AxialImageTransformer
from flaxattn.layers.basic import Conv2d, Dtype, LayerNorm, Linear
from flaxattn.ops.checks import check_input, check_positive


class AxialClassifier(nnx.Module):
    """Args:
      in_channels: image channels.
      num_classes: classifier outputs.
      dim: transformer channels.
      depth: transformer layers.
      heads: attention heads.
      dim_heads: width per head; default ``dim // heads``.
      stem_stride: stride of the 3x3 stem (2 halves the map).
      reversible: the transformer's stack (``True``, ``"coupling"`` or ``False``).

    Example::

      >>> model = AxialClassifier(1, 10, dim=16, depth=1, heads=2, rngs=nnx.Rngs(0))
      >>> model(jnp.ones((2, 28, 28, 1))).shape
      (2, 10)

    Shapes: ``(B, H, W, in_channels) -> (B, num_classes)``.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        dim: int = 32,
        depth: int = 2,
        heads: int = 4,
        dim_heads: int | None = None,
        stem_stride: int = 2,
        reversible: bool | str = True,
        *,
        dtype: Dtype = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_positive(in_channels=in_channels, num_classes=num_classes, stem_stride=stem_stride)
        self.in_channels = in_channels
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.stem = Conv2d(in_channels, dim, 3, stride=stem_stride, padding=1, **kw)
        self.transformer = AxialImageTransformer(
            dim, depth, heads, dim_heads, dim_index=-1, reversible=reversible, **kw
        )
        self.norm = LayerNorm(dim, **kw)
        self.fc = Linear(dim, num_classes, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.in_channels
        check_input(x, rank=4, last=c, layout=f"(B, H, W, {c})", where="AxialClassifier")
        x = self.transformer(self.stem(x))
        return self.fc(self.norm(x.mean(axis=(1, 2))))
