r"""The masked-diffusion $-$ELBO, continuous and discrete time (MD4; THEORY §8).

$-\mathrm{ELBO}(x) = \int_0^1 \frac{-\alpha'_t}{1-\alpha_t}
E_{q(z_t|x)}\Big[\sum_{n: z_t^n = m} -\log\mu_\theta^n(x^n|z_t)\Big]dt + N(1-\alpha_0)\log V$,
the last term being MD4's reconstruction bound (tokens still masked at $t=0$
decoded uniformly); the prior term is taken as 0 (exact when $\alpha_1 = 0$). With $T$ steps the
weight becomes $(\alpha_s - \alpha_t)/(1 - \alpha_t)$ per masked token per step, $s = t - 1/T$.

A denoiser is a callable on ONE example `(z_tokens, lam) -> logits` over the $V$ real tokens
(SUBS parameterisation: unmasked tokens carry over, only masked positions use the logits).
"""

import functools as ft
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Bool

from .._misc import check_batch_shape, check_positive_int
from .._types import Array, Float, FloatLike, Int, PRNGKeyArray
from ..losses import AbstractTimeSampler, LowDiscrepancy
from ._process import apply_mask, check_mask_id, check_tokens, checked_alpha, sample_mask
from ._schedules import AbstractMaskingSchedule


def check_num_steps(num_steps) -> None:
    """`num_steps` must be None (continuous time) or a positive int."""
    if num_steps is None:
        return
    check_positive_int(num_steps, "num_steps", " (or None for continuous time)")


def infer_vocab_size(denoiser: Callable, example: Array) -> int:
    """$V$ from the denoiser's output shape (no computation: `jax.eval_shape`)."""
    out = jax.eval_shape(denoiser, example, jnp.zeros((), jnp.float32))
    if out.shape[:-1] != example.shape:
        raise ValueError(
            f"The denoiser must return logits shaped (*example_shape, V) = {example.shape} + (V,); got {out.shape}."
        )
    return int(out.shape[-1])


def check_token_batch(denoiser: Callable, tokens, mask_id, *, t=None, **like_tokens: Array) -> tuple[Array, int, int]:
    """The argument checks shared by the deterministic cores: a batch of clean ids, one time per example, and
    arrays shaped like `tokens` (named by their keyword). Returns `(tokens, vocab_size, mask_id)`."""
    mask_id = check_mask_id(mask_id)
    tokens = jnp.asarray(tokens)
    check_batch_shape(tokens, "tokens")
    vocab = infer_vocab_size(denoiser, tokens[0])
    tokens = check_tokens(tokens, mask_id=mask_id, vocab_size=vocab)
    if t is not None and jnp.shape(t) != tokens.shape[:1]:
        raise ValueError(f"`t` must have shape {tokens.shape[:1]} (one time per example); got {jnp.shape(t)}.")
    for name, a in like_tokens.items():
        if a.shape != tokens.shape:
            raise ValueError(f"`{name}` must have the shape of `tokens`, {tokens.shape}; got {a.shape}.")
    return tokens, vocab, mask_id


def masked_cross_entropy(
    denoiser: Callable, x: Int[Array, "*shape"], mask: Bool[Array, "*shape"], lam: Array, mask_id: int
) -> Float[Array, ""]:
    r"""$\sum_{n:\,\text{masked}} -\log\mu_\theta(x^n \mid z)$ for ONE example, in float32."""
    z = apply_mask(x, mask, mask_id)
    logits = denoiser(z, lam)
    with jax.named_scope("cross_entropy"):  # a float32 island (THEORY §15), marked for jaxpr checks
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        ll = jnp.take_along_axis(logp, x[..., None].astype(jnp.int32), axis=-1)[..., 0]
        # where, not multiply: -inf log-probs at unmasked positions must not give nan
        return -jnp.sum(jnp.where(mask, ll, 0.0))


def reconstruction(schedule: AbstractMaskingSchedule, num_tokens: int, vocab_size: int, dtype) -> Array:
    r"""MD4's reconstruction term $N(1 - \alpha_0)\log V$ (expected, in nats)."""
    return num_tokens * schedule.one_minus_alpha(jnp.zeros((), dtype)) * math.log(vocab_size)


def elbo_at(
    denoiser: Callable,
    tokens: Int[Array, " batch *shape"],
    t: Float[Array, " batch"],
    mask: Bool[Array, " batch *shape"],
    *,
    schedule: AbstractMaskingSchedule,
    mask_id: int,
    num_steps: int | None = None,
) -> Float[Array, " batch"]:
    r"""The $-$ELBO integrand at given times and masks, per example, in nats (deterministic core).

    Continuous time: $\frac{-\alpha'_t}{1-\alpha_t}\sum_{masked} -\log\mu_\theta + N(1-\alpha_0)\log V$.
    Discrete time ($T$ = `num_steps`, `t` on the grid $i/T$):
    $T\,\frac{\alpha_s - \alpha_t}{1 - \alpha_t}\sum_{masked} -\log\mu_\theta + N(1-\alpha_0)\log V$, $s = t - 1/T$.
    Its expectation over $t \sim U(0,1)$ (or $i \sim U\{1..T\}$) and masks $\sim q$ is the $-$ELBO.

    Args:
        denoiser: `(z, lam) -> logits (*shape, V)` on one example.
        tokens: clean ids, `(batch, *shape)`, in $[0, V)$.
        t: one time per example.
        mask: which tokens are masked (True), shaped like `tokens`.
        schedule: the masking schedule.
        mask_id: the mask token's id.
        num_steps: None (continuous time) or $T$.
    """
    check_num_steps(num_steps)
    tokens, vocab, mask_id = check_token_batch(denoiser, tokens, mask_id, t=t, mask=mask)
    t = jnp.asarray(t)
    checked_alpha(schedule.alpha(t))
    lam = schedule.lam(t)
    ce = jax.vmap(ft.partial(masked_cross_entropy, denoiser, mask_id=mask_id))(tokens, mask, lam)
    if num_steps is None:
        weight = schedule.elbo_weight(t)
    else:
        s = jnp.maximum(t - 1.0 / num_steps, 0.0)
        weight = num_steps * schedule.discrete_weight(s, t)
    num_tokens = math.prod(tokens.shape[1:])
    return weight * ce + reconstruction(schedule, num_tokens, vocab, t.dtype)


def elbo(
    denoiser: Callable,
    tokens: Int[Array, " batch *shape"],
    *,
    key: PRNGKeyArray,
    schedule: AbstractMaskingSchedule,
    mask_id: int,
    num_steps: int | None = None,
    time_sampler: AbstractTimeSampler = LowDiscrepancy(),
) -> Float[Array, " batch"]:
    r"""Unbiased one-sample estimate of the masked-diffusion $-$ELBO per example, in nats.

    Continuous time when `num_steps` is None, else $T$ discrete steps (MD4). Times come from
    `time_sampler` (low-discrepancy by default); masks from $q(z_t|x)$.

    Args:
        denoiser: `(z, lam) -> logits (*shape, V)` on one example (SUBS: only masked positions are scored).
        tokens: clean ids, `(batch, *shape)`, in $[0, V)$, never `mask_id`.
        key: PRNG key.
        schedule: the masking schedule.
        mask_id: the mask token's id (explicit; usually $V$).
        num_steps: None (continuous time) or $T \ge 1$.
        time_sampler: `LowDiscrepancy()`, `Stratified()` or `IID()` from `vdmpp.losses`.

    Returns:
        $-$ELBO per example in nats, shape `(batch,)`. Use `bits_per_token` to convert.

    Raises:
        ValueError: bad `mask_id`, `num_steps`, token ids outside $[0, V)$ or equal to `mask_id`.
    """
    check_num_steps(num_steps)
    mask_id = check_mask_id(mask_id)
    tokens = jnp.asarray(tokens)
    check_batch_shape(tokens, "tokens")
    tkey, mkey = jr.split(key)
    u = time_sampler(tkey, tokens.shape[0], jnp.float32)
    if num_steps is None:
        t = u
    else:
        i = jnp.clip(jnp.floor(u * num_steps).astype(jnp.int32) + 1, 1, num_steps)
        t = i.astype(jnp.float32) / num_steps
    mask = sample_mask(mkey, tokens.shape, schedule.alpha(t))
    return elbo_at(denoiser, tokens, t, mask, schedule=schedule, mask_id=mask_id, num_steps=num_steps)


def bits_per_token(nats: FloatLike, num_tokens: int) -> Float[Array, "*shape"]:
    r"""Convert a per-example $-$ELBO in nats to bits per token: nats $/(N \ln 2)$."""
    if not isinstance(num_tokens, (int, np.integer)) or num_tokens < 1:
        raise ValueError(f"`num_tokens` must be a positive int (tokens per example); got {num_tokens!r}.")
    return jnp.asarray(nats) / (num_tokens * math.log(2.0))
