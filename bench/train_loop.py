"""Images per second of the whole training loop, data pipeline included, JAX vs PyTorch eager.

Both loops draw the same batches from the training input pipeline
(``train.data.TrainPipeline`` on grain: shuffle, augmentation, normalisation,
prefetched), run forward + backward + AdamW with label smoothing, and are timed
over the same number of steps after a warm-up, in one run on the same machine::

    python -m bench.train_loop --model vit_tiny --steps 60
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
from flax import nnx

from bench.harness import default_threads
from train.config import TrainConfig
from train.data import Augment, TrainPipeline, load_dataset
from train.loop import _loss_fn
from train.models import build_flax, build_torch, get_model
from train.optim import make_optimizer
from train.parallel import Parallel
from train.step import make_train_step


def _batches(pipeline: TrainPipeline, n: int):
    it = pipeline.iterator()
    for _ in range(n):
        yield next(it)


def jax_images_per_sec(cfg: TrainConfig, pipeline: TrainPipeline, steps: int, warmup: int) -> float:
    spec = get_model(cfg.model)
    info = pipeline.data.info
    model = build_flax(spec, info, cfg.model_overrides, rngs=nnx.Rngs(cfg.seed))
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = make_optimizer(cfg, 10_000)
    opt_state = tx.init(params)
    par = Parallel.create()
    step = make_train_step(
        graphdef,
        tx,
        _loss_fn(cfg.label_smoothing, info.num_classes),
        skip_non_finite=True,
        state_sharding=par.replicated,
        batch_sharding=par.batch,
    )
    params, rest, opt_state = jax.device_put((params, rest, opt_state), par.replicated)
    it = _batches(pipeline, warmup + steps)
    for _ in range(warmup):
        x, y = next(it)
        params, rest, opt_state, loss, _ = step(params, rest, opt_state, par.put_batch(x, y))
    loss.block_until_ready()
    t0, seen = time.perf_counter(), 0
    for x, y in it:
        params, rest, opt_state, loss, _ = step(params, rest, opt_state, par.put_batch(x, y))
        seen += len(y)
    jax.block_until_ready((params, loss))
    return seen / (time.perf_counter() - t0)


def torch_images_per_sec(
    cfg: TrainConfig, pipeline: TrainPipeline, steps: int, warmup: int
) -> float:
    import torch

    torch.manual_seed(cfg.seed)
    model = build_torch(get_model(cfg.model), pipeline.data.info, cfg.model_overrides).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def step(x, y):
        logits = model(torch.from_numpy(x).permute(0, 3, 1, 2))
        loss = torch.nn.functional.cross_entropy(
            logits, torch.from_numpy(y).long(), label_smoothing=cfg.label_smoothing
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
        opt.step()

    it = _batches(pipeline, warmup + steps)
    for _ in range(warmup):
        step(*next(it))
    t0, seen = time.perf_counter(), 0
    for x, y in it:
        step(x, y)
        seen += len(y)
    return seen / (time.perf_counter() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.train_loop", description=__doc__.splitlines()[0]
    )
    p.add_argument("--model", default="vit_tiny")
    p.add_argument("--dataset", default="mnist5k")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=default_threads())
    p.add_argument("--workers", type=int, default=0, help="grain worker processes")
    args = p.parse_args(argv)

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
    steps_needed = args.warmup + args.steps
    pipeline = TrainPipeline(
        data,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        augment=Augment(cfg.augment_pad, cfg.augment_flip),
        epochs=-(-steps_needed // (len(data.train) // cfg.batch_size)),
        workers=args.workers,
    )
    jax_ips = jax_images_per_sec(cfg, pipeline, args.steps, args.warmup)
    torch_ips = torch_images_per_sec(cfg, pipeline, args.steps, args.warmup)
    print(
        f"training loop, data included: {args.model} on {cfg.dataset}, batch {cfg.batch_size}, "
        f"{args.steps} steps, {args.threads} threads, jax {jax.__version__}, "
        f"torch {torch.__version__}"
    )
    print(f"{'loop':<14} {'images/s':>10}")
    print(f"{'jax (jit)':<14} {jax_ips:10.1f}")
    print(f"{'torch eager':<14} {torch_ips:10.1f}")
    print(f"jax / torch: {jax_ips / torch_ips:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
