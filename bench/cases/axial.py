"""Axial family: AxialImageTransformer, dim 64 at 32x32, batch 8, depth 4 and 12.

The torch side is the torch_ref twin (NCHW, ``dim_index=1``); the Flax side is the
channels-last module (``dim_index=-1``) with the same weights (nothing but the
positional embedding, absent here, depends on the layout). The reversible cases
also time, as the ``coupling`` variant, the same function differentiated by plain
autodiff. ``python -m bench.axial_memory`` prints the temp-memory series over depth
and the targets of the reversible stack.
"""

import jax.numpy as jnp
from flax import nnx

import flaxattn
import torch_ref
from bench.registry import BenchCase, register
from flaxattn.convert import load_state_dict

DIM, HEADS, BATCH, SIZE = 64, 8, 8, 32


def channels_last(reversible):
    """The Flax module for a torch_ref AxialImageTransformer, channels-last, same weights."""

    def make(tm):
        args = tm.init_args
        fm = flaxattn.AxialImageTransformer(
            args["dim"],
            args["depth"],
            args["heads"],
            args["dim_heads"],
            dim_index=-1,
            reversible=reversible,
            param_dtype=jnp.float32,
            rngs=nnx.Rngs(0),
        )
        load_state_dict(fm, tm.state_dict())
        return fm

    return make


for depth in (4, 12):
    for name, reversible in (("reversible", True), ("residual", False)):
        register(
            BenchCase(
                f"axial/ait_d{depth}_{name}",
                lambda depth=depth, reversible=reversible: torch_ref.AxialImageTransformer(
                    DIM, depth, HEADS, reversible=reversible
                ),
                [(BATCH, DIM, SIZE, SIZE)],
                make_flax=channels_last(reversible),
                variants={"coupling": channels_last("coupling")} if reversible else {},
            )
        )
