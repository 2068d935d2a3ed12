r"""The weighted diffusion loss (K&G eq. 5–7), the discrete-time loss and the ELBO in bits/dim.

Every stochastic loss has a deterministic core taking its random draws explicitly (`*_at`); the
key-taking function draws them and calls it. Denoisers are callables on ONE example,
`(z, lam) -> eps_hat`; wrap other parameterisations with `vdmpp.process.as_eps_denoiser`.
"""

import abc
import functools as ft
import math
from collections.abc import Callable
from typing import Any, cast

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from ._misc import check_positive_int, concrete
from ._types import Array, Float, Int, PRNGKeyArray, Shaped
from .process import vp_alpha_sigma
from .schedules import AbstractSchedule
from .weighting import AbstractWeighting, ELBO


# --- time samplers (THEORY §6) --------------------------------------------------------------


class AbstractTimeSampler(eqx.Module):
    """Draws a batch of times $t \\in [0, 1)$ whose marginals are each $U(0, 1)$."""

    @abc.abstractmethod
    def __call__(self, key: PRNGKeyArray, n: int, dtype=jnp.float32) -> Float[Array, " n"]:
        """Return `n` times."""


class LowDiscrepancy(AbstractTimeSampler):
    r"""VDM's low-discrepancy sampler: one $u \sim U(0,1)$, $t_i = (u + i/B) \bmod 1$."""

    def __call__(self, key, n, dtype=jnp.float32):
        """Return `n` evenly spaced times with a random offset."""
        u = jr.uniform(key, (), dtype)
        return jnp.mod(u + jnp.arange(n, dtype=dtype) / n, 1.0)


class Stratified(AbstractTimeSampler):
    r"""Stratified sampler: $t_i = (i + u_i)/B$ with independent $u_i \sim U(0,1)$."""

    def __call__(self, key, n, dtype=jnp.float32):
        """Return one time per stratum."""
        return (jnp.arange(n, dtype=dtype) + jr.uniform(key, (n,), dtype)) / n


class IID(AbstractTimeSampler):
    r"""Independent $t_i \sim U(0, 1)$."""

    def __call__(self, key, n, dtype=jnp.float32):
        """Return `n` i.i.d. uniform times."""
        return jr.uniform(key, (n,), dtype)


# --- the weighted loss (K&G eq. 5-7) ----------------------------------------------------------


class WeightedLossAux(eqx.Module):
    r"""Per-example by-products of `weighted_loss`, for the adaptive schedule's update.

    Attributes:
        lam: the log-SNR each example was noised at.
        values: $w(\lambda)\|\epsilon - \hat\epsilon\|^2$ per example (no importance weight).
    """

    lam: Float[Array, " batch"]
    values: Float[Array, " batch"]


def _check_batch(name: str, x: Array, t: Array | None = None, eps: Array | None = None) -> None:
    if x.ndim < 2:
        raise ValueError(f"`{name}` must be a batch shaped (batch, *data); got shape {x.shape}.")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"`{name}` must be a float array; got dtype {x.dtype}. Scale integer data first.")
    if t is not None and t.shape != x.shape[:1]:
        raise ValueError(f"`t` must have shape {(x.shape[0],)} (one time per example); got {t.shape}.")
    if eps is not None and eps.shape != x.shape:
        raise ValueError(f"`eps` must have the shape of `{name}`, {x.shape}; got {eps.shape}.")


def _eps_error(denoiser: Callable, x: Array, eps: Array, lam: Array, *extras: Any) -> Array:
    # ||eps - eps_hat(z_lam; lam)||^2 for one example
    alpha, sigma = vp_alpha_sigma(lam)
    z = alpha * x + sigma * eps
    eps_hat = denoiser(z, lam, *extras)
    if eps_hat.shape != x.shape:
        raise ValueError(f"The denoiser must return an array shaped like its input {x.shape}; got {eps_hat.shape}.")
    return jnp.sum((eps - eps_hat) ** 2)


def weighted_loss_at(
    denoiser: Callable,
    x: Float[Array, " batch *data"],
    t: Float[Array, " batch"],
    eps: Float[Array, " batch *data"],
    *,
    schedule: AbstractSchedule,
    weighting: AbstractWeighting,
    per_example: tuple = (),
    return_aux: bool = False,
) -> Float[Array, " batch"] | tuple[Float[Array, " batch"], WeightedLossAux]:
    r"""The integrand of the weighted loss at given times and noise (K&G eq. 5, 7).

    $\ell_i = \tfrac12\, w(\lambda_{t_i})\, (-d\lambda/dt)\, \|\epsilon_i - \hat\epsilon(z_{\lambda}; \lambda)\|^2
    = \tfrac12\, \frac{w(\lambda)}{p(\lambda)} \|\epsilon_i - \hat\epsilon\|^2$, the importance form, so
    any schedule with `lam(t)` and `density(lam)` (including the adaptive one) works.

    Args:
        denoiser: `(z, lam) -> eps_hat` on one example.
        x: clean data, a batch.
        t: one time per example.
        eps: standard normal noise shaped like `x`.
        schedule: the noise schedule (the importance sampler over $\lambda$).
        weighting: $w(\lambda)$.
        per_example: further per-example arguments of the denoiser, each a pytree with a leading batch axis
            (e.g. class labels and dropout keys); the denoiser is then called as `denoiser(z, lam, *extras)`
            on one example (this is how `vdmpp.train.GaussianLoss` passes labels and dropout keys).
        return_aux: also return `WeightedLossAux(lam, values)`.

    Returns:
        Per-example loss, shape `(batch,)` (and the aux when asked).
    """
    _check_batch("x", x, t, eps)
    lam = schedule.lam(t)
    err = jax.vmap(ft.partial(_eps_error, denoiser))(x, eps, lam, *per_example)
    w = weighting(lam)
    loss = 0.5 * w / schedule.density(lam) * err
    if return_aux:
        return loss, WeightedLossAux(lam=lam, values=w * err)
    return loss


def weighted_loss(
    denoiser: Callable,
    x: Float[Array, " batch *data"],
    *,
    key: PRNGKeyArray,
    schedule: AbstractSchedule,
    weighting: AbstractWeighting,
    time_sampler: AbstractTimeSampler = LowDiscrepancy(),
    return_aux: bool = False,
) -> Float[Array, " batch"] | tuple[Float[Array, " batch"], WeightedLossAux]:
    r"""Monte Carlo estimate of the weighted loss $L_w(x)$ per example (K&G eq. 5–7).

    $L_w(x) = \tfrac12 \int_{\lambda_{min}}^{\lambda_{max}} w(\lambda)\,
    E_\epsilon\|\hat\epsilon(z_\lambda;\lambda) - \epsilon\|^2 d\lambda$,
    estimated with one $(t, \epsilon)$ per example, $t$ from `time_sampler` (low-discrepancy by
    default) mapped through the schedule. Unbiased for every schedule; the schedule only changes the
    variance.

    Args:
        denoiser: `(z, lam) -> eps_hat` on one example.
        x: clean data in model space (e.g. $[-1, 1]$), shape `(batch, *data)`.
        key: PRNG key.
        schedule: noise schedule (importance sampler over $\lambda$).
        weighting: $w(\lambda)$.
        time_sampler: `LowDiscrepancy()`, `Stratified()` or `IID()`.
        return_aux: also return `WeightedLossAux(lam, values)` (for the adaptive schedule).
    """
    _check_batch("x", x)
    tkey, ekey = jr.split(key)
    t = time_sampler(tkey, x.shape[0], x.dtype)
    eps = jr.normal(ekey, x.shape, x.dtype)
    return weighted_loss_at(denoiser, x, t, eps, schedule=schedule, weighting=weighting, return_aux=return_aux)


# --- discrete time (THEORY §6) -----------------------------------------------------------------


def discrete_loss_at(
    denoiser: Callable,
    x: Float[Array, " batch *data"],
    i: Int[Array, " batch"],
    eps: Float[Array, " batch *data"],
    *,
    schedule: AbstractSchedule,
    num_steps: int,
) -> Float[Array, " batch"]:
    r"""Integrand of the discrete-time loss $L_T$ at step $i \in \{1..T\}$ (VDM eq. 13, THEORY §6).

    $\ell = \tfrac{T}{2}\,\mathrm{expm1}(\lambda_s - \lambda_t)\,\|\epsilon - \hat\epsilon(z_t; \lambda_t)\|^2$ with
    $s = (i-1)/T$, $t = i/T$.
    """
    check_positive_int(num_steps, "num_steps")
    _check_batch("x", x, None, eps)
    i = jnp.asarray(i)
    t = i.astype(x.dtype) / num_steps
    s = (i - 1).astype(x.dtype) / num_steps
    lam_t, lam_s = schedule.lam(t), schedule.lam(s)
    err = jax.vmap(ft.partial(_eps_error, denoiser))(x, eps, lam_t)
    return 0.5 * num_steps * jnp.expm1(lam_s - lam_t) * err


def discrete_loss(
    denoiser: Callable,
    x: Float[Array, " batch *data"],
    *,
    key: PRNGKeyArray,
    schedule: AbstractSchedule,
    num_steps: int,
    time_sampler: AbstractTimeSampler = LowDiscrepancy(),
) -> Float[Array, " batch"]:
    r"""Monte Carlo estimate of the discrete-time loss $L_T$ per example (THEORY §6).

    $L_T = \tfrac{T}{2} E_{i \sim U\{1..T\}, \epsilon}
    [\mathrm{expm1}(\lambda_s - \lambda_t)\|\epsilon - \hat\epsilon(z_t)\|^2]$;
    $L_T \to L_\infty$ as $T \to \infty$.
    """
    check_positive_int(num_steps, "num_steps")
    _check_batch("x", x)
    tkey, ekey = jr.split(key)
    u = time_sampler(tkey, x.shape[0], x.dtype)
    i = jnp.clip(jnp.floor(u * num_steps).astype(jnp.int32) + 1, 1, num_steps)
    eps = jr.normal(ekey, x.shape, x.dtype)
    return discrete_loss_at(denoiser, x, i, eps, schedule=schedule, num_steps=num_steps)


# --- the full -ELBO for discrete data (VDM; THEORY §6) ----------------------------------------


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
    if not isinstance(num_levels, (int, np.integer)) or num_levels < 2:
        raise ValueError(f"`num_levels` must be an integer >= 2; got {num_levels!r}.")
    if not jnp.issubdtype(jnp.asarray(x_int).dtype, jnp.integer):
        raise TypeError(
            f"`x_uint8` must hold integer levels (e.g. uint8); got dtype {jnp.asarray(x_int).dtype}. "
            "Pass the raw integer data; the loss does the scaling."
        )
    if jnp.ndim(x_int) < 2:
        raise ValueError(f"`x_uint8` must be a batch shaped (batch, *data); got shape {jnp.shape(x_int)}.")
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
        x_int = eqx.error_if(x_int, (wide < 0) | (wide >= num_levels), "`x_uint8` values outside [0, num_levels).")
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
    diffusion = cast(Array, diffusion)  # return_aux=False: a plain array
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
    terms = elbo_terms(denoiser, x_uint8, key=key, schedule=schedule, num_levels=num_levels, time_sampler=time_sampler)
    dims = math.prod(jnp.shape(x_uint8)[1:])
    return terms.total / (dims * math.log(2.0))


from ._cascade_gaussian import (  # noqa: E402, E501
    CascadeTerms as CascadeTerms,
    gaussian_cascade as gaussian_cascade,
    gaussian_cascade_terms_at as gaussian_cascade_terms_at,
)
