"""Every registered case, in float64 (tight) and float32 (realistic), in each of its modes."""

import zlib

import pytest
import torch

from flaxattn.parity import check_parity
from parity_tests.registry import load_all

CASES = load_all()


def _params():
    for case in CASES.values():
        for dtype in case.dtypes:
            for mode in case.modes:
                marks = [pytest.mark.slow] if case.slow else []
                yield pytest.param(case, dtype, mode, id=f"{case.name}-{dtype}-{mode}", marks=marks)


@pytest.mark.parametrize("case,dtype,mode", list(_params()))
def test_parity(case, dtype, mode):
    # Weights must not depend on which tests ran before.
    torch.manual_seed(zlib.crc32(case.name.encode()))
    torch_module = case.make_torch()
    flax_module = case.make_flax(torch_module) if case.make_flax else None
    report = check_parity(
        torch_module,
        flax_module,
        input_shapes=case.shapes,
        make_inputs=case.make_inputs,
        layouts=case.layouts,
        out_layouts=case.out_layouts,
        dtype=dtype,
        mode=mode,
        steps=case.train_steps if mode == "train" else 1,
        zero_grad_ok=case.zero_grad_ok,
        perturb=0.1,
        name=case.name,
        **case.tol.get(dtype, {}),
    )
    report.assert_ok()
    kinds = {r.kind for r in report.rows}
    assert {"output", "grad_param"} <= kinds or "grad_input" in kinds
    if mode == "train":
        assert any(r.kind == "buffer" for r in report.rows) or not _has_buffers(torch_module)


def _has_buffers(module) -> bool:
    return any(True for _ in module.buffers())
