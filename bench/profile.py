"""Where a train step spends its time: the compiled JAX step beside the eager torch twin.

``python -m bench.profile CASE`` takes a case of the bench registry (``python -m bench``
times the same step), runs a few train steps (forward + backward + AdamW, the loss of
``bench.harness``) on both sides with the same weights and inputs, and prints

- **JAX**: the top HLO instructions by time per step, from a ``jax.profiler`` trace
  (``perfetto_trace.json.gz``: one complete event per executed instruction, named by
  it), each with its op kind and the source line that produced it, read from the
  compiled HLO's stack frames (the innermost frame in ``flaxattn/``, else in this
  repository, else the innermost frame);
- **torch**: ``torch.profiler``'s top operators by self CPU time per step;
- for each side the row ``matmul/conv X ms, other Y ms, total Z ms``: an instruction
  is matmul/conv when it is a ``dot``/``convolution``, a fusion whose computation
  holds one, or a oneDNN/matmul custom call; a torch operator when it is one of
  ``mm``/``addmm``/``bmm``/``matmul``/``linear``/the convolutions/SDPA or their
  autograd backward nodes.

Times are self times (an instruction or operator nested in another counts once) summed
over the profiled steps and divided by their number; the header gives the wall time
per step, measured around the profiled steps, so the two can be compared (profilers
add overhead; use ``python -m bench`` for timings).

Examples::

    python -m bench.profile vit/small
    python -m bench.profile channel/resblock_cbam --steps 5 --top 20 --by-line
    taskset -c 0 python -m bench.profile axial/ait_d4_reversible --threads 1 --hlo step.hlo

``--by-line`` adds the JAX rows summed per source line and kind; ``--hlo`` writes the
compiled HLO text (to read a fusion's body). Tables and what they show: ``NOTES-prof.md``.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import gzip
import json
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax

from bench.harness import (
    add_malloc_option,
    apply_malloc_option,
    case_models,
    default_threads,
    jax_compiled_step,
    torch_step,
)
from bench.registry import BenchCase, load_all

REPO = Path(__file__).resolve().parent.parent

_MATMUL_OPCODES = frozenset({"dot", "convolution"})
_MATMUL_CUSTOM_CALL = re.compile(r"onednn|mkl|matmul|conv|gemm|dot", re.I)
_TORCH_MATMUL = re.compile(
    r"^aten::_?(mm|addmm|bmm|baddbmm|addbmm|matmul|linear|mkldnn_linear\w*|\w*conv\w*"
    r"|\w*scaled_dot_product\w*)$"
)
_TORCH_MATMUL_GRAD = re.compile(
    r"^(Mm|Addmm|Bmm|Baddbmm|Addbmm|Matmul|Linear|\w*Convolution|\w*ScaledDotProduct\w*)"
    r"Backward\d*$"
)


# --------------------------------------------------------------------------- HLO text


@dataclasses.dataclass(frozen=True)
class HloOp:
    """One instruction of the compiled module: what it is and where it came from."""

    name: str
    kind: str  # opcode, or "<fusion kind>:<dot|convolution|root opcode>" for a fusion
    matmul: bool
    source: str  # "path:line" of the frame that produced it ("" when unknown)
    shape: str = ""  # result shape, layout dropped


@dataclasses.dataclass
class _Instr:
    name: str
    opcode: str
    computation: str
    frame: int | None
    source: str
    calls: list[str]
    fusion_kind: str
    target: str
    root: bool
    shape: str


_INSTR = re.compile(r"^\s*(ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_OPCODE = re.compile(r"(?:^|\s)([a-z][\w\-]*)\(")
_COMP = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_CALLS = re.compile(
    r"\b(?:calls|to_apply|body|condition|branch_computations)=(\{[^}]*\}|%?[\w.\-]+)"
)


def _section(text: str, title: str) -> list[str]:
    m = re.search(rf"^{title}\n(.*?)(?:\n\n|\Z)", text, re.S | re.M)
    return m.group(1).splitlines() if m else []


def _frame_locations(text: str) -> Callable[[int], list[tuple[str, int]]]:
    """``chain(frame_id) -> [(file, line), ...]``, innermost first, from the module's
    ``FileNames``/``FileLocations``/``StackFrames`` tables."""
    files = {}
    for line in _section(text, "FileNames"):
        i, name = line.split(None, 1)
        files[int(i)] = name.strip().strip('"')
    locs = {}
    for line in _section(text, "FileLocations"):
        m = re.match(r"(\d+) \{file_name_id=(\d+) function_name_id=\d+ line=(\d+)", line)
        if m:
            locs[int(m[1])] = (files.get(int(m[2]), "?"), int(m[3]))
    frames = {}
    for line in _section(text, "StackFrames"):
        m = re.match(r"(\d+) \{file_location_id=(\d+) parent_frame_id=(\d+)", line)
        if m:
            frames[int(m[1])] = (int(m[2]), int(m[3]))

    def chain(frame_id: int) -> list[tuple[str, int]]:
        # As printed, a frame's parent is the frame numbered ``parent_frame_id - 1``
        # (1 means none); checked against the source: the chain of a Linear's dot
        # reads linear.py <- helpers.py (Sequential) <- se.py <- the loss <- train step.
        out, seen = [], set()
        while frame_id in frames and frame_id not in seen:
            seen.add(frame_id)
            loc, parent = frames[frame_id]
            if loc in locs:
                out.append(locs[loc])
            frame_id = parent - 1
        return out

    return chain


def _rel(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        parts = Path(path).parts
        if "site-packages" in parts:
            return "/".join(parts[parts.index("site-packages") + 1 :])
        return path


def _pick_source(chain: list[tuple[str, int]]) -> str:
    """The innermost frame in ``flaxattn/``, else in this repository, else the innermost;
    with the innermost frame after it when that one is a library's."""
    if not chain:
        return ""
    rels = [(_rel(f), line) for f, line in chain]
    best = next((r for r in rels if r[0].startswith("flaxattn/")), None)
    best = best or next(
        (r for r in rels if not Path(r[0]).is_absolute() and (REPO / r[0]).is_file()), None
    )
    if best is None:
        return f"{rels[0][0]}:{rels[0][1]}"
    text = f"{best[0]}:{best[1]}"
    if rels[0] != best:
        text += f" < {Path(rels[0][0]).name}:{rels[0][1]}"
    return text


def parse_hlo(text: str) -> tuple[str, dict[str, HloOp]]:
    """``(module_name, {instruction name: HloOp})`` from ``compiled.as_text()``."""
    head = re.match(r"HloModule\s+([\w.\-]+)", text)
    if head is None:
        raise ValueError(f"`text` is not an HLO module: starts {text[:60]!r}")
    chain = _frame_locations(text)
    instrs: dict[str, _Instr] = {}
    comps: dict[str, list[str]] = collections.defaultdict(list)
    comp = ""
    for line in text.splitlines():
        m = _INSTR.match(line)
        if m is None or not line.startswith(" "):
            c = _COMP.match(line)
            if c and "->" in line:
                comp = c.group(1)
            continue
        root, name, rest = m.groups()
        op = _OPCODE.search(rest)
        if op is None:
            continue
        frame = re.search(r"stack_frame_id=(\d+)", rest)
        legacy = re.search(r'source_file="([^"]+)" source_line=(\d+)', rest)
        calls = []
        for c in _CALLS.findall(rest):
            calls += [x.strip().lstrip("%") for x in c.strip("{}").split(",") if x.strip()]
        fkind = re.search(r"kind=k(\w+)", rest)
        backend = re.search(r'"kind":"__(\w+?)_fusion"', rest)
        target = re.search(r'custom_call_target="([^"]+)"', rest)
        instrs[name] = _Instr(
            name=name,
            opcode=op.group(1),
            computation=comp,
            frame=int(frame.group(1)) if frame else None,
            source=f"{_rel(legacy[1])}:{legacy[2]}" if legacy else "",
            calls=calls,
            fusion_kind=(backend.group(1) if backend else fkind.group(1).lower() if fkind else ""),
            target=target.group(1) if target else "",
            root=bool(root),
            shape=re.sub(r"\{[^}]*\}", "", rest[: op.start()]).strip(),
        )
        comps[comp].append(name)

    def inner(called: list[str], seen: set[str]) -> list[_Instr]:
        out = []
        for c in called:
            if c in seen:
                continue
            seen.add(c)
            for n in comps.get(c, []):
                out.append(instrs[n])
                out += inner(instrs[n].calls, seen)
        return out

    def is_matmul(i: _Instr) -> bool:
        return i.opcode in _MATMUL_OPCODES or (
            i.opcode == "custom-call" and bool(_MATMUL_CUSTOM_CALL.search(i.target))
        )

    def source(i: _Instr) -> str:
        return i.source or (_pick_source(chain(i.frame)) if i.frame is not None else "")

    ops = {}
    for i in instrs.values():
        body = inner(i.calls, set()) if i.opcode == "fusion" else []
        mm = [b for b in body if is_matmul(b)]
        if i.opcode == "fusion":
            root = next((b for b in body if b.root and b.computation in i.calls[:1]), None)
            what = mm[0].opcode if mm else (root.opcode if root else "?")
            kind = f"{i.fusion_kind or 'fusion'}:{what}"
        else:
            kind = i.opcode + (f"[{i.target}]" if i.target else "")
        # A matmul fusion is placed where its dot/convolution was written.
        src = next((s for s in (source(b) for b in mm) if s), "") or source(i)
        if not src and i.opcode == "fusion":
            src = next((s for s in (source(b) for b in body if b.root) if s), "")
        ops[i.name] = HloOp(i.name, kind, is_matmul(i) or bool(mm), src, i.shape)
    return head.group(1), ops


# --------------------------------------------------------------------------- tables


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    ms: float  # per step
    calls: float  # per step
    kind: str
    source: str
    matmul: bool
    shape: str = ""


@dataclasses.dataclass(frozen=True)
class Side:
    """One framework's profile: rows sorted by time, and the per-step totals."""

    title: str
    wall_ms: float
    rows: list[Row]

    @property
    def matmul_ms(self) -> float:
        return sum(r.ms for r in self.rows if r.matmul)

    @property
    def total_ms(self) -> float:
        return sum(r.ms for r in self.rows)

    @property
    def other_ms(self) -> float:
        return self.total_ms - self.matmul_ms


def _self_times(events: list[dict]) -> dict[str, tuple[float, int]]:
    """Self time (us) and count per event name; events nested on one thread count once."""
    out: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
    by_tid = collections.defaultdict(list)
    for e in events:
        by_tid[e.get("tid")].append(e)
    for evs in by_tid.values():
        evs.sort(key=lambda e: (float(e["ts"]), -float(e.get("dur", 0.0))))
        stack: list[tuple[float, str]] = []  # (end, name)
        for e in evs:
            ts, dur = float(e["ts"]), float(e.get("dur", 0.0))
            while stack and stack[-1][0] <= ts:
                stack.pop()
            if stack:
                out[stack[-1][1]][0] -= dur
            out[e["name"]][0] += dur
            out[e["name"]][1] += 1
            stack.append((ts + dur, e["name"]))
    return {k: (v[0], v[1]) for k, v in out.items()}


def _read_trace(logdir: str) -> list[dict]:
    found = sorted(glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.json.gz")))
    if not found:
        raise FileNotFoundError(f"no perfetto trace under {logdir}/plugins/profile/")
    with gzip.open(found[-1], "rt") as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


def jax_profile(run: Callable[[], None], hlo_text: str, steps: int) -> Side:
    """Trace ``steps`` calls of ``run`` (one compiled train step each) and group the
    executed HLO instructions of that module by name."""
    module, ops = parse_hlo(hlo_text)
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as logdir:
        with jax.profiler.trace(logdir, create_perfetto_trace=True):
            t0 = time.perf_counter()
            for _ in range(steps):
                run()
            wall = time.perf_counter() - t0
        events = [
            e
            for e in _read_trace(logdir)
            if e.get("ph") == "X" and (e.get("args") or {}).get("hlo_module") == module
        ]
    if not events:
        raise RuntimeError(f"the trace holds no instruction of HLO module {module!r}")
    rows = []
    for name, (us, count) in _self_times(events).items():
        op = ops.get(name, HloOp(name, "?", False, ""))
        rows.append(
            Row(name, us / 1e3 / steps, count / steps, op.kind, op.source, op.matmul, op.shape)
        )
    rows.sort(key=lambda r: -r.ms)
    return Side(
        f"JAX jit (XLA:{jax.default_backend().upper()}), module {module}", 1e3 * wall / steps, rows
    )


def by_line(side: Side) -> Side:
    """The JAX rows summed per (source line, kind): one row per line of code instead of
    one per instruction (a layer repeated ``depth`` times shows once); ``calls`` counts
    the instructions, ``name`` their number."""
    groups: dict[tuple[str, str, bool], list[Row]] = collections.defaultdict(list)
    for r in side.rows:
        groups[(r.source or "-", r.kind, r.matmul)].append(r)
    rows = [
        Row(
            f"{len(rs)} instr",
            sum(r.ms for r in rs),
            sum(r.calls for r in rs),
            kind,
            src,
            mm,
            rs[0].shape if len({r.shape for r in rs}) == 1 else "(various)",
        )
        for (src, kind, mm), rs in groups.items()
    ]
    rows.sort(key=lambda r: -r.ms)
    return dataclasses.replace(side, title=side.title + ", by source line", rows=rows)


def torch_is_matmul(name: str) -> bool:
    """Whether a torch profiler key is a matmul/convolution (forward or backward)."""
    return bool(_TORCH_MATMUL.match(name) or _TORCH_MATMUL_GRAD.match(name))


def torch_profile(run: Callable[[], None], steps: int) -> Side:
    """``torch.profiler`` (CPU) over ``steps`` eager train steps; self CPU time per op."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            run()
        wall = time.perf_counter() - t0
    rows = [
        Row(
            e.key,
            e.self_cpu_time_total / 1e3 / steps,
            e.count / steps,
            "",
            "",
            torch_is_matmul(e.key),
        )
        for e in prof.key_averages()
    ]
    rows.sort(key=lambda r: -r.ms)
    return Side(f"torch {torch.__version__} eager", 1e3 * wall / steps, rows)


def totals_line(side: Side) -> str:
    return (
        f"matmul/conv {side.matmul_ms:.3f} ms, other {side.other_ms:.3f} ms, "
        f"total {side.total_ms:.3f} ms"
    )


def format_side(side: Side, top: int, *, jax_side: bool) -> str:
    total = side.total_ms or math.nan
    name_w = max([len(r.name) for r in side.rows[:top]] + [10])
    lines = [
        f"{side.title}: {side.wall_ms:.2f} ms/step wall; top {top} "
        + ("HLO instructions by self time" if jax_side else "operators by self CPU time"),
        f"  {'ms/step':>8} {'share':>6} {'calls':>5}  {'mm':2}  {'op':<{name_w}}"
        + (f"  {'kind':<18} {'shape':<24} source" if jax_side else ""),
    ]
    for r in side.rows[:top]:
        line = (
            f"  {r.ms:8.3f} {100 * r.ms / total:5.1f}% {r.calls:5.0f}  {'x' if r.matmul else ' ':2}"
            f"  {r.name:<{name_w}}"
        )
        if jax_side:
            line += f"  {r.kind:<18} {r.shape:<24} {r.source or '-'}"
        lines.append(line.rstrip())
    lines.append(f"  totals per step: {totals_line(side)}")
    return "\n".join(lines)


def profile_case(
    case: BenchCase, *, steps: int, warmup: int, threads: int, hlo_path: str | None = None
) -> tuple[Side, Side]:
    """``(jax_side, torch_side)`` for ``case``: same weights, inputs and thread count.
    ``hlo_path``: also write the compiled HLO text there (to read a fusion's body)."""
    import torch

    torch.set_num_threads(threads)
    xs, tm, fm = case_models(case)
    run, compiled = jax_compiled_step(fm, xs, case.layouts)
    hlo = compiled.as_text()
    if hlo_path:
        Path(hlo_path).write_text(hlo)
    trun = torch_step(tm, xs)
    for _ in range(warmup):
        run()
        trun()
    return jax_profile(run, hlo, steps), torch_profile(trun, steps)


def report(
    case: BenchCase,
    jside: Side,
    tside: Side,
    *,
    steps: int,
    top: int,
    threads: int,
    group: str = "op",
) -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    head = (
        f"{case.name}: train step (fwd+bwd+AdamW), {steps} steps profiled, shapes "
        f"{[tuple(s) for s in case.shapes]}; torch threads {threads}; jax {jax.__version__}; "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} cpus)"
    )
    return "\n\n".join(
        [
            head,
            format_side(jside, top, jax_side=True),
            *([format_side(by_line(jside), top, jax_side=True)] if group == "line" else []),
            format_side(tside, top, jax_side=False),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    cases = load_all()
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.splitlines()[0])
    p.add_argument("case", help=f"bench case, one of {sorted(cases)}")
    p.add_argument("--steps", type=int, default=5, help="profiled train steps per side")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per side first")
    p.add_argument("--top", type=int, default=15, help="rows per table")
    p.add_argument(
        "--threads",
        type=int,
        default=default_threads(),
        help="torch intra-op threads; XLA:CPU sizes its own pool to the cores the process may "
        "use (run under `taskset -c 0` with --threads 1 for a one-core comparison)",
    )
    p.add_argument(
        "--by-line",
        action="store_true",
        help="also print the JAX table summed per source line and kind",
    )
    p.add_argument("--hlo", metavar="FILE", help="write the compiled HLO text to FILE")
    add_malloc_option(p)
    args = p.parse_args(argv)
    if args.case not in cases:
        p.error(f"unknown case {args.case!r}; valid: {sorted(cases)}")
    for flag in ("steps", "top", "threads"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag} (={getattr(args, flag)}) must be at least 1")
    if args.warmup < 0:
        p.error(f"--warmup (={args.warmup}) must be at least 0")
    case = cases[args.case]
    print(apply_malloc_option(args), file=sys.stderr)
    jside, tside = profile_case(
        case, steps=args.steps, warmup=args.warmup, threads=args.threads, hlo_path=args.hlo
    )
    print(
        report(
            case,
            jside,
            tside,
            steps=args.steps,
            top=args.top,
            threads=args.threads,
            group="line" if args.by_line else "op",
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
