"""Proof of parity for ``python -m train``: the gate before training, the certificate at export.

**Gate** (:func:`parity_gate`). With ``--init-from FILE``, before the first step: the
torch_ref twin of the run's model (same registry entry, same ``--set`` overrides) loads
FILE with ``load_state_dict(strict=True)``, the Flax model holds FILE as
``flaxattn.convert`` loaded it, and :func:`flaxattn.parity.check_parity` compares the two
on one real batch of the run's data (the first ``GATE_BATCH`` training images, no
augmentation): outputs, input gradients and every parameter gradient, float32, eval mode,
and train mode too where the model has BatchNorm (running statistics compared). Nothing is
copied between the two sides (``copy_weights=False``, ``perturb=0``): each framework reads
the file its own way, which is what is being proven. A mismatch raises
:class:`ParityGateError` (``python -m train`` exits 2 with the table of failures).

Upstream key layouts (vit-pytorch releases, axial-attention): the Flax side recognised
the layout on load; the twin gets the same file re-keyed to the canonical layout by that
layout's adapter. The adapter renames and reshapes only, and is itself tested against the
upstream packages in ``parity_tests``; the gate proves what follows it.

**Certificate** (:func:`certify`). ``--export`` writes ``<file>.json`` with a
``certificate`` block: the same check between the trained Flax model and the twin loaded
from the exported file (:func:`train.export.load_torch_twin`) on a held-out batch, its
worst error per kind and tolerances, the versions, the SHA-256 of the weights file, how to
rebuild the batch (dataset, split, indices) and the Flax logits on it.
``python -m train.verify FILE`` re-checks it with PyTorch alone (see :mod:`train.verify`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import time
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from flaxattn.convert import load_weights, torch_layout
from flaxattn.convert.core import layouts_for
from flaxattn.parity import TOLERANCES, ParityReport, check_parity

# Images in the gate's batch and the certificate's (at most the run's batch size).
GATE_BATCH = 16
CERTIFICATE_VERSION = 1
KINDS = ("output", "grad_input", "grad_param", "buffer", "dtype")
# The gate's Flax side is compiled once and run once: compile time is most of its cost,
# and XLA's quick-compile settings cut it (round-off may differ, well within float32
# tolerances; what is compared is the function, not the optimiser's choices). On CPU the
# legacy elemental emitters instead of the MLIR fusion emitters halve it again (vit_tiny:
# 1.7 -> 0.7 CPU seconds; the run itself, 0.1 s, is as fast).
QUICK_COMPILE = {
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
    "xla_cpu_use_fusion_emitters": False,
}


class ParityGateError(ValueError):
    """The Flax model and its torch_ref twin compute different things on the same weights
    file; the message ends with the table of failures."""


class CertificateError(RuntimeError):
    """At export, the trained Flax model and the twin loaded from the exported file disagree
    (the weights and a certificate saying so are written all the same)."""


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def batch_images(source, indices, data) -> np.ndarray:
    """Normalised float32 ``(B, H, W, C)`` images ``indices`` of ``source`` (no augmentation)."""
    return data.normalize(np.stack([source[int(i)]["image"] for i in indices]))


def _twin_state_dict(twin, state_dict: dict) -> dict:
    import torch

    ref = twin.state_dict()
    return {
        k: torch.from_numpy(np.require(v, requirements="C")).to(ref[k].dtype)
        if k in ref
        else torch.from_numpy(np.require(v, requirements="C"))
        for k, v in state_dict.items()
    }


def _has_batchnorm(twin) -> bool:
    import torch

    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in twin.modules())


def _stochastic(twin) -> bool:
    """Active dropout or stochastic depth: train mode draws differ between frameworks."""
    import torch

    return any(
        (isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0)
        or float(getattr(m, "drop_prob", 0.0) or 0.0) > 0
        for m in twin.modules()
    )


def _check(twin, model: nnx.Module, x: np.ndarray, mode: str, name: str) -> ParityReport:
    # Trained or converted weights may hold structurally zero gradients (a gate's bias
    # before a train-mode BatchNorm); they are still compared, and pass as round-off
    # only when both sides are below the step's tolerance.
    names = tuple(n for n, _ in twin.named_parameters())

    def check(options):
        return check_parity(
            twin,
            flax_module=model,
            inputs=[np.moveaxis(x, -1, 1)],
            dtype="float32",
            mode=mode,
            copy_weights=False,
            perturb=0.0,
            zero_grad_ok=names,
            compiler_options=options,
            name=f"{name} ({mode})",
        )

    try:
        return check(QUICK_COMPILE)
    except Exception as e:  # an XLA without one of these options: its defaults
        if "No such compile option" not in str(e):
            raise
        return check(None)


def run_checks(twin, model: nnx.Module, x: np.ndarray, name: str) -> tuple[list, list[str]]:
    """Eval mode, and train mode where the twin has BatchNorm; returns the reports and
    notes on what was left out."""
    reports = [_check(twin, model, x, "eval", name)]
    notes = []
    if _has_batchnorm(twin):
        if _stochastic(twin):
            notes.append("train mode skipped: dropout draws differ between frameworks")
        else:
            reports.append(_check(twin, model, x, "train", name))
    return reports, notes


def worst(report: ParityReport) -> dict[str, float]:
    """Largest ``max|flax - torch| / max|torch|`` per kind, leaving out the gradients that
    passed as structurally zero round-off (their ratio compares noise with noise)."""
    out: dict[str, float] = {}
    for r in report.rows:
        if not r.note.startswith("structurally zero"):
            out[r.kind] = max(out.get(r.kind, 0.0), r.rel)
    return out


def max_errors(reports: list[ParityReport]) -> dict[str, dict[str, float]]:
    """``{mode: {kind: worst normalised error}}``."""
    return {r.mode: worst(r) for r in reports}


def summary_line(reports: list[ParityReport]) -> str:
    parts = []
    for r in reports:
        errs = worst(r)
        kinds = ", ".join(f"{k} {errs[k]:.1e}" for k in KINDS if k in errs)
        parts.append(f"{r.mode}: {kinds}")
    return "; ".join(parts)


def _failure_tables(reports: list[ParityReport]) -> str:
    return "\n".join(r.table(only_failures=True) for r in reports if not r.ok)


def _twin_for_file(spec, info, overrides, model: nnx.Module, path: Path):
    """The torch_ref twin holding ``path`` (re-keyed to the canonical layout when the
    Flax side recognised an upstream one), and the Flax side in the canonical layout."""
    from train.models import build_torch

    twin = build_torch(spec, info, overrides)
    sd = load_weights(path)
    layout = torch_layout(model)
    if layout != "canonical":
        adapter = next(lay for lay in layouts_for(type(model)) if lay.name == layout)
        sd = adapter.to_canonical(sd, model)
        # A fresh clone has the canonical layout, so gradients are named as the twin's.
        model = nnx.clone(model)
    try:
        twin.load_state_dict(_twin_state_dict(twin, sd), strict=True)
    except RuntimeError as e:
        raise ParityGateError(
            f"parity gate: the torch_ref twin {type(twin).__name__} refuses `init_from` "
            f"(={str(path)!r}) that the Flax model loaded: {e}"
        ) from e
    return twin, model, layout


@contextlib.contextmanager
def torch_threads(n: int | None):
    """PyTorch's intra-op threads set to ``n`` (``None``: unchanged) for the block."""
    if n is None:
        yield
        return
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def parity_gate(
    spec, info, overrides, model: nnx.Module, path: str | Path, x, *, threads: int | None = None
) -> str:
    """Check ``model`` (float32 compute, holding ``path``) against its twin on ``x``.

    ``threads``: PyTorch's intra-op threads for the check (the training loop leaves a
    core to the train step's compilation, which runs beside the gate: on a busy machine
    spinning OpenMP threads make a 20 ms forward + backward take seconds).
    Returns the one line to print; raises :class:`ParityGateError` on a mismatch.
    """
    path = Path(path)
    if not torch_available():
        return "parity gate skipped: torch is not installed (pip install torch to run it)"
    t0 = time.perf_counter()
    with torch_threads(threads):
        twin, fm, layout = _twin_for_file(spec, info, overrides, model, path)
        reports, notes = run_checks(twin, fm, np.asarray(x, np.float32), spec.name)
    tol = TOLERANCES["float32"]
    where = (
        f"{spec.name} <- {path.name}"
        + (f" ({layout} layout)" if layout != "canonical" else "")
        + f", {len(x)} images, float32, rtol {tol['rtol']:g} atol {tol['atol']:g}"
    )
    if not all(r.ok for r in reports):
        raise ParityGateError(
            f"parity gate failed for {where}: JAX and PyTorch compute different things on "
            f"these weights; training not started (worst: {summary_line(reports)})\n"
            + _failure_tables(reports)
        )
    return (
        f"parity gate passed ({where}), worst relative error {summary_line(reports)}"
        + "".join(f"; {n}" for n in notes)
        + f" [{time.perf_counter() - t0:.1f} s]"
    )


def _versions() -> dict[str, str]:
    import jax
    import torch

    import flaxattn

    return {"torch": torch.__version__, "jax": jax.__version__, "flaxattn": flaxattn.__version__}


def certify(model: nnx.Module, path: str | Path, batch: dict, x: np.ndarray) -> dict[str, Any]:
    """The certificate of the exported ``path``: ``model`` (float32 compute, eval mode)
    against the twin loaded from ``path`` on the held-out ``x`` described by ``batch``."""
    path = Path(path)
    if not torch_available():
        return {"skipped": "torch is not installed"}
    from train.export import load_torch_twin

    x = np.asarray(x, np.float32)
    twin = load_torch_twin(path)
    reports, notes = run_checks(twin, nnx.clone(model), x, path.name)
    model.eval()
    logits = np.asarray(model(x), np.float32)
    tol = TOLERANCES["float32"]
    return {
        "version": CERTIFICATE_VERSION,
        "passed": all(r.ok for r in reports),
        "max_errors": max_errors(reports),
        "tolerances": {"dtype": "float32", **tol},
        "notes": notes,
        "failures": _failure_tables(reports),
        "versions": _versions(),
        "weights_sha256": sha256(path),
        "batch": {**batch, "shape": list(x.shape), "layout": "NHWC float32, normalised"},
        "flax_logits": logits.tolist(),
        "flax_predictions": logits.argmax(-1).tolist(),
        "summary": summary_line(reports),
    }
