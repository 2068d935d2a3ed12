r"""The discrete-time diffusion loss $L_T$ (VDM eq. 13; THEORY §6)."""

import functools as ft
from collections.abc import Callable

import jax
import jax.numpy as jnp
import jax.random as jr

from .._misc import check_positive_int
from .._types import Array, Float, Int, PRNGKeyArray
from ..schedules import AbstractSchedule, AbstractTimeSampler, LowDiscrepancy
from ._weighted import check_batch, eps_error


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
    check_batch("x", x, None, eps)
    i = jnp.asarray(i)
    t = i.astype(x.dtype) / num_steps
    s = (i - 1).astype(x.dtype) / num_steps
    lam_t, lam_s = schedule.lam(t), schedule.lam(s)
    err = jax.vmap(ft.partial(eps_error, denoiser))(x, eps, lam_t)
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
    check_batch("x", x)
    tkey, ekey = jr.split(key)
    u = time_sampler(tkey, x.shape[0], x.dtype)
    i = jnp.clip(jnp.floor(u * num_steps).astype(jnp.int32) + 1, 1, num_steps)
    eps = jr.normal(ekey, x.shape, x.dtype)
    return discrete_loss_at(denoiser, x, i, eps, schedule=schedule, num_steps=num_steps)
