"""ACmix: self-attention and convolution sharing one set of 1x1 projections.

Pan et al., "On the Integration of Self-Attention and Convolution", CVPR 2022.
https://arxiv.org/abs/2111.14556
Reference: LeapLabTHU/ACmix ``ResNet/test_bottleneck.py`` (attribute names as
upstream, so its state_dicts load key for key).

The math lives in two kernels that never unfold: the attention path is
:func:`flaxattn.ops.local.local_attention` (block-wise window attention) and the
convolution path's grouped ``dep_conv`` is :func:`flaxattn.ops.depthwise.shift_conv`.

All modules are channels-last: ``(B, H, W, C)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flaxattn.layers.basic import Conv2d, Dtype
from flaxattn.ops.checks import check_choice, check_divisible, check_input, check_positive
from flaxattn.ops.depthwise import shift_conv
from flaxattn.ops.fused import WINDOW_IMPLS, check_attention_impl, resolve_attention_impl
from flaxattn.ops.local import local_attention
from flaxattn.ops.pallas_local import window_attention

# --- ACmix -------------------------------------------------------------------------------------


def shift_identity_kernel(kernel_conv: int, out_planes: int, dtype=jnp.float32) -> jax.Array:
    """``dep_conv``'s initial kernel ``(k, k, k*k, out_planes)``: input channel ``a*k + c`` of
    each group is read at offset ``(a, c)`` only, i.e. the ``k*k`` fc outputs become the
    ``k*k`` shifted copies that a ``k x k`` convolution sums."""
    k = kernel_conv
    eye = np.eye(k * k).reshape(k * k, k, k).transpose(1, 2, 0)  # (a, c, i) = [i == a*k + c]
    return jnp.asarray(np.broadcast_to(eye[..., None], (k, k, k * k, out_planes)), dtype)


def position_grid(h: int, w: int, dtype=jnp.float32) -> jax.Array:
    """Upstream's ``position(H, W)`` channels-last: ``(1, H, W, 2)``, channel 0 the
    ``linspace(-1, 1, W)`` column coordinate, channel 1 the row one."""
    loc_w = np.broadcast_to(np.linspace(-1.0, 1.0, w)[None, :], (h, w))
    loc_h = np.broadcast_to(np.linspace(-1.0, 1.0, h)[:, None], (h, w))
    return jnp.asarray(np.stack([loc_w, loc_h], axis=-1)[None], dtype)


def check_acmix_args(
    in_planes: int,
    out_planes: int,
    kernel_att: int,
    head: int,
    kernel_conv: int,
    stride: int,
    dilation: int,
) -> None:
    """Shared by both twins: ``ValueError`` naming the argument and its value."""
    check_positive(
        in_planes=in_planes,
        out_planes=out_planes,
        kernel_att=kernel_att,
        head=head,
        kernel_conv=kernel_conv,
        dilation=dilation,
    )
    check_divisible("out_planes", out_planes, "head", head)
    check_choice("stride", stride, (1, 2))
    for name, value in (("kernel_att", kernel_att), ("kernel_conv", kernel_conv)):
        if value % 2 == 0:
            raise ValueError(f"`{name}` (={value}) must be odd")


def attention_padding(kernel_att: int, dilation: int) -> int:
    """Upstream's ``padding_att``; equals ``dilation * (kernel_att - 1) // 2`` for odd kernels."""
    return (dilation * (kernel_att - 1) + 1) // 2


def check_map_size(h: int, w: int, kernel_att: int, dilation: int, where: str = "ACmix") -> None:
    p = attention_padding(kernel_att, dilation)
    if min(h, w) <= p:
        raise ValueError(
            f"{where}: maps must be at least {p + 1}x{p + 1} for the reflection padding of "
            f"{p} (kernel_att={kernel_att}, dilation={dilation}), got {h}x{w}"
        )


class ACmix(nnx.Module):
    """ACmix: a local self-attention path and a shift-convolution path on shared 1x1 projections.

    ``q, k, v = conv1(x), conv2(x), conv3(x)`` (1x1 convs, ``out_planes`` channels,
    ``head`` heads of ``head_dim = out_planes // head``). The attention path adds a
    positional encoding (``conv_p`` of a ``linspace(-1, 1)`` grid) to the keys
    relative to the query, attends over the ``kernel_att x kernel_att`` window of a
    reflection-padded map with ``q`` scaled by ``head_dim ** -0.5``, and strides by
    subsampling the queries. The convolution path mixes the ``3 * head`` maps of
    every channel of a head with ``fc`` into ``kernel_conv ** 2`` maps, then applies
    the grouped shift convolution ``dep_conv`` (initialised to shift-identity kernels,
    no bias). Output: ``rate1 * attention + rate2 * convolution``, rates initialised to 0.5.

    Deviation from upstream (each one crashes there):
    - stride 2 on odd sizes: the output is ``ceil(H / stride)`` (upstream's
      ``h // stride`` view fails);
    - ``dilation > 1``: the window is dilated as the padding is (upstream pads
      for a dilated window but unfolds an undilated one);
    - ``kernel_conv != 3``: ``dep_conv`` pads by ``kernel_conv // 2`` (upstream: 1);
    - maps too small for the reflection padding raise a ``ValueError`` naming
      the minimum size.
    The positional term ``q . q_pe`` is the same for every key of a window and
    cancels in the softmax, so it is not computed (nor is ``conv_p.bias``'s share,
    whose gradient is zero, as upstream's is up to round-off).

    Args:
      in_planes: input channels.
      out_planes: output channels (a multiple of ``head``).
      kernel_att: attention window side (odd).
      head: attention heads.
      kernel_conv: shift convolution kernel side (odd).
      stride: 1 or 2.
      dilation: attention window dilation.
      attention_impl: (Flax only) ``'auto'`` (the Pallas kernel on a GPU, else XLA),
        ``'xla'`` (:func:`~flaxattn.ops.local.local_attention`) or ``'pallas'``
        (:func:`~flaxattn.ops.pallas_local.window_attention`); parameters are the same.

    Shapes: ``(B, H, W, in_planes) -> (B, ceil(H / stride), ceil(W / stride), out_planes)``;
    ``H, W >= padding_att + 1``.

    Example::

      >>> m = ACmix(16, 32, kernel_att=7, head=4, rngs=nnx.Rngs(0))
      >>> m.dep_conv.kernel.shape, m.fc.kernel.shape
      ((3, 3, 9, 32), (1, 1, 12, 9))
      >>> m(jnp.ones((2, 12, 10, 16))).shape
      (2, 12, 10, 32)
    """

    attention_impls = WINDOW_IMPLS

    def __init__(
        self,
        in_planes: int,
        out_planes: int,
        kernel_att: int = 7,
        head: int = 4,
        kernel_conv: int = 3,
        stride: int = 1,
        dilation: int = 1,
        *,
        attention_impl: str = "auto",
        dtype: Dtype = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_acmix_args(in_planes, out_planes, kernel_att, head, kernel_conv, stride, dilation)
        check_attention_impl(attention_impl, WINDOW_IMPLS)
        self.attention_impl = attention_impl
        self.in_planes = in_planes
        self.out_planes = out_planes
        self.head = head
        self.kernel_att = kernel_att
        self.kernel_conv = kernel_conv
        self.stride = stride
        self.dilation = dilation
        self.head_dim = out_planes // head
        self.padding_att = attention_padding(kernel_att, dilation)
        self.dtype = dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.rate1 = nnx.Param(jnp.full((1,), 0.5, param_dtype))
        self.rate2 = nnx.Param(jnp.full((1,), 0.5, param_dtype))
        self.conv1 = Conv2d(in_planes, out_planes, 1, **kw)
        self.conv2 = Conv2d(in_planes, out_planes, 1, **kw)
        self.conv3 = Conv2d(in_planes, out_planes, 1, **kw)
        self.conv_p = Conv2d(2, self.head_dim, 1, **kw)
        kk = kernel_conv * kernel_conv
        self.fc = Conv2d(3 * head, kk, 1, bias=False, **kw)
        self.dep_conv = Conv2d(
            kk * self.head_dim,
            out_planes,
            kernel_conv,
            stride=stride,
            padding=kernel_conv // 2,
            groups=self.head_dim,
            bias=False,
            **kw,
        )
        self.dep_conv.kernel[...] = shift_identity_kernel(kernel_conv, out_planes, param_dtype)

    def attend(self, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        """The attention path's window attention (:func:`flaxattn.ops.local.local_attention`);
        a hook for other implementations (``bench/cases/acmix.py`` times an unfold one)."""
        impl = resolve_attention_impl(
            self.attention_impl,
            dtype=jnp.result_type(q, k, v),
            head_dim=q.shape[-1],
            where="ACmix",
            window=True,
        )
        attend = window_attention if impl == "pallas" else local_attention
        return attend(
            q, k, v, self.kernel_att, stride=self.stride, dilation=self.dilation, pad_mode="reflect"
        )

    def _cast(self, *arrays):
        dtype = self.dtype or jnp.result_type(*arrays)
        return [a.astype(dtype) for a in arrays]

    def __call__(self, x: jax.Array) -> jax.Array:
        c_in, c = self.in_planes, self.out_planes
        check_input(x, rank=4, last=c_in, layout=f"(B, H, W, {c_in})", where="ACmix")
        b, h, w, _ = x.shape
        check_map_size(h, w, self.kernel_att, self.dilation)
        n, d, s = self.head, self.head_dim, self.stride
        convs = (self.conv1, self.conv2, self.conv3)
        # q, k and v in one matmul.
        kernel = jnp.concatenate([m.kernel[...][0, 0] for m in convs], axis=-1)
        bias = jnp.concatenate([m.bias[...] for m in convs])
        pk, pb = self.conv_p.kernel[...][0, 0], self.conv_p.bias[...]
        fc = self.fc.kernel[...][0, 0]
        dep = self.dep_conv.kernel[...]
        rate1, rate2 = self.rate1[...], self.rate2[...]
        x, kernel, bias, pk, pb, fc, dep, rate1, rate2 = self._cast(
            x, kernel, bias, pk, pb, fc, dep, rate1, rate2
        )
        qkv = (x @ kernel + bias).reshape(b, h, w, 3, n, d)
        q, k, v = qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2]

        # Attention: upstream's logits are q . (k_j + pe_q - pe_j); pe_q is constant over
        # the window and cancels in the softmax, and k_j - pe_j is padded as one map.
        pe = position_grid(h, w, x.dtype)[0] @ pk + pb  # (H, W, head_dim)
        q_att = q[:, ::s, ::s] * (float(d) ** -0.5)
        att = self.attend(q_att, k - pe[:, :, None, :], v)
        ho, wo = att.shape[1:3]
        out_att = att.reshape(b, ho, wo, c)

        # Convolution: fc mixes [q heads, k heads, v heads] per channel of a head into
        # kernel_conv**2 maps, grouped by channel (d * k**2 + i, as upstream's permute).
        kk = self.kernel_conv**2
        f = jnp.einsum("bhwtnd,tni->bhwdi", qkv, fc.reshape(3, n, kk))
        out_conv = shift_conv(f, dep, s)
        return rate1 * out_att + rate2 * out_conv
