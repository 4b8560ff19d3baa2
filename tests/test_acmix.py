"""ACmix family checks beyond the parity registry: parameter counts, the torch twin's
small-map error, and ``from_torch`` through the upstream builders."""

import numpy as np
import pytest
import torch
from flax import nnx

import flaxattn
import torch_ref
from flaxattn.convert import build_args, from_torch, to_torch_state_dict


def test_resnet50_has_upstreams_parameter_count():
    # Upstream's ACmix_ResNet() reports about 18.3M parameters (ResNet_ImageNet.py __main__).
    torch_count = sum(p.numel() for p in torch_ref.acmix_resnet50().parameters())
    assert torch_count == 18_333_976
    abstract = nnx.eval_shape(lambda: flaxattn.acmix_resnet50(rngs=nnx.Rngs(0)))
    flax_count = sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(nnx.state(abstract)))
    # Flax counts BatchNorm statistics too; compare parameters only.
    params = nnx.state(abstract, nnx.Param)
    assert sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(params)) == torch_count
    assert flax_count > torch_count


def test_torch_twin_refuses_maps_smaller_than_the_reflection_padding():
    with pytest.raises(ValueError, match=r"maps must be at least 4x4 .* got 3x5"):
        torch_ref.ACmix(8, 8)(torch.zeros(1, 8, 3, 5))


def _as_upstream(module: torch.nn.Module, name: str) -> torch.nn.Module:
    # The same module under upstream's class name and outside torch_ref: from_torch then
    # goes through the builder registered for upstream's class, not the twin's arguments.
    module.__class__ = type(name, (type(module),), {"__module__": "upstream_acmix"})
    return module


@pytest.mark.parametrize(
    "make, name, shape",
    [
        (lambda: torch_ref.ACmix(8, 12, 5, 3, 3, stride=2, dilation=2), "ACmix", (1, 8, 11, 9)),
        (
            lambda: torch_ref.ACmixBottleneck(
                8,
                4,
                3,
                2,
                3,
                stride=2,
                downsample=torch.nn.Sequential(
                    torch.nn.Conv2d(8, 16, 1, stride=2, bias=False), torch.nn.BatchNorm2d(16)
                ),
            ),
            "Bottleneck",
            (2, 8, 7, 9),
        ),
        (
            lambda: torch_ref.ACmixResNet(
                [1, 1, 1, 1],
                3,
                2,
                3,
                5,
                replace_stride_with_dilation=[False, False, True],
                base_planes=8,
            ),
            "ResNet",
            (1, 3, 33, 35),
        ),
    ],
)
def test_from_torch_builds_upstream_classes(make, name, shape):
    torch.manual_seed(0)
    twin = make().eval()
    upstream = _as_upstream(make().eval(), name)
    upstream.load_state_dict(twin.state_dict())
    # The builder reads the twin's constructor arguments back off upstream's attributes.
    cls, kwargs = build_args(upstream)
    twin_cls, twin_kwargs = build_args(twin)
    assert cls is twin_cls
    for key in ("downsample", "norm_layer"):  # modules/classes: compare presence only
        assert (kwargs.pop(key, None) is None) == (twin_kwargs.pop(key, None) is None), key
    for kw in (kwargs, twin_kwargs):  # upstream keeps a tuple, the twin a list
        if "layers" in kw:
            kw["layers"] = list(kw["layers"])
    assert kwargs == twin_kwargs
    fm = from_torch(upstream)
    sd = to_torch_state_dict(fm)
    assert sorted(sd) == sorted(twin.state_dict())
    if name == "ACmix":  # one forward (eager Flax networks compile op by op: slow)
        x = torch.randn(shape)
        with torch.no_grad():
            ref = twin(x).numpy()
        out = np.moveaxis(np.asarray(fm(np.moveaxis(x.numpy(), 1, -1))), -1, 1)
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_resnet_initialises_like_upstream():
    # Every conv, ACmix's dep_conv included, gets Kaiming-normal (fan out); BN scale 1.
    m = flaxattn.ACmixResNet([1, 1, 1, 1], base_planes=8, zero_init_residual=True, rngs=nnx.Rngs(0))
    dep = np.asarray(m.layer1.layers[0].conv2.dep_conv.kernel[...])
    assert not np.array_equal(dep, np.asarray(flaxattn.layers.acmix.shift_identity_kernel(3, 8)))
    std = np.sqrt(2.0 / (dep.shape[-1] * 9))
    assert 0.7 * std < dep.std() < 1.3 * std
    assert np.all(np.asarray(m.layer2.layers[0].bn3.scale[...]) == 0)
    assert np.all(np.asarray(m.layer2.layers[0].bn2.scale[...]) == 1)
    # A lone ACmix starts from shift-identity kernels and rates of 0.5, as upstream.
    a = flaxattn.ACmix(8, 8, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(
        np.asarray(a.dep_conv.kernel[...]),
        np.asarray(flaxattn.layers.acmix.shift_identity_kernel(3, 8)),
    )
    assert float(a.rate1[...][0]) == 0.5 == float(a.rate2[...][0])
