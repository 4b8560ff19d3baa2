"""Reversible residual sequences (twin of ``flaxattn.layers.reversible``).

Gomez et al., "The Reversible Residual Network: Backpropagation Without Storing
Activations", NeurIPS 2017. https://arxiv.org/abs/1707.04585

The same coupling as upstream lucidrains/axial-attention ``reversible.py``
(``y1 = x1 + f(x2)``, ``y2 = x2 + g(y1)`` on two copies of the input, output the
mean of the streams) and the same module tree (``blocks.{i}.f.net``), so its
state_dict keys are upstream's. The backward is an ``autograd.Function`` that
reconstructs each block's inputs from its outputs; unlike upstream's, it
returns the parameter gradients through autograd (so ``torch.autograd.grad``
works, not only ``.backward()``) and keeps the two streams apart instead of
concatenating them along axis 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from torch_ref._twin import Twin


class Deterministic(nn.Module):
    """Holds one coupling function as ``net``; replays the CPU RNG state when asked."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, rng_state: torch.Tensor | None = None) -> torch.Tensor:
        if rng_state is None:
            return self.net(x)
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(rng_state)
            return self.net(x)


class ReversibleBlock(nn.Module):
    """One coupling ``y1 = x1 + f(x2)``, ``y2 = x2 + g(y1)``."""

    def __init__(self, f: nn.Module, g: nn.Module):
        super().__init__()
        self.f = Deterministic(f)
        self.g = Deterministic(g)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y1 = x1 + self.f(x2)
        return y1, x2 + self.g(y1)


def _grads(out, inputs, cot):
    """d<out, cot>/d inputs; None for inputs ``out`` does not depend on."""
    return torch.autograd.grad(out, inputs, cot, allow_unused=True)


class _ReversibleFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, blocks, x1, x2, *params):
        record = any(b.training for b in blocks)
        states = []
        for block in blocks:
            # Record the RNG state each function starts from, to replay it in the backward.
            sf = torch.get_rng_state() if record else None
            y1 = x1 + block.f(x2)
            sg = torch.get_rng_state() if record else None
            x1, x2 = y1, x2 + block.g(y1)
            states.append((sf, sg))
        ctx.blocks = blocks
        ctx.states = states
        ctx.params = params
        ctx.save_for_backward(x1, x2)
        return x1, x2

    @staticmethod
    def backward(ctx, dy1, dy2):
        y1, y2 = ctx.saved_tensors
        slot = {id(p): i for i, p in enumerate(ctx.params)}
        grads: list = [None] * len(ctx.params)

        def accumulate(ps, gs):
            for p, g in zip(ps, gs, strict=True):
                if g is not None:
                    i = slot[id(p)]
                    grads[i] = g if grads[i] is None else grads[i] + g

        for block, (sf, sg) in zip(reversed(ctx.blocks), reversed(ctx.states), strict=True):
            with torch.enable_grad():
                y1_ = y1.detach().requires_grad_(True)
                gy = block.g(y1_, sg)
                gps = [p for p in block.g.parameters() if id(p) in slot]
                d_y1, *d_g = _grads(gy, [y1_, *gps], dy2)
            accumulate(gps, d_g)
            with torch.no_grad():
                x2 = y2 - gy
                dy1 = dy1 + d_y1
            with torch.enable_grad():
                x2_ = x2.detach().requires_grad_(True)
                fy = block.f(x2_, sf)
                fps = [p for p in block.f.parameters() if id(p) in slot]
                d_x2, *d_f = _grads(fy, [x2_, *fps], dy1)
            accumulate(fps, d_f)
            with torch.no_grad():
                x1 = y1 - fy
                dy2 = dy2 + d_x2
            y1, y2 = x1, x2
        return (None, dy1, dy2, *grads)


class ReversibleSequence(Twin):
    """Reversible blocks on two copies of the input; returns the mean of the streams.

    Args:
      blocks: ``(f, g)`` module pairs.
      reconstruct: train with the reconstructing backward (True) or plain
        autograd of the same coupling (False).

    Shapes: ``x -> x.shape``.
    """

    def __init__(self, blocks: Sequence[Sequence[nn.Module]], reconstruct: bool = True):
        super().__init__()
        self.blocks = nn.ModuleList([ReversibleBlock(f, g) for f, g in blocks])
        self.reconstruct = reconstruct

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reconstruct and len(self.blocks) and torch.is_grad_enabled():
            params = [p for p in self.parameters() if p.requires_grad]
            y1, y2 = _ReversibleFunction.apply(list(self.blocks), x, x, *params)
        else:
            y1 = y2 = x
            for block in self.blocks:
                y1, y2 = block(y1, y2)
        # Upstream: torch.stack(y.chunk(2, dim=1)).mean(dim=0); halving is exact.
        return (y1 + y2) / 2
