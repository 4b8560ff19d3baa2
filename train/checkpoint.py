"""Checkpoints with Orbax: atomic, every N steps and at the end, the last K kept.

A checkpoint holds the whole training state (parameters, BatchNorm statistics,
RNG state, optimizer state) and a JSON ``meta`` item: the global step, the
data position (epoch, step in epoch), the run's configuration and a manifest
of every array's shape and dtype. Orbax writes each checkpoint into a temporary
directory and renames it when complete, so a run killed mid-write leaves the
previous checkpoint as the latest.

Restoring compares the manifest and the configuration with the current run
*before* reading any array, and raises :class:`CheckpointError` naming every
difference; arrays are read into new buffers and handed back only when all of
them were read, so a model is never half-loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(ValueError):
    """A checkpoint that cannot be restored into this run (lists what differs)."""


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _keys_to_data(tree):
    # Typed PRNG keys are stored as their raw uint32 data.
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _data_to_keys(tree, like):
    return jax.tree.map(
        lambda x, ref: (
            jax.random.wrap_key_data(x, impl=jax.random.key_impl(ref)) if _is_key(ref) else x
        ),
        tree,
        like,
    )


def manifest(tree) -> dict[str, list]:
    """``{path: [shape, dtype]}`` of every array leaf (keys as their data)."""
    flat = jax.tree_util.tree_flatten_with_path(_keys_to_data(tree))[0]
    return {
        jax.tree_util.keystr(path): [list(np.shape(leaf)), str(jnp.dtype(leaf.dtype))]
        for path, leaf in flat
    }


def _diff_manifest(saved: dict, current: dict) -> list[str]:
    lines = []
    for k in sorted(set(saved) | set(current)):
        if k not in current:
            lines.append(f"  in the checkpoint only: {k} {saved[k]}")
        elif k not in saved:
            lines.append(f"  in this run only:       {k} {current[k]}")
        elif saved[k] != current[k]:
            lines.append(f"  {k}: checkpoint {saved[k]}, this run {current[k]}")
    return lines


class Checkpointer:
    """Orbax ``CheckpointManager`` for the train state and its meta.

    Args:
      directory: where checkpoints live (``<workdir>/checkpoints``).
      keep: how many of the latest checkpoints to keep.
    """

    def __init__(self, directory: str | Path, *, keep: int = 3):
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, cleanup_tmp_directories=True
            ),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Write ``state`` at ``step`` (asynchronously; :meth:`wait` or :meth:`close` to finish)."""
        meta = {**meta, "step": int(step), "manifest": manifest(state)}
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(_keys_to_data(state)),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )

    def read_meta(self, step: int) -> dict:
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        except Exception as e:  # a torn or foreign directory
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} is unreadable: {type(e).__name__}: {e}"
            ) from e
        return dict(out["meta"])

    def restore(
        self,
        like: Any,
        *,
        step: int | None = None,
        config: dict | None = None,
        resume_keys: tuple = (),
    ) -> tuple[Any, dict]:
        """Restore the state shaped like ``like`` (arrays or ShapeDtypeStructs, with
        their shardings) and the meta; refuse a checkpoint that does not fit."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        meta = self.read_meta(step)
        problems = []
        if config is not None:
            saved = meta.get("config", {})
            for k in resume_keys:
                if saved.get(k) != config.get(k):
                    problems.append(
                        f"  config {k}: checkpoint {saved.get(k)!r}, this run {config.get(k)!r}"
                    )
        problems += _diff_manifest(meta.get("manifest", {}), manifest(like))
        if problems:
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} does not fit this run:\n"
                + "\n".join(problems)
            )
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
            _keys_to_data(like),
        )
        try:
            out = self.manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
            )
        except Exception as e:
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} is unreadable: {type(e).__name__}: {e}"
            ) from e
        state = _data_to_keys(out["state"], like)
        return state, meta

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
