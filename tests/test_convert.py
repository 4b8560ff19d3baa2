"""The conversion engine: round trips, strictness, layouts of weight files."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from flax import nnx

import flaxattn
import torch_ref
from flaxattn.convert import (
    ConversionError,
    from_torch,
    load_into_torch,
    load_state_dict,
    load_weights,
    save_weights,
    to_torch_state_dict,
)
from parity_tests.registry import load_all

CASES = load_all()


@pytest.mark.parametrize("name", sorted(CASES))
def test_round_trip_is_identity(name):
    torch.manual_seed(0)
    tm = CASES[name].make_torch()
    with torch.no_grad():  # non-trivial buffers too
        for t in tm.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.randn_like(t).abs())
    fm = from_torch(tm)
    sd = to_torch_state_dict(fm)
    ref = tm.state_dict()
    assert sorted(sd) == sorted(ref)
    for k, v in ref.items():
        np.testing.assert_array_equal(sd[k], v.numpy(), err_msg=k)
        assert sd[k].dtype == v.numpy().dtype, k
    # The export loads strictly into a fresh twin, and flax -> torch -> flax is the identity.
    fresh = load_into_torch(CASES[name].make_torch(), fm)
    back = from_torch(fresh)
    a = nnx.to_flat_state(nnx.state(fm, nnx.Any(nnx.Param, nnx.BatchStat)))
    b = dict(nnx.to_flat_state(nnx.state(back, nnx.Any(nnx.Param, nnx.BatchStat))))
    for path, v in a:
        np.testing.assert_array_equal(v[...], b[path][...], err_msg=str(path))


def test_conversion_error_lists_everything_and_leaves_module_unchanged():
    fm = flaxattn.ResBlockCBAM(16, 8, 2, True, rngs=nnx.Rngs(0))
    before = {p: np.array(v[...]) for p, v in nnx.to_flat_state(nnx.state(fm))}
    sd = to_torch_state_dict(fm)
    sd = {k: v + 1 if v.dtype.kind == "f" else v for k, v in sd.items()}
    del sd["bottleneck.0.weight"], sd["cbam.spatial_attention.conv2d.bias"]
    sd["extra.weight"] = np.zeros(3)
    sd["bottleneck.1.weight"] = np.zeros(5)
    with pytest.raises(ConversionError) as err:
        load_state_dict(fm, sd)
    e = err.value
    assert isinstance(e, ValueError)
    assert sorted(k for k, _ in e.missing) == [
        "bottleneck.0.weight",
        "cbam.spatial_attention.conv2d.bias",
    ]
    assert e.unexpected == ["extra.weight"]
    assert e.mismatched == [("bottleneck.1.weight", (8,), (5,))]
    for key in ("bottleneck.0.weight", "extra.weight", "bottleneck.1.weight: expected (8,)"):
        assert key in str(e)
    after = {p: np.array(v[...]) for p, v in nnx.to_flat_state(nnx.state(fm))}
    assert all(np.array_equal(before[p], after[p]) for p in before)


def test_non_strict_load_reports_missing_and_still_refuses_bad_shapes():
    fm = flaxattn.SELayer(32, 8, rngs=nnx.Rngs(0))
    sd = to_torch_state_dict(fm)
    missing = load_state_dict(fm, {"fc.0.weight": sd["fc.0.weight"] * 2, "junk": 1.0}, strict=False)
    assert missing == ["fc.2.weight"]
    np.testing.assert_allclose(fm.fc.layers[0].kernel[...], (sd["fc.0.weight"] * 2).T)
    with pytest.raises(ConversionError, match="mismatched: fc.0.weight"):
        load_state_dict(fm, {"fc.0.weight": np.zeros((2, 2))}, strict=False)


def test_from_torch_unknown_module_names_what_it_accepts():
    with pytest.raises(TypeError, match="no builder for torch.nn.modules.linear.Linear"):
        from_torch(torch.nn.Linear(2, 3))


def test_from_torch_keeps_mode_and_dtype():
    tm = torch_ref.AttentionGate(4, 4, 2).double().eval()
    fm = from_torch(tm)
    assert fm.W_g.layers[1].use_running_average is True
    assert fm.W_g.layers[0].kernel[...].dtype == np.float64
    fm32 = from_torch(tm.float().train())
    assert fm32.W_g.layers[1].use_running_average is False
    assert fm32.W_g.layers[0].kernel[...].dtype == np.float32


def test_float64_module_without_x64_is_refused(tmp_path):
    code = (
        "import torch, torch_ref\n"
        "from flaxattn.convert import from_torch\n"
        "try:\n"
        "    from_torch(torch_ref.SELayer(8, 2).double())\n"
        "except ValueError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "jax_enable_x64" in out.stdout, out.stderr


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": sd, "epoch": 3},
        lambda sd: {"model": sd, "optimizer": {"lr": 0.1}},
        lambda sd: {f"module.{k}": v for k, v in sd.items()},
    ],
    ids=["plain", "state_dict", "model", "dataparallel"],
)
def test_load_weights_pt(tmp_path, wrap):
    tm = torch_ref.SELayer(16, 4)
    torch.save(wrap(tm.state_dict()), tmp_path / "w.pt")
    sd = load_weights(tmp_path / "w.pt")
    assert sorted(sd) == sorted(tm.state_dict())
    fm = flaxattn.SELayer(16, 4, rngs=nnx.Rngs(1))
    load_state_dict(fm, sd)
    np.testing.assert_array_equal(to_torch_state_dict(fm)["fc.0.weight"], tm.fc[0].weight.detach())


@pytest.mark.parametrize("suffix", [".safetensors", ".npz", ".pt", ".pth", ".bin"])
def test_save_then_load_round_trip(tmp_path, suffix):
    fm = flaxattn.JongchanCBAM(16, 4, rngs=nnx.Rngs(0))
    sd = to_torch_state_dict(fm)
    path = save_weights(sd, tmp_path / f"sub/w{suffix}")
    back = load_weights(path)
    assert sorted(back) == sorted(sd)
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k])
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left


def test_save_failure_leaves_existing_file(tmp_path, monkeypatch):
    path = tmp_path / "w.npz"
    save_weights({"a": np.ones(2)}, path)
    with pytest.raises(ValueError, match=r"must end in \.safetensors"):
        save_weights({"a": np.zeros(2)}, tmp_path / "w.txt")
    with pytest.raises(TypeError, match="`a` is a object array"):
        save_weights({"a": object()}, path)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        save_weights({"a": np.zeros(2)}, path)
    monkeypatch.undo()
    np.testing.assert_array_equal(load_weights(path)["a"], np.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.npz"]


def test_load_weights_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no file at"):
        load_weights(tmp_path / "missing.pt")
    (tmp_path / "w.ckpt").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"`path` \(=.*w\.ckpt'\) must end in one of"):
        load_weights(tmp_path / "w.ckpt")
    torch.save({"epoch": 1, "notes": "x"}, tmp_path / "meta.pt")
    with pytest.raises(ValueError, match="holds a dict without tensors"):
        load_weights(tmp_path / "meta.pt")
