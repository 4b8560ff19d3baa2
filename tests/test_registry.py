"""flaxattn.registry: the one registry helper and the one dotted-name resolver (issue 14)."""

import pytest

import flaxattn
from flaxattn.registry import Registry, import_submodules, resolve


@pytest.mark.parametrize(
    "path, root, expected",
    [
        ("flaxattn.CBAM", None, flaxattn.CBAM),
        ("flaxattn.layers.cbam.CBAM", None, flaxattn.CBAM),
        ("flaxattn.layers.cbam:CBAM", None, flaxattn.CBAM),
        ("layers.cbam.CBAM", "flaxattn", flaxattn.CBAM),
        ("CBAM", "flaxattn", flaxattn.CBAM),
        ("flaxattn.layers.cbam:CBAM.__call__", None, flaxattn.CBAM.__call__),
    ],
)
def test_resolve(path, root, expected):
    assert resolve(path, root) is expected


@pytest.mark.parametrize(
    "path, error, match",
    [
        ("CBAM", ValueError, r"`path` \(='CBAM'\) must be 'package.module.Name'"),
        ("flaxattn.NoSuchClass", AttributeError, "NoSuchClass"),
        ("flaxattn_nowhere.CBAM", ImportError, "flaxattn_nowhere"),
    ],
)
def test_resolve_refuses(path, error, match):
    with pytest.raises(error, match=match):
        resolve(path)


def test_registry_refuses_a_name_twice_and_loads_its_package():
    reg = Registry("map", "flaxattn.convert.maps")
    assert reg.add("a", 1) == 1 and reg == {"a": 1}
    with pytest.raises(ValueError, match="map 'a' is registered twice"):
        reg.add("a", 2)
    assert reg.load_all() is reg
    assert "flaxattn.convert.maps.dilate" in import_submodules("flaxattn.convert.maps")


def test_every_project_registry_uses_it():
    from bench.registry import CASES as BENCH
    from parity_tests.registry import CASES, GOLDEN
    from train.models import MODELS

    for reg in (BENCH, CASES, GOLDEN, MODELS):
        assert isinstance(reg, Registry)
