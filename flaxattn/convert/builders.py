"""``from_torch``: build the Flax twin of a PyTorch module and load its weights.

A *builder* turns a torch module into ``(flax_class, kwargs)``. Our ``torch_ref``
twins need none: they record their constructor arguments (``init_args``) and
their Flax class is named in one explicit table, :data:`flaxattn.convert.twins.TWINS`
(``layers.cbam.CBAM`` -> ``layers.cbam.CBAM``). Upstream classes get a builder each, registered
by class name, that reads the configuration off the module's attributes and
weight shapes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from flaxattn.convert.core import load_state_dict
from flaxattn.convert.twins import flax_twin

Builder = Callable[[Any], "tuple[type, dict] | None"]
_BUILDERS: dict[str, list[Builder]] = {}
# torch_ref constructor arguments that need translating (e.g. torch layer classes).
_KWARG_ADAPTERS: dict[str, Callable[[dict], dict]] = {}


def register_builder(torch_class_name: str) -> Callable[[Builder], Builder]:
    """Register a builder for upstream modules whose class is called ``torch_class_name``.

    Builders for one name are tried in registration order; a builder returns
    ``None`` when the module is not the one it knows (two upstream ``CBAM``s).
    """

    def deco(fn: Builder) -> Builder:
        _BUILDERS.setdefault(torch_class_name, []).append(fn)
        return fn

    return deco


def register_kwargs_adapter(flax_class: type) -> Callable:
    """Translate a torch_ref class's recorded ``init_args`` for its Flax twin."""

    def deco(fn: Callable[[dict], dict]) -> Callable[[dict], dict]:
        _KWARG_ADAPTERS[f"{flax_class.__module__}.{flax_class.__qualname__}"] = fn
        return fn

    return deco


def _twin_builder(torch_module) -> tuple[type, dict] | None:
    flax_cls = flax_twin(type(torch_module))
    if flax_cls is None or not hasattr(torch_module, "init_args"):
        return None
    kwargs = dict(torch_module.init_args)
    adapter = _KWARG_ADAPTERS.get(f"{flax_cls.__module__}.{flax_cls.__qualname__}")
    return flax_cls, adapter(kwargs) if adapter else kwargs


def build_args(torch_module) -> tuple[type, dict]:
    """The Flax class and constructor kwargs for ``torch_module`` (no weights)."""
    found = _twin_builder(torch_module)
    if found is None:
        for builder in _BUILDERS.get(type(torch_module).__name__, []):
            found = builder(torch_module)
            if found is not None:
                break
    if found is None:
        known = sorted(_BUILDERS)
        raise TypeError(
            f"from_torch: no builder for {type(torch_module).__module__}."
            f"{type(torch_module).__qualname__}; it accepts torch_ref modules and the upstream "
            f"classes {known}"
        )
    return found


def _param_dtype(torch_module) -> Any:
    dtypes = {str(p.dtype) for p in torch_module.parameters()}
    if "torch.float64" in dtypes:
        if not jax.config.jax_enable_x64:
            raise ValueError(
                "from_torch: the torch module is float64 but JAX runs without 64-bit types; "
                "call jax.config.update('jax_enable_x64', True) or pass param_dtype=jnp.float32"
            )
        return jnp.float64
    return jnp.float32


def from_torch(
    torch_module,
    *,
    dtype: Any = None,
    param_dtype: Any = None,
    rngs: nnx.Rngs | None = None,
    strict: bool = True,
) -> nnx.Module:
    """Build the Flax twin of ``torch_module`` and load its weights.

    Works for ``torch_ref`` modules and for the upstream classes each family
    registers (``vit_pytorch.ViT``, ``axial_attention.AxialImageTransformer``...).
    The result is in the torch module's mode (``train()``/``eval()``).

    Args:
      torch_module: the PyTorch module.
      dtype: compute dtype of the Flax module (``None``: follow inputs and params).
      param_dtype: parameter dtype; defaults to the torch module's (float64 needs
        ``jax_enable_x64``).
      rngs: RNG streams for dropout/stochastic depth (default ``nnx.Rngs(0)``).
      strict: passed to :func:`load_state_dict`.
    """
    cls, kwargs = build_args(torch_module)
    module = cls(
        **kwargs,
        dtype=dtype,
        param_dtype=param_dtype or _param_dtype(torch_module),
        rngs=rngs or nnx.Rngs(0),
    )
    load_state_dict(module, torch_module.state_dict(), strict=strict)
    if torch_module.training:
        module.train()
    else:
        module.eval()
    return module


def load_into_torch(torch_module, flax_module: nnx.Module, *, strict: bool = True):
    """Copy ``flax_module``'s weights into ``torch_module`` (``load_state_dict(strict)``).

    The export side of :func:`from_torch`; returns ``torch_module``.
    """
    import torch

    from flaxattn.convert.core import to_torch_state_dict

    sd = to_torch_state_dict(flax_module)
    ref = torch_module.state_dict()
    tensors = {
        k: torch.from_numpy(v).to(ref[k].dtype) if k in ref else torch.from_numpy(v)
        for k, v in sd.items()
    }
    torch_module.load_state_dict(tensors, strict=strict)
    return torch_module
