"""The training loop: ``train_and_evaluate(config)``, in the shape of Flax's examples.

:func:`build_run` makes everything a run needs once (data, mesh, model, jitted
steps, checkpointer, logs); :func:`create_state` / :func:`restore_state` give the
train state on the mesh; :func:`train_epoch` runs one epoch's steps;
:func:`evaluate` scores the held-out split; :func:`save_checkpoint` writes the
state with the input pipeline's position. :func:`train_and_evaluate` wires them.

The same code runs on one CPU and on many hosts: the batch is split over every
device of every process, parameters optionally sharded (``--mesh fsdp=F``), see
:mod:`train.parallel`. A ``SIGTERM`` or ``SIGINT`` finishes the current step,
writes a checkpoint and returns (``result["preempted"]``); every process stops at
the same step because the signal travels inside the train step's own all-reduce.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from flaxattn.compile_options import cpu_compiler_options
from flaxattn.convert import load_state_dict, load_weights
from train.checkpoint import Checkpointer, CheckpointError
from train.config import RESUME_KEYS, TrainConfig
from train.data import Augment, Dataset, TrainPipeline, eval_batches, load_dataset
from train.export import check_export_path, export_weights
from train.gate import GATE_BATCH, CertificateError, batch_images, certify, parity_gate
from train.metrics import MetricsLog, plot_curves
from train.models import ModelSpec, build_flax, get_model, model_kwargs
from train.optim import make_optimizer, schedule
from train.parallel import Parallel, parse_mesh
from train.step import make_eval_step, make_train_step

# Fault injection for the tests, read here and nowhere else: ``os._exit(86)`` right
# after this global step, as a kill would (no cleanup, no final checkpoint).
CRASH_ENV = "FLAXATTN_CRASH_AT_STEP"


class NonFiniteLossError(RuntimeError):
    """The loss, a gradient or the updated weights became NaN/inf; the run stopped
    without saving that step."""


class WorkdirError(ValueError):
    """The workdir holds another run and neither ``--resume`` nor ``--overwrite`` was given."""


def say(*args) -> None:
    """Print on process 0 only."""
    if jax.process_index() == 0:
        print(*args, flush=True)


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


@dataclasses.dataclass
class TrainState:
    """The arrays of a run on the mesh, and how many steps produced them."""

    params: Any
    rest: Any  # every nnx Variable that is not a Param: BatchNorm statistics, RNG state
    opt_state: Any
    step: int = 0

    @property
    def arrays(self) -> tuple:
        return self.params, self.rest, self.opt_state


@dataclasses.dataclass
class Run:
    """Everything a run builds once, before its first step."""

    cfg: TrainConfig
    spec: ModelSpec
    data: Dataset
    kwargs: dict
    par: Parallel
    graphdef: Any
    eval_graphdef: Any
    tx: optax.GradientTransformation
    shardings: tuple  # (params, rest, opt_state) sharding trees
    train_step: Any
    eval_step: Any
    pipeline: TrainPipeline
    ckpt: Checkpointer
    log: MetricsLog

    @property
    def workdir(self) -> Path:
        return Path(self.cfg.workdir)


def _rngs(cfg: TrainConfig) -> nnx.Rngs:
    """The model's RNG streams. build_run's abstract model must use the same streams as
    create_state's: the shardings are built from its state, whose RNG variables carry
    their stream's name (a ``default`` stream there fails device_put on ``dropout``)."""
    return nnx.Rngs(params=cfg.seed, dropout=cfg.seed + 1)


def _check_workdir(cfg: TrainConfig) -> None:
    """Refuse to mix two runs in one workdir; ``--overwrite`` clears the old one."""
    workdir = Path(cfg.workdir)
    ckpt_dir = workdir / "checkpoints"
    if workdir.exists() and not workdir.is_dir():
        raise ValueError(f"`workdir` (={cfg.workdir!r}) exists and is not a directory")
    has_run = ckpt_dir.is_dir() and any(ckpt_dir.iterdir())
    if has_run and not cfg.resume and not cfg.overwrite:
        raise WorkdirError(
            f"`workdir` (={cfg.workdir!r}) holds another run's checkpoints; pass --resume to "
            f"continue it, --overwrite to replace it, or another --workdir"
        )
    if cfg.overwrite and jax.process_index() == 0:
        for name in ("checkpoints", "tb", "metrics.jsonl", "curves.png"):
            p = workdir / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"`workdir` (={cfg.workdir!r}) cannot be created: {e.strerror}") from e
    if not os.access(workdir, os.W_OK):
        raise ValueError(f"`workdir` (={cfg.workdir!r}) is not writable")


def build_run(cfg: TrainConfig, *, devices: int | None = None) -> Run:
    """Data, mesh, model, optimizer, jitted steps, checkpointer and logs for ``cfg``."""
    spec = get_model(cfg.model)
    par = Parallel.create(parse_mesh(cfg.mesh), devices)
    nproc = jax.process_count()
    if cfg.batch_size % par.size or cfg.batch_size % nproc:
        raise ValueError(
            f"`batch_size` (={cfg.batch_size}) must be divisible by the {par.size} devices "
            f"(mesh {par.shape}) and the {nproc} process(es) it is split over"
        )
    if cfg.export:
        check_export_path(cfg.export)
    _check_workdir(cfg)
    if nproc > 1:  # process 0 may have cleared the workdir (--overwrite): wait for it
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("flaxattn: workdir checked")
    data = load_dataset(
        cfg.dataset,
        path=cfg.data_path,
        image_size=cfg.image_size,
        test_fraction=cfg.test_fraction,
        seed=cfg.seed,
    )
    info = data.info
    pipeline = TrainPipeline(
        data,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        augment=Augment(cfg.augment_pad, cfg.augment_flip),
        epochs=cfg.epochs,
        process_index=jax.process_index(),
        process_count=nproc,
        workers=cfg.workers,
    )
    kwargs = model_kwargs(spec, info, cfg.model_overrides)
    dtype = jnp.bfloat16 if cfg.dtype == "bfloat16" else None
    # Only the structure is needed here; create_state builds the values.
    try:
        abstract = nnx.eval_shape(
            lambda: build_flax(spec, info, cfg.model_overrides, rngs=_rngs(cfg), dtype=dtype)
        )
    except (TypeError, ValueError) as e:
        # A wrong --set value reaches the constructor's own argument checks.
        raise ValueError(f"{spec.cls}({kwargs}): {e}") from e
    abstract.train()
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
    abstract.eval()
    eval_graphdef = nnx.graphdef(abstract)
    tx = make_optimizer(cfg, max(pipeline.total_steps, 1))
    opt_state = jax.eval_shape(tx.init, params)
    shardings = (
        par.state_sharding(params),
        par.state_sharding(rest, fsdp=False),
        par.state_sharding(opt_state),
    )
    # Both steps run the same convolutions (the eval step their forward).
    options = cpu_compiler_options(abstract)
    train_step = make_train_step(
        graphdef,
        tx,
        _loss_fn(cfg.label_smoothing, info.num_classes),
        skip_non_finite=True,
        state_sharding=shardings,
        batch_sharding=par.batch,
        with_flags=True,
        grad_norm=True,
        compiler_options=options,
    )
    eval_step = make_eval_step(
        eval_graphdef,
        _eval_fn(info.num_classes),
        state_sharding=shardings[:2],
        batch_sharding=par.batch,
        compiler_options=options,
    )
    return Run(
        cfg=cfg,
        spec=spec,
        data=data,
        kwargs=kwargs,
        par=par,
        graphdef=graphdef,
        eval_graphdef=eval_graphdef,
        tx=tx,
        shardings=shardings,
        train_step=train_step,
        eval_step=eval_step,
        pipeline=pipeline,
        ckpt=Checkpointer(Path(cfg.workdir) / "checkpoints", keep=cfg.keep_checkpoints),
        log=MetricsLog(cfg.workdir, tensorboard=cfg.tensorboard),
    )


def _start_gate(run: Run, model: nnx.Module) -> Future:
    """The parity gate, run in a thread beside the compilation of the first train step.

    The start-up costs (torch's first call, the gate's own compile, the train step's
    compile) are mostly single-threaded: on two cores they overlap. The future's
    ``result()`` re-raises the gate's error, before any step has run.
    """
    cfg = run.cfg
    n = min(cfg.batch_size, GATE_BATCH, len(run.data.train))
    x = batch_images(run.data.train, range(n), run.data)
    # The thread gets its own copy: the main thread goes on to switch ``model`` to train
    # mode and split it. The copy shares the (immutable) arrays.
    fp32 = nnx.clone(_float32(run, model))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = max(1, (cores or 1) - 1)  # one core for the train step's compilation
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flaxattn-parity-gate")
    gate = pool.submit(
        parity_gate,
        run.spec,
        run.data.info,
        cfg.model_overrides,
        fp32,
        cfg.init_from,
        x,
        threads=threads,
    )
    pool.shutdown(wait=False)  # the submitted gate still runs; nothing else will
    return gate


def _compile_train_step(run: Run, state: TrainState) -> None:
    """Compile the train step ahead of time for ``state``'s arrays and the run's batch
    (``jax.jit`` reuses the executable at the first step)."""
    b = run.par.batch
    x = jax.ShapeDtypeStruct(
        (run.cfg.batch_size, *run.data.train.image_shape), jnp.float32, sharding=b
    )
    y = jax.ShapeDtypeStruct((run.cfg.batch_size,), jnp.int32, sharding=b)
    flags = jax.ShapeDtypeStruct((run.par.size,), jnp.int32, sharding=b)
    run.train_step.lower(*state.arrays, (x, y), flags).compile()


def create_state(run: Run) -> TrainState:
    """Fresh weights from ``cfg.seed`` (or ``--init-from``), placed on the mesh.

    With ``--init-from`` the parity gate runs in a thread while this thread compiles the
    first train step; it is joined here, so a failed gate raises before any step."""
    cfg = run.cfg
    dtype = jnp.bfloat16 if cfg.dtype == "bfloat16" else None
    model = build_flax(
        run.spec,
        run.data.info,
        cfg.model_overrides,
        rngs=_rngs(cfg),
        dtype=dtype,
    )
    gate = None
    if cfg.init_from:
        load_state_dict(model, load_weights(cfg.init_from))
        if not cfg.parity_check:
            say("parity gate skipped (--no-parity-check)")
        else:
            gate = _start_gate(run, model)
    try:
        model.train()
        _, params, rest = nnx.split(model, nnx.Param, ...)
        opt_state = run.tx.init(params)
        arrays = run.par.put_state((params, rest, opt_state), run.shardings)
        state = TrainState(*arrays, step=0)
        if gate is not None:
            _compile_train_step(run, state)
    finally:
        # A failed gate is the error to report, even when this thread failed too.
        line = gate.result() if gate is not None else None
    if line is not None:
        say(line)
    return state


def restore_state(run: Run, state: TrainState, iterator) -> tuple[TrainState, Any]:
    """Continue from the newest intact checkpoint, if any (``--resume``).

    Returns the state and the data iterator at the checkpoint's position. A
    checkpoint from another process count or mesh is resharded; the input
    pipeline then starts at the checkpoint's step (its position is a pure
    function of the step) instead of the saved per-process iterator state.
    """
    out = run.ckpt.restore_latest(
        state.arrays,
        config=run.cfg.to_json(),
        resume_keys=RESUME_KEYS,
        data_iterator=iterator,
    )
    if out is None:
        say(f"no checkpoint in {run.ckpt.directory}; starting from scratch")
        return state, iterator
    arrays, meta = out
    step = int(meta["step"])
    if not meta["data_restored"]:
        iterator = run.pipeline.iterator(start_step=step)
    say(
        f"resumed from step {step} ({run.ckpt.directory}"
        + (
            ""
            if meta["data_restored"]
            else f"; written by {meta.get('process_count', 1)} process(es), resharded"
        )
        + ")"
    )
    return TrainState(*arrays, step=step), iterator


def save_checkpoint(run: Run, state: TrainState, iterator) -> None:
    epoch, in_epoch = divmod(state.step, max(run.pipeline.steps_per_epoch, 1))
    run.ckpt.save(
        state.step,
        state.arrays,
        {
            "config": run.cfg.to_json(),
            "epoch": epoch,
            "step_in_epoch": in_epoch,
            "model_kwargs": run.kwargs,
            "model_class": run.spec.cls,
            "mesh": run.par.shape,
        },
        data_iterator=iterator,
    )


class StopSignal:
    """``SIGTERM``/``SIGINT`` -> a flag read at the next step boundary.

    A second ``SIGINT`` interrupts at once (Python's default). Handlers are
    installed only in the main thread and restored on exit.
    """

    def __init__(self):
        self.signal: int | None = None
        self._old: dict = {}

    def _handle(self, signum, frame):
        if self.signal == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal else "a stop flag"


@dataclasses.dataclass
class _Pending:
    """Step results still on the device, synced at log points (not every step)."""

    items: list = dataclasses.field(default_factory=list)

    def drain(self, run: Run, log: bool, window: tuple | None = None) -> dict | None:
        """Check and summarise the pending steps; ``window`` = (start time, steps
        since then) for the images/s figure."""
        if not self.items:
            return None
        cfg = run.cfg
        losses, correct, norms = [], 0, []
        for step, loss, aux in self.items:
            if not bool(aux["finite"]):
                last = run.ckpt.latest_step()
                where = f"step {last} in {run.ckpt.directory}" if last is not None else "none yet"
                loss = float(loss)
                what = (
                    f"loss became non-finite ({loss}) at step {step}"
                    if not bool(aux["loss_finite"])
                    else f"training diverged at step {step}: the loss ({loss:.4g}) is finite "
                    f"but its gradients or the updated weights are non-finite"
                )
                raise NonFiniteLossError(
                    f"{what}; stopped without saving it. The last good checkpoint is {where}. "
                    f"Lower --lr, keep --clip-norm, or check the data."
                )
            losses.append(float(loss))
            correct += int(aux["correct"])
            norms.append(float(aux["grad_norm"]))
        last_step = self.items[-1][0]
        n = len(self.items)
        self.items.clear()
        rec = {
            "kind": "train",
            "step": last_step,
            "epoch": (last_step - 1) // max(run.pipeline.steps_per_epoch, 1) + 1,
            "loss": float(np.mean(losses)),
            "accuracy": correct / (n * cfg.batch_size),
            "learning_rate": float(schedule(cfg, max(run.pipeline.total_steps, 1))(last_step - 1)),
            "grad_norm": float(np.mean(norms)),
        }
        if window is not None and window[1] > 0:
            seconds = max(time.perf_counter() - window[0], 1e-9)
            rec["images_per_sec"] = window[1] * cfg.batch_size / seconds
        if log:
            run.log.write(**rec)
        return rec


def _progress(run: Run, initial: int, total: int):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc="train",
        unit="step",
        disable=not run.cfg.progress or jax.process_index() != 0,
        dynamic_ncols=True,
        leave=False,
    )


def train_epoch(run: Run, state: TrainState, it, stop: StopSignal, last_step: int) -> str | None:
    """Steps of the current epoch up to ``last_step``; updates ``state`` in place.

    Returns ``"preempted"`` when a stop signal ended the epoch early, else ``None``.
    The progress bar starts after the first step, so its ETA leaves out compilation.
    """
    cfg, par = run.cfg, run.par
    spe = run.pipeline.steps_per_epoch
    end = min((state.step // spe + 1) * spe, last_step)
    crash_at = os.environ.get(CRASH_ENV)
    crash_at = int(crash_at) if crash_at else None
    local_flags = len(par.mesh.local_devices)
    pending = _Pending()
    bar = None
    prev_aux = None
    t_window, window = None, 0  # images/s over the steps since the last log point
    while state.step < end:
        x, y = next(it)
        flags = np.full(local_flags, 1 if stop.signal else 0, np.int32)
        xb, yb, fb = par.put_batch(x, y, flags)
        params, rest, opt_state, loss, aux = run.train_step(*state.arrays, (xb, yb), fb)
        state.params, state.rest, state.opt_state = params, rest, opt_state
        state.step += 1
        pending.items.append((state.step, loss, aux))
        window += 1
        if bar is None:  # the first step compiled: time and ETA start now
            jax.block_until_ready(loss)
            bar = _progress(run, state.step, last_step)
            t_window, window = time.perf_counter(), 0
        if state.step % cfg.log_every == 0 or state.step % cfg.checkpoint_every == 0:
            rec = pending.drain(run, log=True, window=(t_window, window))
            t_window, window = time.perf_counter(), 0
            if rec is not None:
                bar.set_postfix(
                    loss=f"{rec['loss']:.4f}", img_s=f"{rec.get('images_per_sec', 0):.0f}"
                )
        if state.step % cfg.checkpoint_every == 0:
            save_checkpoint(run, state, it)
        bar.update(1)
        if crash_at is not None and state.step == crash_at:
            run.ckpt.wait()  # what was saved is on disk, as after a real kill
            os._exit(86)
        # The flag of the previous step is on the host by now; every process reads
        # the same all-reduced value, so all stop after the same step.
        if prev_aux is not None and int(prev_aux["flag"]):
            pending.drain(run, log=True)
            bar.close()
            return "preempted"
        prev_aux = aux
    pending.drain(run, log=True)
    if bar is not None:
        bar.close()
    return None


def evaluate(run: Run, state: TrainState) -> dict[str, Any]:
    """Loss, accuracy and predictions over the whole held-out split."""
    total = {"loss": 0.0, "correct": 0, "count": 0}
    preds = []
    nproc = jax.process_count()
    for x, y, mask in eval_batches(
        run.data,
        batch_size=run.cfg.batch_size,
        process_index=jax.process_index(),
        process_count=nproc,
    ):
        out = run.eval_step(state.params, state.rest, run.par.put_batch(x, y, mask))
        total["loss"] += float(out["loss"])
        total["correct"] += int(out["correct"])
        total["count"] += int(out["count"])
        pred = out["pred"]
        if nproc > 1:  # each process holds only its rows
            from jax.experimental import multihost_utils

            pred = multihost_utils.process_allgather(pred, tiled=True)
        preds.append(np.asarray(pred))
    count = max(total["count"], 1)
    n = len(run.data.test)
    return {
        "loss": total["loss"] / count,
        "accuracy": total["correct"] / count,
        # Global batches are the test split in order, the last one padded.
        "predictions": np.concatenate(preds)[:n] if preds else np.zeros(0, np.int64),
    }


def _float32(run: Run, model: nnx.Module) -> nnx.Module:
    """``model`` itself, or a float32-compute copy of it for a bfloat16 run (same weights)."""
    if run.cfg.dtype != "bfloat16":
        return model
    fp32 = build_flax(run.spec, run.data.info, run.cfg.model_overrides, rngs=_rngs(run.cfg))
    nnx.update(fp32, nnx.state(model))
    return fp32


def _certificate(run: Run, model: nnx.Module):
    """``export_weights``'s ``certify``: the check on the first held-out images."""
    cfg = run.cfg
    n = min(cfg.batch_size, GATE_BATCH, len(run.data.test))
    indices = list(range(n))
    batch = {
        "dataset": cfg.dataset,
        "data_path": str(Path(cfg.data_path).resolve()) if cfg.data_path else None,
        "image_size": cfg.image_size,
        "test_fraction": cfg.test_fraction,
        "seed": cfg.seed,
        "split": "test",
        "indices": indices,
    }
    x = batch_images(run.data.test, indices, run.data)
    return lambda path: certify(_float32(run, model), path, batch, x)


def _host_model(run: Run, state: TrainState) -> nnx.Module:
    """The trained model with every array gathered to this host (a collective)."""
    params, rest = run.par.to_host((state.params, state.rest))
    model = nnx.merge(run.graphdef, jax.device_put(params), jax.device_put(rest))
    model.eval()
    return model


def train_and_evaluate(cfg: TrainConfig, *, devices: int | None = None) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.dataset``; returns the final metrics and the model.

    Args:
      cfg: the run's configuration.
      devices: shard over the first ``devices`` local devices only (one process).
    """
    t_start = time.perf_counter()
    run = build_run(cfg, devices=devices)
    try:
        state = create_state(run)  # the parity gate of --init-from runs here
    except BaseException:
        run.log.close()
        run.ckpt.close()
        raise
    it = run.pipeline.iterator(start_step=0)
    if cfg.resume:
        state, it = restore_state(run, state, it)
    last_step = run.pipeline.total_steps
    if cfg.max_steps is not None:
        last_step = min(last_step, cfg.max_steps)
    history: list[dict] = []
    outcome = None
    if state.step >= last_step:
        if state.step:
            say(f"the run in {cfg.workdir} is complete at step {state.step}; nothing to train")
        else:
            say(f"nothing to train: --epochs {cfg.epochs}, --max-steps {cfg.max_steps}")
        outcome = "complete"
    try:
        with StopSignal() as stop:
            while state.step < last_step:
                t0, step0 = time.perf_counter(), state.step
                if train_epoch(run, state, it, stop, last_step) == "preempted":
                    if run.ckpt.latest_step() != state.step:
                        save_checkpoint(run, state, it)
                    run.ckpt.wait()
                    outcome = "preempted"
                    say(
                        f"stopped by {stop.name} at step {state.step}: checkpoint written to "
                        f"{run.ckpt.directory}; continue with --resume"
                    )
                    break
                epoch = (state.step - 1) // run.pipeline.steps_per_epoch + 1
                ev = evaluate(run, state)
                elapsed = time.perf_counter() - t0
                record = {
                    "kind": "epoch",
                    "epoch": epoch,
                    "step": state.step,
                    "eval_loss": ev["loss"],
                    "eval_accuracy": ev["accuracy"],
                    "images_per_sec": (state.step - step0) * cfg.batch_size / max(elapsed, 1e-9),
                    "seconds": elapsed,
                }
                run.log.write(**record)
                history.append(record)
                say(
                    f"epoch {epoch}/{cfg.epochs} (step {state.step}): eval loss "
                    f"{ev['loss']:.4f}, eval accuracy {ev['accuracy']:.4f} "
                    f"({record['images_per_sec']:.0f} img/s)"
                )
            if outcome != "preempted" and run.ckpt.latest_step() != state.step:
                save_checkpoint(run, state, it)
    except BaseException:
        run.log.close()
        raise
    finally:
        run.ckpt.close()
        close = getattr(it, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                close()  # grain worker processes

    if outcome == "preempted":
        run.log.close()
        return {"preempted": True, "steps": state.step, "model": cfg.model}
    final = evaluate(run, state)
    model = _host_model(run, state)
    if cfg.export and jax.process_index() == 0:
        certify = _certificate(run, model) if cfg.parity_check else None
        cert = export_weights(model, run.spec.cls, run.kwargs, cfg.export, certify=certify).get(
            "certificate", {"skipped": "--no-parity-check"}
        )
        if cert.get("skipped"):
            say(f"certificate skipped: {cert['skipped']}")
        elif cert["passed"]:
            say(f"certificate: exported weights match in PyTorch ({cert['summary']})")
        else:
            run.log.close()
            raise CertificateError(
                f"the exported {cfg.export} does not compute in PyTorch what the trained model "
                f"computes (written with a failed certificate):\n{cert['failures']}"
            )
    summary = {
        "model": cfg.model,
        "dataset": cfg.dataset,
        "steps": state.step,
        "eval_loss": final["loss"],
        "eval_accuracy": final["accuracy"],
        "seconds": time.perf_counter() - t_start,
        "devices": run.par.size,
        "processes": jax.process_count(),
    }
    run.log.write(kind="final", **summary)
    run.log.close()
    if jax.process_index() == 0:
        plot_curves(run.log.path, run.workdir / "curves.png")
    return {
        **summary,
        "preempted": False,
        "complete_before": outcome == "complete",
        "history": history,
        "module": model,
        "predictions": final["predictions"],
        "config": {**cfg.to_json(), "model_kwargs": run.kwargs},
    }


__all__ = [
    "CheckpointError",
    "NonFiniteLossError",
    "Parallel",
    "StopSignal",
    "TrainState",
    "WorkdirError",
    "build_run",
    "create_state",
    "evaluate",
    "restore_state",
    "save_checkpoint",
    "train_and_evaluate",
    "train_epoch",
]
