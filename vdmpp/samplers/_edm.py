r"""The EDM stochastic sampler (Karras et al. 2022, Alg. 2), driven by a VP $\hat\epsilon$-denoiser."""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from .._misc import check_finite, check_positive_int
from .._types import Array, PRNGKeyArray
from ..schedules import AbstractSchedule
from ._common import batched, check_shape, check_trained_range
from ._grids import AbstractGrid, EDMGrid
from ._sample import AbstractSampler


def edm_sigmas(num_steps: int = 18, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> np.ndarray:
    r"""EDM's noise levels, $\sigma_N = 0$ and for $i < N$ (Karras et al. eq. 5).

    $\sigma_i = (\sigma_{max}^{1/\rho} + \tfrac{i}{N-1}(\sigma_{min}^{1/\rho} - \sigma_{max}^{1/\rho}))^\rho$.

    Returns a float64 NumPy array of length $N + 1$ (THEORY §7; Karras et al. eq. 5). For $N = 1$ the
    grid is $(\sigma_{max}, 0)$.
    """
    n = check_positive_int(num_steps, "num_steps")
    _check_sigmas(sigma_min, sigma_max, rho)
    a, b = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
    i = np.arange(n, dtype=np.float64)
    frac = i / (n - 1) if n > 1 else i
    return np.concatenate([(a + frac * (b - a)) ** rho, [0.0]])


def edm_gamma(num_steps: int, s_churn: float) -> float:
    r"""EDM's churn per step, $\gamma = \min(S_{churn}/N, \sqrt2 - 1)$, used where $\sigma_i \in [S_{min}, S_{max}]$."""
    n = check_positive_int(num_steps, "num_steps")
    if not (math.isfinite(s_churn) and s_churn >= 0):
        raise ValueError(f"`s_churn` must be finite and >= 0; got {s_churn}.")
    return min(s_churn / n, math.sqrt(2.0) - 1.0)


def _check_sigmas(sigma_min, sigma_max, rho):
    for name, v in (("sigma_min", sigma_min), ("sigma_max", sigma_max), ("rho", rho)):
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"`{name}` must be finite and positive; got {v}.")
    if not sigma_min < sigma_max:
        raise ValueError(f"`sigma_min` must be below `sigma_max`; got sigma_min={sigma_min}, sigma_max={sigma_max}.")


def _solve(eps_fn: Callable, z: Array, sig: Array, gammas: Array, s_noise: float, final: bool, key) -> Array:
    r"""Heun steps between the VE noise levels `sig` (decreasing, positive) with churn; then $D$ if `final`.

    Works in EDM's variables $x = z/\alpha$, $\sigma_{VE} = e^{-\lambda/2}$:
    $D(x;\sigma_{VE}) = x - \sigma_{VE}\,\hat\epsilon(\alpha x; \lambda)$.
    """
    dtype, shape = z.dtype, z.shape

    def d_of(x, s):
        lam = -2.0 * jnp.log(s)
        alpha = jnp.sqrt(jax.nn.sigmoid(lam))
        return x - s * eps_fn(alpha * x, lam)

    def churn(x, s, g, k):
        s_hat = s * (1 + g)
        noise = jnp.sqrt(jnp.maximum(s_hat**2 - s**2, 0.0)) * s_noise * jr.normal(k, shape, dtype)
        return x + noise, s_hat

    def heun_step(x, inp):
        s, s_next, g, k = inp
        x_hat, s_hat = churn(x, s, g, k)
        d = (x_hat - d_of(x_hat, s_hat)) / s_hat
        x_next = x_hat + (s_next - s_hat) * d
        d2 = (x_next - d_of(x_next, s_next)) / s_next
        return x_hat + (s_next - s_hat) * (0.5 * d + 0.5 * d2), None

    m = sig.shape[0]
    keys = jr.split(key, m)
    x = z * jnp.sqrt(1.0 + sig[0] ** 2)  # x = z / alpha
    if m > 1:
        x, _ = jax.lax.scan(heun_step, x, (sig[:-1], sig[1:], gammas[:-1], keys[:-1]))
    if final:  # EDM's last step: Euler to sigma = 0, i.e. x = D(x_hat; s_hat)
        x_hat, s_hat = churn(x, sig[-1], gammas[-1], keys[-1])
        return d_of(x_hat, s_hat)
    return x / jnp.sqrt(1.0 + sig[-1] ** 2)  # back to z = alpha x


class EDM(AbstractSampler):
    r"""EDM's stochastic sampler (Karras et al. 2022, Alg. 2): Heun steps with churn, on any grid.

    Each step raises the noise to $\hat\sigma = (1 + \gamma)\sigma_i$ with fresh noise of std
    $S_{noise}\sqrt{\hat\sigma^2 - \sigma_i^2}$ ($\gamma = \min(S_{churn}/N, \sqrt2 - 1)$ where
    $\sigma_i \in [S_{min}, S_{max}]$, else 0; $N$ counts the final denoising step), then takes a Heun
    step to $\sigma_{i+1}$ (2 evaluations). With `final_denoise` (EDM's last step to $\sigma = 0$) it ends
    with $D(\hat x; \hat\sigma)$ at $\lambda_{max}$: $2N + 1$ evaluations. The default grid is EDM's
    $\rho$-grid on the schedule's $[\lambda_{min}, \lambda_{max}]$, i.e. $\sigma_{max} = e^{-\lambda_{min}/2}$,
    $\sigma_{min} = e^{-\lambda_{max}/2}$ (EDM's 80 and 0.002: `vd.schedules.EDMSampling()`).
    EDM with $N$ steps in the paper is `EDM()` with `num_steps` $= N - 1$.

    Args:
        grid: the log-SNR grid.
        s_churn, s_min, s_max, s_noise: stochasticity; `s_churn=0` is deterministic.
        final_denoise: end with EDM's Euler step to $\sigma = 0$ (one evaluation) instead of $z$ at $\lambda_{max}$.
    """

    grid: AbstractGrid = EDMGrid()
    s_churn: float = 0.0
    s_min: float = 0.0
    s_max: float = float("inf")
    s_noise: float = 1.0
    final_denoise: bool = True

    def __check_init__(self):
        for name in ("s_churn", "s_noise"):
            v = getattr(self, name)
            check_finite(v, name, "EDM")
            if not v >= 0:
                raise ValueError(f"`{name}` of EDM must be >= 0; got {v}.")
        if not self.s_min <= self.s_max:
            raise ValueError(f"`s_min` of EDM must be <= `s_max`; got s_min={self.s_min}, s_max={self.s_max}.")

    def num_evals(self, num_steps: int) -> int:
        """$2N$, plus one for `final_denoise`."""
        return 2 * num_steps + int(self.final_denoise)

    def run(
        self, eps_fn: Callable, z: Array, *, key: PRNGKeyArray, schedule: AbstractSchedule, num_steps: int
    ) -> Array:
        """EDM's Heun steps along the grid."""
        sig = jnp.exp(-0.5 * self.grid.lams(schedule, num_steps, z.dtype))
        gamma = min(self.s_churn / (num_steps + int(self.final_denoise)), math.sqrt(2.0) - 1.0)
        gammas = jnp.where((sig >= self.s_min) & (sig <= self.s_max), gamma, 0.0).astype(z.dtype)
        return _solve(eps_fn, z, sig, gammas, self.s_noise, self.final_denoise, key)


def edm(
    denoiser: Callable,
    shape: tuple[int, ...],
    *,
    key: PRNGKeyArray,
    num_steps: int = 18,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    s_churn: float = 0.0,
    s_min: float = 0.0,
    s_max: float = float("inf"),
    s_noise: float = 1.0,
    trained_range: tuple | None = None,
) -> tuple[Array, int]:
    r"""EDM's sampler as published: $N$ steps on `edm_sigmas(N, sigma_min, sigma_max, rho)`, $2N - 1$ calls.

    The same as `sample(EDM(grid=EDMGrid(rho), ...), ..., num_steps=N - 1)` on a schedule whose range is
    $[-2\log\sigma_{max}, -2\log\sigma_{min}]$ (and defined for $N = 1$ too). Prefer `EDM` with your
    sampling schedule: its noise range then follows the schedule.

    Args:
        denoiser: `(z, lam) -> eps_hat` on one example (VP).
        shape: `(num_samples, *data)`.
        key: PRNG key.
        num_steps: $N$.
        sigma_min, sigma_max, rho: the noise grid (`edm_sigmas`).
        s_churn, s_min, s_max, s_noise: stochasticity (`edm_gamma`); `s_churn=0` is deterministic.
        trained_range: `(lam_min, lam_max)` the model was trained on; warns if the grid exceeds it.

    Returns:
        `(samples, nfe)` with `nfe` $= 2N - 1$, a Python int.
    """
    shape = check_shape(shape)
    sig = edm_sigmas(num_steps, sigma_min, sigma_max, rho)[:-1]
    gamma = edm_gamma(num_steps, s_churn)
    if not (math.isfinite(s_noise) and s_noise >= 0):
        raise ValueError(f"`s_noise` must be finite and >= 0; got {s_noise}.")
    gammas = np.where((sig >= s_min) & (sig <= s_max), gamma, 0.0)
    top = float(np.max(sig * (1 + gammas)))
    check_trained_range(-2 * math.log(top), -2 * math.log(sigma_min), trained_range, "edm")
    init_key, run_key = jr.split(key)
    z = jr.normal(init_key, shape, jnp.float32)
    eps_fn, calls = batched(denoiser, shape, z.dtype)
    x = _solve(eps_fn, z, jnp.asarray(sig, z.dtype), jnp.asarray(gammas, z.dtype), s_noise, True, run_key)
    return x, (2 * num_steps - 1) * calls
