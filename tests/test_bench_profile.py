"""`python -m bench.profile` runs end to end and prints both sides' tables (figures come
from running it on the real cases; see NOTES-prof.md)."""

import math
import re
from pathlib import Path

import pytest

from bench.profile import _self_times, main, torch_is_matmul

TOTALS = re.compile(
    r"totals per step: matmul/conv ([\d.]+) ms, other ([\d.]+) ms, total ([\d.]+) ms"
)


def _rows(block: str) -> list[str]:
    lines = block.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("ms/step")) + 1
    return [line for line in lines[start:] if not line.lstrip().startswith("totals")]


def test_profile_prints_both_tables(capsys):
    argv = ["channel/se", "--steps", "2", "--top", "5", "--warmup", "1", "--by-line"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    head, jax_block, line_block, torch_block = out.strip().split("\n\n")
    assert head.startswith("channel/se:") and "load average" in head
    assert jax_block.startswith("JAX jit") and torch_block.startswith("torch ")
    assert "by source line" in line_block
    # summed per line, the JAX totals are the same
    assert TOTALS.findall(jax_block) == TOTALS.findall(line_block)
    for block in (jax_block, line_block, torch_block):
        assert len(_rows(block)) == 5, block
        (totals,) = TOTALS.findall(block)
        mm, other, total = map(float, totals)
        assert all(math.isfinite(v) for v in (mm, other, total)) and total > 0, totals
        # the SE layer's two Linears are matmuls on both sides
        assert mm > 0 and other > 0 and abs(mm + other - total) < 0.002, totals
    # The JAX rows name the source line that produced each instruction, in the module.
    sources = [row.split()[-1] for row in _rows(jax_block)]
    assert any(re.fullmatch(r"flaxattn/layers/se\.py:\d+", s) for s in sources), jax_block
    assert "aten::" in torch_block


@pytest.mark.parametrize(
    "name, matmul",
    [
        ("aten::mm", True),
        ("aten::addmm", True),
        ("aten::bmm", True),
        ("aten::linear", True),
        ("aten::mkldnn_convolution", True),
        ("aten::convolution_backward", True),
        ("MmBackward0", True),
        ("ConvolutionBackward0", True),
        ("aten::mul", False),
        ("aten::sum", False),
        ("aten::copy_", False),
        ("MulBackward0", False),
        ("Optimizer.step#AdamW.step", False),
    ],
)
def test_torch_matmul_split(name, matmul):
    assert torch_is_matmul(name) is matmul


@pytest.mark.parametrize(
    "events, expected",
    [
        # nested on one thread: the outer event keeps only its own time
        (
            [("a", 0, 10, 1), ("b", 2, 3, 1), ("c", 6, 2, 1)],
            {"a": (5.0, 1), "b": (3.0, 1), "c": (2.0, 1)},
        ),
        # the same span on two threads is not nesting
        ([("a", 0, 10, 1), ("b", 2, 3, 2)], {"a": (10.0, 1), "b": (3.0, 1)}),
        # repeated names add up
        ([("a", 0, 1, 1), ("a", 5, 2, 1)], {"a": (3.0, 2)}),
    ],
)
def test_self_times(events, expected):
    evs = [{"name": n, "ts": ts, "dur": dur, "tid": tid} for n, ts, dur, tid in events]
    assert _self_times(evs) == expected


@pytest.mark.parametrize(
    "argv, message",
    [
        (["no/such"], "unknown case 'no/such'"),
        (["channel/se", "--steps", "0"], "--steps (=0) must be at least 1"),
        (["channel/se", "--warmup", "-1"], "--warmup (=-1) must be at least 0"),
    ],
)
def test_profile_argument_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


# tests/data/profile_step.hlo: a compiled module as jax 0.10.2 prints it, with stack frames
# instead of source lines ({repo} stands for this repository). Frame 4 (linear.py:422) has
# parent_frame_id=4, i.e. frame 3 (se.py:62), then frame 2 (the loss in train/step.py), then
# frame 1 (the caller's script), whose parent_frame_id=1 ends the chain.
_HLO = (Path(__file__).parent / "data" / "profile_step.hlo").read_text()


@pytest.mark.parametrize(
    "name, kind, matmul, source, shape",
    [
        ("ynn_fusion.4", "ynn:dot", True, "flaxattn/layers/se.py:62 < linear.py:422", "f32[4,4]"),
        ("broadcast_multiply_fusion", "loop:multiply", False, "flaxattn/layers/se.py:63", ""),
        ("copy.1", "copy", False, "train/step.py:62", "f32[64,4]"),
        ("dot.2", "dot", True, "", "f32[64,4]"),  # no metadata: no source
        ("tuple", "tuple", False, "", "(f32[4,4], f32[4,8,8,64])"),
    ],
)
def test_parse_hlo(name, kind, matmul, source, shape):
    from bench.profile import REPO, parse_hlo

    module, ops = parse_hlo(_HLO.replace("{repo}", str(REPO)))
    assert module == "jit_step4"
    op = ops[name]
    assert (op.kind, op.matmul, op.source) == (kind, matmul, source)
    assert shape == "" or op.shape == shape


def test_parse_hlo_refuses_other_text():
    from bench.profile import parse_hlo

    with pytest.raises(ValueError, match="`text` is not an HLO module"):
        parse_hlo("module @jit_step {}")
