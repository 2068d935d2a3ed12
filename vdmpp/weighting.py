r"""Weighting functions $w(\lambda)$ of the weighted loss (K&G Table 1, §5.1, App. D, App. I).

Each weighting is a callable Module, elementwise in $\lambda$, computed in log space so it stays
finite for $|\lambda| \le 40$ in float32. `is_monotonic` checks the property that makes the weighted
loss an ELBO of noise-augmented data (K&G Theorem 1).
"""

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.special as jss
import numpy as np

from ._misc import as_float, check_finite, check_instance
from ._types import Array, Float, FloatLike


def _log_sech(x: Array) -> Array:
    return math.log(2.0) - jnp.logaddexp(x, -x)


class AbstractWeighting(eqx.Module):
    r"""A weighting function $w(\lambda) \ge 0$ of the log-SNR."""

    @abc.abstractmethod
    def log_weight(self, lam: FloatLike) -> Float[Array, "*shape"]:
        r"""$\log w(\lambda)$."""

    def __call__(self, lam: FloatLike) -> Float[Array, "*shape"]:
        r"""$w(\lambda)$."""
        return jnp.exp(self.log_weight(as_float(lam)))


class ELBO(AbstractWeighting):
    r"""$w(\lambda) = 1$: the weighted loss is the diffusion part of the $-$ELBO."""

    def log_weight(self, lam):
        """$\\log w = 0$."""
        return jnp.zeros_like(as_float(lam))


class IDDPM(AbstractWeighting):
    r"""$w(\lambda) = \mathrm{sech}(\lambda/2)$: $\epsilon$-prediction MSE with the cosine schedule (IDDPM)."""

    def log_weight(self, lam):
        """$\\log\\mathrm{sech}(\\lambda/2)$."""
        return _log_sech(0.5 * as_float(lam))


_EDM_MEAN, _EDM_STD, _EDM_SIGMA_DATA = 2.4, 2.4, 0.5


def _edm_log_weight(lam):
    # log N(lam; 2.4, 2.4^2) + log(e^-lam + 0.5^2)
    log_pdf = jax.scipy.stats.norm.logpdf(lam, _EDM_MEAN, _EDM_STD)
    return log_pdf + jnp.logaddexp(-lam, 2.0 * math.log(_EDM_SIGMA_DATA))


def _edm_peak() -> tuple[float, float]:
    # argmax of EDM's log-weight by Newton's method in float64: d/dlam log w = 0.
    def dlog(x):
        return -(x - _EDM_MEAN) / _EDM_STD**2 - 1.0 / (1.0 + _EDM_SIGMA_DATA**2 * math.exp(x))

    def d2log(x):
        e = _EDM_SIGMA_DATA**2 * math.exp(x)
        return -1.0 / _EDM_STD**2 + e / (1.0 + e) ** 2

    x = -3.0
    for _ in range(50):
        x -= dlog(x) / d2log(x)
    log_pdf = -0.5 * ((x - _EDM_MEAN) / _EDM_STD) ** 2 - math.log(_EDM_STD * math.sqrt(2 * math.pi))
    return x, math.exp(log_pdf) * (math.exp(-x) + _EDM_SIGMA_DATA**2)


EDM_PEAK_LAM, EDM_PEAK_VALUE = _edm_peak()
"""Argmax (≈ −3.308) and maximum (≈ 0.27103) of EDM's weighting."""


class EDM(AbstractWeighting):
    r"""EDM (Karras et al. 2022): $w(\lambda) = N(\lambda; 2.4, 2.4^2)(e^{-\lambda} + 0.5^2)$. Not monotone."""

    def log_weight(self, lam):
        """EDM's log-weight."""
        return _edm_log_weight(as_float(lam))


class EDMMonotonic(AbstractWeighting):
    r"""EDM's weighting made monotone: equal to EDM right of its peak $\lambda^* \approx -3.308$, and
    held at the peak value $\approx 0.27103$ left of it (K&G §5.1)."""

    def log_weight(self, lam):
        """Log-weight, constant below the peak."""
        lam = as_float(lam)
        return jnp.where(lam < EDM_PEAK_LAM, math.log(EDM_PEAK_VALUE), _edm_log_weight(jnp.maximum(lam, EDM_PEAK_LAM)))


class FlowMatching(AbstractWeighting):
    r"""$w(\lambda) = e^{-\lambda/2}$: flow matching with the OT path, and v-prediction with the cosine
    schedule up to the constant $2/\pi$ (K&G App. D.2, D.3)."""

    def log_weight(self, lam):
        """$-\\lambda/2$."""
        return -0.5 * as_float(lam)


class InDI(AbstractWeighting):
    r"""InDI (Delbracio & Milanfar 2023): $w(\lambda) = e^{-\lambda}\mathrm{sech}^2(\lambda/4)$."""

    def log_weight(self, lam):
        """$-\\lambda + 2\\log\\mathrm{sech}(\\lambda/4)$."""
        lam = as_float(lam)
        return -lam + 2.0 * _log_sech(0.25 * lam)


class P2(AbstractWeighting):
    r"""P2 weighting with the cosine schedule: $w(\lambda) = \mathrm{sech}(\lambda/2)/(1 + e^{\lambda})^\gamma$.

    Args:
        gamma: the exponent $\gamma$ (the paper uses 0.5 and 1).
    """

    gamma: float = 1.0

    def __check_init__(self):
        check_finite(self.gamma, "gamma", "P2")

    def log_weight(self, lam):
        """$\\log\\mathrm{sech}(\\lambda/2) - \\gamma\\,\\mathrm{softplus}(\\lambda)$."""
        lam = as_float(lam)
        return _log_sech(0.5 * lam) - self.gamma * jax.nn.softplus(lam)


class MinSNR(AbstractWeighting):
    r"""Min-SNR-$\gamma$ with the cosine schedule: $w(\lambda) = \mathrm{sech}(\lambda/2)\min(1, \gamma e^{-\lambda})$.

    Args:
        gamma: the SNR cap $\gamma > 0$ (the paper uses 5).
    """

    gamma: float = 5.0

    def __check_init__(self):
        check_finite(self.gamma, "gamma", "MinSNR")
        if isinstance(self.gamma, (int, float)) and self.gamma <= 0:
            raise ValueError(f"`gamma` of MinSNR must be positive; got {self.gamma}.")

    def log_weight(self, lam):
        """$\\log\\mathrm{sech}(\\lambda/2) + \\min(0, \\log\\gamma - \\lambda)$."""
        lam = as_float(lam)
        return _log_sech(0.5 * lam) + jnp.minimum(0.0, jnp.log(self.gamma) - lam)


class Sigmoid(AbstractWeighting):
    r"""$w(\lambda) = \mathrm{sigmoid}(-\lambda + k)$ (K&G §5.1; their best: $k = 2$). Monotone.

    Args:
        k: the bias $k$.
    """

    k: float = 2.0

    def __check_init__(self):
        check_finite(self.k, "k", "Sigmoid")

    def log_weight(self, lam):
        """$\\log\\mathrm{sigmoid}(k - \\lambda)$."""
        return jax.nn.log_sigmoid(self.k - as_float(lam))


class FiveBitLike(AbstractWeighting):
    r"""$w(\lambda) = \Phi(-2(\lambda - 8.4))$: makes 8-bit data behave like 5-bit data (K&G App. I, eq. 146)."""

    def log_weight(self, lam):
        """$\\log\\Phi(-2(\\lambda - 8.4))$."""
        return jss.log_ndtr(-2.0 * (as_float(lam) - 8.4))


class Shifted(AbstractWeighting):
    r"""A weighting shifted for resolution: $w_s(\lambda) = w(\lambda - 2s)$ (K&G App. D.2.1).

    Args:
        weighting: the weighting to shift.
        shift: $s$ itself, e.g. `schedules.shift_for_resolution(d)` $= \log(64/d)$.
    """

    weighting: AbstractWeighting
    shift: float

    def __check_init__(self):
        check_finite(self.shift, "shift", "Shifted")
        check_instance(self.weighting, AbstractWeighting, "weighting", "vd.weighting.Sigmoid(2.0)")

    def log_weight(self, lam):
        """$\\log w(\\lambda - 2s)$."""
        return self.weighting.log_weight(as_float(lam) - 2.0 * self.shift)


def is_monotonic(
    weighting: AbstractWeighting, lam_min: float = -20.0, lam_max: float = 20.0, num: int = 20001, rtol: float = 1e-6
) -> bool:
    r"""Whether $w(\lambda)$ is non-increasing on $[\lambda_{min}, \lambda_{max}]$ (checked on a dense grid).

    Monotone weightings make the weighted loss an expected ELBO of noise-augmented data (K&G eq. 12).

    Args:
        weighting: the weighting to check.
        lam_min: left end of the range.
        lam_max: right end of the range.
        num: number of grid points.
        rtol: allowed relative increase between neighbouring points (float32 round-off).
    """
    check_finite(lam_min, "lam_min", "is_monotonic")
    check_finite(lam_max, "lam_max", "is_monotonic")
    if not lam_min < lam_max:
        raise ValueError(f"`is_monotonic` needs lam_min < lam_max; got {lam_min}, {lam_max}.")
    lam = jnp.linspace(lam_min, lam_max, num)
    logw = np.asarray(weighting.log_weight(lam), dtype=np.float64)
    return bool(np.all(np.diff(logw) <= rtol))


MIN_PEAK = 1e-6
"""`check_on_range`: the largest weight on the range must be at least this (else the loss and its gradients vanish
next to Adam's $\\epsilon = 10^{-8}$ and nothing is learned)."""
MAX_PEAK = 1e30
"""`check_on_range`: the largest weight must be at most this (float32 overflows at $3.4 \\cdot 10^{38}$ once the
loss multiplies it by $\\|\\epsilon - \\hat\\epsilon\\|^2 / p(\\lambda)$)."""


def check_on_range(weighting: AbstractWeighting, lam_min: float, lam_max: float, *, num: int = 2001) -> None:
    r"""Raise a `ValueError` if $w(\lambda)$ is degenerate on $[\lambda_{min}, \lambda_{max}]$ in float32.

    Degenerate: NaN or infinite somewhere on a grid of `num` points, or its largest value below `MIN_PEAK`
    (it underflows: the loss carries no signal) or above `MAX_PEAK` (it overflows). Weights are $\ge 0$ by
    construction ($w = e^{\log w}$); a negative weight shows up here as a NaN $\log w$.

    Args:
        weighting: the weighting to check.
        lam_min: left end of the run's log-SNR range.
        lam_max: right end of the run's log-SNR range.
        num: number of grid points.

    Raises:
        ValueError: naming the weighting (with its parameters), the offending value and the $\lambda$ where it occurs.
    """
    check_instance(weighting, AbstractWeighting, "weighting", "vd.weighting.Sigmoid(2.0)")
    check_finite(lam_min, "lam_min", "check_on_range")
    check_finite(lam_max, "lam_max", "check_on_range")
    if not lam_min < lam_max:
        raise ValueError(f"`check_on_range` needs lam_min < lam_max; got {lam_min}, {lam_max}.")
    lam = np.linspace(lam_min, lam_max, num, dtype=np.float32)
    w = np.asarray(weighting(jnp.asarray(lam)), np.float64)
    where = f"on the run's λ range [{lam_min:.4g}, {lam_max:.4g}]"
    bad = np.flatnonzero(~np.isfinite(w))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{weighting!r} is not finite {where}: w(λ) = {w[i]} at λ = {lam[i]:.4g} (float32). Choose a parameter "
            "that keeps it finite there, or narrow the range."
        )
    i = int(np.argmax(w))
    if w[i] < MIN_PEAK:
        raise ValueError(
            f"{weighting!r} underflows {where}: its largest value there is {w[i]:.3g} (at λ = {lam[i]:.4g}), below "
            f"{MIN_PEAK:g}, so the loss and its gradients vanish and nothing is learned. Choose a parameter that puts "
            "its weight inside the range."
        )
    if w[i] > MAX_PEAK:
        raise ValueError(
            f"{weighting!r} overflows {where}: its largest value there is {w[i]:.3g} (at λ = {lam[i]:.4g}), above "
            f"{MAX_PEAK:g}, so the loss overflows float32. Choose a parameter that keeps it moderate on the range."
        )
