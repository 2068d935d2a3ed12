"""ArrayRecord data: the record format, lazy reading, the same batches as in memory, shards, workers and
exact resume, the converter, and clear errors for foreign or corrupt files."""

import json
import pathlib
import sys

import numpy as np
import pytest
import vdmpp as vd


ROOT = pathlib.Path(__file__).resolve().parents[1]


def _take(it, n):
    return [next(it) for _ in range(n)]


def _same(a, b):
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) and x[k].dtype == y[k].dtype for k in x)
        for x, y in zip(a, b)
    )


@pytest.fixture(scope="module")
def digits():
    return vd.data.load("digits")


@pytest.fixture(scope="module")
def digit_records(digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    vd.data.write_records(digits, out, num_shards=3)
    return out


def test_digits_roundtrip_same_arrays_and_metadata(digits, digit_records):
    files = sorted(p.name for p in digit_records.iterdir())
    assert files == [f"digits-{s}-0000{i}-of-00003.array_record" for s in ("test", "train") for i in range(3)]
    ds = vd.data.load(str(digit_records / "*.array_record"))
    assert isinstance(ds.train, vd.data.RecordArray) and ds.train.shape == (1500, 8, 8, 1)
    assert ds.train.dtype == np.uint8 and ds.kind == "image" and ds.num_levels == 17 and ds.num_classes == 10
    assert ds.example_shape == (8, 8, 1) and ds.name == "digits"
    np.testing.assert_array_equal(np.asarray(ds.train), digits.train)
    np.testing.assert_array_equal(np.asarray(ds.test_labels), digits.test_labels)
    np.testing.assert_array_equal(ds.train[[7, 3, 1499, -1]], digits.train[[7, 3, 1499, -1]])
    np.testing.assert_array_equal(ds.test[290:], digits.test[290:])
    assert ds.train[5].shape == (8, 8, 1) and ds.train_labels[5] == digits.train_labels[5]
    again = vd.data.load(digit_records)  # the folder works too
    np.testing.assert_array_equal(again.test[:3], digits.test[:3])


def test_record_layout_is_the_documented_one(digits, digit_records):
    """Decode a file with the format written in the docs (not with vdmpp's reader)."""
    from array_record.python.array_record_module import ArrayRecordReader

    reader = ArrayRecordReader(str(digit_records / "digits-train-00001-of-00003.array_record"))
    records = reader.read_all()
    reader.close()
    magic, _, body = records[0].partition(b"\n")
    header = json.loads(body)
    assert magic == b"vdmpp.array_record/1" and header["split"] == "train" and header["shard"] == 1
    assert header["shape"] == [8, 8, 1] and header["dtype"] == "uint8" and header["labels"] is True
    assert header["num_examples"] == len(records) - 1 == 500 and header["total_examples"] == 1500
    first = records[1]
    assert len(first) == 64 + 8
    np.testing.assert_array_equal(np.frombuffer(first[:64], np.uint8).reshape(8, 8, 1), digits.train[500])
    assert int.from_bytes(first[64:], "little", signed=True) == digits.train_labels[500]


def test_pipeline_from_records_gives_the_same_batches(digits, digit_records):
    ds = vd.data.load(str(digit_records / "*.array_record"))
    kwargs = dict(batch_size=64, seed=7)
    mem = _take(iter(vd.data.pipeline(digits.train, labels=digits.train_labels, **kwargs)), 30)  # > 1 epoch
    rec = _take(iter(vd.data.pipeline(ds.train, labels=ds.train_labels, **kwargs)), 30)
    assert _same(mem, rec)
    no_labels = _take(iter(vd.data.pipeline(ds.train, **kwargs)), 3)
    assert _same(no_labels, [{"x": b["x"]} for b in mem[:3]])


def test_two_shards_are_disjoint_and_cover_the_data(tmp_path):
    x = np.arange(101, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)  # every row unique
    vd.data.write_records(vd.data.Dataset(train=x, test=x[:3], num_levels=None, kind="toy", name="rows"), tmp_path,
                          num_shards=4)  # fmt: skip
    ds = vd.data.load(tmp_path)
    parts = []
    for shard in range(2):
        it = vd.data.pipeline(ds.train, batch_size=10, seed=0, num_epochs=1, shard_index=shard, shard_count=2,
                              drop_remainder=False)  # fmt: skip
        parts.append(np.concatenate([b["x"][:, 0] for b in it]).astype(int))
        assert sorted(parts[-1]) == list(range(shard, 101, 2))  # this process reads only its own records
    assert not set(parts[0]) & set(parts[1]) and sorted(np.concatenate(parts)) == list(range(101))


def test_text_roundtrip_and_batches(tmp_path):
    text = "the quick brown fox jumps over the lazy dog " * 30
    (tmp_path / "t.txt").write_text(text)
    mem = vd.data.load(tmp_path / "t.txt", alphabet=" abcdefghijklmnopqrstuvwxyz", seq_len=16)
    vd.data.write_records(mem, tmp_path / "rec", name="tiny_text")
    ds = vd.data.load(str(tmp_path / "rec" / "tiny_text-*.array_record"))
    assert ds.kind == "text" and ds.vocab == " abcdefghijklmnopqrstuvwxyz" and ds.num_levels == 27
    assert ds.train.dtype == np.uint8 and ds.train_labels is None
    np.testing.assert_array_equal(np.asarray(ds.train), mem.train)
    np.testing.assert_array_equal(np.asarray(ds.test), mem.test)
    a = _take(iter(vd.data.pipeline(mem.train, batch_size=8, seed=1)), 12)
    b = _take(iter(vd.data.pipeline(ds.train, batch_size=8, seed=1)), 12)
    assert _same(a, b)


def test_resume_is_exact_with_workers(digit_records):
    ds = vd.data.load(str(digit_records / "*.array_record"))
    kwargs = dict(labels=ds.train_labels, batch_size=100, seed=3)
    straight = _take(iter(vd.data.pipeline(ds.train, **kwargs)), 20)  # no workers: the reference
    it = iter(vd.data.pipeline(ds.train, num_workers=1, **kwargs))
    first = _take(it, 12)  # 1500 / 100: the epoch ends at batch 15
    state = json.loads(json.dumps(it.get_state()))  # what a checkpoint stores
    it.close()
    fresh = iter(vd.data.pipeline(ds.train, num_workers=1, **kwargs))
    fresh.set_state(state)
    rest = _take(fresh, 8)
    fresh.close()
    assert _same(first + rest, straight)


def test_converter_script(tmp_path, capsys):
    """experiments/convert_to_array_record.py writes the files `load` reads back, and never overwrites."""
    sys.path.insert(0, str(ROOT))
    from experiments import convert_to_array_record as conv

    (tmp_path / "t.txt").write_text("abcab cabba " * 40)
    cfg = conv.Config(
        source=str(tmp_path / "t.txt"), out=str(tmp_path / "rec"), seq_len=8, num_shards=2, progress=False
    )
    conv.main(cfg)
    printed = capsys.readouterr().out
    assert "train" in printed and str(tmp_path / "rec") in printed
    ds = vd.data.load(tmp_path / "rec")
    mem = vd.data.load(tmp_path / "t.txt", seq_len=8)
    np.testing.assert_array_equal(np.asarray(ds.train), mem.train)
    assert ds.vocab == mem.vocab and len(ds.train.paths) == 2
    with pytest.raises(FileExistsError, match="Not overwriting"):
        conv.main(cfg)


def test_foreign_and_corrupt_files_name_the_file(digit_records, tmp_path):
    from array_record.python.array_record_module import ArrayRecordWriter

    foreign = tmp_path / "foreign.array_record"
    w = ArrayRecordWriter(str(foreign), "group_size:1")
    w.write(b"some other project's record")
    w.close()
    with pytest.raises(ValueError, match=r"foreign\.array_record is not a vdmpp ArrayRecord data file.*foreign"):
        vd.data.load(str(foreign))
    garbage = tmp_path / "garbage.array_record"
    garbage.write_bytes(b"not an array record file" * 100)
    with pytest.raises(ValueError, match=r"garbage\.array_record is not a vdmpp ArrayRecord.*not a readable"):
        vd.data.load(str(garbage))
    src = digit_records / "digits-train-00000-of-00003.array_record"
    truncated = tmp_path / "digits-train-00000-of-00003.array_record"
    truncated.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"digits-train-00000-of-00003\.array_record is not a vdmpp.*readable"):
        vd.data.load(str(truncated))
    with pytest.raises(ValueError, match=r"has 3 shards.*missing \[1, 2\]"):
        vd.data.load(str(digit_records / "digits-train-00000-*.array_record"))
    with pytest.raises(FileNotFoundError, match="No ArrayRecord files match"):
        vd.data.load(str(tmp_path / "nothing-*.array_record"))


def test_bad_record_size_names_the_file(digits, tmp_path):
    """A record of the wrong size (e.g. written by another tool into the format) fails when read."""
    from array_record.python.array_record_module import ArrayRecordWriter

    header = dict(kind="image", split="train", shard=0, num_shards=1, num_examples=2, total_examples=2,
                  shape=[8, 8, 1], dtype="uint8", num_levels=17, vocab=None, num_classes=None, labels=False,
                  name="bad")  # fmt: skip
    path = tmp_path / "bad-train-00000-of-00001.array_record"
    w = ArrayRecordWriter(str(path), "group_size:1")
    w.write(b"vdmpp.array_record/1\n" + json.dumps(header).encode())  # the documented header
    w.write(bytes(64))
    w.write(bytes(63))
    w.close()
    ds = vd.data.load(str(path))
    assert ds.train[0].shape == (8, 8, 1) and len(ds.test) == 0
    with pytest.raises(ValueError, match=r"bad-train-00000-of-00001\.array_record is corrupt: example 1 has 63 bytes"):
        ds.train[1]


def test_pipeline_rejects_mismatched_record_labels(digit_records, digits):
    ds = vd.data.load(str(digit_records / "*.array_record"))
    with pytest.raises(ValueError, match="labels of the same files"):
        vd.data.pipeline(ds.train, labels=digits.train_labels, batch_size=4, seed=0)
    with pytest.raises(ValueError, match="`num_workers` must be a non-negative integer"):
        vd.data.pipeline(ds.train, batch_size=4, seed=0, num_workers=-1)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_jax_processes_read_disjoint_shards_that_cover_the_data(tmp_path):
    """Two `jax.distributed` processes build the training scripts' pipeline from the same ArrayRecord files:
    each reads only its own records, and the rows of one epoch are disjoint and together cover the data."""
    import os
    import subprocess

    n = 64
    x = np.arange(n, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)  # every row unique
    vd.data.write_records(vd.data.Dataset(train=x, test=x[:3], num_levels=None, kind="toy", name="rows"), tmp_path,
                          num_shards=3)  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    port, script = str(_free_port()), str(ROOT / "tests" / "_shard_worker.py")
    outs = [tmp_path / f"out{i}.json" for i in range(2)]
    pattern = str(tmp_path / "*.array_record")
    procs = [subprocess.Popen([sys.executable, script, port, str(i), pattern, str(outs[i])], env=env) for i in range(2)]
    for p in procs:
        assert p.wait(timeout=240) == 0
    got = [json.loads(o.read_text()) for o in outs]
    for pid, g in enumerate(got):
        assert g["count"] == 2 and g["batch"] == 4  # the global batch of 8 split over the two processes
        assert g["read"] and all(i % 2 == pid for i in g["read"]), "a process read another process's records"
        assert sorted(g["rows"]) == list(range(pid, n, 2))
    assert not set(got[0]["rows"]) & set(got[1]["rows"]) and sorted(got[0]["rows"] + got[1]["rows"]) == list(range(n))
