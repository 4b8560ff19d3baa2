"""Attention-augmented Wide-ResNet.

Bello et al., "Attention Augmented Convolutional Networks", ICCV 2019.
https://arxiv.org/abs/1904.09925
Zagoruyko and Komodakis, "Wide Residual Networks", BMVC 2016.
https://arxiv.org/abs/1605.07146

The Wide-ResNet of leaderj1001/Attention-Augmented-Conv2d
(``AA-Wide-ResNet/attention_augmented_wide_resnet.py``, class ``Wide_ResNet``), in
which every convolution (stem, both convolutions of each block, projection
shortcuts) is an :class:`~flaxattn.layers.aa_conv.AugmentedConv` with relative
logits, ``Nh = 4``, ``dk = 2 * planes`` and ``dv = int(0.2 * planes)``. Submodule
names follow upstream (``layer1.0.0.conv1.qkv_conv.weight``), so its state_dicts
load key for key.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from flaxattn.layers.aa_conv import AugmentedConv, map_shape
from flaxattn.layers.basic import BatchNorm2d, Conv2d, Dropout, Dtype, Linear
from flaxattn.ops.checks import check_choice, check_input, check_positive


def strided_shape(shape: tuple[int, int], stride: int) -> tuple[int, int]:
    """Map size after a 3x3 convolution with padding 1 and ``stride``."""
    return tuple((s - 1) // stride + 1 for s in shape)


def wrn_stages(depth: int, widen_factor: int) -> tuple[int, list[int]]:
    """Blocks per stage and the widths ``[20, 20k, 40k, 60k]`` (validated)."""
    check_positive(depth=depth, widen_factor=widen_factor)
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"`depth` (={depth}) must be 6n + 4 with n >= 1 (10, 16, 22, 28, ...)")
    k = widen_factor
    return (depth - 4) // 6, [20, 20 * k, 40 * k, 60 * k]


class WideBasic(nnx.Module):
    """Pre-activation wide block of AugmentedConvs (upstream's ``wide_basic``).

    ``conv1(relu(bn1(x)))`` at stride 1, dropout, ``conv2(relu(bn2(.)))`` at
    ``stride``, plus the input or, when the width or the stride changes, an
    AugmentedConv shortcut at ``stride``.

    Deviation from upstream: upstream passes the block's *output* map size as
    ``shape`` and takes ``2 * shape`` as its input size for stride 2, which is
    wrong for odd input sizes; here ``in_shape`` is the input size and the output
    size is computed (``ceil(in / stride)``).

    Args:
      in_planes: input channels.
      planes: output channels.
      dropout_rate: dropout between the two convolutions.
      in_shape: input map size, an int or ``(H, W)`` (the relative tables need it).
      stride: 1 or 2.
      v: ``dv = int(v * planes)``.
      k: ``dk = k * planes``.
      Nh: heads.

    Shapes: ``(B, H, W, in_planes) -> (B, ceil(H / stride), ceil(W / stride), planes)``.
    """

    def __init__(
        self,
        in_planes: int,
        planes: int,
        dropout_rate: float,
        in_shape: int | Sequence[int],
        stride: int = 1,
        v: float = 0.2,
        k: int = 2,
        Nh: int = 4,
        *,
        dtype: Dtype = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_positive(in_planes=in_planes, planes=planes)
        hw = map_shape(in_shape, True)
        out_hw = strided_shape(hw, stride)
        dk, dv = k * planes, int(v * planes)
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        aa = dict(kernel_size=3, dk=dk, dv=dv, Nh=Nh, relative=True, **kw)
        self.bn1 = BatchNorm2d(in_planes, **kw)
        self.conv1 = AugmentedConv(in_planes, planes, shape=hw, **aa)
        self.dropout = Dropout(dropout_rate, rngs=rngs)
        self.bn2 = BatchNorm2d(planes, **kw)
        self.conv2 = AugmentedConv(planes, planes, shape=out_hw, stride=stride, **aa)
        if stride != 1 or in_planes != planes:
            self.shortcut = nnx.Sequential(
                AugmentedConv(in_planes, planes, shape=out_hw, stride=stride, **aa)
            )
        else:
            self.shortcut = nnx.data(None)

    def __call__(self, x: jax.Array) -> jax.Array:
        out = self.dropout(self.conv1(nnx.relu(self.bn1(x))))
        out = self.conv2(nnx.relu(self.bn2(out)))
        return out + (self.shortcut(x) if self.shortcut is not None else x)


@functools.partial(jax.jit, static_argnames=("conv_shapes", "linear_shape", "dtype"))
def _draw_init(key, conv_shapes, linear_shape, dtype):
    # One uniform draw sliced into every kernel: a threefry per kernel shape would
    # compile once per shape, which dominates building a network on CPU.
    sizes = [math.prod(s) for s in conv_shapes]
    k_conv, k_lin = jax.random.split(key)
    u = jax.random.uniform(k_conv, (sum(sizes),), dtype, -1.0, 1.0)
    kernels, start = [], 0
    for shape, size in zip(conv_shapes, sizes, strict=True):
        kh, kw, c_in, c_out = shape
        # Xavier-uniform: bound sqrt(6 / (fan_in + fan_out)), receptive field included.
        bound = math.sqrt(6.0 / (kh * kw * (c_in + c_out)))
        kernels.append(bound * u[start : start + size].reshape(shape))
        start += size
    return kernels, 0.01 * jax.random.normal(k_lin, linear_shape, dtype)


def _weights_init(module: nnx.Module, rngs: nnx.Rngs) -> None:
    """Upstream's ``_weights_init``: Xavier-uniform convolutions with zero bias,
    ``N(0, 0.01)`` Linear weights with zero bias (BatchNorm is already 1/0)."""
    convs = [m for _, m in nnx.iter_modules(module) if isinstance(m, Conv2d)]
    (linear,) = [m for _, m in nnx.iter_modules(module) if isinstance(m, Linear)]
    dtype = linear.kernel[...].dtype
    kernels, lin = _draw_init(
        rngs.params(),
        tuple(tuple(m.kernel[...].shape) for m in convs),
        tuple(linear.kernel[...].shape),
        dtype,
    )
    for m, kernel in zip(convs, kernels, strict=True):
        m.kernel[...] = kernel.astype(m.kernel[...].dtype)
    linear.kernel[...] = lin
    for m in [*convs, linear]:
        if m.bias is not None:
            m.bias[...] = jnp.zeros_like(m.bias[...])


class AAWideResNet(nnx.Module):
    """Attention-augmented Wide-ResNet (upstream's ``Wide_ResNet``).

    An AugmentedConv stem (20 channels), three stages of ``(depth - 4) / 6``
    :class:`WideBasic` blocks of widths ``20k``, ``40k``, ``60k`` (strides 1, 2, 2),
    BatchNorm (PyTorch momentum 0.9, as upstream) + ReLU, global average pooling
    and a linear classifier. Initialised as upstream (Xavier-uniform convolutions,
    ``N(0, 0.01)`` classifier, ``N(0, 1)`` relative tables).

    Deviation from upstream: global average pooling instead of ``avg_pool2d(out, 8)``
    (the same on upstream's 32x32 inputs, whose last map is 8x8; upstream fails
    for other sizes); stage map sizes are computed (``ceil(H / 2)``) rather than
    ``shape // 2`` and ``shape // 4``, which are wrong unless ``shape`` is a
    multiple of 4; ``shape`` may be ``(H, W)``; ``in_channels`` is an argument
    (upstream fixes 3). Upstream's ``print`` of the architecture is dropped.
    Added: ``stem_stride=2`` runs the stem at stride 2, so that every attention map
    is 4x smaller (16x fewer attention logits), for training on CPU; the default 1
    is upstream's network.

    Args:
      depth: ``6n + 4``; ``n`` blocks per stage.
      widen_factor: ``k``; stage widths ``20k``, ``40k``, ``60k``.
      dropout_rate: dropout inside each block.
      num_classes: classifier outputs.
      shape: input image size, an int or ``(H, W)``.
      in_channels: image channels.
      stem_stride: stride of the stem AugmentedConv, 1 (upstream) or 2.

    Shapes: ``(B, H, W, in_channels) -> (B, num_classes)`` with ``(H, W) == shape``.

    Example (the training registry's MNIST configuration)::

      >>> net = AAWideResNet(10, 1, 0.0, 10, shape=28, in_channels=1, stem_stride=2,
      ...                    rngs=nnx.Rngs(0))
      >>> net.eval()  # running BatchNorm statistics: nothing to update while tracing
      >>> jax.eval_shape(net, jnp.ones((2, 28, 28, 1))).shape
      (2, 10)
      >>> net.layer3.layers[0].layers[0].conv2.shape  # 28 -> 14 (stem) -> 7 -> 4
      (4, 4)
    """

    def __init__(
        self,
        depth: int,
        widen_factor: int,
        dropout_rate: float,
        num_classes: int,
        shape: int | Sequence[int],
        in_channels: int = 3,
        stem_stride: int = 1,
        *,
        dtype: Dtype = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        n, widths = wrn_stages(depth, widen_factor)
        check_positive(num_classes=num_classes, in_channels=in_channels)
        check_choice("stem_stride", stem_stride, (1, 2))
        hw = strided_shape(map_shape(shape, True), stem_stride)
        self.in_channels = in_channels
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.conv1 = AugmentedConv(
            in_channels,
            widths[0],
            3,
            2 * widths[0],
            int(0.2 * widths[0]),
            4,
            hw,
            True,
            stem_stride,
            **kw,
        )
        in_planes = widths[0]
        for i, (planes, stride) in enumerate(zip(widths[1:], (1, 2, 2), strict=True)):
            blocks = []
            for s in [stride] + [1] * (n - 1):
                blocks.append(WideBasic(in_planes, planes, dropout_rate, hw, s, **kw))
                in_planes, hw = planes, strided_shape(hw, s)
            # Upstream wraps each stage's Sequential in another one: keys `layer1.0.0.*`.
            setattr(self, f"layer{i + 1}", nnx.Sequential(nnx.Sequential(*blocks)))
        self.bn1 = BatchNorm2d(widths[3], momentum=0.9, **kw)
        self.linear = Linear(widths[3], num_classes, **kw)
        _weights_init(self, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.in_channels
        check_input(x, rank=4, last=c, layout=f"(B, H, W, {c})", where="AAWideResNet")
        out = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        out = nnx.relu(self.bn1(out))
        return self.linear(out.mean(axis=(1, 2)))
