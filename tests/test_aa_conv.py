"""Attention-augmented convolution: what the parity registry does not reach.

Query blocking (Flax only), the relative-to-absolute skew, upstream state_dicts of
``dv = 0``/``dv = out_channels`` modules, and the Wide-ResNet's stage sizes on
non-square maps.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import torch_ref
from flaxattn.convert import ConversionError, from_torch, load_state_dict, to_torch_state_dict
from flaxattn.ops.relative import attention_2d, rel_to_abs, relative_logits_2d
from torch_ref.layers.aa_conv import rel_to_abs as torch_rel_to_abs


def test_rel_to_abs_is_the_offset_gather():
    length = 5
    x = np.random.default_rng(0).standard_normal((2, 3, length, 2 * length - 1))
    i, j = np.meshgrid(np.arange(length), np.arange(length), indexing="ij")
    expected = x[..., i, j - i + length - 1]
    np.testing.assert_array_equal(np.asarray(rel_to_abs(jnp.asarray(x))), expected)
    np.testing.assert_array_equal(torch_rel_to_abs(torch.from_numpy(x)).numpy(), expected)


@pytest.mark.parametrize("query_block", [4, 6])
def test_query_blocks_change_nothing(query_block):
    # 35 queries in blocks of 4 (9 blocks, 1 padded query) and 6 (6 blocks, 1 padded).
    b, h, w, nh, d, dv = 2, 5, 7, 3, 4, 2
    n = h * w
    rng = np.random.default_rng(0)
    args = [
        jnp.asarray(rng.standard_normal(s), jnp.float32)
        for s in [(b, h, w, nh, d), (b, n, nh, d), (b, n, nh, dv), (2 * h - 1, d), (2 * w - 1, d)]
    ]
    cot = jnp.asarray(rng.standard_normal((b, nh, n, dv)), jnp.float32)

    def f(qb, q, k, v, th, tw):
        lh, lw = relative_logits_2d(q, th, tw)
        rel = (lh.reshape(b, nh, n, h), lw.reshape(b, nh, n, w))
        return attention_2d(q.reshape(b, n, nh, d), k, v, (h, w), rel, query_block=qb)

    @functools.partial(jax.jit, static_argnums=0)
    def run(qb_is_blocked, *a):
        out, vjp = jax.vjp(lambda *a: f(query_block if qb_is_blocked else None, *a), *a)
        return out, vjp(cot)

    (ref, ref_grads), (out, grads) = run(False, *args), run(True, *args)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    for g, r in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


def _upstream_like(tm, extra):
    sd = {k: v.numpy() for k, v in tm.state_dict().items()}
    return {**sd, **{k: np.zeros(s, np.float32) for k, s in extra.items()}}


def test_upstream_pure_conv_state_dict_loads_and_exports_back():
    # Upstream builds dv=0 with a 0-channel attn_out and an unused qkv_conv (and
    # crashes in forward); its state_dict loads, and export writes the same keys.
    tm = torch_ref.AugmentedConv(4, 8, 3, dk=8, dv=0, Nh=2, shape=5, relative=True)
    extra = {
        "qkv_conv.weight": (16, 4, 3, 3),
        "qkv_conv.bias": (16,),
        "attn_out.weight": (0, 0, 1, 1),
        "attn_out.bias": (0,),
        "key_rel_w": (9, 4),
        "key_rel_h": (9, 4),
    }
    fm = from_torch(tm)
    load_state_dict(fm, _upstream_like(tm, extra))
    out = to_torch_state_dict(fm)
    assert {k: v.shape for k, v in out.items() if k in extra} == extra
    np.testing.assert_array_equal(out["conv_out.weight"], tm.conv_out.weight.detach().numpy())


def test_upstream_pure_attention_state_dict_loads_only_with_empty_conv():
    tm = torch_ref.AugmentedConv(4, 8, 3, dk=8, dv=8, Nh=2)
    fm = from_torch(tm)
    empty = {"conv_out.weight": (0, 4, 3, 3), "conv_out.bias": (0,)}
    load_state_dict(fm, _upstream_like(tm, empty))
    assert to_torch_state_dict(fm)["conv_out.weight"].shape == (0, 4, 3, 3)
    with pytest.raises(ConversionError, match="unexpected: conv_out.weight"):
        load_state_dict(fm, _upstream_like(tm, {"conv_out.weight": (2, 4, 3, 3)}))


def test_wide_resnet_stage_sizes_on_non_square_maps():
    # 13x11 -> stride-2 stem 7x6 -> 7x6 -> 4x3 -> 2x2; every table fits its map.
    net = torch_ref.AAWideResNet(10, 1, 0.0, 10, shape=(13, 11), stem_stride=2).eval()
    shapes = {n: m.shape for n, m in net.named_modules() if isinstance(m, torch_ref.AugmentedConv)}
    assert shapes["conv1"] == (7, 6)
    assert shapes["layer2.0.0.conv1"] == (7, 6)
    assert shapes["layer2.0.0.conv2"] == shapes["layer2.0.0.shortcut.0"] == (4, 3)
    assert shapes["layer3.0.0.conv1"] == (4, 3)
    assert shapes["layer3.0.0.conv2"] == (2, 2)
    assert net.layer3[0][0].conv2.key_rel_h.shape == (3, 30)  # dk / Nh = 120 / 4
    with torch.no_grad():
        assert net(torch.randn(2, 3, 13, 11)).shape == (2, 10)
    # Upstream's sizes where upstream works (32x32: 32, 16, 8).
    wrn = torch_ref.AAWideResNet(10, 1, 0.0, 10, shape=32)
    assert [wrn.layer1[0][0].conv2.shape, wrn.layer2[0][0].conv2.shape] == [(32, 32), (16, 16)]
    assert wrn.layer3[0][0].conv2.shape == (8, 8)


def test_torch_twin_refuses_a_map_of_another_size():
    tm = torch_ref.AugmentedConv(4, 8, 3, dk=8, dv=4, Nh=2, shape=(6, 5), relative=True)
    with pytest.raises(ValueError, match=r"`shape` \(=\(6, 5\)\) must equal .* \(5, 6\) map"):
        tm(torch.randn(1, 4, 5, 6))
