"""Per-family conversion maps: upstream builders, special rules, key layouts.

Importing this package registers them all: every module in this folder is
imported, so a family adds its file here and nothing else.
"""

import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")
