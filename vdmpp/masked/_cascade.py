r"""The improved-ELBO cascade for masked diffusion (Shi & Titsias 2025, Theorems 1, 2; THEORY §9).

$L^{(i)}(x) = E[\log q(x|z_{s(i)})] - KL(q(z_1|x)\|p(z_1)) - \sum_{j=i}^T K_j(x)$ with the exact
per-step KL of the absorbing process
$K_j = E_{q(z_{t}|x)}\sum_{n:\,z_t^n = m}\frac{\alpha_s - \alpha_t}{1 - \alpha_t}\big(-\log\mu_\theta(x^n|z_t)\big)$,
$s = s(j), t = t(j)$, and the ground-truth decoder of the finite data set
$q(x|z) = \#\{k: x_k = x\}/\#\{k: x_k \text{ agrees with } z \text{ on its unmasked tokens}\}$.
The prior term is taken as 0 (exact when $\alpha_1 = 0$; it does not depend on $i$ or $\theta$).
"""

import functools as ft
from collections.abc import Callable

import jax
import jax.numpy as jnp
import jax.random as jr

from .._misc import check_positive_int
from .._types import Array, ArrayLike, Float, Int, PRNGKeyArray
from ..losses import CascadeTerms
from ..oracle import EmpiricalMaskedDenoiser
from ._elbo import check_token_batch, masked_cross_entropy
from ._process import masks_from_uniforms
from ._schedules import AbstractMaskingSchedule


def _example_terms(denoiser, oracle, schedule, num_steps, mask_id, x, u):
    times = jnp.arange(num_steps + 1, dtype=jnp.float32) / num_steps
    alphas = schedule.alpha(times)
    lams = schedule.lam(times)

    def decoder(alpha_s):
        mask = masks_from_uniforms(u, alpha_s)
        return oracle.decoder_log_prob(x, jnp.where(mask, mask_id, x))

    def kl(s, t, alpha_t, lam_t):
        mask = masks_from_uniforms(u, alpha_t)
        return schedule.discrete_weight(s, t) * masked_cross_entropy(denoiser, x, mask, lam_t, mask_id)

    dec = jax.vmap(decoder)(alphas[:-1])
    kls = jax.vmap(kl)(times[:-1], times[1:], alphas[1:], lams[1:])
    return dec, kls


def cascade_terms_at(
    denoiser: Callable,
    tokens: Int[Array, " batch *shape"],
    data: Int[ArrayLike, " N *shape"],
    u: Float[Array, " batch *shape"],
    *,
    schedule: AbstractMaskingSchedule,
    num_steps: int,
    mask_id: int,
) -> CascadeTerms:
    r"""All cascade terms for given uniforms (deterministic core).

    Token $n$ is masked at time $t$ iff $u^n \ge \alpha_t$: one uniform per token shared by all times (the
    forward process's own coupling), so every term has its exact marginal and the terms share random numbers.

    Args:
        denoiser: `(z, lam) -> logits (*shape, V)` on one example.
        tokens: clean ids `(batch, *shape)`, rows of `data`.
        data: the finite data set, `(N, *shape)`, defining $q(x)$ and the ground-truth decoder.
        u: uniforms in $[0, 1)$ shaped like `tokens`.
        schedule: the masking schedule.
        num_steps: $T$.
        mask_id: the mask token's id.
    """
    check_positive_int(num_steps, "num_steps")
    tokens, vocab, mask_id = check_token_batch(denoiser, tokens, mask_id, u=u)
    oracle = EmpiricalMaskedDenoiser(data, vocab_size=vocab, mask_id=mask_id)
    if oracle.data.shape[1:] != tokens.shape[1:]:
        raise ValueError(f"`data` rows must be shaped like examples {tokens.shape[1:]}; got {oracle.data.shape[1:]}.")
    fn = ft.partial(_example_terms, denoiser, oracle, schedule, num_steps, mask_id)
    dec, kls = jax.vmap(fn)(tokens.astype(jnp.int32), u)
    return CascadeTerms(decoder=dec, kl=kls, prior=jnp.zeros(tokens.shape[:1], jnp.float32))


def cascade_terms(
    denoiser: Callable,
    tokens: Int[Array, " batch *shape"],
    data: Int[ArrayLike, " N *shape"],
    *,
    key: PRNGKeyArray,
    schedule: AbstractMaskingSchedule,
    num_steps: int,
    mask_id: int,
) -> CascadeTerms:
    """`cascade_terms_at` with uniforms drawn from `key`."""
    u = jr.uniform(key, jnp.shape(tokens), jnp.float32)
    return cascade_terms_at(denoiser, tokens, data, u, schedule=schedule, num_steps=num_steps, mask_id=mask_id)


def cascade(
    denoiser: Callable,
    tokens: Int[Array, " batch *shape"],
    data: Int[ArrayLike, " N *shape"],
    *,
    key: PRNGKeyArray,
    schedule: AbstractMaskingSchedule,
    num_steps: int,
    mask_id: int,
) -> Float[Array, "batch T"]:
    r"""The improved ELBOs $L^{(i)}(x)$, $i = 1..T$ (column $i-1$), per example, in nats.

    One-sample estimates with common random numbers across $i$. Theorem 1: $E_x L^{(i)}$ is non-decreasing
    in $i$ for any denoiser; `L[:, 0]` is the ordinary $T$-step ELBO (up to MD4's reconstruction term).

    Args:
        denoiser: `(z, lam) -> logits (*shape, V)` on one example.
        tokens: clean ids `(batch, *shape)`, rows of `data`.
        data: the finite data set `(N, *shape)` whose posterior is the ground-truth decoder.
        key: PRNG key.
        schedule: the masking schedule.
        num_steps: $T \ge 1$.
        mask_id: the mask token's id.
    """
    terms = cascade_terms(denoiser, tokens, data, key=key, schedule=schedule, num_steps=num_steps, mask_id=mask_id)
    return terms.bounds


def weighted_cascade(
    denoiser: Callable,
    tokens: Int[Array, " batch *shape"],
    data: Int[ArrayLike, " N *shape"],
    *,
    key: PRNGKeyArray,
    schedule: AbstractMaskingSchedule,
    num_steps: int,
    mask_id: int,
    weights: Float[Array, " T"],
) -> Float[Array, " batch"]:
    r"""$\sum_i w_i L^{(i)}(x)$ (Theorem 2: $= -\sum_j W_j K_j + C$, $W_j = \sum_{i\le j} w_i$)."""
    check_positive_int(num_steps, "num_steps")
    weights = CascadeTerms.check_weights(weights, num_steps)
    terms = cascade_terms(denoiser, tokens, data, key=key, schedule=schedule, num_steps=num_steps, mask_id=mask_id)
    return terms.weighted(weights)
