"""ACmix family: ACmix at ResNet stage-1 size and the ACmix ResNet-26.

``acmix/acmix[unfold]`` is the same module with the attention path computed as
upstream does, from unfolded windows (``lax.conv_general_dilated_patches``),
to compare time and compiled temp memory with the blocked kernel.

The ResNet-26 runs on 64x64 images with the CIFAR-style stem (stage maps 64, 32,
16 and 8): with upstream's ImageNet stem, stage 4 would be 2x2, smaller than the
4x4 that the 7x7 window's reflection padding needs.
"""

import jax
import jax.numpy as jnp
from flax import nnx

import flaxattn
import torch_ref
from bench.registry import BenchCase, register
from flaxattn.convert import load_state_dict


class UnfoldACmix(flaxattn.ACmix):
    """ACmix whose window attention gathers every window with ``conv_general_dilated_patches``."""

    def attend(self, q, k, v):
        b, h, w, n, d = k.shape
        ks, s, dil = self.kernel_att, self.stride, self.dilation
        p = self.padding_att
        pad = ((0, 0), (p, p), (p, p), (0, 0))

        def unfold(x):  # (B, Ho, Wo, heads, d, ks*ks), channel-major like nn.Unfold
            x = jnp.pad(x.reshape(b, h, w, n * d), pad, mode="reflect")
            patches = jax.lax.conv_general_dilated_patches(
                x,
                (ks, ks),
                (s, s),
                "VALID",
                rhs_dilation=(dil, dil),
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )
            return patches.reshape(patches.shape[:3] + (n, d, ks * ks))

        logits = jnp.einsum("bhwnd,bhwndj->bhwnj", q, unfold(k))
        att = jax.nn.softmax(logits, axis=-1)
        return jnp.einsum("bhwnj,bhwndj->bhwnd", att, unfold(v))


def _unfold_variant(torch_module):
    module = UnfoldACmix(**torch_module.init_args, rngs=nnx.Rngs(0))
    load_state_dict(module, torch_module.state_dict())
    return module


register(
    BenchCase(
        "acmix/acmix",
        lambda: torch_ref.ACmix(64, 64),
        [(8, 64, 56, 56)],
        variants={"unfold": _unfold_variant},
    ),
    BenchCase(
        "acmix/resnet26",
        lambda: torch_ref.acmix_resnet26(num_classes=10, stem="cifar"),
        [(4, 3, 64, 64)],
    ),
)
