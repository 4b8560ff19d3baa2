"""``x @ w`` over the last axis with a hand-written backward.

Autodiff of a dense layer inside a train step leaves XLA:CPU free to lay out the
weight gradient as ``(dy^T x)^T`` with a transposed copy of ``x``; that ``dot`` then
runs in XLA's generic kernel, slower than the same product taken as ``x2^T dy2`` on
row-major ``(rows, features)`` operands (``python -m bench.profile vit/small``;
figures in ``bench/NOTES.md``). Here the backward states both products on the
flattened rows: ``dx = dy w^T`` and ``dw = x^T dy``.
"""

from __future__ import annotations

import jax


@jax.custom_vjp
def dense(x: jax.Array, w: jax.Array) -> jax.Array:
    """``x @ w``: ``(..., C_in) x (C_in, C_out) -> (..., C_out)``."""
    return x @ w


def _dense_fwd(x, w):
    return x @ w, (x, w)


def _dense_bwd(res, dy):
    x, w = res
    rows = (-1, x.shape[-1])
    dy2 = dy.reshape(-1, w.shape[-1])
    dx = (dy2 @ w.T).reshape(x.shape)
    dw = jax.lax.dot_general(x.reshape(rows), dy2, (((0,), (0,)), ((), ())))
    return dx.astype(x.dtype), dw.astype(w.dtype)


dense.defvjp(_dense_fwd, _dense_bwd)


def dense_dot_general(
    lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, out_sharding=None
):
    """``nnx.Linear``'s ``dot_general`` hook: :func:`dense` for the plain last-axis
    contraction, ``jax.lax.dot_general`` for anything else (a sharded output, a
    precision or result type asked for)."""
    plain = (((lhs.ndim - 1,), (0,)), ((), ()))
    if (
        tuple(map(tuple, dimension_numbers[0])) == plain[0]
        and not dimension_numbers[1][0]
        and rhs.ndim == 2
        and precision is None
        and preferred_element_type is None
        and out_sharding is None
    ):
        return dense(lhs, rhs)
    return jax.lax.dot_general(
        lhs,
        rhs,
        dimension_numbers,
        precision=precision,
        preferred_element_type=preferred_element_type,
        out_sharding=out_sharding,
    )
