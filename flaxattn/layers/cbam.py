"""CBAM: Convolutional Block Attention Module.

Woo et al., "CBAM: Convolutional Block Attention Module", ECCV 2018.
https://arxiv.org/abs/1807.06521

Two variants live here, under different names because they compute different
functions and hold different parameters:

- ``ChannelAttention``, ``SpatialAttention``, ``CBAM``, ``ResBlockCBAM``: the
  paper's module (Sec. 3, Fig. 2) as commonly re-implemented in PyTorch. The
  channel MLP is two bias-free 1x1 convs shared by the average- and max-pooled
  descriptors; the spatial gate is a 7x7 conv *with* bias over ``[mean, max]``
  and no BatchNorm. ``ResBlockCBAM`` applies ``CBAM(places * expansion)`` to a
  bottleneck's output before the residual sum, as the paper's Fig. 3.
- ``JongchanCBAM`` (with ``ChannelGate`` and ``SpatialGate``): the authors'
  code, Jongchan/attention-module ``MODELS/cbam.py``. The channel MLP is two
  Linear layers with bias, pool types are any of avg/max/lp/lse, the spatial
  gate pools ``[max, mean]`` (the other order) and runs a bias-free 7x7 conv
  followed by BatchNorm with momentum 0.01. Attribute names follow upstream
  (``ChannelGate.mlp.1``, ``SpatialGate.spatial.conv``), so its checkpoints load
  key for key.

All modules are channels-last: ``(B, H, W, C)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from flaxattn.layers.basic import BatchNorm2d, Conv2d, Dtype, Linear
from flaxattn.ops.checks import check_choice, check_input, check_positive
from flaxattn.ops.depthwise import shift_conv
from flaxattn.ops.reduce import max_reduce


def _check_ratio(channel: int, ratio: int, ratio_name: str) -> None:
    check_positive(channel=channel, **{ratio_name: ratio})
    if ratio > channel:
        raise ValueError(f"`{ratio_name}` (={ratio}) must not exceed `channel` (={channel})")


def _spatial_conv(conv: Conv2d, x: jax.Array) -> jax.Array:
    """``conv(x)`` for the spatial gates' 7x7 conv (2 -> 1 channels, stride 1, padding 3).

    As a sum of shifted slices (:func:`flaxattn.ops.depthwise.shift_conv`, one group):
    XLA:CPU's convolution with one or two channels is slow, forward and input gradient
    alike (issue 15; figures in ``bench/NOTES.md``).
    """
    bias = conv.bias[...] if conv.bias is not None else None
    x, kernel, bias = conv.promote_dtype((x, conv.kernel[...], bias), dtype=conv.dtype)
    y = shift_conv(x[..., None, :], kernel, 1)
    return y + bias if bias is not None else y


class ChannelAttention(nnx.Module):
    """Channel attention map ``sigmoid(MLP(avgpool(x)) + MLP(maxpool(x)))``.

    Args:
      channel: number of channels ``C``.
      ratio: bottleneck ratio of the shared MLP (hidden width ``channel // ratio``).

    Shapes: ``(B, H, W, C) -> (B, 1, 1, C)`` (the map, not the rescaled input).
    """

    def __init__(
        self,
        channel: int,
        ratio: int = 16,
        *,
        dtype: Dtype = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        _check_ratio(channel, ratio, "ratio")
        self.channel = channel
        hidden = channel // ratio
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.shared_MLP = nnx.Sequential(
            Conv2d(channel, hidden, 1, bias=False, **kw),
            nnx.relu,
            Conv2d(hidden, channel, 1, bias=False, **kw),
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.channel
        check_input(x, rank=4, last=c, layout=f"(B, H, W, {c})", where="ChannelAttention")
        # Both descriptors go through the shared MLP in one batched call.
        pooled = jnp.concatenate(
            [x.mean(axis=(1, 2), keepdims=True), max_reduce(x, (1, 2), keepdims=True)], axis=0
        )
        avg_out, max_out = jnp.split(self.shared_MLP(pooled), 2, axis=0)
        return nnx.sigmoid(avg_out + max_out)


class SpatialAttention(nnx.Module):
    """Spatial attention map ``sigmoid(conv7x7([mean_c(x), max_c(x)]))``.

    Shapes: ``(B, H, W, C) -> (B, H, W, 1)``.
    """

    def __init__(self, *, dtype: Dtype = None, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        self.conv2d = Conv2d(
            2, 1, 7, stride=1, padding=3, dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        check_input(x, rank=4, layout="(B, H, W, C)", where="SpatialAttention")
        pooled = jnp.concatenate(
            [x.mean(axis=-1, keepdims=True), max_reduce(x, -1, keepdims=True)], axis=-1
        )
        return nnx.sigmoid(_spatial_conv(self.conv2d, pooled))


class CBAM(nnx.Module):
    """Channel then spatial attention (the paper's module, see the file docstring).

    Shapes: ``(B, H, W, C) -> (B, H, W, C)``.

    Args:
      channel: number of channels ``C``.
      ratio: bottleneck ratio of the channel MLP (the paper uses 16).

    Example::

      >>> cbam = CBAM(32, rngs=nnx.Rngs(0))
      >>> cbam(jnp.ones((2, 9, 7, 32))).shape
      (2, 9, 7, 32)
    """

    def __init__(
        self,
        channel: int,
        ratio: int = 16,
        *,
        dtype: Dtype = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.channel_attention = ChannelAttention(channel, ratio, **kw)
        self.spatial_attention = SpatialAttention(**kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        out = self.channel_attention(x) * x
        return self.spatial_attention(out) * out


class ResBlockCBAM(nnx.Module):
    """ResNet bottleneck (1x1, 3x3, 1x1 convs with BatchNorm) with CBAM before the residual add.

    Args:
      in_places: input channels.
      places: bottleneck width; the block outputs ``places * expansion`` channels.
      stride: stride of the 3x3 conv (and of the projection shortcut).
      downsampling: use a 1x1 conv + BatchNorm projection shortcut. Without it the
        identity shortcut needs ``in_places == places * expansion`` and stride 1.
      expansion: output channel multiplier.

    Shapes: ``(B, H, W, in_places) -> (B, ceil(H / stride), ceil(W / stride), places * expansion)``.
    """

    def __init__(
        self,
        in_places: int,
        places: int,
        stride: int = 1,
        downsampling: bool = False,
        expansion: int = 4,
        *,
        dtype: Dtype = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_positive(in_places=in_places, places=places, stride=stride, expansion=expansion)
        out = places * expansion
        if not downsampling and (in_places != out or stride != 1):
            raise ValueError(
                f"without `downsampling` the identity shortcut needs `in_places` (={in_places}) "
                f"== `places * expansion` (={out}) and `stride` (={stride}) == 1"
            )
        self.in_places = in_places
        self.expansion = expansion
        self.downsampling = downsampling
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.bottleneck = nnx.Sequential(
            Conv2d(in_places, places, 1, stride=1, bias=False, **kw),
            BatchNorm2d(places, **kw),
            nnx.relu,
            Conv2d(places, places, 3, stride=stride, padding=1, bias=False, **kw),
            BatchNorm2d(places, **kw),
            nnx.relu,
            Conv2d(places, out, 1, stride=1, bias=False, **kw),
            BatchNorm2d(out, **kw),
        )
        self.cbam = CBAM(out, **kw)
        if downsampling:
            self.downsample = nnx.Sequential(
                Conv2d(in_places, out, 1, stride=stride, bias=False, **kw),
                BatchNorm2d(out, **kw),
            )
        else:
            self.downsample = nnx.data(None)

    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.in_places
        check_input(x, rank=4, last=c, layout=f"(B, H, W, {c})", where="ResBlockCBAM")
        out = self.cbam(self.bottleneck(x))
        residual = self.downsample(x) if self.downsample is not None else x
        return nnx.relu(out + residual)


# --- Jongchan/attention-module variant ------------------------------------------------

POOL_TYPES = ("avg", "max", "lp", "lse")


def _flatten(x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0], math.prod(x.shape[1:]))  # not -1: B may be 0


class ChannelGate(nnx.Module):
    """Channel gate of the authors' CBAM: shared MLP (Linear with bias) over pooled descriptors.

    Args:
      gate_channels: number of channels ``C``.
      reduction_ratio: hidden width is ``gate_channels // reduction_ratio``.
      pool_types: any of ``'avg'``, ``'max'``, ``'lp'`` (L2 norm over the map) and
        ``'lse'`` (log-sum-exp over the map); their MLP outputs are summed.

    Shapes: ``(B, H, W, C) -> (B, H, W, C)`` (the rescaled input).
    """

    def __init__(
        self,
        gate_channels: int,
        reduction_ratio: int = 16,
        pool_types: Sequence[str] = ("avg", "max"),
        *,
        dtype: Dtype = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        _check_ratio(gate_channels, reduction_ratio, "reduction_ratio")
        pool_types = tuple(pool_types)
        if not pool_types:
            raise ValueError("`pool_types` (=()) must name at least one pool type")
        for p in pool_types:
            check_choice("pool_types", p, POOL_TYPES)
        self.gate_channels = gate_channels
        self.pool_types = pool_types
        hidden = gate_channels // reduction_ratio
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        # Index 0 is upstream's Flatten, so the Linear layers sit at 1 and 3.
        self.mlp = nnx.Sequential(
            _flatten,
            Linear(gate_channels, hidden, **kw),
            nnx.relu,
            Linear(hidden, gate_channels, **kw),
        )

    @staticmethod
    def _pool(x: jax.Array, kind: str) -> jax.Array:
        if kind == "avg":
            return x.mean(axis=(1, 2))
        if kind == "max":
            return max_reduce(x, (1, 2))
        if kind == "lp":
            # F.lp_pool2d(x, 2, whole map) is the L2 norm over the map.
            return jnp.sqrt(jnp.square(x).sum(axis=(1, 2)))
        return jax.nn.logsumexp(x, axis=(1, 2))

    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.gate_channels
        check_input(x, rank=4, last=c, layout=f"(B, H, W, {c})", where="ChannelGate")
        pooled = jnp.concatenate([self._pool(x, p) for p in self.pool_types], axis=0)
        raw = self.mlp(pooled).reshape(len(self.pool_types), x.shape[0], c)
        scale = nnx.sigmoid(raw.sum(axis=0))
        return x * scale[:, None, None, :].astype(x.dtype)


class BasicConv(nnx.Module):
    """Conv, optional BatchNorm (momentum 0.01), optional ReLU, as upstream's ``BasicConv``."""

    def __init__(
        self,
        in_planes: int,
        out_planes: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        relu: bool = True,
        bn: bool = True,
        bias: bool = False,
        *,
        dtype: Dtype = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.conv = Conv2d(
            in_planes, out_planes, kernel_size, stride, padding, dilation, groups, bias, **kw
        )
        self.bn = BatchNorm2d(out_planes, eps=1e-5, momentum=0.01, **kw) if bn else nnx.data(None)
        self.relu = relu

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return nnx.relu(x) if self.relu else x


class SpatialGate(nnx.Module):
    """Spatial gate of the authors' CBAM: ``[max_c, mean_c]``, 7x7 conv, BN, sigmoid, rescale.

    Shapes: ``(B, H, W, C) -> (B, H, W, C)``.
    """

    def __init__(self, *, dtype: Dtype = None, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        kernel_size = 7
        self.spatial = BasicConv(
            2,
            1,
            kernel_size,
            stride=1,
            padding=(kernel_size - 1) // 2,
            relu=False,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        check_input(x, rank=4, layout="(B, H, W, C)", where="SpatialGate")
        compressed = jnp.concatenate(
            [max_reduce(x, -1, keepdims=True), x.mean(axis=-1, keepdims=True)], axis=-1
        )
        conv = self.spatial
        y = conv.bn(_spatial_conv(conv.conv, compressed))
        return x * nnx.sigmoid(y)


class JongchanCBAM(nnx.Module):
    """The authors' CBAM (Jongchan/attention-module); ``(B, H, W, C) -> (B, H, W, C)``.

    Upstream calls this class ``CBAM``; ``from_torch`` maps it here.

    Args:
      gate_channels: number of channels ``C``.
      reduction_ratio: channel MLP bottleneck ratio.
      pool_types: pool types of the channel gate (see :class:`ChannelGate`).
      no_spatial: skip the spatial gate.
    """

    def __init__(
        self,
        gate_channels: int,
        reduction_ratio: int = 16,
        pool_types: Sequence[str] = ("avg", "max"),
        no_spatial: bool = False,
        *,
        dtype: Dtype = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.ChannelGate = ChannelGate(gate_channels, reduction_ratio, pool_types, **kw)
        self.no_spatial = no_spatial
        self.SpatialGate = nnx.data(None) if no_spatial else SpatialGate(**kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.ChannelGate(x)
        if self.SpatialGate is not None:
            x = self.SpatialGate(x)
        return x
