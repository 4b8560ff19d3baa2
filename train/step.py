"""Functional, jit-compiled optax train and eval steps for any NNX module.

``nnx.split`` once, then pure ``jax.jit`` functions of (params, rest, opt_state,
batch) with donated buffers: no Python graph traversal per step, which matters
on CPU where a step of a small model takes milliseconds. Used by the training
loop and by ``bench/``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx


def _fresh(tree):
    # NNX refuses to mutate a Variable created outside the trace that mutates
    # it; rebuilding the tree makes fresh Variables inside the trace.
    return jax.tree.map(lambda a: a, tree)


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    loss_fn: Callable[[nnx.Module, Any], tuple[jax.Array, Any]],
    *,
    skip_non_finite: bool = False,
    state_sharding: Any = None,
    batch_sharding: Any = None,
    donate: bool = True,
    with_flags: bool = False,
    grad_norm: bool = False,
    compiler_options: dict | None = None,
) -> Callable:
    """``step(params, rest, opt_state, batch) -> (params, rest, opt_state, loss, aux)``.

    ``loss_fn(model, batch) -> (loss, aux)`` runs on the merged module; ``rest``
    holds everything that is not an ``nnx.Param`` (BatchNorm statistics, RNG
    state) and comes back updated.

    Args:
      skip_non_finite: when the loss or any gradient is not finite, return the
        incoming params/rest/opt_state unchanged (``aux`` then carries
        ``finite=False``): a NaN never reaches the weights or a checkpoint.
        ``aux["loss_finite"]`` tells a non-finite loss from a finite loss whose
        update was not finite.
      state_sharding / batch_sharding: ``jax.sharding`` specs for the state and the
        batch (split on its first axis). ``state_sharding`` is one sharding for all
        three state trees (replicated: data parallelism) or a tuple
        ``(params, rest, opt_state)`` of sharding trees (FSDP); the loss and ``aux``
        come back replicated.
      with_flags: the step takes a fifth argument, an int32 vector sharded like the
        batch (one entry per batch shard), and returns its maximum as
        ``aux["flag"]``: every process learns whether any process raised its flag
        (a preemption signal) from the step's own all-reduce, at no extra collective.
      grad_norm: also return the global gradient norm as ``aux["grad_norm"]`` (off by
        default: one more reduction over every gradient changes XLA's schedule, and
        the reversible stack's temp memory then grows with depth).
      compiler_options: XLA compile options for the step
        (``flaxattn.compile_options.cpu_compiler_options(model)``).
    """

    def loss_and_state(params, rest, batch):
        model = nnx.merge(graphdef, params, _fresh(rest))
        loss, aux = loss_fn(model, batch)
        _, _, new_rest = nnx.split(model, nnx.Param, ...)
        return loss, (new_rest, aux)

    def all_finite(tree):
        return jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(tree)]))

    def step(params, rest, opt_state, batch, flags=None):
        (loss, (new_rest, aux)), grads = jax.value_and_grad(loss_and_state, has_aux=True)(
            params, rest, batch
        )
        updates, new_opt_state = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        aux = dict(aux or {})
        if grad_norm:
            aux["grad_norm"] = optax.tree.norm(grads)
        if flags is not None:
            aux["flag"] = jnp.max(flags)
        if skip_non_finite:
            # The new parameters, not only the gradients: a NaN or infinite
            # learning rate turns finite gradients into non-finite weights.
            loss_finite = jnp.isfinite(loss)
            finite = loss_finite & all_finite(grads) & all_finite(new_params)

            def pick(new, old):
                return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

            new_params = pick(new_params, params)
            new_rest = pick(new_rest, rest)
            new_opt_state = pick(new_opt_state, opt_state)
            aux = {**aux, "finite": finite, "loss_finite": loss_finite}
        return new_params, new_rest, new_opt_state, loss, aux

    def step4(params, rest, opt_state, batch):
        return step(params, rest, opt_state, batch)

    fn = step if with_flags else step4
    shardings = {}
    if state_sharding is not None or batch_sharding is not None:
        s, b = state_sharding, batch_sharding
        if isinstance(s, tuple):
            sp, sr, so = s
            out = jax.sharding.NamedSharding(b.mesh, jax.sharding.PartitionSpec())
        else:
            sp = sr = so = out = s
        ins = (sp, sr, so, b, b) if with_flags else (sp, sr, so, b)
        shardings = {"in_shardings": ins, "out_shardings": (sp, sr, so, out, out)}
    return jax.jit(
        fn,
        donate_argnums=(0, 1, 2) if donate else (),
        compiler_options=compiler_options,
        **shardings,
    )


def make_eval_step(
    graphdef: nnx.GraphDef,
    metric_fn: Callable[[nnx.Module, Any], Any],
    *,
    state_sharding: Any = None,
    batch_sharding: Any = None,
    compiler_options: dict | None = None,
) -> Callable:
    """``eval_step(params, rest, batch) -> metric_fn(model, batch)``; state unchanged.
    ``compiler_options`` as for :func:`make_train_step`."""

    def step(params, rest, batch):
        return metric_fn(nnx.merge(graphdef, params, _fresh(rest)), batch)

    shardings = {}
    if state_sharding is not None or batch_sharding is not None:
        s, b = state_sharding, batch_sharding
        if isinstance(s, tuple):  # (params, rest) sharding trees
            sp, sr = s
            out = jax.sharding.NamedSharding(b.mesh, jax.sharding.PartitionSpec())
        else:
            sp = sr = out = s
        shardings = {"in_shardings": (sp, sr, b), "out_shardings": out}
    return jax.jit(step, compiler_options=compiler_options, **shardings)
