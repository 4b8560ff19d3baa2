"""Axial attention and the axial image transformer (twin of ``flaxattn.layers.axial``).

Ho et al., "Axial Attention in Multidimensional Transformers", 2019.
https://arxiv.org/abs/1912.12180

Follows lucidrains/axial-attention 0.6.1 (``axial_attention/axial_attention.py``)
class for class, attribute for attribute: its state_dicts are upstream's, key
for key, for the reversible and the non-reversible transformer alike.

**Where the embedding is.** ``dim_index`` (``emb_dim_index``) is the embedding
axis of the input, as upstream, and means the same axis in the Flax twin.
Defaults are upstream's: ``AxialImageTransformer`` and
``AxialPositionalEmbedding`` take ``(B, C, H, W)`` (index ``1``),
``AxialAttention`` takes channels-last input (index ``-1``). The Flax twin
defaults to ``-1`` everywhere. ``ChanLayerNorm`` normalises axis 1 here, the
last axis in Flax.

``AxialImageTransformer(reversible=...)``: ``True`` is upstream's reversible
coupling (memory-saving backward), ``"coupling"`` the same function with plain
autograd, ``False`` upstream's plain residual stack (another function, other
keys). See the Flax module for details.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from torch_ref._checks import check_choice, check_positive
from torch_ref._twin import Twin
from torch_ref.layers.reversible import ReversibleSequence

REVERSIBLE_CHOICES = (True, False, "coupling")


def normalize_axis(index: int, total: int, name: str) -> int:
    """Upstream's ``index if index > 0 else index + total``, refusing the batch axis."""
    axis = index if index > 0 else index + total
    if not 1 <= axis < total:
        raise ValueError(
            f"`{name}` (={index}) must name a non-batch axis of a {total}-D input: "
            f"1..{total - 1} or {1 - total}..-1"
        )
    return axis


def calculate_permutations(num_dimensions: int, emb_dim: int) -> list[list[int]]:
    """Upstream's ``calculate_permutations``: per axial axis, ``[*rest, axial, emb]``."""
    total_dimensions = num_dimensions + 2
    emb_dim = normalize_axis(emb_dim, total_dimensions, "dim_index")
    axial_dims = [ind for ind in range(1, total_dimensions) if ind != emb_dim]
    permutations = []
    for axial_dim in axial_dims:
        last_two_dims = [axial_dim, emb_dim]
        dims_rest = sorted(set(range(total_dimensions)) - set(last_two_dims))
        permutations.append([*dims_rest, *last_two_dims])
    return permutations


def check_heads(dim: int, heads: int, dim_heads: int | None) -> int:
    """Upstream's ``dim_heads = default(dim_heads, dim // heads)``, refusing a remainder."""
    check_positive(dim=dim, heads=heads)
    if dim_heads is None:
        if dim % heads:
            raise ValueError(
                f"`dim` (={dim}) must be divisible by `heads` (={heads}), or pass `dim_heads`"
            )
        return dim // heads
    check_positive(dim_heads=dim_heads)
    return dim_heads


class ChanLayerNorm(Twin):
    """Layer norm over axis 1 dividing by ``std + eps``; ``g``, ``b`` are ``(1, dim, 1, 1)``.

    Shapes: ``(B, dim, H, W) -> (B, dim, H, W)``.
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        check_positive(dim=dim)
        self.eps = eps
        self.g = nn.Parameter(torch.ones(1, dim, 1, 1))
        self.b = nn.Parameter(torch.zeros(1, dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        std = torch.var(x, dim=1, unbiased=False, keepdim=True).sqrt()
        mean = torch.mean(x, dim=1, keepdim=True)
        return (x - mean) / (std + self.eps) * self.g + self.b


class PreNorm(Twin):
    """``fn(LayerNorm(x))`` over the last axis."""

    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.fn = fn
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.fn(self.norm(x), **kwargs)


class Sequential(Twin):
    """Upstream's non-reversible stack: ``x = x + f(x); x = x + g(x)`` per block."""

    def __init__(self, blocks: Sequence[Sequence[nn.Module]]):
        super().__init__()
        pairs = [list(b) for b in blocks]
        for pair in pairs:
            if len(pair) != 2:
                raise ValueError(f"`blocks` must hold (f, g) pairs, got one of {len(pair)}")
        self.blocks = nn.ModuleList([nn.ModuleList(p) for p in pairs])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for f, g in self.blocks:
            x = x + f(x)
            x = x + g(x)
        return x


class PermuteToFrom(Twin):
    """Apply ``fn`` to ``x`` permuted to ``(rest..., axial, emb)`` and flattened to
    ``(-1, axial, emb)``, then restore the shape and order."""

    def __init__(self, permutation: Sequence[int], fn: nn.Module):
        super().__init__()
        self.fn = fn
        self.permutation = tuple(permutation)
        self.inv_permutation = tuple(
            sorted(range(len(self.permutation)), key=self.permutation.__getitem__)
        )

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        axial = x.permute(*self.permutation).contiguous()
        shape = axial.shape
        axial = self.fn(axial.reshape(-1, *shape[-2:]), **kwargs)
        return axial.reshape(*shape).permute(*self.inv_permutation).contiguous()


class AxialPositionalEmbedding(Twin):
    """Learned per-axis embeddings ``param_{i}`` added to ``x``.

    Deviation from upstream: a negative ``emb_dim_index`` other than ``-1`` is
    normalised first (upstream builds wrong shapes for it); the input's axial
    sizes must equal ``shape``.

    Shapes: ``x -> x.shape``, e.g. ``(B, dim, H, W)`` with the default index 1.
    """

    def __init__(self, dim: int, shape: Sequence[int], emb_dim_index: int = 1):
        super().__init__()
        shape = tuple(shape)
        check_positive(dim=dim, **{f"shape[{i}]": s for i, s in enumerate(shape)})
        if not shape:
            raise ValueError("`shape` (=()) must name at least one axial size")
        total = len(shape) + 2
        self.emb = normalize_axis(emb_dim_index, total, "emb_dim_index")
        self.dim = dim
        self.shape = shape
        self.num_axials = len(shape)
        axial_axes = [a for a in range(1, total) if a != self.emb]
        for i, (size, axis) in enumerate(zip(shape, axial_axes, strict=True)):
            pshape = [1] * total
            pshape[self.emb] = dim
            pshape[axis] = size
            setattr(self, f"param_{i}", nn.Parameter(torch.randn(*pshape)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        axial = tuple(s for a, s in enumerate(x.shape) if a not in (0, self.emb))
        if x.ndim != self.num_axials + 2 or x.shape[self.emb] != self.dim or axial != self.shape:
            raise ValueError(
                f"AxialPositionalEmbedding: expected axial sizes {self.shape} and {self.dim} "
                f"channels at axis {self.emb}, got `x` of shape {tuple(x.shape)}"
            )
        for i in range(self.num_axials):
            x = x + getattr(self, f"param_{i}")
        return x


class SelfAttention(Twin):
    """Multi-head attention over axis 1 of ``(B, T, dim)`` (upstream's), optional ``kv``.

    Deviation from upstream: with ``dim_heads=None``, ``dim`` must be divisible
    by ``heads`` (upstream silently uses ``dim // heads``).

    Shapes: ``x (B, T, dim)``, ``kv (B, S, dim)`` -> ``(B, T, dim)``.
    """

    def __init__(self, dim: int, heads: int, dim_heads: int | None = None):
        super().__init__()
        self.dim_heads = check_heads(dim, heads, dim_heads)
        dim_hidden = self.dim_heads * heads
        self.heads = heads
        self.to_q = nn.Linear(dim, dim_hidden, bias=False)
        self.to_kv = nn.Linear(dim, 2 * dim_hidden, bias=False)
        self.to_out = nn.Linear(dim_hidden, dim)

    def forward(self, x: torch.Tensor, kv: torch.Tensor | None = None) -> torch.Tensor:
        kv = x if kv is None else kv
        q, k, v = (self.to_q(x), *self.to_kv(kv).chunk(2, dim=-1))
        b, h, e = x.shape[0], self.heads, self.dim_heads

        def heads_first(t):
            return t.reshape(b, -1, h, e).transpose(1, 2)

        q, k, v = map(heads_first, (q, k, v))
        dots = torch.einsum("bhie,bhje->bhij", q, k) * (e**-0.5)
        out = torch.einsum("bhij,bhje->bhie", dots.softmax(dim=-1), v)
        return self.to_out(out.transpose(1, 2).reshape(b, -1, h * e))


class AxialAttention(Twin):
    """Self-attention along each axial axis; see ``flaxattn.layers.axial.AxialAttention``.

    Shapes: ``x -> x.shape``; the default ``dim_index=-1`` is channels-last, as upstream.
    """

    def __init__(
        self,
        dim: int,
        num_dimensions: int = 2,
        heads: int = 8,
        dim_heads: int | None = None,
        dim_index: int = -1,
        sum_axial_out: bool = True,
    ):
        super().__init__()
        check_positive(num_dimensions=num_dimensions)
        check_heads(dim, heads, None)
        self.dim = dim
        self.total_dimensions = num_dimensions + 2
        self.dim_index = normalize_axis(dim_index, self.total_dimensions, "dim_index")
        self.axial_attentions = nn.ModuleList(
            [
                PermuteToFrom(perm, SelfAttention(dim, heads, dim_heads))
                for perm in calculate_permutations(num_dimensions, dim_index)
            ]
        )
        self.sum_axial_out = sum_axial_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != self.total_dimensions or x.shape[self.dim_index] != self.dim:
            raise ValueError(
                f"AxialAttention: expected a {self.total_dimensions}-D `x` with {self.dim} "
                f"channels at axis {self.dim_index}, got {tuple(x.shape)}"
            )
        if self.sum_axial_out:
            return sum(attn(x) for attn in self.axial_attentions)
        for attn in self.axial_attentions:
            x = attn(x)
        return x


def _feed_forward(dim: int) -> nn.Sequential:
    return nn.Sequential(
        ChanLayerNorm(dim),
        nn.Conv2d(dim, dim * 4, 3, padding=1),
        nn.LeakyReLU(inplace=True),
        nn.Conv2d(dim * 4, dim, 3, padding=1),
    )


class AxialImageTransformer(Twin):
    """Axial attention + conv feed-forward layers; see ``flaxattn.layers.axial``.

    Deviation from upstream: any ``dim_index`` works (the input is moved to
    ``(B, C, H, W)`` for the blocks; upstream's conv feed-forward only runs with
    ``dim_index=1``); ``reversible="coupling"`` is new.

    Shapes: ``x -> x.shape``; ``(B, dim, H, W)`` with the default ``dim_index=1``.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int = 8,
        dim_heads: int | None = None,
        dim_index: int = 1,
        reversible: bool | str = True,
        axial_pos_emb_shape: Sequence[int] | None = None,
    ):
        super().__init__()
        check_positive(depth=depth)
        check_heads(dim, heads, dim_heads)
        check_choice("reversible", reversible, REVERSIBLE_CHOICES)
        self.dim = dim
        self.dim_index = normalize_axis(dim_index, 4, "dim_index")
        if axial_pos_emb_shape is not None:
            if len(tuple(axial_pos_emb_shape)) != 2:
                raise ValueError(f"`axial_pos_emb_shape` (={axial_pos_emb_shape!r}) must be (H, W)")
            self.pos_emb = AxialPositionalEmbedding(dim, axial_pos_emb_shape, self.dim_index)
        else:
            self.pos_emb = nn.Identity()
        perms = calculate_permutations(2, 1)
        layers = []
        for _ in range(depth):
            layers.append(
                [
                    PermuteToFrom(p, PreNorm(dim, SelfAttention(dim, heads, dim_heads)))
                    for p in perms
                ]
            )
            layers.append([_feed_forward(dim), _feed_forward(dim)])
        if reversible is False:
            self.layers = Sequential(layers)
        else:
            self.layers = ReversibleSequence(layers, reconstruct=reversible is True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[self.dim_index] != self.dim:
            raise ValueError(
                f"AxialImageTransformer: expected a 4-D `x` with {self.dim} channels at axis "
                f"{self.dim_index}, got {tuple(x.shape)}"
            )
        x = self.pos_emb(x)
        x = torch.movedim(x, self.dim_index, 1)
        return torch.movedim(self.layers(x), 1, self.dim_index)
