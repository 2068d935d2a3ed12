r"""The EDM stochastic sampler (Karras et al. 2022, Alg. 2), driven by a VP $\hat\epsilon$-denoiser."""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from .._types import Array, FloatScalarLike, PRNGKeyArray
from ._common import check_shape, check_steps, check_trained_range, float_dtype, prepare


def edm_sigmas(num_steps: int = 18, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> np.ndarray:
    r"""EDM's noise levels, $\sigma_N = 0$ and for $i < N$ (Karras et al. eq. 5).

    $\sigma_i = (\sigma_{max}^{1/\rho} + \tfrac{i}{N-1}(\sigma_{min}^{1/\rho} - \sigma_{max}^{1/\rho}))^\rho$.

    Returns a float64 NumPy array of length $N + 1$ (THEORY §7; Karras et al. eq. 5). For $N = 1$ the
    grid is $(\sigma_{max}, 0)$.
    """
    n = check_steps(num_steps)
    _check_sigmas(sigma_min, sigma_max, rho)
    a, b = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
    i = np.arange(n, dtype=np.float64)
    frac = i / (n - 1) if n > 1 else i
    return np.concatenate([(a + frac * (b - a)) ** rho, [0.0]])


def edm_gamma(num_steps: int, s_churn: float) -> float:
    r"""EDM's churn per step, $\gamma = \min(S_{churn}/N, \sqrt2 - 1)$, used where $\sigma_i \in [S_{min}, S_{max}]$."""
    n = check_steps(num_steps)
    if not (math.isfinite(s_churn) and s_churn >= 0):
        raise ValueError(f"`s_churn` must be finite and >= 0; got {s_churn}.")
    return min(s_churn / n, math.sqrt(2.0) - 1.0)


def _check_sigmas(sigma_min, sigma_max, rho):
    for name, v in (("sigma_min", sigma_min), ("sigma_max", sigma_max), ("rho", rho)):
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"`{name}` must be finite and positive; got {v}.")
    if not sigma_min < sigma_max:
        raise ValueError(f"`sigma_min` must be below `sigma_max`; got sigma_min={sigma_min}, sigma_max={sigma_max}.")


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
    label=None,
    null_label=None,
    guidance_scale: FloatScalarLike | None = None,
    trained_range: tuple | None = None,
    dtype=jnp.float32,
) -> tuple[Array, int]:
    r"""EDM's stochastic sampler (Karras et al. 2022, Alg. 2) with Euler steps and a Heun correction.

    Works in EDM's VE variables $x = z/\alpha$, $\sigma_{VE} = \sigma/\alpha = e^{-\lambda/2}$, so
    $\lambda = -2\log\sigma_{VE}$ and the VP denoiser gives
    $D(x;\sigma_{VE}) = x - \sigma_{VE}\,\hat\epsilon(\alpha x; \lambda)$. From $x_0 \sim N(0, \sigma_0^2 I)$,
    each step raises the noise to $\hat\sigma = (1 + \gamma_i)\sigma_i$ with fresh noise of std
    $S_{noise}\sqrt{\hat\sigma^2 - \sigma_i^2}$, $\gamma_i = \gamma$ when $\sigma_i \in [S_{min}, S_{max}]$ (else 0),
    takes an Euler step to $\sigma_{i+1}$ and corrects it with Heun's rule except on the last step
    (to $\sigma_N = 0$). NFE $= 2N - 1$.

    Args:
        denoiser: `(z, lam) -> eps_hat` on one example (VP).
        shape: `(num_samples, *data)`.
        key: PRNG key.
        num_steps: $N$.
        sigma_min, sigma_max, rho: the noise grid (`edm_sigmas`).
        s_churn, s_min, s_max, s_noise: stochasticity (`edm_gamma`); `s_churn=0` is deterministic.
        label, null_label, guidance_scale: classifier-free guidance (see `guided`).
        trained_range: `(lam_min, lam_max)` the model was trained on; warns if the grid exceeds it.
        dtype: float dtype of the samples.

    Returns:
        `(samples, nfe)`.
    """
    shape = check_shape(shape)
    sig = edm_sigmas(num_steps, sigma_min, sigma_max, rho)
    gamma = edm_gamma(num_steps, s_churn)
    dtype = float_dtype(dtype)
    if not (math.isfinite(s_noise) and s_noise >= 0):
        raise ValueError(f"`s_noise` must be finite and >= 0; got {s_noise}.")
    n = num_steps
    gammas = np.where((sig[:-1] >= s_min) & (sig[:-1] <= s_max), gamma, 0.0)
    top = float(np.max(sig[:-1] * (1 + gammas)))
    check_trained_range(-2 * math.log(top), -2 * math.log(sigma_min), trained_range, "edm")
    eps_fn, calls = prepare(denoiser, shape, dtype, label, null_label, guidance_scale)

    def d_of(x, s):
        # D(x; s) in VE coordinates from the VP eps-denoiser
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

    init_key, step_key = jr.split(key)
    keys = jr.split(step_key, n)
    sig_j = jnp.asarray(sig, dtype)
    gam_j = jnp.asarray(gammas, dtype)
    x = sig_j[0] * jr.normal(init_key, shape, dtype)
    if n > 1:
        x, _ = jax.lax.scan(heun_step, x, (sig_j[: n - 1], sig_j[1:n], gam_j[: n - 1], keys[: n - 1]))
    # last step: Euler to sigma_N = 0, i.e. x = D(x_hat; s_hat)
    x_hat, s_hat = churn(x, sig_j[n - 1], gam_j[n - 1], keys[n - 1])
    x = d_of(x_hat, s_hat)
    return x, (2 * n - 1) * calls
