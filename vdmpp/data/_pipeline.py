"""grain input pipelines: deterministic under a seed, checkpointable, sharded by process."""

import grain
import numpy as np

from .._misc import check_nonnegative_int
from ._records import RecordArray


class _Gather(grain.transforms.Map):
    """Map a batch of indices to a dict of arrays (one fancy-index per batch, not per example)."""

    def __init__(self, array: np.ndarray, labels: np.ndarray | None):
        self._array = array
        self._labels = labels

    def map(self, element):  # pyright: ignore[reportIncompatibleMethodOverride]
        idx = np.asarray(element)
        out = {"x": self._array[idx]}
        if self._labels is not None:
            out["label"] = self._labels[idx]
        return out


class _DropLabel(grain.transforms.Map):
    """Keep only the example of a decoded record (labels were not asked for)."""

    def map(self, element):  # pyright: ignore[reportIncompatibleMethodOverride]
        return {"x": element["x"]}


def _check_record_labels(array: RecordArray, labels) -> bool:
    """Whether to yield the records' labels; `labels` must be None or the same files' label view."""
    if array.field != "x":
        raise ValueError("`array` is a RecordArray of labels; pass the examples (e.g. `ds.train`) as `array`.")
    if labels is None:
        return False
    if not (isinstance(labels, RecordArray) and labels.field == "label" and labels.source is array.source):
        raise ValueError(
            "With a RecordArray `array`, `labels` must be None or the labels of the same files "
            "(`ds.train_labels` of the same `vd.data.load(...)`): records carry their own labels."
        )
    return True


def _absl_flags_parsed() -> None:
    """grain <= 0.2.18 reads an Abseil flag in `mp_prefetch`, which fails outside `absl.app` unless the flags
    count as parsed (google/grain#1355, fixed upstream by #1362): use the flags' defaults."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def pipeline(
    array: np.ndarray | RecordArray,
    *,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    num_epochs: int | None = None,
    labels: np.ndarray | RecordArray | None = None,
    shard_index: int = 0,
    shard_count: int = 1,
    drop_remainder: bool = True,
    num_workers: int = 0,
) -> grain.IterDataset:
    """A grain pipeline over the rows of `array`, yielding dicts `{"x": batch, "label": batch}`.

    `range(N)[shard_index::shard_count]` → `shuffle(seed)` → `repeat(num_epochs)` (a new order each
    epoch) → `batch(batch_size, drop_remainder)` → `to_iter_dataset()`. An in-memory array is gathered
    one fancy-index per batch; a [`RecordArray`][vdmpp.data.RecordArray] (ArrayRecord files from
    `vd.data.load("path/*.array_record")`) is read lazily, record by record, through
    `grain.MapDataset.source`, so each process reads only the records of its shard. Both give the same
    batches for the same data and seed. Batches keep the dtype of the data (uint8 stays uint8). With
    `drop_remainder=True` every batch has exactly `batch_size` rows, so a jitted step compiles once;
    batches run across epoch boundaries.

    The iterator is deterministic under `seed` and checkpointable: `it.get_state()` and
    `it.set_state(state)` on `iter(pipeline(...))` (also through `grain.checkpoint.CheckpointSave`)
    resume exactly, across epoch boundaries, also with `num_workers > 0` (resume with the same
    `num_workers`). For multi-host training pass `shard_index=jax.process_index(),
    shard_count=jax.process_count()` and the per-process batch size.

    Args:
        array: examples along axis 0 (any dtype), or a `RecordArray`.
        batch_size: examples per batch (per shard).
        seed: shuffle seed.
        shuffle: False to keep the order (e.g. evaluation).
        num_epochs: passes over the data; None repeats forever.
        labels: optional `(N,)` labels, yielded as `"label"` (for a `RecordArray`: its label view).
        shard_index, shard_count: this process takes rows `shard_index::shard_count`.
        drop_remainder: drop the last incomplete batch (only matters when `num_epochs` is finite).
        num_workers: grain worker processes that read and batch in parallel (`mp_prefetch`); 0 reads in
            the calling process. The batches are the same either way.

    Raises:
        ValueError: bad batch size (e.g. larger than the data set shard), shard, labels or workers.
    """
    records = array if isinstance(array, RecordArray) else None
    if records is None:
        array = np.asarray(array)
        if array.ndim < 1:
            raise ValueError(f"`array` must have a leading example axis; got a scalar of dtype {array.dtype}.")
    n = array.shape[0]
    if not isinstance(shard_count, int) or shard_count < 1:
        raise ValueError(f"`shard_count` must be a positive int; got {shard_count!r}.")
    if not isinstance(shard_index, int) or not 0 <= shard_index < shard_count:
        raise ValueError(f"`shard_index` must be an int in [0, {shard_count}); got {shard_index!r}.")
    shard_size = len(range(shard_index, n, shard_count))
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int; got {batch_size!r}.")
    if batch_size > shard_size:
        where = "the data set" if shard_count == 1 else f"shard {shard_index} of {shard_count}"
        raise ValueError(
            f"`batch_size`={batch_size} is larger than {where} ({shard_size} examples); use batch_size <= "
            f"{shard_size} or more data."
        )
    if num_epochs is not None and (not isinstance(num_epochs, int) or num_epochs < 1):
        raise ValueError(f"`num_epochs` must be None (repeat forever) or a positive int; got {num_epochs!r}.")
    check_nonnegative_int(num_workers, "num_workers", " (0: read in this process)")
    if records is not None:
        with_labels = _check_record_labels(records, labels)
        ds = grain.MapDataset.source(records.source)[shard_index::shard_count]
    else:
        if labels is not None:
            labels = np.asarray(labels)
            if labels.shape != (n,):
                raise ValueError(f"`labels` must have shape ({n},) to match `array`; got {labels.shape}.")
        with_labels = labels is not None
        ds = grain.MapDataset.range(n)[shard_index::shard_count]
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs)  # reshuffles every epoch (reseed_each_epoch)
    if records is not None:
        ds = ds if with_labels else ds.map(_DropLabel())
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    else:
        ds = ds.batch(batch_size, drop_remainder=drop_remainder).map(_Gather(array, labels))  # pyright: ignore
    it = ds.to_iter_dataset()
    if num_workers > 0:
        _absl_flags_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return it
