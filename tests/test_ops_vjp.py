"""Hand-written VJPs in ``flaxattn.ops`` against autodiff of the plain formula.

``batch_norm_train`` and ``layer_norm`` (closed-form backward), ``gelu``, ``max_reduce``
(index saved in the forward), ``pointwise_conv`` and ``dense`` (two GEMMs), and MSDA's
layout-changing projections (``flaxattn.layers.dilate``, bias inside): value and VJP
under ``jit`` in float64 on one table of shapes, the float32 ones of the ViT path too; then
what the plain formulas cannot check (ties, NaN, large-mean inputs, the Linear hook).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxattn.layers.dilate import _channels_first_to_rows, _rows_to_channels_first
from flaxattn.ops.batchnorm import batch_norm_train
from flaxattn.ops.dense import dense, dense_dot_general
from flaxattn.ops.norm import gelu, layer_norm
from flaxattn.ops.pointwise import pointwise_conv
from flaxattn.ops.reduce import _argmax_index, _max_first_fwd, max_reduce

EPS = 1e-5


def _bn_plain(x, scale, bias):
    axes = tuple(range(x.ndim - 1))
    mean = x.mean(axes)
    var = jnp.square(x - mean).mean(axes)
    y = (x - mean) * jax.lax.rsqrt(var + EPS)
    if scale is not None:
        y = y * scale + bias
    return y, mean, var


def _bn_case(shape, affine):
    c = shape[-1]

    def make(rng):
        x = rng.standard_normal(shape) * 3.0 + 0.5
        if not affine:
            return (x,)
        return x, rng.standard_normal(c), rng.standard_normal(c)

    def new(x, *sb):
        return batch_norm_train(x, *(sb or (None, None)), EPS)

    def plain(x, *sb):
        return _bn_plain(x, *(sb or (None, None)))

    return new, plain, make


def _max_case(shape, axis, keepdims):
    def make(rng):
        return (rng.permutation(np.prod(shape)).reshape(shape) / 7.0,)  # no ties

    return (
        lambda x: max_reduce(x, axis, keepdims),
        lambda x: jnp.max(x, axis, keepdims=keepdims),
        make,
    )


def _pointwise_case(shape, co):
    def make(rng):
        return rng.standard_normal(shape), rng.standard_normal((shape[-1], co))

    return (
        pointwise_conv,
        lambda x, k: jnp.einsum("...i,io->...o", x, k),
        make,
    )


def _layer_norm_plain(x, scale, bias):
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + EPS) * scale + bias


def _layer_norm_case(shape, offset):
    def make(rng):
        d = shape[-1]
        # A large mean (offset) is where a one-pass variance would lose digits.
        return (
            rng.standard_normal(shape) * 3.0 + offset,
            rng.standard_normal(d) + 1.0,
            rng.standard_normal(d),
        )

    return (lambda x, s, b: layer_norm(x, s, b, EPS)), _layer_norm_plain, make


def _gelu_case(shape):
    def make(rng):
        return (rng.standard_normal(shape) * 3.0,)

    return gelu, lambda x: 0.5 * x * (1.0 + jax.scipy.special.erf(x / math.sqrt(2.0))), make


def _dense_case(shape, co, via_hook=False):
    def make(rng):
        return rng.standard_normal(shape), rng.standard_normal((shape[-1], co))

    def hook(x, w):
        return dense_dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())))

    return (hook if via_hook else dense), jnp.matmul, make


def _msda_projection_case(to_channels_first, bias):
    """``(N, C) -> (O, N)`` or ``(C, N) -> (N, O)``, with or without a bias."""
    n, c, o = 7, 4, 5

    def make(rng):
        x = rng.standard_normal((n, c) if to_channels_first else (c, n))
        return (x, rng.standard_normal((c, o))) + ((rng.standard_normal(o),) if bias else ())

    def new(x, w, b=None):
        fn = _rows_to_channels_first if to_channels_first else _channels_first_to_rows
        return fn(x, w, b, None)

    def plain(x, w, b=0.0):
        y = x @ w if to_channels_first else x.T @ w
        return (y + b).T if to_channels_first else y + b

    return new, plain, make


CASES = {
    "bn_2d": _bn_case((4, 5, 6, 3), True),
    "bn_1d": _bn_case((7, 2), True),
    "bn_3d_no_affine": _bn_case((2, 3, 2, 2, 4), False),
    "bn_one_row_per_batch": _bn_case((9, 1, 1, 5), True),
    "max_hw_keepdims": _max_case((3, 5, 4, 6), (1, 2), True),
    "max_channels": _max_case((2, 5, 4, 6), -1, False),
    "max_leading": _max_case((7, 3), 0, False),
    "max_split_axes": _max_case((3, 4, 5), (0, 2), True),
    "max_empty_batch": _max_case((0, 4, 3, 2), (1, 2), True),
    "pointwise_4d": _pointwise_case((2, 3, 4, 5), 6),
    "pointwise_2d": _pointwise_case((9, 4), 3),
    "pointwise_empty_batch": _pointwise_case((0, 3, 3, 4), 2),
    "layer_norm": _layer_norm_case((3, 5, 16), 50.0),
    "layer_norm_rows": _layer_norm_case((7, 4), 0.0),
    "gelu": _gelu_case((4, 6, 8)),
    "dense_3d": _dense_case((2, 5, 6), 3),
    "dense_2d": _dense_case((7, 6), 9),
    "dense_via_linear_hook": _dense_case((2, 3, 4), 5, via_hook=True),
    "msda_qkv_projection": _msda_projection_case(True, True),
    "msda_qkv_projection_no_bias": _msda_projection_case(True, False),
    "msda_out_projection": _msda_projection_case(False, True),
    "msda_out_projection_no_bias": _msda_projection_case(False, False),
}
# The ops of the ViT path are also compared in float32.
FLOAT32 = ["layer_norm", "layer_norm_rows", "gelu", "dense_3d", "dense_2d"]
RUNS = [(n, jnp.float64) for n in CASES] + [(n, jnp.float32) for n in FLOAT32]


def _assert_close(got, want, dtype, kind, msg=""):
    if dtype == jnp.float32:  # relative to the largest value: round-off of a sum
        tol = dict(rtol=0, atol=1e-5 * float(jnp.abs(want).max(initial=0.0)))
    else:
        tol = dict(rtol=1e-11, atol=1e-12) if kind == "output" else dict(rtol=1e-10, atol=1e-11)
    np.testing.assert_allclose(got, want, err_msg=msg, **tol)


@pytest.mark.parametrize("name,dtype", RUNS, ids=[f"{n}-{d.__name__}" for n, d in RUNS])
def test_matches_autodiff_of_plain_formula(name, dtype):
    new, plain, make = CASES[name]
    rng = np.random.default_rng(0)
    args = [jnp.asarray(a, dtype) for a in make(rng)]
    out_new, vjp_new = jax.vjp(jax.jit(new), *args)
    out_plain, vjp_plain = jax.vjp(plain, *args)
    # A cotangent for every output (the batch statistics too: their VJP is hand-written).
    cot = jax.tree.map(lambda o: jnp.asarray(rng.standard_normal(o.shape), dtype), out_plain)
    for got, want in zip(jax.tree.leaves(out_new), jax.tree.leaves(out_plain), strict=True):
        assert got.dtype == want.dtype == dtype and got.shape == want.shape
        _assert_close(got, want, dtype, "output")
    grads_new, grads_plain = jax.jit(vjp_new)(cot), vjp_plain(cot)
    for i, (got, want) in enumerate(zip(grads_new, grads_plain, strict=True)):
        assert got.shape == want.shape and got.dtype == dtype, f"argument {i}"
        _assert_close(got, want, dtype, "grad", f"argument {i}")


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


@pytest.mark.parametrize(
    "shape,axis",
    [((3, 4, 5, 2), (1, 2)), ((3, 4, 5, 6), -1), ((6, 4), 0), ((2, 3, 4), (0, 2))],
)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_max_reduce_gradient_goes_to_first_tie(shape, axis, dtype):
    x = np.random.default_rng(1).integers(0, 3, size=shape).astype(dtype)  # many ties
    axes = (axis,) if isinstance(axis, int) else axis
    axes = tuple(a % x.ndim for a in axes)
    rest = [a for a in range(x.ndim) if a not in axes]
    moved = x.transpose(rest + list(axes)).reshape([x.shape[a] for a in rest] + [-1])
    onehot = np.zeros_like(moved)
    np.put_along_axis(onehot, moved.argmax(-1)[..., None], 1.0, axis=-1)  # numpy: first max
    want = onehot.reshape([x.shape[a] for a in rest] + [x.shape[a] for a in axes])
    want = want.transpose(np.argsort(rest + list(axes)))
    grad = jax.jit(jax.grad(lambda v: max_reduce(v, axis).sum()))(jnp.asarray(x))
    assert grad.dtype == dtype
    np.testing.assert_array_equal(grad, want)
    # The argmax fallback (taken if XLA's rounding ever left no match) picks the same element.
    shape_t = tuple(x.shape)
    _, idx = _max_first_fwd(jnp.asarray(x), axes, shape_t)
    np.testing.assert_array_equal(idx, _argmax_index(jnp.asarray(x), axes, shape_t, idx.dtype))


def test_max_reduce_nan_and_integers():
    x = jnp.array([[1.0, jnp.nan, 3.0, jnp.nan], [2.0, 5.0, 5.0, -1.0]])
    value, grad = jax.value_and_grad(lambda v: max_reduce(v, 1).sum())(x)
    assert np.isnan(value)
    np.testing.assert_array_equal(grad, [[0, 1, 0, 0], [0, 1, 0, 0]])
    ints = jnp.arange(12, dtype=jnp.int32).reshape(3, 4)
    np.testing.assert_array_equal(max_reduce(ints, -1), [3, 7, 11])


@pytest.mark.parametrize("offset", [0.0, 1e3, 1e4])
def test_batch_norm_float32_keeps_precision_with_large_mean(offset):
    x = (np.random.default_rng(2).standard_normal((8, 6, 5, 3)) + offset).astype(np.float32)
    y, mean, var = jax.jit(lambda v: batch_norm_train(v, None, None, EPS))(jnp.asarray(x))
    want_y, want_mean, want_var = _bn_plain(jnp.asarray(x, jnp.float64), None, None)
    assert y.dtype == mean.dtype == var.dtype == jnp.float32
    # A one-pass E[x^2] - E[x]^2 in float32 would be off by ~offset**2 * 6e-8 in the
    # variance (~6 at offset 1e4, the variance itself is ~1).
    np.testing.assert_allclose(mean, want_mean, rtol=1e-6)
    np.testing.assert_allclose(var, want_var, rtol=1e-4)
    # y inherits the float32 mean's round-off, a few ulps of the offset.
    np.testing.assert_allclose(y, want_y, atol=1e-5 + offset * 4e-7)
