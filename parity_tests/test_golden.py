"""Fidelity to upstream: every golden file's weights, loaded into the torch_ref twin and,
through ``from_torch``, into flaxattn, reproduce its outputs, input and parameter
gradients and (train mode) BatchNorm buffers, in float64."""

import json
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from flaxattn.convert import from_torch
from flaxattn.parity import (
    ParityReport,
    compare_results,
    flax_results_to_torch,
    flax_vjp,
    to_flax_layout,
    torch_vjp,
)
from parity_tests.registry import GOLDEN, load_all

GOLDEN_DIR = pathlib.Path(__file__).parent / "golden"
load_all()
# Upstream ran in float64 too; what differs is the order of floating-point operations.
TOL = {"rtol": 1e-9, "atol": 1e-12}


def _load(path: pathlib.Path) -> dict:
    z = np.load(path, allow_pickle=False)

    def group(prefix):
        return {k[len(prefix) :]: z[k] for k in z.files if k.startswith(prefix)}

    n_in = len(group("in/"))
    return {
        "meta": json.loads(str(z["meta"])),
        "sd": group("sd/"),
        "inputs": [z[f"in/{i}"] for i in range(n_in)],
        "ref": {
            "out": [z["out"]],
            "grad_in": [z[f"grad_in/{i}"] for i in range(n_in)],
            "grads": group("grad/"),
            "buffers": {k: v for k, v in group("sd_after/").items() if k not in group("grad/")},
        },
        "cot": z["cot"],
    }


def _rename(d: dict, key_map) -> dict:
    return {key_map(k): v for k, v in d.items()} if key_map else d


def test_every_golden_file_has_a_case():
    files = sorted(p.name for p in GOLDEN_DIR.glob("*.npz"))
    assert files, f"no golden files in {GOLDEN_DIR}"
    assert sorted(set(files) - set(GOLDEN)) == []
    assert sorted(set(GOLDEN) - set(files)) == []


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden(name):
    case = GOLDEN[name]
    g = _load(GOLDEN_DIR / name)
    meta = g["meta"]
    train = meta["mode"] == "train"
    ref = g["ref"]
    ref["grads"] = _rename(ref["grads"], case.key_map)
    ref["buffers"] = _rename(ref["buffers"], case.key_map)
    sd = {k: torch.from_numpy(v) for k, v in _rename(g["sd"], case.key_map).items()}

    twin = case.make_torch(meta["constructor_kwargs"]).double()
    twin.load_state_dict(sd, strict=True)
    twin.train(train)
    flax_module = from_torch(twin)  # before the torch run updates its buffers

    zero = case.zero_grad_ok
    twin_report = ParityReport(f"golden/{name} vs torch_ref", "float64", meta["mode"], **TOL)
    twin_run = torch_vjp(twin, g["inputs"], [g["cot"]])
    compare_results(twin_report, ref, twin_run, buffers=train, zero_grad_ok=zero)

    n = len(g["inputs"])
    in_lay = [case.layouts] * n if isinstance(case.layouts, str) else list(case.layouts)
    out_lay = [case.out_layouts] if isinstance(case.out_layouts, str) else list(case.out_layouts)
    f = flax_vjp(
        flax_module,
        [jnp.asarray(to_flax_layout(x, lay)) for x, lay in zip(g["inputs"], in_lay, strict=True)],
        [jnp.asarray(to_flax_layout(g["cot"], out_lay[0]))],
    )
    flax_report = ParityReport(f"golden/{name} vs flaxattn", "float64", meta["mode"], **TOL)
    flax_run = flax_results_to_torch(f, flax_module, in_lay, out_lay)
    compare_results(flax_report, ref, flax_run, buffers=train, zero_grad_ok=zero)
    for report in (twin_report, flax_report):
        report.assert_ok()
        assert sum(r.kind == "grad_param" for r in report.rows) == len(ref["grads"])
        assert not train or sum(r.kind == "buffer" for r in report.rows) == len(ref["buffers"])
