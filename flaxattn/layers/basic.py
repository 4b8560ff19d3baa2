"""PyTorch-compatible building blocks for Flax NNX: Linear, Conv2d, LayerNorm, BatchNorm,
DropPath, Dropout (and ``gelu``).

Each layer takes PyTorch's argument names and defaults and initialises its
parameters the way PyTorch does (kaiming-uniform with ``a=sqrt(5)``, i.e.
``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for weights and biases), so a flaxattn
module reads line by line like its ``torch_ref`` twin and trains alike from the
first step, not only after loading converted weights.

Layouts are channels-last: images ``(B, H, W, C)``. Parameter names are Flax's
(``kernel``, ``bias``, ``scale``); :mod:`flaxattn.convert` maps them to
PyTorch's (``weight``, ``bias``) and re-lays them out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.nnx.nn.dtypes import canonicalize_dtype

from flaxattn.ops.batchnorm import batch_norm_train
from flaxattn.ops.checks import check_positive, check_rate
from flaxattn.ops.dense import dense_dot_general
from flaxattn.ops.dropout import keep_mask
from flaxattn.ops.init import (
    constant_init,
    on_device,
    torch_uniform_init,
)

# gelu: torch.nn.GELU() (exact erf; Flax's default is the tanh form), importable from here
# beside the other torch-like layers.
from flaxattn.ops.norm import gelu as gelu
from flaxattn.ops.norm import layer_norm
from flaxattn.ops.pointwise import pointwise_conv

Dtype = jnp.dtype | type | None


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    value = tuple(value)
    if len(value) != 2 or not all(isinstance(v, int) for v in value):
        raise ValueError(f"`{name}` (={value!r}) must be an int or a pair of ints")
    return value


class Linear(nnx.Linear):
    """``torch.nn.Linear`` on the last axis; ``kernel`` is ``(in, out)``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        dtype: Dtype = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_positive(in_features=in_features, out_features=out_features)
        init = torch_uniform_init(in_features)
        super().__init__(
            in_features,
            out_features,
            use_bias=bias,
            dtype=dtype,
            param_dtype=param_dtype,
            kernel_init=init,
            bias_init=init,
            dot_general=dense_dot_general,
            rngs=rngs,
        )


class Conv2d(nnx.Conv):
    """``torch.nn.Conv2d`` on ``(B, H, W, C)``; ``kernel`` is ``(kh, kw, C_in/groups, C_out)``.

    ``padding`` is PyTorch's symmetric zero padding (an int, a pair, or
    ``'same'``/``'valid'``), not Flax's ``'SAME'``, which pads asymmetrically
    for even kernels and stride 2.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | str = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        bias: bool = True,
        *,
        dtype: Dtype = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_positive(in_channels=in_channels, out_channels=out_channels, groups=groups)
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"`in_channels` (={in_channels}) and `out_channels` (={out_channels}) "
                f"must be divisible by `groups` (={groups})"
            )
        kh, kw = _pair(kernel_size, "kernel_size")
        stride = _pair(stride, "stride")
        dilation = _pair(dilation, "dilation")
        check_positive(kernel_size=min(kh, kw), stride=min(stride), dilation=min(dilation))
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(
                    f"`padding` (={padding!r}) must be an int, a pair, 'same' or 'valid'"
                )
            if padding == "same" and stride != (1, 1):
                raise ValueError(f"`padding='same'` needs `stride` 1, got {stride}")
            pad = "SAME" if padding == "same" else "VALID"
        else:
            ph, pw = _pair(padding, "padding")
            pad = ((ph, ph), (pw, pw))
        init = torch_uniform_init(in_channels // groups * kh * kw)
        # 1x1 convs are matmuls; XLA:CPU runs them about 2x faster as one
        # dot_general than as a convolution (forward and backward).
        self.pointwise = (
            (kh, kw) == (1, 1) and groups == 1 and pad in ("SAME", "VALID", ((0, 0), (0, 0)))
        )
        super().__init__(
            in_channels,
            out_channels,
            (kh, kw),
            strides=stride,
            padding=pad,
            kernel_dilation=dilation,
            feature_group_count=groups,
            use_bias=bias,
            dtype=dtype,
            param_dtype=param_dtype,
            kernel_init=init,
            bias_init=init,
            rngs=rngs,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        if not self.pointwise:
            return super().__call__(x)
        sh, sw = self.strides
        if (sh, sw) != (1, 1):
            x = x[..., ::sh, ::sw, :]
        bias = self.bias[...] if self.bias is not None else None
        x, kernel, bias = self.promote_dtype((x, self.kernel[...][0, 0], bias), dtype=self.dtype)
        y = pointwise_conv(x, kernel, self.precision)
        return y + bias if bias is not None else y


class LayerNorm(nnx.LayerNorm):
    """``torch.nn.LayerNorm`` over the last axis: eps 1e-5 and a two-pass variance.

    Flax's own default (eps 1e-6, ``E[x^2] - E[x]^2``) differs from PyTorch by
    more than float32 round-off on inputs with a large mean.
    """

    def __init__(
        self,
        normalized_shape: int,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        *,
        dtype: Dtype = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_positive(normalized_shape=normalized_shape)
        super().__init__(
            normalized_shape,
            epsilon=eps,
            use_scale=elementwise_affine,
            use_bias=elementwise_affine and bias,
            use_fast_variance=False,
            dtype=dtype,
            param_dtype=param_dtype,
            scale_init=constant_init(1.0),
            bias_init=constant_init(0.0),
            rngs=rngs,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        # flaxattn.ops.norm.layer_norm: PyTorch's closed-form backward (autodiff of the
        # two-pass variance costs XLA:CPU several times more inside a train step).
        d = x.shape[-1]
        scale = self.scale[...] if self.scale is not None else None
        bias = self.bias[...] if self.bias is not None else None
        out_dtype = canonicalize_dtype(
            *(a for a in (x, scale, bias) if a is not None), dtype=self.dtype
        )
        stat = jnp.promote_types(out_dtype, jnp.float32)
        scale = jnp.ones((d,), stat) if scale is None else scale.astype(stat)
        bias = jnp.zeros((d,), stat) if bias is None else bias.astype(stat)
        return layer_norm(x.astype(stat), scale, bias, self.epsilon).astype(out_dtype)


class BatchNorm(nnx.Module):
    """``torch.nn.BatchNorm{1,2,3}d`` over every axis but the last (channels-last).

    Matches PyTorch in train mode, running statistics included: the running
    variance is updated with the *unbiased* batch variance, normalisation uses
    the biased one, and ``momentum`` is PyTorch's (new = (1 - m) * old + m * batch;
    Flax's own BatchNorm uses ``m`` for the old value). ``momentum=None`` is the
    cumulative average, as in PyTorch. Statistics are computed in at least
    float32, whatever the compute dtype.

    Mode follows NNX: ``module.train()`` uses batch statistics and updates the
    running ones, ``module.eval()`` uses the running ones.

    Args:
      num_features: number of channels ``C``.
      eps: added to the variance.
      momentum: PyTorch-convention momentum, or ``None`` for a cumulative average.
      affine: learn ``scale`` and ``bias``.
      track_running_stats: keep ``mean``/``var``; without them batch statistics
        are used in eval mode too.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        use_running_average: bool = False,
        dtype: Dtype = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs | None = None,
    ):
        check_positive(num_features=num_features)
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise ValueError(f"`momentum` (={momentum}) must be in [0, 1] or None")
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.use_running_average = use_running_average
        self.dtype = dtype
        if affine:
            self.scale = nnx.Param(on_device(np.ones(num_features), param_dtype))
            self.bias = nnx.Param(on_device(np.zeros(num_features), param_dtype))
        else:
            self.scale = nnx.data(None)
            self.bias = nnx.data(None)
        if track_running_stats:
            self.mean = nnx.BatchStat(on_device(np.zeros(num_features), param_dtype))
            self.var = nnx.BatchStat(on_device(np.ones(num_features), param_dtype))
            self.num_batches_tracked = nnx.BatchStat(on_device(np.zeros(()), jnp.int32))
        else:
            self.mean = nnx.data(None)
            self.var = nnx.data(None)
            self.num_batches_tracked = nnx.data(None)

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.shape[-1] != self.num_features:
            raise ValueError(
                f"BatchNorm: expected {self.num_features} channels in the last axis, "
                f"got input of shape {tuple(x.shape)}"
            )
        out_dtype = self.dtype or x.dtype
        stat_dtype = jnp.promote_types(x.dtype, jnp.float32)
        xs = x.astype(stat_dtype)
        tracking = self.mean is not None
        scale = self.scale[...].astype(stat_dtype) if self.scale is not None else None
        bias = self.bias[...].astype(stat_dtype) if self.bias is not None else None
        if self.use_running_average and tracking:
            mean = self.mean[...].astype(stat_dtype)
            var = self.var[...].astype(stat_dtype)
            y = (xs - mean) * jax.lax.rsqrt(var + self.eps)
            if scale is not None:
                y = y * scale + bias
            return y.astype(out_dtype)
        n = math.prod(x.shape[:-1])
        if n < 2:
            raise ValueError(
                f"BatchNorm in train mode needs more than one value per channel, "
                f"got input of shape {tuple(x.shape)} (batch size {x.shape[0]})"
            )
        y, mean, var = batch_norm_train(xs, scale, bias, self.eps)
        if tracking and not self.use_running_average:
            count = self.num_batches_tracked[...] + 1
            m = 1.0 / count if self.momentum is None else self.momentum
            batch_mean = jax.lax.stop_gradient(mean)
            batch_var = jax.lax.stop_gradient(var) * (n / (n - 1))
            old_mean, old_var = self.mean[...], self.var[...]
            self.mean[...] = ((1 - m) * old_mean + m * batch_mean).astype(old_mean.dtype)
            self.var[...] = ((1 - m) * old_var + m * batch_var).astype(old_var.dtype)
            self.num_batches_tracked[...] = count
        return y.astype(out_dtype)


# PyTorch's names for the same layer, so twins read alike.
BatchNorm1d = BatchNorm2d = BatchNorm


class DropPath(nnx.Module):
    """Stochastic depth per sample (``timm.layers.DropPath``).

    Zeroes a whole sample's residual branch with probability ``drop_prob`` and
    rescales the kept ones by ``1 / (1 - drop_prob)``. Identity in eval mode.
    """

    def __init__(self, drop_prob: float = 0.0, *, deterministic: bool = False, rngs: nnx.Rngs):
        check_rate(drop_prob=drop_prob)
        self.drop_prob = drop_prob
        self.deterministic = deterministic
        # As nnx.Dropout does: a forked 'dropout' stream, so the masks advance
        # with the module's own RNG state (checkpointed and restored with it).
        self.rngs = rngs["dropout"].fork() if drop_prob > 0 else nnx.data(None)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.deterministic or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = jax.random.bernoulli(self.rngs(), keep, shape)
        return jnp.where(mask, x / keep, jnp.zeros_like(x))


class Dropout(nnx.Dropout):
    """``nnx.Dropout`` (same arguments, state and train/eval behaviour) with masks
    from :func:`flaxattn.ops.dropout.keep_mask` instead of threefry ``bernoulli``.

    Shapes: any ``x -> x``; in train mode entries are zeroed with probability
    ``rate`` and the rest scaled by ``1 / (1 - rate)``.
    """

    def __call__(self, inputs, *, deterministic: bool | None = None, rngs=None):
        deterministic = self.deterministic if deterministic is None else deterministic
        if self.rate == 0.0 or deterministic:
            return inputs
        if self.rate == 1.0:  # no NaN gradients from 0 / 0
            return jnp.zeros_like(inputs)
        rngs = self.rngs if rngs is None else rngs
        if rngs is None:
            raise ValueError("Dropout: `deterministic` is False but no `rngs` were given")
        if isinstance(rngs, nnx.Rngs):
            key = rngs[self.rng_collection]()
        elif isinstance(rngs, nnx.RngStream):
            key = rngs()
        else:
            key = rngs
        keep_prob = 1.0 - self.rate
        shape = list(inputs.shape)
        for dim in self.broadcast_dims:
            shape[dim] = 1
        mask = jnp.broadcast_to(keep_mask(key, keep_prob, shape), inputs.shape)
        return jnp.where(mask, inputs / keep_prob, jnp.zeros_like(inputs))


def set_attention_impl(module: nnx.Module, attention_impl: str) -> nnx.Module:
    """Set ``attention_impl`` on every submodule that has one (in place; returns ``module``).

    For a model built by :func:`flaxattn.convert.from_torch` or loaded from a checkpoint:
    the choice is not part of the state, so it can change at any time. Global-attention
    modules take ``'auto'``, ``'xla'``, ``'cudnn'``; window-attention modules (ACmix,
    DilateFormer) ``'auto'``, ``'xla'``, ``'pallas'``; a value a module does not take is a
    ``ValueError`` naming the module (nothing is changed then).
    """
    from flaxattn.ops.fused import GLOBAL_IMPLS, check_attention_impl

    targets = [(path, m) for path, m in nnx.iter_modules(module) if hasattr(m, "attention_impl")]
    for path, m in targets:
        choices = getattr(type(m), "attention_impls", GLOBAL_IMPLS)
        try:
            check_attention_impl(attention_impl, choices)
        except ValueError as e:
            where = "/".join(map(str, path)) or "the module"
            raise ValueError(f"{type(m).__name__} at {where}: {e}") from None
    for _, m in targets:
        m.attention_impl = attention_impl
    return module
