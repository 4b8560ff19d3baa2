"""`flaxattn-parity` as a user runs it: exit 0 pass, 1 parity failure, 2 usage error."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SE = ["torch_ref.SELayer", "--kwargs", '{"channel": 16, "reduction": 4}']

# A senet.pytorch-style SELayer (from_torch has a builder for it) whose forward is wrong.
WRONG_SE = textwrap.dedent(
    """
    import torch.nn as nn

    class SELayer(nn.Module):
        def __init__(self, channel=16, reduction=4):
            super().__init__()
            self.avg_pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Sequential(
                nn.Linear(channel, channel // reduction, bias=False),
                nn.ReLU(inplace=True),
                nn.Linear(channel // reduction, channel, bias=False),
                nn.Sigmoid(),
            )

        def forward(self, x):
            b, c, _, _ = x.shape
            y = self.fc(self.avg_pool(x).view(b, c)).view(b, c, 1, 1)
            return x * y * 1.01  # the bug
    """
)

# (id, argv, exit code, text the one-line message must contain)
CASES = [
    ("pass", [*SE, "--shape", "2,16,5,5"], 0, "PASS"),
    ("parity-failure", ["wrong_se.SELayer", "--shape", "2,16,5,5"], 1, "FAIL"),
    ("no-dot", ["SELayer", "--shape", "1"], 2, "`module` (='SELayer') must be"),
    ("not-importable", ["nosuchpkg.X", "--shape", "1"], 2, "cannot import 'nosuchpkg'"),
    ("no-such-class", ["torch_ref:Nope", "--shape", "1"], 2, "has no attribute 'Nope'"),
    ("not-a-module", ["json.dumps", "--shape", "1"], 2, "`module` (='json.dumps') must name"),
    ("import-raises", ["broken_mod.X", "--shape", "1"], 2, "raised ZeroDivisionError"),
    ("bad-json", ["torch_ref.SELayer", "--kwargs", "{bad", "--shape", "1"], 2, "(='{bad')"),
    ("json-not-object", ["torch_ref.SELayer", "--kwargs", "[16]", "--shape", "1"], 2, "(='[16]')"),
    (
        "unknown-kwarg",
        ["torch_ref.SELayer", "--kwargs", '{"chanel": 16}', "--shape", "1"],
        2,
        "unexpected keyword argument 'chanel'",
    ),
    (
        "kwarg-value-refused",
        ["torch_ref.SELayer", "--kwargs", '{"channel": 0}', "--shape", "1"],
        2,
        "`channel` (=0) must be positive",
    ),
    (
        "kwarg-wrong-type",
        ["torch_ref.SELayer", "--kwargs", '{"channel": "16"}', "--shape", "1"],
        2,
        "`channel` (='16') must be an int",
    ),
    ("shape-not-ints", [*SE, "--shape", "2,x"], 2, "`--shape` (='2,x')"),
    ("shape-zero", [*SE, "--shape", "2,0,5"], 2, "`--shape` (='2,0,5') must be positive"),
    ("shape-mismatch", [*SE, "--shape", "2,3,5,5"], 2, "on --shape 2,3,5,5"),
    ("no-shape", SE, 2, "--shape"),
    ("steps-zero", [*SE, "--shape", "2,16,5,5", "--steps", "0"], 2, "`--steps` (='0')"),
    ("rtol-nan", [*SE, "--shape", "2,16,5,5", "--rtol", "nan"], 2, "`--rtol` (='nan')"),
    ("bad-dtype", [*SE, "--shape", "2,16,5,5", "--dtype", "float16"], 2, "'float16'"),
]


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("user")
    (d / "wrong_se.py").write_text(WRONG_SE)
    (d / "broken_mod.py").write_text("X = 1 / 0\n")
    return d


def _run(argv, user_dir):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(user_dir)])}
    return subprocess.run(
        [sys.executable, "-m", "flaxattn.parity", *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=user_dir,
        timeout=300,
    )


@pytest.mark.parametrize("argv, code, text", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_exit_code_and_message(user_dir, argv, code, text):
    r = _run(argv, user_dir)
    assert r.returncode == code, r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    if code == 2:
        assert r.stdout == ""
        assert r.stderr.count("\n") == 1, r.stderr  # one line
        assert r.stderr.startswith("flaxattn-parity: error: ")
        assert text in r.stderr
    else:
        assert r.stdout.rstrip().endswith(text)


def test_debug_shows_the_traceback(user_dir):
    r = _run(["nosuchpkg.X", "--shape", "1", "--debug"], user_dir)
    assert r.returncode == 2
    assert "Traceback" in r.stderr and "ModuleNotFoundError" in r.stderr
    assert r.stderr.rstrip().splitlines()[-1].startswith("flaxattn-parity: error: ")
