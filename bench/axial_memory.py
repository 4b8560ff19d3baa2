"""``python -m bench.axial_memory``: the reversible AxialImageTransformer's targets, in one run.

AxialImageTransformer, dim 64, 8 heads, batch 8 at 32x32, one train step
(forward + backward + AdamW, ``train.step.make_train_step``), float32:

1. XLA's compiled temp memory (``memory_analysis().temp_size_in_bytes``) for
   depth 1, 2, 4, 8, 12 of the reversible stack (custom VJP), of the same
   coupling differentiated by plain autodiff, and of upstream's plain residual
   stack (``reversible=False``);
2. step times at depth 4 and 12: the three Flax stacks under ``jax.jit`` and
   the torch_ref twin (reversible, eager; NCHW), in the same process;
3. the targets: reversible temp at depth 12 <= 1.2x depth 1 while the
   non-reversible grows; reversible step <= 1.6x the coupling's; Flax no slower
   than torch_ref eager.

Examples::

    python -m bench.axial_memory                     # everything (several minutes on 2 cores)
    python -m bench.axial_memory --no-time           # memory only (compiles, no steps)
    python -m bench.axial_memory --depths 1 4 --time-depths 4 --iters 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax
import numpy as np

from bench.cases.axial import BATCH, DIM, HEADS, SIZE, channels_last
from bench.harness import default_threads, jax_step, torch_step

STACKS = {"reversible": True, "coupling": "coupling", "residual": False}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.axial_memory", description=__doc__.splitlines()[0]
    )
    p.add_argument("--depths", type=int, nargs="+", default=[1, 2, 4, 8, 12])
    p.add_argument("--time-depths", type=int, nargs="+", default=[4, 12])
    p.add_argument("--iters", type=int, default=5, help="timed steps per implementation")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--no-time", action="store_true", help="memory only")
    p.add_argument("--threads", type=int, default=default_threads())
    args = p.parse_args(argv)

    import torch

    import torch_ref

    torch.set_num_threads(args.threads)
    x = np.random.default_rng(0).standard_normal((BATCH, DIM, SIZE, SIZE)).astype(np.float32)
    depths = sorted(set(args.depths) | (set() if args.no_time else set(args.time_depths)))
    temp: dict[tuple[str, int], float] = {}
    ms: dict[tuple[str, int], float] = {}
    best: dict[tuple[str, int], float] = {}
    for depth in depths:
        torch.manual_seed(0)
        tm = torch_ref.AxialImageTransformer(DIM, depth, HEADS, reversible=True)
        runs = {}
        for name, reversible in STACKS.items():
            print(f"... depth {depth} {name}", file=sys.stderr, flush=True)
            # The residual stack has other keys: same shapes, its own random weights.
            src = (
                tm
                if reversible is not False
                else torch_ref.AxialImageTransformer(DIM, depth, HEADS, reversible=False)
            )
            runs[name], nbytes, _ = jax_step(channels_last(reversible)(src), [x], "auto")
            temp[name, depth] = nbytes / 2**20
        if args.no_time or depth not in args.time_depths:
            continue
        runs["torch eager"] = torch_step(tm, [x])
        print(f"... depth {depth} timing", file=sys.stderr, flush=True)
        # Round-robin, so that load from other processes hits every implementation alike.
        for run in runs.values():
            for _ in range(args.warmup):
                run()
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.iters):
            for name, run in runs.items():
                t0 = time.perf_counter()
                run()
                times[name].append(1e3 * (time.perf_counter() - t0))
        for name, ts in times.items():
            ms[name, depth] = statistics.median(ts)
            best[name, depth] = min(ts)

    print(
        f"AxialImageTransformer dim {DIM}, heads {HEADS}, batch {BATCH} at {SIZE}x{SIZE}, "
        f"train step (fwd+bwd+AdamW), float32; jax {jax.__version__} ({jax.default_backend()}), "
        f"torch {torch.__version__}, {args.threads} threads"
    )
    print("\ncompiled temp memory (MB) by depth")
    print(f"{'depth':>5}  " + "  ".join(f"{n:>10}" for n in STACKS))
    shown = [d for d in depths if d in args.depths]
    for d in shown:
        print(f"{d:>5}  " + "  ".join(f"{temp[n, d]:10.1f}" for n in STACKS))
    ok = True
    if 1 in shown and 12 in shown:
        ratio = temp["reversible", 12] / temp["reversible", 1]
        grow = temp["coupling", 12] / temp["coupling", 1]
        grow_residual = temp["residual", 12] / temp["residual", 1]
        met = ratio <= 1.2 and grow > 2
        ok &= met
        print(
            f"target: reversible temp depth 12 / depth 1 = {ratio:.2f} (<= 1.2); "
            f"coupling grows {grow:.1f}x, residual {grow_residual:.1f}x "
            f"-> {'PASS' if met else 'FAIL'}"
        )
    if ms:
        names = [*STACKS, "torch eager"]
        for label, table in (("median", ms), ("min", best)):
            print(f"\nstep time (ms, {label} of {args.iters}, implementations interleaved)")
            print(
                f"{'depth':>5}  "
                + "  ".join(f"{n:>11}" for n in names)
                + "  rev/coupling  eager/rev"
            )
            for d in sorted({d for _, d in table}):
                rev_ratio = table["reversible", d] / table["coupling", d]
                eager_ratio = table["torch eager", d] / table["reversible", d]
                if label == "median":
                    ok &= rev_ratio <= 1.6 and eager_ratio >= 1.0
                print(
                    f"{d:>5}  "
                    + "  ".join(f"{table[n, d]:11.0f}" for n in names)
                    + f"  {rev_ratio:12.2f}  {eager_ratio:9.2f}"
                )
        print(
            "targets (medians): reversible step <= 1.6x the coupling's (plain autodiff); "
            "torch_ref eager (reversible) / flaxattn reversible >= 1"
        )
    print("\nall targets met" if ok else "\nsome target missed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
