"""Argument checks shared by the metrics (feature arrays on the host)."""

from typing import Any

import numpy as np


def check_features(features: Any, name: str, *, min_rows: int = 2) -> np.ndarray:
    """`features` as a float64 NumPy array `(n, d)` with `n >= min_rows`, all finite."""
    f = np.asarray(features)
    if f.ndim != 2:
        raise ValueError(
            f"`{name}` must be a 2-D array of features shaped (n, d); got shape {f.shape}. "
            "Flatten per-example features to vectors first (e.g. `f.reshape(len(f), -1)`)."
        )
    if not (np.issubdtype(f.dtype, np.floating) or np.issubdtype(f.dtype, np.integer)):
        raise TypeError(f"`{name}` must hold real numbers; got dtype {f.dtype}.")
    if f.shape[0] < min_rows:
        raise ValueError(f"`{name}` must have at least {min_rows} samples (rows); got shape {f.shape}.")
    if f.shape[1] < 1:
        raise ValueError(f"`{name}` must have at least one feature (column); got shape {f.shape}.")
    f = f.astype(np.float64)
    bad = ~np.isfinite(f)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise ValueError(
            f"`{name}` must be finite; {int(bad.sum())} NaN/inf value(s) in {rows.size} row(s), the first in "
            f"row {int(rows[0])}. Check the samples (a diverged model) or the feature extractor."
        )
    return f


def check_same_dim(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    """Two feature sets must share their feature dimension."""
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"`{name_a}` and `{name_b}` must have the same feature dimension; got {a.shape[1]} and {b.shape[1]} "
            f"(shapes {a.shape} and {b.shape}). Extract both with the same feature network."
        )
