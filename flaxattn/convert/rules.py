"""Generic leaf rules, by layer type.

| Flax                     | PyTorch                                   | re-layout           |
|--------------------------|-------------------------------------------|---------------------|
| Linear ``kernel (in, out)``  | Linear ``weight (out, in)``           | transpose           |
| Conv ``kernel (*k, in/g, out)`` | ConvNd ``weight (out, in/g, *k)``  | move axes           |
| BatchNorm ``scale, bias``    | ``weight, bias``                      | none                |
| BatchNorm ``mean, var``      | ``running_mean, running_var``         | none                |
| BatchNorm ``num_batches_tracked`` | ``num_batches_tracked``          | int32 -> int64      |
| LayerNorm ``scale, bias``    | ``weight, bias``                      | none                |
| Embedding ``embedding``      | ``weight``                            | none                |
"""

from __future__ import annotations

import numpy as np
from flax import nnx

from flaxattn.convert.core import leaf, register_rule
from flaxattn.layers.basic import BatchNorm


def _t(a: np.ndarray) -> np.ndarray:
    return a.T


@register_rule(nnx.Linear)
def linear_rule(m, prefix, path):
    return leaf(m, prefix, path, "kernel", "weight", _t, _t) + leaf(m, prefix, path, "bias", "bias")


def _conv_to_torch(a: np.ndarray) -> np.ndarray:
    n = a.ndim - 2  # spatial dims; (*k, in, out) -> (out, in, *k)
    return np.transpose(a, (n + 1, n) + tuple(range(n)))


def _conv_to_flax(a: np.ndarray) -> np.ndarray:
    n = a.ndim - 2  # (out, in, *k) -> (*k, in, out)
    return np.transpose(a, tuple(range(2, n + 2)) + (1, 0))


@register_rule(nnx.Conv)
def conv_rule(m, prefix, path):
    return leaf(m, prefix, path, "kernel", "weight", _conv_to_flax, _conv_to_torch) + leaf(
        m, prefix, path, "bias", "bias"
    )


def _count_to_torch(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, np.int64)


@register_rule(BatchNorm)
def batch_norm_rule(m, prefix, path):
    return (
        leaf(m, prefix, path, "scale", "weight")
        + leaf(m, prefix, path, "bias", "bias")
        + leaf(m, prefix, path, "mean", "running_mean")
        + leaf(m, prefix, path, "var", "running_var")
        + leaf(
            m, prefix, path, "num_batches_tracked", "num_batches_tracked", to_torch=_count_to_torch
        )
    )


@register_rule(nnx.LayerNorm, nnx.GroupNorm)
def norm_rule(m, prefix, path):
    return leaf(m, prefix, path, "scale", "weight") + leaf(m, prefix, path, "bias", "bias")


@register_rule(nnx.Embed)
def embed_rule(m, prefix, path):
    return leaf(m, prefix, path, "embedding", "weight")
