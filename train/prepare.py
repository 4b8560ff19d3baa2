"""Convert a dataset once into ArrayRecord shards that ``--dataset arrayrecord`` reads lazily.

::

    python -m train.prepare --dataset folder --data-path imgs/ --out imgs-ar/ --image-size 64 \\
        --shards 8
    python -m train --dataset arrayrecord --data-path imgs-ar/ ...

The output folder holds ``train-00000-of-00008.array_record`` ..., ``test-...`` and
``meta.json`` (format and version, class names, image shape ``[H, W, C]``, the train
split's mean/std, record counts, shard names, and the arguments that made it). The split is
the one ``load_dataset`` draws with the same ``--test-fraction``/``--seed``, in the same
order, and the statistics are the source dataset's (for a folder: its seeded sample).

A record is a 4-byte little-endian int32 label followed by the image's ``H*W*C`` uint8
bytes (row-major, channels last). Shards are contiguous runs of each split, written with
``group_size:1`` so every record is one random read.

An interrupted prepare cannot pass for a complete one: an existing ``meta.json`` is removed
first, the shards are written, and ``meta.json`` is written last under a temporary name and
renamed into place; ``--dataset arrayrecord`` refuses a folder without it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from train.data import (
    ARRAYRECORD_FORMAT,
    ARRAYRECORD_VERSION,
    DATASETS,
    encode_record,
    load_dataset,
)

SOURCES = tuple(d for d in DATASETS if d != "arrayrecord")


def _shard_names(split: str, count: int) -> list[str]:
    return [f"{split}-{i:05d}-of-{count:05d}.array_record" for i in range(count)]


def prepare(
    dataset: str,
    out: str | Path,
    *,
    data_path: str | None = None,
    image_size: int = 32,
    test_fraction: float = 0.2,
    shards: int = 1,
    seed: int = 0,
) -> dict:
    """Write ``dataset`` as ArrayRecord shards and ``meta.json`` into ``out``; returns the meta.

    Each split gets ``min(shards, records)`` shards.
    """
    if dataset not in SOURCES:
        raise ValueError(f"`dataset` (={dataset!r}) cannot be prepared; valid: {list(SOURCES)}")
    if shards < 1:
        raise ValueError(f"`shards` (={shards}) must be positive")
    from array_record.python.array_record_module import ArrayRecordWriter

    data = load_dataset(
        dataset, path=data_path, image_size=image_size, test_fraction=test_fraction, seed=seed
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / "meta.json"
    meta_path.unlink(missing_ok=True)
    for old in [*out.glob("train-*.array_record"), *out.glob("test-*.array_record")]:
        old.unlink()

    names = {}
    for split, source in (("train", data.train), ("test", data.test)):
        n = len(source)
        names[split] = _shard_names(split, max(1, min(shards, n)))
        for name, idx in zip(
            names[split], np.array_split(np.arange(n), len(names[split])), strict=True
        ):
            writer = ArrayRecordWriter(str(out / name), "group_size:1")
            try:
                for i in idx:
                    r = source[int(i)]
                    writer.write(encode_record(r["image"], int(r["label"])))
            finally:
                writer.close()

    meta = {
        "format": ARRAYRECORD_FORMAT,
        "version": ARRAYRECORD_VERSION,
        "name": data.name,
        "classes": data.classes,
        "image_shape": list(data.train.image_shape),
        "mean": [float(v) for v in data.mean],
        "std": [float(v) for v in data.std],
        "counts": {"train": len(data.train), "test": len(data.test)},
        "shards": names,
        "record": "int32 little-endian label, then H*W*C uint8 pixels (row-major, HWC)",
        "source": {
            "dataset": dataset,
            "data_path": None if data_path is None else str(data_path),
            "image_size": image_size,
            "test_fraction": test_fraction,
            "seed": seed,
        },
    }
    tmp = out / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, meta_path)
    return meta


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.prepare", description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True, choices=SOURCES)
    p.add_argument("--data-path", help="the source (folder, .npz, CIFAR-10 batches folder)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--image-size", type=int, default=32, help="folder images are resized to this")
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--shards", type=int, default=1, help="shards per split")
    p.add_argument("--seed", type=int, default=0, help="the split's seed")
    args = p.parse_args(argv)
    meta = prepare(
        args.dataset,
        args.out,
        data_path=args.data_path,
        image_size=args.image_size,
        test_fraction=args.test_fraction,
        shards=args.shards,
        seed=args.seed,
    )
    print(
        f"{args.out}: {meta['counts']['train']} train + {meta['counts']['test']} test records, "
        f"{len(meta['classes'])} classes, images {meta['image_shape']}, "
        f"{len(meta['shards']['train'])}+{len(meta['shards']['test'])} shards",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
