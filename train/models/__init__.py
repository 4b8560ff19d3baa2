"""The model registry of the training loop.

A :class:`ModelSpec` names a flaxattn class (its torch_ref twin has the same
path and arguments) and the constructor kwargs that size it for a dataset.
Families register theirs in ``train/models/<family>.py``; every registered
model is smoke-tested (a few steps lower the loss) by ``tests/test_train_smoke.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
from flax import nnx

from flaxattn.registry import Registry, resolve


@dataclasses.dataclass(frozen=True)
class DataInfo:
    """What a model needs to know about the data: image size, channels, classes."""

    height: int
    width: int
    channels: int
    num_classes: int


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A named, dataset-sized configuration of a flaxattn classifier.

    Args:
      name: the ``--model`` name.
      cls: class path under ``flaxattn``/``torch_ref``, e.g. ``"ViT"`` or
        ``"models.cbam_resnet.CBAMResNet"``. The model maps ``(B, H, W, C)``
        images to ``(B, num_classes)`` logits.
      kwargs: constructor kwargs for a dataset (``--set key=value`` overrides them).
      description: one line for ``--list``.
      train: training defaults for this model (``lr``, ``batch_size``, ``epochs``...),
        overridden by the command line.
    """

    name: str
    cls: str
    kwargs: Callable[[DataInfo], dict]
    description: str = ""
    train: dict = dataclasses.field(default_factory=dict)


MODELS: Registry[ModelSpec] = Registry("model", "train.models")


def register_model(spec: ModelSpec) -> ModelSpec:
    return MODELS.add(spec.name, spec)


def load_all() -> dict[str, ModelSpec]:
    """Import every ``train/models/<family>.py`` (each registers its models)."""
    return MODELS.load_all()


def get_model(name: str) -> ModelSpec:
    models = load_all()
    if name not in models:
        raise ValueError(f"`model` (={name!r}) is not registered; valid models: {sorted(models)}")
    return models[name]


def model_kwargs(spec: ModelSpec, info: DataInfo, overrides: dict | None = None) -> dict:
    kwargs = dict(spec.kwargs(info))
    valid = set(kwargs) | _init_params(resolve(spec.cls, "flaxattn"))
    for key, value in (overrides or {}).items():
        if key not in valid:
            raise ValueError(
                f"`--set {key}=...`: {spec.cls} has no argument {key!r}; "
                f"its arguments are {sorted(valid)}"
            )
        kwargs[key] = value
    return kwargs


# Framework arguments of every Flax module, not the model's hyperparameters.
_NOT_SETTABLE = {"self", "dtype", "param_dtype", "rngs"}


def _init_params(cls) -> set[str]:
    import inspect

    params = inspect.signature(cls.__init__).parameters
    return {
        n
        for n, p in params.items()
        if n not in _NOT_SETTABLE and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


def build_flax(
    spec: ModelSpec,
    info: DataInfo,
    overrides: dict | None = None,
    *,
    rngs: nnx.Rngs,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
) -> nnx.Module:
    cls = resolve(spec.cls, "flaxattn")
    return cls(
        **model_kwargs(spec, info, overrides), dtype=dtype, param_dtype=param_dtype, rngs=rngs
    )


def build_torch(spec: ModelSpec, info: DataInfo, overrides: dict | None = None):
    """The torch_ref twin with the same configuration (imports torch)."""
    return resolve(spec.cls, "torch_ref")(**model_kwargs(spec, info, overrides))
