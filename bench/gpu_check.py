"""The one-call GPU check (issue 16): float32 parity on the accelerator, then a train-step table.

Run by ``bench/gpu_check.sh`` (which sets the time limits); by hand::

    PYTHONPATH=$PWD python -m bench.gpu_check parity --out $OUT
    PYTHONPATH=$PWD python -m bench.gpu_check bench --out $OUT
    PYTHONPATH=$PWD python -m bench.gpu_check all --out /tmp/x --dry-run   # CPU, tiny

**parity**: every float32 case of ``parity_tests`` (eval and train modes) through
:func:`flaxattn.parity.check_parity`, the Flax side on JAX's default device (the GPU,
where ``'auto'`` runs ACmix and DilateFormer on the Pallas kernel), the torch reference
on the CPU. Precision: ``jax_default_matmul_precision='highest'`` (no TF32 in XLA's
matmuls and convolutions) and ``torch.backends.{cuda.matmul,cudnn}.allow_tf32 = False``;
tolerances are :data:`flaxattn.parity.TOLERANCES` ``['float32']`` (``rtol=1e-4``,
``atol=1e-6``, ``max|flax - torch| <= atol + rtol * max|torch|``) or the case's own float32
override, as in the CPU suite. Cases run in registry order until ``--budget-s`` is spent;
the rest are listed as not run.

**bench**: per ``bench`` case, the JAX train step (``bench.harness.jax_step``: jit,
AdamW, donated buffers) for each ``attention_impl`` the case's modules take, and the
torch_ref twin's step in eager mode and under ``torch.compile``, on the GPU when torch
has CUDA (else on the CPU, said in the table); median ms, temp memory of the JAX step.
The ViT case also runs at batch 256 with bfloat16 compute (``dtype=bfloat16``; torch
under ``autocast(bfloat16)``), the issue's ViT target.

Both stages write ``gpu_check_<stage>.json`` and ``.md`` into ``--out``; a stage never
stops at one failure (it is recorded, with the exception's first line). Imports the
image lacks (torch, torch CUDA, Triton for Pallas) are reported and their rows skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
import traceback
import zlib


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200] if text else ''}"


def machine() -> dict:
    import jax

    info = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "host": platform.node(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "device_kind": jax.devices()[0].device_kind,
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_cuda"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            info["torch_device"] = torch.cuda.get_device_name(0)
    except ImportError as e:
        info["torch"] = f"missing ({_first_line(e)})"
    return info


def set_precision() -> dict:
    """Full float32 matmuls in both frameworks (no TF32): returns what was set."""
    import jax

    jax.config.update("jax_default_matmul_precision", "highest")
    out = {"jax_default_matmul_precision": "highest"}
    try:
        import torch

        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        out.update({"torch.backends.cuda.matmul.allow_tf32": False})
        out.update({"torch.backends.cudnn.allow_tf32": False})
    except ImportError:
        pass
    return out


# --- parity ----------------------------------------------------------------------------------


# Families whose kernels change on a GPU first, so a short budget still checks them.
FAMILY_ORDER = ("acmix", "dilate", "vit", "axial", "aa_conv", "channel")


def _family_rank(name: str) -> int:
    family = name.split("/")[0]
    return FAMILY_ORDER.index(family) if family in FAMILY_ORDER else len(FAMILY_ORDER)


def run_parity(budget_s: float, names: list[str] | None = None, save=lambda res: None) -> dict:
    import torch

    from flaxattn.parity import TOLERANCES, check_parity
    from parity_tests.registry import load_all

    cases = load_all()
    chosen = [c for c in cases.values() if "float32" in c.dtypes]
    if names:
        chosen = [c for c in chosen if c.name in names]
    chosen.sort(key=lambda c: _family_rank(c.name))
    rows, start = [], time.perf_counter()
    for case in chosen:
        for mode in case.modes:
            if time.perf_counter() - start > budget_s:
                rows.append({"case": case.name, "mode": mode, "status": "not run (budget)"})
                continue
            t0 = time.perf_counter()
            row = {"case": case.name, "mode": mode}
            try:
                torch.manual_seed(zlib.crc32(case.name.encode()))
                tm = case.make_torch()
                fm = case.make_flax(tm) if case.make_flax else None
                tol = {**TOLERANCES["float32"], **case.tol.get("float32", {})}
                report = check_parity(
                    tm,
                    fm,
                    input_shapes=case.shapes,
                    make_inputs=case.make_inputs,
                    layouts=case.layouts,
                    out_layouts=case.out_layouts,
                    dtype="float32",
                    mode=mode,
                    steps=case.train_steps if mode == "train" else 1,
                    zero_grad_ok=case.zero_grad_ok,
                    perturb=0.1,
                    name=case.name,
                    **tol,
                )
                fails = report.failures()
                worst = max(report.rows, key=lambda r: r.max_abs, default=None)
                row.update(
                    status="ok" if not fails else "FAIL",
                    rtol=tol["rtol"],
                    atol=tol["atol"],
                    worst=f"{worst.kind} {worst.name} max_abs={worst.max_abs:.2e}" if worst else "",
                    failures=[f"{r.kind} {r.name} max_abs={r.max_abs:.2e}" for r in fails[:5]],
                )
            except Exception as e:  # record and go on: one case must not hide the others
                row.update(status="ERROR", error=_first_line(e))
                traceback.print_exc(limit=3, file=sys.stderr)
            row["seconds"] = round(time.perf_counter() - t0, 2)
            rows.append(row)
            print(f"parity {row['case']} {mode}: {row['status']}", file=sys.stderr, flush=True)
            save(_parity_result(rows))
    return _parity_result(rows)


def _parity_result(rows: list[dict]) -> dict:
    counts = {s: sum(r["status"] == s for r in rows) for s in sorted({r["status"] for r in rows})}
    return {"rows": rows, "counts": counts}


def parity_markdown(res: dict) -> str:
    lines = [
        "| case | mode | status | rtol | atol | worst tensor | s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        detail = r.get("worst", "") if r["status"] == "ok" else "; ".join(r.get("failures", []))
        detail = detail or r.get("error", "")
        lines.append(
            f"| {r['case']} | {r['mode']} | {r['status']} | {r.get('rtol', '')} | "
            f"{r.get('atol', '')} | {detail} | {r.get('seconds', '')} |"
        )
    return "\n".join(lines)


# --- bench ----------------------------------------------------------------------------------


@dataclasses.dataclass
class BenchRow:
    case: str
    impl: str
    dtype: str = "float32"
    jax_ms: float | None = None
    temp_mb: float | None = None
    eager_ms: float | None = None
    compile_ms: float | None = None
    torch_device: str = ""
    note: str = ""


def _median_ms(step, iters: int, warmup: int, sync=lambda: None) -> float:
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def impls_of(module) -> list[str]:
    """The ``attention_impl`` values every attention module of ``module`` takes."""
    from flax import nnx

    from flaxattn.ops.fused import GLOBAL_IMPLS

    kinds = {
        getattr(type(m), "attention_impls", GLOBAL_IMPLS)
        for _, m in nnx.iter_modules(module)
        if hasattr(m, "attention_impl")
    }
    return sorted(set.intersection(*map(set, kinds))) if kinds else []


def torch_step(model, xs, device: str, autocast_bf16: bool = False):
    import torch

    model = model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = [torch.from_numpy(x).to(device) for x in xs]

    def run():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.split(":")[0], torch.bfloat16, enabled=autocast_bf16):
            out = model(*batch)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        loss = sum(o.float().pow(2).mean() for o in outs)
        loss.backward()
        opt.step()

    return run


def run_bench(
    budget_s: float,
    *,
    iters: int,
    warmup: int,
    names: list[str] | None,
    compile: bool,
    vit_batch: int,
    save=lambda res: None,
    cases: dict | None = None,
) -> dict:
    import jax.numpy as jnp
    import torch

    from bench.harness import _inputs, jax_step
    from bench.registry import load_all
    from flaxattn.convert import from_torch
    from flaxattn.layers.basic import set_attention_impl

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    cases = cases or load_all()
    chosen = [cases[n] for n in (names or list(cases)) if n in cases]
    if "vit/small" in [c.name for c in chosen] and vit_batch:
        base = cases["vit/small"]
        shape = (vit_batch, *base.shapes[0][1:])
        chosen.insert(
            0, dataclasses.replace(base, name=f"vit/small_b{vit_batch}_bf16", shapes=[shape])
        )
    chosen.sort(key=lambda c: _family_rank(c.name))  # stable: the bf16 ViT row leads ViT
    rows, start = [], time.perf_counter()
    for case in chosen:
        if time.perf_counter() - start > budget_s:
            rows.append(BenchRow(case.name, "-", note="not run (budget)"))
            continue
        bf16 = case.name.endswith("_bf16")
        print(f"bench {case.name}", file=sys.stderr, flush=True)
        try:
            torch.manual_seed(0)
            xs = _inputs(case)
            tm = case.make_torch().float()
            dtype = jnp.bfloat16 if bf16 else None
            make = case.make_flax or (lambda m: from_torch(m, param_dtype=jnp.float32))
            probe = make(tm) if not bf16 else from_torch(tm, dtype=dtype, param_dtype=jnp.float32)
            impls = impls_of(probe) or ["-"]
        except Exception as e:
            rows.append(BenchRow(case.name, "-", note=f"setup: {_first_line(e)}"))
            continue
        case_rows = []
        for impl in impls:
            row = BenchRow(case.name, impl, "bfloat16" if bf16 else "float32")
            try:
                fm = (
                    from_torch(tm, dtype=dtype, param_dtype=jnp.float32)
                    if bf16 or case.make_flax is None
                    else case.make_flax(tm)
                )
                if impl != "-":
                    set_attention_impl(fm, impl)
                run, temp, _ = jax_step(fm, xs, case.layouts)
                row.jax_ms, row.temp_mb = _median_ms(run, iters, warmup), temp / 2**20
            except Exception as e:  # e.g. 'cudnn' asked for float32: the ValueError says why
                row.note = _first_line(e)
            case_rows.append(row)
        # torch once per case (it has no attention_impl): on the first row.
        first = case_rows[0]
        first.torch_device = device
        try:
            tmd = case.make_torch().float()
            tmd.load_state_dict(tm.state_dict())
            first.eager_ms = _median_ms(torch_step(tmd, xs, device, bf16), iters, warmup, sync)
            if compile and case.compile:
                torch._dynamo.reset()
                tmc = case.make_torch().float()
                tmc.load_state_dict(tm.state_dict())
                step = torch_step(torch.compile(tmc.to(device)), xs, device, bf16)
                first.compile_ms = _median_ms(step, iters, warmup, sync)
        except Exception as e:
            first.note = (first.note + "; " if first.note else "") + f"torch: {_first_line(e)}"
        rows += case_rows
        save(_bench_result(rows, device))
    return _bench_result(rows, device)


def _bench_result(rows: list[BenchRow], device: str) -> dict:
    return {"rows": [dataclasses.asdict(r) for r in rows], "torch_device": device}


def bench_markdown(res: dict) -> str:
    def f(v):
        return "" if v is None else f"{v:.2f}"

    lines = [
        "| case | attention_impl | dtype | jax ms | temp MB | torch eager ms | torch.compile ms "
        "| eager/jax | compile/jax | torch on | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    eager = compiled = None
    for r in res["rows"]:
        if r["torch_device"]:
            eager, compiled = r["eager_ms"], r["compile_ms"]
        ratio_e = eager / r["jax_ms"] if eager and r["jax_ms"] else None
        ratio_c = compiled / r["jax_ms"] if compiled and r["jax_ms"] else None
        lines.append(
            f"| {r['case']} | {r['impl']} | {r['dtype']} | {f(r['jax_ms'])} | {f(r['temp_mb'])} | "
            f"{f(r['eager_ms'])} | {f(r['compile_ms'])} | {f(ratio_e)} | {f(ratio_c)} | "
            f"{r['torch_device']} | {r['note']} |"
        )
    return "\n".join(lines)


# --- CLI ------------------------------------------------------------------------------------


def tiny_bench_cases() -> dict:
    """``--dry-run``'s bench cases: the harness end to end in seconds on a CPU."""
    import torch_ref
    from bench.registry import BenchCase

    return {
        "tiny/cbam": BenchCase("tiny/cbam", lambda: torch_ref.CBAM(16, 4), [(2, 16, 8, 8)]),
        "tiny/acmix": BenchCase(
            "tiny/acmix", lambda: torch_ref.ACmix(8, 8, kernel_att=3, head=2), [(1, 8, 6, 6)]
        ),
    }


TINY_PARITY = ["vit/attention", "vit/attention_impl_xla", "acmix/acmix_s1_head3_batch1_odd"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.gpu_check", description=__doc__.splitlines()[0]
    )
    p.add_argument("stage", choices=["parity", "bench", "all"])
    p.add_argument("--out", default=os.environ.get("OUT", "gpu_check_out"))
    p.add_argument("--budget-s", type=float, default=150.0, help="per stage, then stop")
    p.add_argument("--case", action="append", help="only these cases (repeatable)")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    p.add_argument("--vit-batch", type=int, default=256, help="ViT bf16 row's batch; 0: none")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="CPU check of this script: a few tiny cases, 1 step, no torch.compile",
    )
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    try:
        import jax  # noqa: F401
    except ImportError as e:
        print(f"gpu_check: jax is missing ({_first_line(e)}); nothing to do", file=sys.stderr)
        return 2
    # --dry-run does not pick the platform: gpu_check.sh exports JAX_PLATFORMS=cpu for it.
    info = {"machine": machine(), "precision": set_precision(), "argv": sys.argv[1:]}
    if info["machine"]["backend"] != "gpu" and not args.dry_run:
        print(
            f"gpu_check: JAX backend is {info['machine']['backend']!r}, not a GPU", file=sys.stderr
        )
    try:
        import torch  # noqa: F401
    except ImportError as e:
        print(
            f"gpu_check: torch is missing ({_first_line(e)}): parity and torch columns skipped",
            file=sys.stderr,
        )
        torch = None
    stages = ["parity", "bench"] if args.stage == "all" else [args.stage]
    for stage in stages:
        t0 = time.perf_counter()
        to_md = parity_markdown if stage == "parity" else bench_markdown

        def save(res, stage=stage, t0=t0, to_md=to_md, final=False):
            # Rewritten after every case: a stage killed by its time limit keeps its rows.
            res = {**res, **info, "seconds": round(time.perf_counter() - t0, 1)}
            res["complete"] = final
            with open(os.path.join(args.out, f"gpu_check_{stage}.json"), "w") as f:
                json.dump(res, f, indent=1, default=str)
            if "rows" in res:
                m = info["machine"]
                head = (
                    f"# gpu_check {stage}: {m['date_utc']} UTC, {m['device_kind']} "
                    f"(jax {m['jax']}, backend {m['backend']}), {res['seconds']} s"
                    f"{'' if final else ' (incomplete)'}\n\n"
                )
                with open(os.path.join(args.out, f"gpu_check_{stage}.md"), "w") as f:
                    f.write(head + to_md(res) + "\n")
                return head + to_md(res)
            return ""

        if torch is None:
            res = {"skipped": "torch is missing"}
        elif stage == "parity":
            names = args.case or (TINY_PARITY if args.dry_run else None)
            res = run_parity(args.budget_s, names, save)
        else:
            res = run_bench(
                args.budget_s,
                iters=1 if args.dry_run else args.iters,
                warmup=1 if args.dry_run else args.warmup,
                names=args.case,
                compile=not (args.no_compile or args.dry_run),
                vit_batch=0 if args.dry_run else args.vit_batch,
                save=save,
                cases=tiny_bench_cases() if args.dry_run else None,
            )
        print(save(res, final=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
