"""Base class of the PyTorch twins."""

from __future__ import annotations

import functools
import inspect

from torch import nn


class Twin(nn.Module):
    """An ``nn.Module`` that records its constructor arguments in ``init_args``.

    ``flaxattn.convert.from_torch`` rebuilds the Flax twin from them: the two
    share class names and constructor arguments, so the recorded arguments are
    all it needs besides the weights. For a subclass of a subclass, the
    outermost constructor's arguments win.
    """

    init_args: dict

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        signature = inspect.signature(init)

        @functools.wraps(init)
        def __init__(self, *args, **kw):
            init(self, *args, **kw)
            bound = signature.bind(self, *args, **kw)
            bound.apply_defaults()
            recorded = dict(bound.arguments)
            recorded.pop("self")
            # A plain dict attribute; nn.Module.__setattr__ would be fine too, but
            # this also works before a subclass has finished its own __init__.
            self.__dict__["init_args"] = recorded

        cls.__init__ = __init__
