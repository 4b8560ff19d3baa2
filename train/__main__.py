"""``python -m train``: the main job.

Until the training loop lands this is a demo of the foundation: build a
torch_ref twin, convert it with ``from_torch``, and print the parity report of
outputs and gradients in float32 and float64.
"""

from __future__ import annotations

import sys


def main(argv=None) -> int:
    import jax
    import torch

    jax.config.update("jax_enable_x64", True)
    import torch_ref
    from flaxattn.parity import check_parity

    torch.manual_seed(0)
    ok = True
    for dtype in ("float32", "float64"):
        report = check_parity(
            torch_ref.ResBlockCBAM(64, 16),
            input_shapes=[(4, 64, 14, 14)],
            dtype=dtype,
            mode="train",
            steps=2,
            perturb=0.1,
            name="ResBlockCBAM(64, 16)",
        )
        print(report.table())
        print()
        ok &= report.ok
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
