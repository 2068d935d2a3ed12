r"""Exponential integrators in $\rho = \lambda/2$: DDIM and DPM-Solver++(1/2/3M), ODE and SDE (THEORY §11).

From $t$ (noisier) to $s$, $h = \rho_s - \rho_t > 0$, data prediction $D = \hat x(z, \lambda)$. With
$\eta \ge 0$ and $h_\eta = (1 + \eta)h$, one step is

$z_s = \tfrac{\sigma_s}{\sigma_t} e^{-\eta h} z_t + \alpha_s[(1 - e^{-h_\eta}) D_t + \varphi_2(h_\eta)\,d_1
- 2\varphi_3(h_\eta)\,d_2] + \sigma_s\sqrt{1 - e^{-2\eta h}}\,\xi$,

with $d_1 \approx hD'$, $d_2 \approx h^2D''/2$ from the previous data predictions (zero below third
order; the second-order step folds $d_1$ into $D$ as DPM-Solver++(2M) does). The factor 2 on $\varphi_3$
is the Taylor coefficient (THEORY §11); the published DPM-Solver++(3M) code uses 1, which
tests/test_exponential.py shows to be only second order (the float64 convergence test).
"""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from .._misc import check_finite, is_int
from .._types import Array, FloatLike, PRNGKeyArray
from ..process import vp_log_alpha_sigma
from ..schedules import AbstractSchedule
from ._ancestral import denoise, step_keys
from ._grids import AbstractGrid, UniformTime
from ._sample import AbstractSampler


_SERIES_BELOW = 1.0  # h below which phi_2, phi_3 use their Taylor series (float32-safe; see phi_3)
_TERMS = 12  # series terms: truncation error < 1e-9 relative for h < 1


def _series(h: Array, offset: int) -> Array:
    r"""$\sum_{j \ge 1} (-h)^j/(j + \text{offset})!$ by Horner's rule, `_TERMS` terms."""
    acc = jnp.zeros_like(h)
    for j in range(_TERMS, 0, -1):
        acc = (acc + 1.0 / math.factorial(j + offset)) * (-h)
    return acc


def phi_1(h: FloatLike) -> Array:
    r"""$1 - e^{-h}$ (`-expm1(-h)`)."""
    return -jnp.expm1(-jnp.asarray(h))


def phi_2(h: FloatLike) -> Array:
    r"""$\varphi_2(h) = (e^{-h} - 1)/h + 1 = h/2 - h^2/6 + \dots$ (THEORY §11); a series below $h = 1$."""
    h = jnp.asarray(h)
    small = jnp.abs(h) < _SERIES_BELOW
    hs = jnp.where(small, jnp.ones_like(h), h)
    return jnp.where(small, -_series(h, 1), jnp.expm1(-hs) / hs + 1)


def phi_3(h: FloatLike) -> Array:
    r"""$\varphi_3(h) = \varphi_2(h)/h - 1/2 = -h/6 + h^2/24 - \dots$ (THEORY §11); a series below $h = 1$.

    In closed form $\varphi_3$ cancels catastrophically: float32 loses about $\epsilon/h^2$ relative, so the
    series takes over below $h = 1$ (tests/test_exponential.py checks both against 50-digit arithmetic).
    """
    h = jnp.asarray(h)
    small = jnp.abs(h) < _SERIES_BELOW
    hs = jnp.where(small, jnp.ones_like(h), h)
    return jnp.where(small, _series(h, 2), (jnp.expm1(-hs) / hs + 1) / hs - 0.5)


def _check_eta(eta, owner: str) -> float:
    check_finite(eta, "eta", owner)
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or eta < 0:
        raise ValueError(f"`eta` of {owner} must be a float >= 0 (0: the ODE, 1: ancestral noise); got {eta!r}.")
    return float(eta)


def _check_clip(clip, owner: str) -> None:
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float)) or not clip > 0):
        raise ValueError(f"`clip_denoised` of {owner} must be a positive number or None; got {clip!r}.")
    if clip is not None and not np.isfinite(clip):
        raise ValueError(f"`clip_denoised` of {owner} must be finite (None: no clipping); got {clip!r}.")


def _final(eps_fn: Callable, z: Array, lam: Array, clip: float | None) -> Array:
    x = denoise(eps_fn, z, lam)
    return x if clip is None else jnp.clip(x, -clip, clip)


def _step_orders(order: int, num_steps: int, lower_order_final: bool) -> np.ndarray:
    """Order per step: warm-up from 1; with `lower_order_final` below 15 steps, the last steps drop too."""
    k = np.arange(num_steps)
    orders = np.minimum(order, k + 1)
    if lower_order_final and num_steps < 15:
        orders = np.minimum(orders, num_steps - k)
    return orders.astype(np.int32)


def _integrate(
    eps_fn: Callable, z: Array, lams: Array, orders: np.ndarray, eta: float, key: PRNGKeyArray, clip: float | None
) -> Array:
    r"""The multistep exponential integrator on the grid `lams` (increasing), one evaluation per step; `clip`
    bounds the data prediction $\hat x$ to $[-clip, clip]$ (None: exact)."""
    n = orders.shape[0]
    dtype = z.dtype

    def step(carry, inp):
        z, d_p, d_pp, h_p, h_pp = carry
        lam_t, lam_s, order, k = inp
        log_a_t, log_s_t = vp_log_alpha_sigma(lam_t)
        log_a_s, log_s_s = vp_log_alpha_sigma(lam_s)
        h = 0.5 * (lam_s - lam_t)
        h_eta = (1.0 + eta) * h
        d_t = (z - jnp.exp(log_s_t) * eps_fn(z, lam_t)) * jnp.exp(-log_a_t)
        if clip is not None:
            d_t = jnp.clip(d_t, -clip, clip)
        # ratios of the previous steps to this one (1 where there is no history: the coefficient is then 0)
        r0 = jnp.where(order >= 2, h_p / h, 1.0)
        r1 = jnp.where(order >= 3, h_pp / h, 1.0)
        # order 2 (2M): D = (1 + 1/(2 r)) D_t - D_p/(2 r)
        d_2m = d_t + (d_t - d_p) / (2.0 * r0)
        # order 3 (3M)
        d1_0 = (d_t - d_p) / r0
        d1_1 = (d_p - d_pp) / r1
        d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
        d2 = (d1_0 - d1_1) / (r0 + r1)
        extra3 = phi_2(h_eta) * d1 - 2.0 * phi_3(h_eta) * d2
        d_main = jnp.where(order == 2, d_2m, d_t)
        extra = jnp.where(order == 3, extra3, jnp.zeros_like(extra3))
        z_new = jnp.exp(log_s_s - log_s_t - eta * h) * z + jnp.exp(log_a_s) * (phi_1(h_eta) * d_main + extra)
        if eta > 0:
            noise_scale = jnp.exp(log_s_s) * jnp.sqrt(-jnp.expm1(-2.0 * eta * h))
            z_new = z_new + noise_scale * jr.normal(k, z.shape, dtype)
        return (z_new, d_t, d_p, h, h_p), None

    zero = jnp.zeros_like(z)
    one = jnp.ones((), dtype)
    inputs = (lams[:-1], lams[1:], jnp.asarray(orders), step_keys(key, n))
    (z, *_), _ = jax.lax.scan(step, (z, zero, zero, one, one), inputs)
    return z


class DPMSolverPP(AbstractSampler):
    r"""DPM-Solver++ (Lu et al. 2022, arXiv:2211.01095): multistep exponential integrator, orders 1–3.

    One denoiser evaluation per step; the first steps warm up (orders 1, 2, … as history allows). With
    `eta` > 0 it is the SDE variant (THEORY §11): $\eta = 1$ at order 1 is the ancestral sampler, and any
    $\eta$ leaves the marginals exact in the limit of small steps. Float32-safe ($\varphi$'s by `expm1`
    and series).

    Args:
        order: 1 (DDIM), 2 (2M) or 3 (3M).
        eta: noise level $\eta \ge 0$ (0: the probability-flow ODE).
        lower_order_final: below 15 steps, the last steps drop to order 1 (and 2), which is more
            stable with few steps (as DPM-Solver and diffusers do).
        grid: the log-SNR grid (default: uniform in the schedule's time; `UniformLogSNR()` is
            DPM-Solver's own).
        final_denoise: end with $\hat x(z)$ at $\lambda_{max}$ (one more evaluation) instead of $z$.
        clip_denoised: clip each data prediction $\hat x$ to $[-c, c]$ (DDPM's and diffusers' `clip_sample`;
            1.0 is the range of vdmpp's scaled data). It keeps a network's large $\hat x$ errors at low
            SNR (an $\hat\epsilon$ error $e$ gives an $\hat x$ error $e\,\sigma/\alpha$) from derailing the
            deterministic solvers; None (default) solves the exact ODE/SDE.
    """

    order: int = 2
    eta: float = 0.0
    lower_order_final: bool = True
    grid: AbstractGrid = UniformTime()
    final_denoise: bool = False
    clip_denoised: float | None = None

    def __check_init__(self):
        _check_clip(self.clip_denoised, "DPMSolverPP")
        if not is_int(self.order) or self.order not in (1, 2, 3):
            raise ValueError(f"`order` of DPMSolverPP must be 1, 2 or 3; got {self.order!r}.")
        _check_eta(self.eta, "DPMSolverPP")

    def num_evals(self, num_steps: int) -> int:
        """$N$ (at least `order`), plus one for `final_denoise`."""
        if num_steps < self.order:
            raise ValueError(
                f"`num_steps`={num_steps} is fewer than DPMSolverPP's `order`={self.order}: the multistep solver "
                f"needs at least {self.order} steps; pass num_steps >= {self.order} or a lower order."
            )
        return num_steps + int(self.final_denoise)

    def run(
        self, eps_fn: Callable, z: Array, *, key: PRNGKeyArray, schedule: AbstractSchedule, num_steps: int
    ) -> Array:
        """Multistep DPM-Solver++ along the grid."""
        lams = self.grid.lams(schedule, num_steps, z.dtype)
        orders = _step_orders(self.order, num_steps, self.lower_order_final)
        z = _integrate(eps_fn, z, lams, orders, float(self.eta), key, self.clip_denoised)
        return _final(eps_fn, z, lams[-1], self.clip_denoised) if self.final_denoise else z


class DDIM(AbstractSampler):
    r"""DDIM (Song et al. 2021): the first-order exponential integrator, $z_s = \tfrac{\sigma_s}{\sigma_t}e^{-\eta h}z_t
    + \alpha_s(1 - e^{-(1+\eta)h})\hat x + \sigma_s\sqrt{1 - e^{-2\eta h}}\,\xi$ (THEORY §11).

    `eta` is THEORY §11's (k-diffusion's) noise level: $\eta = 0$ is deterministic DDIM and $\eta = 1$
    DDPM ancestral sampling, as in Song et al.; between them the two parametrisations differ.

    Args:
        eta: $\eta \ge 0$.
        grid: the log-SNR grid (default: uniform in the schedule's time).
        final_denoise: end with $\hat x(z)$ at $\lambda_{max}$ (one more evaluation) instead of $z$.
        clip_denoised: clip each data prediction $\hat x$ to $[-c, c]$ (DDPM's and diffusers' `clip_sample`;
            1.0 is the range of vdmpp's scaled data). It keeps a network's large $\hat x$ errors at low
            SNR (an $\hat\epsilon$ error $e$ gives an $\hat x$ error $e\,\sigma/\alpha$) from derailing the
            deterministic solvers; None (default) solves the exact ODE/SDE.
    """

    eta: float = 0.0
    grid: AbstractGrid = UniformTime()
    final_denoise: bool = False
    clip_denoised: float | None = None

    def __check_init__(self):
        _check_eta(self.eta, "DDIM")
        _check_clip(self.clip_denoised, "DDIM")

    def num_evals(self, num_steps: int) -> int:
        """$N$, plus one for `final_denoise`."""
        return num_steps + int(self.final_denoise)

    def run(
        self, eps_fn: Callable, z: Array, *, key: PRNGKeyArray, schedule: AbstractSchedule, num_steps: int
    ) -> Array:
        """DDIM steps along the grid."""
        lams = self.grid.lams(schedule, num_steps, z.dtype)
        z = _integrate(eps_fn, z, lams, np.ones(num_steps, np.int32), float(self.eta), key, self.clip_denoised)
        return _final(eps_fn, z, lams[-1], self.clip_denoised) if self.final_denoise else z
