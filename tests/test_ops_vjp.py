"""Hand-written VJPs (``flaxattn.ops.norm``, ``flaxattn.ops.dense``) equal autodiff of
the plain formula: outputs and every gradient, float64 to round-off, float32 to 1e-5."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxattn.ops.dense import dense, dense_dot_general
from flaxattn.ops.norm import gelu, layer_norm


def _layer_norm_ref(x, scale, bias):
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + 1e-5) * scale + bias


def _gelu_ref(x):
    return 0.5 * x * (1.0 + jax.scipy.special.erf(x / math.sqrt(2.0)))


# name: (function under test, reference, argument shapes, argument offsets)
CASES = {
    # A large mean (offset 50) is where a one-pass variance would lose digits.
    "layer_norm": (
        lambda x, s, b: layer_norm(x, s, b, 1e-5),
        _layer_norm_ref,
        [(3, 5, 16), (16,), (16,)],
        [50.0, 1.0, 0.0],
    ),
    "layer_norm_rows": (
        lambda x, s, b: layer_norm(x, s, b, 1e-5),
        _layer_norm_ref,
        [(7, 4), (4,), (4,)],
        [0.0, 0.0, 0.0],
    ),
    "gelu": (gelu, _gelu_ref, [(4, 6, 8)], [0.0]),
    "dense_3d": (dense, jnp.matmul, [(2, 5, 6), (6, 3)], [0.0, 0.0]),
    "dense_2d": (dense, jnp.matmul, [(7, 6), (6, 9)], [0.0, 0.0]),
    "dot_general_hook": (
        lambda x, w: dense_dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ()))),
        jnp.matmul,
        [(2, 3, 4), (4, 5)],
        [0.0, 0.0],
    ),
}


@pytest.mark.parametrize("dtype,tol", [(jnp.float64, 1e-12), (jnp.float32, 1e-5)])
@pytest.mark.parametrize("name", sorted(CASES))
def test_vjp_matches_autodiff(name, dtype, tol):
    fn, ref, shapes, offsets = CASES[name]
    rng = np.random.default_rng(0)
    args = [
        jnp.asarray(rng.standard_normal(s) * 3.0 + o, dtype)
        for s, o in zip(shapes, offsets, strict=True)
    ]
    out, ref_out = fn(*args), ref(*args)
    assert out.dtype == dtype and out.shape == ref_out.shape
    cot = jnp.asarray(rng.standard_normal(out.shape), dtype)
    grads = jax.grad(lambda *a: jnp.sum(fn(*a) * cot), argnums=tuple(range(len(args))))(*args)
    refs = jax.grad(lambda *a: jnp.sum(ref(*a) * cot), argnums=tuple(range(len(args))))(*args)
    for got, want in [(out, ref_out), *zip(grads, refs, strict=True)]:
        assert got.dtype == dtype
        scale = float(jnp.abs(want).max())
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=tol * scale)


@pytest.mark.parametrize(
    "kwargs,custom",
    [({}, True), ({"precision": jax.lax.Precision.HIGHEST}, False)],
)
def test_dot_general_hook_takes_the_plain_contraction_only(kwargs, custom):
    # nnx.Linear's own call (no precision, no sharding) goes through the custom VJP; a
    # precision request goes to lax.dot_general unchanged.
    x, w = jnp.ones((2, 3)), jnp.ones((3, 4))
    dims = (((1,), (0,)), ((), ()))
    jaxpr = str(jax.make_jaxpr(lambda x, w: dense_dot_general(x, w, dims, **kwargs))(x, w))
    assert ("custom_vjp_call" in jaxpr) == custom, jaxpr
    got = dense_dot_general(x, w, dims, **kwargs)
    np.testing.assert_array_equal(np.asarray(got), np.full((2, 4), 3.0))
