"""flaxattn.host_memory: with freed memory kept, a jitted step stops paging its
temporary buffer in at every call; without it, it pages all of it in again."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="glibc's malloc only",
)

# A step whose compiled temp buffer is 64 MiB (the exp() of a 4096 x 4096 input feeds a
# transposed dot), above glibc's largest mmap threshold (32 MiB), so by default it is
# mapped and unmapped at every call. Prints the temp size and the minor page faults of
# each of 20 calls.
_PROBE = """
import json, resource, sys
retain = sys.argv[1] == "retain"
if retain:
    from flaxattn.host_memory import retain_freed_memory
    assert retain_freed_memory()
import jax, jax.numpy as jnp
x = jnp.ones((4096, 4096), jnp.float32)
step = jax.jit(lambda x: (jnp.exp(x).T @ x[:, :8]).sum()).lower(x).compile()
faults = []
for _ in range(20):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"temp": step.memory_analysis().temp_size_in_bytes, "faults": faults}))
"""


def _probe(mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_retained_memory_is_not_paged_in_again():
    pages = 64 * 2**20 // 4096
    default, retained = _probe("default"), _probe("retain")
    assert default["temp"] >= 64 * 2**20 and retained["temp"] == default["temp"]
    # Default malloc: every call pages the whole temp buffer in (16,384 pages).
    assert min(default["faults"][1:]) >= 0.9 * pages, default
    # Kept: most calls reuse the pages of earlier ones. Some still page a buffer in
    # while the heap settles (a small allocation can take part of a freed block, and
    # the next step's buffer then no longer fits in it); on this machine at most 7 of
    # the 19 calls after the first did.
    assert sum(retained["faults"][1:]) < 0.5 * sum(default["faults"][1:]), retained


def test_does_nothing_without_glibc(monkeypatch):
    from flaxattn import host_memory

    monkeypatch.setattr(host_memory.platform, "libc_ver", lambda: ("", ""))
    assert host_memory.retain_freed_memory() is False
