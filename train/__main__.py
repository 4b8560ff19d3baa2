"""``python -m train`` (or ``flaxattn-train``): train a registered model with optax under jax.jit.

Examples::

    python -m train                                   # the default model on mnist5k
    python -m train --model cbam_resnet --epochs 3
    python -m train --model vit_tiny --set depth=4 --set dim=96 --dtype bfloat16
    python -m train --resume --workdir runs/vit       # continue an interrupted run exactly
    python -m train --init-from vit.pt --export vit_finetuned.safetensors
    python -m train --list                            # models and datasets

Multi-host: start the same command on every host with ``--distributed`` (it calls
``jax.distributed.initialize()``, which reads the coordinator address, process
count and index from the environment or the cluster, e.g. SLURM or TPU pods).
Each process then feeds its slice of every global batch.
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
            raise SystemExit(f"--set expects key=value, got {item!r}")
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
    p.add_argument("--export", help="write the trained weights as a torch state_dict")
    p.add_argument("--log-every", type=int)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--devices", type=int, help="shard the batch over this many devices")
    p.add_argument("--distributed", action="store_true", help="jax.distributed.initialize()")
    p.add_argument("--crash-at-step", type=int, help=argparse.SUPPRESS)  # fault injection
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    from train.models import get_model

    base = TrainConfig()
    model = args.model or base.model
    spec = get_model(model)
    values = {**dataclasses.asdict(base), **spec.train, "model": model}
    for field in dataclasses.fields(TrainConfig):
        v = getattr(args, field.name, None)
        if v is not None and field.name not in ("model_overrides", "resume", "progress"):
            values[field.name] = v
    if args.clip_norm == 0:
        values["clip_norm"] = None
    values["model_overrides"] = _parse_set(args.set)
    values["resume"] = args.resume
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
    if args.list:
        _list()
        return 0
    if args.distributed:
        import jax

        jax.distributed.initialize()
    try:
        cfg = config_from_args(args)
        from train.loop import train_and_evaluate

        result = train_and_evaluate(cfg, devices=args.devices, crash_at_step=args.crash_at_step)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, (ValueError, FileNotFoundError)) else 1
    print(
        f"done: {result['model']} on {result['dataset']}: held-out accuracy "
        f"{result['eval_accuracy']:.4f}, loss {result['eval_loss']:.4f}, "
        f"{result['steps']} steps in {result['seconds']:.0f} s on {result['devices']} device(s)"
    )
    if cfg.export:
        print(f"exported weights to {cfg.export} (+ {cfg.export}.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
