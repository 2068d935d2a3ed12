r"""The improved-ELBO cascade of Shi & Titsias (2025), Theorems 1 and 2 (THEORY §9), Gaussian case.

With $T$ steps, $s(i) = (i-1)/T$, $t(i) = i/T$, model $\tilde p^{(i)}$ runs the learned reverse steps
from $t = 1$ down to $s(i)$ and then the ground-truth decoder $q(x \mid z_{s(i)}) \propto q(z_{s(i)}|x)q(x)$.
For a finite data set, $q(x \mid z)$ is the posterior over its rows. Its bound is

$$L^{(i)}(x) = E_{q(z_{s(i)}|x)}[\log q(x|z_{s(i)})] - KL(q(z_1|x)\|p(z_1)) - \sum_{j=i}^T K_j(x),$$

with $K_j = \tfrac12 E(\mathrm{SNR}(s) - \mathrm{SNR}(t))\|x - \hat x_\theta(z_t)\|^2$ for Gaussian diffusion.
Theorem 1: $E_{q(x)} L^{(i)}$ is non-decreasing in $i$ for any denoiser. Theorem 2:
$\sum_i w_i L^{(i)} = -\sum_j W_j K_j + C$ with $W_j = \sum_{i \le j} w_i$ and $C$ free of $\theta$.
"""

import functools as ft
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from .._misc import check_positive_int, concrete
from .._types import Array, ArrayLike, Float, PRNGKeyArray
from ..oracle import EmpiricalDenoiser
from ..process import vp_alpha_sigma
from ..schedules import AbstractSchedule
from ._elbo import prior_kl
from ._weighted import check_all_finite


class CascadeTerms(eqx.Module):
    r"""Per-example terms of the cascade, in nats.

    Attributes:
        decoder: `(batch, T)`; column $i-1$ is $\log q(x \mid z_{s(i)})$ (one-sample estimate).
        kl: `(batch, T)`; column $j-1$ is $K_j(x)$ (one-sample estimate).
        prior: `(batch,)`, $KL(q(z_1|x)\|p(z_1))$.
    """

    decoder: Float[Array, "batch T"]
    kl: Float[Array, "batch T"]
    prior: Float[Array, " batch"]

    @property
    def bounds(self) -> Float[Array, "batch T"]:
        r"""$L^{(i)} = \text{decoder}_i - \text{prior} - \sum_{j \ge i} K_j$ for $i = 1..T$ (column $i-1$)."""
        tail = jnp.flip(jnp.cumsum(jnp.flip(self.kl, axis=1), axis=1), axis=1)
        return self.decoder - self.prior[:, None] - tail

    def weighted(self, weights: Float[Array, " T"]) -> Float[Array, " batch"]:
        r"""$\sum_i w_i L^{(i)}$."""
        return self.bounds @ self.check_weights(weights, self.kl.shape[1])

    @staticmethod
    def check_weights(weights, num_steps: int) -> Array:
        """Weights $w_i \\ge 0$, one per step (Theorem 2), as float32."""
        return _check_weights(weights, num_steps)


def _check_weights(weights, num_steps: int) -> Array:
    weights = jnp.asarray(weights)
    if weights.shape != (num_steps,):
        raise ValueError(f"`weights` must have shape ({num_steps},) (one per step); got {weights.shape}.")
    values = concrete(weights)
    if values is not None and np.any(values < 0):
        raise ValueError("`weights` must be non-negative (Theorem 2 needs w_i >= 0).")
    return weights.astype(jnp.float32)


def _row_log_posterior(oracle: EmpiricalDenoiser, x: Array, z: Array, lam: Array) -> Array:
    # log q(x | z) = logsumexp over rows equal to x of the row posterior
    logp = jax.nn.log_softmax(oracle.posterior_logits(z, lam))
    axes = tuple(range(1, oracle.data.ndim))
    same = jnp.all(oracle.data == x[None], axis=axes)
    return jax.nn.logsumexp(jnp.where(same, logp, -jnp.inf))


def _example_terms(denoiser, oracle, schedule, num_steps, x, eps):
    times = jnp.arange(num_steps + 1, dtype=x.dtype) / num_steps
    lam = schedule.lam(times)

    def at(lam_k):
        alpha, sigma = vp_alpha_sigma(lam_k)
        return alpha * x + sigma * eps

    def decoder(lam_s):
        return _row_log_posterior(oracle, x, at(lam_s), lam_s)

    def kl(lam_s, lam_t):
        z = at(lam_t)
        alpha, sigma = vp_alpha_sigma(lam_t)
        x_hat = (z - sigma * denoiser(z, lam_t)) / alpha
        # SNR(s) - SNR(t) = e^{lam_t} expm1(lam_s - lam_t)
        return 0.5 * jnp.exp(lam_t) * jnp.expm1(lam_s - lam_t) * jnp.sum((x - x_hat) ** 2)

    dec = jax.vmap(decoder)(lam[:-1])
    kls = jax.vmap(kl)(lam[:-1], lam[1:])
    return dec, kls, prior_kl(x, lam[-1])


def gaussian_cascade_terms_at(
    denoiser: Callable,
    x: Float[Array, " batch *data"],
    data: Float[ArrayLike, " N *data"],
    eps: Float[Array, " batch *data"],
    *,
    schedule: AbstractSchedule,
    num_steps: int,
) -> CascadeTerms:
    r"""All cascade terms for given noise (deterministic core); $z_t = \alpha_t x + \sigma_t\epsilon$ with one
    $\epsilon$ per example shared across the $T + 1$ times (common random numbers; each term's marginal is exact).

    Args:
        denoiser: `(z, lam) -> eps_hat` on one example.
        x: clean data, rows of `data` (the decoder is the posterior over `data`'s rows).
        data: the finite data set defining $q(x)$, `(N, *data)`.
        eps: standard normal noise shaped like `x`.
        schedule: the noise schedule (finite $\lambda_{min}, \lambda_{max}$).
        num_steps: $T$.
    """
    check_positive_int(num_steps, "num_steps")
    x, eps = jnp.asarray(x), jnp.asarray(eps)
    if x.ndim < 2 or eps.shape != x.shape:
        raise ValueError(f"`x` must be (batch, *data) and `eps` shaped like it; got {x.shape}, {eps.shape}.")
    check_all_finite(x=x, eps=eps)
    oracle = EmpiricalDenoiser(jnp.asarray(data, x.dtype))
    if oracle.data.shape[1:] != x.shape[1:]:
        raise ValueError(f"`data` rows must be shaped like examples {x.shape[1:]}; got {oracle.data.shape[1:]}.")
    fn = ft.partial(_example_terms, denoiser, oracle, schedule, num_steps)
    dec, kls, prior = jax.vmap(fn)(x, eps)
    return CascadeTerms(decoder=dec, kl=kls, prior=prior)


def gaussian_cascade(
    denoiser: Callable,
    x: Float[Array, " batch *data"],
    data: Float[ArrayLike, " N *data"],
    *,
    key: PRNGKeyArray,
    schedule: AbstractSchedule,
    num_steps: int,
) -> Float[Array, "batch T"]:
    r"""The improved ELBOs $L^{(i)}(x)$, $i = 1..T$, of Gaussian diffusion with a ground-truth decoder.

    One-sample estimate per example with common random numbers across $i$. See `CascadeTerms` and
    `gaussian_cascade_terms_at`.
    """
    eps = jr.normal(key, jnp.shape(x), jnp.asarray(x).dtype)
    return gaussian_cascade_terms_at(denoiser, x, data, eps, schedule=schedule, num_steps=num_steps).bounds
