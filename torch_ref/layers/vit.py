"""Vision Transformer (twin of ``flaxattn.layers.vit``), NCHW images.

Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image
Recognition at Scale", ICLR 2021. https://arxiv.org/abs/2010.11929

The default configuration is lucidrains/vit-pytorch ``vit_pytorch/vit.py`` as released
in 0.30-0.40 (``PreNorm`` wrappers, ``mlp_head = Sequential(LayerNorm, Linear)``),
and its state_dict keys are our canonical layout. Keyword arguments past
0.40's (``patch_norm``, ``final_norm``, ``mean_with_cls``, ``scale``) reproduce
the functions of the other vit-pytorch releases, so their checkpoints compute
what they computed there; ``flaxattn.convert.maps.vit`` maps their key layouts.
"""

from __future__ import annotations

import torch
from einops import rearrange, repeat
from einops.layers.torch import Rearrange
from torch import nn

from torch_ref._checks import check_choice, check_int, check_pair, check_positive, check_rate
from torch_ref._twin import Twin


def pair(t) -> tuple[int, int]:
    return tuple(t) if isinstance(t, (tuple, list)) else (t, t)


def _check_dropout(**rates: float) -> None:
    check_rate(**rates)


class PreNorm(Twin):
    """``fn(LayerNorm(x))``. Shapes: ``(B, N, dim) -> fn's output``."""

    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        check_positive(dim=dim)
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x))


class FeedForward(Twin):
    """``Linear -> GELU (exact) -> Dropout -> Linear -> Dropout``. Shapes: ``(B, N, dim)``."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0):
        super().__init__()
        check_positive(dim=dim, hidden_dim=hidden_dim)
        _check_dropout(dropout=dropout)
        self.net = nn.Sequential(
            nn.Linear(dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Attention(Twin):
    """Multi-head self-attention, no qkv bias. Shapes: ``(B, N, dim) -> (B, N, dim)``.

    ``to_out`` is an identity when ``heads == 1 and dim_head == dim``. ``scale``
    defaults to ``dim_head ** -0.5``; vit-pytorch before 0.6.7 used ``dim ** -0.5``.
    """

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        dim_head: int = 64,
        dropout: float = 0.0,
        scale: float | None = None,
    ):
        super().__init__()
        check_positive(dim=dim, heads=heads, dim_head=dim_head)
        _check_dropout(dropout=dropout)
        inner_dim = dim_head * heads
        project_out = not (heads == 1 and dim_head == dim)
        self.heads = heads
        self.scale = dim_head**-0.5 if scale is None else scale
        self.attend = nn.Softmax(dim=-1)
        self.dropout = nn.Dropout(dropout)
        self.to_qkv = nn.Linear(dim, inner_dim * 3, bias=False)
        self.to_out = (
            nn.Sequential(nn.Linear(inner_dim, dim), nn.Dropout(dropout))
            if project_out
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.to_qkv(x).chunk(3, dim=-1)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in qkv)
        dots = torch.matmul(q, k.transpose(-1, -2)) * self.scale
        attn = self.dropout(self.attend(dots))
        out = rearrange(torch.matmul(attn, v), "b h n d -> b n (h d)")
        return self.to_out(out)


class Transformer(Twin):
    """``depth`` pre-norm blocks ``x + Attention(LN(x))``, ``x + FeedForward(LN(x))``.

    ``final_norm=True`` adds a LayerNorm over every output token (``norm``), as
    vit-pytorch 1.4 and later do. Shapes: ``(B, N, dim) -> (B, N, dim)``.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        dim_head: int,
        mlp_dim: int,
        dropout: float = 0.0,
        final_norm: bool = False,
        scale: float | None = None,
    ):
        super().__init__()
        check_positive(depth=depth)
        self.layers = nn.ModuleList(
            [
                nn.ModuleList(
                    [
                        PreNorm(dim, Attention(dim, heads, dim_head, dropout, scale)),
                        PreNorm(dim, FeedForward(dim, mlp_dim, dropout)),
                    ]
                )
                for _ in range(depth)
            ]
        )
        self.norm = nn.LayerNorm(dim) if final_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for attn, ff in self.layers:
            x = attn(x) + x
            x = ff(x) + x
        return self.norm(x) if self.norm is not None else x


class ViT(Twin):
    """Vision Transformer classifier.

    Args:
      image_size: ``H`` or ``(H, W)``.
      patch_size: ``P`` or ``(PH, PW)``; must divide the image size.
      num_classes: logits; ``0``: no head, the output is the Transformer's tokens.
      dim, depth, heads, dim_head, mlp_dim: Transformer width, blocks, heads,
        width per head, hidden width of the feed-forward.
      pool: ``'cls'`` (the cls token's output) or ``'mean'`` (mean over tokens).
      channels: image channels.
      dropout: in attention and feed-forward; emb_dropout: on the embedded tokens.
      patch_norm: LayerNorms before and after the patch projection (dual
        PatchNorm, vit-pytorch 1.0 and later).
      final_norm: ``'pooled'``: the head is ``Sequential(LayerNorm, Linear)`` on
        the pooled token (vit-pytorch before 1.4); ``'tokens'``:
        ``transformer.norm`` normalises every token and the head is a Linear
        (vit-pytorch 1.4 and later). Equal functions for ``pool='cls'``.
      mean_with_cls: with ``pool='mean'``, keep a cls token in the sequence and
        average over it too (vit-pytorch before 1.16); ``False``: no cls token.
      scale: attention logit scale, default ``dim_head ** -0.5``.

    Shapes: ``(B, channels, H, W) -> (B, num_classes)``, or ``(B, N, dim)`` tokens
    when ``num_classes == 0`` (``N`` = patches, plus one with a cls token).

    Deviation from upstream: an image of another size or channel count is a
    ``ValueError``; upstream slices ``pos_embedding`` to the token count, so it
    silently runs smaller images, and any image with the same number of patches,
    with position embeddings that belong to other positions. Bad arguments are
    ``ValueError``s, not ``assert``s.
    """

    def __init__(
        self,
        *,
        image_size: int | tuple[int, int],
        patch_size: int | tuple[int, int],
        num_classes: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_dim: int,
        pool: str = "cls",
        channels: int = 3,
        dim_head: int = 64,
        dropout: float = 0.0,
        emb_dropout: float = 0.0,
        patch_norm: bool = False,
        final_norm: str = "pooled",
        mean_with_cls: bool = True,
        scale: float | None = None,
    ):
        super().__init__()
        (ih, iw), (ph, pw) = (
            check_pair("image_size", image_size),
            check_pair("patch_size", patch_size),
        )
        check_positive(image_size=min(ih, iw), patch_size=min(ph, pw), dim=dim, channels=channels)
        if ih % ph or iw % pw:
            raise ValueError(
                f"`image_size` (={(ih, iw)}) must be divisible by `patch_size` (={(ph, pw)})"
            )
        check_choice("pool", pool, ("cls", "mean"))
        check_choice("final_norm", final_norm, ("pooled", "tokens"))
        check_int(num_classes=num_classes)
        if num_classes < 0:
            raise ValueError(f"`num_classes` (={num_classes}) must be >= 0")
        _check_dropout(emb_dropout=emb_dropout)
        num_patches = (ih // ph) * (iw // pw)
        patch_dim = channels * ph * pw
        num_cls = 1 if pool == "cls" or mean_with_cls else 0
        self.image_size, self.patch_size, self.channels = (ih, iw), (ph, pw), channels

        embed = [nn.Linear(patch_dim, dim)]
        if patch_norm:
            embed = [nn.LayerNorm(patch_dim), *embed, nn.LayerNorm(dim)]
        self.to_patch_embedding = nn.Sequential(
            Rearrange("b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=ph, p2=pw), *embed
        )
        self.pos_embedding = nn.Parameter(torch.randn(1, num_patches + num_cls, dim))
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim)) if num_cls else None
        self.dropout = nn.Dropout(emb_dropout)
        self.transformer = Transformer(
            dim, depth, heads, dim_head, mlp_dim, dropout, final_norm == "tokens", scale
        )
        self.pool = pool
        self.to_latent = nn.Identity()
        if num_classes == 0:
            self.mlp_head = None
        elif final_norm == "tokens":
            self.mlp_head = nn.Linear(dim, num_classes)
        else:
            self.mlp_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        expected = (self.channels, *self.image_size)
        if img.ndim != 4 or tuple(img.shape[1:]) != expected:
            raise ValueError(
                f"ViT: expected `img` of shape (B, {', '.join(map(str, expected))}), "
                f"got {tuple(img.shape)}"
            )
        x = self.to_patch_embedding(img)
        if self.cls_token is not None:
            cls_tokens = repeat(self.cls_token, "1 n d -> b n d", b=x.shape[0])
            x = torch.cat((cls_tokens, x), dim=1)
        x = self.dropout(x + self.pos_embedding)
        x = self.transformer(x)
        if self.mlp_head is None:
            return x
        x = x.mean(dim=1) if self.pool == "mean" else x[:, 0]
        return self.mlp_head(self.to_latent(x))
