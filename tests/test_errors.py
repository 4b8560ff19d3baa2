"""Bad input gets a ValueError naming the argument, its value and what was expected."""

import importlib
import importlib.util
import re
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flaxattn.registry import resolve
from parity_tests.registry import BAD, BadArgs, BadCall, load_all

load_all()


ARGS = [b for b in BAD if isinstance(b, BadArgs)]
CALLS = [b for b in BAD if isinstance(b, BadCall)]


@pytest.mark.parametrize("bad", ARGS, ids=[f"{b.cls}{b.args}{b.kwargs or ''}" for b in ARGS])
def test_flax_constructor_refuses(bad):
    cls = resolve(bad.cls, "flaxattn")
    with pytest.raises(ValueError, match=bad.match):
        cls(*bad.args, **bad.kwargs, rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
    "bad", [b for b in ARGS if b.torch], ids=[f"{b.cls}{b.args}" for b in ARGS if b.torch]
)
def test_torch_twin_refuses(bad):
    cls = resolve(bad.cls, "torch_ref")
    with pytest.raises(ValueError, match=bad.match):
        cls(*bad.args, **bad.kwargs)


@pytest.mark.parametrize("bad", CALLS, ids=[b.name for b in CALLS])
def test_call_refuses(bad):
    module = bad.make_flax()
    with pytest.raises(ValueError, match=bad.match):
        module(*[jnp.zeros(s) for s in bad.shapes])


def test_messages_name_value_and_expectation():
    # Every registered message pattern names a value: "`arg` (=value)", a shape or a
    # size ("an input of size 4x12").
    for bad in BAD:
        assert re.search(r"\(=|shape|must|size \d+x\d+", bad.match), bad


def _message(cls, args, kwargs) -> str | None:
    try:
        cls(*args, **kwargs)
    except ValueError as e:
        return str(e)
    return None


@pytest.mark.parametrize(
    "bad", [b for b in ARGS if b.torch], ids=[f"{b.cls}{b.args}" for b in ARGS if b.torch]
)
def test_twins_state_the_same_rule(bad):
    # Each twin states its own argument rules (torch_ref imports no flaxattn); on every bad
    # argument of the table they must agree word for word.
    flax_msg = _message(resolve(bad.cls, "flaxattn"), bad.args, {**bad.kwargs, "rngs": nnx.Rngs(0)})
    torch_msg = _message(resolve(bad.cls, "torch_ref"), bad.args, bad.kwargs)
    assert flax_msg is not None and flax_msg == torch_msg


# --- types: a str, a float, a bool or a short tuple where an int (pair) is needed ------------

VIT = dict(image_size=28, patch_size=7, num_classes=10, dim=16, depth=1, heads=2, mlp_dim=32)
# (class under flaxattn/torch_ref, args, kwargs, exception, message pattern); both twins.
TYPES = [
    ("SELayer", ("32",), {}, TypeError, r"`channel` \(='32'\) must be an int, got str"),
    ("SELayer", (32.0,), {}, TypeError, r"`channel` \(=32\.0\) must be an int, got float"),
    ("SELayer", (True,), {}, TypeError, r"`channel` \(=True\) must be an int, got bool"),
    ("SELayer", (32, None), {}, TypeError, r"`reduction` \(=None\) must be an int"),
    ("CBAM", ("32",), {}, TypeError, r"`channel` \(='32'\) must be an int"),
    ("CBAM", (32.0,), {}, TypeError, r"`channel` \(=32\.0\) must be an int"),
    ("ChannelAttention", (32, 4.0), {}, TypeError, r"`ratio` \(=4\.0\) must be an int"),
    ("ResBlockCBAM", (16, 4), {"stride": 1.0}, TypeError, r"`stride` \(=1\.0\) must be an int"),
    ("JongchanCBAM", ("32",), {}, TypeError, r"`channel` \(='32'\) must be an int"),
    ("AttentionGate", (12, 6, "6"), {}, TypeError, r"`F_int` \(='6'\) must be an int"),
    ("SelfAttention", (16, 8.5, 8), {}, TypeError, r"`dim_k` \(=8\.5\) must be an int"),
    ("CBAMResNet", (), {"layers": (1, 1.0, 1)}, TypeError, r"`layers\[1\]` \(=1\.0\)"),
    (
        "ViT",
        (),
        {**VIT, "image_size": (28,)},
        ValueError,
        r"`image_size` \(=\(28,\)\) must be an int or a pair of ints, got length 1",
    ),
    (
        "ViT",
        (),
        {**VIT, "image_size": "28"},
        TypeError,
        r"`image_size` \(='28'\) must be an int or a pair",
    ),
    (
        "ViT",
        (),
        {**VIT, "image_size": (28, 28.0)},
        TypeError,
        r"`image_size\[1\]` \(=28\.0\) must be an int",
    ),
    ("ViT", (), {**VIT, "patch_size": 7.0}, TypeError, r"`patch_size` \(=7\.0\)"),
    (
        "ViT",
        (),
        {**VIT, "emb_dropout": "0.1"},
        TypeError,
        r"`emb_dropout` \(='0\.1'\) must be a number",
    ),
    ("ViT", (), {**VIT, "num_classes": "10"}, TypeError, r"`num_classes` \(='10'\) must be an int"),
    ("ViT", (), {**VIT, "depth": True}, TypeError, r"`depth` \(=True\) must be an int, got bool"),
    ("Attention", (16,), {"heads": 2.0}, TypeError, r"`heads` \(=2\.0\) must be an int"),
    ("FeedForward", (16, 32), {"dropout": "x"}, TypeError, r"`dropout` \(='x'\) must be a number"),
    ("AugmentedConv", (4, 8, 3, 8, 4, 2.0), {}, TypeError, r"`Nh` \(=2\.0\) must be an int"),
    (
        "AugmentedConv",
        (4, 8, 3, 8, 4, 2),
        {"stride": True},
        ValueError,
        r"`stride` \(=True\) must be one of \[1, 2\]",
    ),
    ("AAWideResNet", ("10", 1, 0.0, 10, 8), {}, TypeError, r"`depth` \(='10'\) must be an int"),
    ("ACmix", (16, "16"), {}, TypeError, r"`out_planes` \(='16'\) must be an int"),
    ("ACmix", (16, 16), {"stride": 2.0}, ValueError, r"`stride` \(=2\.0\) must be one of \[1, 2\]"),
    ("ACmixResNet", ([1, 1, 1, 1],), {"num_classes": "10"}, TypeError, r"`num_classes` \(='10'\)"),
    (
        "DilateAttention",
        (8,),
        {"kernel_size": 3.0},
        TypeError,
        r"`kernel_size` \(=3\.0\) must be an int",
    ),
    (
        "DilateBlock",
        (24, 3),
        {"mlp_ratio": "4"},
        TypeError,
        r"`mlp_ratio` \(='4'\) must be a number",
    ),
    (
        "DilateBlock",
        (24, 3),
        {"mlp_ratio": True},
        TypeError,
        r"`mlp_ratio` \(=True\) must be a number, got bool",
    ),
    (
        "DilateFormer",
        (),
        {"img_size": (224,)},
        ValueError,
        r"`img_size` \(=\(224,\)\) must be an int or a pair of ints, got length 1",
    ),
    (
        "DilateFormer",
        (),
        {"drop_path": "0.1"},
        TypeError,
        r"`drop_path` \(='0\.1'\) must be a number",
    ),
    (
        "DilateFormer",
        (),
        {"num_classes": 10.0},
        TypeError,
        r"`num_classes` \(=10\.0\) must be an int",
    ),
    ("AxialAttention", (16, 2.0), {}, TypeError, r"`num_dimensions` \(=2\.0\) must be an int"),
    (
        "AxialPositionalEmbedding",
        (8, (5, 5.0)),
        {},
        TypeError,
        r"`shape\[1\]` \(=5\.0\) must be an int",
    ),
    ("AxialImageTransformer", (16, "2"), {}, TypeError, r"`depth` \(='2'\) must be an int"),
    (
        "AxialImageTransformer",
        (16, 1),
        {"reversible": 1},
        ValueError,
        r"`reversible` \(=1\) must be one of",
    ),
    ("AxialClassifier", (), {"depth": 2.0}, TypeError, r"`depth` \(=2\.0\) must be an int"),
]


@pytest.mark.parametrize(
    "cls, args, kwargs, exc, match",
    TYPES,
    ids=[
        f"{c}{a}{k if k.keys() - VIT.keys() else ''}-{i}" for i, (c, a, k, *_) in enumerate(TYPES)
    ],
)
def test_wrong_types_are_named_by_both_twins(cls, args, kwargs, exc, match):
    with pytest.raises(exc, match=match) as flax_err:
        resolve(cls, "flaxattn")(*args, **kwargs, rngs=nnx.Rngs(0))
    with pytest.raises(exc, match=match) as torch_err:
        resolve(cls, "torch_ref")(*args, **kwargs)
    assert str(flax_err.value) == str(torch_err.value)


# --- flaxattn.ops.checks and torch_ref._checks agree -----------------------------------------


def _torch_checks():
    # Loaded from its file so that no jax/flaxattn import can hide behind torch_ref/__init__.
    path = Path(__file__).resolve().parents[1] / "torch_ref" / "_checks.py"
    spec = importlib.util.spec_from_file_location("_torch_ref_checks_alone", path)
    module = importlib.util.module_from_spec(spec)
    blocked = {name: sys.modules.get(name) for name in ("jax", "flaxattn")}
    sys.modules.update(dict.fromkeys(blocked))  # None: importing them raises ImportError
    try:
        spec.loader.exec_module(module)
    finally:
        for name, mod in blocked.items():
            if mod is None:
                del sys.modules[name]
            else:
                sys.modules[name] = mod
    return module


class _Shaped:
    def __init__(self, *shape):
        self.shape = shape


# (function, args, kwargs): good and bad arguments alike; both modules must agree on each.
AGREE = (
    [("check_int", (), {"n": v}) for v in (3, np.int64(3), -1, 3.0, True, "3", None, np.float32(3))]
    + [
        ("check_positive", (), {"n": v})
        for v in (1, np.int32(4), 0, -2, 2.0, False, "2", None, [2], float("nan"))
    ]
    + [
        ("check_positive_number", (), {"r": v})
        for v in (4.0, 4, 0.0, -1.5, float("nan"), float("inf"), True, "4", None)
    ]
    + [
        ("check_rate", (), {"p": v})
        for v in (0.0, 0.5, 0, 1.0, -0.1, float("nan"), "0.1", True, None)
    ]
    + [("check_bool", (), {"flag": v}) for v in (True, False, 1, "yes", None)]
    + [
        ("check_pair", ("size", v), {})
        for v in (
            28,
            (28, 14),
            [3, 4],
            (28,),
            (1, 2, 3),
            (28, 28.0),
            "28",
            28.0,
            True,
            (True, 2),
            None,
        )
    ]
    + [
        ("check_divisible", ("dim", v, "heads", by), {})
        for v, by in ((12, 3), (12, 5), (12, 0), (12.0, 3), (12, 3.0), ("12", 3), (True, 1))
    ]
    + [("check_choice", ("stride", v, (1, 2)), {}) for v in (1, 2, 3, 1.0, True, "1", np.int64(2))]
    + [
        ("check_choice", ("reversible", v, (True, False, "coupling")), {})
        for v in (True, False, "coupling", 1, 0, "x")
    ]
    + [("check_batch", (_Shaped(*s),), {"where": "M"}) for s in ((2, 3), (0, 3), (0,))]
)


@pytest.mark.parametrize(
    "fn, args, kwargs", AGREE, ids=[f"{f}-{i}" for i, (f, *_) in enumerate(AGREE)]
)
def test_flax_and_torch_checks_agree(fn, args, kwargs):
    from flaxattn.ops import checks

    results = []
    for module in (checks, _torch_checks()):
        try:
            results.append(("returns", getattr(module, fn)(*args, **kwargs)))
        except (TypeError, ValueError) as e:
            results.append((type(e).__name__, str(e)))
    assert results[0] == results[1]
    if results[0][0] != "returns":  # every refusal names the argument and its value
        assert re.search(r"`[\w\[\]]+` \(=|batch size 0", results[0][1])


def test_same_check_functions_on_both_sides():
    from flaxattn.ops import checks

    public = {n for n in dir(checks) if n.startswith("check_") and n != "check_input"}
    assert public <= set(dir(_torch_checks()))


# --- an empty batch: an empty result, or a ValueError naming the batch size ------------------

CASES = load_all()
# One case per family (its first, by name) in every mode it has: the empty-batch paths live in
# the shared layers and ops, and the whole registry here cost a minute of suite time.
_FIRST = {}
for _name in sorted(CASES):
    _FIRST.setdefault(_name.split("/")[0], _name)
EMPTY = [(name, mode) for name in _FIRST.values() for mode in CASES[name].modes]


def _inputs(case):
    if case.make_inputs is not None:
        return [np.asarray(a) for a in case.make_inputs(np.random.default_rng(0))]
    return [np.random.default_rng(0).standard_normal(s).astype(np.float32) for s in case.shapes]


@pytest.mark.parametrize("name, mode", EMPTY, ids=[f"{n}-{m}" for n, m in EMPTY])
def test_empty_batch(name, mode):
    import jax
    import torch

    from flaxattn.convert import from_torch
    from flaxattn.parity import to_flax_layout

    case = CASES[name]
    torch.manual_seed(0)
    tm = case.make_torch().train(mode == "train")
    fm = from_torch(tm, param_dtype=jnp.float32)
    layouts = case.layouts
    full = [
        jnp.asarray(to_flax_layout(a, layouts if isinstance(layouts, str) else layouts[i]))
        for i, a in enumerate(_inputs(case))
    ]
    empty = [a[:0] for a in full]
    fm.eval()  # shapes do not depend on the mode; eval_shape must not touch BatchNorm stats
    expected = jax.eval_shape(fm, *full)
    if mode == "train":
        fm.train()
    try:
        out = fm(*empty)
    except ValueError as e:  # only where an empty result has no meaning (train-mode BatchNorm)
        assert mode == "train" and re.search(r"batch size 0\b", str(e)), e
        return
    got = jax.tree.map(lambda a: a.shape, out)
    want = jax.tree.map(lambda a: (0, *a.shape[1:]), expected)
    assert got == want
