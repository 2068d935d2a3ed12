r"""Reweighted masked-diffusion losses (Shi & Titsias 2025; THEORY §8).

$L^{\tilde w}(x) = -\int_0^1 \tilde w(t)\,\frac{\alpha'_t}{1-\alpha_t}\,E_q\Big[\sum_{masked}\log\mu_\theta\Big]dt.$
Weightings are matched in log-SNR space, $\tilde w(t) = w(\lambda_t)$ with $\lambda = \log(\alpha/(1-\alpha))$,
reusing `vdmpp.weighting` (ELBO, IDDPM, Sigmoid(k), FlowMatching, EDM, ...), so the loss does not depend
on the masking schedule. `Simple()` is MaskGIT/MAR's constant cross-entropy weight.

Since $\frac{-\alpha'_t}{1-\alpha_t}dt = \alpha_\lambda\,d\lambda$ with $\alpha_\lambda = \mathrm{sigmoid}(\lambda)$,
the same loss in importance form is $E_{\lambda \sim p}\big[\tfrac{w(\lambda)\alpha_\lambda}{p(\lambda)}
\sum_{masked} -\log\mu_\theta(z_\lambda)\big]$ for any density $p$ over $\lambda$ with `lam(t)` and
`density(lam)` (the adaptive schedule, a Gaussian schedule from `vdmpp.schedules`, or a masking schedule).
"""

import functools as ft
from collections.abc import Callable
from typing import Literal, overload

import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Bool

from .._misc import check_batch_shape
from .._types import Array, Float, FloatLike, Int, PRNGKeyArray
from ..losses import WeightedLossAux
from ..schedules import AbstractSchedule, AbstractTimeSampler, LowDiscrepancy
from ..weighting import AbstractWeighting
from ._elbo import check_token_batch, masked_cross_entropy
from ._process import check_mask_id, checked_alpha, sample_mask
from ._schedules import AbstractMaskingSchedule


class Simple(AbstractWeighting):
    r"""MaskGIT/MAR's "simple" weighting for a masking schedule: $\tilde w(t) = (1-\alpha_t)/(-\alpha'_t)$.

    Times the ELBO weight $-\alpha'_t/(1-\alpha_t)$ it is exactly 1: a constant weight on the
    cross-entropy of every masked token. (The slides print $(1-\alpha_t)/\alpha'_t$; the sign makes it
    positive.) Unlike the $\lambda$-space weightings it depends on the masking schedule, so it holds it: as a
    function of $\lambda$ it is $w(\lambda) = p(\lambda)/\alpha_\lambda$, $p$ the schedule's density of $\lambda$
    (then $w(\lambda)\alpha_\lambda\,d\lambda = dt$). Use it with the same `schedule` in the loss.

    Args:
        schedule: the masking schedule the loss uses.
    """

    schedule: AbstractMaskingSchedule

    def log_weight(self, lam: FloatLike) -> Float[Array, "*shape"]:
        r"""$\log(1 - \alpha_\lambda) - \log(-\alpha'_{t(\lambda)})$, i.e. $\log(p(\lambda)/\alpha_\lambda)$.

        $1 - \alpha_\lambda = \mathrm{sigmoid}(-\lambda)$ straight from $\lambda$; only $\alpha'$ goes through the
        inverse $t(\lambda)$ (exact for the linear schedule, whose $\alpha'$ is constant).
        """
        lam = jnp.asarray(lam)
        return jax.nn.log_sigmoid(-lam) - jnp.log(-self.schedule.dalpha(self.schedule.t(lam)))


def tilde_weight(
    weighting: AbstractWeighting, schedule: AbstractMaskingSchedule, t: FloatLike
) -> Float[Array, "*shape"]:
    r"""$\tilde w(t) = w(\lambda_t)$, $\lambda_t = \log(\alpha_t/(1-\alpha_t))$ (THEORY §8)."""
    return weighting(schedule.lam(t))


@overload
def reweighted_loss_at(
    denoiser: Callable,
    tokens: Int[Array, " batch *shape"],
    t: Float[Array, " batch"],
    mask: Bool[Array, " batch *shape"],
    *,
    schedule: AbstractMaskingSchedule,
    weighting: AbstractWeighting,
    mask_id: int,
    importance: AbstractSchedule | None = None,
    return_aux: Literal[False] = False,
) -> Float[Array, " batch"]: ...


@overload
def reweighted_loss_at(
    denoiser: Callable,
    tokens: Int[Array, " batch *shape"],
    t: Float[Array, " batch"],
    mask: Bool[Array, " batch *shape"],
    *,
    schedule: AbstractMaskingSchedule,
    weighting: AbstractWeighting,
    mask_id: int,
    importance: AbstractSchedule | None = None,
    return_aux: Literal[True],
) -> tuple[Float[Array, " batch"], WeightedLossAux]: ...


def reweighted_loss_at(
    denoiser: Callable,
    tokens: Int[Array, " batch *shape"],
    t: Float[Array, " batch"],
    mask: Bool[Array, " batch *shape"],
    *,
    schedule: AbstractMaskingSchedule,
    weighting: AbstractWeighting,
    mask_id: int,
    importance: AbstractSchedule | None = None,
    return_aux: bool = False,
) -> Float[Array, " batch"] | tuple[Float[Array, " batch"], WeightedLossAux]:
    r"""The reweighted loss's integrand at given times and masks, per example (deterministic core).

    Without `importance`: $\tilde w(t)\,\frac{-\alpha'_t}{1-\alpha_t}\sum_{masked}-\log\mu_\theta$, masks drawn
    with $\alpha_t$ of `schedule`. With `importance` (a schedule over $\lambda$):
    $\lambda = $ `importance.lam(t)`, masks drawn with $\alpha = \mathrm{sigmoid}(\lambda)$, and the integrand is
    $\frac{w(\lambda)\,\alpha_\lambda}{p(\lambda)}\sum_{masked}-\log\mu_\theta$.

    Returns:
        Per-example values, and with `return_aux=True` also `WeightedLossAux(lam, values)` where
        `values` $= w(\lambda)\,\alpha_\lambda\sum_{masked}-\log\mu_\theta$ (no importance weight) — what
        `AdaptiveSchedule.update` expects.
    """
    tokens, _, mask_id = check_token_batch(denoiser, tokens, mask_id, t=t, mask=mask)
    t = jnp.asarray(t)
    with jax.named_scope("weighting"):  # a float32 island (THEORY §15), marked for jaxpr checks
        if importance is None:
            lam = schedule.lam(t)
            alpha = checked_alpha(schedule.alpha(t))
            w_lam = weighting(lam)
            coeff = w_lam * schedule.elbo_weight(t)
        else:
            lam = importance.lam(t)
            alpha = jax.nn.sigmoid(lam)
            w_lam = weighting(lam)
            coeff = w_lam * alpha / importance.density(lam)
    ce = jax.vmap(ft.partial(masked_cross_entropy, denoiser, mask_id=mask_id))(tokens, mask, lam)
    loss = coeff * ce
    if return_aux:
        return loss, WeightedLossAux(lam=lam, values=w_lam * alpha * ce)
    return loss


@overload
def reweighted_loss(
    denoiser: Callable,
    tokens: Int[Array, " batch *shape"],
    *,
    key: PRNGKeyArray,
    schedule: AbstractMaskingSchedule,
    weighting: AbstractWeighting,
    mask_id: int,
    importance: AbstractSchedule | None = None,
    time_sampler: AbstractTimeSampler = LowDiscrepancy(),
    return_aux: Literal[False] = False,
) -> Float[Array, " batch"]: ...


@overload
def reweighted_loss(
    denoiser: Callable,
    tokens: Int[Array, " batch *shape"],
    *,
    key: PRNGKeyArray,
    schedule: AbstractMaskingSchedule,
    weighting: AbstractWeighting,
    mask_id: int,
    importance: AbstractSchedule | None = None,
    time_sampler: AbstractTimeSampler = LowDiscrepancy(),
    return_aux: Literal[True],
) -> tuple[Float[Array, " batch"], WeightedLossAux]: ...


def reweighted_loss(
    denoiser: Callable,
    tokens: Int[Array, " batch *shape"],
    *,
    key: PRNGKeyArray,
    schedule: AbstractMaskingSchedule,
    weighting: AbstractWeighting,
    mask_id: int,
    importance: AbstractSchedule | None = None,
    time_sampler: AbstractTimeSampler = LowDiscrepancy(),
    return_aux: bool = False,
) -> Float[Array, " batch"] | tuple[Float[Array, " batch"], WeightedLossAux]:
    r"""One-sample estimate of the S&T reweighted loss $L^{\tilde w}(x)$ per example, in nats.

    $L^{\tilde w}(x) = -\int_0^1 \tilde w(t)\frac{\alpha'_t}{1-\alpha_t}E_q[\sum_{masked}\log\mu_\theta]dt$ with
    $\tilde w(t) = w(\lambda_t)$, $\lambda = \log(\alpha/(1-\alpha))$. `weighting=vdmpp.weighting.ELBO()` gives
    the diffusion part of the $-$ELBO.

    Args:
        denoiser: `(z, lam) -> logits (*shape, V)` on one example.
        tokens: clean ids `(batch, *shape)`.
        key: PRNG key.
        schedule: the masking schedule (the time sampler's map to $\alpha$ when `importance` is None).
        weighting: a `vdmpp.weighting` object or `vdmpp.masked.Simple(schedule)`.
        mask_id: the mask token's id.
        importance: optional schedule over $\lambda$ (a `vdmpp.schedules.AbstractSchedule`, e.g.
            `AdaptiveSchedule(...).bind(state)`); then $\lambda$ is drawn from it and importance weighted.
        time_sampler: `LowDiscrepancy()` (default), `Stratified()` or `IID()`.
        return_aux: also return `WeightedLossAux(lam, values)` for the adaptive schedule's update.
    """
    mask_id = check_mask_id(mask_id)
    tokens = jnp.asarray(tokens)
    check_batch_shape(tokens, "tokens")
    tkey, mkey = jr.split(key)
    t = time_sampler(tkey, tokens.shape[0], jnp.float32)
    alpha = schedule.alpha(t) if importance is None else jax.nn.sigmoid(importance.lam(t))
    mask = sample_mask(mkey, tokens.shape, alpha)
    return reweighted_loss_at(
        denoiser,
        tokens,
        t,
        mask,
        schedule=schedule,
        weighting=weighting,
        mask_id=mask_id,
        importance=importance,
        return_aux=return_aux,
    )
