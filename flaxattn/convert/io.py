"""Weight files: ``.pt/.pth/.bin`` (torch), ``.safetensors`` and ``.npz`` (no torch needed).

Reading never runs code from the file: torch files go through ``torch.load(weights_only=True)``
with exactly one extra class allowed, ``argparse.Namespace`` (DilateFormer's official
``main.py`` stores its arguments as one next to the weights), and only for that call.

Every read error is a :class:`WeightFileError` (a ``ValueError``) naming the file and what is
wrong with it: empty, truncated or corrupt, not a weight file of its kind, a checkpoint whose
state_dict is not where the unwrapper looks, or (unless ``allow_non_finite=True``) NaN/inf
values, listing the keys that hold them. A missing file is a ``FileNotFoundError``.

How each format holds bfloat16 (what :func:`save_weights` writes and :func:`load_weights`
gives back):

=============== ============================== =========================================
format          written as                     read back as
=============== ============================== =========================================
.safetensors    BF16                           ``ml_dtypes.bfloat16``
.pt/.pth/.bin   ``torch.bfloat16``             ``ml_dtypes.bfloat16``
.npz            float32 (numpy has no bf16;    float32 (every bf16 value is a float32, so
                the widening is exact)         loading it into a bf16 module is exact)
=============== ============================== =========================================
"""

from __future__ import annotations

import os
import re
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from flaxattn.convert.core import to_numpy
from flaxattn.convert.values import check_values, is_float

TORCH_SUFFIXES = (".pt", ".pth", ".bin")
SUFFIXES = (*TORCH_SUFFIXES, ".safetensors", ".npz")
# Wrappers training scripts put around a state_dict ({"model": sd, "optimizer": ...}).
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module", "net")
# How many wrappers deep the unwrapper looks for the state_dict.
MAX_WRAPPER_DEPTH = 3
_ZIP_MAGIC = b"PK"  # a local file header (PK\\3\\4), or an empty archive (PK\\5\\6)


class WeightFileError(ValueError):
    """A weight file that cannot be read; the message names the file and what is wrong."""

    def __init__(self, path: Path, problem: str):
        self.path = path
        super().__init__(f"load_weights: {path}: {problem}")


def _is_tensor(value: Any) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype")


def _torch_to_numpy(value: Any) -> np.ndarray:
    """A tensor as numpy, keeping bfloat16 (``Tensor.numpy()`` refuses it)."""
    value = value.detach().cpu()
    if str(value.dtype) == "torch.bfloat16":
        import torch

        return value.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return value.numpy()


def _unwrap(obj: Any, path: Path) -> Mapping[str, Any]:
    """The state_dict inside a checkpoint: up to ``MAX_WRAPPER_DEPTH`` wrapper keys deep."""
    trail: list[str] = []
    while True:
        at = f" under {'.'.join(trail)!r}" if trail else ""
        if not isinstance(obj, Mapping):
            raise WeightFileError(
                path, f"holds a {type(obj).__name__}{at}, not a state_dict (a dict of tensors)"
            )
        if any(_is_tensor(v) for v in obj.values()):
            return obj
        found = sorted(map(str, obj))
        key = next((k for k in _WRAPPER_KEYS if k in obj), None)
        if key is None:
            raise WeightFileError(
                path,
                f"holds a dict without tensors{at} and without any of the keys "
                f"{list(_WRAPPER_KEYS)}; found keys {found[:20]}",
            )
        if len(trail) == MAX_WRAPPER_DEPTH:
            raise WeightFileError(
                path,
                f"no state_dict within {MAX_WRAPPER_DEPTH} wrappers: followed "
                f"{'.'.join(trail)!r} and found a dict without tensors, with keys {found[:20]}; "
                f"unwrap it yourself and call load_state_dict",
            )
        trail.append(key)
        obj = obj[key]


def _read_torch(path: Path, head: bytes) -> dict[str, np.ndarray]:
    import argparse
    import pickle

    import torch

    if head.startswith(_ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            raise WeightFileError(path, "is truncated or corrupt (a zip archive without its end)")
    elif not head.startswith(b"\x80"):  # the legacy format starts with a pickle
        raise WeightFileError(path, f"is not a torch weight file (it starts with {head[:8]!r})")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"[^\n]*\b[Uu]nsupported\b[^\n]*", str(e))
        if found or "weights_only" in str(e).lower():
            what = found.group(0).strip() if found else str(e).splitlines()[0]
            raise WeightFileError(
                path,
                f"needs code outside torch's weights-only allow-list ({what}); nothing was run. "
                "Load it with torch.load(weights_only=False) yourself only if you trust its source",
            ) from None
        raise WeightFileError(path, f"is truncated or corrupt ({_first_line(e)})") from None
    except (EOFError, RuntimeError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise WeightFileError(
            path, f"is truncated, corrupt or not a torch weight file ({_first_line(e)})"
        ) from None
    sd = _unwrap(obj, path)
    not_str = [k for k in sd if not isinstance(k, str)]
    if not_str:
        raise WeightFileError(path, f"its state_dict has keys that are not strings: {not_str[:20]}")
    others = sorted(str(k) for k, v in sd.items() if not _is_tensor(v))
    if others:
        raise WeightFileError(
            path, f"its state_dict holds values that are not tensors under keys {others[:20]}"
        )
    return {k: _torch_to_numpy(v) for k, v in sd.items()}


def _read_safetensors(path: Path, head: bytes, size: int) -> dict[str, np.ndarray]:
    import json

    from safetensors.numpy import load_file

    # Layout: an 8-byte little-endian header length n, n bytes of JSON, then the data.
    n = int.from_bytes(head[:8], "little") if len(head) >= 8 else None
    if n is None or n > size - 8:
        start = head[8:9]
        if n is not None and start == b"{":
            raise WeightFileError(path, f"is truncated ({size} bytes, header alone needs {n + 8})")
        raise WeightFileError(path, f"is not a safetensors file (it starts with {head[:8]!r})")
    with path.open("rb") as f:
        f.seek(8)
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, ValueError):
            raise WeightFileError(
                path, "is not a safetensors file (its header is not JSON)"
            ) from None
    if not isinstance(header, dict):
        raise WeightFileError(path, "is not a safetensors file (its header is not a JSON object)")
    ends = [
        v["data_offsets"][1]
        for k, v in header.items()
        if k != "__metadata__" and isinstance(v, dict) and len(v.get("data_offsets", ())) == 2
    ]
    if ends and max(ends) > size - 8 - n:
        raise WeightFileError(
            path, f"is truncated ({size} bytes, its tensors need {8 + n + max(ends)})"
        )
    try:
        return load_file(str(path))
    except Exception as e:  # SafetensorError and numpy's errors on a corrupt header
        raise WeightFileError(path, f"is corrupt ({_first_line(e)})") from None


def _read_npz(path: Path, head: bytes) -> dict[str, np.ndarray]:
    if head.startswith(b"\x93NUMPY"):
        raise WeightFileError(path, "holds a single .npy array, not a state_dict (.npz archive)")
    if not head.startswith(_ZIP_MAGIC):
        raise WeightFileError(path, f"is not an .npz archive (it starts with {head[:8]!r})")
    if not zipfile.is_zipfile(path):
        raise WeightFileError(path, "is truncated or corrupt (a zip archive without its end)")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise WeightFileError(
                path, "holds pickled Python objects, not arrays of numbers; refused"
            ) from None
        raise WeightFileError(path, f"is corrupt ({_first_line(e)})") from None
    except (EOFError, OSError, zipfile.BadZipFile, KeyError) as e:
        raise WeightFileError(path, f"is truncated or corrupt ({_first_line(e)})") from None
    except Exception as e:  # zlib.error and friends from a damaged member
        raise WeightFileError(path, f"is corrupt ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def load_weights(
    path: str | os.PathLike, *, allow_non_finite: bool = False
) -> dict[str, np.ndarray]:
    """Read a state_dict from a weight file as numpy arrays.

    ``.pt/.pth/.bin`` are read with ``torch.load(weights_only=True)`` (torch is
    imported only here); a checkpoint wrapping the state_dict under ``state_dict``,
    ``model``, ``model_state_dict``, ``module`` or ``net`` (up to ``MAX_WRAPPER_DEPTH``
    deep, as DilateFormer's official ``{'model': sd, 'optimizer': ..., 'args':
    Namespace(...)}`` does) is unwrapped, and a DataParallel ``module.`` prefix is
    removed. ``.safetensors`` and ``.npz`` need no torch.

    Args:
      path: the file.
      allow_non_finite: accept NaN/inf values (refused by default, naming the keys).

    Raises:
      FileNotFoundError: no file at ``path``.
      WeightFileError: (a ``ValueError``) the file is empty, truncated, corrupt, not a
        weight file, holds no state_dict where the unwrapper looks, needs code to load,
        or holds complex, non-numeric or (by default) non-finite values.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(
            f"load_weights: `path` (={str(path)!r}) must end in one of {list(SUFFIXES)}"
        )
    if not path.exists():
        raise FileNotFoundError(f"load_weights: no file at {path}")
    if path.is_dir():
        raise WeightFileError(path, "is a directory, not a weight file")
    size = path.stat().st_size
    if size == 0:
        raise WeightFileError(path, "is empty (0 bytes)")
    with path.open("rb") as f:
        head = f.read(16)
    if suffix in TORCH_SUFFIXES:
        sd = _read_torch(path, head)
    elif suffix == ".safetensors":
        sd = _read_safetensors(path, head, size)
    else:
        sd = _read_npz(path, head)
    if not sd:
        raise WeightFileError(path, "holds no tensors")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    check_values(sd, where=f"load_weights: {path}", allow_non_finite=allow_non_finite)
    return sd


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask is process-wide and racy)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_weights(
    state_dict: Mapping[str, Any], path: str | os.PathLike, *, allow_non_finite: bool = False
) -> Path:
    """Write a state_dict atomically (temp file, then rename) by the suffix of ``path``.

    The file gets the permissions any new file of the user gets (``0o666 & ~umask``).
    bfloat16 values are kept in ``.safetensors`` and ``.pt``; ``.npz`` stores them as
    float32 (exact). NaN/inf values are refused, naming the keys, unless
    ``allow_non_finite=True``; complex and non-numeric values always are.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(
            f"save_weights: `path` (={str(path)!r}) must end in .safetensors, .npz, .pt, "
            ".pth or .bin"
        )
    arrays = {}
    for k, v in state_dict.items():
        if not isinstance(k, str):
            raise TypeError(f"save_weights: key {k!r} is a {type(k).__name__}, not a str")
        a = _torch_to_numpy(v) if hasattr(v, "detach") else to_numpy(v)
        if a.dtype.kind not in "biuf" and not is_float(a.dtype):
            raise TypeError(f"save_weights: `{k}` is a {a.dtype} array; weight files hold numbers")
        # np.require, not np.ascontiguousarray: that one makes a 0-d array (a BatchNorm's
        # num_batches_tracked) 1-d, and the file then no longer loads into its own model.
        arrays[k] = np.require(a, requirements="C")
    check_values(arrays, where=f"save_weights: {path}", allow_non_finite=allow_non_finite)
    if path.is_dir():
        raise IsADirectoryError(f"save_weights: `path` (={str(path)!r}) is a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise type(e)(e.errno, f"save_weights: cannot write {path}: {e.strerror}") from None
    os.close(fd)
    try:
        if suffix == ".safetensors":
            from safetensors.numpy import save_file

            save_file(arrays, tmp)
        elif suffix == ".npz":
            wide = {
                k: a.astype(np.float32) if a.dtype.kind == "V" and is_float(a.dtype) else a
                for k, a in arrays.items()
            }
            with open(tmp, "wb") as f:
                np.savez(f, **wide)
        else:
            import torch

            def tensor(a: np.ndarray):
                if a.dtype == ml_dtypes.bfloat16:
                    return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
                if a.dtype.kind == "V":  # other ml_dtypes floats: torch.save them as float32
                    return torch.from_numpy(a.astype(np.float32))
                return torch.from_numpy(a)

            torch.save({k: tensor(a) for k, a in arrays.items()}, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
