"""DilateFormer family: preset sizes against the official parameter counts."""

import jax
import numpy as np
import pytest
from flax import nnx

import flaxattn
import torch_ref


# The official repository's model zoo: DilateFormer-Tiny 17.2M, -Small 24.1M,
# -Base 47.4M parameters (ImageNet-1k head, 224x224).
@pytest.mark.parametrize("name, millions", [("tiny", 17.2), ("small", 24.1), ("base", 47.4)])
def test_presets_have_the_official_parameter_counts(name, millions):
    twin = getattr(torch_ref, f"dilateformer_{name}")()
    count = sum(p.numel() for p in twin.parameters())
    assert round(count / 1e6, 1) == millions, count


def test_flax_preset_has_the_twins_parameter_count():
    # The presets differ only in width and depths, so one of them suffices; shapes
    # only (nnx.eval_shape): nothing is initialised on the Flax side.
    count = sum(p.numel() for p in torch_ref.dilateformer_tiny().parameters())
    abstract = nnx.eval_shape(lambda: flaxattn.dilateformer_tiny(rngs=nnx.Rngs(0)))
    leaves = jax.tree.leaves(nnx.state(abstract, nnx.Param))
    assert sum(int(np.prod(p.shape)) for p in leaves) == count


_BUILT = {"DilateBlock", "GlobalBlock", "DilateStage", "GlobalStage", "PatchMerging"}
_BUILT |= {"DilateAttention", "MultiDilateLocalAttention", "GlobalAttention", "_init_common"}


@pytest.mark.parametrize(
    "path",
    [
        "flaxattn/layers/dilate.py",
        "flaxattn/models/dilateformer.py",
        "torch_ref/layers/dilate.py",
        "torch_ref/models/dilateformer.py",
    ],
)
def test_blocks_and_stages_built_with_keywords(path):
    # Issue 14: a block or stage built from 9-13 positional arguments swaps two of them
    # silently when a signature is reordered; inside the library they pass keywords.
    import ast
    import pathlib

    tree = ast.parse((pathlib.Path(__file__).parents[1] / path).read_text())
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", getattr(node.func, "attr", None)) in _BUILT
    ]
    assert calls
    assert [ast.unparse(c)[:60] for c in calls if len(c.args) > 1] == []
