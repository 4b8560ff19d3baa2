"""``python -m bench``: print the train-step table for the registered cases.

Examples::

    python -m bench                      # every case
    python -m bench --case channel/cbam  # one case
    python -m bench --family vit --no-compile --iters 5
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from bench.harness import (
    add_malloc_option,
    apply_malloc_option,
    default_threads,
    matmul_gflops,
    run_case,
    table,
)
from bench.registry import load_all


def main(argv=None) -> int:
    cases = load_all()
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument(
        "--case", action="append", help=f"case name (repeatable); one of {sorted(cases)}"
    )
    p.add_argument("--family", action="append", help="every case whose name starts with FAMILY/")
    p.add_argument("--iters", type=int, default=10, help="timed steps per implementation")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    p.add_argument("--threads", type=int, default=default_threads())
    p.add_argument("--json", help="also write the results to this file")
    add_malloc_option(p)
    args = p.parse_args(argv)
    print(apply_malloc_option(args), file=sys.stderr)

    chosen = list(cases)
    if args.case or args.family:
        unknown = sorted(set(args.case or []) - set(cases))
        if unknown:
            p.error(f"unknown case(s) {unknown}; valid: {sorted(cases)}")
        chosen = [
            n
            for n in cases
            if n in (args.case or []) or any(n.startswith(f + "/") for f in args.family or [])
        ]
        if not chosen:
            p.error(f"no case in families {args.family}; valid: {sorted(cases)}")
    peak = matmul_gflops() if any(cases[n].flops for n in chosen) else None
    results = []
    for name in chosen:
        print(f"... {name}", file=sys.stderr, flush=True)
        results += run_case(
            cases[name],
            iters=args.iters,
            warmup=args.warmup,
            compile=not args.no_compile,
            threads=args.threads,
        )
    print(table(results, peak, args.threads))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "peak_gflops": peak,
                    "threads": args.threads,
                    "results": [dataclasses.asdict(r) for r in results],
                },
                f,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
