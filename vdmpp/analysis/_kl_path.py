r"""The KL along the diffusion path, $L(t; x)$, and K&G Theorem 1.

$L(t; x) = KL(q(z_{t..1}|x)\,\|\,p(z_{t..1}))$ satisfies $\frac{d}{d\lambda}L = \tfrac12 E_\epsilon\|\epsilon -
\hat\epsilon(z_\lambda; \lambda)\|^2$ (K&G eq. 9, 144), so
$L(\lambda; x) = L(\lambda_{min}; x) + \tfrac12\int_{\lambda_{min}}^{\lambda} E\|\epsilon - \hat\epsilon\|^2 d\lambda'$,
the cumulative diffusion loss; $L(\lambda_{min}; x)$ is the prior KL, independent of the denoiser.
Theorem 1 (eq. 11): $L_w(x) = \int_0^1 \frac{d}{dt}w(\lambda_t)\, L(t; x)\, dt + w(\lambda_{max}) L(0; x) + c$,
where $c = -w(\lambda_{min}) L(\lambda_{min}; x)$ does not depend on the denoiser. In $\lambda$, with the
cumulative loss $C$: $L_w = -\int w'(\lambda) C(\lambda) d\lambda + w(\lambda_{max}) C(\lambda_{max})$.
"""

import functools as ft
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from .._misc import concrete, is_int
from .._types import Array, Float, PRNGKeyArray
from ..process import vp_alpha_sigma
from ..weighting import AbstractWeighting


class KLPath(eqx.Module):
    r"""$L(\lambda; x) - L(\lambda_{min}; x)$ on a grid, per example (result of `kl_path`).

    Attributes:
        lam: the increasing log-SNR grid, shape `(L,)`.
        integrand: $\frac{d}{d\lambda}L = \tfrac12 E_\epsilon\|\epsilon - \hat\epsilon\|^2$ (MC mean), shape `(B, L)`.
        stderr: Monte Carlo standard error of `integrand`, shape `(B, L)`.
        cumulative: $C(\lambda) = \int_{\lambda_{min}}^{\lambda}$ `integrand` (trapezoid), shape `(B, L)`.
    """

    lam: Float[Array, " L"]
    integrand: Float[Array, " batch L"]
    stderr: Float[Array, " batch L"]
    cumulative: Float[Array, " batch L"]

    def weighted_loss(self, weighting: AbstractWeighting) -> Float[Array, " batch"]:
        r"""$L_w(x) = \int w(\lambda)\,\frac{d}{d\lambda}L\, d\lambda$ on the grid (trapezoid), per example."""
        w = weighting(self.lam)
        return _trapz(w[None, :] * self.integrand, self.lam)


def _sq_err(denoiser: Callable, x: Array, eps: Array, lam: Array) -> Array:
    alpha, sigma = vp_alpha_sigma(lam)
    eps_hat = denoiser(alpha * x + sigma * eps, lam)
    return jnp.sum((eps - eps_hat) ** 2)


@eqx.filter_jit
def _errors(denoiser, x, eps, lams):
    # (L, S, B): over lambdas, noise samples, examples
    f = ft.partial(_sq_err, denoiser)
    per_example = jax.vmap(f, in_axes=(0, 0, None))
    per_sample = jax.vmap(per_example, in_axes=(None, 0, None))
    return jax.lax.map(lambda lam: per_sample(x, eps, lam), lams)


def _cumtrapz(y: Array, x: Array) -> Array:
    seg = 0.5 * (y[..., 1:] + y[..., :-1]) * jnp.diff(x)[None, :]
    return jnp.concatenate([jnp.zeros_like(y[..., :1]), jnp.cumsum(seg, axis=-1)], axis=-1)


def _trapz(y: Array, x: Array) -> Array:
    # trapezoid along the last axis of a (B, L) array (jnp.trapezoid broadcasts by rank promotion)
    return jnp.sum(0.5 * (y[..., 1:] + y[..., :-1]) * jnp.diff(x)[None, :], axis=-1)


def kl_path(
    denoiser: Callable,
    x: Float[Array, " batch *data"],
    lams: Float[Array, " L"],
    *,
    key: PRNGKeyArray,
    num_samples: int = 16,
) -> KLPath:
    r"""The cumulative diffusion loss $L(\lambda; x) - L(\lambda_{min}; x)$ along an increasing $\lambda$ grid.

    Uses the same `num_samples` noise draws at every $\lambda$ (common random numbers), so the
    curve is smooth in $\lambda$.

    Args:
        denoiser: `(z, lam) -> eps_hat` on one example.
        x: clean data, shape `(batch, *data)`.
        lams: strictly increasing log-SNRs; `lams[0]` plays $\lambda_{min}$.
        key: PRNG key for the noise.
        num_samples: noise draws per example.

    Returns:
        A `KLPath`.
    """
    lams = jnp.asarray(lams)
    if lams.ndim != 1 or lams.shape[0] < 2:
        raise ValueError(f"`lams` must be a 1-D grid with at least 2 points; got shape {lams.shape}.")
    if concrete(lams) is not None and not bool(jnp.all(jnp.diff(lams) > 0)):
        raise ValueError("`lams` must be strictly increasing (from lam_min to lam_max).")
    if x.ndim < 2:
        raise ValueError(f"`x` must be a batch shaped (batch, *data); got shape {x.shape}.")
    if not is_int(num_samples) or num_samples < 2:
        raise ValueError(f"`num_samples` must be an integer >= 2 (for the standard error); got {num_samples!r}.")
    eps = jr.normal(key, (num_samples,) + x.shape, x.dtype)
    errs = _errors(denoiser, x, eps, lams.astype(x.dtype))  # (L, S, B)
    half = 0.5 * errs
    integrand = jnp.mean(half, axis=1).T
    stderr = (jnp.std(half, axis=1, ddof=1) / jnp.sqrt(jnp.asarray(num_samples, x.dtype))).T
    return KLPath(lam=lams, integrand=integrand, stderr=stderr, cumulative=_cumtrapz(integrand, lams))


def theorem1_rhs(path: KLPath, weighting: AbstractWeighting) -> Float[Array, " batch"]:
    r"""The right side of K&G Theorem 1 (eq. 11) without its constant, per example.

    $\int_0^1 \frac{d}{dt}w(\lambda_t)\,L(t; x)\,dt + w(\lambda_{max})L(0; x)$, written in $\lambda$ with
    the cumulative loss $C$: $-\int_{\lambda_{min}}^{\lambda_{max}} w'(\lambda)\,C(\lambda)\,d\lambda +
    w(\lambda_{max})\,C(\lambda_{max})$ (trapezoid, $w'$ by autodiff). With $L = L(\lambda_{min}; x) + C$ the
    theorem's right side is this plus $w(\lambda_{min})L(\lambda_{min}; x)$ (the prior KL times
    $w(\lambda_{min})$), which its constant cancels; so this function should equal $L_w(x)$.
    """
    lam = path.lam
    dw = jax.vmap(jax.grad(lambda l: weighting(l)))(lam)
    w_max = weighting(lam[-1])
    return -_trapz(dw[None, :] * path.cumulative, lam) + w_max * path.cumulative[:, -1]
