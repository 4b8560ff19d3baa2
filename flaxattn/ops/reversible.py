"""Reversible residual sequences: a backward pass that stores no activations.

Gomez et al., "The Reversible Residual Network: Backpropagation Without Storing
Activations", NeurIPS 2017. https://arxiv.org/abs/1707.04585
(as used by lucidrains/axial-attention ``axial_attention/reversible.py``).

The input is duplicated into two streams and every block couples them::

    y1 = x1 + f(x2)
    y2 = x2 + g(y1)

and the sequence returns the mean of the two output streams. Each block can be
inverted from its outputs (``x2 = y2 - g(y1)``, ``x1 = y1 - f(x2)``), so the
backward pass needs no stored activations: :func:`reversible_coupling` is one
``jax.custom_vjp`` around the whole stack whose residuals are the parameters
and the final outputs (plus the blocks' non-parameter state before the call,
normally RNG counters: a few bytes). The backward walks the blocks in reverse,
reconstructs each block's inputs, re-runs ``g`` and ``f`` under ``jax.vjp`` and
accumulates the parameter gradients. Activation memory is that of one block,
whatever the depth.

- **RNG replay.** ``f`` and ``g`` are re-run with the non-parameter state they
  had in the forward pass, so dropout draws the same masks in the backward
  (:class:`~flaxattn.layers.basic.Dropout`, ``nnx.Dropout`` and
  :class:`~flaxattn.layers.basic.DropPath` each fork their own stream, which is what
  this needs; streams shared *between* blocks are not supported).
- **Precision.** The streams are kept in at least float32 even when ``f``/``g``
  compute in bfloat16: their outputs are cast to the stream dtype before the
  addition, so reconstruction error stays at float32 round-off.
- ``reconstruct=False`` runs the same coupling with plain autodiff (activations
  stored): the same function and the same gradients up to round-off, a
  reference and a speed option when memory is not the limit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx


def _fresh(state):
    # New Variable objects: NNX refuses to mutate a Variable created at another trace level.
    return jax.tree.map(lambda a: a, state)


def _apply(graphdef, params, rest, x):
    """Run one split module on ``x``; returns the output and its non-parameter state after."""
    module = nnx.merge(graphdef, params, _fresh(rest))
    y = module(x)
    _, _, new_rest = nnx.split(module, nnx.Param, ...)
    return y, new_rest


def _after(values, deps):
    """``values`` unchanged, but with a data dependence on ``deps``.

    Without it, XLA schedules everything derived from parameters alone (bias
    and scale broadcasts to activation shape, transposed conv kernels) of all
    blocks at the start of the backward pass, or merges it (CSE) with the same
    values of the forward pass, and keeps it alive throughout: temp memory then
    grows with depth (``bench/NOTES.md``). ``optimization_barrier`` does not help there: XLA:CPU
    removes barriers before scheduling. ``x + 0 * d`` is not folded for floats
    (NaN semantics), costs one parameter-sized add, and leaves finite values
    unchanged (a non-finite ``deps`` element would make the gradients NaN,
    which such a backward pass produces anyway).
    """
    zero = sum(jnp.ravel(d)[0].astype(jnp.float32) for d in jax.tree.leaves(deps)) * 0.0
    return jax.tree.map(lambda v: v + zero.astype(v.dtype), values)


def add_to_stream(stream: jax.Array, delta: jax.Array) -> jax.Array:
    return stream + delta.astype(stream.dtype)


def reversible_coupling(
    fns: Sequence[tuple[Callable, Callable]], x1: jax.Array, x2: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Run the coupled streams through ``fns`` with the reconstructing backward.

    Args:
      fns: ``(f, g)`` NNX modules per block, each mapping a stream to a tensor of
        the same shape (any dtype; cast to the stream's).
      x1, x2: the two input streams, of one shape and dtype.

    Returns:
      The output streams ``(y1, y2)``. The modules' non-parameter state (RNG
      counters) is updated as by a plain forward call.
    """
    if x1.shape != x2.shape or x1.dtype != x2.dtype:
        raise ValueError(
            f"reversible_coupling: the streams must share shape and dtype, got "
            f"{x1.shape} {x1.dtype} and {x2.shape} {x2.dtype}"
        )
    modules = [m for pair in fns for m in pair]
    if not modules:
        return x1, x2
    splits = [nnx.split(m, nnx.Param, ...) for m in modules]
    defs = [s[0] for s in splits]
    n = len(fns)

    def forward(params, rests, x1, x2):
        new_rests = []
        for i in range(n):
            fy, rf = _apply(defs[2 * i], params[2 * i], rests[2 * i], x2)
            x1 = add_to_stream(x1, fy)
            gy, rg = _apply(defs[2 * i + 1], params[2 * i + 1], rests[2 * i + 1], x1)
            x2 = add_to_stream(x2, gy)
            new_rests += [rf, rg]
        return x1, x2, tuple(new_rests)

    @jax.custom_vjp
    def run(params, rests, x1, x2):
        return forward(params, rests, x1, x2)

    def run_fwd(params, rests, x1, x2):
        y1, y2, new_rests = forward(params, rests, x1, x2)
        # Residuals: parameters, the state before the call (RNG replay) and the outputs.
        return (y1, y2, new_rests), (params, rests, y1, y2)

    def run_bwd(residuals, cotangents):
        params, rests, y1, y2 = residuals
        dy1, dy2, _ = cotangents
        grads = [None] * (2 * n)
        for i in reversed(range(n)):
            jf, jg = 2 * i, 2 * i + 1
            # Everything derived from this block's parameters waits for the block
            # before it (in backward order) to finish, its parameter gradients
            # included; see _after.
            done = [grads[j] for j in (jf + 2, jg + 2) if j < 2 * n]
            pf, pg = _after((params[jf], params[jg]), (dy1, dy2, done))

            def g_fn(p, x, j=jg):
                return _apply(defs[j], p, rests[j], x)[0]

            def f_fn(p, x, j=jf):
                return _apply(defs[j], p, rests[j], x)[0]

            gy, g_vjp = jax.vjp(g_fn, pg, y1)
            x2 = y2 - gy.astype(y2.dtype)
            grad_g, dy1_g = g_vjp(dy2.astype(gy.dtype))
            dy1 = dy1 + dy1_g  # dL/dy1 in full: direct and through g
            fy, f_vjp = jax.vjp(f_fn, pf, x2)
            x1 = y1 - fy.astype(y1.dtype)
            grad_f, dx2_f = f_vjp(dy1.astype(fy.dtype))
            dy2 = dy2 + dx2_f
            y1, y2 = x1, x2
            grads[jf], grads[jg] = grad_f, grad_g
        # No cotangent for the non-parameter state (None: a symbolic zero).
        return tuple(grads), None, dy1, dy2

    run.defvjp(run_fwd, run_bwd)
    y1, y2, new_rests = run(tuple(s[1] for s in splits), tuple(s[2] for s in splits), x1, x2)
    for module, rest in zip(modules, new_rests, strict=True):
        nnx.update(module, rest)
    return y1, y2
