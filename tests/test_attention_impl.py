"""``attention_impl`` (issue 16): fused global attention and the Pallas window kernel.

On CPU: ``'xla'`` (``jax.nn.dot_product_attention``) equals the einsum path, outputs and
gradients; the Pallas kernels (interpret mode) equal the XLA window kernels, outputs and
gradients; the choice is resolved from backend and dtype, and refused with a
``ValueError`` naming value and backend where it cannot run.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flaxattn.layers import aa_conv, acmix, axial, dilate, vit
from flaxattn.layers.basic import set_attention_impl
from flaxattn.ops import fused
from flaxattn.ops.local import local_attention
from flaxattn.ops.pallas_local import window_attention

# --- global attention: 'xla' == the einsum path ----------------------------------------------

GLOBAL = {
    "vit_attention": (lambda kw: vit.Attention(16, heads=3, dim_head=5, **kw), (2, 7, 16)),
    "vit_single_head": (lambda kw: vit.Attention(8, heads=1, dim_head=8, **kw), (1, 5, 8)),
    "axial_self_attention": (lambda kw: axial.SelfAttention(12, 3, 5, **kw), (2, 3, 4, 12)),
    "aa_conv_dk_ne_dv": (
        lambda kw: aa_conv.AugmentedConv(3, 10, 3, dk=8, dv=6, Nh=2, **kw),
        (2, 5, 7, 3),
    ),
}
# jax.nn.dot_product_attention(implementation='xla') always takes its softmax in float32
# (jax/_src/nn/functions.py), so float64 agrees to float32 round-off, not to 1e-12.
TOL = {"float32": dict(rtol=2e-5, atol=1e-6), "float64": dict(rtol=1e-6, atol=1e-7)}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(GLOBAL))
def test_xla_equals_einsum_path(name, dtype):
    make, shape = GLOBAL[name]
    x = jnp.asarray(np.random.default_rng(0).standard_normal(shape), dtype)
    ref, xla = (make(dict(param_dtype=dtype, rngs=nnx.Rngs(0))) for _ in range(2))
    set_attention_impl(xla, "xla")
    assert fused.resolve_attention_impl("auto", dtype=dtype, head_dim=8, where="t") == "default"

    def value_and_grads(model):
        def loss(model, x):
            return jnp.sum(jnp.sin(model(x)))

        return jax.jit(nnx.value_and_grad(loss, argnums=(0, 1)))(model, x)

    (l0, (gp0, gx0)), (l1, (gp1, gx1)) = value_and_grads(ref), value_and_grads(xla)
    assert jax.tree.structure(nnx.state(ref)) == jax.tree.structure(nnx.state(xla))
    np.testing.assert_allclose(l1, l0, **TOL[dtype])
    np.testing.assert_allclose(gx1, gx0, **TOL[dtype])
    for (path, a), (_, b) in zip(nnx.to_flat_state(gp0), nnx.to_flat_state(gp1), strict=True):
        assert np.abs(np.asarray(a[...])).max() > 0, path
        np.testing.assert_allclose(b[...], a[...], **TOL[dtype], err_msg=str(path))


# --- resolution and errors ----------------------------------------------------------------

RESOLVE = [
    # impl, dtype, head_dim, window, blocked, backend, expected
    ("auto", "float32", 64, False, False, "cpu", "default"),
    ("auto", "bfloat16", 64, False, False, "cpu", "default"),
    ("auto", "bfloat16", 64, False, False, "gpu", "cudnn"),
    ("auto", "float16", 128, False, False, "gpu", "cudnn"),
    ("auto", "float32", 64, False, False, "gpu", "default"),
    ("auto", "bfloat16", 12, False, False, "gpu", "default"),  # not a multiple of 8
    ("auto", "bfloat16", 256, False, False, "gpu", "default"),
    ("auto", "bfloat16", 64, False, True, "gpu", "default"),  # attention dropout
    ("xla", "float32", 5, False, False, "cpu", "xla"),
    ("cudnn", "bfloat16", 64, False, False, "gpu", "cudnn"),
    # The Pallas kernel is not the GPU default until a GPU has run it (PALLAS_BY_DEFAULT).
    ("auto", "float32", 8, True, False, "gpu", "default"),
    ("auto", "float32", 8, True, True, "gpu", "default"),
    ("auto", "float32", 8, True, False, "cpu", "default"),
    ("auto", "float64", 8, True, False, "gpu", "default"),
    ("xla", "float32", 8, True, False, "gpu", "default"),
    ("pallas", "bfloat16", 8, True, False, "gpu", "pallas"),
]


@pytest.mark.parametrize("impl, dtype, head_dim, window, blocked, backend, expected", RESOLVE)
def test_resolve(impl, dtype, head_dim, window, blocked, backend, expected):
    got = fused.resolve_attention_impl(
        impl,
        dtype=dtype,
        head_dim=head_dim,
        where="t",
        window=window,
        fused_ok="why" if blocked else None,
        backend=backend,
    )
    assert got == expected


def _vit_train():
    m = vit.Attention(16, heads=2, dim_head=8, dropout=0.1, attention_impl="xla", rngs=nnx.Rngs(0))
    m.train()
    return m(jnp.ones((1, 3, 16)))


BAD = [
    ("unknown", lambda: vit.Attention(16, attention_impl="flash", rngs=nnx.Rngs(0)), "'flash'"),
    (
        "pallas_global",
        lambda: axial.SelfAttention(8, 2, attention_impl="pallas", rngs=nnx.Rngs(0)),
        "'pallas'",
    ),
    (
        "cudnn_window",
        lambda: acmix.ACmix(4, 8, 3, 2, attention_impl="cudnn", rngs=nnx.Rngs(0)),
        "'cudnn'",
    ),
    (
        "cudnn_on_cpu",
        lambda: vit.Attention(16, attention_impl="cudnn", rngs=nnx.Rngs(0))(
            jnp.ones((1, 3, 16), jnp.float32)
        ),
        r"'cudnn'\) cannot run on backend 'cpu' with dtype float32 and head width 64.*'auto'",
    ),
    (
        "pallas_on_cpu",
        lambda: acmix.ACmix(4, 8, 3, 2, attention_impl="pallas", rngs=nnx.Rngs(0))(
            jnp.ones((1, 5, 5, 4))
        ),
        r"ACmix: `attention_impl` \(='pallas'\) cannot run on backend 'cpu'.*needs a GPU",
    ),
    (
        "xla_relative",
        lambda: aa_conv.AugmentedConv(
            3, 8, 3, 4, 4, 2, shape=4, relative=True, attention_impl="xla", rngs=nnx.Rngs(0)
        )(jnp.ones((1, 4, 4, 3))),
        "relative position logits.*'auto'",
    ),
    ("xla_attention_dropout", _vit_train, "dropout on the attention weights in train mode"),
    (
        "set_on_window_module",
        lambda: set_attention_impl(
            dilate.MultiDilateLocalAttention(8, 2, dilation=[1, 2], rngs=nnx.Rngs(0)), "cudnn"
        ),
        r"DilateAttention at .*\(='cudnn'\) must be one of \['auto', 'xla', 'pallas'\]",
    ),
]


@pytest.mark.parametrize("name, call, match", BAD, ids=[b[0] for b in BAD])
def test_bad_attention_impl(name, call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --- the Pallas window kernel (interpret mode) == the XLA kernel ----------------------------

WINDOWS = [
    # kernel_size, dilation, stride, pad_mode, (H, W), head width
    (3, 1, 1, "zeros", (5, 7), 3),
    (5, 2, 1, "zeros", (5, 9), 3),
    (7, 3, 1, "zeros", (3, 5), 3),
    (5, 1, 2, "reflect", (7, 5), 3),
]


@pytest.mark.parametrize("ks, dil, stride, pad_mode, hw, d", WINDOWS)
def test_pallas_window_matches_xla(ks, dil, stride, pad_mode, hw, d):
    rng = np.random.default_rng(ks * 10 + dil)
    h, w = hw
    ho, wo = -(-h // stride), -(-w // stride)
    k, v = (jnp.asarray(rng.standard_normal((2, h, w, 2, d)), jnp.float32) for _ in range(2))
    q, ct = (jnp.asarray(rng.standard_normal((2, ho, wo, 2, d)), jnp.float32) for _ in range(2))
    kw = dict(stride=stride, dilation=dil, pad_mode=pad_mode)

    def run(f):
        return jax.jit(lambda q, k, v: (lambda o, vjp: (o, vjp(ct)))(*jax.vjp(f, q, k, v)))(q, k, v)

    ref, ref_grads = run(lambda q, k, v: local_attention(q, k, v, ks, **kw))
    out, grads = run(lambda q, k, v: window_attention(q, k, v, ks, interpret=True, **kw))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=2e-6)
    for name, g, r in zip("qkv", grads, ref_grads, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=5e-6, err_msg=f"d{name}")


LAYERS = {
    "acmix_stride2": (
        lambda impl: acmix.ACmix(
            4, 8, kernel_att=3, head=2, stride=2, attention_impl=impl, rngs=nnx.Rngs(0)
        ),
        (1, 5, 7, 4),
    ),
    "msda": (
        lambda impl: dilate.MultiDilateLocalAttention(
            8, 2, kernel_size=3, dilation=[1, 2], attention_impl=impl, rngs=nnx.Rngs(0)
        ),
        (1, 5, 6, 8),
    ),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layers_route_to_pallas(name, monkeypatch):
    make, shape = LAYERS[name]
    rng = np.random.default_rng(0)
    xla = make("xla")
    monkeypatch.setattr(fused, "default_backend", lambda: "gpu")  # interprets: CPU underneath
    # What 'auto' picks on a GPU once a GPU has run the kernel (PALLAS_BY_DEFAULT).
    monkeypatch.setattr(fused, "PALLAS_BY_DEFAULT", True)
    pallas = make("auto")
    assert (
        fused.resolve_attention_impl("auto", dtype="float32", head_dim=4, where="t", window=True)
        == "pallas"
    )
    xs = (jnp.asarray(rng.standard_normal(shape), jnp.float32),)

    def grads(model):
        def loss(model, *xs):
            return jnp.sum(jnp.sin(model(*xs)))

        return jax.jit(nnx.value_and_grad(loss, argnums=(0, 1)))(model, *xs)

    (l0, (gp0, gx0)), (l1, (gp1, gx1)) = grads(xla), grads(pallas)
    np.testing.assert_allclose(l1, l0, rtol=1e-5)
    np.testing.assert_allclose(gx1, gx0, rtol=1e-5, atol=1e-5)
    for (path, a), (_, b) in zip(nnx.to_flat_state(gp0), nnx.to_flat_state(gp1), strict=True):
        np.testing.assert_allclose(b[...], a[...], rtol=1e-4, atol=1e-5, err_msg=str(path))


@pytest.mark.parametrize(
    "ks, dil, stride, pad_mode, dtype",
    [
        (5, 2, 1, "zeros", "float32"),
        (3, 1, 2, "reflect", "float32"),
        (7, 3, 1, "zeros", "bfloat16"),
    ],
)
def test_pallas_kernels_lower_to_triton_for_cuda(ks, dil, stride, pad_mode, dtype):
    # Cross-platform lowering runs Pallas's Triton lowering on this CPU-only machine: the
    # forward, dq and dk/dv kernels each become one Triton custom call. (Compiling the
    # Triton IR and running it needs a GPU: bench/gpu_check.sh.)
    ho, wo = -(-9 // stride), -(-11 // stride)
    q = jax.ShapeDtypeStruct((2, ho, wo, 2, 16), dtype)
    kv = jax.ShapeDtypeStruct((2, 9, 11, 2, 16), dtype)
    kw = dict(stride=stride, dilation=dil, pad_mode=pad_mode, interpret=False)

    def step(q, k, v):
        out, vjp = jax.vjp(lambda q, k, v: window_attention(q, k, v, ks, **kw), q, k, v)
        return out, vjp(out)

    text = jax.jit(step).trace(q, kv, kv).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("__gpu$xla.gpu.triton") == 3
    for name in ("window_attention_fwd", "window_attention_dq", "window_attention_dkv"):
        assert f'name = "{name}"' in text
