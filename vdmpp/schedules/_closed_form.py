r"""Noise schedules $\lambda = f(t)$ (K&G Table 4, App. E.3), truncated to $[\lambda_{min}, \lambda_{max}]$.

Each schedule maps $t \in [0, 1]$ (0 = data, 1 = noise) to a strictly decreasing log-SNR $\lambda(t)$
and exposes, in closed form, its inverse `t(lam)` and the noise-level density
$p(\lambda) = -dt/d\lambda$ (THEORY §1–2). Truncation (K&G eq. 127–131):
$t_0 = f^{-1}(\lambda_{max})$, $t_1 = f^{-1}(\lambda_{min})$,
$\tilde f(t) = f(t_0 + (t_1 - t_0) t)$, $\tilde p(\lambda) = p(\lambda)/(t_1 - t_0)$ on
$[\lambda_{min}, \lambda_{max}]$ and 0 outside.

Numerics: every untruncated schedule is written as $f(u, 1-u)$, with $1-u$ computed directly, so
$\lambda(t)$ keeps full float32 precision near both ends.
"""

import math

import jax
import jax.numpy as jnp
import jax.scipy.special as jss

from .._misc import check_finite
from .._types import Array
from ._base import AbstractSchedule


def _check_range(name: str, lam_min: float, lam_max: float, allow_infinite: bool) -> None:
    for arg, value in (("lam_min", lam_min), ("lam_max", lam_max)):
        if isinstance(value, (int, float)) and math.isnan(value):
            raise ValueError(f"`{arg}` of {name} must be a number; got {value}.")
    if not lam_min < lam_max:
        raise ValueError(
            f"{name} needs `lam_min` < `lam_max`; got lam_min={lam_min}, lam_max={lam_max}. "
            "Swap them or widen the range."
        )
    if not allow_infinite and not (math.isfinite(lam_min) and math.isfinite(lam_max)):
        raise ValueError(f"{name} needs finite `lam_min` and `lam_max`; got lam_min={lam_min}, lam_max={lam_max}.")


def shift_for_resolution(d: int, base: int = 64) -> float:
    r"""The shift $s = \log(\mathrm{base}/d)$ for a $d \times d$ resolution (K&G App. D.2.1).

    Pass it as `ShiftedCosine(shift=s)` or `weighting.Shifted(w, shift=s)`: both use $s$ itself
    (the log-SNR moves by $2s$).
    """
    if d <= 0 or base <= 0:
        raise ValueError(f"`d` and `base` must be positive; got d={d}, base={base}.")
    return math.log(base / d)


def _log_sech(x: Array) -> Array:
    # log sech(x) = log 2 - log(e^x + e^-x), stable for any |x|
    return math.log(2.0) - jnp.logaddexp(x, -x)


class LinearLogSNR(AbstractSchedule):
    r"""VDM's schedule, linear in log-SNR: $\lambda = \lambda_{max} + (\lambda_{min} - \lambda_{max}) t$.

    Args:
        lam_min: log-SNR at $t = 1$.
        lam_max: log-SNR at $t = 0$.
    """

    lam_min: float = -20.0
    lam_max: float = 20.0

    def __check_init__(self):
        _check_range("LinearLogSNR", self.lam_min, self.lam_max, allow_infinite=False)

    def _f(self, u, v):
        return self.lam_max + (self.lam_min - self.lam_max) * u

    def _u(self, lam):
        return (self.lam_max - lam) / (self.lam_max - self.lam_min)

    def _v(self, lam):
        return (lam - self.lam_min) / (self.lam_max - self.lam_min)

    def _density(self, lam):
        return jnp.full_like(lam, 1.0 / (self.lam_max - self.lam_min))


class Cosine(AbstractSchedule):
    r"""Cosine schedule: $\lambda = -2\log\tan(\pi t/2)$, $p(\lambda) = \mathrm{sech}(\lambda/2)/(2\pi)$.

    Args:
        lam_min: truncation at $t = 1$ (may be `-inf`: untruncated).
        lam_max: truncation at $t = 0$ (may be `inf`).
    """

    lam_min: float = -20.0
    lam_max: float = 20.0

    def __check_init__(self):
        _check_range("Cosine", self.lam_min, self.lam_max, allow_infinite=True)

    def _f(self, u, v):
        # -2 log tan(pi u / 2) = 2 (log sin(pi v / 2) - log sin(pi u / 2))
        return 2.0 * (jnp.log(jnp.sin(0.5 * jnp.pi * v)) - jnp.log(jnp.sin(0.5 * jnp.pi * u)))

    def _u(self, lam):
        return (2.0 / jnp.pi) * jnp.arctan(jnp.exp(-0.5 * lam))

    def _v(self, lam):
        return (2.0 / jnp.pi) * jnp.arctan(jnp.exp(0.5 * lam))

    def _density(self, lam):
        return jnp.exp(_log_sech(0.5 * lam)) / (2.0 * jnp.pi)


class ShiftedCosine(AbstractSchedule):
    r"""Shifted cosine: $\lambda = -2\log\tan(\pi t/2) + 2s$, $p = \mathrm{sech}(\lambda/2 - s)/(2\pi)$.

    `t(lam)` uses $\frac{2}{\pi}\arctan(e^{-\lambda/2 + s})$ (THEORY §2 erratum: the paper prints $-s$).

    Args:
        shift: $s$ itself (e.g. `shift_for_resolution(d)` $= \log(64/d)$); the log-SNR moves by $2s$.
        lam_min: truncation at $t = 1$.
        lam_max: truncation at $t = 0$.
    """

    shift: float = 0.0
    lam_min: float = -20.0
    lam_max: float = 20.0

    def __check_init__(self):
        check_finite(self.shift, "shift", "ShiftedCosine")
        _check_range("ShiftedCosine", self.lam_min, self.lam_max, allow_infinite=True)

    def _f(self, u, v):
        return 2.0 * (jnp.log(jnp.sin(0.5 * jnp.pi * v)) - jnp.log(jnp.sin(0.5 * jnp.pi * u))) + 2.0 * self.shift

    def _u(self, lam):
        return (2.0 / jnp.pi) * jnp.arctan(jnp.exp(-0.5 * lam + self.shift))

    def _v(self, lam):
        return (2.0 / jnp.pi) * jnp.arctan(jnp.exp(0.5 * lam - self.shift))

    def _density(self, lam):
        return jnp.exp(_log_sech(0.5 * lam - self.shift)) / (2.0 * jnp.pi)


_EDM_MEAN = 2.4
_EDM_STD = 2.4


class EDMTraining(AbstractSchedule):
    r"""EDM's training distribution: $\lambda \sim N(2.4, 2.4^2)$, $\lambda = 2.4 + 2.4\,\Phi^{-1}(1 - t)$.

    (THEORY §2 erratum: the table prints $-F^{-1}_N(t; 2.4, 2.4^2)$.)

    Args:
        lam_min: truncation at $t = 1$ (may be `-inf`).
        lam_max: truncation at $t = 0$ (may be `inf`).
    """

    lam_min: float = -20.0
    lam_max: float = 20.0

    def __check_init__(self):
        _check_range("EDMTraining", self.lam_min, self.lam_max, allow_infinite=True)

    def _f(self, u, v):
        # Phi^-1(v) = -Phi^-1(u): use the smaller argument (safe-where keeps gradients finite)
        small_v = v < 0.5
        q = jnp.where(small_v, jss.ndtri(jnp.where(small_v, v, 0.5)), -jss.ndtri(jnp.where(small_v, 0.5, u)))
        return _EDM_MEAN + _EDM_STD * q

    def _u(self, lam):
        return jss.ndtr((_EDM_MEAN - lam) / _EDM_STD)

    def _v(self, lam):
        return jss.ndtr((lam - _EDM_MEAN) / _EDM_STD)

    def _density(self, lam):
        return jnp.exp(jax.scipy.stats.norm.logpdf(lam, _EDM_MEAN, _EDM_STD))


class EDMSampling(AbstractSchedule):
    r"""EDM's sampling grid as a schedule: $\sigma^{1/\rho}$ linear in $t$ (K&G Table 4).

    $\lambda = -2\rho\log(\sigma_{max}^{1/\rho} + (1-t)(\sigma_{min}^{1/\rho} - \sigma_{max}^{1/\rho}))$ on
    $[-2\log\sigma_{max}, -2\log\sigma_{min}]$, which is also its default truncation.

    Args:
        sigma_min: smallest noise level ($\lambda_{max} = -2\log\sigma_{min}$).
        sigma_max: largest noise level ($\lambda_{min} = -2\log\sigma_{max}$).
        rho: the grid exponent $\rho$.
        lam_min: optional tighter truncation; defaults to $-2\log\sigma_{max}$.
        lam_max: optional tighter truncation; defaults to $-2\log\sigma_{min}$.
    """

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    lam_min: float = None  # pyright: ignore[reportAssignmentType]
    lam_max: float = None  # pyright: ignore[reportAssignmentType]

    def __init__(
        self,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        rho: float = 7.0,
        lam_min: float | None = None,
        lam_max: float | None = None,
    ):
        for arg, value in (("sigma_min", sigma_min), ("sigma_max", sigma_max), ("rho", rho)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"`{arg}` of EDMSampling must be finite and positive; got {value}.")
        if not sigma_min < sigma_max:
            raise ValueError(f"EDMSampling needs `sigma_min` < `sigma_max`; got {sigma_min}, {sigma_max}.")
        natural = (-2.0 * math.log(sigma_max), -2.0 * math.log(sigma_min))
        lam_min = natural[0] if lam_min is None else float(lam_min)
        lam_max = natural[1] if lam_max is None else float(lam_max)
        _check_range("EDMSampling", lam_min, lam_max, allow_infinite=False)
        if lam_min < natural[0] - 1e-9 or lam_max > natural[1] + 1e-9:
            raise ValueError(
                f"EDMSampling is defined on [{natural[0]:.4f}, {natural[1]:.4f}] (from sigma_max, sigma_min); "
                f"got lam_min={lam_min}, lam_max={lam_max}. Change `sigma_min`/`sigma_max` instead."
            )
        self.sigma_min, self.sigma_max, self.rho = float(sigma_min), float(sigma_max), float(rho)
        self.lam_min, self.lam_max = lam_min, lam_max

    def _consts(self):
        a = self.sigma_max ** (1.0 / self.rho)
        b = self.sigma_min ** (1.0 / self.rho)
        return a, b

    def _f(self, u, v):
        a, b = self._consts()
        return -2.0 * self.rho * jnp.log(a * u + b * v)  # = a + v (b - a), without the cancellation near t = 0

    def _v(self, lam):
        a, b = self._consts()
        return (jnp.exp(-lam / (2.0 * self.rho)) - a) / (b - a)

    def _u(self, lam):
        a, b = self._consts()
        return (b - jnp.exp(-lam / (2.0 * self.rho))) / (b - a)

    def _density(self, lam):
        a, b = self._consts()
        return jnp.exp(-lam / (2.0 * self.rho)) / (2.0 * self.rho * (a - b))


class FlowMatchingOT(AbstractSchedule):
    r"""Rectified flow / flow matching with the OT path: $\lambda = 2\log((1-t)/t)$, $p = \mathrm{sech}^2(\lambda/4)/8$.

    Args:
        lam_min: truncation at $t = 1$ (may be `-inf`).
        lam_max: truncation at $t = 0$ (may be `inf`).
    """

    lam_min: float = -20.0
    lam_max: float = 20.0

    def __check_init__(self):
        _check_range("FlowMatchingOT", self.lam_min, self.lam_max, allow_infinite=True)

    def _f(self, u, v):
        return 2.0 * (jnp.log(v) - jnp.log(u))

    def _u(self, lam):
        return jax.nn.sigmoid(-0.5 * lam)

    def _v(self, lam):
        return jax.nn.sigmoid(0.5 * lam)

    def _density(self, lam):
        return jnp.exp(2.0 * _log_sech(0.25 * lam)) / 8.0
