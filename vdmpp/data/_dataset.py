"""The `Dataset` container: a fixed train/test split of NumPy arrays (or lazily read ArrayRecord splits)."""

import dataclasses
from typing import Literal

import numpy as np

from ._records import RecordArray


@dataclasses.dataclass(frozen=True, eq=False)  # eq on arrays is ambiguous
class Dataset:
    """A data set with a fixed train/test split (NumPy arrays on the host, or lazily read ArrayRecord splits).

    Attributes:
        train, test: uint8 images `(N, H, W, C)`, integer tokens `(N, seq_len)` or float32 toy points `(N, D)`;
            NumPy arrays, or [`RecordArray`][vdmpp.data.RecordArray]s for data loaded from ArrayRecord files.
        num_levels: number of discrete values per pixel/token (17 for digits, 256 for 8-bit images, the
            alphabet size for text); None for continuous toy data.
        kind: "image", "text" or "toy".
        train_labels, test_labels: int64 class labels `(N,)` (arrays or `RecordArray`s), or None.
        num_classes: number of classes, or None.
        name: a short description (source name or path).
        vocab: the text alphabet (token id i is `vocab[i]`), or None.
    """

    train: np.ndarray | RecordArray
    test: np.ndarray | RecordArray
    num_levels: int | None
    kind: Literal["image", "text", "toy"]
    train_labels: np.ndarray | RecordArray | None = None
    test_labels: np.ndarray | RecordArray | None = None
    num_classes: int | None = None
    name: str = ""
    vocab: str | None = None

    def __post_init__(self):
        if self.kind not in ("image", "text", "toy"):
            raise ValueError(f"`kind` must be 'image', 'text' or 'toy'; got {self.kind!r}.")
        if self.train.shape[1:] != self.test.shape[1:]:
            raise ValueError(f"train and test examples differ in shape: {self.train.shape} vs {self.test.shape}.")
        for split, labels in (("train", self.train_labels), ("test", self.test_labels)):
            data = getattr(self, split)
            if labels is not None and labels.shape != (data.shape[0],):
                raise ValueError(f"`{split}_labels` must have shape ({data.shape[0]},); got {labels.shape}.")

    @property
    def example_shape(self) -> tuple[int, ...]:
        """Shape of one example."""
        return tuple(self.train.shape[1:])


def _split_indices(n: int, test_fraction: float, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"`test_fraction` must be in (0, 1); got {test_fraction}.")
    num_test = max(1, int(round(n * test_fraction)))
    if n - num_test < 1:
        raise ValueError(f"Need at least 2 examples to make a train/test split; got {n}.")
    perm = np.random.default_rng(split_seed).permutation(n)
    return np.sort(perm[num_test:]), np.sort(perm[:num_test])


def _labelled(
    x: np.ndarray,
    y: np.ndarray | None,
    test_fraction: float,
    split_seed: int,
    **kwargs,
) -> Dataset:
    tr, te = _split_indices(x.shape[0], test_fraction, split_seed)
    return Dataset(
        train=x[tr],
        test=x[te],
        train_labels=None if y is None else y[tr],
        test_labels=None if y is None else y[te],
        **kwargs,
    )
