"""ACmix ResNets (twin of ``flaxattn.models.acmix_resnet``), NCHW.

Pan et al., "On the Integration of Self-Attention and Convolution", CVPR 2022.
https://arxiv.org/abs/2111.14556
Follows LeapLabTHU/ACmix ``ResNet/ResNet_ImageNet.py`` key for key (``Bottleneck``,
``ResNet`` as ``ACmixResNet``, ``ACmix_ResNet`` as the presets).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from torch_ref._checks import check_choice, check_positive
from torch_ref._twin import Twin
from torch_ref.layers.acmix import ACmix


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class Bottleneck(Twin):
    """Shapes: ``(B, inplanes, H, W) -> (B, planes * 4, ceil(H / stride), ceil(W / stride))``.

    Deviation from upstream: an identity shortcut that cannot match the output
    raises a ``ValueError`` (upstream fails at the residual add).
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
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        dilation: int = 1,
        norm_layer: type[nn.Module] | None = None,
    ):
        super().__init__()
        check_positive(inplanes=inplanes, planes=planes, groups=groups, base_width=base_width)
        out = planes * self.expansion
        if downsample is None and (inplanes != out or stride != 1):
            raise ValueError(
                f"without `downsample` the identity shortcut needs `inplanes` (={inplanes}) "
                f"== `planes * 4` (={out}) and `stride` (={stride}) == 1"
            )
        norm_layer = norm_layer or nn.BatchNorm2d
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = norm_layer(width)
        self.conv2 = ACmix(width, width, k_att, head, k_conv, stride=stride, dilation=dilation)
        self.bn2 = norm_layer(width)
        self.conv3 = conv1x1(width, out)
        self.bn3 = norm_layer(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


def _check_resnet_args(
    layers, num_classes, replace_stride_with_dilation, in_channels, stem, base_planes
) -> tuple[int, ...]:
    layers = tuple(layers)
    if len(layers) != 4 or any(not isinstance(n, int) or n < 1 for n in layers):
        raise ValueError(f"`layers` (={layers}) must be 4 positive block counts")
    check_positive(num_classes=num_classes, in_channels=in_channels, base_planes=base_planes)
    check_choice("stem", stem, ("imagenet", "cifar"))
    if replace_stride_with_dilation is not None and len(replace_stride_with_dilation) != 3:
        raise ValueError(
            f"`replace_stride_with_dilation` (={replace_stride_with_dilation}) must be None "
            "or 3 flags"
        )
    return layers


class ACmixResNet(Twin):
    """Upstream's ``ResNet`` with ACmix ``Bottleneck`` s. Shapes: ``(B, in_channels, H, W) ->
    (B, num_classes)``.

    ``in_channels``, ``stem`` and ``base_planes`` are extensions (defaults: upstream);
    see the Flax twin. As upstream, every ``Conv2d`` (ACmix's too, ``dep_conv``'s
    shift-identity kernel included) is re-initialised with Kaiming-normal (fan out).
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
        norm_layer: type[nn.Module] | None = None,
        in_channels: int = 3,
        stem: str = "imagenet",
        base_planes: int = 64,
    ):
        super().__init__()
        layers = _check_resnet_args(
            layers, num_classes, replace_stride_with_dilation, in_channels, stem, base_planes
        )
        if replace_stride_with_dilation is None:
            replace_stride_with_dilation = (False, False, False)
        norm_layer = norm_layer or nn.BatchNorm2d
        self._norm_layer = norm_layer
        self.stem = stem
        self.inplanes = base_planes
        self.dilation = 1
        self.groups = groups
        self.base_width = width_per_group
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(
                in_channels, base_planes, kernel_size=7, stride=2, padding=3, bias=False
            )
        else:
            self.conv1 = nn.Conv2d(
                in_channels, base_planes, kernel_size=3, stride=1, padding=1, bias=False
            )
        self.bn1 = norm_layer(base_planes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        args = (k_att, head, k_conv)
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
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(base_planes * 8 * Bottleneck.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.constant_(m.bn3.weight, 0)

    def _make_layer(self, planes, blocks, k_att, head, k_conv, stride=1, dilate=False):
        norm_layer = self._norm_layer
        downsample = None
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * Bottleneck.expansion, stride),
                norm_layer(planes * Bottleneck.expansion),
            )
        layers = [
            Bottleneck(
                self.inplanes,
                planes,
                k_att,
                head,
                k_conv,
                stride,
                downsample,
                self.groups,
                self.base_width,
                previous_dilation,
                norm_layer,
            )
        ]
        self.inplanes = planes * Bottleneck.expansion
        for _ in range(1, blocks):
            layers.append(
                Bottleneck(
                    self.inplanes,
                    planes,
                    k_att,
                    head,
                    k_conv,
                    groups=self.groups,
                    base_width=self.base_width,
                    dilation=self.dilation,
                    norm_layer=norm_layer,
                )
            )
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        if self.stem == "imagenet":
            x = self.maxpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def acmix_resnet26(**kwargs) -> ACmixResNet:
    """ACmix ResNet-26: ``[1, 2, 4, 1]`` blocks."""
    return ACmixResNet([1, 2, 4, 1], **kwargs)


def acmix_resnet38(**kwargs) -> ACmixResNet:
    """ACmix ResNet-38: ``[2, 3, 5, 2]`` blocks."""
    return ACmixResNet([2, 3, 5, 2], **kwargs)


def acmix_resnet50(**kwargs) -> ACmixResNet:
    """ACmix ResNet-50: ``[3, 4, 6, 3]`` blocks (upstream's ``ACmix_ResNet()``)."""
    return ACmixResNet([3, 4, 6, 3], **kwargs)
