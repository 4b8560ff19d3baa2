"""``python -m train.verify WEIGHTS`` (or ``flaxattn-verify``): re-check an export's certificate.

PyTorch alone computes: the weights file's SHA-256 must be the certificate's, the torch_ref
twin is loaded from the file and its ``.json`` (:func:`train.export.load_torch_twin`,
``strict=True``), the held-out batch is rebuilt from its description with
:mod:`train.data`, and the twin's logits on it must match the Flax logits stored at export
within the stated tolerance (``max|torch - flax| <= atol + rtol * max|flax|``), with the
same predicted classes.

JAX is imported (``flaxattn``'s weight reader and class registry import it) but computes
nothing here.

Exit status: 0 verified; 1 refused (the file changed after export, or the numbers differ);
2 a usage error (no such file, no certificate, torch missing, data not found).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


class VerifyUsageError(ValueError):
    """The certificate cannot be checked at all (exit status 2)."""


def verify(path: str | Path) -> tuple[bool, str]:
    """``(verified, message)`` for the export at ``path``."""
    from train.export import read_description
    from train.gate import batch_images, sha256, torch_available

    path = Path(path)
    if not path.is_file():
        raise VerifyUsageError(f"`weights` (={str(path)!r}) is not a file")
    try:
        meta = read_description(path)
    except FileNotFoundError:
        raise VerifyUsageError(
            f"`weights` (={str(path)!r}) has no description {path.name}.json beside it"
        ) from None
    cert = meta.get("certificate")
    if not cert:
        raise VerifyUsageError(f"{path.name}.json holds no certificate (exported before issue 17?)")
    if cert.get("skipped"):
        raise VerifyUsageError(f"{path.name}.json: the certificate was skipped: {cert['skipped']}")
    digest = sha256(path)
    if digest != cert["weights_sha256"]:
        return False, (
            f"refused: {path} has SHA-256 {digest}, but the certificate was issued for "
            f"SHA-256 {cert['weights_sha256']}; the file changed after export"
        )
    if not cert.get("passed", False):
        return False, f"refused: the certificate records a failed check:\n{cert['failures']}"
    if not torch_available():
        raise VerifyUsageError("verifying needs torch (pip install torch)")
    import torch

    from train.data import load_dataset
    from train.export import load_torch_twin

    b = cert["batch"]
    try:
        data = load_dataset(
            b["dataset"],
            path=b["data_path"],
            image_size=b["image_size"],
            test_fraction=b["test_fraction"],
            seed=b["seed"],
        )
    except (ValueError, FileNotFoundError) as e:
        raise VerifyUsageError(f"cannot rebuild the certificate's batch: {e}") from e
    x = batch_images(getattr(data, b["split"]), b["indices"], data)
    if list(x.shape) != list(b["shape"]):
        return False, f"refused: the rebuilt batch has shape {list(x.shape)}, stored {b['shape']}"
    twin = load_torch_twin(path)  # eval mode
    with torch.no_grad():
        logits = twin(torch.from_numpy(np.moveaxis(x, -1, 1).copy()).float()).double().numpy()
    stored = np.asarray(cert["flax_logits"], np.float64)
    if logits.shape != stored.shape:
        return False, f"refused: logits of shape {logits.shape}, stored {stored.shape}"
    tol = cert["tolerances"]
    err = float(np.max(np.abs(logits - stored)))
    scale = float(np.max(np.abs(stored)))
    bound = tol["atol"] + tol["rtol"] * scale
    same = int(np.sum(logits.argmax(-1) == np.asarray(cert["flax_predictions"])))
    what = (
        f"{path.name} (SHA-256 {digest[:16]}...): {meta['torch_ref_class']} in PyTorch "
        f"{torch.__version__} on {len(x)} held-out {b['dataset']} images "
        f"(indices {b['indices'][0]}..{b['indices'][-1]} of the {b['split']} split): "
        f"max |torch - flax| logit {err:.2e} (bound {bound:.2e} = atol {tol['atol']:g} + "
        f"rtol {tol['rtol']:g} x {scale:.3g}), {same}/{len(x)} predictions equal; "
        f"at export: {cert['summary']}"
    )
    if err <= bound and same == len(x):
        return True, f"verified: {what}"
    return False, f"refused: {what}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m train.verify",
        description="Re-check the parity certificate of weights written by python -m train "
        "--export, in PyTorch. Exit status: 0 verified, 1 refused, 2 usage error.",
    )
    p.add_argument("weights", help="the exported weights file (its .json sits beside it)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    args = p.parse_args(argv)
    try:
        ok, message = verify(args.weights)
    except VerifyUsageError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(message, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
