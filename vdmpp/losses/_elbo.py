r"""The full $-$ELBO of 8-bit (or $L$-level) data in bits per dimension (VDM; THEORY §6).

Prior KL at $\lambda_{min}$, the factorised discretised decoder $p(x|z_0)$ at $\lambda_{max}$, and the
diffusion loss $L_\infty$ (the weighted loss with $w \equiv 1$) between them.
"""

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from .._misc import check_batch_shape, concrete, error_if, is_int
from .._types import Array, Float, PRNGKeyArray, Shaped
from ..process import vp_alpha_sigma
from ..schedules import AbstractSchedule, AbstractTimeSampler, LowDiscrepancy
from ..weighting import ELBO
from ._weighted import weighted_loss


def uint8_to_float(x: Shaped[Array, "*shape"], num_levels: int = 256) -> Float[Array, "*shape"]:
    r"""Map integer levels $v \in \{0..L-1\}$ to the bin centres $f(v) = 2(v + \tfrac12)/L - 1 \in (-1, 1)$."""
    return 2.0 * (jnp.asarray(x).astype(jnp.float32) + 0.5) / num_levels - 1.0


def prior_kl(x: Float[Array, "*data"], lam_min: float | Array) -> Float[Array, ""]:
    r"""$KL(q(z_1|x)\,\|\,N(0, I)) = \tfrac12\sum_d(\sigma_1^2 + \alpha_1^2 x_d^2 - 1 - \log\sigma_1^2)$ in nats.

    Written as $\tfrac12\sum_d(\alpha_1^2(x_d^2 - 1) + \mathrm{softplus}(\lambda_{min}))$, stable for any $\lambda$.
    """
    lam = jnp.asarray(lam_min, x.dtype)
    alpha2 = jax.nn.sigmoid(lam)
    return 0.5 * jnp.sum(alpha2 * (x**2 - 1.0) + jax.nn.softplus(lam))


def decoder_logits(z0: Float[Array, "*data"], lam_max: float | Array, num_levels: int) -> Float[Array, "*data levels"]:
    r"""Logits of the factorised discretised decoder (VDM; THEORY §6).

    $p(x_d = v|z_0) \propto \exp(-\tfrac12 e^{\lambda}(z_0/\alpha_0 - f(v))^2)$ over the levels $v$.
    """
    lam = jnp.asarray(lam_max, z0.dtype)
    alpha, _ = vp_alpha_sigma(lam)
    centres = uint8_to_float(jnp.arange(num_levels), num_levels).astype(z0.dtype)
    diff = (z0 / alpha)[..., None] - centres.reshape((1,) * z0.ndim + (num_levels,))  # explicit rank (strict promotion)
    return -0.5 * jnp.exp(lam) * diff**2


def reconstruction_nll(
    x_int: Shaped[Array, "*data"], eps0: Float[Array, "*data"], lam_max: float | Array, num_levels: int
) -> Float[Array, ""]:
    r"""$-\log p(x|z_0)$ in nats for $z_0 = \alpha_0 f(x) + \sigma_0\epsilon_0$ (VDM's decoder)."""
    x = uint8_to_float(x_int, num_levels).astype(eps0.dtype)
    alpha, sigma = vp_alpha_sigma(jnp.asarray(lam_max, eps0.dtype))
    z0 = alpha * x + sigma * eps0
    logp = jax.nn.log_softmax(decoder_logits(z0, lam_max, num_levels), axis=-1)
    idx = jnp.asarray(x_int).astype(jnp.int32)[..., None]
    return -jnp.sum(jnp.take_along_axis(logp, idx, axis=-1))


class ElboTerms(eqx.Module):
    """Per-example terms of the $-$ELBO, in nats.

    Attributes:
        prior: $KL(q(z_1|x)\\|p(z_1))$.
        reconstruction: $-E\\log p(x|z_0)$ (one-sample estimate).
        diffusion: $L_\\infty$, the weighted loss with $w \\equiv 1$ (one-sample estimate).
    """

    prior: Float[Array, " batch"]
    reconstruction: Float[Array, " batch"]
    diffusion: Float[Array, " batch"]

    @property
    def total(self) -> Float[Array, " batch"]:
        """The $-$ELBO in nats."""
        return self.prior + self.reconstruction + self.diffusion


def _check_levels(x_int, num_levels: int) -> Array:
    if not is_int(num_levels) or num_levels < 2:
        raise ValueError(f"`num_levels` must be an integer >= 2; got {num_levels!r}.")
    if not jnp.issubdtype(jnp.asarray(x_int).dtype, jnp.integer):
        raise TypeError(
            f"`x_uint8` must hold integer levels (e.g. uint8); got dtype {jnp.asarray(x_int).dtype}. "
            "Pass the raw integer data; the loss does the scaling."
        )
    check_batch_shape(x_int, "x_uint8")
    values = concrete(x_int)
    if values is not None:
        lo, hi = int(values.min()), int(values.max())
        x_int = jnp.asarray(x_int)
        if lo < 0 or hi >= num_levels:
            raise ValueError(
                f"`x_uint8` values must lie in [0, {num_levels - 1}] for num_levels={num_levels}; "
                f"got values in [{lo}, {hi}]. Set `num_levels` to the data's number of levels."
            )
    else:
        wide = x_int.astype(jnp.int32)  # compare in int32: uint8 cannot hold num_levels = 256
        x_int = error_if(x_int, (wide < 0) | (wide >= num_levels), "`x_uint8` values outside [0, num_levels).")
    return x_int


def elbo_terms(
    denoiser: Callable,
    x_uint8: Shaped[Array, " batch *data"],
    *,
    key: PRNGKeyArray,
    schedule: AbstractSchedule,
    num_levels: int = 256,
    time_sampler: AbstractTimeSampler = LowDiscrepancy(),
) -> ElboTerms:
    r"""The three terms of the $-$ELBO for discrete data (VDM; THEORY §6), per example, in nats.

    Prior KL at $\lambda_{min}$, reconstruction with the factorised discretised decoder at
    $\lambda_{max}$, and the diffusion loss $L_\infty$ between them (estimated through `schedule`).
    """
    x_int = _check_levels(x_uint8, num_levels)
    x = uint8_to_float(x_int, num_levels)
    dkey, rkey = jr.split(key)
    diffusion = weighted_loss(denoiser, x, key=dkey, schedule=schedule, weighting=ELBO(), time_sampler=time_sampler)
    eps0 = jr.normal(rkey, x.shape, x.dtype)
    recon = jax.vmap(lambda xi, ei: reconstruction_nll(xi, ei, schedule.lam_max, num_levels))(x_int, eps0)
    prior = jax.vmap(lambda xi: prior_kl(xi, schedule.lam_min))(x)
    return ElboTerms(prior=prior, reconstruction=recon, diffusion=diffusion)


def elbo_bpd(
    denoiser: Callable,
    x_uint8: Shaped[Array, " batch *data"],
    *,
    key: PRNGKeyArray,
    schedule: AbstractSchedule,
    num_levels: int = 256,
    time_sampler: AbstractTimeSampler = LowDiscrepancy(),
) -> Float[Array, " batch"]:
    r"""The $-$ELBO in bits per dimension, per example: (prior + reconstruction + $L_\infty$)$/(D\ln 2)$.

    Traced under `jax.default_matmul_precision("highest")` (THEORY §15: the high-λ integrand sets the fine
    bits; on TPUs float32 matmuls otherwise run as bfloat16 passes). A network computing in bfloat16
    (`vdmpp.nn.Precision`) keeps its bfloat16 matmuls.

    Args:
        denoiser: `(z, lam) -> eps_hat` on one example.
        x_uint8: integer data in $\{0..L-1\}$, shape `(batch, *data)`.
        key: PRNG key.
        schedule: the schedule whose `lam_min`/`lam_max` bound the diffusion (and which samples $\lambda$).
        num_levels: $L$, the number of levels (256 for 8-bit images, 17 for scikit-learn digits).
        time_sampler: time sampler for the diffusion term.

    Raises:
        TypeError: if `x_uint8` is not integer.
        ValueError: if `x_uint8` has no batch axis or values outside $[0, L)$.
    """
    with jax.default_matmul_precision("highest"):  # THEORY §15: float32 matmuls stay float32 on TPUs
        terms = elbo_terms(
            denoiser, x_uint8, key=key, schedule=schedule, num_levels=num_levels, time_sampler=time_sampler
        )
    dims = math.prod(jnp.shape(x_uint8)[1:])
    return terms.total / (dims * math.log(2.0))
