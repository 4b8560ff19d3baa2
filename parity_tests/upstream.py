"""Import upstream PyPI packages for the tests, whatever their unused imports need.

``vit_pytorch/__init__.py`` imports its DINO, MAE and JEPA wrappers, which
``from torchvision import transforms`` at import time. torchvision is not a
dependency here: PyPI's torchvision wheels are built against CUDA torch and do
not load beside the CPU build this project pins, and the ViT never touches it.
So when torchvision is missing, :func:`vit_pytorch` installs a stand-in
``torchvision``/``torchvision.transforms`` in ``sys.modules`` before importing:
any attribute of it is a callable that raises ``ModuleNotFoundError`` when
used, so the package imports and the modules we test run, and anything that
really needs torchvision still fails loudly. A real torchvision, if installed,
is used as it is. The library itself never imports vit_pytorch: ``from_torch``
recognises upstream modules by class name.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types


class _Missing:
    def __init__(self, name: str):
        self._name = name

    def __call__(self, *args, **kwargs):
        raise ModuleNotFoundError(
            f"{self._name} needs torchvision, which is not installed (parity_tests.upstream "
            "put a stand-in in its place so that vit_pytorch imports)"
        )

    def __getattr__(self, attr: str):
        return _Missing(f"{self._name}.{attr}")


def _stub_module(name: str) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__doc__ = "stand-in installed by parity_tests.upstream: torchvision is not installed"

    def __getattr__(attr: str):  # PEP 562
        # Private and dunder names stay missing: tools that scan sys.modules
        # (hypothesis, inspect) probe __file__, __path__ and the like.
        if attr.startswith("_"):
            raise AttributeError(f"module {name!r} has no attribute {attr!r}")
        return _Missing(f"{name}.{attr}")

    mod.__getattr__ = __getattr__
    return mod


def ensure_torchvision() -> bool:
    """Install the torchvision stand-in unless torchvision is importable.

    Returns ``True`` when the stand-in is (now) in place.
    """
    current = sys.modules.get("torchvision")
    if current is not None:
        return current.__doc__ == _stub_module("torchvision").__doc__
    if importlib.util.find_spec("torchvision") is not None:
        return False
    tv = _stub_module("torchvision")
    tv.transforms = _stub_module("torchvision.transforms")
    sys.modules["torchvision"] = tv
    sys.modules["torchvision.transforms"] = tv.transforms
    return True


def vit_pytorch() -> types.ModuleType:
    """``import vit_pytorch`` (lucidrains/vit-pytorch), with torchvision stubbed if missing."""
    ensure_torchvision()
    return importlib.import_module("vit_pytorch")
