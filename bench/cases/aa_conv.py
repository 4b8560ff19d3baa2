"""Attention-augmented convolution: the layer at a WRN-stage size, and the mnist AA-WRN.

Variants of ``aa_conv/augmented_conv`` (same weights, same function):

- ``tiled``: upstream's algorithm: the whole ``(B, Nh, HW, HW)`` logits at once,
  the height and width relative logits each ``repeat``ed to ``(B, Nh, HW, HW)`` and
  transposed into place before the add;
- ``blocked``: our broadcast-added relative logits in ten rematerialised blocks of
  queries (``query_block=79``; the main row runs all 784 queries in one block, since
  its 39M logits are under ``flaxattn.ops.relative.BLOCK_LOGITS``).

XLA fuses the tiling of ``tiled`` into the add, so ``tiled`` and the main row compile
to the same temp memory; what the broadcast formulation buys is that no ``(HW)^2``
tensor is needed beyond one row of queries, so the layer can run in rematerialised
query blocks (``blocked``: less memory, more time).
"""

import jax
import jax.numpy as jnp
from flax import nnx

import torch_ref
from bench.registry import BenchCase, register
from flaxattn.convert import from_torch, load_state_dict
from flaxattn.layers.aa_conv import AugmentedConv
from flaxattn.ops.relative import rel_to_abs


class _TiledAugmentedConv(AugmentedConv):
    """AugmentedConv with upstream's tiled relative logits over full logits (bench only)."""

    def _attend(self, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        b, h, w, nh, dkh = q.shape
        n = h * w
        logits = jnp.einsum("bpnd,bqnd->bnpq", q.reshape(b, n, nh, dkh), k)
        # Width: (B, Nh, H, W, W) [x, y, y'] -> repeat over x' -> [x, y, x', y'].
        rel_w = rel_to_abs(jnp.einsum("bxynd,md->bnxym", q, self.key_rel_w[...]))
        rel_w = jnp.tile(rel_w[:, :, :, None], (1, 1, 1, h, 1, 1))  # [x, x', y, y']
        rel_w = jnp.swapaxes(rel_w, 3, 4).reshape(b, nh, n, n)
        # Height: (B, Nh, W, H, H) [y, x, x'] -> repeat over y' -> [x, y, x', y'].
        rel_h = rel_to_abs(jnp.einsum("bxynd,md->bnyxm", q, self.key_rel_h[...]))
        rel_h = jnp.tile(rel_h[:, :, :, None], (1, 1, 1, w, 1, 1))  # [y, y', x, x']
        rel_h = jnp.transpose(rel_h, (0, 1, 4, 2, 5, 3)).reshape(b, nh, n, n)
        weights = jax.nn.softmax(logits + rel_h + rel_w, axis=-1)
        return jnp.einsum("bnpq,bqne->bnpe", weights, v)


def _tiled(tm):
    fm = _TiledAugmentedConv(**tm.init_args, rngs=nnx.Rngs(0))
    load_state_dict(fm, tm.state_dict())
    return fm


def _blocked(tm):
    fm = from_torch(tm, param_dtype=jnp.float32)
    fm.query_block = 79  # 784 queries in 10 blocks
    return fm


register(
    BenchCase(
        "aa_conv/augmented_conv",
        lambda: torch_ref.AugmentedConv(32, 64, 3, dk=32, dv=32, Nh=4, shape=28, relative=True),
        [(16, 32, 28, 28)],
        variants={"tiled": _tiled, "blocked": _blocked},
    ),
    # The training registry's configuration (stride-2 stem), at the smoke test's batch.
    BenchCase(
        "aa_conv/aa_wide_resnet_mnist",
        lambda: torch_ref.AAWideResNet(10, 1, 0.0, 10, shape=28, in_channels=1, stem_stride=2),
        [(32, 1, 28, 28)],
        compile=False,
    ),
)
