"""The training loop: exact resume after a kill, data parallelism, faults, PyTorch in and out.

Runs that must be compared bit for bit run in subprocesses with the same
environment (the suite itself enables 64-bit JAX, which changes default dtypes).
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import torch

from train.checkpoint import Checkpointer, CheckpointError
from train.config import TrainConfig
from train.data import Augment, TrainPipeline, eval_batches, load_dataset
from train.export import load_torch_twin
from train.loop import CRASH_ENV, NonFiniteLossError, WorkdirError, train_and_evaluate

pytestmark = pytest.mark.slow  # whole training runs: scheduled first (conftest.py)
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
    "--no-parity-check",  # the gate and the certificate have their own tests (test_gate.py)
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
        parity_check=False,  # tested in test_gate.py
    )
    return TrainConfig(**{**base, **kw})


def _assert_same_weights(a_path, b_path, rtol=0.0, atol=0.0):
    a, b = np.load(a_path), np.load(b_path)
    assert sorted(a.files) == sorted(b.files)
    for k in a.files:
        if rtol == atol == 0.0:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        else:
            np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=atol, err_msg=k)


def test_killed_and_preempted_runs_resume_to_the_same_weights(tmp_path):
    """A kill -9 (no cleanup) and a SIGTERM (checkpoint at the step boundary, exit 0),
    with grain worker processes, both resume bit for bit: same batches, augmentation,
    RNG, optimizer state and schedule as the uninterrupted run."""
    common = ["--epochs", "1", "--max-steps", "12", "--checkpoint-every", "5"]
    _train(*common, "--workdir", str(tmp_path / "a"), "--export", str(tmp_path / "a.npz"))

    crashed = _train(*common, "--workdir", str(tmp_path / "b"), env={CRASH_ENV: "8"}, check=False)
    assert crashed.returncode == 86, crashed.stderr  # killed after step 8, mid-epoch
    assert Checkpointer(tmp_path / "b" / "checkpoints").latest_step() == 5
    resumed = _train(
        *common, "--workdir", str(tmp_path / "b"), "--resume", "--export", str(tmp_path / "b.npz")
    )
    assert "resumed from step 5" in resumed.stdout
    _assert_same_weights(tmp_path / "a.npz", tmp_path / "b.npz")

    # SIGTERM once training has started: the run checkpoints the step it is at.
    workdir = tmp_path / "c"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "train",
            *TINY,
            *common,
            "--workers",
            "2",
            "--log-every",
            "1",
            "--workdir",
            str(workdir),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    deadline = time.monotonic() + 300
    while not (workdir / "metrics.jsonl").exists() and proc.poll() is None:
        assert time.monotonic() < deadline, "no training step within 300 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    m = re.search(r"stopped by SIGTERM at step (\d+): checkpoint written", out)
    assert m, out + err
    assert "Traceback" not in err
    stopped = int(m.group(1))
    assert 1 <= stopped < 12
    assert Checkpointer(workdir / "checkpoints").latest_step() == stopped
    resumed = _train(
        *common,
        "--workers",
        "2",
        "--workdir",
        str(workdir),
        "--resume",
        "--export",
        str(tmp_path / "c.npz"),
    )
    assert f"resumed from step {stopped}" in resumed.stdout
    _assert_same_weights(tmp_path / "a.npz", tmp_path / "c.npz")

    # Re-running the finished command: complete, nothing trained, still exports.
    again = _train(
        *common, "--workdir", str(workdir), "--resume", "--export", str(tmp_path / "d.npz")
    )
    assert "is complete at step 12" in again.stdout
    _assert_same_weights(tmp_path / "a.npz", tmp_path / "d.npz")


def test_sharded_runs_match_single_device(tmp_path):
    """4 forced host devices: data parallelism and FSDP (data=2, fsdp=2) train to the
    weights of one device; under FSDP each device holds 1/2 of every large array."""
    code = f"""
import json, numpy as np, jax
from train.config import TrainConfig
from train.loop import build_run, create_state, train_and_evaluate
from train.parallel import FSDP_MIN_SIZE
assert jax.device_count() == 4, jax.devices()
out = {{}}
for name, mesh, n in (("fsdp", "data=2,fsdp=2", None), ("data", None, None), ("one", None, 1)):
    cfg = TrainConfig(model="cbam_resnet", dataset="digits",
                      model_overrides={{"planes": (8, 16, 32)}}, batch_size=64, epochs=1,
                      max_steps=5, warmup_steps=0, progress=False, mesh=mesh, parity_check=False,
                      workdir=r"{tmp_path}/" + name, export=r"{tmp_path}/" + name + ".npz")
    r = train_and_evaluate(cfg, devices=n)
    out[name] = {{"eval_loss": r["eval_loss"], "devices": r["devices"]}}
run = build_run(TrainConfig(model="cbam_resnet", dataset="digits", mesh="data=2,fsdp=2",
                            model_overrides={{"planes": (8, 16, 32)}}, batch_size=64,
                            workdir=r"{tmp_path}/shards", progress=False))
state = create_state(run)
fractions = {{}}
for leaf in jax.tree.leaves((state.params, state.opt_state)):
    if leaf.size >= FSDP_MIN_SIZE:
        fractions.setdefault(str(leaf.shape), set()).update(
            s.data.size / leaf.size for s in leaf.addressable_shards)
out["fractions"] = {{k: sorted(v) for k, v in fractions.items()}}
print(json.dumps(out))
"""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [out[k]["devices"] for k in ("fsdp", "data", "one")] == [4, 4, 1]
    # Every large parameter and optimizer moment is split in two over `fsdp`.
    assert out["fractions"] and all(v == [0.5] for v in out["fractions"].values()), out
    # float32; only the order of the batch reductions differs between layouts. atol is
    # 1% of one AdamW step at lr 1e-3 (its normalised update magnifies the round-off of
    # near-zero gradients).
    for name in ("fsdp", "data"):
        np.testing.assert_allclose(out[name]["eval_loss"], out["one"]["eval_loss"], rtol=1e-5)
        _assert_same_weights(tmp_path / f"{name}.npz", tmp_path / "one.npz", rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "overrides, message",
    [
        # The loss itself overflows.
        (dict(lr=1e12), r"non-finite|diverged"),
        # A finite loss whose update overflows the weights: named as divergence.
        (dict(lr=1e30, clip_norm=1.0), r"diverged at step \d+: the loss \(\S+\) is finite"),
    ],
)
def test_non_finite_training_stops_and_keeps_last_good_checkpoint(tmp_path, overrides, message):
    cfg = _tiny_config(
        tmp_path,
        **{
            **dict(
                optimizer="sgd",
                clip_norm=None,
                momentum=0.0,
                warmup_steps=0,
                epochs=3,
                checkpoint_every=1,
                log_every=1,
            ),
            **overrides,
        },
    )
    with pytest.raises(NonFiniteLossError, match=message) as err:
        train_and_evaluate(cfg)
    found = re.search(r"at step (\d+).*last good checkpoint is step (\d+)", str(err.value))
    bad, good = map(int, found.groups())
    assert good == bad - 1
    ck = Checkpointer(tmp_path / "run" / "checkpoints")
    assert ck.latest_step() == good
    if good:  # what is called good holds finite weights
        import orbax.checkpoint as ocp

        saved = ck.manager.restore(good, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
        for leaf in jax.tree.leaves(saved["state"]):
            assert np.all(np.isfinite(np.asarray(leaf))), "a non-finite array was checkpointed"


def test_mismatched_and_damaged_checkpoints(tmp_path):
    cfg = _tiny_config(tmp_path, epochs=1, max_steps=6, checkpoint_every=2)
    train_and_evaluate(cfg)
    # Another configuration: refused, naming what differs (no fallback: not damage).
    other = cfg.replace(model_overrides={"planes": (4, 8, 32)}, resume=True)
    with pytest.raises(CheckpointError) as err:
        train_and_evaluate(other)
    msg = str(err.value)
    assert "config model_overrides" in msg and "this run" in msg
    assert "checkpoint [3, 16]" in msg or "blocks" in msg  # names the arrays that differ
    # One flipped byte in the newest checkpoint: refused naming the file, and the
    # run falls back to the newest intact checkpoint.
    ck_dir = tmp_path / "run" / "checkpoints"
    victim = max(
        (p for p in (ck_dir / "6").rglob("*") if p.is_file() and p.name != "integrity.json"),
        key=lambda p: p.stat().st_size,
    )
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    victim.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match=rf"step 6 is damaged: {re.escape(str(victim))}"):
        r = train_and_evaluate(cfg.replace(resume=True, max_steps=8))
    assert r["steps"] == 8
    meta = Checkpointer(ck_dir).read_meta(8)
    assert meta["step"] == 8
    # Every checkpoint damaged: an error naming each, nothing restored.
    for step in Checkpointer(ck_dir).all_steps():
        for p in (ck_dir / str(step)).rglob("*"):
            if p.is_file() and p.name != "integrity.json" and p.stat().st_size > 64:
                p.write_bytes(b"\0" * 16)
    with pytest.raises(CheckpointError, match="no intact checkpoint"):
        train_and_evaluate(cfg.replace(resume=True, max_steps=10))


def test_workdir_of_another_run_is_not_touched(tmp_path):
    cfg = _tiny_config(tmp_path, epochs=1, max_steps=2, checkpoint_every=2)
    train_and_evaluate(cfg)
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*") if p.is_file()}
    with pytest.raises(WorkdirError, match="holds another run's checkpoints; pass --resume"):
        train_and_evaluate(cfg)
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert before == after
    r = train_and_evaluate(cfg.replace(overwrite=True, max_steps=1))
    assert r["steps"] == 1


def test_logs_tensorboard_and_curves(tmp_path):
    from tensorboardX.proto import event_pb2

    cfg = _tiny_config(tmp_path, epochs=1, max_steps=6, log_every=2)
    train_and_evaluate(cfg)
    events = list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1
    scalars: dict[str, list] = {}
    raw = events[0].read_bytes()
    pos = 0
    while pos < len(raw):  # TFRecord: u64 length, u32 crc, payload, u32 crc
        (n,) = np.frombuffer(raw[pos : pos + 8], "<u8")
        event = event_pb2.Event.FromString(raw[pos + 12 : pos + 12 + int(n)])
        pos += 16 + int(n)
        for v in event.summary.value:
            scalars.setdefault(v.tag, []).append((event.step, v.simple_value))
    assert {
        "train/loss",
        "train/accuracy",
        "train/learning_rate",
        "train/images_per_sec",
        "train/grad_norm",
        "eval/loss",
        "eval/accuracy",
    } <= set(scalars)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    logged = {r["step"]: r["loss"] for r in records if r["kind"] == "train"}
    assert [s for s, _ in scalars["train/loss"]] == sorted(logged) == [2, 4, 6]
    for step, value in scalars["train/loss"]:
        assert value == pytest.approx(logged[step], rel=1e-6)
    png = (tmp_path / "run" / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000


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
    pipeline = TrainPipeline(data, batch_size=64, seed=1, augment=Augment(), epochs=2)
    twin.train()
    for x, y in pipeline.iterator():  # two brief epochs in PyTorch, BatchNorm statistics included
        loss = torch.nn.functional.cross_entropy(
            twin(torch.from_numpy(x).permute(0, 3, 1, 2)), torch.from_numpy(y).long()
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.save(twin.state_dict(), tmp_path / "torch.pt")

    def torch_predict(model):
        model.eval()
        preds = []
        with torch.no_grad():
            for x, _, mask in eval_batches(data, batch_size=64):
                logits = model(torch.from_numpy(x).permute(0, 3, 1, 2))
                preds.append(logits.argmax(-1).numpy()[mask > 0])
        return np.concatenate(preds)

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
    # The valid names are the model's own hyperparameters, not the framework's.
    assert "'planes'" in proc.stderr and "'rngs'" not in proc.stderr
