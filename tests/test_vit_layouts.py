"""ViT: vit-pytorch key layouts of every release, scan, mixed precision, dropout.

The installed vit-pytorch produces only its own layout (``1.16.1+``; the parity
registry converts it with ``from_torch``). The older layouts are written out
here as key tables read off the history of ``vit_pytorch/vit.py``, independent
of ``flaxattn.convert.maps.vit``: a torch_ref twin configured like the release
gives the weights, the table renames them, and the Flax ViT must recognise the
layout from the keys alone, compute the twin's function, and export the same
dict back.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import flaxattn
import torch_ref
from flaxattn.convert import (
    ConversionError,
    from_torch,
    load_state_dict,
    to_torch_state_dict,
    torch_layout,
)
from flaxattn.parity import check_parity
from parity_tests.upstream import ensure_torchvision, vit_pytorch

CFG = dict(
    image_size=(8, 12),
    patch_size=(4, 6),
    num_classes=3,
    dim=8,
    depth=2,
    heads=2,
    dim_head=4,
    mlp_dim=12,
)

# Per block: canonical suffix, releases 0.3-0.9 (Residual(PreNorm)), 1.4+ (no PreNorm).
BLOCK = [
    ("0.norm.weight", "0.fn.norm.weight", "0.norm.weight"),
    ("0.norm.bias", "0.fn.norm.bias", "0.norm.bias"),
    ("0.fn.to_qkv.weight", "0.fn.fn.to_qkv.weight", "0.to_qkv.weight"),
    ("0.fn.to_out.0.weight", "0.fn.fn.to_out.0.weight", "0.to_out.0.weight"),
    ("0.fn.to_out.0.bias", "0.fn.fn.to_out.0.bias", "0.to_out.0.bias"),
    ("1.norm.weight", "1.fn.norm.weight", "1.net.0.weight"),
    ("1.norm.bias", "1.fn.norm.bias", "1.net.0.bias"),
    ("1.fn.net.0.weight", "1.fn.fn.net.0.weight", "1.net.1.weight"),
    ("1.fn.net.0.bias", "1.fn.fn.net.0.bias", "1.net.1.bias"),
    ("1.fn.net.3.weight", "1.fn.fn.net.3.weight", "1.net.4.weight"),
    ("1.fn.net.3.bias", "1.fn.fn.net.3.bias", "1.net.4.bias"),
]

# release: (layout name, twin kwargs, block column, outside-the-blocks renames, unbatched)
RELEASES = {
    "0.5.0": (
        "vit-pytorch 0.3-0.6",
        {},
        1,
        {"to_patch_embedding.1.": "patch_to_embedding."},
        False,
    ),
    "0.9.3": ("vit-pytorch 0.7-0.9", {}, 1, {}, False),
    "0.35.7": ("canonical", {}, 0, {}, False),
    "1.2.0": ("canonical", {"patch_norm": True}, 0, {}, False),
    "1.15.0": (
        "vit-pytorch 1.4-1.16.0",
        {"patch_norm": True, "final_norm": "tokens"},
        2,
        {},
        False,
    ),
    "1.16.0": (
        "vit-pytorch 1.4-1.16.0",
        {"patch_norm": True, "final_norm": "tokens", "mean_with_cls": False},
        2,
        {},
        False,
    ),
    "1.26.11": (
        "vit-pytorch 1.16.1+",
        {"patch_norm": True, "final_norm": "tokens", "mean_with_cls": False},
        2,
        {},
        True,
    ),
}


def upstream_state_dict(twin: torch.nn.Module, release: str) -> dict[str, np.ndarray]:
    """The twin's weights under the keys and shapes of a vit-pytorch release."""
    _, _, col, renames, unbatched = RELEASES[release]
    out = {}
    for key, value in twin.state_dict().items():
        value = value.numpy()
        m = re.match(r"transformer\.layers\.(\d+)\.(.*)$", key)
        if m:
            (row,) = [r for r in BLOCK if r[0] == m[2]]
            key = f"transformer.layers.{m[1]}.{row[col]}"
        for old, new in renames.items():
            key = key.replace(old, new)
        out[key] = value
    dim = twin.pos_embedding.shape[-1]
    if twin.cls_token is None:  # upstream keeps an empty cls token table
        out["cls_token"] = np.zeros((1, 0, dim), np.float32)
    if unbatched:
        out["cls_token"], out["pos_embedding"] = out["cls_token"][0], out["pos_embedding"][0]
    return out


@pytest.mark.parametrize("pool", ["cls", "mean"])
@pytest.mark.parametrize("release", sorted(RELEASES))
def test_each_release_layout_loads_computes_and_exports_back(release, pool):
    name, kwargs, *_ = RELEASES[release]
    torch.manual_seed(0)
    twin = torch_ref.ViT(**CFG, pool=pool, **kwargs).eval()
    sd = upstream_state_dict(twin, release)
    fm = flaxattn.ViT(**CFG, pool=pool, **kwargs, rngs=nnx.Rngs(1))
    fm.eval()
    graph = nnx.graphdef(fm)
    load_state_dict(fm, sd)
    assert torch_layout(fm) == name
    # The layout is remembered outside the module (issue 14): its graph is unchanged.
    assert nnx.graphdef(fm) == graph and not hasattr(fm, "torch_layout")
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 12)).astype(np.float32)
    with torch.no_grad():
        ref = twin(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(fm(jnp.asarray(x.transpose(0, 2, 3, 1))), ref, atol=1e-5)
    back = to_torch_state_dict(fm)
    assert sorted(back) == sorted(sd)
    for k, v in sd.items():
        np.testing.assert_array_equal(back[k], v, err_msg=k)


def test_no_head_layout_of_1_17():
    kwargs = RELEASES["1.26.11"][1]
    twin = torch_ref.ViT(**{**CFG, "num_classes": 0}, pool="mean", **kwargs)
    sd = upstream_state_dict(twin, "1.26.11")
    assert not any(k.startswith("mlp_head") for k in sd) and sd["cls_token"].shape == (0, 8)
    fm = flaxattn.ViT(**{**CFG, "num_classes": 0}, pool="mean", **kwargs, rngs=nnx.Rngs(0))
    load_state_dict(fm, sd)
    assert torch_layout(fm) == "vit-pytorch 1.16.1+"
    assert sorted(to_torch_state_dict(fm)) == sorted(sd)


def test_installed_release_keys_equal_the_table():
    torch.manual_seed(0)
    kwargs = {k: v for k, v in CFG.items() if k != "patch_size"}
    up = vit_pytorch().ViT(**kwargs, patch_size=(2, 3), pool="mean")
    twin = torch_ref.ViT(**kwargs, patch_size=(2, 3), pool="mean", **RELEASES["1.26.11"][1])
    ours = upstream_state_dict(twin, "1.26.11")
    assert {k: tuple(v.shape) for k, v in up.state_dict().items()} == {
        k: v.shape for k, v in ours.items()
    }


def test_rectangular_patch_grid_from_upstream():
    # 2 x 4 patches: vit-pytorch does not record the image size, so from_torch
    # cannot tell (8, 12) from (4, 24); a configured ViT loads the state_dict.
    jax.config.update("jax_enable_x64", True)
    torch.manual_seed(0)
    cfg = dict(CFG, patch_size=(4, 3), depth=1)
    up = vit_pytorch().ViT(**cfg, channels=2)
    with pytest.raises(ValueError, match="not a square grid.*load_state_dict"):
        from_torch(up)
    fm = flaxattn.ViT(
        **cfg, **RELEASES["1.26.11"][1], channels=2, param_dtype="float64", rngs=nnx.Rngs(0)
    )
    check_parity(up, fm, input_shapes=[(2, 2, 8, 12)], dtype="float64", perturb=0.1).assert_ok()
    load_state_dict(fm, up.state_dict())
    assert torch_layout(fm) == "vit-pytorch 1.16.1+"


def test_unknown_layout_lists_the_keys_that_did_not_match():
    fm = flaxattn.ViT(**CFG, rngs=nnx.Rngs(0))
    sd = to_torch_state_dict(fm)
    sd = {k.replace("transformer.layers", "blocks"): v for k, v in sd.items()}
    with pytest.raises(ConversionError) as err:
        load_state_dict(fm, sd)
    msg = str(err.value)
    assert "match neither the canonical layout nor a known one" in msg
    assert "unexpected: blocks.0.0.fn.to_qkv.weight" in msg
    assert "missing:    transformer.layers.1.1.fn.net.3.bias" in msg


def test_layout_of_another_configuration_is_refused():
    # 1.16.1+ keys (a final transformer.norm, a Linear head) into a seed-configured ViT.
    twin = torch_ref.ViT(**CFG, **RELEASES["1.26.11"][1])
    fm = flaxattn.ViT(**CFG, rngs=nnx.Rngs(0))
    with pytest.raises(ConversionError, match="unexpected: transformer.norm.weight"):
        load_state_dict(fm, upstream_state_dict(twin, "1.26.11"))


def _loss_and_grads(model):
    """A jitted ``(params, rest, x) -> (loss, grads, rest after the call)`` and its inputs."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p, rest, x):
        # Fresh Variables: NNX mutates (RNG counters) only in the trace that made them.
        m = nnx.merge(graphdef, p, jax.tree.map(lambda a: a, rest))
        return jnp.sum(m(x) ** 2), nnx.state(m, nnx.Not(nnx.Param))

    f = jax.jit(jax.value_and_grad(loss, has_aux=True))

    def run(p, r, x):
        (value, new_rest), grads = f(p, r, x)
        return value, grads, new_rest

    return run, params, rest


def test_scan_equals_unrolled_and_keeps_the_per_block_layout():
    # Train mode with dropout: each block keeps its own dropout stream, so the
    # masks, outputs and gradients of both agree, and the streams advance.
    kw = dict(CFG, dropout=0.2, emb_dropout=0.1)
    a = flaxattn.ViT(**kw, rngs=nnx.Rngs(0))
    b = flaxattn.ViT(**kw, scan=True, rngs=nnx.Rngs(0))
    assert sorted(to_torch_state_dict(a)) == sorted(to_torch_state_dict(b))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 12, 3)), jnp.float32)
    fa, pa, ra = _loss_and_grads(a)
    fb, pb, rb = _loss_and_grads(b)
    (la, ga, _), (lb, gb, rb2) = fa(pa, ra, x), fb(pb, rb, x)
    np.testing.assert_allclose(lb, la, rtol=1e-5)
    for u, v in zip(jax.tree.leaves(ga), jax.tree.leaves(gb), strict=True):
        np.testing.assert_allclose(v, u, rtol=1e-4, atol=1e-6)
    assert not np.isclose(fb(pb, rb2, x)[0], lb)


def _dot_count(depth: int, scan: bool) -> int:
    model = flaxattn.ViT(**dict(CFG, depth=depth), scan=scan, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    x = jnp.zeros((2, 8, 12, 3))

    def loss(p):
        return jnp.sum(nnx.merge(graphdef, p, rest)(x))

    text = jax.jit(jax.grad(loss)).lower(params).as_text()
    return text.count("dot_general")


def test_scanned_program_does_not_grow_with_depth():
    # What compile time follows: the unrolled program holds every block's
    # matmuls, the scanned one a single block's (times measured in the README).
    assert _dot_count(2, True) == _dot_count(6, True)
    assert _dot_count(6, False) > 2 * _dot_count(2, False)


def test_bfloat16_compute_with_float32_parameters():
    a = flaxattn.ViT(**CFG, rngs=nnx.Rngs(0))
    b = flaxattn.ViT(**CFG, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 12, 3)), jnp.float32)
    ya, yb = a(x), b(x)
    assert yb.dtype == jnp.bfloat16
    assert {v.dtype for v in jax.tree.leaves(nnx.state(b, nnx.Param))} == {jnp.dtype("float32")}
    assert float(jnp.max(jnp.abs(yb - ya)) / jnp.max(jnp.abs(ya))) < 5e-2
    b.train()
    f, params, rest = _loss_and_grads(b)
    loss, grads, _ = f(params, rest, x)
    assert np.isfinite(float(loss))
    for g in jax.tree.leaves(grads):
        assert g.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(g)))


def test_dropout_is_driven_by_rngs_and_off_in_eval():
    kw = dict(CFG, dropout=0.5, emb_dropout=0.5)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 12, 3)), jnp.float32)
    a, b = flaxattn.ViT(**kw, rngs=nnx.Rngs(0)), flaxattn.ViT(**kw, rngs=nnx.Rngs(0))
    y1, y2 = a(x), a(x)
    assert not np.allclose(y1, y2)  # a fresh mask per call
    np.testing.assert_array_equal(b(x), y1)  # the same seed draws the same masks
    a.eval()
    np.testing.assert_array_equal(a(x), a(x))
    ff = flaxattn.FeedForward(64, 256, dropout=0.5, rngs=nnx.Rngs(dropout=3, params=0))
    ff.net.layers[3] = ff.net.layers[4] = lambda h: h  # the first dropout alone
    zeros = float(jnp.mean(ff(jnp.ones((4, 16, 64))) == 0))
    assert 0.4 < zeros < 0.6


def test_torchvision_stand_in_only_when_missing():
    if not ensure_torchvision():
        pytest.skip("a real torchvision is installed")
    import torchvision.transforms as T

    assert vit_pytorch().ViT.__name__ == "ViT"
    with pytest.raises(ModuleNotFoundError, match="needs torchvision"):
        T.Compose([])
