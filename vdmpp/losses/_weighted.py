r"""The weighted diffusion loss (K&G eq. 5–7).

Every stochastic loss has a deterministic core taking its random draws explicitly (`*_at`); the
key-taking function draws them and calls it. Denoisers are callables on ONE example,
`(z, lam) -> eps_hat`; wrap a network with `vdmpp.nn.as_denoiser`. With `return_aux=True` the losses
return `(loss, WeightedLossAux)`, else the loss alone (typed by overloads, so callers need no casts).
"""

import functools as ft
from collections.abc import Callable
from typing import Any, Literal, overload

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from .._misc import check_batch_shape, concrete
from .._types import Array, Float, PRNGKeyArray
from ..process import vp_alpha_sigma
from ..schedules import AbstractSchedule, AbstractTimeSampler, LowDiscrepancy
from ..weighting import AbstractWeighting


class WeightedLossAux(eqx.Module):
    r"""Per-example by-products of `weighted_loss`, for the adaptive schedule's update.

    Attributes:
        lam: the log-SNR each example was noised at.
        values: $w(\lambda)\|\epsilon - \hat\epsilon\|^2$ per example (no importance weight).
    """

    lam: Float[Array, " batch"]
    values: Float[Array, " batch"]


def check_all_finite(**arrays: Array | None) -> None:
    """Float arrays whose values are known (not traced) must be finite: a NaN or inf in the data would make the loss
    NaN without saying why."""
    for name, a in arrays.items():
        values = None if a is None or not jnp.issubdtype(a.dtype, jnp.floating) else concrete(a)
        if values is not None and not np.all(np.isfinite(values)):
            bad = int(np.sum(~np.isfinite(values)))
            raise ValueError(f"`{name}` must be finite; it holds {bad} NaN/inf value(s). Clean the data first.")


def check_batch(name: str, x: Array, t: Array | None = None, eps: Array | None = None) -> None:
    """A finite float batch `(batch, *data)`, with one time per example and noise shaped like it."""
    check_batch_shape(x, name)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"`{name}` must be a float array; got dtype {x.dtype}. Scale integer data first.")
    if t is not None and t.shape != x.shape[:1]:
        raise ValueError(f"`t` must have shape {(x.shape[0],)} (one time per example); got {t.shape}.")
    if eps is not None and eps.shape != x.shape:
        raise ValueError(f"`eps` must have the shape of `{name}`, {x.shape}; got {eps.shape}.")
    check_all_finite(**{name: x, "t": t, "eps": eps})


def eps_error(denoiser: Callable, x: Array, eps: Array, lam: Array, *extras: Any) -> Array:
    r"""$\|\epsilon - \hat\epsilon(z_\lambda; \lambda)\|^2$ for one example, $z_\lambda = \alpha x + \sigma\epsilon$."""
    with jax.named_scope("alpha_sigma"):  # named scopes mark the float32 islands (THEORY §15) for jaxpr checks
        alpha, sigma = vp_alpha_sigma(lam)
        z = alpha * x + sigma * eps
    eps_hat = denoiser(z, lam, *extras)
    if eps_hat.shape != x.shape:
        raise ValueError(f"The denoiser must return an array shaped like its input {x.shape}; got {eps_hat.shape}.")
    with jax.named_scope("squared_error"):
        return jnp.sum((eps - eps_hat) ** 2)


@overload
def weighted_loss_at(
    denoiser: Callable,
    x: Float[Array, " batch *data"],
    t: Float[Array, " batch"],
    eps: Float[Array, " batch *data"],
    *,
    schedule: AbstractSchedule,
    weighting: AbstractWeighting,
    per_example: tuple = (),
    return_aux: Literal[False] = False,
) -> Float[Array, " batch"]: ...


@overload
def weighted_loss_at(
    denoiser: Callable,
    x: Float[Array, " batch *data"],
    t: Float[Array, " batch"],
    eps: Float[Array, " batch *data"],
    *,
    schedule: AbstractSchedule,
    weighting: AbstractWeighting,
    per_example: tuple = (),
    return_aux: Literal[True],
) -> tuple[Float[Array, " batch"], WeightedLossAux]: ...


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
    check_batch("x", x, t, eps)
    lam = schedule.lam(t)
    err = jax.vmap(ft.partial(eps_error, denoiser))(x, eps, lam, *per_example)
    with jax.named_scope("weighting"):
        w = weighting(lam)
    with jax.named_scope("importance_weight"):
        loss = 0.5 * w / schedule.density(lam) * err
    if return_aux:
        return loss, WeightedLossAux(lam=lam, values=w * err)
    return loss


@overload
def weighted_loss(
    denoiser: Callable,
    x: Float[Array, " batch *data"],
    *,
    key: PRNGKeyArray,
    schedule: AbstractSchedule,
    weighting: AbstractWeighting,
    time_sampler: AbstractTimeSampler = LowDiscrepancy(),
    return_aux: Literal[False] = False,
) -> Float[Array, " batch"]: ...


@overload
def weighted_loss(
    denoiser: Callable,
    x: Float[Array, " batch *data"],
    *,
    key: PRNGKeyArray,
    schedule: AbstractSchedule,
    weighting: AbstractWeighting,
    time_sampler: AbstractTimeSampler = LowDiscrepancy(),
    return_aux: Literal[True],
) -> tuple[Float[Array, " batch"], WeightedLossAux]: ...


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
    check_batch("x", x)
    tkey, ekey = jr.split(key)
    t = time_sampler(tkey, x.shape[0], x.dtype)
    eps = jr.normal(ekey, x.shape, x.dtype)
    return weighted_loss_at(denoiser, x, t, eps, schedule=schedule, weighting=weighting, return_aux=return_aux)
