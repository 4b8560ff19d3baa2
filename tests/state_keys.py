"""The state_dict keys of every registered model, and the snapshot they are checked against.

``tests/data/state_keys.json`` was generated before issue 14's refactor moved kernels
and modules between files; ``tests/test_state_keys.py`` checks that the torch
``state_dict`` keys and the Flax state paths of every training model and every parity
case are still the same. Regenerate only on purpose (a key change breaks users' weights):

    PYTHONPATH=$PWD python -m tests.state_keys
"""

from __future__ import annotations

import json
import pathlib

SNAPSHOT = pathlib.Path(__file__).parent / "data" / "state_keys.json"
INFO = dict(height=28, width=28, channels=1, num_classes=10)


def _flax_paths(module) -> list[str]:
    from flax import nnx

    flat = nnx.to_flat_state(nnx.state(module))
    return sorted(".".join(str(p) for p in path) for path, _ in flat)


def train_keys(name: str) -> dict:
    from flax import nnx

    from train.models import DataInfo, build_flax, build_torch, get_model

    spec, info = get_model(name), DataInfo(**INFO)
    return {
        "torch": sorted(build_torch(spec, info).state_dict()),
        "flax": _flax_paths(build_flax(spec, info, rngs=nnx.Rngs(0))),
    }


def case_keys(name: str) -> dict:
    from flaxattn.convert import from_torch
    from parity_tests.registry import CASES, load_all

    load_all()
    case = CASES[name]
    torch_module = case.make_torch()
    flax_module = (case.make_flax or from_torch)(torch_module)
    return {"torch": sorted(torch_module.state_dict()), "flax": _flax_paths(flax_module)}


def names() -> dict[str, list[str]]:
    from parity_tests.registry import load_all as load_cases
    from train.models import load_all as load_models

    return {"train": sorted(load_models()), "parity": sorted(load_cases())}


def collect() -> dict:
    all_names = names()
    return {
        "train": {n: train_keys(n) for n in all_names["train"]},
        "parity": {n: case_keys(n) for n in all_names["parity"]},
    }


if __name__ == "__main__":
    SNAPSHOT.write_text(json.dumps(collect(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {SNAPSHOT}")
