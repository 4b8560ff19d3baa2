"""ACmix ResNets: torchvision's ResNet (v1.5) with ACmix as the bottleneck's middle layer.

Pan et al., "On the Integration of Self-Attention and Convolution", CVPR 2022.
https://arxiv.org/abs/2111.14556
Reference: LeapLabTHU/ACmix ``ResNet/ResNet_ImageNet.py`` (``Bottleneck``, ``ResNet``,
``ACmix_ResNet``); attribute names as upstream, so its state_dicts load key for key.

Presets: :func:`acmix_resnet26` ``[1, 2, 4, 1]``, :func:`acmix_resnet38` ``[2, 3, 5, 2]``,
:func:`acmix_resnet50` ``[3, 4, 6, 3]`` (about 18.3M parameters at 1000 classes).

Upstream facts kept as they are: the stride sits in ACmix (the bottleneck's
middle layer), ACmix's width is ``int(planes * width_per_group / 64) * groups``,
and the network re-initialises *every* ``Conv2d`` with Kaiming-normal (fan out),
ACmix's shift-identity ``dep_conv`` and its ``fc``/``conv_p`` included.

All modules are channels-last: ``(B, H, W, C)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flaxattn.layers.acmix import ACmix
from flaxattn.layers.basic import BatchNorm2d, Conv2d, Dtype, Linear
from flaxattn.ops.checks import check_choice, check_input, check_positive

NormLayer = Callable[..., nnx.Module]
STEMS = ("imagenet", "cifar")


def projection(
    inplanes: int, outplanes: int, stride: int = 1, norm_layer: NormLayer | None = None
) -> Callable[..., nnx.Sequential]:
    """The projection shortcut (1x1 conv, no bias, then norm) as a factory for
    ``Bottleneck(downsample=...)``: ``factory(*, dtype, param_dtype, rngs) -> nnx.Sequential``."""
    check_positive(inplanes=inplanes, outplanes=outplanes, stride=stride)
    norm = norm_layer or BatchNorm2d

    def build(*, dtype: Dtype = None, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        return nnx.Sequential(
            Conv2d(inplanes, outplanes, 1, stride=stride, bias=False, **kw), norm(outplanes, **kw)
        )

    return build


class Bottleneck(nnx.Module):
    """ResNet bottleneck with ACmix in the middle: 1x1 conv, ACmix (stride), 1x1 conv, + shortcut.

    Args:
      inplanes: input channels.
      planes: bottleneck planes; the block outputs ``planes * 4`` channels.
      k_att, head, k_conv: ACmix's ``kernel_att``, ``head`` and ``kernel_conv``.
      stride: ACmix's stride (1 or 2).
      downsample: the shortcut: ``None`` (identity: needs ``inplanes == planes * 4``
        and stride 1), a module, or a factory ``(*, dtype, param_dtype, rngs) -> module``
        such as :func:`projection`.
      groups, base_width: ACmix's width is ``int(planes * base_width / 64) * groups``.
      dilation: ACmix's attention dilation.
      norm_layer: ``norm_layer(num_features, *, dtype, param_dtype, rngs)``;
        default :class:`~flaxattn.layers.basic.BatchNorm2d`.

    Deviation from upstream: an identity shortcut that cannot match the output
    raises a ``ValueError`` here (upstream fails at the residual add).

    Shapes: ``(B, H, W, inplanes) -> (B, ceil(H / stride), ceil(W / stride), planes * 4)``.
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        k_att: int,
        head: int,
        k_conv: int,
        stride: int = 1,
        downsample: nnx.Module | Callable[..., nnx.Module] | None = None,
        groups: int = 1,
        base_width: int = 64,
        dilation: int = 1,
        norm_layer: NormLayer | None = None,
        *,
        dtype: Dtype = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_positive(inplanes=inplanes, planes=planes, groups=groups, base_width=base_width)
        out = planes * self.expansion
        if downsample is None and (inplanes != out or stride != 1):
            raise ValueError(
                f"without `downsample` the identity shortcut needs `inplanes` (={inplanes}) "
                f"== `planes * 4` (={out}) and `stride` (={stride}) == 1"
            )
        norm = norm_layer or BatchNorm2d
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        width = int(planes * (base_width / 64.0)) * groups
        self.inplanes = inplanes
        self.conv1 = Conv2d(inplanes, width, 1, bias=False, **kw)
        self.bn1 = norm(width, **kw)
        self.conv2 = ACmix(width, width, k_att, head, k_conv, stride, dilation, **kw)
        self.bn2 = norm(width, **kw)
        self.conv3 = Conv2d(width, out, 1, bias=False, **kw)
        self.bn3 = norm(out, **kw)
        if downsample is None:
            self.downsample = nnx.data(None)
        elif isinstance(downsample, nnx.Module):
            self.downsample = downsample
        else:
            self.downsample = downsample(**kw)
        self.stride = stride

    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.inplanes
        check_input(x, rank=4, last=c, layout=f"(B, H, W, {c})", where="Bottleneck")
        out = nnx.relu(self.bn1(self.conv1(x)))
        out = nnx.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = self.downsample(x) if self.downsample is not None else x
        return nnx.relu(out + identity)


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """``nn.MaxPool2d(3, stride=2, padding=1)``: the padding never wins the max."""
    return jax.lax.reduce_window(
        x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
    )


def kaiming_normal_fan_out(key: jax.Array, kernels: Sequence[nnx.Param]) -> None:
    """``nn.init.kaiming_normal_(w, mode='fan_out', nonlinearity='relu')`` on Flax conv
    kernels ``(kh, kw, in / groups, out)``, in place: std ``sqrt(2 / (out * kh * kw))``.

    One draw for all kernels, split on the host: a draw per kernel shape would
    compile one random program per shape (seconds for a ResNet).
    """
    sizes = [k.size for k in kernels]
    noise = jax.random.normal(key, (sum(sizes),), jnp.float32)
    if not isinstance(noise, jax.core.Tracer):  # traced (eval_shape, jit): stay in jnp
        noise = np.asarray(noise)
    offset = 0
    for kernel, size in zip(kernels, sizes, strict=True):
        fan_out = kernel.shape[-1] * math.prod(kernel.shape[:-2])
        draw = noise[offset : offset + size].reshape(kernel.shape) * math.sqrt(2.0 / fan_out)
        kernel[...] = jnp.asarray(draw, kernel.dtype)
        offset += size


class ACmixResNet(nnx.Module):
    """The ACmix ResNet (upstream's ``ResNet`` built with ACmix ``Bottleneck`` s).

    Args:
      layers: blocks in each of the 4 stages.
      k_att, head, k_conv: ACmix's window, heads and shift-conv kernel in every block.
      num_classes: classifier outputs.
      zero_init_residual: zero the last BatchNorm scale of every block.
      groups, width_per_group: ACmix width ``int(planes * width_per_group / 64) * groups``.
      replace_stride_with_dilation: 3 flags (stages 2-4) that trade the stage's
        stride for a doubled ACmix dilation.
      norm_layer: ``norm_layer(num_features, *, dtype, param_dtype, rngs)``.
      in_channels: image channels (an extension; upstream: 3).
      stem: ``'imagenet'`` (upstream: 7x7 stride-2 conv and 3x3 stride-2 max pool) or
        ``'cifar'`` (an extension for small images: 3x3 stride-1 conv, no pool).
      base_planes: stem width and stage-1 planes (an extension; upstream: 64);
        stage ``i`` has ``base_planes * 2**i`` planes.

    Every stage must leave maps of at least ``dilation * (k_att - 1) // 2 + 1``
    pixels (ACmix's reflection padding): with the ImageNet stem and ``k_att=7``,
    inputs of at least 97x97 (stage 4 at 4x4); the CIFAR stem needs 25x25.

    Shapes: ``(B, H, W, in_channels) -> (B, num_classes)``.
    """

    def __init__(
        self,
        layers: Sequence[int],
        k_att: int = 7,
        head: int = 4,
        k_conv: int = 3,
        num_classes: int = 1000,
        zero_init_residual: bool = False,
        groups: int = 1,
        width_per_group: int = 64,
        replace_stride_with_dilation: Sequence[bool] | None = None,
        norm_layer: NormLayer | None = None,
        in_channels: int = 3,
        stem: str = "imagenet",
        base_planes: int = 64,
        *,
        dtype: Dtype = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        layers = _check_resnet_args(
            layers, num_classes, replace_stride_with_dilation, in_channels, stem, base_planes
        )
        if replace_stride_with_dilation is None:
            replace_stride_with_dilation = (False, False, False)
        norm = norm_layer or BatchNorm2d
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.in_channels = in_channels
        self.stem = stem
        self.inplanes = base_planes
        self.dilation = 1
        self.groups = groups
        self.base_width = width_per_group
        if stem == "imagenet":
            self.conv1 = Conv2d(in_channels, base_planes, 7, stride=2, padding=3, bias=False, **kw)
        else:
            self.conv1 = Conv2d(in_channels, base_planes, 3, stride=1, padding=1, bias=False, **kw)
        self.bn1 = norm(base_planes, **kw)
        args = (k_att, head, k_conv, norm, kw)
        self.layer1 = self._make_layer(base_planes, layers[0], *args)
        self.layer2 = self._make_layer(
            base_planes * 2, layers[1], *args, stride=2, dilate=replace_stride_with_dilation[0]
        )
        self.layer3 = self._make_layer(
            base_planes * 4, layers[2], *args, stride=2, dilate=replace_stride_with_dilation[1]
        )
        self.layer4 = self._make_layer(
            base_planes * 8, layers[3], *args, stride=2, dilate=replace_stride_with_dilation[2]
        )
        self.fc = Linear(base_planes * 8 * Bottleneck.expansion, num_classes, **kw)

        # As upstream: every conv (ACmix's included) gets Kaiming-normal, fan out.
        convs = [m for _, m in nnx.iter_modules(self) if isinstance(m, Conv2d)]
        kaiming_normal_fan_out(rngs.params(), [m.kernel for m in convs])
        if zero_init_residual:
            for _, module in nnx.iter_modules(self):
                if isinstance(module, Bottleneck):
                    scale = getattr(module.bn3, "scale", None)
                    if scale is not None:
                        scale[...] = jnp.zeros_like(scale[...])

    def _make_layer(self, planes, blocks, k_att, head, k_conv, norm, kw, stride=1, dilate=False):
        downsample = None
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = projection(self.inplanes, planes * Bottleneck.expansion, stride, norm)
        common = dict(groups=self.groups, base_width=self.base_width, norm_layer=norm, **kw)
        out = [
            Bottleneck(
                self.inplanes,
                planes,
                k_att,
                head,
                k_conv,
                stride,
                downsample,
                dilation=previous_dilation,
                **common,
            )
        ]
        self.inplanes = planes * Bottleneck.expansion
        for _ in range(1, blocks):
            out.append(
                Bottleneck(
                    self.inplanes, planes, k_att, head, k_conv, dilation=self.dilation, **common
                )
            )
        return nnx.Sequential(*out)

    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.in_channels
        check_input(x, rank=4, last=c, layout=f"(B, H, W, {c})", where="ACmixResNet")
        x = nnx.relu(self.bn1(self.conv1(x)))
        if self.stem == "imagenet":
            x = _max_pool_3x3_s2(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean(axis=(1, 2)))


def _check_resnet_args(
    layers, num_classes, replace_stride_with_dilation, in_channels, stem, base_planes
) -> tuple[int, ...]:
    """Shared by both twins."""
    layers = tuple(layers)
    if len(layers) != 4 or any(not isinstance(n, int) or n < 1 for n in layers):
        raise ValueError(f"`layers` (={layers}) must be 4 positive block counts")
    check_positive(num_classes=num_classes, in_channels=in_channels, base_planes=base_planes)
    check_choice("stem", stem, STEMS)
    if replace_stride_with_dilation is not None and len(replace_stride_with_dilation) != 3:
        raise ValueError(
            f"`replace_stride_with_dilation` (={replace_stride_with_dilation}) must be None "
            "or 3 flags"
        )
    return layers


def acmix_resnet26(*, rngs: nnx.Rngs, **kwargs) -> ACmixResNet:
    """ACmix ResNet-26: ``[1, 2, 4, 1]`` blocks."""
    return ACmixResNet([1, 2, 4, 1], rngs=rngs, **kwargs)


def acmix_resnet38(*, rngs: nnx.Rngs, **kwargs) -> ACmixResNet:
    """ACmix ResNet-38: ``[2, 3, 5, 2]`` blocks."""
    return ACmixResNet([2, 3, 5, 2], rngs=rngs, **kwargs)


def acmix_resnet50(*, rngs: nnx.Rngs, **kwargs) -> ACmixResNet:
    """ACmix ResNet-50: ``[3, 4, 6, 3]`` blocks (upstream's ``ACmix_ResNet()``)."""
    return ACmixResNet([3, 4, 6, 3], rngs=rngs, **kwargs)
