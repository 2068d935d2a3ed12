r"""Function forms of the masked samplers: `ancestral` (with MDLM's cache) and any-order autoregressive."""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import jax.random as jr
from jax import lax

from .._types import Array, Int, PRNGKeyArray
from ..samplers import calls_per_eval
from ._samplers import Ancestral, sample, step_alphas
from ._sampling import (
    AbstractTimeGrid,
    check_dtype,
    check_shape,
    check_steps,
    check_top_p,
    check_vocab,
    grid_times,
    log_probs,
    reveal,
    UniformGrid,
)
from ._schedules import AbstractMaskingSchedule


def ancestral(
    denoiser: Callable,
    shape: tuple[int, ...],
    *,
    key: PRNGKeyArray,
    schedule: AbstractMaskingSchedule,
    num_steps: int,
    mask_id: int,
    grid: AbstractTimeGrid = UniformGrid(),
    top_p: float | None = None,
    cache: bool = False,
    dtype=jnp.float32,
) -> tuple[Int[Array, " batch *shape"], int | Int[Array, ""]]:
    r"""MD4 ancestral sampling: `sample(Ancestral(grid, top_p), ...)`, optionally with MDLM's cache.

    Args:
        denoiser: `(z, lam) -> logits (*example_shape, V)` on one example.
        shape: `(batch, *example_shape)`.
        key: PRNG key (step $k$ uses `fold_in(key, k)`, so cached and uncached runs share draws).
        schedule: the masking schedule.
        num_steps: $T$, the number of steps.
        mask_id: the mask token's id, outside the denoiser's ids $[0, V)$.
        grid: the time grid.
        top_p: optional nucleus sampling threshold in $(0, 1]$.
        cache: MDLM's trick: when no token of the whole batch changed since the last network call, reuse
            its logits (skip the call). Exact only for denoisers that ignore $\lambda$ (the absorbing
            process's true posterior does; a time-conditioned network gets the previous step's $\lambda$).
            It saves calls only when steps outnumber the batch's tokens: a step changes no token of
            $B \times L$ with probability about $e^{-BL/T}$ for a uniform grid, so at batch 64 and 256
            tokens it saves none at any practical $T$ (experiments/masked_sampling.py measures it). A
            jitted batched call cannot skip some rows of the batch, so per-sequence reuse cannot save
            compute either. For few calls use `FirstHitting` ($L$ calls, exact) instead.
        dtype: float32 (default) or float64 for the Gumbel-max draws.

    Returns:
        `(samples, nfe)`: int32 tokens of `shape`, and the batched network calls: a Python int, or with
        `cache=True` a traced int32 (how many calls were skipped depends on the draws).
    """
    sampler = Ancestral(grid=grid, top_p=top_p)
    if not cache:
        return sample(
            sampler, denoiser, shape, key=key, schedule=schedule, num_steps=num_steps, mask_id=mask_id, dtype=dtype
        )
    shape = check_shape(shape)
    num_steps = check_steps(num_steps, "ancestral")
    check_top_p(top_p, "ancestral")
    dtype = check_dtype(dtype)
    vocab, mask_id = check_vocab(denoiser, shape[1:], mask_id)
    alphas, lams = step_alphas(schedule, grid_times(grid, num_steps))
    z0 = jnp.full(shape, mask_id, jnp.int32)
    logits0 = jax.eval_shape(denoiser, z0[0], lams[-1])
    frozen = jnp.zeros(shape, jnp.bool_)
    calls = calls_per_eval(denoiser)

    def step(carry, k):
        z, cached, fresh, nfe = carry
        t = num_steps - k
        a_t, a_s, lam_t = alphas[t], alphas[t - 1], lams[t]

        def compute(_):
            return jax.vmap(denoiser, in_axes=(0, None))(z, lam_t), nfe + calls

        logits, nfe = lax.cond(fresh, lambda _: (cached, nfe), compute, None)
        logp = log_probs(logits, top_p, dtype)
        r = jnp.clip((a_s - a_t) / (1.0 - a_t), 0.0, 1.0)
        z_new = reveal(z, frozen, logp, r, jr.fold_in(key, k), mask_id)
        return (z_new, logits, jnp.all(z_new == z), nfe), None

    cached0 = jnp.zeros(shape + (vocab,), logits0.dtype)
    init = (z0, cached0, jnp.asarray(False), jnp.asarray(0, jnp.int32))
    (z, _, _, nfe), _ = lax.scan(step, init, jnp.arange(num_steps))
    return z, nfe


def any_order_autoregressive(
    denoiser: Callable,
    shape: tuple[int, ...],
    *,
    key: PRNGKeyArray,
    mask_id: int,
    return_order: bool = False,
    dtype=jnp.float32,
) -> tuple[Int[Array, " batch *shape"], int] | tuple[Int[Array, " batch *shape"], int, Array]:
    r"""Any-order autoregressive sampling: reveal ONE uniformly chosen masked token per step.

    With the exact conditionals this samples the data distribution exactly (the any-order AR view of
    masked diffusion), whatever the order. The network sees $\lambda = \log((k + \tfrac12)/(N - k - \tfrac12))$
    at step $k$ of $N$ (the fraction of revealed tokens as $\alpha$). Useful for debugging a denoiser;
    `FirstHitting` is the same sampler with the times of a masking schedule.

    Args:
        denoiser: `(z, lam) -> logits (*example_shape, V)` on one example.
        shape: `(batch, *example_shape)`.
        key: PRNG key.
        mask_id: the mask token's id, outside the denoiser's ids $[0, V)$.
        return_order: also return the flat position revealed at each step, shape `(batch, N)`.
        dtype: float32 or float64 for the Gumbel-max draws.

    Returns:
        `(samples, nfe)` with `nfe` $= N$ times `calls_per_eval(denoiser)`, a Python int (and the order
        when asked).
    """
    shape = check_shape(shape)
    dtype = check_dtype(dtype)
    _, mask_id = check_vocab(denoiser, shape[1:], mask_id)
    batch = shape[0]
    n = math.prod(shape[1:])

    def step(z, k):
        kp, kv = jr.split(jr.fold_in(key, k))
        kf = k.astype(jnp.float32)
        lam = jnp.log(kf + 0.5) - jnp.log(n - kf - 0.5)
        logits = jax.vmap(denoiser, in_axes=(0, None))(z, lam)
        logp = jax.nn.log_softmax(logits.astype(dtype), axis=-1).reshape(batch, n, -1)
        flat = z.reshape(batch, n)
        pos_score = jnp.where(flat == mask_id, jr.gumbel(kp, (batch, n), dtype), -jnp.inf)
        pos = jnp.argmax(pos_score, axis=-1)
        lp = jnp.take_along_axis(logp, pos[:, None, None], axis=1)[:, 0]
        val = jnp.argmax(lp + jr.gumbel(kv, lp.shape, dtype), axis=-1).astype(jnp.int32)
        flat = flat.at[jnp.arange(batch), pos].set(val)
        return flat.reshape(shape), pos.astype(jnp.int32)

    z, order = lax.scan(step, jnp.full(shape, mask_id, jnp.int32), jnp.arange(n))
    nfe = n * calls_per_eval(denoiser)
    if return_order:
        return z, nfe, order.T
    return z, nfe
