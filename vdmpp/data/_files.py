"""User data on disk: image folders, .npy/.npz arrays, CIFAR-10 python batches, character text."""

import pathlib
import pickle
import zipfile
from typing import Literal

import numpy as np

from ._dataset import _labelled, Dataset


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


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
