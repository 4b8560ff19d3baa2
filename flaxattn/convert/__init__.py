"""PyTorch <-> Flax NNX weight conversion.

- :func:`from_torch` builds the Flax twin of a torch module and loads its weights;
- :func:`load_state_dict` loads a PyTorch state_dict into a Flax module in place;
- :func:`to_torch_state_dict` exports a Flax module's weights in PyTorch names and layouts,
  :func:`load_into_torch` copies them into a torch module;
- :func:`load_weights` / :func:`save_weights` read and write ``.pt``, ``.safetensors``, ``.npz``.

Strict both ways: a :class:`ConversionError` lists every missing, unexpected and
mis-shaped key. Nothing here imports torch unless a ``.pt`` file is read or written.
"""

from flaxattn.convert import maps, rules  # noqa: F401  (register rules and builders)
from flaxattn.convert.builders import (
    build_args,
    from_torch,
    load_into_torch,
    register_builder,
    register_kwargs_adapter,
)
from flaxattn.convert.core import (
    ConversionError,
    Layout,
    StateKeys,
    TensorMap,
    leaf,
    load_state_dict,
    map_to_torch,
    register_layout,
    register_rule,
    tensor_maps,
    to_torch_state_dict,
    torch_layout,
)
from flaxattn.convert.io import load_weights, save_weights

__all__ = [
    "ConversionError",
    "Layout",
    "StateKeys",
    "TensorMap",
    "build_args",
    "from_torch",
    "leaf",
    "load_into_torch",
    "load_state_dict",
    "load_weights",
    "map_to_torch",
    "register_builder",
    "register_kwargs_adapter",
    "register_layout",
    "register_rule",
    "save_weights",
    "tensor_maps",
    "to_torch_state_dict",
    "torch_layout",
]
