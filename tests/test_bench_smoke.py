"""The benchmark harness runs end to end (tiny shapes; figures come from `python -m bench`)."""

import pytest

import torch_ref
from bench.harness import run_case, table
from bench.registry import BenchCase, load_all
from flaxattn.convert import from_torch


def test_harness_runs_and_prints_ratios():
    case = BenchCase("tiny/cbam", lambda: torch_ref.CBAM(16, 4), [(2, 16, 8, 8)], flops=True)
    results = run_case(case, iters=2, warmup=1, compile=False, threads=1)
    (r,) = results
    assert r.jax_ms > 0 and r.eager_ms > 0 and r.temp_mb >= 0 and r.gflops > 0
    out = table(results, peak_gflops=10.0, threads=1)
    assert "tiny/cbam" in out and "eager/jax" in out


@pytest.mark.parametrize("name", sorted(load_all()))
def test_every_case_builds(name):
    case = load_all()[name]
    tm = case.make_torch()
    fm = (case.make_flax or from_torch)(tm)
    assert fm is not None
    for make_variant in case.variants.values():
        assert make_variant(tm) is not None
