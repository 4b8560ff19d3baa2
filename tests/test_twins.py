"""The torch_ref -> Flax twin table and the two top-level export lists (issue 14).

``from_torch`` finds a twin's Flax class in ``flaxattn.convert.twins.TWINS``; this walks
every twin class of torch_ref and checks the table in full. The export lists of
``flaxattn`` and ``torch_ref`` are checked against the same table.
"""

import importlib
import inspect
import pkgutil

import pytest

import flaxattn
import torch_ref
from flaxattn.convert.twins import FLAX_ONLY, TWINS, flax_twin
from flaxattn.registry import resolve
from torch_ref._twin import Twin


def _twin_classes() -> dict[str, type]:
    found = {}
    for info in pkgutil.walk_packages(torch_ref.__path__, "torch_ref."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and issubclass(obj, Twin)
                and obj is not Twin
                and obj.__module__ == module.__name__
                and not name.startswith("_")  # shared bodies (_Block, _Stage), never built
            ):
                found[f"{module.__name__[len('torch_ref.') :]}.{name}"] = obj
    return found


TWIN_CLASSES = _twin_classes()


def test_every_twin_class_is_in_the_table():
    assert sorted(TWIN_CLASSES) == sorted(TWINS)


def _positional(cls) -> list[str]:
    params = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in params if p.name != "self" and p.kind == p.POSITIONAL_OR_KEYWORD]


@pytest.mark.parametrize("path", sorted(TWINS))
def test_table_entry(path):
    torch_cls, flax_cls = resolve(path, "torch_ref"), resolve(TWINS[path], "flaxattn")
    assert flax_twin(torch_cls) is flax_cls
    assert flax_cls.__name__ == torch_cls.__name__
    # Same constructor arguments, in the same order (the Flax side then adds keyword-only
    # dtype/param_dtype/rngs): init_args of the twin rebuild the Flax module.
    assert _positional(flax_cls) == _positional(torch_cls)


def _public_bindings(module) -> set[str]:
    return {
        name
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(obj) or inspect.isfunction(obj))
        and getattr(obj, "__module__", "").startswith(module.__name__ + ".")
    }


@pytest.mark.parametrize("package", [flaxattn, torch_ref], ids=lambda m: m.__name__)
def test_export_list_is_what_the_package_imports(package):
    assert len(package.__all__) == len(set(package.__all__))
    assert set(package.__all__) == _public_bindings(package)


def test_export_lists_agree_through_the_table():
    flax_names, torch_names = set(flaxattn.__all__), set(torch_ref.__all__)
    assert flax_names == torch_names | set(FLAX_ONLY)
    assert not torch_names & set(FLAX_ONLY)
    for name in sorted(torch_names):
        torch_obj, flax_obj = getattr(torch_ref, name), getattr(flaxattn, name)
        if inspect.isclass(torch_obj) and issubclass(torch_obj, Twin):
            assert flax_twin(torch_obj) is flax_obj, name
        else:  # presets (acmix_resnet26...) and the reversible plumbing
            assert flax_obj.__name__ == torch_obj.__name__, name
