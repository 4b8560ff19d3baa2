"""Images per second the input pipeline alone delivers (``train.data.TrainPipeline``).

Iterates the training pipeline after a warm-up and reports the median over several
windows of ``--batches`` batches, for

1. ``mnist5k`` at ``vit_tiny``'s training batch size, augmentation as ``TrainConfig``'s
   defaults, in-process (``--workers 0``);
2. a ``folder`` of generated JPEGs (``--folder-images`` images, 10 classes,
   ``--image-size`` pixels square: decode + resize + augment per image) in-process and with
   ``--workers`` grain worker processes.

Beside each rate it prints what the ``vit_tiny`` training step consumes on batches of
that shape (forward, backward and AdamW under ``jax.jit``, median of the same windows)
and the ratio; the pipeline keeps the step fed when the ratio is well above 1::

    python -m bench.data_pipeline
    python -m bench.data_pipeline --folder-images 3000 --image-size 64 --workers 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from train.data import Augment, Dataset, TrainPipeline, load_dataset


def images_per_sec(
    data: Dataset,
    *,
    batch_size: int,
    augment: Augment,
    workers: int,
    batches: int,
    windows: int,
    warmup: int,
) -> float:
    """Median images/s over ``windows`` windows of ``batches`` batches after ``warmup``."""
    steps = max(1, len(data.train) // batch_size)  # TrainPipeline names a too-large batch
    epochs = -(-(warmup + windows * batches) // steps)
    pipe = TrainPipeline(
        data, batch_size=batch_size, seed=0, augment=augment, epochs=epochs, workers=workers
    )
    it = pipe.iterator()
    try:
        for _ in range(warmup):
            next(it)
        rates = []
        for _ in range(windows):
            t0 = time.perf_counter()
            for _ in range(batches):
                next(it)
            rates.append(batches * batch_size / (time.perf_counter() - t0))
    finally:
        it.close()
    return statistics.median(rates)


def step_images_per_sec(
    data: Dataset, *, batch_size: int, batches: int, windows: int, warmup: int
) -> float:
    """Images/s the ``vit_tiny`` train step consumes on batches shaped like ``data``'s."""
    import jax
    from flax import nnx

    from train.config import TrainConfig
    from train.loop import _loss_fn
    from train.models import build_flax, get_model
    from train.optim import make_optimizer
    from train.step import make_train_step

    info = data.info
    cfg = TrainConfig()
    model = build_flax(get_model("vit_tiny"), info, rngs=nnx.Rngs(0))
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = make_optimizer(cfg, 10_000)
    opt_state = tx.init(params)
    step = make_train_step(graphdef, tx, _loss_fn(0.1, info.num_classes), skip_non_finite=True)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch_size, info.height, info.width, info.channels), np.float32)
    y = rng.integers(0, info.num_classes, batch_size).astype(np.int32)
    batch = (jax.device_put(x), jax.device_put(y))
    for _ in range(warmup):
        params, rest, opt_state, loss, _ = step(params, rest, opt_state, batch)
    jax.block_until_ready(loss)
    rates = []
    for _ in range(windows):
        t0 = time.perf_counter()
        for _ in range(batches):
            params, rest, opt_state, loss, _ = step(params, rest, opt_state, batch)
        jax.block_until_ready(loss)
        rates.append(batches * batch_size / (time.perf_counter() - t0))
    return statistics.median(rates)


def make_jpeg_folder(root: Path, *, images: int, size: int, classes: int = 10) -> Path:
    """``root/class_k/i.jpg``: smooth random colour fields (compress like photos, not noise)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(images):
        d = root / f"class_{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 255, (8, 8, 3), np.uint8)
        Image.fromarray(small).resize((size, size), Image.BICUBIC).save(d / f"{i}.jpg", quality=90)
    return root


def run(
    *,
    batches: int = 20,
    windows: int = 5,
    warmup: int = 5,
    folder_images: int = 3000,
    image_size: int = 64,
    workers: int = 2,
    batch_size: int | None = None,
    with_step: bool = True,
) -> dict[str, tuple[float, float | None]]:
    """The benchmark's figures, ``{case: (pipeline images/s, step images/s)}``."""
    from train.config import TrainConfig
    from train.models import get_model

    cfg = TrainConfig()
    batch = batch_size or get_model("vit_tiny").train.get("batch_size", cfg.batch_size)
    augment = Augment(cfg.augment_pad, cfg.augment_flip)
    kw = {"batch_size": batch, "augment": augment, "batches": batches, "windows": windows}
    kw["warmup"] = warmup
    step_kw = {"batch_size": batch, "batches": batches, "windows": windows, "warmup": warmup}
    mnist = load_dataset("mnist5k")
    out = {
        f"mnist5k b={batch} workers=0": (
            images_per_sec(mnist, workers=0, **kw),
            step_images_per_sec(mnist, **step_kw) if with_step else None,
        )
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = make_jpeg_folder(Path(tmp) / "jpegs", images=folder_images, size=image_size)
        data = load_dataset("folder", path=str(root), image_size=image_size)
        name = f"folder {folder_images} JPEG {image_size}px b={batch}"
        consumed = step_images_per_sec(data, **step_kw) if with_step else None
        for w in sorted({0, workers}):
            out[f"{name} workers={w}"] = (images_per_sec(data, workers=w, **kw), consumed)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.data_pipeline", description=__doc__.split("\n")[0]
    )
    p.add_argument("--batches", type=int, default=20, help="batches per timed window")
    p.add_argument("--windows", type=int, default=5, help="timed windows (the median is shown)")
    p.add_argument("--warmup", type=int, default=5, help="batches before timing")
    p.add_argument("--folder-images", type=int, default=3000)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="grain workers for the folder case")
    p.add_argument("--batch-size", type=int, help="default: vit_tiny's training batch size")
    p.add_argument("--no-step", action="store_true", help="skip timing the training step")
    a = p.parse_args(argv)
    rates = run(
        batches=a.batches,
        windows=a.windows,
        warmup=a.warmup,
        folder_images=a.folder_images,
        image_size=a.image_size,
        workers=a.workers,
        batch_size=a.batch_size,
        with_step=not a.no_step,
    )
    width = max(map(len, rates))
    print(f"{'pipeline':<{width}}  {'images/s':>9}  {'step img/s':>10}  {'ratio':>6}")
    for name, (rate, step) in rates.items():
        ratio = f"{rate / step:6.1f}" if step else "     -"
        print(f"{name:<{width}}  {rate:9.0f}  {step or float('nan'):10.0f}  {ratio}")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
