"""Improved precision and recall of generative models (Kynkäänniemi et al. 2019; THEORY §12)."""

import numpy as np
from jaxtyping import ArrayLike, Float
from sklearn.metrics import pairwise_distances_chunked

from .._misc import check_positive_int
from ._checks import check_features, check_same_dim


_WORKING_MEMORY_MB = 256  # each chunk of the distance matrix stays below this (10k x 10k fits easily)


def _knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Distance of each row of `x` to its k-th nearest other row."""

    def reduce(chunk: np.ndarray, start: int) -> np.ndarray:
        # the row itself is at distance 0, so the k-th neighbour is the (k+1)-th smallest
        return np.partition(chunk, k, axis=1)[:, k]

    return np.concatenate(list(pairwise_distances_chunked(x, reduce_func=reduce, working_memory=_WORKING_MEMORY_MB)))


def _coverage(queries: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> float:
    """Fraction of `queries` inside at least one ball (centre, radius)."""

    def reduce(chunk: np.ndarray, start: int) -> np.ndarray:
        return np.any(chunk <= radii[None, :], axis=1)

    gen = pairwise_distances_chunked(queries, centres, reduce_func=reduce, working_memory=_WORKING_MEMORY_MB)
    return float(np.mean(np.concatenate(list(gen))))


def precision_recall(
    f_real: Float[ArrayLike, "n_real _d"], f_fake: Float[ArrayLike, "n_fake _d"], k: int = 3
) -> tuple[float, float]:
    """Improved precision and recall: how much of the fakes lie on the real manifold, and vice versa.

    Each set's manifold is the union of balls around its samples with radius the distance to the sample's
    k-th nearest neighbour in the same set. Precision is the fraction of fakes inside the real manifold;
    recall the fraction of reals inside the fake manifold (Euclidean distances in float64, computed in
    chunks of at most 256 MB, so 10k × 10k sets fit in memory).
    [Kynkäänniemi et al. 2019](https://arxiv.org/abs/1904.06991), §2.

    Args:
        f_real, f_fake: feature sets `(n_real, d)` and `(n_fake, d)`, each with more than `k` rows.
        k: the neighbour that sets the radius (3 in the paper).

    Returns:
        `(precision, recall)`, each in [0, 1].

    Raises:
        ValueError: different feature dimensions, non-finite features, or a set with at most `k` samples.
    """
    k = check_positive_int(k, "k")
    real = check_features(f_real, "f_real", min_rows=max(2, k + 1))
    fake = check_features(f_fake, "f_fake", min_rows=max(2, k + 1))
    check_same_dim(real, fake, "f_real", "f_fake")
    precision = _coverage(fake, real, _knn_radii(real, k))
    recall = _coverage(real, fake, _knn_radii(fake, k))
    return precision, recall
