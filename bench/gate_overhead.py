"""``python -m bench.gate_overhead``: what the parity gate adds to a ``--init-from`` run.

Issue 17's target: the gate adds at most 10% to the wall time of a 200-step ``vit_tiny``
run. Each pair runs ``python -m train --max-steps STEPS --init-from WEIGHTS`` twice as a
fresh process, with the gate and with ``--no-parity-check``, the order alternating
from pair to pair so a burst of load on this shared machine falls on both alike.
Printed: each run's wall and user-CPU seconds, the load average when it started and the
gate's own time (its line ends ``[x.x s]``: the thread's time, overlapped with the first
step's compilation); then the medians and the added percentage of the medians, with the
range of the per-pair differences.

Without ``--weights`` a 5-step ``vit_tiny`` export is made first (gate off: only its
weights are needed)::

    python -m bench.gate_overhead                  # 3 pairs, 200 steps
    python -m bench.gate_overhead --pairs 5 --weights vit_export.safetensors
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GATE_TIME = re.compile(r"^parity gate passed .*\[([0-9.]+) s\]$", re.M)


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _train(args: list[str]) -> tuple[float, float, str]:
    """Run ``python -m train ARGS``; wall seconds, user CPU seconds and its output."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "train", *args],
        env=_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    user = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime - before
    if proc.returncode != 0:
        raise RuntimeError(
            f"python -m train {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
        )
    return wall, user, proc.stdout


def _export(model: str, dataset: str, path: Path, workdir: Path) -> None:
    _train(
        ["--model", model, "--dataset", dataset, "--max-steps", "5", "--export", str(path)]
        + ["--workdir", str(workdir), "--overwrite", "--no-progress", "--no-parity-check"]
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.gate_overhead", description=__doc__.splitlines()[0]
    )
    p.add_argument("--model", default="vit_tiny")
    p.add_argument("--dataset", default="mnist5k")
    p.add_argument("--steps", type=int, default=200, help="--max-steps of each run")
    p.add_argument("--pairs", type=int, default=3, help="gate / no-gate pairs (at least 3)")
    p.add_argument("--weights", help="the --init-from file (default: a 5-step export)")
    args = p.parse_args(argv)
    if args.pairs < 3:
        p.error(f"--pairs (={args.pairs}) must be at least 3")

    with tempfile.TemporaryDirectory(prefix="gate_overhead_") as tmp:
        tmp = Path(tmp)
        weights = Path(args.weights) if args.weights else tmp / f"{args.model}.safetensors"
        if not args.weights:
            print(f"exporting a 5-step {args.model} to {weights} ...", flush=True)
            _export(args.model, args.dataset, weights, tmp / "export")
        common = ["--model", args.model, "--dataset", args.dataset]
        common += ["--max-steps", str(args.steps), "--init-from", str(weights.resolve())]
        common += ["--overwrite", "--no-progress"]
        walls: dict[str, list[float]] = {"gate": [], "no gate": []}
        print(f"{'pair':>4}  {'run':<8} {'wall s':>7} {'user s':>7} {'load':>5}  gate line")
        for i in range(args.pairs):
            order = ["gate", "no gate"] if i % 2 == 0 else ["no gate", "gate"]
            for mode in order:
                extra = [] if mode == "gate" else ["--no-parity-check"]
                load = os.getloadavg()[0]
                wall, user, out = _train([*common, "--workdir", str(tmp / "run"), *extra])
                walls[mode].append(wall)
                m = GATE_TIME.search(out)
                own = f"[{m.group(1)} s]" if m else ""
                print(
                    f"{i + 1:>4}  {mode:<8} {wall:7.1f} {user:7.1f} {load:5.1f}  {own}", flush=True
                )
    med_gate, med_none = statistics.median(walls["gate"]), statistics.median(walls["no gate"])
    diffs = [g - n for g, n in zip(walls["gate"], walls["no gate"], strict=True)]
    added = med_gate - med_none
    print(
        f"median wall: gate {med_gate:.1f} s, --no-parity-check {med_none:.1f} s; "
        f"added {added:+.1f} s ({100 * added / med_none:+.1f}%); per pair "
        f"{min(diffs):+.1f} to {max(diffs):+.1f} s; load average now "
        + " ".join(f"{v:.1f}" for v in os.getloadavg())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
