"""Per-family conversion maps: upstream builders, special rules, key layouts.

Importing this package registers them all: every module in this folder is
imported, so a family adds its file here and nothing else.
"""

from flaxattn.registry import import_submodules

import_submodules(__name__)
