"""A functional, jit-compiled optax train step for any NNX module.

``nnx.split`` once, then a pure ``jax.jit`` function of (params, rest, opt_state,
batch) with donated buffers: no Python graph traversal per step, which matters
on CPU where a step of a small model takes milliseconds. Used by the training
loop and by ``bench/``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax
from flax import nnx


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    loss_fn: Callable[[nnx.Module, Any], tuple[jax.Array, Any]],
    *,
    donate: bool = True,
) -> Callable:
    """``step(params, rest, opt_state, batch) -> (params, rest, opt_state, loss, aux)``.

    ``loss_fn(model, batch) -> (loss, aux)`` runs on the merged module; ``rest``
    holds everything that is not an ``nnx.Param`` (BatchNorm statistics, RNG
    state) and comes back updated.
    """

    def loss_and_state(params, rest, batch):
        # Fresh Variables for the non-differentiated state: NNX refuses to mutate
        # a Variable created outside the trace that mutates it.
        model = nnx.merge(graphdef, params, jax.tree.map(lambda a: a, rest))
        loss, aux = loss_fn(model, batch)
        _, _, new_rest = nnx.split(model, nnx.Param, ...)
        return loss, (new_rest, aux)

    def step(params, rest, opt_state, batch):
        (loss, (rest, aux)), grads = jax.value_and_grad(loss_and_state, has_aux=True)(
            params, rest, batch
        )
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, rest, opt_state, loss, aux

    return jax.jit(step, donate_argnums=(0, 1, 2) if donate else ())
