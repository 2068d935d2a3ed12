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
