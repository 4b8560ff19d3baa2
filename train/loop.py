"""The training loop: ``train_and_evaluate(config)``.

One jit-compiled step (forward, backward, optax update) on a batch sharded
over a ``jax.sharding.Mesh`` of all local devices (data parallelism; a single
device is the same code with a mesh of one), evaluation each epoch, metrics as
JSON lines, Orbax checkpoints, exact resume, PyTorch weights in and out.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from flaxattn.convert import load_state_dict, load_weights
from train.checkpoint import Checkpointer, CheckpointError
from train.config import RESUME_KEYS, TrainConfig
from train.data import Augment, Loader, load_dataset
from train.export import export_weights
from train.models import build_flax, get_model, model_kwargs
from train.optim import make_optimizer
from train.step import make_eval_step, make_train_step


class NonFiniteLossError(RuntimeError):
    """The loss (or a gradient) became NaN/inf; the run stopped without saving."""


@dataclasses.dataclass
class Parallel:
    """The device mesh and how state and batches are laid out on it."""

    mesh: Mesh

    @classmethod
    def create(cls, num_devices: int | None = None) -> Parallel:
        devices = jax.devices()
        if num_devices is not None:
            if not 1 <= num_devices <= len(devices):
                raise ValueError(
                    f"`devices` (={num_devices}) must be between 1 and the {len(devices)} available"
                )
            devices = devices[:num_devices]
        return cls(Mesh(np.array(devices), ("data",)))

    @property
    def size(self) -> int:
        return self.mesh.size

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    @property
    def batch(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec("data"))

    def put_batch(self, *arrays: np.ndarray) -> tuple[jax.Array, ...]:
        """Host arrays -> global arrays split over the batch axis. With several
        processes each passes its own slice of the global batch."""
        if jax.process_count() == 1:
            return tuple(jax.device_put(a, self.batch) for a in arrays)
        return tuple(jax.make_array_from_process_local_data(self.batch, a) for a in arrays)


def _loss_fn(smoothing: float, num_classes: int):
    def loss_fn(model, batch):
        x, y = batch
        logits = model(x).astype(jnp.float32)
        targets = optax.smooth_labels(jax.nn.one_hot(y, num_classes), smoothing)
        loss = optax.softmax_cross_entropy(logits, targets).mean()
        correct = jnp.sum(jnp.argmax(logits, -1) == y)
        return loss, {"correct": correct}

    return loss_fn


def _eval_fn(num_classes: int):
    def metric_fn(model, batch):
        x, y, mask = batch
        logits = model(x).astype(jnp.float32)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        return {
            "loss": jnp.sum(loss * mask),
            "correct": jnp.sum((jnp.argmax(logits, -1) == y) * mask),
            "count": jnp.sum(mask),
            "pred": jnp.argmax(logits, -1),
        }

    return metric_fn


class _Metrics:
    """Appends one JSON object per line to ``metrics.jsonl`` (flushed each line)."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, **record) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def evaluate(eval_step, params, rest, loader: Loader, par: Parallel) -> dict[str, Any]:
    """Loss, accuracy and predictions over a whole split (last batch padded and masked)."""
    total = {"loss": 0.0, "correct": 0, "count": 0}
    preds = []
    bs = loader.batch_size
    for s in range(loader.steps_per_epoch()):
        x, y = loader.batch(0, s)
        n = len(y)
        mask = np.zeros(bs, np.float32)
        mask[:n] = 1.0
        if n < bs:  # one compiled shape for every batch
            x = np.concatenate([x, np.zeros((bs - n,) + x.shape[1:], x.dtype)])
            y = np.concatenate([y, np.zeros(bs - n, y.dtype)])
        out = eval_step(params, rest, par.put_batch(x, y, mask))
        total["loss"] += float(out["loss"])
        total["correct"] += int(out["correct"])
        total["count"] += int(out["count"])
        pred = out["pred"]
        if jax.process_count() > 1:  # each process holds only its shard
            from jax.experimental import multihost_utils

            pred = multihost_utils.process_allgather(pred, tiled=True)
        preds.append(np.asarray(pred)[:n])
    count = max(total["count"], 1)
    return {
        "loss": total["loss"] / count,
        "accuracy": total["correct"] / count,
        "predictions": np.concatenate(preds) if preds else np.zeros(0, np.int64),
    }


def _progress(total: int, initial: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="step",
        disable=not enabled,
        dynamic_ncols=True,
        leave=False,
    )


def train_and_evaluate(
    cfg: TrainConfig, *, devices: int | None = None, crash_at_step: int | None = None
) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.dataset``; returns the final metrics and state.

    Args:
      cfg: the run's configuration.
      devices: how many local devices to shard the batch over (default: all).
      crash_at_step: fault injection for tests: ``os._exit`` right after this
        global step, as a kill would (no cleanup, no final checkpoint).
    """
    workdir = Path(cfg.workdir)
    spec = get_model(cfg.model)
    data = load_dataset(
        cfg.dataset,
        path=cfg.data_path,
        image_size=cfg.image_size,
        test_fraction=cfg.test_fraction,
        seed=cfg.seed,
    )
    info = data.info
    par = Parallel.create(devices)
    if cfg.batch_size % par.size:
        raise ValueError(
            f"`batch_size` (={cfg.batch_size}) must be divisible by the "
            f"{par.size} devices it is split over"
        )

    dtype = jnp.bfloat16 if cfg.dtype == "bfloat16" else None
    kwargs = model_kwargs(spec, info, cfg.model_overrides)
    model = build_flax(
        spec,
        info,
        cfg.model_overrides,
        rngs=nnx.Rngs(params=cfg.seed, dropout=cfg.seed + 1),
        dtype=dtype,
    )
    if cfg.init_from:
        load_state_dict(model, load_weights(cfg.init_from))
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    eval_model = nnx.merge(graphdef, params, rest)
    eval_model.eval()
    eval_graphdef = nnx.graphdef(eval_model)

    train_loader = Loader(
        data,
        cfg.batch_size,
        train=True,
        seed=cfg.seed,
        augment=Augment(cfg.augment_pad, cfg.augment_flip),
    )
    test_loader = Loader(data, cfg.batch_size, train=False)
    steps_per_epoch = train_loader.steps_per_epoch()
    total_steps = cfg.epochs * steps_per_epoch
    tx = make_optimizer(cfg, max(total_steps, 1))
    opt_state = tx.init(params)

    rep = par.replicated
    params, rest, opt_state = jax.device_put((params, rest, opt_state), rep)
    train_step = make_train_step(
        graphdef,
        tx,
        _loss_fn(cfg.label_smoothing, info.num_classes),
        skip_non_finite=True,
        state_sharding=rep,
        batch_sharding=par.batch,
    )
    eval_step = make_eval_step(
        eval_graphdef, _eval_fn(info.num_classes), state_sharding=rep, batch_sharding=par.batch
    )

    ckpt = Checkpointer(workdir / "checkpoints", keep=cfg.keep_checkpoints)
    metrics = _Metrics(workdir / "metrics.jsonl")
    config_json = {**cfg.to_json(), "model_kwargs": kwargs}
    step = 0
    if cfg.resume and ckpt.latest_step() is not None:
        (params, rest, opt_state), meta = ckpt.restore(
            (params, rest, opt_state), config=cfg.to_json(), resume_keys=RESUME_KEYS
        )
        step = int(meta["step"])
        print(f"resumed from step {step} ({ckpt.directory})", flush=True)
    elif cfg.resume:
        print(f"no checkpoint in {ckpt.directory}; starting from scratch", flush=True)

    def save(at: int) -> None:
        epoch, in_epoch = divmod(at, steps_per_epoch)
        ckpt.save(
            at,
            (params, rest, opt_state),
            {
                "config": cfg.to_json(),
                "epoch": epoch,
                "step_in_epoch": in_epoch,
                "model_kwargs": kwargs,
                "model_class": spec.cls,
            },
        )

    history = []
    pending: list[tuple[int, Any, Any, Any]] = []  # (step, loss, correct, finite) on device

    def drain() -> tuple[float, float]:
        """Sync the pending step results; stop on the first non-finite one."""
        losses, correct = [], 0
        for s, loss, corr, finite in pending:
            if not bool(finite):
                last = ckpt.latest_step()
                where = f"step {last} in {ckpt.directory}" if last is not None else "none yet"
                raise NonFiniteLossError(
                    f"loss became non-finite ({float(loss)}) at step {s}; stopped without "
                    f"saving. The last good checkpoint is {where}. Lower --lr, keep "
                    f"--clip-norm, or check the data."
                )
            losses.append(float(loss))
            correct += int(corr)
        n = len(pending)
        pending.clear()
        return (
            float(np.mean(losses)) if losses else float("nan"),
            correct / max(n * cfg.batch_size, 1),
        )

    t_start = time.perf_counter()
    try:
        for epoch in range(step // steps_per_epoch if steps_per_epoch else 0, cfg.epochs):
            start = step - epoch * steps_per_epoch
            bar = _progress(steps_per_epoch, start, f"epoch {epoch + 1}/{cfg.epochs}", cfg.progress)
            t0, seen = time.perf_counter(), 0
            run_loss, run_acc = [], []
            for x, y in train_loader.epoch(epoch, start):
                if cfg.max_steps is not None and step >= cfg.max_steps:
                    break
                params, rest, opt_state, loss, aux = train_step(
                    params, rest, opt_state, par.put_batch(x, y)
                )
                step += 1
                seen += len(y)
                pending.append((step, loss, aux["correct"], aux["finite"]))
                if step % cfg.log_every == 0 or step % cfg.checkpoint_every == 0:
                    mean_loss, acc = drain()
                    run_loss.append(mean_loss)
                    run_acc.append(acc)
                    ips = seen / (time.perf_counter() - t0)
                    bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{ips:.0f}")
                    metrics.write(
                        kind="train",
                        step=step,
                        epoch=epoch + 1,
                        loss=mean_loss,
                        accuracy=acc,
                        images_per_sec=ips,
                    )
                if step % cfg.checkpoint_every == 0:
                    save(step)
                bar.update(1)
                if crash_at_step is not None and step == crash_at_step:
                    ckpt.wait()  # what was saved is on disk, as after a real kill
                    os._exit(86)
            mean_loss, acc = drain()
            bar.close()
            if not math.isnan(mean_loss):
                run_loss.append(mean_loss)
                run_acc.append(acc)
            ev = evaluate(eval_step, params, rest, test_loader, par)
            elapsed = time.perf_counter() - t0
            record = {
                "kind": "epoch",
                "epoch": epoch + 1,
                "step": step,
                "train_loss": float(np.mean(run_loss)) if run_loss else None,
                "train_accuracy": float(np.mean(run_acc)) if run_acc else None,
                "eval_loss": ev["loss"],
                "eval_accuracy": ev["accuracy"],
                "images_per_sec": seen / max(elapsed, 1e-9),
                "seconds": elapsed,
            }
            metrics.write(**record)
            history.append(record)
            print(
                f"epoch {epoch + 1}/{cfg.epochs}: train loss {record['train_loss']:.4f}, "
                f"eval loss {ev['loss']:.4f}, eval accuracy {ev['accuracy']:.4f} "
                f"({record['images_per_sec']:.0f} img/s)",
                flush=True,
            )
            if cfg.max_steps is not None and step >= cfg.max_steps:
                break
        drain()
        if ckpt.latest_step() != step:
            save(step)
    finally:
        ckpt.close()

    final = evaluate(eval_step, params, rest, test_loader, par)
    model = nnx.merge(graphdef, params, rest)
    model.eval()
    if cfg.export:
        export_weights(model, spec.cls, kwargs, cfg.export)
    summary = {
        "model": cfg.model,
        "dataset": cfg.dataset,
        "steps": step,
        "eval_loss": final["loss"],
        "eval_accuracy": final["accuracy"],
        "seconds": time.perf_counter() - t_start,
        "devices": par.size,
    }
    metrics.write(kind="final", **summary)
    return {
        **summary,
        "history": history,
        "module": model,
        "predictions": final["predictions"],
        "config": config_json,
    }


__all__ = ["CheckpointError", "NonFiniteLossError", "Parallel", "evaluate", "train_and_evaluate"]
