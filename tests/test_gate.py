"""Issue 17: the parity gate of ``--init-from`` and the certificate of ``--export``.

A tiny CBAM ResNet (BatchNorm: the gate checks eval and train mode) on scikit-learn's
digits starts from its torch_ref twin's weights. Faults are injected in-process: a Flax
layer that computes 1% more, or a conversion rule that transposes square kernels on the
way in; the gate must stop both before the first step.
"""

import contextlib
import io
import json
import shutil

import jax
import numpy as np
import pytest
import torch
from flax import nnx

import flaxattn.convert.rules as rules
import train.loop as train_loop
from flaxattn.convert import (
    load_state_dict,
    load_weights,
    save_weights,
    to_torch_state_dict,
    torch_layout,
)
from flaxattn.layers.basic import Conv2d
from train.__main__ import main as train_main
from train.config import TrainConfig
from train.data import load_dataset
from train.gate import batch_images, parity_gate, sha256
from train.loop import train_and_evaluate
from train.models import build_flax, build_torch, get_model
from train.verify import main as verify_main

pytestmark = pytest.mark.slow  # whole training runs: scheduled first (conftest.py)

OVERRIDES = {"planes": (4, 8, 16)}
TINY = ["--model", "cbam_resnet", "--dataset", "digits", "--set", "planes=(4,8,16)"]
TINY += ["--batch-size", "64", "--no-progress", "--no-tensorboard", "--max-steps", "1"]
VIT_1 = ["--model", "vit_tiny", "--dataset", "digits", "--set", "depth=1", "--set", "dim=32"]
VIT_1 += ["--set", "mlp_dim=32", *TINY[6:]]


@pytest.fixture(scope="module")
def init_file(tmp_path_factory):
    """The torch_ref twin's weights, with BatchNorm statistics that are not 0/1."""
    torch.manual_seed(0)
    data = load_dataset("digits")
    twin = build_torch(get_model("cbam_resnet"), data.info, OVERRIDES)
    with torch.no_grad():
        for name, t in twin.state_dict().items():
            if name.endswith("running_mean"):
                t.normal_(0, 0.1)
            elif name.endswith("running_var"):
                t.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("init") / "twin.pt"
    torch.save(twin.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def clean_run(init_file, tmp_path_factory):
    """A clean ``--init-from`` run of 2 steps that exports: its printout, result, paths."""
    tmp = tmp_path_factory.mktemp("clean")
    cfg = TrainConfig(
        model="cbam_resnet",
        dataset="digits",
        model_overrides=OVERRIDES,
        batch_size=64,
        workdir=str(tmp / "run"),
        progress=False,
        tensorboard=False,
        epochs=1,
        max_steps=2,
        init_from=str(init_file),
        export=str(tmp / "out.safetensors"),
    )
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = train_and_evaluate(cfg)
    return {"stdout": out.getvalue(), "result": result, "tmp": tmp}


def _scale_conv_output(monkeypatch):
    call = Conv2d.__call__
    monkeypatch.setattr(Conv2d, "__call__", lambda self, x: call(self, x) * 1.01)


def _transpose_square_kernels(monkeypatch):
    to_flax = rules._conv_to_flax

    def faulty(a):
        k = to_flax(a)  # (kh, kw, in, out): swap kh and kw where the kernel is square
        return np.swapaxes(k, 0, 1) if k.ndim == 4 and k.shape[0] == k.shape[1] > 1 else k

    monkeypatch.setattr(rules, "_conv_to_flax", faulty)


# (id, fault, extra arguments, exit status, in the output, checkpoint written)
FAULTS = [
    ("flax_layer_scaled", _scale_conv_output, [], 2, "parity gate failed", False),
    ("conversion_transposed", _transpose_square_kernels, [], 2, "parity gate failed", False),
    (
        "conversion_transposed_unchecked",
        _transpose_square_kernels,
        ["--no-parity-check"],
        0,
        "parity gate skipped (--no-parity-check)",
        True,
    ),
]


@pytest.mark.parametrize(
    "fault,extra,status,said,trained", [f[1:] for f in FAULTS], ids=[f[0] for f in FAULTS]
)
def test_gate_stops_an_injected_fault_before_the_first_step(
    init_file, tmp_path, monkeypatch, capsys, fault, extra, status, said, trained
):
    fault(monkeypatch)
    workdir = tmp_path / "run"
    try:
        rc = train_main([*TINY, "--init-from", str(init_file), "--workdir", str(workdir), *extra])
    finally:
        jax.clear_caches()  # no trace of the patched code outlives the test
    out = capsys.readouterr()
    assert rc == status, out
    assert said in out.out + out.err
    ckpts = workdir / "checkpoints"
    assert (ckpts.is_dir() and any(ckpts.iterdir())) == trained
    if status == 2:
        # The table of failures follows the one-line summary.
        assert "FAIL" in out.err and "training not started" in out.err
        assert "epoch 1/" not in out.out


def test_clean_init_from_passes_prints_its_line_and_trains(clean_run):
    line = next(s for s in clean_run["stdout"].splitlines() if s.startswith("parity gate"))
    assert line.startswith("parity gate passed (cbam_resnet <- twin.pt, 16 images, float32")
    for part in ("eval: output", "grad_input", "grad_param", "train: output", "buffer"):
        assert part in line
    assert clean_run["result"]["steps"] == 2
    assert any((clean_run["tmp"] / "run" / "checkpoints").iterdir())


def _copy(clean_run, tmp_path):
    src = clean_run["tmp"] / "out.safetensors"
    dst = tmp_path / "out.safetensors"
    shutil.copy(src, dst)
    shutil.copy(src.with_name(src.name + ".json"), dst.with_name(dst.name + ".json"))
    return dst


def _unchanged(path):
    return None


def _one_weight_changed(path):
    sd = load_weights(path)
    key = sorted(k for k in sd if k.endswith("weight"))[0]
    sd[key] = sd[key] + np.float32(1e-3)
    save_weights(sd, path)


def _certificate_removed(path):
    side = path.with_name(path.name + ".json")
    meta = json.loads(side.read_text())
    del meta["certificate"]
    side.write_text(json.dumps(meta))


# (id, what happens to the export, exit status, in the message)
VERIFY = [
    ("clean", _unchanged, 0, "verified: out.safetensors"),
    ("weights_changed", _one_weight_changed, 1, "the file changed after export"),
    ("no_certificate", _certificate_removed, 2, "holds no certificate"),
]


@pytest.mark.parametrize("change,status,said", [v[1:] for v in VERIFY], ids=[v[0] for v in VERIFY])
def test_verify_rechecks_the_certificate_in_pytorch(
    clean_run, tmp_path, capsys, change, status, said
):
    path = _copy(clean_run, tmp_path)
    cert = json.loads(path.with_name(path.name + ".json").read_text())["certificate"]
    assert cert["passed"] and cert["weights_sha256"] == sha256(path)
    assert set(cert["max_errors"]) == {"eval", "train"}
    assert cert["batch"]["shape"] == [16, 8, 8, 1] and cert["batch"]["dataset"] == "digits"
    assert set(cert["versions"]) == {"torch", "jax", "flaxattn"}
    change(path)
    rc = verify_main([str(path)])
    out = capsys.readouterr()
    assert rc == status, out
    assert said in out.out + out.err
    if status == 1:  # names both hashes
        assert sha256(path) in out.err and cert["weights_sha256"] in out.err


def test_a_failed_certificate_still_writes_the_weights_and_says_so(tmp_path, monkeypatch, capsys):
    """A fault after training (the Flax model computes 1% more from export on): the
    weights and a certificate with ``passed: false`` are written, the run exits 1
    (CertificateError) and ``train.verify`` refuses the file. A one-block ViT without
    BatchNorm: the certificate compiles one Flax side (eval mode) instead of two."""
    host_model = train_loop._host_model

    def faulty_host_model(run, state):
        model = host_model(run, state)
        call = type(model).__call__
        monkeypatch.setattr(type(model), "__call__", lambda self, x: call(self, x) * 1.01)
        return model

    monkeypatch.setattr(train_loop, "_host_model", faulty_host_model)
    path = tmp_path / "w.safetensors"
    try:
        rc = train_main([*VIT_1, "--workdir", str(tmp_path / "run"), "--export", str(path)])
    finally:
        jax.clear_caches()  # no trace of the patched code outlives the test
    out = capsys.readouterr()
    assert rc == 1, out
    assert "does not compute in PyTorch what the trained model computes" in out.err
    assert "written with a failed certificate" in out.err and "FAIL" in out.err
    assert "done:" not in out.out
    cert = json.loads(path.with_name(path.name + ".json").read_text())["certificate"]
    assert cert["passed"] is False and "FAIL" in cert["failures"]
    assert cert["weights_sha256"] == sha256(path)
    assert cert["max_errors"]["eval"]["output"] > cert["tolerances"]["rtol"]
    assert len(load_weights(path)) > 0
    assert verify_main([str(path)]) == 1
    assert "the certificate records a failed check" in capsys.readouterr().err


def test_without_torch_the_gate_is_skipped_with_a_notice(init_file, monkeypatch):
    monkeypatch.setattr("train.gate.torch_available", lambda: False)
    spec, data = get_model("cbam_resnet"), load_dataset("digits")
    model = build_flax(spec, data.info, OVERRIDES, rngs=nnx.Rngs(0))
    line = parity_gate(spec, data.info, OVERRIDES, model, init_file, np.zeros((2, 8, 8, 1)))
    assert line.startswith("parity gate skipped: torch is not installed")


# (model, overrides, compute dtype, start from the twin's weights): dropout models (no
# BatchNorm: eval mode only) and bfloat16 runs (checked on a float32-compute copy). The
# BatchNorm model's train-mode check is in the gate tests above (cbam_resnet).
VIT_SMALL = {"depth": 1, "dim": 32, "mlp_dim": 32}
RUNS = [
    ("vit_tiny", {"depth": 1}, "float32", None),
    ("vit_tiny", VIT_SMALL, "bfloat16", "vit_init_file"),
]


@pytest.fixture(scope="module")
def vit_init_file(tmp_path_factory):
    """The small vit_tiny twin's weights (the bfloat16 run starts from them)."""
    torch.manual_seed(0)
    twin = build_torch(get_model("vit_tiny"), load_dataset("digits").info, VIT_SMALL)
    path = tmp_path_factory.mktemp("vit_init") / "vit.pt"
    torch.save(twin.state_dict(), path)
    return path


@pytest.mark.parametrize(
    "model,overrides,dtype,from_twin", RUNS, ids=[f"{r[0]}-{r[2]}" for r in RUNS]
)
def test_export_certificate_verifies(request, tmp_path, capsys, model, overrides, dtype, from_twin):
    cfg = TrainConfig(
        model=model,
        dataset="digits",
        model_overrides=overrides,
        batch_size=32,
        workdir=str(tmp_path / "run"),
        progress=False,
        tensorboard=False,
        epochs=1,
        max_steps=1,
        dtype=dtype,
        init_from=str(request.getfixturevalue(from_twin)) if from_twin else None,
        export=str(tmp_path / "w.npz"),
    )
    train_and_evaluate(cfg)
    said = capsys.readouterr().out
    assert ("parity gate passed" in said) == bool(from_twin)
    cert = json.loads((tmp_path / "w.npz.json").read_text())["certificate"]
    assert cert["passed"]
    assert set(cert["max_errors"]) == ({"eval", "train"} if model == "cbam_resnet" else {"eval"})
    assert verify_main([str(tmp_path / "w.npz")]) == 0


@pytest.mark.parametrize("suffix", [".safetensors", ".npz", ".pt"])
def test_scalars_keep_their_shape_in_weight_files(tmp_path, suffix):
    # A BatchNorm's num_batches_tracked is 0-d: a Flax export must load back (--init-from).
    path = save_weights({"n": np.array(3, np.int64), "w": np.ones((2, 3))}, tmp_path / f"w{suffix}")
    assert {k: v.shape for k, v in load_weights(path).items()} == {"n": (), "w": (2, 3)}


VIT_LAYOUTS = [
    "canonical",
    "vit-pytorch 0.3-0.6",
    "vit-pytorch 0.7-0.9",
    "vit-pytorch 1.4-1.16.0",
    "vit-pytorch 1.16.1+",
]


@pytest.mark.parametrize("layout", VIT_LAYOUTS)
def test_upstream_layouts_go_through_the_same_gate(tmp_path, layout):
    """A vit-pytorch release's keys: the Flax side recognises the layout, the twin gets
    the file re-keyed to ours, gradients are compared under the twin's names."""
    spec, data, overrides = get_model("vit_tiny"), load_dataset("digits"), {"depth": 1}
    torch.manual_seed(0)
    source = build_flax(spec, data.info, overrides, rngs=nnx.Rngs(0))
    load_state_dict(source, build_torch(spec, data.info, overrides).state_dict())
    path = save_weights(to_torch_state_dict(source, layout=layout), tmp_path / "up.safetensors")
    model = build_flax(spec, data.info, overrides, rngs=nnx.Rngs(1))
    load_state_dict(model, load_weights(path))
    assert torch_layout(model) == layout
    x = batch_images(data.train, range(8), data)
    line = parity_gate(spec, data.info, overrides, model, path, x)
    assert line.startswith("parity gate passed (vit_tiny <- up.safetensors")
    assert (f"({layout} layout)" in line) == (layout != "canonical")


def test_an_xla_without_the_quick_compile_options_uses_its_defaults(tmp_path, monkeypatch):
    """QUICK_COMPILE names XLA debug options; an XLA that dropped one must not break the
    gate (it compiles with the defaults instead)."""
    monkeypatch.setattr("train.gate.QUICK_COMPILE", {"xla_no_such_option_for_this_test": True})
    spec, data, overrides = get_model("vit_tiny"), load_dataset("digits"), {"depth": 1}
    torch.manual_seed(0)
    path = tmp_path / "twin.pt"
    torch.save(build_torch(spec, data.info, overrides).state_dict(), path)
    model = build_flax(spec, data.info, overrides, rngs=nnx.Rngs(1))
    load_state_dict(model, load_weights(path))
    x = batch_images(data.train, range(8), data)
    assert parity_gate(spec, data.info, overrides, model, path, x).startswith("parity gate passed")
