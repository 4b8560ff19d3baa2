"""Neighbourhood gathering for local (windowed) attention, without unfold.

``lax.conv_general_dilated_patches`` (unfold) is slow on XLA:CPU and its
backward is worse. A ``k x k`` window is instead built by padding once and
slicing the padded map once per window offset ("shift-and-stack"): each slice
is a strided view whose backward is a pad, which XLA fuses well.

Offsets are ordered row-major, ``(a, b)`` for ``a, b in range(k)``, the order of
``torch.nn.Unfold``'s kernel positions, so a stacked result matches
``unfold(x).view(B, C, k*k, H', W')`` moved to channels-last.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

PAD_MODES = ("zeros", "reflect")


def window_padding(kernel_size: int, dilation: int = 1) -> int:
    """Symmetric padding that keeps an odd window centred: ``dilation * (k - 1) // 2``."""
    return dilation * (kernel_size - 1) // 2


def shifted_windows(
    x: jax.Array,
    kernel_size: int,
    *,
    dilation: int = 1,
    stride: int = 1,
    pad_mode: str = "zeros",
    padding: int | None = None,
) -> list[jax.Array]:
    """The ``kernel_size**2`` shifted views of ``x`` (``(B, H, W, C)``), one per window offset.

    View ``a * k + b`` at output position ``(i, j)`` holds
    ``x[i * stride + a * dilation - padding, j * stride + b * dilation - padding]``
    (zero or reflected outside the map). Each view is ``(B, H', W', C)`` with
    ``H' = (H + 2 * padding - dilation * (k - 1) - 1) // stride + 1``, i.e.
    ``ceil(H / stride)`` for the default padding and an odd ``k``.

    Args:
      x: ``(B, H, W, C)``.
      kernel_size: window side ``k``.
      dilation: spacing between window taps.
      stride: step between output positions (queries are subsampled).
      pad_mode: ``'zeros'`` (``nn.Unfold``) or ``'reflect'`` (``nn.ReflectionPad2d``).
      padding: defaults to :func:`window_padding`.
    """
    if pad_mode not in PAD_MODES:
        raise ValueError(f"`pad_mode` (={pad_mode!r}) must be one of {list(PAD_MODES)}")
    k, d, s = kernel_size, dilation, stride
    p = window_padding(k, d) if padding is None else padding
    _, h, w, _ = x.shape
    if pad_mode == "reflect" and p >= min(h, w):
        raise ValueError(
            f"reflection padding of {p} needs maps larger than {p} pixels, got {h}x{w} "
            f"(kernel_size={k}, dilation={d})"
        )
    if p:
        mode = "constant" if pad_mode == "zeros" else "reflect"
        x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode=mode)
    ho = (h + 2 * p - d * (k - 1) - 1) // s + 1
    wo = (w + 2 * p - d * (k - 1) - 1) // s + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"a {k}x{k} window (dilation {d}) does not fit a {h}x{w} map")
    return [
        x[:, a * d : a * d + (ho - 1) * s + 1 : s, b * d : b * d + (wo - 1) * s + 1 : s, :]
        for a in range(k)
        for b in range(k)
    ]


def neighbourhood(x: jax.Array, kernel_size: int, **kwargs) -> jax.Array:
    """``(B, H, W, C) -> (B, H', W', k*k, C)``: :func:`shifted_windows` stacked on axis -2."""
    return jnp.stack(shifted_windows(x, kernel_size, **kwargs), axis=-2)
