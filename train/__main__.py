"""``python -m train`` (or ``flaxattn-train``): train a registered model with optax under jax.jit.

Examples::

    python -m train                                   # the default model on mnist5k
    python -m train --model cbam_resnet --epochs 3
    python -m train --model vit_tiny --set depth=4 --set dim=96 --dtype bfloat16
    python -m train --resume --workdir runs/vit       # continue an interrupted run exactly
    python -m train --init-from vit.pt --export vit_finetuned.safetensors
    python -m train.verify vit_finetuned.safetensors  # re-check its parity certificate
    python -m train --list                            # models and datasets

Scale (see the README's "Training at scale")::

    python -m train --workers 4                       # decode/augment in 4 worker processes
    python -m train --mesh data=2,fsdp=2              # shard params + optimizer state over fsdp
    python -m train --coordinator-address host0:1234 --num-processes 4 --process-id I
    python -m train --distributed                     # cluster auto-detection (SLURM, TPU pods)
    python -m train.prepare --dataset folder --data-path imgs/ --out shards/
    python -m train --dataset arrayrecord --data-path shards/

The global batch (--batch-size) is split evenly over the processes; only process 0
prints, logs and exports. SIGTERM/SIGINT finish the step, write a checkpoint and
exit 0; --resume continues bit-identically.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import sys

from train.config import TrainConfig


def _parse_set(items: list[str] | None) -> dict:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {item!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value  # a bare string, e.g. --set pool=mean
    return out


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="python -m train",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    p.add_argument("--list", action="store_true", help="list models and datasets, then exit")
    p.add_argument("--model", help=f"registered model name (default {d.model})")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a model constructor argument (repeatable)",
    )
    p.add_argument("--dataset", help=f"dataset name (default {d.dataset})")
    p.add_argument("--data-path", help="folder, .npz file or CIFAR-10 batch folder")
    p.add_argument("--image-size", type=int, help="resize folder images to this size")
    p.add_argument("--test-fraction", type=float, help="held-out fraction (default 0.2)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-steps", type=int, help="stop after this many steps")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--optimizer", choices=["adamw", "sgd"])
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--final-lr-ratio", type=float)
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--momentum", type=float, help="SGD momentum")
    p.add_argument("--clip-norm", type=float, help="global-norm clipping (0 disables)")
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--augment-pad", type=int, help="random shifts of up to N pixels")
    p.add_argument("--augment-flip", type=float, help="horizontal flip probability")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], help="compute dtype (params fp32)")
    p.add_argument("--seed", type=int)
    p.add_argument("--workdir", help="checkpoints and metrics.jsonl (default runs/<model>)")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints")
    p.add_argument("--keep-checkpoints", type=int)
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    p.add_argument("--init-from", help="start from PyTorch weights (.pt/.pth/.safetensors/.npz)")
    p.add_argument(
        "--no-parity-check",
        action="store_true",
        help="skip the parity gate of --init-from (JAX vs PyTorch on the file, before step 1) "
        "and the certificate of --export",
    )
    p.add_argument(
        "--export",
        help="write the trained weights as a torch state_dict, and <file>.json with a parity "
        "certificate (check it with python -m train.verify FILE)",
    )
    p.add_argument("--log-every", type=int)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --workdir")
    p.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard event files")
    g = p.add_argument_group("scale")
    g.add_argument("--workers", type=int, help="grain worker processes (default 0: in-process)")
    g.add_argument("--mesh", help="device mesh, e.g. data=2,fsdp=2 (default: all on data)")
    g.add_argument("--devices", type=int, help="use the first N local devices (one process)")
    g.add_argument(
        "--coordinator-address", help="HOST:PORT of process 0 ($JAX_COORDINATOR_ADDRESS)"
    )
    g.add_argument("--num-processes", type=int, help="processes in the run ($JAX_NUM_PROCESSES)")
    g.add_argument("--process-id", type=int, help="this process's index ($JAX_PROCESS_ID)")
    g.add_argument(
        "--distributed",
        action="store_true",
        help="jax.distributed.initialize() with cluster auto-detection",
    )
    p.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="make glibc's malloc keep freed memory for reuse (flaxattn.host_memory): "
        "faster steps when the compiled step's temp buffer is large, slower compiles",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    from train.models import get_model

    base = TrainConfig()
    model = args.model or base.model
    spec = get_model(model)
    values = {**dataclasses.asdict(base), **spec.train, "model": model}
    for field in dataclasses.fields(TrainConfig):
        v = getattr(args, field.name, None)
        if v is not None and field.name not in (
            "model_overrides",
            "resume",
            "progress",
            "overwrite",
            "tensorboard",
        ):
            values[field.name] = v
    if args.clip_norm == 0:
        values["clip_norm"] = None
    values["model_overrides"] = _parse_set(args.set)
    values["resume"] = args.resume
    values["overwrite"] = args.overwrite
    values["tensorboard"] = not args.no_tensorboard
    values["parity_check"] = not args.no_parity_check
    values["progress"] = not args.no_progress and sys.stderr.isatty()
    if not args.workdir:
        values["workdir"] = f"runs/{model}"
    return TrainConfig(**values)


def _list() -> None:
    from train.data import DATASETS
    from train.models import load_all

    print("models:")
    for name, spec in sorted(load_all().items()):
        print(f"  {name:<16} {spec.description}")
    print("datasets:", ", ".join(DATASETS))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.keep_freed_memory:
        # Before the first JAX computation: XLA's threads take their malloc arenas then.
        from flaxattn.host_memory import retain_freed_memory

        retain_freed_memory()
    if args.list:
        _list()
        return 0
    from train.checkpoint import CheckpointError
    from train.gate import CertificateError
    from train.loop import NonFiniteLossError, say

    try:
        from train.parallel import initialize

        initialize(
            args.coordinator_address, args.num_processes, args.process_id, auto=args.distributed
        )
        cfg = config_from_args(args)
        from train.loop import train_and_evaluate

        result = train_and_evaluate(cfg, devices=args.devices)
    except (
        ValueError,
        FileNotFoundError,
        CheckpointError,
        NonFiniteLossError,
        CertificateError,
    ) as e:
        if args.debug:
            raise
        # One line for a user's mistake (exit 2) or a run that went wrong (exit 1); a
        # failed parity gate (a ValueError, exit 2) adds its table of failures.
        print(f"error: {e}", file=sys.stderr)
        return 1 if isinstance(e, (NonFiniteLossError, CertificateError)) else 2
    if result["preempted"]:
        return 0  # the loop said where the checkpoint is
    say(
        f"done: {result['model']} on {result['dataset']}: held-out accuracy "
        f"{result['eval_accuracy']:.4f}, loss {result['eval_loss']:.4f}, "
        f"{result['steps']} steps in {result['seconds']:.0f} s on {result['devices']} device(s)"
        + (f", {result['processes']} processes" if result["processes"] > 1 else "")
    )
    if cfg.export:
        say(f"exported weights to {cfg.export} (+ {cfg.export}.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
