r"""The ancestral (DDPM) sampler in $\lambda$-space (THEORY §7, K&G App. E.1)."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from .._misc import check_positive_int
from .._types import Array, ArrayLike, Float, PRNGKeyArray
from ..losses import decoder_logits
from ..process import vp_alpha_sigma, vp_log_alpha_sigma
from ..schedules import AbstractSchedule, LinearLogSNR
from ._common import check_shape, check_trained_range
from ._grids import AbstractGrid, ExplicitGrid, UniformTime
from ._sample import AbstractSampler, sample


def denoise(eps_fn: Callable, z: Array, lam: Array) -> Array:
    r"""$\hat x = (z - \sigma\hat\epsilon(z;\lambda))/\alpha$: one more evaluation."""
    alpha, sigma = vp_alpha_sigma(lam)
    return (z - sigma * eps_fn(z, lam)) / alpha


def step_keys(key: PRNGKeyArray, num_steps: int) -> Array:
    """The per-step noise keys every stochastic λ-grid sampler uses (step k draws with key k)."""
    return jr.split(key, num_steps)


class Ancestral(AbstractSampler):
    r"""Ancestral sampling from $q(z_s | z_t, x = \hat x(z_t))$ on a grid (THEORY §7).

    Each step $t \to s$ ($\lambda_s > \lambda_t$) is $c = -\mathrm{expm1}(\lambda_t - \lambda_s)$,
    $z_s = (\alpha_s/\alpha_t)(z_t - \sigma_t c\,\hat\epsilon(z_t;\lambda_t)) + \sigma_s\sqrt{c}\,\xi$, from
    $\lambda_{min}$ up to $\lambda_{max}$; then optionally $\hat x(z)$ at $\lambda_{max}$, or for discrete data
    (`num_levels`) the factorised discretised decoder $p(x|z_0)$ that `elbo_bpd` uses. It is
    `DDIM(eta=1.0)` (THEORY §11) written in $\hat\epsilon$; both draw step $k$'s noise with the same key.

    Args:
        grid: the log-SNR grid (default: uniform in the schedule's time).
        final_denoise: end with $\hat x(z)$ at $\lambda_{max}$ (one more evaluation) instead of $z$.
        num_levels: decode to integer levels $\{0..L-1\}$ through the discretised decoder (no extra
            evaluation; returns int32); `None` for continuous data.
        decode_argmax: with `num_levels`, take the decoder's mode (else sample it).
    """

    grid: AbstractGrid = UniformTime()
    final_denoise: bool = False
    num_levels: int | None = None
    decode_argmax: bool = True

    def __check_init__(self):
        if self.num_levels is not None:
            check_positive_int(self.num_levels, "num_levels")
            if self.final_denoise:
                raise ValueError("Ancestral: pass either `num_levels` (decode) or `final_denoise=True`, not both.")

    def num_evals(self, num_steps: int) -> int:
        """$N$, plus one for `final_denoise`."""
        return num_steps + int(self.final_denoise)

    def run(
        self, eps_fn: Callable, z: Array, *, key: PRNGKeyArray, schedule: AbstractSchedule, num_steps: int
    ) -> Array:
        """Ancestral steps along the grid."""
        lams = self.grid.lams(schedule, num_steps, z.dtype)

        def step(z, inp):
            lam_t, lam_s, k = inp
            log_a_t, log_s_t = vp_log_alpha_sigma(lam_t)
            log_a_s, log_s_s = vp_log_alpha_sigma(lam_s)
            c = -jnp.expm1(lam_t - lam_s)
            eps = eps_fn(z, lam_t)
            xi = jr.normal(k, z.shape, z.dtype)
            z = jnp.exp(log_a_s - log_a_t) * (z - jnp.exp(log_s_t) * c * eps) + jnp.exp(log_s_s) * jnp.sqrt(c) * xi
            return z, None

        z, _ = jax.lax.scan(step, z, (lams[:-1], lams[1:], step_keys(key, num_steps)))
        lam_hi = lams[-1]
        levels = self.num_levels
        if levels is not None:
            # elementwise (scalar z's): decoder_logits broadcasts (..., 1) against (L,), which strict rank
            # promotion rejects for non-scalar inputs
            flat = jax.vmap(lambda zi: decoder_logits(zi, lam_hi, levels))(z.reshape(-1))
            logits = flat.reshape(*z.shape, levels)
            if self.decode_argmax:
                return jnp.argmax(logits, axis=-1).astype(jnp.int32)
            return jr.categorical(jr.fold_in(key, num_steps), logits, axis=-1).astype(jnp.int32)
        if self.final_denoise:
            z = denoise(eps_fn, z, lam_hi)
        return z


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
    trained_range: tuple | None = None,
) -> tuple[Array, int]:
    r"""`sample(Ancestral(...), ...)` on the grid uniform in the schedule's time, or on explicit log-SNRs.

    Args:
        denoiser: `(z, lam) -> eps_hat` on one example.
        shape: `(num_samples, *data)`.
        key: PRNG key.
        schedule: the sampling schedule; any schedule works (the denoiser is fed $\lambda$).
        num_steps: number of ancestral steps $N$.
        lams: instead of `schedule` and `num_steps`, any grid of log-SNRs, strictly increasing from
            $\lambda_{min}$ (where sampling starts) to $\lambda_{max}$; $N$ = `len(lams) - 1`.
        final_denoise: return $\hat x(z_0)$ (one more network call) instead of $z_0$ (ignored with `num_levels`).
        num_levels: decode to integer levels $\{0..L-1\}$ (see `Ancestral`).
        decode_argmax: with `num_levels`, take the decoder's mode (else sample it).
        trained_range: `(lam_min, lam_max)` the model was trained on; warns if the grid exceeds it.

    Returns:
        `(samples, nfe)` with `nfe` a Python int.
    """
    shape = check_shape(shape)
    if lams is None:
        if schedule is None or num_steps is None:
            raise ValueError("ancestral needs `schedule` and `num_steps` (or an explicit grid `lams`).")
        grid: AbstractGrid = UniformTime()
        check_trained_range(schedule.lam_min, schedule.lam_max, trained_range, "ancestral")
    else:
        if schedule is not None or num_steps is not None:
            raise ValueError("Pass either `lams` or (`schedule`, `num_steps`) to ancestral, not both.")
        values = np.asarray(lams, np.float64)
        if values.ndim != 1 or values.shape[0] < 2 or not np.all(np.diff(values) > 0):
            raise ValueError(
                f"`lams` must be a finite 1-D grid of at least 2 log-SNRs, strictly increasing from lam_min to "
                f"lam_max; got {values}."
            )
        grid = ExplicitGrid(values)
        check_trained_range(float(values[0]), float(values[-1]), trained_range, "ancestral")
        num_steps = values.shape[0] - 1
        schedule = LinearLogSNR(float(values[0]), float(values[-1]))  # unused by an explicit grid
    sampler = Ancestral(
        grid=grid,
        final_denoise=final_denoise and num_levels is None,
        num_levels=num_levels,
        decode_argmax=decode_argmax,
    )
    assert num_steps is not None
    return sample(sampler, denoiser, shape, key=key, schedule=schedule, num_steps=num_steps)
