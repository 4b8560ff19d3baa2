"""flaxattn.ops.dilated: the MSDA kernel (both layouts) against plain autodiff through
nn.Unfold-style neighbourhoods, values and gradients, float64 and float32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxattn.ops.dilated import dilated_attention, dilated_attention_channels_first
from flaxattn.ops.local import neighbourhood


def _reference(qkv, kernel_size, dilation, heads, scale):
    """``(B, H, W, 3, n, C/n) -> (B, H, W, C)``: neighbourhoods gathered (zero padded,
    as nn.Unfold), softmax over the window, jax.grad through all of it."""
    b, h, w, _, n, cg = qkv.shape
    hd = cg // heads
    outs = []
    for i, d in enumerate(dilation):
        q = qkv[..., 0, i, :].reshape(b, h, w, heads, hd) * scale
        kn, vn = (
            neighbourhood(qkv[..., j, i, :], kernel_size, dilation=d).reshape(
                b, h, w, kernel_size**2, heads, hd
            )
            for j in (1, 2)
        )
        attn = jax.nn.softmax(jnp.einsum("bxyhd,bxykhd->bxyhk", q, kn), axis=-1)
        outs.append(jnp.einsum("bxyhk,bxykhd->bxyhd", attn, vn).reshape(b, h, w, cg))
    return jnp.concatenate(outs, axis=-1)


CASES = [
    # (B, H, W, n, heads, hd, kernel_size, dilation)
    (2, 9, 11, 3, 1, 5, 3, (1, 2, 3)),
    (1, 7, 6, 2, 2, 4, 5, (1, 3)),
    (2, 5, 5, 1, 3, 2, 3, (2,)),
    (1, 4, 9, 2, 1, 3, 3, (4, 1)),  # dilation larger than the map: all-zero taps
    (1, 6, 6, 1, 1, 1, 1, (1,)),  # one tap, head dim 1
]
TOL = {jnp.float64: dict(rtol=1e-10, atol=1e-10), jnp.float32: dict(rtol=2e-5, atol=2e-5)}


# The channels-last kernel transposes into the channels-first one, so every case runs
# channels-last and one case checks the channels-first entry point on its own.
@pytest.mark.parametrize(
    "case,dtype,layout",
    [(c, d, "channels_last") for c in CASES for d in (jnp.float64, jnp.float32)]
    + [(CASES[0], jnp.float64, "channels_first")],
)
def test_matches_autodiff_reference(case, dtype, layout):
    b, h, w, n, heads, hd, ks, dilation = case
    rng = np.random.default_rng(0)
    qkv = jnp.asarray(rng.standard_normal((b, h, w, 3, n, heads * hd)), dtype)
    cot = jnp.asarray(rng.standard_normal((b, h, w, n * heads * hd)), dtype)
    kw = dict(kernel_size=ks, dilation=dilation, heads=heads, scale=0.7)

    def kernel(x):
        if layout == "channels_last":
            return dilated_attention(x, **kw)
        first = dilated_attention_channels_first(x.transpose(3, 4, 5, 0, 1, 2), **kw)
        return first.transpose(1, 2, 3, 0)

    def out_and_grad(f):
        def run(x):
            out, vjp = jax.vjp(f, x)
            return out, vjp(cot)[0]

        return jax.jit(run)(qkv)

    want, want_grad = out_and_grad(lambda x: _reference(x, ks, dilation, heads, 0.7))
    got, got_grad = out_and_grad(kernel)
    assert got.dtype == dtype and got_grad.dtype == dtype
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), **TOL[dtype])
    np.testing.assert_allclose(np.asarray(got_grad), np.asarray(want_grad), **TOL[dtype])


@pytest.mark.parametrize(
    "fn,shape,match",
    [
        (dilated_attention, (1, 4, 4, 3, 2, 4), r"expected `qkv` of shape \(B, H, W, 3, 3, C/n\)"),
        (dilated_attention, (1, 4, 4, 2, 3, 4), r"expected `qkv` of shape \(B, H, W, 3, 3, C/n\)"),
        (
            dilated_attention_channels_first,
            (1, 4, 4, 3, 3, 4),
            r"dilated_attention_channels_first: expected `qkv` of shape \(3, 3, C/n, B, H, W\)",
        ),
        (dilated_attention, (1, 4, 4, 3, 3, 5), r"`dim` \(=5\) must be divisible by `num_heads`"),
    ],
)
def test_shape_errors(fn, shape, match):
    with pytest.raises(ValueError, match=match):
        fn(jnp.zeros(shape), kernel_size=3, dilation=(1, 2, 3), heads=2, scale=1.0)
