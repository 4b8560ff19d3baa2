"""The conversion engine: Flax NNX variables <-> PyTorch state_dict entries.

A converter is a list of :class:`TensorMap`, one per PyTorch tensor, computed from
the Flax module alone (so a bare state_dict, with no torch module in hand, can be
loaded). The list is built by walking the module tree:

- a submodule whose type has a *rule* (``register_rule``) maps its own variables:
  generic leaf rules cover Linear, Conv, BatchNorm, LayerNorm and Embedding
  (``rules.py``); per-module rules do real work (split qkv, relative tables);
- any other variable maps one to one, under its own name (``cls_token``);
- the PyTorch key is the Flax path joined with dots, where the ``layers`` level
  of an ``nnx.Sequential`` is dropped (``fc.layers.0.kernel`` -> ``fc.0.weight``).

Upstream packages that changed their key layout across releases register
:class:`Layout` adapters on the root module class; ``load_state_dict`` picks the
one whose keys match and remembers it, so ``to_torch_state_dict`` writes the
same layout back.

Transforms are pure re-layouts (transposes, reshapes, splits), so the same
``to_torch`` also maps *gradients* to PyTorch names; ``parity`` relies on that.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from flaxattn.convert.values import check_values

Array = np.ndarray
Transform = Callable[[Array], Array]


def _identity(a: Array) -> Array:
    return a


# The layout each module was last loaded from (``load_state_dict``); absent = canonical.
_LOADED_LAYOUT: weakref.WeakKeyDictionary[nnx.Module, str] = weakref.WeakKeyDictionary()


def torch_layout(module: nnx.Module) -> str:
    """The name of the PyTorch key layout ``module`` was last loaded from by
    :func:`load_state_dict` (or ``from_torch``): ``"canonical"`` or a registered
    :class:`Layout`'s name. :func:`to_torch_state_dict` writes this layout back."""
    return _LOADED_LAYOUT.get(module, "canonical")


class ConversionError(ValueError):
    """A state_dict does not fit a module: lists *every* missing, unexpected and
    mis-shaped key, not only the first one."""

    def __init__(
        self,
        target: str,
        missing: Iterable[tuple[str, tuple]] = (),
        unexpected: Iterable[str] = (),
        mismatched: Iterable[tuple[str, tuple, tuple]] = (),
        note: str = "",
    ):
        self.target = target
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)
        lines = [
            f"cannot load state_dict into {target}: {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected, {len(self.mismatched)} shape-mismatched"
        ]
        if note:
            lines.append(note)
        lines += [f"  missing:    {k} (expected shape {s})" for k, s in self.missing]
        lines += [f"  unexpected: {k}" for k in self.unexpected]
        lines += [f"  mismatched: {k}: expected {e}, got {g}" for k, e, g in self.mismatched]
        super().__init__("\n".join(lines))


@dataclasses.dataclass(frozen=True)
class TensorMap:
    """One PyTorch tensor and the Flax variable it maps to."""

    torch_key: str
    flax_path: tuple
    torch_shape: tuple[int, ...]
    to_flax: Transform = _identity
    to_torch: Transform = _identity


# A rule maps the *own* variables of one module: (module, torch_prefix, flax_path) -> maps.
Rule = Callable[[nnx.Module, str, tuple], list[TensorMap]]
_RULES: dict[type, Rule] = {}


def register_rule(*classes: type) -> Callable[[Rule], Rule]:
    """Register the rule that maps the variables a module of ``classes`` owns directly."""

    def deco(rule: Rule) -> Rule:
        for cls in classes:
            _RULES[cls] = rule
        return rule

    return deco


def rule_for(cls: type) -> Rule | None:
    for klass in cls.__mro__:
        if klass in _RULES:
            return _RULES[klass]
    return None


def join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def leaf(
    module: nnx.Module,
    prefix: str,
    path: tuple,
    attr: str,
    torch_name: str,
    to_flax: Transform = _identity,
    to_torch: Transform = _identity,
) -> list[TensorMap]:
    """The map of ``module.<attr>`` (empty when that attribute is None).

    ``to_flax`` and ``to_torch`` must be inverse re-layouts; the PyTorch shape is
    derived by applying ``to_torch`` to a zero array of the Flax shape.
    """
    var = getattr(module, attr, None)
    if var is None:
        return []
    torch_shape = tuple(to_torch(np.zeros(var.shape, np.int8)).shape)
    return [TensorMap(join(prefix, torch_name), path + (attr,), torch_shape, to_flax, to_torch)]


_MAPPED = nnx.Any(nnx.Param, nnx.BatchStat)


def _torch_prefix(path: tuple, modules: Mapping[tuple, Any]) -> str:
    parts = []
    for i, part in enumerate(path):
        if part == "layers" and isinstance(modules.get(path[:i]), nnx.Sequential):
            continue
        parts.append(str(part))
    return ".".join(parts)


def tensor_maps(module: nnx.Module) -> list[TensorMap]:
    """Every PyTorch tensor of ``module`` (in our canonical layout) and its Flax variable."""
    modules = dict(nnx.iter_modules(module))
    variables = dict(nnx.to_flat_state(nnx.state(module, _MAPPED)))
    maps: list[TensorMap] = []
    for path, sub in modules.items():
        rule = rule_for(type(sub))
        if rule is not None:
            maps += rule(sub, _torch_prefix(path, modules), path)
    claimed = {m.flax_path for m in maps}
    for path, var in variables.items():
        if path in claimed:
            continue
        owner = modules.get(path[:-1])
        if owner is not None and rule_for(type(owner)) is not None:
            raise TypeError(
                f"the conversion rule of {type(owner).__name__} does not map its variable "
                f"{'.'.join(map(str, path))}"
            )
        maps.append(TensorMap(_torch_prefix(path, modules), path, tuple(var.shape)))
    keys = [m.torch_key for m in maps]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        raise TypeError(f"two variables of {type(module).__name__} map to the same keys: {dup}")
    return maps


# --- upstream key layouts ----------------------------------------------------------------


class StateKeys(frozenset):
    """The keys of a state_dict, as ``Layout.matches`` receives them, with each
    key's shape in ``shapes``: two layouts may share their keys and differ only in
    shapes (a parameter that lost its batch axis)."""

    shapes: dict[str, tuple[int, ...]]

    def __new__(cls, state_dict: Mapping[str, Any]):
        keys = super().__new__(cls, state_dict)
        keys.shapes = {k: tuple(np.shape(v)) for k, v in state_dict.items()}
        return keys


@dataclasses.dataclass(frozen=True)
class Layout:
    """A foreign state_dict layout of one root module class.

    ``matches(keys)`` says whether a key set is in this layout (``keys`` is a
    :class:`StateKeys`: a set that also knows the shapes); ``to_canonical``
    and ``from_canonical`` convert a state_dict (or a subset of it, such as the
    parameter gradients) between this layout and the canonical one. ``module`` is
    the Flax module being loaded or exported, for layouts that need its config.
    """

    name: str
    matches: Callable[[set[str]], bool]
    to_canonical: Callable[[dict[str, Array], nnx.Module], dict[str, Array]]
    from_canonical: Callable[[dict[str, Array], nnx.Module], dict[str, Array]]


_LAYOUTS: dict[type, list[Layout]] = {}


def register_layout(cls: type, layout: Layout) -> Layout:
    _LAYOUTS.setdefault(cls, []).append(layout)
    return layout


def layouts_for(cls: type) -> list[Layout]:
    return [lay for klass in cls.__mro__ for lay in _LAYOUTS.get(klass, [])]


def _find_layout(module: nnx.Module, name: str) -> Layout:
    for lay in layouts_for(type(module)):
        if lay.name == name:
            return lay
    known = [lay.name for lay in layouts_for(type(module))]
    raise ValueError(f"`layout` (={name!r}) is not a layout of {type(module).__name__}: {known}")


# --- state_dict IO --------------------------------------------------------------------------


def to_numpy(value: Any) -> Array:
    """A numpy array from a numpy/JAX array or a torch tensor (without importing torch)."""
    if hasattr(value, "detach"):  # torch.Tensor
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def load_state_dict(
    module: nnx.Module,
    state_dict: Mapping[str, Any],
    *,
    strict: bool = True,
    layout: str | None = None,
    allow_non_finite: bool = False,
) -> list[str]:
    """Load a PyTorch state_dict into ``module`` in place.

    Values may be torch tensors or numpy arrays; they are re-laid out and cast to
    each variable's dtype. The layout (canonical, or one of the upstream layouts
    registered for the module's class) is recognised from the keys unless
    ``layout`` names it. All checks run before anything is written: on error the
    module is unchanged.

    Args:
      module: the Flax module to fill.
      state_dict: PyTorch-named tensors.
      strict: raise on missing or unexpected keys (shape mismatches always raise).
      layout: force a registered layout by name (``"canonical"`` for ours).
      allow_non_finite: accept NaN/inf values (refused by default, naming the keys).

    Returns:
      The missing keys (only non-empty when ``strict=False``).

    Raises:
      ConversionError: listing every missing, unexpected and mis-shaped key.
      ValueError: complex or non-numeric values, or NaN/inf ones unless ``allow_non_finite``.
    """
    sd = {k: to_numpy(v) for k, v in state_dict.items()}
    check_values(
        sd, where=f"load_state_dict into {type(module).__name__}", allow_non_finite=allow_non_finite
    )
    maps = tensor_maps(module)
    canonical = {m.torch_key for m in maps}
    target = type(module).__name__
    chosen: Layout | None = None
    if layout is not None and layout != "canonical":
        chosen = _find_layout(module, layout)
    elif layout is None and set(sd) != canonical:
        keys = StateKeys(sd)
        for lay in layouts_for(type(module)):
            if lay.matches(keys):
                chosen = lay
                break
    if chosen is not None:
        sd = chosen.to_canonical(sd, module)

    missing = [(m.torch_key, m.torch_shape) for m in maps if m.torch_key not in sd]
    unexpected = sorted(set(sd) - canonical)
    mismatched = [
        (m.torch_key, m.torch_shape, tuple(sd[m.torch_key].shape))
        for m in maps
        if m.torch_key in sd and tuple(sd[m.torch_key].shape) != m.torch_shape
    ]
    if mismatched or (strict and (missing or unexpected)):
        note = ""
        if layouts_for(type(module)) and chosen is None and layout is None:
            names = ", ".join(lay.name for lay in layouts_for(type(module)))
            note = f"the keys match neither the canonical layout nor a known one ({names})"
        raise ConversionError(target, missing, unexpected, mismatched, note)

    variables = dict(nnx.to_flat_state(nnx.state(module, _MAPPED)))
    updates = []
    for m in maps:
        if m.torch_key not in sd:
            continue
        var = variables[m.flax_path]
        value = np.asarray(m.to_flax(sd[m.torch_key]))
        if value.shape != tuple(var.shape):
            raise TypeError(
                f"conversion rule bug: {m.torch_key} maps to shape {value.shape}, "
                f"variable {'.'.join(map(str, m.flax_path))} has {tuple(var.shape)}"
            )
        # jnp.array copies: jnp.asarray may alias the numpy buffer on CPU, and a
        # torch tensor's .numpy() shares memory with the tensor, so a later
        # in-place update in torch (BatchNorm running stats) would leak in.
        updates.append((m.flax_path, jnp.array(value, dtype=var.dtype)))
    for path, value in updates:
        variables[path][...] = value
    # Remember the layout so that export writes the same one back (see torch_layout).
    _LOADED_LAYOUT[module] = chosen.name if chosen is not None else "canonical"
    return [k for k, _ in missing]


def map_to_torch(
    module: nnx.Module, values: Mapping[tuple, Any], *, layout: str | None = None
) -> dict[str, Array]:
    """Map Flax-path-keyed arrays (variables, or gradients of the same shapes) to
    PyTorch names and layouts; paths absent from ``values`` are skipped."""
    out = {}
    for m in tensor_maps(module):
        if m.flax_path in values:
            # np.array copies: JAX buffers are read-only and torch wants writable memory.
            out[m.torch_key] = np.array(m.to_torch(np.asarray(values[m.flax_path])))
    layout = layout or torch_layout(module)
    if layout != "canonical":
        out = _find_layout(module, layout).from_canonical(out, module)
    return out


def to_torch_state_dict(module: nnx.Module, *, layout: str | None = None) -> dict[str, Array]:
    """The module's weights as a PyTorch state_dict of numpy arrays.

    The layout is the one the module was loaded from (``load_state_dict`` /
    ``from_torch`` remember it) unless ``layout`` names another registered one.
    ``torch_module.load_state_dict({k: torch.from_numpy(v) ...}, strict=True)``
    accepts the result.
    """
    values = {p: v[...] for p, v in nnx.to_flat_state(nnx.state(module, _MAPPED))}
    return map_to_torch(module, values, layout=layout)
