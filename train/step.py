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
) -> Callable:
    """``step(params, rest, opt_state, batch) -> (params, rest, opt_state, loss, aux)``.

    ``loss_fn(model, batch) -> (loss, aux)`` runs on the merged module; ``rest``
    holds everything that is not an ``nnx.Param`` (BatchNorm statistics, RNG
    state) and comes back updated.

    Args:
      skip_non_finite: when the loss or any gradient is not finite, return the
        incoming params/rest/opt_state unchanged (``aux`` then carries
        ``finite=False``): a NaN never reaches the weights or a checkpoint.
      state_sharding / batch_sharding: ``jax.sharding`` specs for the state
        (replicated for data parallelism) and the batch (split on its first axis).
    """

    def loss_and_state(params, rest, batch):
        model = nnx.merge(graphdef, params, _fresh(rest))
        loss, aux = loss_fn(model, batch)
        _, _, new_rest = nnx.split(model, nnx.Param, ...)
        return loss, (new_rest, aux)

    def step(params, rest, opt_state, batch):
        (loss, (new_rest, aux)), grads = jax.value_and_grad(loss_and_state, has_aux=True)(
            params, rest, batch
        )
        updates, new_opt_state = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        if skip_non_finite:
            finite = jnp.isfinite(loss) & jnp.all(
                jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)])
            )

            def pick(new, old):
                return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

            new_params = pick(new_params, params)
            new_rest = pick(new_rest, rest)
            new_opt_state = pick(new_opt_state, opt_state)
            aux = {**(aux or {}), "finite": finite}
        return new_params, new_rest, new_opt_state, loss, aux

    shardings = {}
    if state_sharding is not None or batch_sharding is not None:
        s, b = state_sharding, batch_sharding
        shardings = {"in_shardings": (s, s, s, b), "out_shardings": (s, s, s, s, s)}
    return jax.jit(step, donate_argnums=(0, 1, 2) if donate else (), **shardings)


def make_eval_step(
    graphdef: nnx.GraphDef,
    metric_fn: Callable[[nnx.Module, Any], Any],
    *,
    state_sharding: Any = None,
    batch_sharding: Any = None,
) -> Callable:
    """``eval_step(params, rest, batch) -> metric_fn(model, batch)``; state unchanged."""

    def step(params, rest, batch):
        return metric_fn(nnx.merge(graphdef, params, _fresh(rest)), batch)

    shardings = {}
    if state_sharding is not None or batch_sharding is not None:
        s, b = state_sharding, batch_sharding
        shardings = {"in_shardings": (s, s, b), "out_shardings": s}
    return jax.jit(step, **shardings)
