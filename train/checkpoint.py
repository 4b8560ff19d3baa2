"""Checkpoints with Orbax: atomic, sealed with checksums, every N steps and at the end.

A checkpoint holds three items:

- ``state``: the whole training state (parameters, BatchNorm statistics, RNG
  state, optimizer state), sharded as in the run; Orbax writes it from every
  process and reads it back into any mesh or process count (it reshards);
- ``meta``: JSON: the global step, the data position, the run's configuration,
  the process count and mesh, and a manifest of every array's shape and dtype;
- ``data``: the grain iterator's state, one file per process (grain's Orbax
  handler), so a resumed run with the same process count continues the input
  pipeline exactly where it stopped.

Orbax writes each checkpoint into a temporary directory and renames it when
complete, so a run killed mid-write leaves the previous checkpoint as the latest.
Once a checkpoint is complete, process 0 *seals* it: ``integrity.json`` in the
step's directory lists the SHA-256 of every file. :meth:`Checkpointer.restore_latest`
verifies the seal before reading, refuses a damaged checkpoint naming the file,
and falls back to the newest intact one.

Restoring compares the manifest and the configuration with the current run
*before* reading any array, and raises :class:`CheckpointError` naming every
difference (a different run is not damage: no fallback then).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

SEAL = "integrity.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be restored into this run (lists what differs)."""


class DamagedCheckpointError(CheckpointError):
    """A checkpoint whose files do not match their seal, or that cannot be read."""


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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(step_dir: Path) -> list[Path]:
    return sorted(p for p in step_dir.rglob("*") if p.is_file() and p.name != SEAL)


class Checkpointer:
    """Orbax ``CheckpointManager`` for the train state, its meta and the data iterator.

    Every process constructs one and calls :meth:`save`/:meth:`restore_latest`
    alike (Orbax coordinates the writes); process 0 writes the seals.

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
        self._unsealed: list[int] = []

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def step_dir(self, step: int) -> Path:
        return self.directory / str(step)

    # -- writing ---------------------------------------------------------------

    def save(self, step: int, state: Any, meta: dict, data_iterator: Any = None) -> None:
        """Write ``state`` at ``step`` (asynchronously; :meth:`wait` or :meth:`close`
        finish and seal it). ``data_iterator``: a grain iterator whose position is
        saved with it."""
        # Seal the previous checkpoint first. Every process waits here at the same
        # step, so the decision never depends on one process's timing.
        self._seal()
        meta = {
            **meta,
            "step": int(step),
            "manifest": manifest(state),
            "process_count": jax.process_count(),
        }
        items = {
            "state": ocp.args.StandardSave(_keys_to_data(state)),
            "meta": ocp.args.JsonSave(meta),
        }
        if data_iterator is not None:
            import grain

            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)
        self._unsealed.append(int(step))

    def _seal(self) -> None:
        if not self._unsealed:
            return
        self.manager.wait_until_finished()
        if jax.process_index() == 0:
            for step in self._unsealed:
                self._write_seal(step)
        self._unsealed.clear()

    def _write_seal(self, step: int) -> None:
        step_dir = self.step_dir(step)
        if not step_dir.is_dir():  # already rotated out by max_to_keep
            return
        seal = {str(p.relative_to(step_dir)): _sha256(p) for p in _files(step_dir)}
        tmp = step_dir / f".{SEAL}.tmp"
        tmp.write_text(json.dumps({"sha256": seal}, indent=1))
        os.replace(tmp, step_dir / SEAL)

    # -- reading ---------------------------------------------------------------

    def verify(self, step: int) -> None:
        """Raise :class:`DamagedCheckpointError` naming the first file of ``step``
        that is missing, unexpected or differs from its seal. A checkpoint written
        by a run killed before sealing has no seal and is checked by reading it."""
        step_dir = self.step_dir(step)
        seal_path = step_dir / SEAL
        if not seal_path.is_file():
            return
        try:
            seal = json.loads(seal_path.read_text())["sha256"]
        except (OSError, ValueError, KeyError) as e:
            raise DamagedCheckpointError(
                f"checkpoint step {step}: its seal {seal_path} is unreadable ({e})"
            ) from e
        present = {str(p.relative_to(step_dir)) for p in _files(step_dir)}
        for rel in sorted(set(seal) | present):
            if rel not in present:
                raise DamagedCheckpointError(
                    f"checkpoint step {step} is damaged: {step_dir / rel} is missing"
                )
            if rel not in seal:
                continue  # a file added after sealing (none of Orbax's) does not matter
            if _sha256(step_dir / rel) != seal[rel]:
                raise DamagedCheckpointError(
                    f"checkpoint step {step} is damaged: {step_dir / rel} does not match "
                    f"its SHA-256 in {seal_path}"
                )

    def read_meta(self, step: int) -> dict:
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        except Exception as e:  # a torn or foreign directory
            raise DamagedCheckpointError(
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
        data_iterator: Any = None,
    ) -> tuple[Any, dict]:
        """Restore the state shaped like ``like`` (arrays or ShapeDtypeStructs, with
        their shardings: the target mesh) and the meta; refuse a checkpoint that does
        not fit. ``data_iterator``'s position is restored too when the checkpoint was
        written by as many processes as this run has (``meta["data_restored"]``)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        self.verify(step)
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
        items = {"state": ocp.args.StandardRestore(abstract)}
        same_processes = meta.get("process_count", 1) == jax.process_count()
        has_data = (self.step_dir(step) / "data").is_dir()
        if data_iterator is not None and same_processes and has_data:
            import grain

            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:
            raise DamagedCheckpointError(
                f"checkpoint step {step} in {self.directory} is unreadable: {type(e).__name__}: {e}"
            ) from e
        meta["data_restored"] = "data" in items
        return _data_to_keys(out["state"], like), meta

    def restore_latest(self, like: Any, **kwargs) -> tuple[Any, dict] | None:
        """:meth:`restore` the newest checkpoint that is intact; a damaged one is
        reported (a warning naming the file) and skipped. ``None`` when there is no
        checkpoint; :class:`DamagedCheckpointError` when none is intact."""
        steps = self.all_steps()
        damaged: list[str] = []
        for step in reversed(steps):
            try:
                out = self.restore(like, step=step, **kwargs)
            except DamagedCheckpointError as e:
                damaged.append(str(e))
                warnings.warn(f"{e}; trying an older checkpoint", stacklevel=2)
                continue
            self._set_aside([s for s in steps if s > step])
            return out
        if damaged:
            raise DamagedCheckpointError(
                f"no intact checkpoint in {self.directory}:\n  " + "\n  ".join(damaged)
            )
        return None

    def _set_aside(self, steps: list[int]) -> None:
        """Move damaged checkpoints newer than the restored one out of the way (into
        ``<workdir>/damaged_checkpoints/``, never deleted), so the resumed run can
        write those steps again."""
        if not steps:
            return
        if jax.process_index() == 0:
            aside = self.directory.parent / "damaged_checkpoints"
            aside.mkdir(exist_ok=True)
            for step in steps:
                target = aside / str(step)
                n = 1
                while target.exists():
                    target, n = aside / f"{step}.{n}", n + 1
                os.replace(self.step_dir(step), target)
                warnings.warn(f"moved damaged checkpoint step {step} to {target}", stacklevel=3)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("flaxattn: damaged checkpoints set aside")
        self.manager.reload()

    def wait(self) -> None:
        self._seal()

    def close(self) -> None:
        self._seal()
        self.manager.close()
