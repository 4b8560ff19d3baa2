"""flaxattn.compile_options: which models compile without YNNPACK convolutions, and
that the option reaches XLA."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from flaxattn import compile_options as co
from flaxattn.layers.basic import Conv2d


@pytest.mark.parametrize(
    "c_in, c_out, expected",
    [(256, 64, True), (64, 256, True), (128, 64, True), (64, 64, False), (256, 256, False)],
)
def test_wide_to_narrow(c_in, c_out, expected):
    assert co.wide_to_narrow(c_in, c_out) is expected


def _convs(*specs):
    rngs = nnx.Rngs(0)
    return nnx.List([Conv2d(i, o, k, padding=k // 2, rngs=rngs) for i, o, k in specs])


@pytest.mark.parametrize(
    "model, off",
    [
        (lambda: _convs((64, 256, 3), (256, 64, 3)), True),  # the axial feed-forward
        (lambda: _convs((64, 16, 1), (16, 16, 3), (16, 64, 1)), False),  # ResBlockCBAM
        (lambda: _convs((256, 64, 1)), False),  # 1x1: a matmul, not a convolution
        (lambda: nnx.Linear(256, 64, rngs=nnx.Rngs(0)), False),
    ],
)
def test_options_follow_the_models_convolutions(model, off):
    options = co.cpu_compiler_options(model())
    assert (options == co._NO_YNN_CONV) if off else options is None


def test_the_option_reaches_xla():
    x = jnp.ones((2, 8, 8, 256))
    k = jnp.ones((3, 3, 256, 64))

    def conv(x, k):
        return jax.lax.conv_general_dilated(
            x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    default = jax.jit(conv).lower(x, k).compile().as_text()
    off = jax.jit(conv, compiler_options=co._NO_YNN_CONV).lower(x, k).compile().as_text()
    assert "__ynn_fusion" in default and "__ynn_fusion" not in off


def test_an_xla_without_the_option_gets_none(monkeypatch):
    monkeypatch.setattr(co, "_NO_YNN_CONV", {"xla_cpu_no_such_option_here": True})
    assert co._accepted((("xla_cpu_no_such_option_here", True),)) is False
    assert co.cpu_compiler_options(_convs((256, 64, 3))) is None
