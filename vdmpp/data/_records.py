"""Data sets in ArrayRecord files, read lazily through grain's `ArrayRecordDataSource`.

Record format (version 1). A split (`train`, `test`) is stored in `num_shards` files
`NAME-SPLIT-SSSSS-of-NNNNN.array_record` (written with `group_size:1` for random access). In each file:

- record 0, the header: the bytes `vdmpp.array_record/1` and a newline, then a UTF-8 JSON object with `kind`
  ("image", "text" or "toy"), `split`, `shard`, `num_shards`, `num_examples` (in this file),
  `total_examples` (in the split), `shape` (of one example), `dtype` (NumPy name, e.g. "uint8"),
  `num_levels` (levels per pixel, or the vocabulary size V for text; null for toy data), `vocab` (the text
  alphabet: token id i is `vocab[i]`, or null), `num_classes`, `labels` (bool) and `name`;
- records 1…n, one example each: the example's values in C order as little-endian `dtype` (images:
  integer levels, `shape` = (H, W, C); text: token ids, `shape` = (seq_len,)), followed, when `labels`,
  by its class label as a little-endian int64. Every record has exactly this size.

A file without the header (a foreign ArrayRecord file), with a bad header, a wrong record count or a
record of the wrong size is an error that names the file.
"""

import bisect
import glob
import json
import os
import pathlib
from typing import Any

import numpy as np


MAGIC = b"vdmpp.array_record/1\n"
_VERSION_PREFIX = b"vdmpp.array_record/"
_HEADER_KEYS = (
    "kind",
    "split",
    "shard",
    "num_shards",
    "num_examples",
    "total_examples",
    "shape",
    "dtype",
    "num_levels",
    "vocab",
    "num_classes",
    "labels",
    "name",
)
_SHARED_KEYS = ("kind", "split", "num_shards", "total_examples", "shape", "dtype", "num_levels", "vocab")
_SHARED_KEYS += ("num_classes", "labels")


def _not_ours(path: str, why: str) -> ValueError:
    return ValueError(
        f"{path} is not a vdmpp ArrayRecord data file: {why}. Write data sets with "
        "`vdmpp.data.write_records` or `python experiments/convert_to_array_record.py`."
    )


def read_header(path: str) -> tuple[dict[str, Any], int]:
    """The header of one file and its number of examples (records after the header), validated."""
    from array_record.python.array_record_module import ArrayRecordReader

    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ArrayRecord file {path!r} does not exist.")
    reader = ArrayRecordReader(path)
    if not reader.ok():  # (closing a reader that failed to open raises)
        raise _not_ours(path, "it is not a readable ArrayRecord file (corrupt, truncated or another format)")
    try:
        num_records = reader.num_records()
        first = reader.read([0])[0] if num_records else b""
    finally:
        reader.close()
    if num_records < 1:
        raise _not_ours(path, "it holds no records")
    if not first.startswith(_VERSION_PREFIX):
        raise _not_ours(path, f"its first record does not start with {MAGIC!r} (a foreign ArrayRecord file)")
    if not first.startswith(MAGIC):
        raise _not_ours(path, f"its header {first[:40]!r} is of an unsupported version (this vdmpp reads version 1)")
    try:
        header = json.loads(first[len(MAGIC) :].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _not_ours(path, f"its header is corrupt ({e})") from None
    missing = [k for k in _HEADER_KEYS if not isinstance(header, dict) or k not in header]
    if missing:
        raise _not_ours(path, f"its header lacks {missing}")
    header["shape"] = tuple(header["shape"])
    if num_records - 1 != header["num_examples"]:
        raise ValueError(
            f"{path} is truncated or corrupt: its header says {header['num_examples']} examples but the file holds "
            f"{num_records - 1} records after the header. Convert the data again."
        )
    return header, num_records - 1


def record_size(header: dict[str, Any]) -> int:
    """Bytes of one example record."""
    return int(np.prod(header["shape"], dtype=np.int64)) * np.dtype(header["dtype"]).itemsize + 8 * header["labels"]


def encode(x: np.ndarray, label: int | None, dtype: np.dtype) -> bytes:
    """One example record: `x` as little-endian `dtype` in C order, then the int64 label if any."""
    out = np.ascontiguousarray(x, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()
    return out if label is None else out + np.int64(label).astype("<i8").tobytes()


class RecordSource:
    """grain random-access source over the examples of one split: `src[i] -> {"x": array, "label": int64}`.

    Wraps `grain.sources.ArrayRecordDataSource` over the split's files (skipping each file's header) and
    decodes records; the reader is opened lazily in each process (also in grain worker processes).
    """

    def __init__(self, paths: tuple[str, ...], header: dict[str, Any], counts: tuple[int, ...]):
        self.paths, self.header, self.counts = paths, header, counts
        self._starts = np.cumsum((0,) + counts).tolist()  # first example index of each file
        self._source = None
        self._dtype = np.dtype(header["dtype"]).newbyteorder("<")
        self._size = record_size(header)

    def __getstate__(self):
        return {**self.__dict__, "_source": None}  # each process opens its own reader

    def __len__(self) -> int:
        return self._starts[-1]

    def _reader(self):
        if self._source is None:
            import grain

            self._source = grain.sources.ArrayRecordDataSource(list(self.paths))
        return self._source

    def _key(self, index: int) -> tuple[int, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"example {index} is out of range for {len(self)} examples in {self.paths[0]}...")
        f = bisect.bisect_right(self._starts, index) - 1
        return f, self._starts[f] + f + 1 + (index - self._starts[f])  # + f + 1: the headers before and in it

    def _decode(self, raw: bytes, f: int, index: int) -> dict[str, Any]:
        if len(raw) != self._size:
            raise ValueError(
                f"{self.paths[f]} is corrupt: example {index - self._starts[f]} has {len(raw)} bytes, but its "
                f"header (shape {self.header['shape']}, {self.header['dtype']}, labels={self.header['labels']}) "
                f"needs {self._size}. Convert the data again."
            )
        n = self._size - 8 * self.header["labels"]
        x = np.frombuffer(raw, dtype=self._dtype, count=n // self._dtype.itemsize).reshape(self.header["shape"])
        out = {"x": x.astype(self._dtype.newbyteorder("="))}
        if self.header["labels"]:
            out["label"] = np.frombuffer(raw, dtype="<i8", offset=n, count=1)[0].astype(np.int64)
        return out

    def __getitem__(self, index) -> dict[str, Any]:
        f, key = self._key(int(index))
        return self._decode(self._reader()[key], f, int(index))

    def read(self, indices) -> list[dict[str, Any]]:
        """Decode the examples at `indices` (one batched read)."""
        located = [self._key(int(i)) for i in indices]
        raws = self._reader().__getitems__([k for _, k in located])  # pyright: ignore[reportAttributeAccessIssue]
        return [self._decode(r, f, int(i)) for r, (f, _), i in zip(raws, located, indices)]


class RecordArray:
    """A read-only, lazily read array view of one split stored in ArrayRecord files.

    Has `shape`, `dtype`, `ndim` and `len()` like the NumPy arrays of an in-memory
    [`Dataset`][vdmpp.data.Dataset]; indexing (`a[i]`, `a[2:5]`, `a[[3, 1]]`) reads just those records, and
    `np.asarray(a)` reads them all. [`vdmpp.data.pipeline`][] reads it record by record through
    `grain.MapDataset.source`, so a data set larger than memory trains without loading it.

    Attributes:
        source: the grain data source of the split (`source[i] -> {"x": ..., "label": ...}`).
        field: "x" (the examples) or "label" (their class labels).
    """

    def __init__(self, source: RecordSource, field: str = "x"):
        self.source, self.field = source, field

    @property
    def shape(self) -> tuple[int, ...]:
        """`(num_examples, *example_shape)` (or `(num_examples,)` for labels)."""
        return (len(self.source),) + (self.source.header["shape"] if self.field == "x" else ())

    @property
    def dtype(self) -> np.dtype:
        """The stored dtype (int64 for labels)."""
        return np.dtype(self.source.header["dtype"]) if self.field == "x" else np.dtype(np.int64)

    @property
    def ndim(self) -> int:
        """Number of axes."""
        return len(self.shape)

    @property
    def paths(self) -> tuple[str, ...]:
        """The files of this split."""
        return self.source.paths

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            index = int(index) + (len(self) if index < 0 else 0)
            return np.asarray(self.source[index][self.field])
        indices = np.arange(len(self))[index] if isinstance(index, slice) else np.asarray(index)
        if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
            raise TypeError(f"index a RecordArray with an int, a slice or a 1-D integer array; got {index!r}.")
        indices = np.where(indices < 0, indices + len(self), indices)
        rows = [r[self.field] for r in self.source.read(indices)] if indices.size else []
        return np.stack(rows) if rows else np.zeros((0,) + self.shape[1:], self.dtype)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"RecordArray(shape={self.shape}, dtype={self.dtype}, field={self.field!r}, files={len(self.paths)})"


def open_split(paths: list[str], split: str) -> tuple[RecordSource, dict[str, Any]]:
    """Validate the files of one split (same data set, every shard exactly once) and open them lazily."""
    headers = [read_header(p) for p in paths]
    first_path, (first, _) = paths[0], headers[0]
    for path, (header, _) in zip(paths[1:], headers[1:]):
        for k in _SHARED_KEYS:
            if header[k] != first[k]:
                raise ValueError(
                    f"ArrayRecord files of different data sets matched: {first_path} has {k}={first[k]!r} but "
                    f"{path} has {k}={header[k]!r}. Pass a pattern that matches one data set."
                )
    shards = sorted(h["shard"] for h, _ in headers)
    expected = list(range(first["num_shards"]))
    if shards != expected:
        missing = sorted(set(expected) - set(shards))
        raise ValueError(
            f"The {split} split of {first['name']!r} has {first['num_shards']} shards, but the files found hold "
            f"shards {shards} (missing {missing}, or some twice): add the missing files to the pattern "
            f"(e.g. '{pathlib.Path(first_path).parent}/*.array_record')."
        )
    order = sorted(range(len(paths)), key=lambda i: headers[i][0]["shard"])
    counts = tuple(headers[i][1] for i in order)
    if sum(counts) != first["total_examples"]:
        raise ValueError(
            f"The {split} split holds {sum(counts)} examples but its headers say {first['total_examples']}."
        )
    return RecordSource(tuple(paths[i] for i in order), first, counts), first


def find_files(pattern: str) -> list[str]:
    """The files a path or glob pattern names (sorted)."""
    paths = sorted(glob.glob(os.path.expanduser(pattern)))
    if not paths:
        raise FileNotFoundError(
            f"No ArrayRecord files match {pattern!r}. Convert a data set first with "
            "`python experiments/convert_to_array_record.py --source digits --out data/digits`."
        )
    return paths
