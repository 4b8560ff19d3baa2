"""ACmix family: upstream builders and the kwargs adapters of the ResNet twins.

Every tensor maps by the generic rules (``dep_conv`` is a grouped ``Conv2d``,
``rate1``/``rate2`` plain parameters), and upstream keys equal ours, so no
special rule or layout is needed. Upstream modules (LeapLabTHU/ACmix
``ResNet/test_bottleneck.py`` ``ACmix``, ``ResNet/ResNet_ImageNet.py``
``Bottleneck`` and ``ResNet``) record no constructor arguments: the builders
read them off attributes and weight shapes.

The torch twins take torch objects as arguments (``Bottleneck(downsample=nn.Sequential)``,
``norm_layer=nn.BatchNorm2d``); the adapters turn them into their Flax counterparts.
"""

from __future__ import annotations

from flaxattn.convert.builders import register_builder, register_kwargs_adapter
from flaxattn.layers.acmix import ACmix
from flaxattn.models.acmix_resnet import ACmixResNet, Bottleneck, projection


def _norm_layer(norm_layer):
    """Only BatchNorm2d (the default) has a Flax twin here."""
    if norm_layer is None or getattr(norm_layer, "__name__", None) == "BatchNorm2d":
        return None
    raise TypeError(
        f"from_torch: `norm_layer` (={norm_layer!r}) has no Flax twin; "
        "only torch.nn.BatchNorm2d is supported"
    )


def _downsample(module):
    """``nn.Sequential(conv1x1(inplanes, outplanes, stride), BatchNorm2d)`` -> ``projection``."""
    if module is None:
        return None
    try:
        conv, norm = module[0], module[1]
        ok = len(module) == 2 and tuple(conv.kernel_size) == (1, 1) and conv.bias is None
    except (TypeError, IndexError, AttributeError):
        ok = False
    if not ok or type(norm).__name__ != "BatchNorm2d":
        raise TypeError(
            f"from_torch: the Bottleneck's `downsample` must be nn.Sequential(1x1 Conv2d without "
            f"bias, BatchNorm2d), got {module!r}"
        )
    return projection(conv.in_channels, conv.out_channels, conv.stride[0])


@register_kwargs_adapter(Bottleneck)
def _bottleneck_kwargs(kwargs: dict) -> dict:
    kwargs = dict(kwargs)
    kwargs["downsample"] = _downsample(kwargs["downsample"])
    kwargs["norm_layer"] = _norm_layer(kwargs["norm_layer"])
    return kwargs


@register_kwargs_adapter(ACmixResNet)
def _resnet_kwargs(kwargs: dict) -> dict:
    kwargs = dict(kwargs)
    kwargs["norm_layer"] = _norm_layer(kwargs["norm_layer"])
    return kwargs


def _is_acmix(m) -> bool:
    return all(hasattr(m, a) for a in ("kernel_att", "kernel_conv", "dep_conv", "conv_p"))


@register_builder("ACmix")  # LeapLabTHU/ACmix ResNet/test_bottleneck.py
def _acmix(m):
    if not _is_acmix(m):
        return None
    return ACmix, {
        "in_planes": m.in_planes,
        "out_planes": m.out_planes,
        "kernel_att": m.kernel_att,
        "head": m.head,
        "kernel_conv": m.kernel_conv,
        "stride": m.stride,
        "dilation": m.dilation,
    }


def _bottleneck_args(m) -> dict:
    width, inplanes = m.conv1.weight.shape[:2]
    planes = m.conv3.weight.shape[0] // Bottleneck.expansion
    # width = int(planes * base_width / 64) * groups: one (groups, base_width) that gives it.
    base_width = 64 * width // planes
    if int(planes * (base_width / 64.0)) != width:
        raise TypeError(
            f"from_torch: no `base_width` gives ACmix width {width} for {planes} planes"
        )
    acmix = m.conv2
    return {
        "inplanes": inplanes,
        "planes": planes,
        "k_att": acmix.kernel_att,
        "head": acmix.head,
        "k_conv": acmix.kernel_conv,
        "stride": acmix.stride,
        "downsample": _downsample(m.downsample),
        "groups": 1,
        "base_width": base_width,
        "dilation": acmix.dilation,
        "norm_layer": _norm_layer(type(m.bn1)),
    }


@register_builder("Bottleneck")  # LeapLabTHU/ACmix ResNet/ResNet_ImageNet.py
def _bottleneck(m):
    if not _is_acmix(getattr(m, "conv2", None)):
        return None  # another repository's Bottleneck
    return Bottleneck, _bottleneck_args(m)


@register_builder("ResNet")  # LeapLabTHU/ACmix ResNet/ResNet_ImageNet.py
def _resnet(m):
    try:
        first = m.layer1[0]
    except (AttributeError, TypeError, IndexError):
        return None
    if not _is_acmix(getattr(first, "conv2", None)):
        return None
    stages = [m.layer1, m.layer2, m.layer3, m.layer4]
    acmix = first.conv2
    return (
        ACmixResNet,
        {
            "layers": [len(s) for s in stages],
            "k_att": acmix.kernel_att,
            "head": acmix.head,
            "k_conv": acmix.kernel_conv,
            "num_classes": m.fc.out_features,
            "zero_init_residual": False,  # an initialisation choice; the weights are loaded
            "groups": m.groups,
            "width_per_group": m.base_width,
            # A dilated stage trades its stride for dilation: its first ACmix has stride 1.
            "replace_stride_with_dilation": [s[0].conv2.stride == 1 for s in stages[1:]],
            "norm_layer": _norm_layer(type(m.bn1)),
            "in_channels": m.conv1.weight.shape[1],
            "stem": "imagenet",
            "base_planes": m.conv1.weight.shape[0],
        },
    )
