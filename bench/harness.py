"""Time one train step (forward + backward + AdamW update) in both frameworks, side by side.

For each case, in one process and one run:

- **jax**: the flaxattn module under ``jax.jit`` (``train.step.make_train_step``,
  donated buffers), weights converted from the torch twin;
- **eager**: the torch_ref twin in eager mode;
- **compile**: the twin under ``torch.compile`` (inductor), same optimizer step;

same shapes, same loss (mean of the squared output), same thread count. Each
step is timed on its own after warm-up; the median is reported, with the
ratios ``eager/jax`` and ``compile/jax`` (above 1: JAX is faster). Memory is
XLA's compiled temp allocation of the JAX step
(``compiled.memory_analysis().temp_size_in_bytes``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from bench.registry import BenchCase
from flaxattn.compile_options import cpu_compiler_options
from flaxattn.convert import from_torch
from flaxattn.parity import to_flax_layout
from train.step import make_train_step

LR = 1e-4


@dataclasses.dataclass
class Result:
    name: str
    jax_ms: float
    eager_ms: float | None = None
    compile_ms: float | None = None
    temp_mb: float | None = None
    gflops: float | None = None  # achieved by the JAX step
    note: str = ""

    @property
    def eager_ratio(self) -> float | None:
        return self.eager_ms / self.jax_ms if self.eager_ms else None

    @property
    def compile_ratio(self) -> float | None:
        return self.compile_ms / self.jax_ms if self.compile_ms else None


def _median_ms(step: Callable[[], object], iters: int, warmup: int) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def _inputs(case: BenchCase, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(tuple(s)).astype(np.float32) for s in case.shapes]


def _sq_loss(out):
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return sum(jnp.mean(jnp.square(o)) for o in outs)


def jax_step(module: nnx.Module, xs: list[np.ndarray], layouts) -> tuple[Callable, float, float]:
    """``(run_one_step, temp_bytes, flops_per_step)`` for ``module`` in train mode."""
    run, compiled = jax_compiled_step(module, xs, layouts)
    temp = compiled.memory_analysis().temp_size_in_bytes
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0)) if cost else 0.0
    return run, temp, flops


def jax_compiled_step(module: nnx.Module, xs: list[np.ndarray], layouts) -> tuple[Callable, Any]:
    """``(run_one_step, compiled)``: the train step of :func:`jax_step` and its compiled
    executable (``compiled.as_text()`` is the optimised HLO; ``bench.profile`` reads it)."""
    module.train()
    lay = [layouts] * len(xs) if isinstance(layouts, str) else list(layouts)
    batch = tuple(jnp.asarray(to_flax_layout(x, la)) for x, la in zip(xs, lay, strict=True))
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)
    tx = optax.adamw(LR)
    opt_state = tx.init(params)

    def loss_fn(model, batch):
        return _sq_loss(model(*batch)), None

    step = make_train_step(graphdef, tx, loss_fn, compiler_options=cpu_compiler_options(module))
    compiled = step.lower(params, rest, opt_state, batch).compile()
    state = [params, rest, opt_state]

    def run():
        state[0], state[1], state[2], loss, _ = compiled(state[0], state[1], state[2], batch)
        loss.block_until_ready()

    return run, compiled


def torch_step(model, xs: list[np.ndarray]) -> Callable[[], None]:
    import torch

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    batch = [torch.from_numpy(x) for x in xs]

    def run():
        opt.zero_grad(set_to_none=True)
        out = model(*batch)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        loss = sum(o.pow(2).mean() for o in outs)
        loss.backward()
        opt.step()

    return run


def matmul_gflops(n: int = 2048, iters: int = 10) -> float:
    """Float32 GFLOP/s of a large jitted matmul: the machine's practical peak for XLA."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
    f = jax.jit(lambda a, b: a @ b)
    ms = _median_ms(lambda: f(a, a).block_until_ready(), iters, 2)
    return 2 * n**3 / (ms * 1e-3) / 1e9


def case_models(case: BenchCase) -> tuple[list[np.ndarray], Any, nnx.Module]:
    """``(inputs, torch_module, flax_module)`` of a case: seeded inputs in the torch
    layout, the float32 twin, and the Flax module holding the same weights."""
    import torch

    torch.manual_seed(0)
    xs = _inputs(case)
    tm = case.make_torch().float()
    make_flax = case.make_flax or (lambda m: from_torch(m, param_dtype=jnp.float32))
    return xs, tm, make_flax(tm)


def run_case(
    case: BenchCase, *, iters: int, warmup: int, compile: bool, threads: int
) -> list[Result]:
    import torch

    torch.set_num_threads(threads)
    xs, tm, fm = case_models(case)
    run, temp, flops = jax_step(fm, xs, case.layouts)
    res = Result(case.name, _median_ms(run, iters, warmup), temp_mb=temp / 2**20)
    if case.flops and flops:
        res.gflops = flops / (res.jax_ms * 1e-3) / 1e9
    res.eager_ms = _median_ms(torch_step(tm, xs), iters, warmup)
    if compile and case.compile:
        torch._dynamo.reset()
        try:
            res.compile_ms = _median_ms(torch_step(torch.compile(tm), xs), iters, warmup)
        except Exception as e:  # inductor needs a C++ toolchain; say why it is missing
            res.note = f"torch.compile failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}"
    results = [res]
    for vname, make_variant in case.variants.items():
        vrun, vtemp, _ = jax_step(make_variant(tm), xs, case.layouts)
        results.append(
            Result(f"{case.name}[{vname}]", _median_ms(vrun, iters, warmup), temp_mb=vtemp / 2**20)
        )
    return results


def _fmt(v: float | None, spec: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        width = int(spec.split(".")[0] or 0)
        return "-".rjust(width)
    return format(v, spec)


def table(results: list[Result], peak_gflops: float | None, threads: int) -> str:
    import torch

    head = (
        f"train step (fwd+bwd+AdamW), median ms; {threads} threads; jax {jax.__version__} "
        f"({jax.default_backend()}), torch {torch.__version__}"
    )
    if peak_gflops:
        head += f"; float32 matmul peak {peak_gflops:.1f} GFLOP/s"
    width = max([len(r.name) for r in results] + [4])
    lines = [
        head,
        f"{'case':<{width}}  {'jax':>9}  {'eager':>9}  {'compile':>9}  {'eager/jax':>9}  "
        f"{'comp/jax':>8}  {'temp MB':>8}  {'GFLOP/s':>8}  {'%peak':>5}",
    ]
    for r in results:
        pct = 100 * r.gflops / peak_gflops if r.gflops and peak_gflops else None
        lines.append(
            f"{r.name:<{width}}  {_fmt(r.jax_ms, '9.2f')}  {_fmt(r.eager_ms, '9.2f')}  "
            f"{_fmt(r.compile_ms, '9.2f')}  {_fmt(r.eager_ratio, '9.2f')}  "
            f"{_fmt(r.compile_ratio, '8.2f')}  {_fmt(r.temp_mb, '8.2f')}  "
            f"{_fmt(r.gflops, '8.2f')}  {_fmt(pct, '5.0f')}" + (f"  {r.note}" if r.note else "")
        )
    return "\n".join(lines)


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def add_malloc_option(p) -> None:
    p.add_argument(
        "--default-malloc",
        action="store_true",
        help="leave glibc's malloc as it is; by default freed memory is kept for reuse "
        "(flaxattn.host_memory, `python -m train --keep-freed-memory`), for both sides alike",
    )


def apply_malloc_option(args) -> str:
    """Call before the first JAX or torch computation; returns the mode, for the header."""
    if args.default_malloc:
        return "default malloc"
    from flaxattn.host_memory import retain_freed_memory

    return "malloc keeps freed memory" if retain_freed_memory() else "default malloc (no glibc)"
