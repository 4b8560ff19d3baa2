"""Real multi-process training on this CPU: two ``python -m train`` processes on
localhost (jax.distributed, gloo collectives) against one process.

Each process feeds its half of every global batch; the step's reductions then run
over both halves, so the two runs differ only in the order of float32 sums.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from train.checkpoint import Checkpointer
from train.loop import CRASH_ENV

pytestmark = pytest.mark.slow  # real processes: scheduled first (conftest.py)

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--dataset",
    "digits",
    "--batch-size",
    "32",
    "--epochs",
    "1",
    "--max-steps",
    "6",
    "--checkpoint-every",
    "3",
    "--log-every",
    "3",
    "--no-progress",
]
# Weights after 6 AdamW steps: 1 vs 2 processes differ by float32 summation order;
# atol is 1% of one AdamW step at lr 1e-3 (Adam's normalised update magnifies the
# round-off of near-zero gradients).
RTOL, ATOL = 1e-4, 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The export certificate and the parity gate are checked once, on the dropout model below.
VIT_SHRUNK = {"depth": 1, "dim": 32, "mlp_dim": 32}
CBAM = ["--model", "cbam_resnet", "--set", "planes=(4,8,16)", "--no-parity-check"]


def _run(workdir, *args, processes=1, env=None, model=CBAM):
    """Start ``processes`` cooperating ``python -m train`` processes; wait for all."""
    base = [sys.executable, "-m", "train", *TINY, *model, "--workdir", str(workdir), *args]
    env = {**os.environ, **(env or {})}
    if processes == 1:
        cmds = [base]
    else:
        addr = f"127.0.0.1:{_free_port()}"
        cmds = [
            base
            + ["--coordinator-address", addr, "--num-processes", str(processes)]
            + ["--process-id", str(i)]
            for i in range(processes)
        ]
    procs = [
        subprocess.Popen(c, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for c in cmds
    ]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        outs.append((p.returncode, out.decode(), err.decode()))
    return outs


def _weights(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _assert_close(a, b, rtol=RTOL, atol=ATOL, exact=False):
    assert sorted(a) == sorted(b)
    for k in a:
        if exact:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        else:
            np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=atol, err_msg=k)


def test_two_processes_train_like_one(tmp_path):
    # One process: the reference.
    [(rc, out, err)] = _run(tmp_path / "one", "--export", str(tmp_path / "one.npz"))
    assert rc == 0, err
    one = _weights(tmp_path / "one.npz")

    # Two processes, uninterrupted.
    res = _run(tmp_path / "two", "--export", str(tmp_path / "two.npz"), processes=2)
    assert [r[0] for r in res] == [0, 0], [r[2][-2000:] for r in res]
    assert "done:" in res[0][1] and "2 processes" in res[0][1]
    # Only process 0 prints (gloo's own C++ connection notice aside).
    ours = [line for line in res[1][1].splitlines() if not line.startswith("[Gloo]")]
    assert ours == [], ours
    two = _weights(tmp_path / "two.npz")
    _assert_close(two, one)
    # One copy of every log: process 0 writes, process 1 does not.
    events = list((tmp_path / "two" / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert sum('"kind": "train"' in line for line in lines) == 2  # steps 3 and 6, once each
    assert sum('"kind": "final"' in line for line in lines) == 1

    # Both killed after step 4 (checkpoint at 3), restarted with --resume: the same
    # weights as the uninterrupted two-process run, bit for bit.
    res = _run(tmp_path / "killed", processes=2, env={CRASH_ENV: "4"})
    assert [r[0] for r in res] == [86, 86], [r[2][-2000:] for r in res]
    assert Checkpointer(tmp_path / "killed" / "checkpoints").latest_step() == 3
    import shutil

    shutil.copytree(tmp_path / "killed", tmp_path / "killed_one")
    res = _run(
        tmp_path / "killed", "--resume", "--export", str(tmp_path / "resumed.npz"), processes=2
    )
    assert [r[0] for r in res] == [0, 0], [r[2][-2000:] for r in res]
    assert "resumed from step 3" in res[0][1]
    _assert_close(_weights(tmp_path / "resumed.npz"), two, exact=True)

    # The two-process checkpoint resumed by one process: resharded, and the input
    # pipeline continues from the step (its per-process state does not apply).
    [(rc, out, err)] = _run(
        tmp_path / "killed_one", "--resume", "--export", str(tmp_path / "resumed_one.npz")
    )
    assert rc == 0, err
    assert "resumed from step 3" in out and "written by 2 process(es)" in out
    _assert_close(_weights(tmp_path / "resumed_one.npz"), one)


def test_two_processes_with_dropout_rng_state(tmp_path):
    """A model with dropout carries typed PRNG keys in its state: they too are placed on
    the two processes' devices, checkpointed and exported (vit_tiny, shrunk). It starts
    from its torch_ref twin's weights: both processes run the parity gate (a failure
    would stop either with exit 2), only process 0 prints its line."""
    import torch

    from train.data import load_dataset
    from train.models import build_torch, get_model

    torch.manual_seed(0)
    twin = build_torch(get_model("vit_tiny"), load_dataset("digits").info, VIT_SHRUNK)
    torch.save(twin.state_dict(), tmp_path / "init.pt")
    res = _run(
        tmp_path / "vit",
        *("--max-steps", "3", "--export", str(tmp_path / "vit.npz")),
        *("--init-from", str(tmp_path / "init.pt")),
        processes=2,
        model=["--model", "vit_tiny", *(f"--set={k}={v}" for k, v in VIT_SHRUNK.items())],
        env={"JAX_LOG_COMPILES": "1"},  # stderr shows what each process compiled
    )
    assert [r[0] for r in res] == [0, 0], [r[2][-2000:] for r in res]
    assert res[0][1].count("parity gate passed (vit_tiny <- init.pt") == 1
    assert "parity gate" not in res[1][1] + res[1][2]
    # Process 1 checked too: it compiled the gate's Flax side (flaxattn.parity._vjp_run).
    assert all("_vjp_run" in err for _, _, err in res), [r[2][-2000:] for r in res]
    assert "certificate: exported weights match in PyTorch" in res[0][1]
    assert len(_weights(tmp_path / "vit.npz")) > 0


def test_batch_must_split_over_processes(tmp_path):
    res = _run(tmp_path / "odd", "--batch-size", "33", processes=2)
    for rc, _, err in res:
        assert rc == 2, err
        assert "`batch_size` (=33) must be divisible" in err and "2 process(es)" in err
        assert "Traceback" not in err
