"""Bad input gets a ValueError naming the argument, its value and what was expected."""

import re

import jax.numpy as jnp
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
