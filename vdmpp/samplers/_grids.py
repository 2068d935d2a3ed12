r"""Sampling grids: where in $\lambda$ a sampler evaluates the denoiser (THEORY §11), chosen apart from the solver.

A grid of $N$ steps is $N + 1$ log-SNRs $\lambda_0 < \lambda_1 < \dots < \lambda_N$, increasing from
noise ($\lambda_0$, where sampling starts) to data ($\lambda_N$). The built-in grids span the schedule's
$[\lambda_{min}, \lambda_{max}]$.
"""

import abc
import math
from collections.abc import Sequence

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from .._misc import check_finite, check_positive_int, concrete, error_if
from .._types import Array, ArrayLike, Float
from ..schedules import AbstractSchedule


def _range(schedule: AbstractSchedule, what: str) -> tuple[float, float]:
    lo, hi = concrete(schedule.lam_min), concrete(schedule.lam_max)
    if lo is None or hi is None:
        raise ValueError(f"{what} needs the schedule's `lam_min`/`lam_max` as numbers, not traced values.")
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(
            f"{what} needs a schedule with finite `lam_min` and `lam_max`; got [{lo}, {hi}]. Truncate it, "
            "e.g. vd.schedules.Cosine(lam_min=-15.0, lam_max=15.0)."
        )
    return lo, hi


def check_grid(lams: Array, what: str) -> Array:
    """The grid must increase strictly (a ValueError when its values are known, `eqx.error_if` under jit)."""
    values = concrete(lams)
    if values is not None:
        if not (np.all(np.isfinite(values)) and np.all(np.diff(values) > 0)):
            raise ValueError(
                f"{what} must give finite log-SNRs increasing strictly from noise to data; got {values}. "
                "Check the schedule (lam must decrease strictly in t) or the grid's values."
            )
        return lams
    bad = ~jnp.all(jnp.isfinite(lams)) | jnp.any(jnp.diff(lams) <= 0)
    return error_if(lams, bad, f"{what} must give finite log-SNRs increasing strictly from noise to data.")


class AbstractGrid(eqx.Module):
    r"""A sampling grid: $N + 1$ log-SNRs increasing from $\lambda_{min}$ (noise) to $\lambda_{max}$ (data)."""

    @abc.abstractmethod
    def lams(self, schedule: AbstractSchedule, num_steps: int, dtype=jnp.float32) -> Float[Array, " M"]:
        """The grid for `num_steps` steps, checked to increase strictly."""


class UniformTime(AbstractGrid):
    r"""Uniform in the schedule's time: $\lambda_k = \lambda(1 - k/N)$ (the sampling schedule shapes the grid)."""

    def lams(self, schedule: AbstractSchedule, num_steps: int, dtype=jnp.float32) -> Float[Array, " M"]:
        """$\\lambda(t_k)$ at $t_k = 1 - k/N$."""
        n = check_positive_int(num_steps, "num_steps")
        t = jnp.asarray(1.0 - np.arange(n + 1) / n, dtype)
        return check_grid(schedule.lam(t), f"UniformTime on {type(schedule).__name__}")


class UniformLogSNR(AbstractGrid):
    r"""Uniform in log-SNR on the schedule's range.

    $\lambda_k = \lambda_{min} + \tfrac{k}{N}(\lambda_{max} - \lambda_{min})$;
    uniform in DPM-Solver's $\rho = \lambda/2$ too: the grid of DPM-Solver++'s analysis (THEORY §11).
    """

    def lams(self, schedule: AbstractSchedule, num_steps: int, dtype=jnp.float32) -> Float[Array, " M"]:
        """Equal steps in $\\lambda$."""
        n = check_positive_int(num_steps, "num_steps")
        lo, hi = _range(schedule, "UniformLogSNR")
        return check_grid(jnp.asarray(np.linspace(lo, hi, n + 1), dtype), "UniformLogSNR")


class EDMGrid(AbstractGrid):
    r"""EDM's $\rho$-grid (Karras et al. 2022, eq. 5): $\sigma^{1/\rho}$ uniform, $\sigma = e^{-\lambda/2}$.

    $\sigma_k = (\sigma_{max}^{1/\rho} + \tfrac{k}{N}(\sigma_{min}^{1/\rho} - \sigma_{max}^{1/\rho}))^\rho$ with
    $\sigma_{max} = e^{-\lambda_{min}/2}$ and $\sigma_{min} = e^{-\lambda_{max}/2}$ from the schedule's range
    (EDM's own 80 and 0.002 are `vd.schedules.EDMSampling()`'s range). Fine steps near the data.

    Args:
        rho: $\rho > 0$ (EDM: 7).
    """

    rho: float = 7.0

    def __check_init__(self):
        check_finite(self.rho, "rho", "EDMGrid")
        if not self.rho > 0:
            raise ValueError(f"`rho` of EDMGrid must be positive; got {self.rho}.")

    def lams(self, schedule: AbstractSchedule, num_steps: int, dtype=jnp.float32) -> Float[Array, " M"]:
        """$\\lambda_k = -2\\log\\sigma_k$ on the $\\rho$-grid."""
        n = check_positive_int(num_steps, "num_steps")
        lo, hi = _range(schedule, "EDMGrid")
        # sigma^(1/rho) = exp(-lam / (2 rho)); lam = -2 rho log(sigma^(1/rho))
        a, b = math.exp(-lo / (2 * self.rho)), math.exp(-hi / (2 * self.rho))
        u = a + np.arange(n + 1) / n * (b - a)
        lams = -2.0 * self.rho * np.log(u)
        lams[0], lams[-1] = lo, hi
        return check_grid(jnp.asarray(lams, dtype), "EDMGrid")


class ExplicitGrid(AbstractGrid):
    r"""Any grid: the given log-SNRs, increasing strictly from noise to data (`num_steps` = their number − 1).

    The schedule's range is not used.

    Args:
        lams: the $N + 1$ log-SNRs $\lambda_0 < \dots < \lambda_N$.
    """

    values: tuple[float, ...] = eqx.field(static=True)

    def __init__(self, lams: Sequence[float] | Float[ArrayLike, " M"]):
        values = np.asarray(lams, np.float64).ravel()
        if values.shape[0] < 2:
            raise ValueError(f"`lams` of ExplicitGrid must hold at least 2 log-SNRs; got {values}.")
        check_grid(jnp.asarray(values), "ExplicitGrid `lams`")
        self.values = tuple(float(v) for v in values)

    def lams(self, schedule: AbstractSchedule, num_steps: int, dtype=jnp.float32) -> Float[Array, " M"]:
        """The given grid."""
        del schedule
        if num_steps != len(self.values) - 1:
            raise ValueError(
                f"`num_steps` must be {len(self.values) - 1} for this ExplicitGrid of {len(self.values)} log-SNRs; "
                f"got {num_steps!r}."
            )
        return jnp.asarray(self.values, dtype)
