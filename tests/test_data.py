"""The grain input pipeline (train/data.py) and the ArrayRecord converter (train/prepare.py)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from train import data as D
from train.data import Augment, TrainPipeline, eval_batches, load_dataset
from train.prepare import prepare

# ----------------------------------------------------------------------------- fixtures


def _make_folder(root, *, classes=("cat", "dog"), per_class=6, mode="RGB", seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    shape = (12, 10, 3) if mode == "RGB" else (12, 10)
    for cls in classes:
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, shape, np.uint8)).save(root / cls / f"{i}.png")
        (root / cls / "notes.txt").write_text("not an image")
    return root


def _make_cifar(root, *, n=4, labels=None, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(root / name, "wb") as f:
            pickle.dump(
                {
                    b"data": rng.integers(0, 255, (n, 3072), np.uint8),
                    b"labels": list(range(n)) if labels is None else labels,
                },
                f,
            )
    return root


def _make_npz(path, *, seed=0, **arrays):
    rng = np.random.default_rng(seed)
    arrays = {"x": rng.random((20, 6, 6)), "y": np.arange(20) % 4, **arrays}
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def _make_arrayrecord(tmp_path):
    prepare("folder", tmp_path / "ar", data_path=str(_make_folder(tmp_path / "imgs")), image_size=8)
    return tmp_path / "ar"


def _records(source):
    return [source[i] for i in range(len(source))]


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


# ----------------------------------------------------------------------------- sources

# name, how to build its --data-path under tmp_path, (H, W, C), classes, train+test count
SOURCES = [
    ("digits", None, (8, 8, 1), [str(i) for i in range(10)], 1797),
    ("folder", lambda p: _make_folder(p / "imgs"), (8, 8, 3), ["cat", "dog"], 12),
    ("folder", lambda p: _make_folder(p / "gray", mode="L"), (8, 8, 1), ["cat", "dog"], 12),
    ("npz", lambda p: _make_npz(p / "d.npz"), (6, 6, 1), ["0", "1", "2", "3"], 20),
    ("cifar10", lambda p: _make_cifar(p / "cifar"), (32, 32, 3), [str(i) for i in range(10)], 24),
    ("arrayrecord", lambda p: _make_arrayrecord(p), (8, 8, 3), ["cat", "dog"], 12),
]


@pytest.mark.parametrize(
    "name,make,shape,classes,count", SOURCES, ids=[f"{s[0]}-{i}" for i, s in enumerate(SOURCES)]
)
def test_sources(tmp_path, name, make, shape, classes, count):
    d = load_dataset(name, path=make and str(make(tmp_path)), image_size=8)
    assert d.classes == classes
    info = d.info
    assert (info.height, info.width, info.channels, info.num_classes) == (*shape, len(classes))
    assert len(d.train) + len(d.test) == count
    assert d.mean.shape == d.std.shape == (shape[2],) and d.mean.dtype == np.float32
    assert np.all((d.mean > 0) & (d.mean < 1) & (d.std > 0))
    for r in (d.train[0], d.test[len(d.test) - 1]):
        assert r["image"].dtype == np.uint8 and r["image"].shape == shape
        assert r["label"].dtype == np.int32 and 0 <= r["label"] < len(classes)


def test_folder_decodes_lazily_and_names_a_corrupt_file(tmp_path, monkeypatch):
    root = _make_folder(tmp_path / "imgs", per_class=10)
    decoded = []
    real = D._decode
    monkeypatch.setattr(D, "_decode", lambda *a: decoded.append(a[0]) or real(*a))
    monkeypatch.setattr(D, "FOLDER_STATS_SAMPLE", 3)
    d = load_dataset("folder", path=str(root), image_size=8)
    assert len(decoded) == 3  # the statistics sample only
    assert isinstance(d.train, D.FolderSource) and len(d.train) == 16
    # exactly the sample's statistics, not the whole split's
    sample = np.stack([real(f, "RGB", 8) for f in decoded]).astype(np.float64) / 255
    np.testing.assert_allclose(d.mean, sample.mean((0, 1, 2)), rtol=1e-6)
    bad = d.train.files[5]
    with open(bad, "wb") as f:
        f.write(b"\x89PNG garbage")
    with pytest.raises(ValueError, match=f"{bad}: cannot decode the image"):
        d.train[5]
    Path(bad).unlink()
    (root / "dog" / "bad.png").write_bytes(b"not a png")
    monkeypatch.setattr(D, "FOLDER_STATS_SAMPLE", 2000)  # the sample reads every train file
    with pytest.raises(ValueError, match=r"dog/bad.png: cannot decode the image"):
        _records(load_dataset("folder", path=str(root), image_size=8).test)  # if not in train


@pytest.mark.parametrize("source", ["folder", "npz"])
def test_arrayrecord_round_trip(tmp_path, source):
    """prepare -> arrayrecord gives the direct source's images, labels, classes, stats."""
    src = _make_folder(tmp_path / "imgs") if source == "folder" else _make_npz(tmp_path / "d.npz")
    meta = prepare(source, tmp_path / "ar", data_path=str(src), image_size=8, shards=3)
    assert meta["shards"]["train"] == [f"train-0000{i}-of-00003.array_record" for i in range(3)]
    direct = load_dataset(source, path=str(src), image_size=8)
    ar = load_dataset("arrayrecord", path=str(tmp_path / "ar"))
    assert isinstance(ar.train, D.ArrayRecordSource)
    assert ar.classes == direct.classes and ar.info == direct.info
    np.testing.assert_array_equal(ar.mean, direct.mean)
    np.testing.assert_array_equal(ar.std, direct.std)
    for split in ("train", "test"):
        a, b = _records(getattr(ar, split)), _records(getattr(direct, split))
        assert len(a) == len(b)
        for ra, rb in zip(a, b, strict=True):
            np.testing.assert_array_equal(ra["image"], rb["image"])
            assert ra["label"] == rb["label"]


def test_prepare_cli_and_interrupted_folder(tmp_path):
    from train.prepare import main

    src = _make_npz(tmp_path / "d.npz")
    assert main(["--dataset", "npz", "--data-path", str(src), "--out", str(tmp_path / "ar")]) == 0
    assert sorted(p.name for p in (tmp_path / "ar").iterdir()) == [
        "meta.json",
        "test-00000-of-00001.array_record",
        "train-00000-of-00001.array_record",
    ]
    (tmp_path / "ar" / "test-00000-of-00001.array_record").unlink()
    with pytest.raises(FileNotFoundError, match=r"test shards \['test-00000-of-00001"):
        load_dataset("arrayrecord", path=str(tmp_path / "ar"))
    (tmp_path / "ar" / "meta.json").unlink()  # what an interrupted prepare leaves
    with pytest.raises(FileNotFoundError, match=r"ar: no meta.json .*python -m train.prepare"):
        load_dataset("arrayrecord", path=str(tmp_path / "ar"))


# ----------------------------------------------------------------------------- validation

# (what to write, the error's type, a regex that names the file and the value)
BAD_DATA = [
    ("npz", {"y": np.arange(20) * 0.5}, ValueError, r"d\.npz: labels `y` must be integers.*0\.5"),
    ("npz", {"y": np.arange(19) % 4}, ValueError, r"d\.npz: `x` has 20 images but `y` 19"),
    ("npz", {"y": np.zeros(20, int)}, ValueError, r"d\.npz: needs at least two classes.*'0'"),
    ("npz", {"x": np.full((20, 6, 6), np.nan)}, ValueError, r"d\.npz: images `x` must be finite"),
    ("npz", {"x_test": np.zeros((2, 6, 6))}, ValueError, r"d\.npz: 'x_test' and 'y_test'"),
    (
        "npz",
        {"x_test": np.zeros((3, 6, 6)), "y_test": np.arange(2)},
        ValueError,
        r"d\.npz: `x_test` has 3 images but `y_test` 2",
    ),
    ("npz", {"x": None}, ValueError, r"d\.npz: needs arrays 'x' and 'y', missing \['x'\]"),
    ("cifar10", {"labels": [0, 1, 2, 10]}, ValueError, r"data_batch_1: labels .* \[0, 10\).*10"),
    ("cifar10", {"labels": [0, 1, 2]}, ValueError, r"data_batch_1: `data` has 4 images but"),
    ("folder", {"empty": True}, ValueError, r"imgs: no images with suffixes \('.png'"),
    ("folder", {"one_class": True}, ValueError, r"imgs: needs at least two classes"),
    ("arrayrecord", {}, FileNotFoundError, r"ar: no meta.json .*train-\*.array_record"),
    ("arrayrecord", {"no_folder": True}, FileNotFoundError, r"no folder at .*ar"),
]


@pytest.mark.parametrize("name,bad,exc,match", BAD_DATA)
def test_bad_data_is_named(tmp_path, name, bad, exc, match):
    if name == "npz":
        path = _make_npz(tmp_path / "d.npz", **bad)
    elif name == "cifar10":
        path = _make_cifar(tmp_path / "cifar", **bad)
    elif name == "folder":
        path = tmp_path / "imgs"
        if bad.get("one_class"):
            _make_folder(path, classes=("cat",))
        else:
            (path / "cat").mkdir(parents=True)
    else:
        path = tmp_path / "ar"
        if not bad.get("no_folder"):
            path.mkdir()
            (path / "train-00000-of-00001.array_record").write_bytes(b"")
    with pytest.raises(exc, match=match):
        load_dataset(name, path=str(path))


def test_npz_huge_label_is_one_class(tmp_path):
    """Labels are renumbered: 10**9 costs one class, not a 10**9-entry list."""
    y = np.where(np.arange(20) % 2 == 0, 7, 10**9)
    d = load_dataset("npz", path=str(_make_npz(tmp_path / "d.npz", y=y)))
    assert d.classes == ["7", str(10**9)] and d.info.num_classes == 2
    assert sorted({int(r["label"]) for r in _records(d.train)}) == [0, 1]


# ----------------------------------------------------------------------------- pipeline


def _batches(pipe: TrainPipeline, start: int = 0, stop: int | None = None):
    it = pipe.iterator(start)
    out = [next(it) for _ in range((stop or pipe.total_steps) - start)]
    it.close()
    return out


def _pipe(data, **kw):
    kw = {"batch_size": 64, "seed": 3, "augment": Augment(pad=2, flip=0.5), "epochs": 2, **kw}
    return TrainPipeline(data, **kw)


@pytest.mark.parametrize("b,epochs,prefetch", [(64, 2, 2), (1000, 6, 4), (100, 1, 0)])
def test_batches_follow_the_documented_formula(digits, b, epochs, prefetch):
    """One-step epochs with 4 reader threads: several epochs' permutations at once."""
    pipe = _pipe(digits, augment=Augment(), batch_size=b, epochs=epochs, prefetch=prefetch)
    spe = pipe.steps_per_epoch
    assert spe == len(digits.train) // b and pipe.total_steps == epochs * spe
    got = _batches(pipe)
    assert len(got) == pipe.total_steps
    x_train = np.stack([r["image"] for r in _records(digits.train)])
    y_train = np.array([r["label"] for r in _records(digits.train)])
    for s in sorted({0, 1, spe - 1, spe, epochs * spe - 1} & set(range(pipe.total_steps))):
        order = np.random.default_rng((3, s // spe)).permutation(len(digits.train))
        idx = order[(s % spe) * b : (s % spe + 1) * b]
        assert got[s][0].shape == (b, 8, 8, 1)
        np.testing.assert_array_equal(got[s][0], digits.normalize(x_train[idx]))
        np.testing.assert_array_equal(got[s][1], y_train[idx])
        assert got[s][0].dtype == np.float32 and got[s][1].dtype == np.int32


@pytest.mark.parametrize("processes", [2, 4])
def test_processes_together_equal_one_process(digits, processes):
    one = _batches(_pipe(digits))
    parts = [
        _batches(_pipe(digits, process_index=p, process_count=processes)) for p in range(processes)
    ]
    assert parts[0][0][0].shape == (64 // processes, 8, 8, 1)
    for s, (x, y) in enumerate(one):
        np.testing.assert_array_equal(np.concatenate([part[s][0] for part in parts]), x)
        np.testing.assert_array_equal(np.concatenate([part[s][1] for part in parts]), y)


@pytest.mark.parametrize("start", [0, 5, 22, 25, 44])
def test_start_step_is_the_tail(digits, start):
    pipe = _pipe(digits)
    assert pipe.steps_per_epoch == 22
    whole, tail = _batches(pipe), _batches(pipe, start)
    assert len(tail) == pipe.total_steps - start
    for (x1, y1), (x2, y2) in zip(whole[start:], tail, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(whole[0][0], whole[22][0])  # epochs reshuffle and re-augment


@pytest.mark.parametrize("pad,flip", [(3, 0.5), (0, 0.5), (2, 0.0), (9, 1.0)])
def test_augmentation_is_the_legacy_augment_per_record(digits, pad, flip):
    aug = D.RandomShiftFlip(pad=pad, flip=flip, seed=7)
    changed = 0
    for pos in range(40):
        r = digits.train[pos]
        got = aug({**r, "epoch": 2, "pos": pos})["image"]
        ref = Augment(pad, flip)(r["image"][None], np.random.default_rng((7, 2, pos)))[0]
        np.testing.assert_array_equal(got, ref)
        changed += not np.array_equal(got, r["image"])
    assert changed > 10  # it does augment


def test_workers_and_state_round_trip(digits):
    """workers=2 gives workers=0's batches; a mid-epoch state restores into either."""
    ref = _batches(_pipe(digits, epochs=1))
    it = _pipe(digits, epochs=1, workers=2).iterator()
    try:
        for s in range(7):
            x, y = next(it)
            np.testing.assert_array_equal(x, ref[s][0])
            np.testing.assert_array_equal(y, ref[s][1])
        state = it.get_state()
        assert state["step"] == 7
        x, _ = next(it)
        np.testing.assert_array_equal(x, ref[7][0])
        it.set_state(state)  # back to step 7, workers restarted
        rest = list(it)
    finally:
        it.close()
    assert len(rest) == len(ref) - 7
    for (x1, y1), (x2, y2) in zip(ref[7:], rest, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    fresh = _pipe(digits, epochs=1).iterator(3)  # in-process, from another start
    fresh.set_state(state)
    np.testing.assert_array_equal(next(fresh)[0], ref[7][0])
    with pytest.raises(ValueError, match=r"`seed`=3, this pipeline 4"):
        _pipe(digits, epochs=1, seed=4).iterator().set_state(state)


def test_state_through_an_orbax_checkpoint(digits, tmp_path):
    import grain
    import orbax.checkpoint as ocp

    pipe = _pipe(digits)
    it = pipe.iterator()
    for _ in range(30):  # into the second epoch
        next(it)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.save(30, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
    expected = next(it)
    restored = pipe.iterator()
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.restore(30, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
    assert restored.get_state()["step"] == 30
    got = next(restored)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])


@pytest.mark.parametrize("processes,batch", [(1, 64), (2, 64), (4, 100)])
def test_eval_batches_cover_the_test_split_once(digits, processes, batch):
    n = len(digits.test)
    parts = [
        list(eval_batches(digits, batch_size=batch, process_index=p, process_count=processes))
        for p in range(processes)
    ]
    assert {len(p) for p in parts} == {-(-n // batch)}
    xs, ys, ms = [], [], []
    for s in range(len(parts[0])):
        for p in range(processes):
            x, y, m = parts[p][s]
            assert x.shape == (batch // processes, 8, 8, 1) and x.dtype == np.float32
            assert y.dtype == np.int32 and m.dtype == np.float32
            xs.append(x), ys.append(y), ms.append(m)
    x, y, m = np.concatenate(xs), np.concatenate(ys), np.concatenate(ms)
    assert m.sum() == n and np.all(m[:n] == 1) and np.all(m[n:] == 0)
    np.testing.assert_array_equal(
        x[:n], digits.normalize(np.stack([r["image"] for r in _records(digits.test)]))
    )
    np.testing.assert_array_equal(y[:n], [r["label"] for r in _records(digits.test)])


BAD_PIPELINES = [
    (
        "train",
        {"batch_size": 30, "process_count": 4},
        r"`batch_size` \(=30\).*`process_count` \(=4\)",
    ),
    ("train", {"workers": -1}, r"`workers` \(=-1\)"),
    ("train", {"batch_size": 5000}, r"`batch_size` \(=5000\) exceeds the 1438 training images"),
    ("train", {"process_index": 2, "process_count": 2}, r"`process_index` \(=2\)"),
    ("train", {"epochs": -1}, r"`epochs` \(=-1\)"),
    ("start", {"start": 45}, r"`start_step` \(=45\) must be in \[0, 44\]"),
    ("eval", {"batch_size": 10, "process_count": 3}, r"`batch_size` \(=10\).*`process_count` \(=3"),
    ("eval", {"batch_size": 0}, r"`batch_size` \(=0\) must be positive"),
]


@pytest.mark.parametrize("kind,kw,match", BAD_PIPELINES)
def test_bad_pipeline_arguments(digits, kind, kw, match):
    with pytest.raises(ValueError, match=match):
        if kind == "train":
            _pipe(digits, **kw)
        elif kind == "start":
            _pipe(digits).iterator(kw["start"])
        else:
            eval_batches(digits, **kw)
