"""Trained weights back to PyTorch.

``export_weights`` writes the model's state_dict in torch names and layouts
(``.safetensors`` by default; ``.pt``/``.npz`` by suffix) and, beside it,
``<file>.json`` naming the torch_ref class and its constructor arguments, so
``load_torch_twin`` can rebuild the twin and load the weights with ``strict=True``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from flax import nnx

from flaxattn.convert import load_weights, save_weights, to_torch_state_dict
from flaxattn.registry import resolve


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".npz")


def check_export_path(path: str | os.PathLike) -> Path:
    """Refuse, before any training, an ``--export`` path that cannot be written."""
    path = Path(path)
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise ValueError(f"`export` (={str(path)!r}) must end in one of {list(WEIGHT_SUFFIXES)}")
    if path.is_dir():
        raise ValueError(f"`export` (={str(path)!r}) is a directory; name a file")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"`export` (={str(path)!r}): its folder {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"`export` (={str(path)!r}) is not writable")
    return path


def export_weights(
    model: nnx.Module,
    cls: str,
    kwargs: dict,
    path: str | os.PathLike,
    *,
    certify: Callable[[Path], dict] | None = None,
) -> dict:
    """Write ``model``'s weights as a torch state_dict plus its ``.json`` description.

    ``certify(path)``, called once the weights are written, returns the description's
    ``certificate`` block (:func:`train.gate.certify`). Returns the description.
    """
    path = Path(path)
    save_weights(to_torch_state_dict(model), path)
    meta = {"torch_ref_class": cls, "kwargs": kwargs, "weights": path.name}
    write_description(path, meta)
    if certify is not None:  # it loads the twin from the file and its description
        meta["certificate"] = certify(path)
        write_description(path, meta)
    return meta


def write_description(path: Path, meta: dict) -> None:
    """``<path>.json``, written atomically."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".json.tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(meta, f, indent=2, default=list)
    # mkstemp creates 0600; the description is as readable as any file the user makes.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, _sidecar(path))


def read_description(path: str | os.PathLike) -> dict:
    """The ``<path>.json`` written beside exported weights."""
    return json.loads(_sidecar(Path(path)).read_text())


def load_torch_twin(path: str | os.PathLike):
    """The torch_ref twin described by ``<path>.json``, with the exported weights (strict)."""
    import torch

    path = Path(path)
    meta = read_description(path)
    cls = resolve(meta["torch_ref_class"], "torch_ref")
    twin = cls(**meta["kwargs"])
    ref = twin.state_dict()
    sd = {
        k: torch.from_numpy(v).to(ref[k].dtype) if k in ref else torch.from_numpy(v)
        for k, v in load_weights(path).items()
    }
    twin.load_state_dict(sd, strict=True)
    return twin.eval()
