"""A careless user at the command line: every mistake ends in one line that names the
argument and the value, exit status 2, no traceback, and nothing already written lost."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _npz(tmp, **arrays):
    path = tmp / "data.npz"
    np.savez(path, **arrays)
    return str(path)


def _folder_without_images(tmp):
    (tmp / "imgs" / "cat").mkdir(parents=True)
    (tmp / "imgs" / "cat" / "notes.txt").write_text("no images here")
    return str(tmp / "imgs")


def _run_with_checkpoints(tmp):
    """A workdir that holds another run's checkpoint (what matters is that it is kept)."""
    work = tmp / "work"
    (work / "checkpoints" / "5").mkdir(parents=True)
    (work / "checkpoints" / "5" / "state").write_bytes(b"weights of another run")
    (work / "metrics.jsonl").write_text('{"kind": "train", "step": 5}\n')
    return str(work)


rng = np.random.default_rng(0)
X = rng.integers(0, 255, (20, 8, 8), np.uint8)

# (id, arguments (a callable gets tmp_path), what the one line must contain)
CASES = [
    ("lr-nan", ["--lr", "nan"], "`lr` (=nan) must be a finite number"),
    ("lr-inf", ["--lr", "inf"], "`lr` (=inf) must be a finite number"),
    ("lr-negative", ["--lr", "-1"], "`lr` (=-1.0) must be positive"),
    ("batch-zero", ["--batch-size", "0"], "`batch_size` (=0) must be positive"),
    ("workers-negative", ["--workers", "-1"], "`workers` (=-1) must be >= 0"),
    ("mesh-size", ["--mesh", "data=3"], "data=3 x fsdp=1 = 3 must equal the 1 devices"),
    ("mesh-axis", ["--mesh", "model=2"], "`--mesh` (='model=2')"),
    ("set-unknown", ["--set", "nosuch=3"], "has no argument 'nosuch'; its arguments are ["),
    ("set-type", ["--set", "dim=abc"], "`dim` (='abc') must be an int, got str"),
    ("set-syntax", ["--set", "depth"], "--set expects key=value, got 'depth'"),
    ("processes-missing", ["--num-processes", "2"], "missing ['--coordinator-address'"),
    ("export-suffix", lambda t: ["--export", str(t / "w.txt")], "must end in one of"),
    (
        "export-folder",
        lambda t: ["--export", str(t / "missing" / "w.npz")],
        "does not exist",
    ),
    (
        "arrayrecord-empty",
        lambda t: ["--dataset", "arrayrecord", "--data-path", str(t)],
        "meta.json",
    ),
    (
        "folder-no-images",
        lambda t: ["--dataset", "folder", "--data-path", _folder_without_images(t)],
        "imgs",
    ),
    (
        "npz-label-range",
        lambda t: ["--dataset", "npz", "--data-path", _npz(t, x=X, y=np.full(20, -3))],
        "-3",
    ),
    (
        "npz-lengths",
        lambda t: ["--dataset", "npz", "--data-path", _npz(t, x=X, y=np.arange(19) % 2)],
        "19",
    ),
    (
        "workdir-of-another-run",
        lambda t: ["--workdir", _run_with_checkpoints(t)],
        "holds another run's checkpoints; pass --resume",
    ),
]


@pytest.mark.parametrize("args, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_train_cli_mistakes(tmp_path, args, message):
    if callable(args):
        args = args(tmp_path)
    if "--workdir" not in args:
        args = [*args, "--workdir", str(tmp_path / "run")]
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    proc = subprocess.run(
        [sys.executable, "-m", "train", "--no-progress", "--max-steps", "1", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        timeout=300,
    )
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, err[-3000:])
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 or lines[0].startswith("usage:"), err
    assert message in lines[-1], err
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert {p: b for p, b in after.items() if p in before} == before, "a file was changed"
    assert set(before) <= set(after), "a file was lost"
