r"""The ancestral (DDPM) sampler in $\lambda$-space (THEORY §7, K&G App. E.1)."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from .._types import Array, ArrayLike, Float, FloatScalarLike, PRNGKeyArray
from ..losses import decoder_logits
from ..process import vp_alpha_sigma, vp_log_alpha_sigma
from ..schedules import AbstractSchedule
from ._common import check_shape, check_steps, check_trained_range, float_dtype, prepare


def ancestral(
    denoiser: Callable,
    shape: tuple[int, ...],
    *,
    key: PRNGKeyArray,
    schedule: AbstractSchedule | None = None,
    num_steps: int | None = None,
    lams: Float[ArrayLike, " M"] | None = None,
    final_denoise: bool = True,
    num_levels: int | None = None,
    decode_argmax: bool = True,
    label=None,
    null_label=None,
    guidance_scale: FloatScalarLike | None = None,
    trained_range: tuple | None = None,
    dtype=jnp.float32,
) -> tuple[Array, int]:
    r"""Ancestral sampling from $q(z_s | z_t, x = \hat x(z_t))$ on the grid $t_k = k/N$ of `schedule`.

    Starts from $z_1 \sim N(0, I)$ at $\lambda_{min}$; each step $t \to s$ ($\lambda_s > \lambda_t$) is
    $c = -\mathrm{expm1}(\lambda_t - \lambda_s)$,
    $z_s = (\alpha_s/\alpha_t)(z_t - \sigma_t c\,\hat\epsilon(z_t;\lambda_t)) + \sigma_s\sqrt{c}\,\xi$
    (THEORY §7), down to $z_0$ at $\lambda_{max}$. Then either a final denoising step
    $\hat x = (z_0 - \sigma_0\hat\epsilon(z_0;\lambda_{max}))/\alpha_0$, or for discrete data
    (`num_levels`) the same factorised discretised decoder $p(x|z_0)$ that `elbo_bpd` uses.

    Args:
        denoiser: `(z, lam) -> eps_hat` on one example (wrap other parameterisations with
            `vdmpp.process.as_eps_denoiser`).
        shape: `(num_samples, *data)`.
        key: PRNG key.
        schedule: the sampling schedule; any schedule works (the denoiser is fed $\lambda$).
        num_steps: number of ancestral steps $N$.
        lams: instead of `schedule` and `num_steps`, any grid of log-SNRs, strictly increasing from
            $\lambda_{min}$ (where sampling starts) to $\lambda_{max}$; $N$ = `len(lams) - 1`.
        final_denoise: return $\hat x(z_0)$ (one more network call) instead of $z_0$.
        num_levels: decode to integer levels $\{0..L-1\}$ through the discretised decoder
            (no extra network call); `None` for continuous data.
        decode_argmax: with `num_levels`, take the decoder's mode (else sample it).
        label, null_label, guidance_scale: classifier-free guidance (see `guided`).
        trained_range: `(lam_min, lam_max)` the model was trained on; warns if the schedule exceeds it.
        dtype: float dtype of the samples.

    Returns:
        `(samples, nfe)`: samples of shape `shape` (int32 levels with `num_levels`), and the number of
        network calls per sample.
    """
    shape = check_shape(shape)
    dtype = float_dtype(dtype)
    if lams is None:
        if schedule is None or num_steps is None:
            raise ValueError("ancestral needs `schedule` and `num_steps` (or an explicit grid `lams`).")
        steps = check_steps(num_steps)
        check_trained_range(schedule.lam_min, schedule.lam_max, trained_range, "ancestral")
        lams = schedule.lam(jnp.arange(steps + 1, dtype=dtype) / steps)  # lams[0] = lam_max
    else:
        if schedule is not None or num_steps is not None:
            raise ValueError("Pass either `lams` or (`schedule`, `num_steps`) to ancestral, not both.")
        grid = np.asarray(lams, np.float64)
        if grid.ndim != 1 or grid.shape[0] < 2 or not np.all(np.diff(grid) > 0) or not np.all(np.isfinite(grid)):
            raise ValueError(
                f"`lams` must be a finite 1-D grid of at least 2 log-SNRs, strictly increasing from lam_min to "
                f"lam_max; got {grid}."
            )
        check_trained_range(float(grid[0]), float(grid[-1]), trained_range, "ancestral")
        steps = grid.shape[0] - 1
        lams = jnp.asarray(grid[::-1].copy(), dtype)  # lams[0] = lam_max
    eps_fn, calls = prepare(denoiser, shape, dtype, label, null_label, guidance_scale)

    init_key, step_key, dec_key = jr.split(key, 3)
    z = jr.normal(init_key, shape, dtype)

    def step(z, inp):
        lam_t, lam_s, k = inp
        log_a_t, log_s_t = vp_log_alpha_sigma(lam_t)
        log_a_s, log_s_s = vp_log_alpha_sigma(lam_s)
        c = -jnp.expm1(lam_t - lam_s)
        eps = eps_fn(z, lam_t)
        xi = jr.normal(k, shape, dtype)
        z = jnp.exp(log_a_s - log_a_t) * (z - jnp.exp(log_s_t) * c * eps) + jnp.exp(log_s_s) * jnp.sqrt(c) * xi
        return z, None

    # from t_N = 1 down to t_0 = 0
    keys = jr.split(step_key, steps)
    z, _ = jax.lax.scan(step, z, (lams[1:][::-1], lams[:-1][::-1], keys))
    lam0 = lams[0]
    nfe = steps * calls
    if num_levels is not None:
        # elementwise (scalar z's): decoder_logits broadcasts (..., 1) against (L,), which strict rank
        # promotion rejects for non-scalar inputs
        flat = jax.vmap(lambda zi: decoder_logits(zi, lam0, num_levels))(z.reshape(-1))
        logits = flat.reshape(*z.shape, num_levels)
        if decode_argmax:
            return jnp.argmax(logits, axis=-1).astype(jnp.int32), nfe
        return jr.categorical(dec_key, logits, axis=-1).astype(jnp.int32), nfe
    if final_denoise:
        alpha, sigma = vp_alpha_sigma(lam0)
        z = (z - sigma * eps_fn(z, lam0)) / alpha
        nfe += calls
    return z, nfe
