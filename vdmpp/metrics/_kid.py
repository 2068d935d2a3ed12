r"""Kernel Inception Distance: the unbiased MMD² with the cubic polynomial kernel (THEORY §12)."""

import numpy as np
from jaxtyping import ArrayLike, Float

from .._misc import check_nonnegative_int, check_positive_int
from ._checks import check_features, check_same_dim


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    m = x.shape[0]
    kxx = (x @ x.T / d + 1.0) ** 3
    kyy = (y @ y.T / d + 1.0) ** 3
    kxy = (x @ y.T / d + 1.0) ** 3
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2.0 * kxy.mean())


def kid(
    f_a: Float[ArrayLike, "n_a _d"],
    f_b: Float[ArrayLike, "n_b _d"],
    subset_size: int = 1000,
    num_subsets: int = 100,
    seed: int = 0,
) -> tuple[float, float]:
    r"""Kernel Inception Distance: mean and standard deviation of the unbiased MMD² over random subsets.

    With the kernel $k(x, y) = (x^\top y / d + 1)^3$ and subsets $a, b$ of size $m$ drawn without
    replacement from each set (NumPy generator seeded with `seed`),
    $\mathrm{MMD}^2_u = \frac{1}{m(m-1)}\sum_{i \ne j}[k(a_i, a_j) + k(b_i, b_j)] - \frac{2}{m^2}\sum_{i,j} k(a_i, b_j)$
    (THEORY §12). Unbiased, so it can be negative when the two distributions agree. The standard deviation
    is that of the per-subset values (NumPy `std`, as in torch-fidelity), not a standard error of the mean.
    [Bińkowski et al. 2018](https://arxiv.org/abs/1801.01401).

    Args:
        f_a, f_b: feature sets `(n_a, d)` and `(n_b, d)`, each with at least `subset_size` rows.
        subset_size: $m$, at least 2 and at most `min(n_a, n_b)`.
        num_subsets: number of random subsets.
        seed: seed of the subset draws.

    Returns:
        `(mean, std)` of $\mathrm{MMD}^2_u$ over the subsets.

    Raises:
        ValueError: different feature dimensions, fewer than 2 samples, non-finite features, or `subset_size`
            larger than a set.
    """
    a = check_features(f_a, "f_a")
    b = check_features(f_b, "f_b")
    check_same_dim(a, b, "f_a", "f_b")
    m = check_positive_int(subset_size, "subset_size")
    if m < 2:
        raise ValueError(f"`subset_size` must be at least 2 (the estimator pairs distinct samples); got {m}.")
    if m > min(a.shape[0], b.shape[0]):
        raise ValueError(
            f"`subset_size`={m} is larger than the feature sets ({a.shape[0]} and {b.shape[0]} samples); "
            f"pass `subset_size` <= {min(a.shape[0], b.shape[0])} or use more samples."
        )
    num_subsets = check_positive_int(num_subsets, "num_subsets")
    rng = np.random.default_rng(check_nonnegative_int(seed, "seed"))
    values = np.empty(num_subsets)
    for i in range(num_subsets):
        x = a[rng.choice(a.shape[0], m, replace=False)]
        y = b[rng.choice(b.shape[0], m, replace=False)]
        values[i] = _mmd2_unbiased(x, y)
    return float(values.mean()), float(values.std())
