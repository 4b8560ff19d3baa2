"""Every registered model keeps its state_dict keys and Flax state paths (issue 14).

The snapshot ``tests/data/state_keys.json`` was written before kernels and modules moved
between files (``python -m tests.state_keys``); a renamed key would break users' weights.
"""

import json

import pytest

from tests import state_keys

SNAPSHOT = json.loads(state_keys.SNAPSHOT.read_text())


def test_registries_match_snapshot():
    assert state_keys.names() == {kind: sorted(SNAPSHOT[kind]) for kind in ("train", "parity")}


@pytest.mark.parametrize(
    "kind, name",
    [("train", n) for n in sorted(SNAPSHOT["train"])]
    + [("parity", n) for n in sorted(SNAPSHOT["parity"])],
)
def test_keys_unchanged(kind, name):
    keys = (state_keys.train_keys if kind == "train" else state_keys.case_keys)(name)
    assert keys == SNAPSHOT[kind][name]
