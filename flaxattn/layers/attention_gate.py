"""Attention U-Net's additive attention gate.

Oktay et al., "Attention U-Net: Learning Where to Look for the Pancreas", MIDL 2018.
https://arxiv.org/abs/1804.03999
Reference: LeeJunHyun/Image_Segmentation ``network.py`` ``Attention_block``
(same attribute names, so its state_dicts load as they are).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from flaxattn.layers.basic import BatchNorm2d, Conv2d, Dtype
from flaxattn.ops.checks import check_input, check_positive


class AttentionGate(nnx.Module):
    """Gate skip features ``x`` by a map computed from ``x`` and the gating signal ``g``.

    ``psi = sigmoid(BN(conv1x1(relu(BN(W_g g) + BN(W_x x)))))``, output ``x * psi``.

    Args:
      F_g: channels of the gating signal ``g``.
      F_l: channels of the skip features ``x``.
      F_int: channels of the intermediate projection.

    Shapes: ``g (B, H, W, F_g)``, ``x (B, H, W, F_l) -> (B, H, W, F_l)``.
    """

    def __init__(
        self,
        F_g: int,
        F_l: int,
        F_int: int,
        *,
        dtype: Dtype = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_positive(F_g=F_g, F_l=F_l, F_int=F_int)
        self.F_g, self.F_l = F_g, F_l
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.W_g = nnx.Sequential(Conv2d(F_g, F_int, 1, bias=True, **kw), BatchNorm2d(F_int, **kw))
        self.W_x = nnx.Sequential(Conv2d(F_l, F_int, 1, bias=True, **kw), BatchNorm2d(F_int, **kw))
        self.psi = nnx.Sequential(
            Conv2d(F_int, 1, 1, bias=True, **kw), BatchNorm2d(1, **kw), nnx.sigmoid
        )

    def __call__(self, g: jax.Array, x: jax.Array) -> jax.Array:
        check_input(
            g,
            rank=4,
            last=self.F_g,
            layout=f"(B, H, W, {self.F_g})",
            where="AttentionGate",
            name="g",
        )
        check_input(
            x, rank=4, last=self.F_l, layout=f"(B, H, W, {self.F_l})", where="AttentionGate"
        )
        if g.shape[:3] != x.shape[:3]:
            raise ValueError(
                f"AttentionGate: `g` and `x` must share (B, H, W), "
                f"got {tuple(g.shape)} and {tuple(x.shape)}"
            )
        psi = self.psi(nnx.relu(self.W_g(g) + self.W_x(x)))
        return x * psi
