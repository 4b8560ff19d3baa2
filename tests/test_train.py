"""The training loop: exact resume after a kill, data parallelism, faults, PyTorch in and out.

Runs that must be compared bit for bit run in subprocesses with the same
environment (the suite itself enables 64-bit JAX, which changes default dtypes).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from train.checkpoint import Checkpointer, CheckpointError
from train.config import TrainConfig
from train.data import Loader, load_dataset
from train.export import load_torch_twin
from train.loop import NonFiniteLossError, train_and_evaluate

ROOT = Path(__file__).resolve().parents[1]
# A tiny CBAM ResNet on scikit-learn's 8x8 digits: a few seconds per run.
TINY = [
    "--model",
    "cbam_resnet",
    "--dataset",
    "digits",
    "--set",
    "planes=(4,8,16)",
    "--batch-size",
    "64",
    "--no-progress",
]


def _train(*args, env=None, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "train", *TINY, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def _tiny_config(tmp_path, **kw) -> TrainConfig:
    base = dict(
        model="cbam_resnet",
        dataset="digits",
        model_overrides={"planes": (4, 8, 16)},
        batch_size=64,
        workdir=str(tmp_path / "run"),
        progress=False,
        warmup_steps=2,
    )
    return TrainConfig(**{**base, **kw})


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    common = ["--epochs", "1", "--max-steps", "12", "--checkpoint-every", "5"]
    _train(*common, "--workdir", str(tmp_path / "a"), "--export", str(tmp_path / "a.npz"))
    crashed = _train(*common, "--workdir", str(tmp_path / "b"), "--crash-at-step", "8", check=False)
    assert crashed.returncode == 86, crashed.stderr  # killed after step 8, mid-epoch
    assert Checkpointer(tmp_path / "b" / "checkpoints").latest_step() == 5
    resumed = _train(
        *common, "--workdir", str(tmp_path / "b"), "--resume", "--export", str(tmp_path / "b.npz")
    )
    assert "resumed from step 5" in resumed.stdout
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    assert sorted(a.files) == sorted(b.files)
    for k in a.files:  # bit for bit: same batches, RNG, optimizer state and schedule
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_sharded_step_matches_single_device(tmp_path):
    code = f"""
import json, numpy as np, jax
from train.config import TrainConfig
from train.loop import train_and_evaluate
assert jax.device_count() == 4, jax.devices()
out = {{}}
for n in (4, 1):
    cfg = TrainConfig(model="cbam_resnet", dataset="digits",
                      model_overrides={{"planes": (4, 8, 16)}}, batch_size=64, epochs=1,
                      max_steps=5, warmup_steps=0, progress=False,
                      workdir=r"{tmp_path}/d%d" % n, export=r"{tmp_path}/d%d.npz" % n)
    r = train_and_evaluate(cfg, devices=n)
    out[n] = {{"eval_loss": r["eval_loss"], "devices": r["devices"]}}
print(json.dumps(out))
"""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["4"]["devices"] == 4 and out["1"]["devices"] == 1
    # float32; only the order of the batch reductions differs between 4 shards and 1.
    np.testing.assert_allclose(out["4"]["eval_loss"], out["1"]["eval_loss"], rtol=1e-5)
    a, b = np.load(tmp_path / "d4.npz"), np.load(tmp_path / "d1.npz")
    for k in a.files:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-6, err_msg=k)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = _tiny_config(
        tmp_path,
        optimizer="sgd",
        lr=1e12,
        clip_norm=None,
        momentum=0.0,
        warmup_steps=0,
        epochs=3,
        checkpoint_every=1,
        log_every=1,
    )
    with pytest.raises(
        NonFiniteLossError,
        match=r"non-finite .* at step (\d+).*last good "
        r"checkpoint is step (\d+)",
    ) as err:
        train_and_evaluate(cfg)
    import re

    bad, good = map(int, re.search(r"at step (\d+).*step (\d+) in", str(err.value)).groups())
    assert good == bad - 1
    ck = Checkpointer(tmp_path / "run" / "checkpoints")
    assert ck.latest_step() == good
    meta = ck.read_meta(good)
    assert meta["step"] == good


def test_mismatched_and_corrupt_checkpoints_are_refused(tmp_path):
    cfg = _tiny_config(tmp_path, epochs=1, max_steps=3, checkpoint_every=3)
    train_and_evaluate(cfg)
    other = cfg.replace(model_overrides={"planes": (4, 8, 32)}, resume=True)
    with pytest.raises(CheckpointError) as err:
        train_and_evaluate(other)
    msg = str(err.value)
    assert "config model_overrides" in msg and "this run" in msg
    assert "checkpoint [3, 16]" in msg or "blocks" in msg  # names the arrays that differ
    # A torn file: refused with the step and the reason, not half-loaded.
    step_dir = tmp_path / "run" / "checkpoints" / "3"
    victims = [
        p
        for p in step_dir.rglob("*")
        if p.is_file() and p.stat().st_size > 64 and "state" in str(p)
    ]
    assert victims
    for p in victims:
        p.write_bytes(b"\0" * 16)
    with pytest.raises(CheckpointError, match="checkpoint step 3 .* unreadable"):
        train_and_evaluate(cfg.replace(resume=True))


def test_unknown_names_list_the_valid_ones():
    proc = _train("--model", "resnet9000", check=False)
    assert proc.returncode == 2
    assert "`model` (='resnet9000') is not registered; valid models: [" in proc.stderr
    assert "cbam_resnet" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "train", "--dataset", "imagenet"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 2 and "valid datasets: ['mnist5k', 'digits'" in proc.stderr


def test_bad_config_values():
    with pytest.raises(ValueError, match=r"`batch_size` \(=0\) must be positive"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match=r"`optimizer` \(='lion'\)"):
        TrainConfig(optimizer="lion")
    with pytest.raises(ValueError, match=r"`label_smoothing` \(=1.5\)"):
        TrainConfig(label_smoothing=1.5)


def test_torch_weights_in_and_out(tmp_path):
    """Train a torch_ref model in PyTorch, continue in JAX, go back to PyTorch: the
    predictions on the held-out split agree at every hand-over."""
    import torch_ref

    data = load_dataset("digits")
    torch.manual_seed(0)
    twin = torch_ref.CBAMResNet(planes=(4, 8, 16), in_channels=1, num_classes=10)
    opt = torch.optim.Adam(twin.parameters(), lr=1e-2)
    loader = Loader(data, 64, train=True, seed=1)
    twin.train()
    for s in range(44):  # two brief epochs in PyTorch, BatchNorm statistics included
        x, y = loader.batch(*divmod(s, loader.steps_per_epoch()))
        loss = torch.nn.functional.cross_entropy(
            twin(torch.from_numpy(x).permute(0, 3, 1, 2)), torch.from_numpy(y).long()
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.save(twin.state_dict(), tmp_path / "torch.pt")

    def torch_predict(model):
        model.eval()
        x = torch.from_numpy(data.normalize(data.x_test)).permute(0, 3, 1, 2)
        with torch.no_grad():
            return model(x).argmax(-1).numpy()

    cfg = _tiny_config(tmp_path, epochs=0, init_from=str(tmp_path / "torch.pt"))
    start = train_and_evaluate(cfg)
    agree = np.mean(start["predictions"] == torch_predict(twin))
    assert agree == 1.0, agree
    assert start["eval_accuracy"] > 0.3  # it learned something in PyTorch

    tuned = train_and_evaluate(
        cfg.replace(
            epochs=1,
            max_steps=10,
            workdir=str(tmp_path / "ft"),
            export=str(tmp_path / "ft.safetensors"),
        )
    )
    back = load_torch_twin(tmp_path / "ft.safetensors")  # strict=True load into the twin
    assert np.mean(tuned["predictions"] == torch_predict(back)) == 1.0
    assert not np.array_equal(tuned["predictions"], start["predictions"])  # it did fine-tune


def test_loader_positions_are_reproducible():
    data = load_dataset("digits")
    from train.data import Augment

    a = Loader(data, 32, train=True, seed=3, augment=Augment(pad=2))
    b = Loader(data, 32, train=True, seed=3, augment=Augment(pad=2))
    whole = list(a.epoch(1))
    resumed = list(b.epoch(1, start=5))
    assert len(whole) == a.steps_per_epoch() == len(data.y_train) // 32
    for (x1, y1), (x2, y2) in zip(whole[5:], resumed, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    x0, _ = a.batch(0, 0)
    x1, _ = a.batch(1, 0)
    assert not np.array_equal(x0, x1)  # epochs reshuffle


def test_folder_npz_and_cifar_loaders(tmp_path):
    import pickle

    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 255, (12, 10, 3), np.uint8)).save(
                tmp_path / "imgs" / cls / f"{i}.png"
            )
    d = load_dataset("folder", path=str(tmp_path / "imgs"), image_size=8, test_fraction=0.2)
    assert d.classes == ["cat", "dog"] and d.x_train.shape[1:] == (8, 8, 3)
    assert len(d.y_train) + len(d.y_test) == 10 and len(d.y_test) == 2

    np.savez(tmp_path / "d.npz", x=rng.random((20, 6, 6)), y=np.arange(20) % 4)
    d = load_dataset("npz", path=str(tmp_path / "d.npz"))
    assert d.info.num_classes == 4 and d.x_train.dtype == np.uint8 and d.info.channels == 1

    (tmp_path / "cifar").mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(tmp_path / "cifar" / name, "wb") as f:
            pickle.dump(
                {b"data": rng.integers(0, 255, (4, 3072), np.uint8), b"labels": list(range(4))}, f
            )
    d = load_dataset("cifar10", path=str(tmp_path / "cifar"))
    assert d.x_train.shape == (20, 32, 32, 3) and d.x_test.shape == (4, 32, 32, 3)

    with pytest.raises(FileNotFoundError, match="CIFAR-10 python batches missing"):
        load_dataset("cifar10", path=str(tmp_path))
    with pytest.raises(ValueError, match="needs --data-path"):
        load_dataset("npz")


def test_bfloat16_compute_keeps_float32_params(tmp_path):
    import jax.numpy as jnp
    from flax import nnx

    r = train_and_evaluate(_tiny_config(tmp_path, dtype="bfloat16", epochs=1, max_steps=3))
    params = nnx.state(r["module"], nnx.Param)
    assert {v[...].dtype for _, v in nnx.to_flat_state(params)} == {jnp.dtype(jnp.float32)}
    assert np.isfinite(r["eval_loss"])


def test_cli_list_and_set():
    proc = subprocess.run(
        [sys.executable, "-m", "train", "--list"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0 and "cbam_resnet" in proc.stdout and "mnist5k" in proc.stdout
    proc = _train("--set", "no_such_arg=3", check=False)
    assert proc.returncode == 2 and "has no argument 'no_such_arg'" in proc.stderr
