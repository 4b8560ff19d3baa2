"""Images per second of the whole training loop, data pipeline included, JAX vs PyTorch eager.

Both loops draw the same batches from the training input pipeline
(``train.data.TrainPipeline`` on grain: shuffle, augmentation, normalisation,
prefetched), run forward + backward + AdamW with label smoothing, and are timed
over the same number of steps after a warm-up, in one run on the same machine::

    python -m bench.train_loop --model vit_tiny --steps 20 --windows 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import jax
import numpy as np
from flax import nnx

from bench.harness import add_malloc_option, apply_malloc_option, default_threads
from train.config import TrainConfig
from train.data import Augment, TrainPipeline, load_dataset
from train.loop import _loss_fn
from train.models import build_flax, build_torch, get_model
from train.optim import make_optimizer
from train.parallel import Parallel
from train.step import make_train_step


def _batches(pipeline: TrainPipeline):
    it = pipeline.iterator()
    while True:
        yield next(it)


def jax_stepper(cfg: TrainConfig, pipeline: TrainPipeline) -> Callable[[int], int]:
    """``run(n)``: ``n`` steps of the training loop's own step (data included); returns
    the images consumed once the last step has finished."""
    spec = get_model(cfg.model)
    info = pipeline.data.info
    model = build_flax(spec, info, cfg.model_overrides, rngs=nnx.Rngs(cfg.seed))
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = make_optimizer(cfg, 10_000)
    par = Parallel.create()
    state = list(jax.device_put((params, rest, tx.init(params)), par.replicated))
    step = make_train_step(
        graphdef,
        tx,
        _loss_fn(cfg.label_smoothing, info.num_classes),
        skip_non_finite=True,
        state_sharding=par.replicated,
        batch_sharding=par.batch,
        with_flags=True,  # as train.loop: the preemption flag rides in the step
    )
    flags = np.zeros(len(par.mesh.local_devices), np.int32)
    it = _batches(pipeline)

    def run(n: int) -> int:
        seen = 0
        for _ in range(n):
            x, y = next(it)
            xb, yb, fb = par.put_batch(x, y, flags)
            *state[:], loss, _ = step(*state, (xb, yb), fb)
            seen += len(y)
        jax.block_until_ready((state, loss))
        return seen

    return run


def torch_stepper(cfg: TrainConfig, pipeline: TrainPipeline) -> Callable[[int], int]:
    """The torch_ref twin's eager loop over the same pipeline (AdamW, clipping)."""
    import torch

    torch.manual_seed(cfg.seed)
    model = build_torch(get_model(cfg.model), pipeline.data.info, cfg.model_overrides).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    it = _batches(pipeline)

    def run(n: int) -> int:
        seen = 0
        for _ in range(n):
            x, y = next(it)
            logits = model(torch.from_numpy(x).permute(0, 3, 1, 2))
            loss = torch.nn.functional.cross_entropy(
                logits, torch.from_numpy(y).long(), label_smoothing=cfg.label_smoothing
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
            opt.step()
            seen += len(y)
        return seen

    return run


def interleaved(runs: dict[str, Callable[[int], int]], steps: int, windows: int, warmup: int):
    """Median images/s per side over ``windows`` windows of ``steps`` steps, the sides
    taking turns window by window (a shared machine's load hits both alike)."""
    for run in runs.values():
        run(warmup)
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(windows):
        for name, run in runs.items():
            t0 = time.perf_counter()
            seen = run(steps)
            rates[name].append(seen / (time.perf_counter() - t0))
    return {name: statistics.median(r) for name, r in rates.items()}, rates


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.train_loop", description=__doc__.splitlines()[0]
    )
    p.add_argument("--model", default="vit_tiny")
    p.add_argument("--dataset", default="mnist5k")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--steps", type=int, default=20, help="steps per timed window")
    p.add_argument("--windows", type=int, default=5, help="windows per side (median shown)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=default_threads())
    p.add_argument("--workers", type=int, default=0, help="grain worker processes")
    add_malloc_option(p)
    args = p.parse_args(argv)
    print(apply_malloc_option(args), file=sys.stderr)

    import torch

    torch.set_num_threads(args.threads)
    spec = get_model(args.model)
    cfg = TrainConfig(
        **{
            **spec.train,
            "model": args.model,
            "dataset": args.dataset,
            **({"batch_size": args.batch_size} if args.batch_size else {}),
        }
    )
    data = load_dataset(cfg.dataset)
    steps_needed = args.warmup + args.steps * args.windows
    pipeline = lambda: TrainPipeline(  # noqa: E731 -- one per side, same batches
        data,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        augment=Augment(cfg.augment_pad, cfg.augment_flip),
        epochs=-(-steps_needed // (len(data.train) // cfg.batch_size)),
        workers=args.workers,
    )
    medians, _ = interleaved(
        {"jax": jax_stepper(cfg, pipeline()), "torch": torch_stepper(cfg, pipeline())},
        args.steps,
        args.windows,
        args.warmup,
    )
    jax_ips, torch_ips = medians["jax"], medians["torch"]
    print(
        f"training loop, data included: {args.model} on {cfg.dataset}, batch {cfg.batch_size}, "
        f"median of {args.windows} interleaved windows of {args.steps} steps, "
        f"{args.threads} threads, jax {jax.__version__}, "
        f"torch {torch.__version__}"
    )
    print(f"{'loop':<14} {'images/s':>10}")
    print(f"{'jax (jit)':<14} {jax_ips:10.1f}")
    print(f"{'torch eager':<14} {torch_ips:10.1f}")
    print(f"jax / torch: {jax_ips / torch_ips:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
