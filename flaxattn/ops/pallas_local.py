"""Neighbourhood (2-D window) attention as Pallas kernels, forward and backward.

The GPU counterpart of the XLA kernels in :mod:`flaxattn.ops.local` (ACmix's local
attention) and :mod:`flaxattn.ops.dilated` (DilateFormer's MSDA): every query attends to
the ``k x k`` taps of its dilated window in a padded key map, and nothing ``k * k``
times the size of the map is ever stored. Written with ``jax.experimental.pallas`` for
the Triton lowering (GPU); ``interpret=True`` runs the same kernels on any backend (the
tests do, on CPU).

One kernel family, three kernels (a flash-attention style scheme over the window):

- forward, one program per (batch x head, query row): an online softmax over the
  ``k * k`` taps; writes the output and the row's log-sum-exp;
- ``dq``, per (batch x head, query row): ``p = exp(q.k - lse)``,
  ``ds = p (dO.v - delta)``, ``dq = sum ds k`` with ``delta = sum(dO * O)``;
- ``dk``/``dv``, per (batch x head, key row): the same terms *gathered* from the
  queries that see this key (tap ``(a, b)`` of query ``(r - a*dil, c - b*dil)``), so no
  two programs write the same row (no atomics).

Everything outside the kernels is XLA: the padding of the key map (zeros as
``nn.Unfold``, or reflection for ACmix), striding (queries at stride ``s`` are placed on
the stride-1 grid and the extra outputs dropped: ``s**2`` more kernel work for ACmix's
stride-2 blocks), ``delta``, the head-major transposes and the power-of-two padding of
the row width and head width that Triton blocks need. Their gradients are autodiff's.

Not yet run on a GPU (no session so far had one): ``bench/gpu_check.sh`` times it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from flaxattn.ops.local import check_window_args


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _row_tap(t, ks):  # lax.div/rem: t >= 0, and Triton has no lowering for Python's floor mod
    return jax.lax.div(t, ks)


def _col_tap(t, ks):
    return jax.lax.rem(t, ks)


def _compute_dtype(dtype):
    return jnp.promote_types(dtype, jnp.float32)


# --- kernels: refs are per (batch x head); rows of width W (a power of two) and D --------


def _fwd_kernel(q_ref, k_ref, v_ref, o_ref, lse_ref, *, ks, dil):
    i = pl.program_id(1)
    cdt = _compute_dtype(q_ref.dtype)
    q = q_ref[...].astype(cdt)  # (Wq, D)
    wq = q.shape[0]

    def tap(t, carry):
        m, l_sum, acc = carry
        r, c = i + _row_tap(t, ks) * dil, _col_tap(t, ks) * dil
        kt = k_ref[r, pl.ds(c, wq), :].astype(cdt)
        vt = v_ref[r, pl.ds(c, wq), :].astype(cdt)
        s = jnp.sum(q * kt, axis=-1)
        m_new = jnp.maximum(m, s)
        alpha = jnp.exp(m - m_new)
        p = jnp.exp(s - m_new)
        return m_new, l_sum * alpha + p, acc * alpha[:, None] + p[:, None] * vt

    init = (jnp.full((wq,), -jnp.inf, cdt), jnp.zeros((wq,), cdt), jnp.zeros(q.shape, cdt))
    m, l_sum, acc = jax.lax.fori_loop(0, ks * ks, tap, init)
    o_ref[...] = (acc / l_sum[:, None]).astype(o_ref.dtype)
    lse_ref[...] = (m + jnp.log(l_sum)).astype(lse_ref.dtype)


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref, *, ks, dil):
    i = pl.program_id(1)
    cdt = _compute_dtype(q_ref.dtype)
    q = q_ref[...].astype(cdt)
    do = do_ref[...].astype(cdt)
    lse = lse_ref[...].astype(cdt)
    delta = delta_ref[...].astype(cdt)
    wq = q.shape[0]

    def tap(t, dq):
        r, c = i + _row_tap(t, ks) * dil, _col_tap(t, ks) * dil
        kt = k_ref[r, pl.ds(c, wq), :].astype(cdt)
        vt = v_ref[r, pl.ds(c, wq), :].astype(cdt)
        p = jnp.exp(jnp.sum(q * kt, axis=-1) - lse)
        ds = p * (jnp.sum(do * vt, axis=-1) - delta)
        return dq + ds[:, None] * kt

    dq = jax.lax.fori_loop(0, ks * ks, tap, jnp.zeros(q.shape, cdt))
    dq_ref[...] = dq.astype(dq_ref.dtype)


def _dkv_kernel(q_ref, do_ref, lse_ref, delta_ref, k_ref, v_ref, dk_ref, dv_ref, *, ks, dil):
    # Query-side maps are zero-padded by `last = (ks - 1) * dil` rows above and columns
    # left, so tap (a, b) of key (r, c) reads query (r - a*dil, c - b*dil) at
    # (r + last - a*dil, c + last - b*dil) in bounds; padded queries have dO = 0 and
    # delta = 0, hence add nothing.
    r = pl.program_id(1)
    cdt = _compute_dtype(k_ref.dtype)
    kr = k_ref[...].astype(cdt)  # (Wk, D)
    vr = v_ref[...].astype(cdt)
    wk = kr.shape[0]
    last = (ks - 1) * dil

    def tap(t, carry):
        dk, dv = carry
        row = r + last - _row_tap(t, ks) * dil
        cols = pl.ds(last - _col_tap(t, ks) * dil, wk)
        qt = q_ref[row, cols, :].astype(cdt)
        dot = do_ref[row, cols, :].astype(cdt)
        lse = lse_ref[row, cols].astype(cdt)
        delta = delta_ref[row, cols].astype(cdt)
        p = jnp.exp(jnp.sum(qt * kr, axis=-1) - lse)
        ds = p * (jnp.sum(dot * vr, axis=-1) - delta)
        return dk + ds[:, None] * qt, dv + p[:, None] * dot

    zeros = jnp.zeros(kr.shape, cdt)
    dk, dv = jax.lax.fori_loop(0, ks * ks, tap, (zeros, zeros))
    dk_ref[...] = dk.astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


# --- pallas_call wrappers on the kernel layout -------------------------------------------------
#   q, o: (BN, H, Wq, D); kp, vp: (BN, Hp, Wk, D) with Hp = H + last, Wk >= Wq + last.


def _row(width: int, d: int | None = None) -> pl.BlockSpec:
    shape = (None, None, width) + ((d,) if d is not None else ())
    zeros = (0,) * (len(shape) - 2)
    return pl.BlockSpec(shape, lambda n, i: (n, i, *zeros))


def _whole(shape: tuple[int, ...]) -> pl.BlockSpec:
    zeros = (0,) * (len(shape) - 1)
    return pl.BlockSpec((None, *shape[1:]), lambda n, i: (n, *zeros))


# Triton, not Mosaic GPU (jax's default for pallas_call on NVIDIA GPUs): these kernels are
# row-vector code (elementwise products and lane reductions), which Triton lowers.
COMPILER_PARAMS = pltriton.CompilerParams(num_warps=4, num_stages=1)


def _forward(q, kp, vp, ks, dil, interpret):
    bn, h, wq, d = q.shape
    cdt = _compute_dtype(q.dtype)
    return pl.pallas_call(
        functools.partial(_fwd_kernel, ks=ks, dil=dil),
        grid=(bn, h),
        in_specs=[_row(wq, d), _whole(kp.shape), _whole(vp.shape)],
        out_specs=[_row(wq, d), _row(wq)],
        out_shape=[
            jax.ShapeDtypeStruct(q.shape, q.dtype),
            jax.ShapeDtypeStruct((bn, h, wq), cdt),
        ],
        interpret=interpret,
        compiler_params=COMPILER_PARAMS,
        name="window_attention_fwd",
    )(q, kp, vp)


def _backward(q, kp, vp, o, lse, do, ks, dil, interpret):
    bn, h, wq, d = q.shape
    hp, wk = kp.shape[1:3]
    last = (ks - 1) * dil
    cdt = lse.dtype
    delta = jnp.sum(do.astype(cdt) * o.astype(cdt), axis=-1)
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, ks=ks, dil=dil),
        grid=(bn, h),
        in_specs=[_row(wq, d), _whole(kp.shape), _whole(vp.shape), _row(wq, d)]
        + [_row(wq), _row(wq)],
        out_specs=_row(wq, d),
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        interpret=interpret,
        compiler_params=COMPILER_PARAMS,
        name="window_attention_dq",
    )(q, kp, vp, do, lse, delta)

    def pad(x):  # query side -> (BN, H + 2 * last, Wk + last, ...)
        extra = [(0, 0)] * (x.ndim - 3)
        return jnp.pad(x, [(0, 0), (last, last), (last, wk - wq)] + extra)

    qp, dop, lsep, deltap = pad(q), pad(do), pad(lse), pad(delta)
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, ks=ks, dil=dil),
        grid=(bn, hp),
        in_specs=[_whole(qp.shape), _whole(dop.shape), _whole(lsep.shape)]
        + [_whole(deltap.shape), _row(wk, d), _row(wk, d)],
        out_specs=[_row(wk, d), _row(wk, d)],
        out_shape=[
            jax.ShapeDtypeStruct(kp.shape, kp.dtype),
            jax.ShapeDtypeStruct(vp.shape, vp.dtype),
        ],
        interpret=interpret,
        compiler_params=COMPILER_PARAMS,
        name="window_attention_dkv",
    )(qp, dop, lsep, deltap, kp, vp)
    return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _window_attention(q, kp, vp, ks, dil, interpret):
    return _forward(q, kp, vp, ks, dil, interpret)[0]


def _window_attention_fwd(q, kp, vp, ks, dil, interpret):
    o, lse = _forward(q, kp, vp, ks, dil, interpret)
    return o, (q, kp, vp, o, lse)


def _window_attention_bwd(ks, dil, interpret, res, do):
    return _backward(*res, do, ks, dil, interpret)


_window_attention.defvjp(_window_attention_fwd, _window_attention_bwd)


# --- public ----------------------------------------------------------------------------------


def window_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    kernel_size: int,
    *,
    stride: int = 1,
    dilation: int = 1,
    pad_mode: str = "zeros",
    interpret: bool | None = None,
) -> jax.Array:
    """Softmax attention of every query over its dilated ``kernel_size x kernel_size`` window.

    The semantics of :func:`flaxattn.ops.local.local_attention`: the key/value map is
    padded by ``dilation * (kernel_size - 1) // 2`` (``'zeros'``: padded zeros take part
    in the softmax, as ``nn.Unfold``'s; ``'reflect'``: as ``nn.ReflectionPad2d``), and
    query ``(i, j)`` attends to the padded positions ``(i * stride + a * dilation,
    j * stride + b * dilation)``. ``q`` is not scaled here.

    Args:
      q: ``(B, Ho, Wo, heads, d)`` with ``Ho = ceil(H / stride)``.
      k, v: ``(B, H, W, heads, d)``.
      kernel_size: odd window side.
      stride, dilation: as above.
      pad_mode: ``'zeros'`` or ``'reflect'``.
      interpret: run the kernels in Pallas interpret mode; default: unless the
        backend is a GPU.

    Returns:
      ``(B, Ho, Wo, heads, d)``, differentiable (custom VJP, Pallas forward and backward).
    """
    check_window_args("window_attention", q, k, v, kernel_size, stride, dilation, pad_mode)
    b, h, w, n, d = k.shape
    s, dil, ks = stride, dilation, kernel_size
    p = dil * (ks - 1) // 2
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    last = (ks - 1) * dil
    if s > 1:  # queries on the stride-1 grid; the outputs in between are dropped below
        q = jnp.zeros((b, h, w, n, d), q.dtype).at[:, ::s, ::s].set(q)
    dp = _next_pow2(d)
    wq = _next_pow2(w)
    wk = _next_pow2(wq + last)

    def heads_major(x, width):  # (B, rows, cols, n, d) -> (B*n, rows, width, dp)
        x = jnp.pad(x, [(0, 0), (0, 0), (0, width - x.shape[2]), (0, 0), (0, dp - d)])
        return x.transpose(0, 3, 1, 2, 4).reshape(b * n, x.shape[1], width, dp)

    mode = "constant" if pad_mode == "zeros" else "reflect"
    kp, vp = (jnp.pad(x, [(0, 0), (p, p), (p, p), (0, 0), (0, 0)], mode=mode) for x in (k, v))
    out = _window_attention(
        heads_major(q, wq), heads_major(kp, wk), heads_major(vp, wk), ks, dil, bool(interpret)
    )
    out = out.reshape(b, n, h, wq, dp).transpose(0, 2, 3, 1, 4)[:, :, :w, :, :d]
    return out[:, ::s, ::s] if s > 1 else out


def dilated_attention(
    qkv: jax.Array,
    *,
    kernel_size: int,
    dilation,
    heads: int,
    scale: float,
    interpret: bool | None = None,
) -> jax.Array:
    """:func:`flaxattn.ops.dilated.dilated_attention` (same arguments and result) on the
    Pallas kernel: one :func:`window_attention` call per dilation group, zero padding."""
    if qkv.ndim != 6 or qkv.shape[3] != 3 or qkv.shape[4] != len(dilation):
        raise ValueError(
            f"dilated_attention: expected `qkv` of shape (B, H, W, 3, {len(dilation)}, C/n), "
            f"got {tuple(qkv.shape)}"
        )
    b, h, w, _, n, cg = qkv.shape
    if cg % heads:
        raise ValueError(f"`dim` (={n * cg}) must be divisible by `num_heads` (={heads * n})")
    outs = []
    for i, d in enumerate(dilation):
        q, k, v = (qkv[..., j, i, :].reshape(b, h, w, heads, cg // heads) for j in range(3))
        q = q * jnp.asarray(scale, q.dtype)
        out = window_attention(q, k, v, kernel_size, dilation=d, interpret=interpret)
        outs.append(out.reshape(b, h, w, cg))
    return jnp.concatenate(outs, axis=-1)
