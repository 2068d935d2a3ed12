"""grain input pipelines: deterministic under a seed, checkpointable, sharded by process."""

import grain
import numpy as np


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


def pipeline(
    array: np.ndarray,
    *,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    num_epochs: int | None = None,
    labels: np.ndarray | None = None,
    shard_index: int = 0,
    shard_count: int = 1,
    drop_remainder: bool = True,
) -> grain.IterDataset:
    """A grain pipeline over the rows of `array`, yielding dicts `{"x": batch, "label": batch}`.

    `MapDataset.range(N)[shard_index::shard_count]` → `shuffle(seed)` → `repeat(num_epochs)` (a new order
    each epoch) → `batch(batch_size, drop_remainder)` → gather rows → `to_iter_dataset()`. Batches keep the
    dtype of `array` (uint8 stays uint8). With `drop_remainder=True` every batch has exactly `batch_size`
    rows, so a jitted step compiles once; batches run across epoch boundaries.

    The iterator is deterministic under `seed` and checkpointable: `it.get_state()` and
    `it.set_state(state)` on `iter(pipeline(...))` (also through `grain.checkpoint.CheckpointSave`)
    resume exactly, across epoch boundaries. For multi-host training pass
    `shard_index=jax.process_index(), shard_count=jax.process_count()` and the per-process batch size.

    Args:
        array: examples along axis 0 (any dtype).
        batch_size: examples per batch (per shard).
        seed: shuffle seed.
        shuffle: False to keep the order (e.g. evaluation).
        num_epochs: passes over the data; None repeats forever.
        labels: optional `(N,)` labels, yielded as `"label"`.
        shard_index, shard_count: this process takes rows `shard_index::shard_count`.
        drop_remainder: drop the last incomplete batch (only matters when `num_epochs` is finite).

    Raises:
        ValueError: bad batch size (e.g. larger than the data set shard), shard or labels.
    """
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
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (n,):
            raise ValueError(f"`labels` must have shape ({n},) to match `array`; got {labels.shape}.")
    ds = grain.MapDataset.range(n)[shard_index::shard_count]
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs)  # reshuffles every epoch (reseed_each_epoch)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder).map(_Gather(array, labels))
    return ds.to_iter_dataset()
