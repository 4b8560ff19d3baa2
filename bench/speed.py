"""``python -m bench.speed``: issue 15's speed table, the two (three) sides interleaved.

The cases are the seven of issue 15 (``SPEED_CASES``). For each case the JAX step
(``bench.harness.jax_compiled_step``: jit, donated buffers, AdamW, mean-square loss),
the torch_ref twin in eager mode and the twin under ``torch.compile`` run the same
train step on the same weights and inputs. After warm-up, ``--rounds`` rounds each
time ``--steps`` steps of every side in turn (jax, eager, compile, jax, ...), so a
burst of load on this shared machine falls on all sides alike. Reported per side: the
median step over all rounds; per pair: the ratio of medians (above 1: JAX is faster)
and the range of the per-round ratios, which shows how steady the machine was. The
load average before and after each case is printed too.

Examples::

    python -m bench.speed                        # every case, with torch.compile
    python -m bench.speed --case vit --no-compile --rounds 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch_ref
from bench.cases.axial import channels_last
from bench.harness import (
    add_malloc_option,
    apply_malloc_option,
    case_models,
    default_threads,
    jax_compiled_step,
    torch_step,
)
from bench.registry import BenchCase

VIT = dict(image_size=32, patch_size=4, num_classes=10, dim=192, depth=6, heads=3, mlp_dim=768)


SPEED_CASES = {
    "se": BenchCase("se", lambda: torch_ref.SELayer(256, 16), [(32, 256, 32, 32)]),
    "acmix": BenchCase("acmix", lambda: torch_ref.ACmix(64, 64), [(8, 64, 56, 56)]),
    "msda": BenchCase(
        "msda",
        lambda: torch_ref.MultiDilateLocalAttention(72, 3, qkv_bias=True),
        [(8, 56, 56, 72)],
        layouts="none",
    ),
    "aa_conv": BenchCase(
        "aa_conv",
        lambda: torch_ref.AugmentedConv(32, 64, 3, dk=32, dv=32, Nh=4, shape=28, relative=True),
        [(16, 32, 28, 28)],
    ),
    "resblock_cbam": BenchCase(
        "resblock_cbam", lambda: torch_ref.ResBlockCBAM(64, 16), [(32, 64, 32, 32)]
    ),
    "vit": BenchCase("vit", lambda: torch_ref.ViT(**VIT, dim_head=64), [(64, 3, 32, 32)]),
    "axial": BenchCase(
        "axial",
        lambda: torch_ref.AxialImageTransformer(64, 4, 8, reversible=True),
        [(8, 64, 32, 32)],
        make_flax=channels_last(True),
    ),
}
# Issue 15's targets: eager/jax at least this (and vit also compile/jax >= 0.9).
TARGETS = {"se": 3.0, "acmix": 3.0, "msda": 3.0, "aa_conv": 0.9, "resblock_cbam": 0.9}
TARGETS.update(vit=1.0, axial=0.9)


TIMERS = {"wall": time.perf_counter, "cpu": time.process_time}


def _timed(step, clock) -> float:
    t0 = clock()
    step()
    return clock() - t0


def _ratio_col(r: dict, key: str) -> str:
    if key not in r:
        return f"{'-':>20}"
    ratio, lo, hi = r[key]
    return f"{ratio:>6.2f} ({lo:.2f}-{hi:.2f})".rjust(20)


def measure(
    case: BenchCase, *, rounds: int, steps: int, warmup: int, compile: bool, timer: str = "wall"
) -> dict:
    """Median step (ms) per side and the ratios, the sides interleaved round by round."""
    import torch

    xs, tm, fm = case_models(case)
    sides = {"jax": jax_compiled_step(fm, xs, case.layouts)[0], "eager": torch_step(tm, xs)}
    if compile:
        torch._dynamo.reset()
        sides["compile"] = torch_step(torch.compile(tm), xs)
    for step in sides.values():
        for _ in range(warmup):
            step()
    times = {k: [] for k in sides}
    per_round = {k: [] for k in sides}
    for _ in range(rounds):
        for name, step in sides.items():
            t = [_timed(step, TIMERS[timer]) for _ in range(steps)]
            times[name] += t
            per_round[name].append(statistics.median(t))
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    out = {"ms": ms}
    for other in [k for k in sides if k != "jax"]:
        rr = [o / j for o, j in zip(per_round[other], per_round["jax"], strict=True)]
        out[other] = (ms[other] / ms["jax"], min(rr), max(rr))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.speed", description=__doc__.splitlines()[0])
    p.add_argument("--case", action="append", choices=sorted(SPEED_CASES), help="repeatable")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--steps", type=int, default=3, help="steps per side per round (default 3)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    p.add_argument("--threads", type=int, default=default_threads())
    p.add_argument(
        "--timer",
        choices=sorted(TIMERS),
        default="wall",
        help="wall clock (default), or this process's CPU time: steadier on a loaded "
        "machine when the run is pinned to one core (taskset -c N ... --threads 1)",
    )
    add_malloc_option(p)
    args = p.parse_args(argv)
    for name in ("rounds", "steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    malloc = apply_malloc_option(args)
    import jax
    import torch

    torch.set_num_threads(args.threads)
    print(
        f"train step (fwd + mean-square loss + bwd + AdamW), median {args.timer} ms over "
        f"{args.rounds}x{args.steps} interleaved steps per side; {args.threads} threads; {malloc}; "
        f"jax {jax.__version__}, torch {torch.__version__}"
    )
    print(
        f"{'case':<14} {'jax':>8} {'eager':>8} {'compile':>8}  {'eager/jax (range)':>20}  "
        f"{'comp/jax (range)':>20}  {'target':>6}  load before/after"
    )
    for name in args.case or list(SPEED_CASES):
        print(f"... {name}", file=sys.stderr, flush=True)
        load0 = os.getloadavg()[0]
        r = measure(
            SPEED_CASES[name],
            rounds=args.rounds,
            steps=args.steps,
            warmup=args.warmup,
            compile=not args.no_compile,
            timer=args.timer,
        )
        load1 = os.getloadavg()[0]

        comp = r["ms"].get("compile")
        print(
            f"{name:<14} {r['ms']['jax']:>8.1f} {r['ms']['eager']:>8.1f} "
            f"{(f'{comp:.1f}' if comp else '-'):>8}  {_ratio_col(r, 'eager')}  "
            f"{_ratio_col(r, 'compile')}  "
            f"{TARGETS[name]:>6.2f}  {load0:.1f}/{load1:.1f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
