"""Cross-framework parity: prove a Flax module and its PyTorch twin compute the same thing.

One call runs both on the same weights and inputs and compares, tensor by tensor:

- the outputs;
- the input gradients and every parameter gradient, as the vector-Jacobian
  product with one random cotangent (``d sum(out * cot)``), parameter gradients
  mapped to PyTorch names through :mod:`flaxattn.convert`;
- in train mode, every buffer after the step (BatchNorm running statistics);
- that every parameter received a non-zero gradient on both sides.

With ``steps > 1`` both sides then take the same SGD step on those gradients
and run again on fresh inputs, so drift in running statistics or in the update
shows up. The report prints as a table; :meth:`ParityReport.assert_ok` raises
when a tolerance is exceeded.

Tolerances are normalised: a tensor passes when
``max|flax - torch| <= atol + rtol * max|torch|``. The defaults are tight in
float64 (where only real bugs show) and realistic in float32.

Use it on your own pair of modules::

    report = check_parity(my_torch_block, my_flax_block, input_shapes=[(2, 32, 9, 7)])
    print(report.table())
    report.assert_ok()

or from the shell: ``flaxattn-parity torch_ref.CBAM --kwargs '{"channel": 32}' --shape 2,32,9,7``.

Torch is imported lazily; inputs and outputs are given in the *torch* layout
(NCHW) and moved to channels-last for Flax by ``layouts`` (``'auto'``: 4-D
arrays are images, others are left as they are).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import importlib
import json
import sys
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flaxattn.convert import (
    from_torch,
    load_state_dict,
    map_to_torch,
    to_torch_state_dict,
    torch_layout,
)

TOLERANCES = {
    "float64": {"rtol": 1e-9, "atol": 1e-12},
    "float32": {"rtol": 1e-4, "atol": 1e-6},
}
LAYOUTS = ("auto", "nchw", "none")


class ParityError(AssertionError):
    """Raised by :meth:`ParityReport.assert_ok`; the message is the table of failures."""


def to_flax_layout(a: np.ndarray, layout: str) -> np.ndarray:
    """Torch layout -> Flax layout: ``'nchw'`` moves axis 1 last; ``'auto'`` does so for 4-D."""
    if layout == "nchw" or (layout == "auto" and a.ndim == 4):
        return np.moveaxis(a, 1, -1)
    return a


def to_torch_layout(a: np.ndarray, layout: str) -> np.ndarray:
    if layout == "nchw" or (layout == "auto" and a.ndim == 4):
        return np.moveaxis(a, -1, 1)
    return a


@dataclasses.dataclass
class Row:
    step: int
    kind: str  # output | grad_input | grad_param | buffer | dtype
    name: str
    shape: tuple
    max_abs: float
    rel: float
    ok: bool
    note: str = ""


@dataclasses.dataclass
class ParityReport:
    """Per-tensor comparison rows of one parity run."""

    name: str
    dtype: str
    mode: str
    rtol: float
    atol: float
    rows: list[Row] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.rows) and all(r.ok for r in self.rows)

    def failures(self) -> list[Row]:
        return [r for r in self.rows if not r.ok]

    def table(self, only_failures: bool = False) -> str:
        rows = self.failures() if only_failures else self.rows
        head = (
            f"parity {self.name}: {self.dtype}, {self.mode} mode, rtol={self.rtol:g}, "
            f"atol={self.atol:g}, {len(self.rows)} tensors, {len(self.failures())} failed"
        )
        width = max([len(r.name) for r in rows] + [4])
        lines = [
            head,
            f"{'step':>4}  {'kind':<10}  {'name':<{width}}  {'shape':<18}  "
            f"{'max_abs':>9}  {'rel':>9}  ok",
        ]
        for r in rows:
            shape = "x".join(map(str, r.shape)) or "()"
            lines.append(
                f"{r.step:>4}  {r.kind:<10}  {r.name:<{width}}  {shape:<18}  "
                f"{r.max_abs:9.2e}  {r.rel:9.2e}  {'ok' if r.ok else 'FAIL'}"
                + (f"  {r.note}" if r.note else "")
            )
        return "\n".join(lines)

    def assert_ok(self) -> ParityReport:
        if not self.rows:
            raise ParityError(f"parity {self.name}: nothing was compared")
        if not self.ok:
            raise ParityError(self.table(only_failures=True))
        return self

    def max_errors(self) -> dict[str, float]:
        """Largest normalised error per kind, for summaries."""
        out: dict[str, float] = {}
        for r in self.rows:
            out[r.kind] = max(out.get(r.kind, 0.0), r.rel)
        return out


def compare(a, b, *, rtol: float, atol: float) -> tuple[float, float, bool]:
    """``(max_abs, rel, ok)`` of ``a`` (candidate) against ``b`` (reference)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf"), float("inf"), False
    if a.size == 0:
        return 0.0, 0.0, True
    err = float(np.max(np.abs(a - b)))
    scale = float(np.max(np.abs(b)))
    ok = bool(np.isfinite(err)) and err <= atol + rtol * scale
    return err, err / scale if scale > 0 else err, ok


# --- the two sides -------------------------------------------------------------------------


def torch_vjp(
    module,
    inputs: Sequence[np.ndarray],
    cotangents: Sequence[np.ndarray] | Callable[[list[tuple]], Sequence[np.ndarray]],
) -> dict:
    """Run ``module`` on ``inputs`` (torch layout) and backpropagate ``cotangents``.

    ``cotangents`` may be a function of the output shapes. Inputs are cloned
    before the call (upstream DilateFormer writes into its input). Returns numpy
    ``out`` and ``cot`` (lists), ``grad_in`` (list, None for non-float inputs),
    ``grads`` (by parameter name; None where no gradient arrived) and ``buffers``
    (the state_dict entries that are not parameters, after the call).
    """
    import torch

    xs = [torch.tensor(x, requires_grad=np.issubdtype(x.dtype, np.floating)) for x in inputs]
    module.zero_grad(set_to_none=True)
    out = module(*[x.clone() for x in xs])
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    if callable(cotangents):
        cotangents = cotangents([tuple(o.shape) for o in outs])
    cots = [np.asarray(c) for c in cotangents]
    # Backpropagate the scalar sum(out * cot): its gradient with respect to ``out`` is
    # ``cot`` bit for bit (cot * 1.0), so this is the VJP, and unlike
    # ``torch.autograd.backward(outs, cots)`` it does not import sympy for a shape check
    # (0.4 CPU seconds on a process's first backward: the training gate pays it).
    total = sum(
        (o * torch.as_tensor(c, dtype=o.dtype)).sum() for o, c in zip(outs, cots, strict=True)
    )
    total.backward()
    params = dict(module.named_parameters())
    return {
        "out": [o.detach().numpy() for o in outs],
        "cot": cots,
        "grad_in": [None if x.grad is None else x.grad.numpy() for x in xs],
        "grads": {n: None if p.grad is None else p.grad.numpy() for n, p in params.items()},
        "buffers": {
            k: v.detach().numpy() for k, v in module.state_dict().items() if k not in params
        },
    }


def _vjp_run(graphdef, p, r, xs, cots):
    def f(p, xs):
        # Fresh Variable objects for the non-differentiated state: NNX refuses to
        # mutate a Variable created outside the trace that mutates it.
        m = nnx.merge(graphdef, p, jax.tree.map(lambda a: a, r))
        y = m(*xs)
        _, _, new_r = nnx.split(m, nnx.Param, ...)
        return (list(y) if isinstance(y, (tuple, list)) else [y]), new_r

    ys, vjp_fn, new_r = jax.vjp(f, p, xs, has_aux=True)
    # Match the outputs' dtypes, so a promoted output is reported, not a crash.
    gp, gx = vjp_fn([c.astype(y.dtype) for c, y in zip(cots, ys, strict=True)])
    return ys, gp, gx, new_r


# One jitted function for every call, keyed on the (hashable) graphdef: the steps
# of a train-mode check, and modules of the same structure, compile it once.
_vjp_run_jit = jax.jit(_vjp_run, static_argnums=0)


def _hashable(value) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


@jax.jit
def _sgd_update(params: list, grads: list, lr):
    return [p - lr * g for p, g in zip(params, grads, strict=True)]


def flax_vjp(
    module: nnx.Module,
    inputs: Sequence[jax.Array],
    cotangents: Sequence[jax.Array],
    *,
    jit: bool = True,
    compiler_options: dict | None = None,
) -> dict:
    """The Flax side of :func:`torch_vjp` (inputs in Flax layout); updates ``module``'s
    non-parameter state (running statistics, RNG counters) as a forward call would.

    ``compiler_options`` (XLA options, e.g. a low optimisation level for a check that
    runs once) compile for this call only.

    Returns ``out`` (list), ``grad_in`` (list) and ``grads`` (by Flax path).
    """
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)
    args = (params, rest, tuple(inputs), tuple(cotangents))
    if not jit:
        ys, gp, gx, new_rest = _vjp_run(graphdef, *args)
    elif compiler_options:
        run = jax.jit(functools.partial(_vjp_run, graphdef), compiler_options=compiler_options)
        ys, gp, gx, new_rest = run(*args)
    elif _hashable(graphdef):
        ys, gp, gx, new_rest = _vjp_run_jit(graphdef, *args)
    else:  # unhashable static attributes: compile for this call only
        ys, gp, gx, new_rest = jax.jit(functools.partial(_vjp_run, graphdef))(*args)
    nnx.update(module, new_rest)
    grads = {path: v[...] for path, v in nnx.to_flat_state(gp)}
    return {"out": list(ys), "grad_in": list(gx), "grads": grads}


def _cast(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Floating inputs to the checked dtype; integer inputs (labels, indices) unchanged."""
    return x.astype(dtype) if np.issubdtype(x.dtype, np.floating) else x


def _per_item(layouts: Sequence[str] | str, n: int, name: str) -> list[str]:
    items = [layouts] * n if isinstance(layouts, str) else list(layouts)
    if len(items) != n or any(lay not in LAYOUTS for lay in items):
        raise ValueError(
            f"`{name}` (={layouts!r}) must be one of {list(LAYOUTS)} or a list of {n} of them, "
            "one per tensor"
        )
    return items


def _perturb(module, scale: float, rng: np.random.Generator) -> None:
    import torch

    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point():
                t += torch.as_tensor(scale * rng.standard_normal(tuple(t.shape)), dtype=t.dtype)
                if name.endswith("running_var"):
                    t.abs_().add_(0.5)


def _sgd_step(torch_module, flax_module: nnx.Module, t: dict, f: dict, lr: float) -> None:
    import torch

    with torch.no_grad():
        for name, p in torch_module.named_parameters():
            if t["grads"].get(name) is not None:
                p -= lr * torch.as_tensor(t["grads"][name])
    params = dict(nnx.to_flat_state(nnx.state(flax_module, nnx.Param)))
    paths = list(f["grads"])
    # One jitted update: eager ops would compile once per parameter shape.
    new = _sgd_update([params[p][...] for p in paths], [f["grads"][p] for p in paths], lr)
    for path, value in zip(paths, new, strict=True):
        params[path][...] = value


# --- the check -----------------------------------------------------------------------------


def _x64_when_float64(fn: Callable) -> Callable:
    """Run ``fn`` under ``jax.enable_x64(True)`` when called with ``dtype='float64'``: a
    scoped setting, so the caller's ``jax_enable_x64`` is the same afterwards."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if kwargs.get("dtype", "float64") != "float64":
            return fn(*args, **kwargs)
        with jax.enable_x64(True):
            return fn(*args, **kwargs)

    return wrapper


@_x64_when_float64
def check_parity(
    torch_module,
    flax_module: nnx.Module | None = None,
    inputs: Sequence[np.ndarray] | None = None,
    *,
    input_shapes: Sequence[Sequence[int]] | None = None,
    layouts: Sequence[str] | str = "auto",
    out_layouts: Sequence[str] | str = "auto",
    dtype: str = "float64",
    mode: str = "eval",
    steps: int = 1,
    lr: float = 1e-2,
    rtol: float | None = None,
    atol: float | None = None,
    zero_grad_ok: Sequence[str] = (),
    make_inputs: Callable[[np.random.Generator], Sequence[np.ndarray]] | None = None,
    copy_weights: bool = True,
    perturb: float = 0.0,
    jit: bool = True,
    compiler_options: dict | None = None,
    seed: int = 0,
    name: str | None = None,
) -> ParityReport:
    """Compare ``flax_module`` with ``torch_module`` on outputs and gradients.

    No side effects: neither module is modified (both are copied, and cast to ``dtype``,
    first) and no global JAX setting changes.

    Args:
      torch_module: the reference PyTorch module.
      flax_module: its Flax twin; ``None`` builds it with ``from_torch``. When
        given, the torch weights are copied into it unless ``copy_weights=False``
        (then its parameter dtype must already be ``dtype``).
      inputs: arrays in the torch layout; or give ``input_shapes`` (standard
        normal inputs) or ``make_inputs(rng)``.
      layouts / out_layouts: per input/output ``'auto'``, ``'nchw'`` or ``'none'``.
      dtype: ``'float64'`` (runs under ``jax.enable_x64(True)``; the caller's
        ``jax_enable_x64`` setting is the same afterwards) or ``'float32'``.
      mode: ``'eval'`` or ``'train'`` (BatchNorm batch statistics, buffers compared).
      steps: run, compare, take an SGD step of size ``lr`` on both, repeat.
      rtol, atol: override the defaults of :data:`TOLERANCES`.
      zero_grad_ok: parameter names whose gradient may be structurally zero (a
        conv bias before train-mode BatchNorm): exempt from the non-zero
        requirement, and when both sides are round-off below
        ``atol + rtol * max|grad|`` of the step they pass without comparing noise.
      perturb: add ``perturb * N(0, 1)`` to every floating-point parameter and
        buffer of the torch module first (running variances kept positive), so
        zero, one and identity initialisations cannot hide a mapping error, and
        no ReLU sits exactly on its kink (a zero BatchNorm bias at batch 1 puts
        an average-pooled input there, where the two frameworks' round-off
        picks different sides).
      jit: run the Flax side under ``jax.jit`` (what users run).
      compiler_options: XLA compiler options for the Flax side's compile (with ``jit``),
        e.g. ``{"xla_backend_optimization_level": 0}`` where compile time dominates a
        check that runs once (``train/gate.py``); compiled for this call only.
      seed: seeds the inputs and cotangents.
    """
    if dtype not in TOLERANCES:
        raise ValueError(f"`dtype` (={dtype!r}) must be one of {list(TOLERANCES)}")
    if mode not in ("eval", "train"):
        raise ValueError(f"`mode` (={mode!r}) must be 'eval' or 'train'")
    if steps < 1:
        raise ValueError(f"`steps` (={steps}) must be at least 1")
    import torch

    np_dtype = np.dtype(dtype)
    tol = dict(TOLERANCES[dtype])
    tol.update({k: v for k, v in (("rtol", rtol), ("atol", atol)) if v is not None})
    rng = np.random.default_rng(seed)

    def draw_inputs() -> list[np.ndarray]:
        if make_inputs is not None:
            xs = list(make_inputs(rng))
        elif input_shapes is not None:
            xs = [rng.standard_normal(tuple(s)) for s in input_shapes]
        elif inputs is not None:  # later steps: fresh inputs of the given shapes
            xs = [rng.standard_normal(np.shape(x)) for x in inputs]
        else:
            raise ValueError("give `inputs`, `input_shapes` or `make_inputs`")
        return [_cast(np.asarray(x), np_dtype) for x in xs]

    tm = copy.deepcopy(torch_module).to(getattr(torch, dtype))
    tm.train(mode == "train")
    if perturb:
        _perturb(tm, perturb, rng)
    if flax_module is None:
        fm = from_torch(tm, param_dtype=jnp.dtype(dtype))
    else:
        fm = nnx.clone(flax_module)
        if copy_weights:
            load_state_dict(fm, tm.state_dict())
        elif torch_layout(flax_module) != "canonical":
            # The clone starts canonical; name the gradients in the module's layout.
            load_state_dict(fm, to_torch_state_dict(flax_module), layout=torch_layout(flax_module))
    if mode == "train":
        fm.train()
    else:
        fm.eval()

    report = ParityReport(name or type(torch_module).__name__, dtype, mode, **tol)
    xs = draw_inputs() if inputs is None else [_cast(np.asarray(x), np_dtype) for x in inputs]
    for step in range(steps):
        if step > 0:
            xs = draw_inputs()
        in_lay = _per_item(layouts, len(xs), "layouts")
        t = torch_vjp(
            tm, xs, lambda shapes: [rng.standard_normal(s).astype(np_dtype) for s in shapes]
        )
        cots = t["cot"]
        out_lay = _per_item(out_layouts, len(t["out"]), "out_layouts")
        f = flax_vjp(
            fm,
            [jnp.asarray(to_flax_layout(x, lay)) for x, lay in zip(xs, in_lay, strict=True)],
            [jnp.asarray(to_flax_layout(c, lay)) for c, lay in zip(cots, out_lay, strict=True)],
            jit=jit,
            compiler_options=compiler_options,
        )
        compare_results(
            report,
            t,
            flax_results_to_torch(f, fm, in_lay, out_lay),
            step=step,
            buffers=tm.training,
            zero_grad_ok=zero_grad_ok,
            dtype=np_dtype,
        )
        if step + 1 < steps:
            _sgd_step(tm, fm, t, f, lr)
    return report


def flax_results_to_torch(
    f: dict, module: nnx.Module, in_layouts: Sequence[str], out_layouts: Sequence[str]
) -> dict:
    """A :func:`flax_vjp` result in torch layouts and names (``buffers`` = BatchStats)."""
    stats = dict(nnx.to_flat_state(nnx.state(module, nnx.BatchStat)))
    return {
        "out": [
            to_torch_layout(np.asarray(o), lay)
            for o, lay in zip(f["out"], out_layouts, strict=True)
        ],
        "grad_in": [
            to_torch_layout(np.asarray(g), lay)
            for g, lay in zip(f["grad_in"], in_layouts, strict=True)
        ],
        "grads": map_to_torch(module, f["grads"]),
        "buffers": map_to_torch(module, {p: v[...] for p, v in stats.items()}),
    }


def compare_results(
    report: ParityReport,
    ref: dict,
    cand: dict,
    *,
    step: int = 0,
    buffers: bool = False,
    zero_grad_ok: Sequence[str] = (),
    dtype: np.dtype | None = None,
) -> ParityReport:
    """Append rows comparing ``cand`` with ``ref``: both torch-layout, torch-named dicts
    with ``out`` and ``grad_in`` (lists), ``grads`` and ``buffers`` (by name), as
    :func:`torch_vjp` returns. Every reference parameter must have a non-zero
    gradient on both sides, except those in ``zero_grad_ok``."""
    tol = {"rtol": report.rtol, "atol": report.atol}
    add = report.rows.append
    for i, (co, ro) in enumerate(zip(cand["out"], ref["out"], strict=True)):
        name = "out" if len(ref["out"]) == 1 else f"out/{i}"
        if dtype is not None and co.dtype != dtype:
            add(
                Row(
                    step,
                    "dtype",
                    name,
                    tuple(co.shape),
                    float("nan"),
                    float("nan"),
                    False,
                    f"output is {co.dtype}, expected {dtype}",
                )
            )
        add(Row(step, "output", name, tuple(ro.shape), *compare(co, ro, **tol)))
    for i, (cg, rg) in enumerate(zip(cand["grad_in"], ref["grad_in"], strict=True)):
        if rg is not None:
            add(Row(step, "grad_input", f"in/{i}", tuple(rg.shape), *compare(cg, rg, **tol)))
    # Structurally zero gradients are round-off on both sides: bound them by the
    # largest gradient of the step instead of comparing noise with noise.
    grad_scale = max(
        (float(np.max(np.abs(g))) for g in ref["grads"].values() if g is not None and g.size),
        default=0.0,
    )
    zero_tol = tol["atol"] + tol["rtol"] * grad_scale
    for pname, rg in ref["grads"].items():
        cg = cand["grads"].get(pname)
        if cg is None:
            add(
                Row(
                    step,
                    "grad_param",
                    pname,
                    (),
                    float("inf"),
                    float("inf"),
                    False,
                    "no candidate gradient maps to this parameter",
                )
            )
            continue
        if rg is None:
            rg = np.zeros_like(cg)
        row = Row(step, "grad_param", pname, tuple(rg.shape), *compare(cg, rg, **tol))
        if pname in zero_grad_ok:
            # May be zero (e.g. only in train mode): passes as a normal
            # comparison or as round-off under the bound.
            worst = max(float(np.max(np.abs(cg))), float(np.max(np.abs(rg))))
            if worst <= zero_tol:
                row.ok = True
                row.note = f"structurally zero: |g| <= {worst:.1e} (bound {zero_tol:.1e})"
        # A zero-size parameter (an empty token table) has nothing to receive.
        elif rg.size and not (np.any(cg != 0) and np.any(rg != 0)):
            row.ok = False
            row.note = "no gradient reached this parameter"
        add(row)
    for pname in sorted(set(cand["grads"]) - set(ref["grads"])):
        add(
            Row(
                step,
                "grad_param",
                pname,
                (),
                float("inf"),
                float("inf"),
                False,
                "candidate gradient with no reference parameter",
            )
        )
    if buffers:
        for bname, rb in ref["buffers"].items():
            cb = cand["buffers"].get(bname)
            if cb is None:
                add(
                    Row(
                        step,
                        "buffer",
                        bname,
                        tuple(rb.shape),
                        float("inf"),
                        float("inf"),
                        False,
                        "missing on the candidate side",
                    )
                )
                continue
            add(Row(step, "buffer", bname, tuple(rb.shape), *compare(cb, rb, **tol)))
    return report


# --- command line ---------------------------------------------------------------------------


class UsageError(ValueError):
    """A user mistake on the ``flaxattn-parity`` command line: one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage + message; one line is enough
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _one_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return "; ".join(lines) or type(e).__name__


def _resolve(spec: str):
    """``pkg.mod:Class`` or ``pkg.Class`` -> the ``torch.nn.Module`` subclass."""
    import torch

    if ":" in spec:
        mod, _, name = spec.partition(":")
    else:
        mod, _, name = spec.rpartition(".")
    if not mod or not name or not all(p.isidentifier() for p in [*mod.split("."), name]):
        raise UsageError(f"`module` (={spec!r}) must be 'package.module:Class' or 'package.Class'")
    try:
        module = importlib.import_module(mod)
    except ImportError as e:
        raise UsageError(f"`module` (={spec!r}): cannot import {mod!r}: {_one_line(e)}") from e
    except Exception as e:  # the user's module raised while importing
        raise UsageError(
            f"`module` (={spec!r}): importing {mod!r} raised {type(e).__name__}: {_one_line(e)}"
        ) from e
    if not hasattr(module, name):
        raise UsageError(f"`module` (={spec!r}): {mod!r} has no attribute {name!r}")
    cls = getattr(module, name)
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise UsageError(
            f"`module` (={spec!r}) must name a torch.nn.Module class, got the "
            f"{type(cls).__name__} {getattr(cls, '__qualname__', type(cls).__qualname__)}"
        )
    return cls


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"`--shape` (={text!r}) must be integers separated by commas"
        ) from None
    if any(v <= 0 for v in shape):
        raise argparse.ArgumentTypeError(f"`--shape` (={text!r}) must be positive integers")
    return shape


def _kwargs(text: str) -> dict:
    try:
        kwargs = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"`--kwargs` (={text!r}) is not JSON: {e}") from None
    if not isinstance(kwargs, dict):
        raise argparse.ArgumentTypeError(
            f"`--kwargs` (={text!r}) must be a JSON object, got {type(kwargs).__name__}"
        )
    return kwargs


def _number(name: str, *, low: float, kind: type = float, strict: bool = False):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"`{name}` (={text!r}) must be {'an integer' if kind is int else 'a number'}"
            ) from None
        if not (value > low if strict else value >= low):  # also refuses NaN
            raise argparse.ArgumentTypeError(
                f"`{name}` (={text!r}) must be {'>' if strict else '>='} {low:g}"
            )
        if kind is float and value == float("inf"):
            raise argparse.ArgumentTypeError(f"`{name}` (={text!r}) must be finite")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="flaxattn-parity",
        description="Compare a PyTorch module with its flaxattn twin: outputs, input and "
        "parameter gradients, and (train mode) buffers. Exit status: 0 parity holds, "
        "1 parity fails, 2 a usage error (bad module, --kwargs or --shape).",
    )
    p.add_argument("module", help="torch class, e.g. torch_ref.CBAM or mypkg.blocks:MyBlock")
    p.add_argument("--kwargs", type=_kwargs, default={}, help="constructor kwargs as JSON")
    p.add_argument(
        "--shape",
        type=_shape,
        action="append",
        required=True,
        help="input shape in the torch layout (repeat for several inputs)",
    )
    p.add_argument("--dtype", choices=list(TOLERANCES), default="float64")
    p.add_argument("--mode", choices=["eval", "train"], default="eval")
    p.add_argument("--steps", type=_number("--steps", low=1, kind=int), default=1)
    p.add_argument("--rtol", type=_number("--rtol", low=0))
    p.add_argument("--atol", type=_number("--atol", low=0))
    p.add_argument(
        "--perturb",
        type=_number("--perturb", low=0),
        default=0.1,
        help="noise added to the torch weights first (0 to keep them)",
    )
    p.add_argument("--seed", type=_number("--seed", low=0, kind=int), default=0)
    p.add_argument("--layout", choices=LAYOUTS, default="auto")
    p.add_argument("--debug", action="store_true", help="show the traceback of a usage error")
    return p


def _run(args: argparse.Namespace) -> int:
    import torch

    cls = _resolve(args.module)
    torch.manual_seed(args.seed)
    described = f"{args.module}(**{json.dumps(args.kwargs)})"
    try:
        module = cls(**args.kwargs)
    except Exception as e:  # TypeError (unknown argument) or the constructor's ValueError
        raise UsageError(
            f"`--kwargs` (={json.dumps(args.kwargs)}) rejected by {args.module}: "
            f"{type(e).__name__}: {_one_line(e)}"
        ) from e
    try:
        report = check_parity(
            module,
            input_shapes=args.shape,
            layouts=args.layout,
            out_layouts=args.layout,
            dtype=args.dtype,
            mode=args.mode,
            steps=args.steps,
            rtol=args.rtol,
            atol=args.atol,
            perturb=args.perturb,
            seed=args.seed,
            name=args.module,
        )
    except Exception as e:  # no Flax twin, or inputs the module refuses
        shapes = " ".join(f"--shape {','.join(map(str, s))}" for s in args.shape)
        raise UsageError(
            f"cannot check {described} on {shapes}: {type(e).__name__}: {_one_line(e)}"
        ) from e
    sys.stdout.write(report.table() + "\n" + ("PASS" if report.ok else "FAIL") + "\n")
    return 0 if report.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """``flaxattn-parity``: check a torch module class against its Flax twin and print the table.

    Returns 0 when parity holds, 1 when it fails and 2 for a usage error, which is
    printed as one line on stderr (``--debug`` shows its traceback instead).
    """
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except UsageError as e:
        if args.debug:
            import traceback

            traceback.print_exc()
        sys.stderr.write(f"flaxattn-parity: error: {e}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
