"""Weight files: every read error names the file and what is wrong; nothing in a file runs."""

from __future__ import annotations

import argparse
import os
import pickle
import stat

import ml_dtypes
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.numpy import save_file

import flaxattn
from flaxattn.convert import (
    from_torch,
    load_state_dict,
    load_weights,
    save_weights,
    to_torch_state_dict,
)
from flaxattn.convert.io import WeightFileError
from parity_tests.cases.dilate import _mini

SD = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, np.float32)}


def _torch_sd():
    return {k: torch.from_numpy(v) for k, v in SD.items()}


def _cut(write):
    """A writer that writes a whole file and then keeps only its first half."""

    def w(path):
        write(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])

    return w


def _nested(depth):
    obj = _torch_sd()
    for _ in range(depth):
        obj = {"model": obj, "epoch": 3}
    return obj


# (id, file name, writer or None for no file, exception, message pattern)
FILE_ERRORS = [
    ("missing", "w.pt", None, FileNotFoundError, "no file at"),
    ("directory", "w.pt", lambda p: p.mkdir(), WeightFileError, "is a directory"),
    ("unknown-suffix", "w.ckpt", lambda p: p.write_bytes(b"x"), ValueError, r"must end in one of"),
    ("empty-pt", "w.pt", lambda p: p.write_bytes(b""), WeightFileError, r"is empty \(0 bytes\)"),
    ("empty-st", "w.safetensors", lambda p: p.touch(), WeightFileError, r"is empty"),
    ("empty-npz", "w.npz", lambda p: p.touch(), WeightFileError, r"is empty"),
    (
        "truncated-pt",
        "w.pt",
        _cut(lambda p: torch.save(_torch_sd(), p)),
        WeightFileError,
        "is truncated",
    ),
    (
        "truncated-legacy-pt",
        "w.pth",
        _cut(lambda p: torch.save(_torch_sd(), p, _use_new_zipfile_serialization=False)),
        WeightFileError,
        "is truncated",
    ),
    (
        "truncated-safetensors",
        "w.safetensors",
        _cut(lambda p: save_file(SD, str(p))),
        WeightFileError,
        "is truncated",
    ),
    (
        "truncated-npz",
        "w.npz",
        _cut(lambda p: np.savez(p, **SD)),
        WeightFileError,
        "is truncated or corrupt",
    ),
    (
        "text-as-pt",
        "w.bin",
        lambda p: p.write_text("hello"),
        WeightFileError,
        "is not a torch weight file",
    ),
    (
        "text-as-st",
        "w.safetensors",
        lambda p: p.write_text("hello world, not weights"),
        WeightFileError,
        "is not a safetensors file",
    ),
    (
        "text-as-npz",
        "w.npz",
        lambda p: p.write_text("hello"),
        WeightFileError,
        r"is not an \.npz archive",
    ),
    (
        "npz-as-pt",
        "w.pt",
        lambda p: p.write_bytes(_npz_bytes(p)),
        WeightFileError,
        "not a torch weight file",
    ),
    (
        "npy-as-npz",
        "w.npz",
        lambda p: np.save(open(p, "wb"), SD["w"]),
        WeightFileError,
        r"single \.npy array",
    ),
    (
        "pickled-npz",
        "w.npz",
        lambda p: np.savez(p, a=np.array([{"x": 1}], dtype=object)),
        WeightFileError,
        "pickled Python objects",
    ),
    (
        "tensor-not-dict",
        "w.pt",
        lambda p: torch.save(torch.ones(3), p),
        WeightFileError,
        "holds a Tensor, not a state_dict",
    ),
    (
        "meta-only",
        "w.pt",
        lambda p: torch.save({"epoch": 1, "notes": "x"}, p),
        WeightFileError,
        r"dict without tensors and without any of the keys .*found keys \['epoch', 'notes'\]",
    ),
    (
        "nested-too-deep",
        "w.pt",
        lambda p: torch.save(_nested(4), p),
        WeightFileError,
        r"no state_dict within 3 wrappers: followed 'model\.model\.model'.*keys \['epoch', "
        r"'model'\]",
    ),
    (
        "non-tensor-values",
        "w.pt",
        lambda p: torch.save({**_torch_sd(), "step": 3}, p),
        WeightFileError,
        r"not tensors under keys \['step'\]",
    ),
    (
        "int-keys",
        "w.pt",
        lambda p: torch.save({0: torch.ones(1), "b": torch.ones(1)}, p),
        WeightFileError,
        r"keys that are not strings: \[0\]",
    ),
    (
        "no-tensors-npz",
        "w.npz",
        lambda p: np.savez(p),
        WeightFileError,
        "holds no tensors",
    ),
]


def _npz_bytes(p):
    tmp = p.with_suffix(".tmp.npz")
    np.savez(tmp, **SD)
    return tmp.read_bytes()


@pytest.mark.parametrize(
    "name, write, exc, match", [c[1:] for c in FILE_ERRORS], ids=[c[0] for c in FILE_ERRORS]
)
def test_read_errors_name_the_file(tmp_path, name, write, exc, match):
    path = tmp_path / name
    if write is not None:
        write(path)
    with pytest.raises(exc, match=match) as info:
        load_weights(path)
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message


@pytest.mark.parametrize("depth", [0, 1, 2, 3])
def test_wrappers_up_to_the_limit_unwrap(tmp_path, depth):
    torch.save(_nested(depth), tmp_path / "w.pt")
    back = load_weights(tmp_path / "w.pt")
    assert sorted(back) == sorted(SD)
    np.testing.assert_array_equal(back["w"], SD["w"])


def _write_values(path, arrays):
    if path.suffix == ".npz":
        np.savez(path, **arrays)
    elif path.suffix == ".safetensors":
        save_file(arrays, str(path))
    else:
        torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, path)


BAD_VALUES = [  # (suffix, value, pattern)
    (sfx, v, m)
    for sfx in (".pt", ".npz", ".safetensors")
    for v, m in (
        (
            np.array([1.0, np.nan, 2.0], np.float32),
            r"non-finite values under 1 key \(bad \(1 NaN\)",
        ),
        (np.array([np.inf, -np.inf], np.float64), r"bad \(2 inf\)"),
    )
] + [
    (sfx, np.array([1 + 2j], np.complex64), r"complex values under 1 key \(bad \(complex64\)")
    for sfx in (".pt", ".npz")  # safetensors 0.8 cannot write complex
]


@pytest.mark.parametrize(
    "suffix, value, match", BAD_VALUES, ids=[f"{s}-{v.dtype}-{v[0]}" for s, v, _ in BAD_VALUES]
)
def test_bad_values_are_refused_naming_the_key(tmp_path, suffix, value, match):
    path = tmp_path / f"w{suffix}"
    _write_values(path, {"good": np.ones(2, np.float32), "bad": value})
    with pytest.raises(ValueError, match=match) as info:
        load_weights(path)
    assert str(path) in str(info.value)
    if value.dtype.kind == "c":  # complex is never accepted
        with pytest.raises(ValueError, match="complex"):
            load_weights(path, allow_non_finite=True)
        return
    assert "allow_non_finite=True" in str(info.value)
    back = load_weights(path, allow_non_finite=True)
    np.testing.assert_array_equal(back["bad"], value)


@pytest.mark.parametrize(
    "value, match",
    [
        (np.nan, r"load_state_dict into SELayer: non-finite values under 1 key \(fc\.0\.weight"),
        (np.inf, r"fc\.0\.weight \(1 inf\)"),
        (1j, r"complex values under 1 key \(fc\.0\.weight"),
    ],
    ids=["nan", "inf", "complex"],
)
def test_load_state_dict_refuses_bad_values_and_leaves_the_module(value, match):
    fm = flaxattn.SELayer(16, 4, rngs=nnx.Rngs(0))
    before = to_torch_state_dict(fm)
    sd = dict(before)
    sd["fc.0.weight"] = sd["fc.0.weight"] + np.zeros((), type(value))
    sd["fc.0.weight"].flat[0] = value
    with pytest.raises(ValueError, match=match):
        load_state_dict(fm, sd)
    after = to_torch_state_dict(fm)
    for k in before:
        np.testing.assert_array_equal(after[k], before[k])
    if isinstance(value, complex):
        return
    load_state_dict(fm, sd, allow_non_finite=True)
    assert not np.isfinite(to_torch_state_dict(fm)["fc.0.weight"]).all()


def test_save_refuses_non_finite_unless_asked(tmp_path):
    path = tmp_path / "w.safetensors"
    with pytest.raises(ValueError, match=r"save_weights: .*w\.safetensors: non-finite .*\(a "):
        save_weights({"a": np.array([np.nan])}, path)
    assert not path.exists()
    save_weights({"a": np.array([np.nan])}, path, allow_non_finite=True)
    assert np.isnan(load_weights(path, allow_non_finite=True)["a"]).all()


BF16_FORMATS = [(".safetensors", ml_dtypes.bfloat16), (".pt", ml_dtypes.bfloat16)]
BF16_FORMATS += [(".npz", np.float32)]  # numpy has no bf16: widened, exactly


@pytest.mark.parametrize("suffix, read_dtype", BF16_FORMATS, ids=[s for s, _ in BF16_FORMATS])
def test_bfloat16_round_trip(tmp_path, suffix, read_dtype):
    fm = flaxattn.SELayer(16, 4, param_dtype=ml_dtypes.bfloat16, rngs=nnx.Rngs(0))
    sd = to_torch_state_dict(fm)
    assert sd["fc.0.weight"].dtype == ml_dtypes.bfloat16
    path = save_weights(sd, tmp_path / f"w{suffix}")
    back = load_weights(path)
    assert {a.dtype for a in back.values()} == {np.dtype(read_dtype)}
    fresh = flaxattn.SELayer(16, 4, param_dtype=ml_dtypes.bfloat16, rngs=nnx.Rngs(1))
    load_state_dict(fresh, back)
    again = to_torch_state_dict(fresh)
    for k in sd:
        assert again[k].dtype == ml_dtypes.bfloat16
        np.testing.assert_array_equal(again[k].astype(np.float32), sd[k].astype(np.float32))


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
@pytest.mark.parametrize("suffix", [".safetensors", ".npz", ".pt"])
def test_files_get_the_users_umask(tmp_path, umask, suffix):
    old = os.umask(umask)
    try:
        path = save_weights(SD, tmp_path / f"w{suffix}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_failed_replace_keeps_the_old_file(tmp_path, monkeypatch):
    path = save_weights(SD, tmp_path / "w.safetensors")

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        save_weights({"w": np.zeros(1, np.float32)}, path)
    monkeypatch.undo()
    np.testing.assert_array_equal(load_weights(path)["w"], SD["w"])
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_official_dilateformer_checkpoint_loads(tmp_path):
    # DilateFormer's main.py (DeiT's): {'model', 'optimizer', 'lr_scheduler', 'epoch',
    # 'model_ema', 'scaler', 'args': argparse.Namespace}.
    torch.manual_seed(0)
    tm = _mini()
    opt = torch.optim.AdamW(tm.parameters(), lr=1e-3)
    tm(torch.randn(2, 3, 32, 28)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.StepLR(opt, 10)
    args = argparse.Namespace(model="dilateformer_tiny", lr=1e-3, input_size=224, resume="")
    torch.save(
        {
            "model": tm.state_dict(),
            "optimizer": opt.state_dict(),
            "lr_scheduler": sched.state_dict(),
            "epoch": 3,
            "model_ema": tm.state_dict(),
            "scaler": {"scale": 65536.0},
            "args": args,
        },
        tmp_path / "checkpoint.pth",
    )
    sd = load_weights(tmp_path / "checkpoint.pth")
    assert sorted(sd) == sorted(tm.state_dict())
    fm = from_torch(_mini())
    load_state_dict(fm, sd)
    out = to_torch_state_dict(fm)
    for k, v in tm.state_dict().items():
        np.testing.assert_array_equal(out[k], v.numpy())


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


MALICIOUS = [
    ("zip", lambda p, m: torch.save({"w": torch.ones(1), "x": Evil(m)}, p)),
    (
        "legacy",
        lambda p, m: torch.save({"w": Evil(m)}, p, _use_new_zipfile_serialization=False),
    ),
    ("raw-pickle", lambda p, m: p.write_bytes(pickle.dumps({"w": Evil(m)}, protocol=2))),
    (
        "inside-namespace",
        lambda p, m: torch.save(
            {"model": {"w": torch.ones(1)}, "args": argparse.Namespace(x=Evil(m))}, p
        ),
    ),
]


@pytest.mark.parametrize("write", [w for _, w in MALICIOUS], ids=[n for n, _ in MALICIOUS])
def test_malicious_pickle_is_refused(tmp_path, write):
    marker = tmp_path / "pwned"
    path = tmp_path / "w.pt"
    write(path, marker)
    with pytest.raises(WeightFileError, match=r"outside torch's weights-only allow-list") as info:
        load_weights(path)
    assert "system" in str(info.value) and str(path) in str(info.value)
    assert not marker.exists()


def test_namespace_allowance_is_scoped(tmp_path):
    torch.save({"args": argparse.Namespace(a=1)}, tmp_path / "ns.pt")
    with pytest.raises(WeightFileError, match="dict without tensors"):
        load_weights(tmp_path / "ns.pt")
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "ns.pt", weights_only=True)
    assert argparse.Namespace not in torch.serialization.get_safe_globals()
