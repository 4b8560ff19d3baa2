"""Registries and dotted names, written once for the whole project.

A :class:`Registry` is a dict of named entries that refuses a name registered twice
and fills itself by importing every module of a package (each module registers its
family's entries when imported). The parity cases (``parity_tests/registry.py``),
the benchmark cases (``bench/registry.py``), the training models
(``train/models/__init__.py``) and the conversion maps (``flaxattn/convert/maps``)
all use it. :func:`resolve` turns ``"pkg.mod.Name"`` or ``"pkg.mod:Name"`` into the
object it names. Nothing here imports torch.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, TypeVar

T = TypeVar("T")


def resolve(path: str, root: str | None = None) -> Any:
    """The object named by ``path``: ``"pkg.mod.Name"``, ``"pkg.mod:Name"`` (the part
    after ``:`` may be dotted, ``"pkg.mod:Class.attr"``), or with ``root`` a path under
    that package (``resolve("layers.cbam.CBAM", "flaxattn")``).

    Raises ``ValueError`` naming the path when it has no module part, and
    ``ImportError``/``AttributeError`` (from the import) when nothing is found there.
    """
    full = f"{root}.{path}" if root else path
    if ":" in full:
        module, _, attrs = full.partition(":")
    else:
        module, _, attrs = full.rpartition(".")
    if not module or not attrs:
        raise ValueError(
            f"`path` (={path!r}) must be 'package.module.Name' or 'package.module:Name'"
        )
    obj = importlib.import_module(module)
    for attr in attrs.split("."):
        obj = getattr(obj, attr)
    return obj


def import_submodules(package: str) -> list[str]:
    """Import every module directly inside ``package``; returns their names."""
    pkg = importlib.import_module(package)
    names = [f"{package}.{info.name}" for info in pkgutil.iter_modules(pkg.__path__)]
    for name in names:
        importlib.import_module(name)
    return names


class Registry(dict[str, T]):
    """Named entries of one kind; :meth:`load_all` imports the package that registers them.

    Args:
      what: the kind of entry, for error messages (``"parity case"``).
      package: the package whose modules register entries (``"parity_tests.cases"``).
    """

    def __init__(self, what: str, package: str | None = None):
        super().__init__()
        self.what = what
        self.package = package

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` as ``name``; ``ValueError`` when the name is taken."""
        if name in self:
            raise ValueError(f"{self.what} {name!r} is registered twice")
        self[name] = entry
        return entry

    def load_all(self) -> Registry[T]:
        """Import every module of ``package`` (idempotent); returns the registry."""
        if self.package is not None:
            import_submodules(self.package)
        return self
