"""Weight files: ``.pt/.pth/.bin`` (torch), ``.safetensors`` and ``.npz`` (no torch needed)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from flaxattn.convert.core import to_numpy

TORCH_SUFFIXES = (".pt", ".pth", ".bin")
# Wrappers training scripts put around a state_dict ({"model": sd, "optimizer": ...}).
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module", "net")


def _unwrap(obj: Any, path: Path) -> Mapping[str, Any]:
    for _ in range(3):
        if isinstance(obj, Mapping) and not any(hasattr(v, "shape") for v in obj.values()):
            inner = next((obj[k] for k in _WRAPPER_KEYS if k in obj), None)
            if inner is None:
                raise ValueError(
                    f"load_weights: {path} holds a dict without tensors and without any of the "
                    f"keys {list(_WRAPPER_KEYS)}; found keys {sorted(obj)[:10]}"
                )
            obj = inner
    if not isinstance(obj, Mapping):
        raise ValueError(f"load_weights: {path} holds a {type(obj).__name__}, not a state_dict")
    return obj


def load_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a state_dict from a weight file as numpy arrays.

    ``.pt/.pth/.bin`` are read with ``torch.load(weights_only=True)`` (torch is
    imported only here); a checkpoint wrapping the state_dict under ``state_dict``
    or ``model`` (as DilateFormer's official checkpoints do) is unwrapped, and a
    DataParallel ``module.`` prefix is removed. ``.safetensors`` and ``.npz`` need
    no torch.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"load_weights: no file at {path}")
    suffix = path.suffix.lower()
    if suffix in TORCH_SUFFIXES:
        import torch

        obj = torch.load(path, map_location="cpu", weights_only=True)
        sd = {k: to_numpy(v) for k, v in _unwrap(obj, path).items() if hasattr(v, "shape")}
    elif suffix == ".safetensors":
        from safetensors.numpy import load_file

        sd = load_file(str(path))
    elif suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            sd = {k: z[k] for k in z.files}
    else:
        raise ValueError(
            f"load_weights: `path` (={str(path)!r}) must end in one of "
            f"{list(TORCH_SUFFIXES) + ['.safetensors', '.npz']}"
        )
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def save_weights(state_dict: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write a state_dict atomically (temp file, then rename) by the suffix of ``path``."""
    path = Path(path)
    suffix = path.suffix.lower()
    arrays = {k: np.ascontiguousarray(to_numpy(v)) for k, v in state_dict.items()}
    for k, a in arrays.items():
        if a.dtype.kind not in "biuf":
            raise TypeError(f"save_weights: `{k}` is a {a.dtype} array; weight files hold numbers")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        if suffix == ".safetensors":
            from safetensors.numpy import save_file

            save_file(arrays, tmp)
        elif suffix == ".npz":
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
        elif suffix in TORCH_SUFFIXES:
            import torch

            torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, tmp)
        else:
            raise ValueError(
                f"save_weights: `path` (={str(path)!r}) must end in .safetensors, .npz, .pt, "
                ".pth or .bin"
            )
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
