"""Axial attention and the axial image transformer.

Ho et al., "Axial Attention in Multidimensional Transformers", 2019.
https://arxiv.org/abs/1912.12180

Follows lucidrains/axial-attention (PyPI ``axial-attention`` 0.6.1,
``axial_attention/axial_attention.py``) class for class, with its attribute
names, so upstream state_dicts load key for key.

**Where the embedding is.** Every module takes the index of its embedding
(channel) axis, ``dim_index`` (``emb_dim_index`` for the positional
embedding); the other non-batch axes are the axial ones, attended in order.
The index means the same axis in both twins and ``from_torch`` keeps it, so a
converted module takes the same tensor layout as its torch original. Only the
defaults differ: flaxattn is channels-last (``-1``: ``(B, H, W, C)``) for every
class, while torch_ref keeps upstream's defaults (``AxialImageTransformer``
and ``AxialPositionalEmbedding``: ``1``, i.e. ``(B, C, H, W)``;
``AxialAttention``: ``-1``). Only the positional embedding's parameter shapes
depend on the index; a state_dict saved for another index loads with
``load_state_dict(..., layout="channels_first")`` (see
``flaxattn.convert.maps.axial``).

``AxialImageTransformer`` runs its blocks channels-last whatever
``dim_index`` is (it moves the embedding axis last on entry and back on exit).

Three ways to run its stack (``reversible``):

- ``True`` (default, upstream): the reversible two-stream coupling
  ``y1 = x1 + f(x2)``, ``y2 = x2 + g(y1)`` on two copies of the input, output
  the mean of the streams, trained with a backward that reconstructs the
  activations (:mod:`flaxattn.ops.reversible`): activation memory flat in depth.
- ``"coupling"``: the same function (same parameters, same state_dict keys),
  differentiated by plain autodiff (activations stored).
- ``False`` (upstream): plain residuals ``x = x + f(x); x = x + g(x)``, a
  *different* function with different state_dict keys
  (``layers.blocks.{i}.{0,1}...`` instead of ``layers.blocks.{i}.{f,g}.net...``).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from flaxattn.layers.basic import Conv2d, Dtype, LayerNorm, Linear
from flaxattn.layers.reversible import ReversibleSequence
from flaxattn.ops.checks import check_choice, check_input, check_positive
from flaxattn.ops.fused import check_attention_impl, fused_attention, resolve_attention_impl

REVERSIBLE_CHOICES = (True, False, "coupling")


def normalize_axis(index: int, total: int, name: str) -> int:
    """Upstream's rule (``index if index > 0 else index + total``), refusing the batch axis."""
    axis = index if index > 0 else index + total
    if not 1 <= axis < total:
        raise ValueError(
            f"`{name}` (={index}) must name a non-batch axis of a {total}-D input: "
            f"1..{total - 1} or {1 - total}..-1"
        )
    return axis


def calculate_permutations(num_dimensions: int, emb_dim: int) -> list[tuple[int, ...]]:
    """Per axial axis, the permutation to ``(rest..., axial, emb)``, as upstream computes it."""
    total = num_dimensions + 2
    emb = normalize_axis(emb_dim, total, "dim_index")
    perms = []
    for axial in range(1, total):
        if axial == emb:
            continue
        rest = [d for d in range(total) if d not in (axial, emb)]
        perms.append((*rest, axial, emb))
    return perms


def check_heads(dim: int, heads: int, dim_heads: int | None) -> int:
    """The per-head width; ``dim`` must split evenly across ``heads`` unless it is given."""
    check_positive(dim=dim, heads=heads)
    if dim_heads is None:
        if dim % heads:
            raise ValueError(
                f"`dim` (={dim}) must be divisible by `heads` (={heads}), or pass `dim_heads`"
            )
        return dim // heads
    check_positive(dim_heads=dim_heads)
    return dim_heads


class ChanLayerNorm(nnx.Module):
    """Channel layer norm dividing by ``std + eps`` (as upstream), not ``sqrt(var + eps)``.

    flaxattn normalises the last axis (channels-last); the torch_ref twin axis 1.
    ``g`` and ``b`` are ``(dim,)`` here and ``(1, dim, 1, 1)`` in PyTorch.

    Args:
      dim: channels.
      eps: added to the (biased) standard deviation.

    Shapes: ``(..., dim) -> (..., dim)``.
    """

    def __init__(
        self,
        dim: int,
        eps: float = 1e-5,
        *,
        dtype: Dtype = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_positive(dim=dim)
        self.dim = dim
        self.eps = eps
        self.dtype = dtype
        self.g = nnx.Param(jnp.ones((dim,), param_dtype))
        self.b = nnx.Param(jnp.zeros((dim,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.shape[-1] != self.dim:
            raise ValueError(
                f"ChanLayerNorm: expected `x` of shape (..., {self.dim}), got {tuple(x.shape)}"
            )
        out_dtype = self.dtype or jnp.promote_types(x.dtype, self.g[...].dtype)
        xs = x.astype(jnp.promote_types(out_dtype, jnp.float32))
        mean = xs.mean(-1, keepdims=True)
        std = jnp.sqrt(jnp.square(xs - mean).mean(-1, keepdims=True))
        y = (xs - mean) / (std + self.eps) * self.g[...] + self.b[...]
        return y.astype(out_dtype)


class PreNorm(nnx.Module):
    """``fn(LayerNorm(x))`` over the last axis.

    Args:
      dim: features of the last axis.
      fn: the wrapped module.
    """

    def __init__(
        self,
        dim: int,
        fn: nnx.Module,
        *,
        dtype: Dtype = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.fn = fn
        self.norm = LayerNorm(dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array, **kwargs) -> jax.Array:
        return self.fn(self.norm(x), **kwargs)


class Sequential(nnx.Module):
    """Upstream's non-reversible stack: ``x = x + f(x); x = x + g(x)`` per ``(f, g)`` block.

    Not the reversible coupling's function. The residual stream is kept in at
    least float32. Shapes: ``x -> x.shape``.
    """

    def __init__(self, blocks: Sequence[Sequence[nnx.Module]]):
        pairs = [list(b) for b in blocks]
        for pair in pairs:
            if len(pair) != 2:
                raise ValueError(f"`blocks` must hold (f, g) pairs, got one of {len(pair)}")
        self.blocks = nnx.List([nnx.List(p) for p in pairs])

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        for f, g in self.blocks:
            x = x + f(x).astype(x.dtype)
            x = x + g(x).astype(x.dtype)
        return x


class PermuteToFrom(nnx.Module):
    """Apply ``fn`` with one axis moved to ``-2`` and the embedding to ``-1``, then move back.

    ``permutation`` is upstream's (``calculate_permutations``). ``fn`` sees the
    other axes as leading batch axes (upstream flattens them into one).
    """

    def __init__(self, permutation: Sequence[int], fn: nnx.Module):
        self.permutation = tuple(permutation)
        self.inv_permutation = tuple(
            sorted(range(len(self.permutation)), key=self.permutation.__getitem__)
        )
        self.fn = fn

    def __call__(self, x: jax.Array, **kwargs) -> jax.Array:
        identity = self.permutation == tuple(range(x.ndim))
        y = self.fn(x if identity else jnp.transpose(x, self.permutation), **kwargs)
        return y if identity else jnp.transpose(y, self.inv_permutation)


class AxialPositionalEmbedding(nnx.Module):
    """One learned embedding per axial axis, broadcast over the others and added to ``x``.

    Args:
      dim: embedding size (the size of axis ``emb_dim_index``).
      shape: the axial sizes, in axis order (``(H, W)`` for images).
      emb_dim_index: the embedding axis of the ``len(shape) + 2``-D input.

    Parameters ``param_{i}`` have shape 1 everywhere but ``dim`` at the embedding
    axis and ``shape[i]`` at the ``i``-th axial axis (upstream's layout), e.g.
    ``(1, H, 1, dim)`` and ``(1, 1, W, dim)`` channels-last; they are drawn from
    ``N(0, 1)`` as upstream's ``torch.randn``.

    Deviation from upstream: a negative ``emb_dim_index`` other than ``-1`` is
    normalised first (upstream builds wrong shapes for it); the input's axial
    sizes must equal ``shape`` (upstream fails in broadcasting, or silently
    broadcasts a size-1 input axis).

    Shapes: ``x -> x.shape``.
    """

    def __init__(
        self,
        dim: int,
        shape: Sequence[int],
        emb_dim_index: int = -1,
        *,
        dtype: Dtype = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        shape = tuple(shape)
        check_positive(dim=dim, **{f"shape[{i}]": s for i, s in enumerate(shape)})
        if not shape:
            raise ValueError("`shape` (=()) must name at least one axial size")
        total = len(shape) + 2
        self.emb = normalize_axis(emb_dim_index, total, "emb_dim_index")
        self.dim = dim
        self.shape = shape
        self.num_axials = len(shape)
        self.dtype = dtype
        axial_axes = [a for a in range(1, total) if a != self.emb]
        for i, (size, axis) in enumerate(zip(shape, axial_axes, strict=True)):
            pshape = [1] * total
            pshape[self.emb] = dim
            pshape[axis] = size
            setattr(
                self, f"param_{i}", nnx.Param(jax.random.normal(rngs.params(), pshape, param_dtype))
            )

    def __call__(self, x: jax.Array) -> jax.Array:
        total = self.num_axials + 2
        axial = tuple(s for a, s in enumerate(x.shape) if a not in (0, self.emb))
        if x.ndim != total or x.shape[self.emb] != self.dim or axial != self.shape:
            expected = ["B"] + [str(s) for s in self.shape]
            expected.insert(self.emb, str(self.dim))
            raise ValueError(
                f"AxialPositionalEmbedding: expected `x` of shape ({', '.join(expected)}) "
                f"(embedding axis {self.emb}, axial `shape` (={self.shape})), got {tuple(x.shape)}"
            )
        dtype = self.dtype or x.dtype
        out = x.astype(dtype)
        for i in range(self.num_axials):
            out = out + getattr(self, f"param_{i}")[...].astype(dtype)
        return out


class SelfAttention(nnx.Module):
    """Multi-head attention over the second-to-last axis (upstream's ``SelfAttention``).

    ``q = to_q(x)``, ``k, v = to_kv(kv)`` (bias-free), softmax of ``q k^T / sqrt(dim_heads)``,
    then ``to_out`` (with bias). Exported at the top level as ``AxialSelfAttention``.

    Args:
      dim: input and output features.
      heads: attention heads.
      dim_heads: width per head; default ``dim // heads``.
      attention_impl: ``'auto'`` (einsums; cuDNN flash attention on an NVIDIA GPU for
        bfloat16/float16), ``'xla'`` or ``'cudnn'`` (``jax.nn.dot_product_attention``);
        see :mod:`flaxattn.ops.fused`. Flax only; parameters are the same.

    Deviation from upstream: with ``dim_heads=None``, ``dim`` must be divisible
    by ``heads`` (upstream silently uses ``dim // heads``); ``from_torch``
    passes upstream's ``dim_heads`` explicitly, so every upstream module converts.

    Shapes: ``x (*batch, T, dim)``, optional ``kv (*batch, S, dim)`` (cross
    attention) ``-> (*batch, T, dim)``; upstream takes one batch axis.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        dim_heads: int | None = None,
        *,
        attention_impl: str = "auto",
        dtype: Dtype = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.dim_heads = check_heads(dim, heads, dim_heads)
        check_attention_impl(attention_impl)
        self.attention_impl = attention_impl
        self.dim = dim
        self.heads = heads
        hidden = self.dim_heads * heads
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.to_q = Linear(dim, hidden, bias=False, **kw)
        self.to_kv = Linear(dim, 2 * hidden, bias=False, **kw)
        self.to_out = Linear(hidden, dim, **kw)

    def __call__(self, x: jax.Array, kv: jax.Array | None = None) -> jax.Array:
        d = self.dim
        if x.ndim < 3 or x.shape[-1] != d:
            raise ValueError(
                f"SelfAttention: expected `x` of shape (B, T, {d}), got {tuple(x.shape)}"
            )
        if kv is None:
            kv = x
        elif kv.shape[:-2] != x.shape[:-2] or kv.shape[-1] != d:
            raise ValueError(
                f"SelfAttention: expected `kv` of shape ({', '.join(map(str, x.shape[:-2]))}, "
                f"S, {d}), got {tuple(kv.shape)}"
            )
        h, e = self.heads, self.dim_heads
        q = self.to_q(x).reshape(*x.shape[:-1], h, e)
        k, v = jnp.split(self.to_kv(kv), 2, axis=-1)
        k = k.reshape(*kv.shape[:-1], h, e)
        v = v.reshape(*kv.shape[:-1], h, e)
        impl = resolve_attention_impl(
            self.attention_impl,
            dtype=jnp.result_type(q, k, v),
            head_dim=e,
            where="SelfAttention",
        )
        if impl == "default":
            dots = jnp.einsum("...ihe,...jhe->...hij", q, k) * e**-0.5
            # The softmax runs in at least float32 when the layers compute in bfloat16.
            attn = jax.nn.softmax(dots.astype(jnp.promote_types(dots.dtype, jnp.float32)), axis=-1)
            out = jnp.einsum("...hij,...jhe->...ihe", attn.astype(v.dtype), v)
        else:  # fused: one batch axis, (B, T, heads, e)
            lead = q.shape[:-3]
            q = q * jnp.asarray(e**-0.5, q.dtype)
            flat = [t.reshape(-1, *t.shape[-3:]) for t in (q, k, v)]
            out = fused_attention(*flat, impl).reshape(*lead, *q.shape[-3:])
        return self.to_out(out.reshape(*x.shape[:-1], h * e))


class AxialAttention(nnx.Module):
    """Self-attention along each axial axis of a ``num_dimensions + 2``-D input.

    Args:
      dim: embedding size (the size of axis ``dim_index``).
      num_dimensions: axial axes (2 for images, 3 for video).
      heads: attention heads (must divide ``dim``, as upstream asserts).
      dim_heads: width per head; default ``dim // heads``.
      dim_index: the embedding axis; ``-1`` (channels-last) here and upstream.
      sum_axial_out: sum the attentions over each axis of the input (True), or
        apply them one after another (False).
      attention_impl: see :class:`SelfAttention` (Flax only).

    Example::

      >>> attn = AxialAttention(16, heads=4, rngs=nnx.Rngs(0))
      >>> attn(jnp.ones((2, 5, 7, 16))).shape
      (2, 5, 7, 16)

    Shapes: ``x -> x.shape``, e.g. ``(B, H, W, dim)``.
    """

    def __init__(
        self,
        dim: int,
        num_dimensions: int = 2,
        heads: int = 8,
        dim_heads: int | None = None,
        dim_index: int = -1,
        sum_axial_out: bool = True,
        *,
        attention_impl: str = "auto",
        dtype: Dtype = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_positive(num_dimensions=num_dimensions)
        check_heads(dim, heads, None)  # upstream asserts divisibility even with dim_heads
        self.dim = dim
        self.total_dimensions = num_dimensions + 2
        self.dim_index = normalize_axis(dim_index, self.total_dimensions, "dim_index")
        self.sum_axial_out = sum_axial_out
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.axial_attentions = nnx.List(
            [
                PermuteToFrom(
                    perm, SelfAttention(dim, heads, dim_heads, attention_impl=attention_impl, **kw)
                )
                for perm in calculate_permutations(num_dimensions, dim_index)
            ]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != self.total_dimensions or x.shape[self.dim_index] != self.dim:
            layout = ["B"] + [f"A{i}" for i in range(1, self.total_dimensions - 1)]
            layout.insert(self.dim_index, str(self.dim))
            raise ValueError(
                f"AxialAttention: expected `x` of shape ({', '.join(layout)}) "
                f"(embedding axis {self.dim_index}), got {tuple(x.shape)}"
            )
        if self.sum_axial_out:
            out = None
            for attn in self.axial_attentions:
                y = attn(x)
                out = y if out is None else out + y
            return out
        for attn in self.axial_attentions:
            x = attn(x)
        return x


def _feed_forward(dim: int, kw: dict) -> nnx.Sequential:
    # Upstream's get_ff: ChanLayerNorm, 3x3 conv to 4*dim, LeakyReLU(0.01), 3x3 conv back.
    return nnx.Sequential(
        ChanLayerNorm(dim, **kw),
        Conv2d(dim, dim * 4, 3, padding=1, **kw),
        jax.nn.leaky_relu,
        Conv2d(dim * 4, dim, 3, padding=1, **kw),
    )


class AxialImageTransformer(nnx.Module):
    """Axial attention along H then W, each followed by a conv feed-forward, ``depth`` times.

    Per layer: an attention block ``(f, g)`` = (pre-norm attention along the
    first spatial axis, along the second), then a feed-forward block
    ``(f, g)`` = two of upstream's feed-forwards (``ChanLayerNorm``, 3x3 conv to
    ``4 * dim``, LeakyReLU, 3x3 conv). How the blocks combine is ``reversible``
    (see the module docstring).

    Args:
      dim: channels.
      depth: layers.
      heads: attention heads.
      dim_heads: width per head; default ``dim // heads``.
      dim_index: the channel axis of the 4-D input: ``-1`` here (``(B, H, W, C)``),
        ``1`` upstream (``(B, C, H, W)``).
      reversible: ``True`` (reversible coupling, memory-saving backward),
        ``"coupling"`` (the same function, plain autodiff) or ``False``
        (upstream's plain residual stack, another function).
      axial_pos_emb_shape: ``(H, W)`` to add an :class:`AxialPositionalEmbedding`
        first; the input must then have exactly that size.
      attention_impl: see :class:`SelfAttention` (Flax only).

    Deviation from upstream: any ``dim_index`` works (upstream's conv
    feed-forward only runs with ``dim_index=1``).

    Example::

      >>> ait = AxialImageTransformer(16, 1, heads=4, rngs=nnx.Rngs(0))
      >>> ait(jnp.ones((2, 6, 5, 16))).shape
      (2, 6, 5, 16)

    Shapes: ``x -> x.shape``; the output is in the stream dtype (at least float32).
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int = 8,
        dim_heads: int | None = None,
        dim_index: int = -1,
        reversible: bool | str = True,
        axial_pos_emb_shape: Sequence[int] | None = None,
        *,
        attention_impl: str = "auto",
        dtype: Dtype = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_positive(depth=depth)
        check_heads(dim, heads, dim_heads)
        check_choice("reversible", reversible, REVERSIBLE_CHOICES)
        self.dim = dim
        self.dim_index = normalize_axis(dim_index, 4, "dim_index")
        self.reversible = reversible
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        if axial_pos_emb_shape is not None:
            if len(tuple(axial_pos_emb_shape)) != 2:
                raise ValueError(f"`axial_pos_emb_shape` (={axial_pos_emb_shape!r}) must be (H, W)")
            self.pos_emb = AxialPositionalEmbedding(dim, axial_pos_emb_shape, self.dim_index, **kw)
        else:
            self.pos_emb = nnx.data(None)
        # The blocks always run channels-last; the input is moved there on entry.
        perms = calculate_permutations(2, -1)
        layers = []
        for _ in range(depth):
            layers.append(
                [
                    PermuteToFrom(
                        p,
                        PreNorm(
                            dim,
                            SelfAttention(
                                dim, heads, dim_heads, attention_impl=attention_impl, **kw
                            ),
                            **kw,
                        ),
                    )
                    for p in perms
                ]
            )
            layers.append([_feed_forward(dim, kw), _feed_forward(dim, kw)])
        if reversible is False:
            self.layers = Sequential(layers)
        else:
            self.layers = ReversibleSequence(layers, reconstruct=reversible is True)

    def __call__(self, x: jax.Array) -> jax.Array:
        layout = ["B", "H", "W"]
        layout.insert(self.dim_index, str(self.dim))
        check_input(x, rank=4, layout=f"({', '.join(layout)})", where="AxialImageTransformer")
        if x.shape[self.dim_index] != self.dim:
            raise ValueError(
                f"AxialImageTransformer: expected `x` of shape ({', '.join(layout)}), "
                f"got {tuple(x.shape)}"
            )
        if self.pos_emb is not None:
            x = self.pos_emb(x)
        x = jnp.moveaxis(x, self.dim_index, -1)
        return jnp.moveaxis(self.layers(x), -1, self.dim_index)
