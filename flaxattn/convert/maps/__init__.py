"""Per-family conversion maps: upstream builders, special rules, key layouts.

Importing this package registers them all; each family adds one module here.
"""

from flaxattn.convert.maps import (
    channel,  # noqa: F401
    dilate,  # noqa: F401
)
