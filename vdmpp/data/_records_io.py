"""Writing a `Dataset` to ArrayRecord files and opening them again (record format: `_records.py`)."""

import json
import os
import pathlib

import numpy as np
from tqdm.auto import tqdm

from .._misc import check_positive_int
from ._dataset import Dataset
from ._records import encode, find_files, MAGIC, open_split, read_header, RecordArray


SPLITS = ("train", "test")


def load_records(pattern: str) -> Dataset:
    """The data set in the ArrayRecord files matching `pattern`, as lazily read `RecordArray` splits."""
    paths = find_files(pattern)
    by_split: dict[str, list[str]] = {}
    for path in paths:
        header, _ = read_header(path)
        if header["split"] not in SPLITS:
            raise ValueError(f"{path}: unknown split {header['split']!r} in its header (expected train or test).")
        by_split.setdefault(header["split"], []).append(path)
    if "train" not in by_split:
        raise ValueError(
            f"{pattern!r} matches no file of the train split (found splits {sorted(by_split)}); match the train "
            "files too, e.g. 'data/digits/*.array_record'."
        )
    splits = {name: open_split(files, name) for name, files in by_split.items()}
    train_source, header = splits["train"]
    if "test" in splits:
        test_source = splits["test"][0]
        for k in ("kind", "shape", "dtype", "num_levels", "vocab", "labels"):
            if splits["test"][1][k] != header[k]:
                raise ValueError(
                    f"The train and test files matched by {pattern!r} differ in {k}: {header[k]!r} vs "
                    f"{splits['test'][1][k]!r}; they come from different data sets."
                )
    else:  # only the train split matched: an empty test split
        test_source = None
    train = RecordArray(train_source)
    if test_source is None:
        empty = np.zeros((0, *header["shape"]), np.dtype(header["dtype"]))
        test, test_labels = empty, (np.zeros((0,), np.int64) if header["labels"] else None)
    else:
        test = RecordArray(test_source)
        test_labels = RecordArray(test_source, "label") if header["labels"] else None
    return Dataset(
        train=train,
        test=test,
        num_levels=header["num_levels"],
        kind=header["kind"],
        train_labels=RecordArray(train_source, "label") if header["labels"] else None,
        test_labels=test_labels,
        num_classes=header["num_classes"],
        name=header["name"],
        vocab=header["vocab"],
    )


def _write_file(path: pathlib.Path, header: dict, x: np.ndarray, labels, dtype, progress) -> None:
    """One shard, written to a temporary name and renamed (never a partial file under the final name)."""
    from array_record.python.array_record_module import ArrayRecordWriter

    tmp = path.with_name(path.name + ".tmp")
    writer = ArrayRecordWriter(str(tmp), "group_size:1")  # one record per chunk: fast random access
    try:
        writer.write(MAGIC + json.dumps(header).encode("utf-8"))
        for i in range(x.shape[0]):
            writer.write(encode(x[i], None if labels is None else int(labels[i]), dtype))
            progress.update(1)
    finally:
        writer.close()
    os.replace(tmp, path)


def write_records(
    dataset: Dataset,
    directory: str | os.PathLike,
    *,
    name: str | None = None,
    num_shards: int = 1,
    progress: bool = False,
) -> list[pathlib.Path]:
    """Write both splits of `dataset` as ArrayRecord files `DIRECTORY/NAME-SPLIT-SSSSS-of-NNNNN.array_record`.

    The record format is documented in the how-to "Data" (one header record with the metadata, then one
    record per example). Examples keep their order and dtype, so `load("DIRECTORY/*.array_record")` gives
    the same arrays (and `pipeline` the same batches under a seed) as the in-memory data set.

    Args:
        dataset: what to write (in-memory arrays or another `RecordArray` data set).
        directory: output folder (created if needed).
        name: file name stem (default: the data set's name, sanitised).
        num_shards: files per split (at most one per example); more files let hosts read in parallel.
        progress: show a progress bar.

    Returns:
        The paths written, train split first.

    Raises:
        FileExistsError: a file of that name exists (nothing is overwritten).
        ValueError: bad arguments.
    """
    check_positive_int(num_shards, "num_shards")
    stem = name if name is not None else "".join(c if c.isalnum() else "_" for c in dataset.name).strip("_") or "data"
    if "-" in stem or not stem:
        raise ValueError(f"`name` must be non-empty without '-' (it separates the file name's fields); got {stem!r}.")
    out = pathlib.Path(directory)
    splits = {
        "train": (dataset.train, dataset.train_labels),
        "test": (dataset.test, dataset.test_labels),
    }
    plans = []
    for split, (x, labels) in splits.items():
        n = len(x)
        shards = max(1, min(num_shards, n))
        bounds = np.linspace(0, n, shards + 1).round().astype(int)
        for s in range(shards):
            plans.append((out / f"{stem}-{split}-{s:05d}-of-{shards:05d}.array_record", split, s, shards, bounds))
    existing = [str(p) for p, *_ in plans if p.exists()]
    if existing:
        raise FileExistsError(
            f"Not overwriting existing ArrayRecord files: {existing[:3]}; choose another `directory`."
        )
    out.mkdir(parents=True, exist_ok=True)
    dtype = np.dtype(dataset.train.dtype)
    total = len(dataset.train) + len(dataset.test)
    with tqdm(total=total, desc=f"writing {stem}", unit="ex", disable=not progress) as bar:
        for path, split, s, shards, bounds in plans:
            x, labels = splits[split]
            lo, hi = int(bounds[s]), int(bounds[s + 1])
            header = {
                "kind": dataset.kind,
                "split": split,
                "shard": s,
                "num_shards": shards,
                "num_examples": hi - lo,
                "total_examples": len(x),
                "shape": list(dataset.example_shape),
                "dtype": dtype.name,
                "num_levels": dataset.num_levels,
                "vocab": dataset.vocab,
                "num_classes": dataset.num_classes,
                "labels": labels is not None,
                "name": dataset.name,
            }
            part = np.asarray(x[lo:hi])
            _write_file(path, header, part, None if labels is None else np.asarray(labels[lo:hi]), dtype, bar)
    return [p for p, *_ in plans]
