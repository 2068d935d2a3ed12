r"""Feature statistics (streaming float64 mean and covariance on the host) and the Fréchet distance (THEORY §12)."""

import dataclasses
import io
import os
import pathlib
from typing import Any

import numpy as np
import scipy.linalg
from jaxtyping import ArrayLike, Float

from .._io import atomic_write_bytes
from .._misc import is_int
from ._checks import check_features


@dataclasses.dataclass(frozen=True, eq=False)  # eq on arrays is ambiguous
class FeatureStats:
    r"""Mean and covariance of a feature set, in float64 on the host; mergeable across batches and processes.

    Build with [`vdmpp.metrics.FeatureStats.from_features`][] (or `FeatureStats.empty(d)`), add batches with
    `update` (which returns a new object), combine partial statistics with `merge` (Chan et al.'s pairwise
    update, exact in exact arithmetic: chunked or merged statistics equal one-shot ones) and across JAX
    processes with [`vdmpp.metrics.all_gather_stats`][]. `save`/`load` use an `.npz` with `mu` and `sigma`
    (the layout of pytorch-fid and clean-fid statistics files) plus `n`; a file without `n` (e.g.
    Inception statistics from another tool) loads with `n=None`: it can be compared but not merged.

    Attributes:
        mu: the mean, shape `(d,)`.
        sigma: the covariance normalised by $n - 1$, shape `(d, d)` (zero while $n \le 1$).
        n: the number of samples, or `None` when unknown (statistics loaded without it).
    """

    mu: Float[np.ndarray, " d"]
    sigma: Float[np.ndarray, "d d"]
    n: int | None = None

    def __post_init__(self):
        mu = np.asarray(self.mu, dtype=np.float64)
        sigma = np.asarray(self.sigma, dtype=np.float64)
        if mu.ndim != 1 or mu.shape[0] < 1:
            raise ValueError(f"`mu` must be a non-empty vector (d,); got shape {mu.shape}.")
        d = mu.shape[0]
        if sigma.shape != (d, d):
            raise ValueError(f"`sigma` must be a square matrix matching `mu`, ({d}, {d}); got shape {sigma.shape}.")
        if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(sigma))):
            raise ValueError("`mu` and `sigma` must be finite; they hold NaN/inf values.")
        scale = max(float(np.max(np.abs(sigma))), 1e-300)
        if np.max(np.abs(sigma - sigma.T)) > 1e-8 * scale:
            raise ValueError("`sigma` must be a symmetric covariance matrix; it is not symmetric.")
        if self.n is not None and (not is_int(self.n) or self.n < 0):
            raise ValueError(f"`n` must be a non-negative integer or None; got {self.n!r}.")
        object.__setattr__(self, "mu", mu)
        object.__setattr__(self, "sigma", sigma)
        object.__setattr__(self, "n", None if self.n is None else int(self.n))

    @property
    def dim(self) -> int:
        """The feature dimension d."""
        return int(self.mu.shape[0])

    @classmethod
    def empty(cls, dim: int) -> "FeatureStats":
        """Statistics of no samples (`n = 0`), to `update` batch by batch."""
        if not is_int(dim) or dim < 1:
            raise ValueError(f"`dim` must be a positive integer (the feature dimension); got {dim!r}.")
        return cls(np.zeros(dim), np.zeros((dim, dim)), n=0)

    @classmethod
    def from_features(cls, features: Float[ArrayLike, "n d"]) -> "FeatureStats":
        """Statistics of a feature array `(n, d)` with `n >= 1` (cast to float64)."""
        f = check_features(features, "features", min_rows=1)
        mu = f.mean(axis=0)
        centred = f - mu
        m2 = centred.T @ centred
        n = f.shape[0]
        return cls(mu, m2 / max(n - 1, 1), n=n)

    def _m2(self, name: str) -> np.ndarray:
        if self.n is None:
            raise ValueError(
                f"`{name}` has no sample count (statistics loaded from a file without `n`): it can be compared "
                "with `frechet_distance` but not updated or merged."
            )
        return self.sigma * max(self.n - 1, 0)

    def merge(self, other: "FeatureStats") -> "FeatureStats":
        """Statistics of the union of both sample sets (Chan, Golub & LeVeque's pairwise update)."""
        if not isinstance(other, FeatureStats):
            raise TypeError(f"`other` must be a FeatureStats; got {type(other).__name__}.")
        if other.dim != self.dim:
            raise ValueError(
                f"Cannot merge statistics of different feature dimensions: {self.dim} and {other.dim}. "
                "Extract all features with the same network."
            )
        m2a, m2b = self._m2("self"), other._m2("other")
        na, nb = self.n or 0, other.n or 0
        n = na + nb
        if nb == 0:
            return self
        if na == 0:
            return other
        delta = other.mu - self.mu
        mu = self.mu + delta * (nb / n)
        m2 = m2a + m2b + np.outer(delta, delta) * (na * nb / n)
        return FeatureStats(mu, m2 / max(n - 1, 1), n=n)

    def update(self, features: Float[ArrayLike, "n d"]) -> "FeatureStats":
        """These statistics with a batch of features `(n, d)` added (a new object; `self` is unchanged)."""
        return self.merge(FeatureStats.from_features(features))

    def save(self, path: str | os.PathLike) -> None:
        """Write `mu`, `sigma` (and `n` when known) to an `.npz`, atomically."""

        arrays: dict[str, np.ndarray] = {"mu": self.mu, "sigma": self.sigma}
        if self.n is not None:
            arrays["n"] = np.asarray(self.n, dtype=np.int64)
        buf = io.BytesIO()
        np.savez(buf, **arrays)  # pyright: ignore[reportArgumentType]
        atomic_write_bytes(pathlib.Path(path), buf.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FeatureStats":
        """Read statistics from an `.npz` holding `mu` and `sigma` (and optionally `n`)."""
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("mu", "sigma") if k not in z.files]
            if missing:
                raise ValueError(
                    f"{path} holds arrays {sorted(z.files)}; a statistics file needs `mu` and `sigma` "
                    "(the layout of pytorch-fid / clean-fid `.npz` files)."
                )
            n = int(z["n"]) if "n" in z.files else None
            return cls(z["mu"], z["sigma"], n=n)


def _check_comparable(a: Any, b: Any, name_a: str, name_b: str) -> None:
    for name, s in ((name_a, a), (name_b, b)):
        if not isinstance(s, FeatureStats):
            raise TypeError(
                f"`{name}` must be a FeatureStats; got {type(s).__name__}. "
                "Use `vd.metrics.FeatureStats.from_features(features)`."
            )
        if s.n is not None and s.n < 2:
            raise ValueError(f"`{name}` must hold at least 2 samples for a covariance; got n={s.n}.")
    if a.dim != b.dim:
        raise ValueError(
            f"`{name_a}` and `{name_b}` must have the same feature dimension; got {a.dim} and {b.dim}. "
            "Extract both with the same feature network."
        )


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
    w, v = scipy.linalg.eigh(m)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(stats_a: FeatureStats, stats_b: FeatureStats) -> float:
    r"""Fréchet distance between the Gaussians fitted to two feature sets (THEORY §12; FID with Inception features).

    $\mathrm{FD} = \|\mu_a - \mu_b\|^2 + \operatorname{tr}\Sigma_a + \operatorname{tr}\Sigma_b
    - 2\operatorname{tr}(\Sigma_a^{1/2}\Sigma_b\Sigma_a^{1/2})^{1/2}$, the last term from the eigenvalues of
    the symmetric PSD matrix $\Sigma_a^{1/2}\Sigma_b\Sigma_a^{1/2}$ (round-off negatives clipped to 0), in
    float64. FD is biased upwards at small $n$: report $n$ and compare only at equal $n$.
    [Heusel et al. 2017](https://arxiv.org/abs/1706.08500).

    Raises:
        ValueError: different feature dimensions, or fewer than 2 samples in either set.
    """
    _check_comparable(stats_a, stats_b, "stats_a", "stats_b")
    sqrt_a = _psd_sqrt(stats_a.sigma)
    m = sqrt_a @ stats_b.sigma @ sqrt_a
    eig = scipy.linalg.eigvalsh(0.5 * (m + m.T))
    tr_sqrt = float(np.sum(np.sqrt(np.clip(eig, 0.0, None))))
    diff = stats_a.mu - stats_b.mu
    fd = float(diff @ diff) + float(np.trace(stats_a.sigma) + np.trace(stats_b.sigma)) - 2.0 * tr_sqrt
    return max(fd, 0.0)  # >= 0 exactly; round-off can dip below


def _gather_float64(x: np.ndarray) -> np.ndarray:
    """All-gather a float64 host array bit for bit (JAX may lack float64, so it travels as uint32 words)."""
    from jax.experimental import multihost_utils

    words = np.ascontiguousarray(x, dtype=np.float64).view(np.uint32)
    got = np.asarray(multihost_utils.process_allgather(words))  # (process_count, *words.shape)
    return np.ascontiguousarray(got).view(np.float64).reshape((got.shape[0],) + x.shape)


def all_gather_stats(stats: FeatureStats) -> FeatureStats:
    """Merge every JAX process's statistics (call on all processes; each gets the same result).

    With one process this returns `stats` unchanged. Otherwise the sample counts, means and summed
    centred outer products are all-gathered (as raw float64 bits) and merged in process order, so the
    result equals the statistics of all processes' features together.

    Raises:
        ValueError: `stats.n` unknown.
    """
    import jax

    if not isinstance(stats, FeatureStats):
        raise TypeError(f"`stats` must be a FeatureStats; got {type(stats).__name__}.")
    stats._m2("stats")  # n must be known
    if jax.process_count() == 1:
        return stats
    mus = _gather_float64(stats.mu)
    sigmas = _gather_float64(stats.sigma)
    ns = _gather_float64(np.asarray([float(stats.n or 0)]))
    out = FeatureStats.empty(stats.dim)
    for mu, sigma, n in zip(mus, sigmas, ns[:, 0]):
        out = out.merge(FeatureStats(mu, sigma, n=int(n)))
    return out
