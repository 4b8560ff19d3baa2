"""Step time of ``python -m train`` with 1 process and with N cooperating processes
on this machine (localhost, jax.distributed, gloo collectives), same global batch::

    python -m bench.train_scale --model vit_tiny --steps 60 --processes 2

Information, not a target: N processes on one machine share its cores, so they
show the cost of the collectives and of the split input pipeline, not a speed-up.
The figure is the median of the logged train windows after the first (compile).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(processes: int, args: argparse.Namespace, workdir: Path) -> dict:
    base = [
        sys.executable,
        "-m",
        "train",
        "--model",
        args.model,
        "--dataset",
        args.dataset,
        "--max-steps",
        str(args.steps),
        "--log-every",
        str(args.log_every),
        "--checkpoint-every",
        str(10**6),
        "--no-progress",
        "--no-tensorboard",
        "--workdir",
        str(workdir),
        "--overwrite",
    ]
    if processes > 1:
        addr = f"127.0.0.1:{_port()}"
        cmds = [
            base
            + ["--coordinator-address", addr, "--num-processes", str(processes)]
            + ["--process-id", str(i)]
            for i in range(processes)
        ]
    else:
        cmds = [base]
    t0 = time.perf_counter()
    procs = [subprocess.Popen(c, cwd=ROOT, stdout=subprocess.DEVNULL) for c in cmds]
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - t0
    if any(codes):
        raise SystemExit(f"{processes} process(es): exit codes {codes}")
    recs = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    rates = sorted(
        r["images_per_sec"] for r in recs if r["kind"] == "train" and "images_per_sec" in r
    )
    ips = rates[len(rates) // 2] if rates else float("nan")
    return {"processes": processes, "images_per_sec": ips, "wall_s": wall}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.train_scale", description=__doc__.split("\n")[0]
    )
    p.add_argument("--model", default="vit_tiny")
    p.add_argument("--dataset", default="mnist5k")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--processes", type=int, default=2)
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (1, args.processes):
            rows.append(run(n, args, Path(tmp) / f"p{n}"))
    print(
        f"python -m train, {args.model} on {args.dataset}, {args.steps} steps, "
        f"{os.cpu_count()} cores shared by all processes"
    )
    print(f"{'processes':>9} {'images/s':>10} {'wall s':>8}")
    for r in rows:
        print(f"{r['processes']:>9} {r['images_per_sec']:10.1f} {r['wall_s']:8.1f}")
    print(
        f"{args.processes} processes / 1: "
        f"{rows[1]['images_per_sec'] / rows[0]['images_per_sec']:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
