"""Choosing an attention implementation: the einsum path, XLA's or cuDNN's fused
``jax.nn.dot_product_attention``, or the Pallas window kernel.

Modules with an ``attention_impl`` argument resolve it on every call
(:func:`resolve_attention_impl`) from ``jax.default_backend()``, the compute dtype and
the head width, so one model object runs on CPU and GPU alike:

========== =============================================================================
``'auto'``   global attention: cuDNN flash attention on an NVIDIA GPU when the inputs are
             bfloat16/float16 and the head width is a multiple of 8 and at most 128, else
             the einsum path (the default, unchanged on CPU); window attention: the Pallas
             kernel on a GPU, else the XLA shift-and-stack kernel.
``'xla'``    global: ``jax.nn.dot_product_attention(implementation='xla')``; window:
             the XLA kernels of :mod:`flaxattn.ops.local` / :mod:`flaxattn.ops.dilated`.
``'cudnn'``  global only: ``jax.nn.dot_product_attention(implementation='cudnn')``.
``'pallas'`` window only: :mod:`flaxattn.ops.pallas_local` (GPU, Triton lowering).
========== =============================================================================

Asking for ``'cudnn'`` or ``'pallas'`` where it cannot run is a ``ValueError`` naming the
value, the backend, the dtype and what would work.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from flaxattn.ops.checks import check_choice

GLOBAL_IMPLS = ("auto", "xla", "cudnn")
WINDOW_IMPLS = ("auto", "xla", "pallas")
CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)
PALLAS_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)
CUDNN_MAX_HEAD_DIM = 128  # 256 on Hopper and later; 128 holds on every cuDNN GPU


def check_attention_impl(value: str, choices: tuple[str, ...] = GLOBAL_IMPLS) -> None:
    """Constructor check: ``ValueError`` naming an unknown ``attention_impl``."""
    check_choice("attention_impl", value, choices)


def default_backend() -> str:
    """``jax.default_backend()``; a function so tests can pretend to be on a GPU."""
    return jax.default_backend()


def _dtype_name(dtype) -> str:
    return jnp.dtype(dtype).name


def cudnn_ok(dtype, head_dim: int, backend: str) -> bool:
    """Whether cuDNN flash attention can run: NVIDIA GPU, bfloat16/float16, head width."""
    return (
        backend == "gpu"
        and any(jnp.dtype(dtype) == jnp.dtype(d) for d in CUDNN_DTYPES)
        and head_dim % 8 == 0
        and head_dim <= CUDNN_MAX_HEAD_DIM
    )


# Whether 'auto' picks the Pallas window kernel on a GPU (see resolve_attention_impl).
PALLAS_BY_DEFAULT = False


def resolve_attention_impl(
    impl: str,
    *,
    dtype,
    head_dim: int,
    where: str,
    window: bool = False,
    fused_ok: str | None = None,
    backend: str | None = None,
) -> str:
    """The implementation to run now: ``'default'`` (the module's own path: einsums for
    global attention, shift-and-stack for windows), ``'xla'``, ``'cudnn'`` or ``'pallas'``.

    Args:
      impl: the module's ``attention_impl``.
      dtype: the compute dtype of q, k, v.
      head_dim: width of a query/key head.
      where: the module's name, for errors.
      window: window attention (``'pallas'`` allowed) rather than global (``'cudnn'``).
      fused_ok: ``None`` when a fused call computes what the module does; else why it
        cannot (attention dropout in train mode, relative logits): ``'auto'`` then takes
        the default path and an explicit ``'xla'``/``'cudnn'`` raises.
      backend: defaults to :func:`default_backend`.
    """
    choices = WINDOW_IMPLS if window else GLOBAL_IMPLS
    check_attention_impl(impl, choices)
    backend = default_backend() if backend is None else backend
    name = _dtype_name(dtype)
    if window:
        pallas = backend == "gpu" and any(jnp.dtype(dtype) == jnp.dtype(d) for d in PALLAS_DTYPES)
        if impl == "pallas" and fused_ok is not None:
            raise ValueError(
                f"{where}: `attention_impl` (='pallas') cannot compute this attention "
                f"({fused_ok}) on backend {backend!r}; use 'auto' or 'xla'"
            )
        if impl == "auto":
            # The Pallas kernel has been checked in interpret mode and lowered for CUDA,
            # but never compiled or run on a GPU (no device yet): 'auto' keeps the XLA
            # kernel until bench/gpu_check.sh has run it. Flip PALLAS_BY_DEFAULT then.
            use = PALLAS_BY_DEFAULT and pallas and fused_ok is None
            return "pallas" if use else "default"
        if impl == "pallas" and not pallas:
            raise ValueError(
                f"{where}: `attention_impl` (='pallas') cannot run on backend {backend!r} with "
                f"dtype {name}: the Pallas window kernel needs a GPU and float32, bfloat16 or "
                f"float16 inputs; use 'auto' or 'xla' here"
            )
        return "default" if impl == "xla" else impl
    if impl == "auto":
        if fused_ok is None and cudnn_ok(dtype, head_dim, backend):
            return "cudnn"
        return "default"
    if fused_ok is not None:
        raise ValueError(
            f"{where}: `attention_impl` (={impl!r}) cannot compute this attention "
            f"({fused_ok}) on backend {backend!r}; use 'auto' (the einsum path)"
        )
    if impl == "cudnn" and not cudnn_ok(dtype, head_dim, backend):
        raise ValueError(
            f"{where}: `attention_impl` (='cudnn') cannot run on backend {backend!r} with dtype "
            f"{name} and head width {head_dim}: cuDNN flash attention needs an NVIDIA GPU, "
            f"bfloat16 or float16 inputs and a head width that is a multiple of 8 and at most "
            f"{CUDNN_MAX_HEAD_DIM}; use 'auto' or 'xla'"
        )
    return impl


def fused_attention(q: jax.Array, k: jax.Array, v: jax.Array, impl: str) -> jax.Array:
    """``softmax(q k^T) v`` through ``jax.nn.dot_product_attention(implementation=impl)``.

    ``q (B, T, heads, dk)`` already scaled, ``k (B, S, heads, dk)``, ``v (B, S, heads, dv)``
    -> ``(B, T, heads, dv)``. A value width unlike the key width is zero-padded to the
    larger one (padded query/key columns add nothing to the logits; padded value columns
    are cut from the output).
    """
    dk, dv = q.shape[-1], v.shape[-1]
    width = max(dk, dv)

    def pad(x):
        return x if x.shape[-1] == width else jnp.pad(x, [(0, 0)] * 3 + [(0, width - x.shape[-1])])

    out = jax.nn.dot_product_attention(pad(q), pad(k), pad(v), scale=1.0, implementation=impl)
    return out[..., :dv]
