"""bench/gpu_check (issue 16) runs end to end on the CPU: tiny cases, files in --out.

The GPU run itself needs a GPU (``bash bench/gpu_check.sh`` in a ``device`` run);
here: the shell script parses, and both stages write their JSON and Markdown.
"""

import json
import pathlib
import subprocess

import jax
import pytest

from bench import gpu_check

SCRIPT = pathlib.Path(__file__).parent.parent / "bench" / "gpu_check.sh"


@pytest.fixture(autouse=True)
def _restore_precision():
    # main() sets jax_default_matmul_precision for the whole process, as the script wants.
    old = jax.config.jax_default_matmul_precision
    yield
    jax.config.update("jax_default_matmul_precision", old)


def test_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.mark.parametrize(
    "stage, case, expect",
    [
        ("parity", "vit/attention_impl_xla", {"status": "ok"}),
        ("bench", "tiny/cbam", {"impl": "-", "torch_device": "cpu"}),
    ],
)
def test_stage_writes_json_and_markdown(stage, case, expect, tmp_path):
    assert gpu_check.main([stage, "--dry-run", "--case", case, "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / f"gpu_check_{stage}.json").read_text())
    md = (tmp_path / f"gpu_check_{stage}.md").read_text()
    assert res["complete"] and res["precision"]["jax_default_matmul_precision"] == "highest"
    (row,) = res["rows"]
    assert row["case"] == case and expect.items() <= row.items()
    if stage == "bench":
        assert row["jax_ms"] > 0 and row["eager_ms"] > 0 and row["temp_mb"] >= 0
    assert f"| {case} |" in md and "(incomplete)" not in md
