r"""Masked-diffusion samplers as strategies (`AbstractMaskedSampler`) run by `vd.masked.sample` (THEORY §8, §14).

Every sampler works on a batch `shape = (batch, *example_shape)`, calls the denoiser (on ONE example,
`(z, lam) -> logits (*example_shape, V)`) through `jax.vmap`, is jittable (`lax.scan`, static
shapes), and `sample` returns `(samples, nfe)` with `nfe` a Python int: the batched network calls.
Step $k$ of a sampler draws with `fold_in(key, k)`.
"""

import abc
import functools as ft
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax import lax

from .._misc import check_finite, check_instance, check_positive_int, concrete, error_if
from .._types import Array, Int, PRNGKeyArray
from ..samplers import calls_per_eval
from ._sampling import (
    AbstractTimeGrid,
    check_dtype,
    check_shape,
    check_steps,
    check_top_p,
    check_vocab,
    Condition,
    grid_times,
    log_probs,
    reveal,
    UniformGrid,
)
from ._schedules import AbstractMaskingSchedule


class AbstractMaskedSampler(eqx.Module):
    """A sampling strategy for masked diffusion, run by `vd.masked.sample`.

    `num_calls` gives the batched network calls (a Python int; it also checks `num_steps`); `run` maps
    the starting tokens to samples, never changing a position where `frozen` is True.
    """

    @abc.abstractmethod
    def num_calls(self, num_steps: int | None, num_tokens: int, num_free: int | None) -> int:
        """Network calls for `num_steps` steps on `num_tokens` positions of which `num_free` (at most, per
        sequence; None when not known at trace time) are to be generated."""

    @abc.abstractmethod
    def run(
        self,
        logits_fn: Callable,
        z: Int[Array, " batch *shape"],
        frozen: Array,
        *,
        key: PRNGKeyArray,
        schedule: AbstractMaskingSchedule,
        num_steps: int | None,
        mask_id: int,
        num_tokens: int,
        num_free: int | None,
        dtype,
    ) -> Int[Array, " batch *shape"]:
        """Generate the masked, non-frozen tokens of `z`; `logits_fn(z, lam)` is the batched denoiser."""


def sample(
    sampler: AbstractMaskedSampler,
    denoiser: Callable,
    shape: tuple[int, ...],
    *,
    key: PRNGKeyArray,
    schedule: AbstractMaskingSchedule,
    mask_id: int,
    num_steps: int | None = None,
    condition: Condition | None = None,
    dtype=jnp.float32,
) -> tuple[Int[Array, " batch *shape"], int]:
    r"""Sample masked diffusion with `sampler`, from all-masked (or the `condition`'s tokens) down to $t = 0$.

    Args:
        sampler: an `AbstractMaskedSampler`, e.g. `vd.masked.Ancestral()` or `vd.masked.FirstHitting()`.
        denoiser: `(z, lam) -> logits (*example_shape, V)` over the $V$ real tokens, on ONE example
            (guidance: `vd.masked.guided`).
        shape: `(batch, *example_shape)`.
        key: PRNG key.
        schedule: the masking schedule ($\alpha_t$ sets how many tokens each step reveals).
        mask_id: the mask token's id, outside the denoiser's ids $[0, V)$ (usually $V$).
        num_steps: $T$, the number of steps (`None` for `FirstHitting`, which takes one per token).
        condition: optional `Condition` (infilling, prefix): tokens kept fixed in every sample.
        dtype: float32 (default) or float64 for the Gumbel-max draws.

    Returns:
        `(samples, nfe)`: int32 tokens of `shape`, and the batched network calls (a Python int, times
        `calls_per_eval(denoiser)`, e.g. 2 for `guided`).

    Raises:
        TypeError: `sampler` or `schedule` of the wrong kind.
        ValueError: a bad `shape`, `num_steps`, `dtype`, `mask_id` (negative, or one of the denoiser's token
            ids), or `condition` (shape unlike the samples', given ids outside $[0, V)$).
    """
    check_instance(sampler, AbstractMaskedSampler, "sampler", "vd.masked.Ancestral()")
    check_instance(schedule, AbstractMaskingSchedule, "schedule", "vd.masked.LinearSchedule()")
    shape = check_shape(shape)
    dtype = check_dtype(dtype)
    vocab, mask_id = check_vocab(denoiser, shape[1:], mask_id)
    num_tokens = math.prod(shape[1:])
    if condition is None:
        z, frozen = jnp.full(shape, mask_id, jnp.int32), jnp.zeros(shape, jnp.bool_)
        num_free: int | None = num_tokens
    else:
        if not isinstance(condition, Condition):
            raise TypeError(f"`condition` must be a vd.masked.Condition(tokens, given); got {condition!r}.")
        z, frozen = condition.start(shape, mask_id, vocab)
        given = concrete(frozen)
        num_free = None if given is None else int(np.max(np.sum(~given.reshape(shape[0], -1), axis=1)))
    calls = sampler.num_calls(num_steps, num_tokens, num_free) * calls_per_eval(denoiser)

    def logits_fn(zs, lam):
        lam = jnp.asarray(lam)
        return jax.vmap(denoiser, in_axes=(0, 0 if lam.ndim else None))(zs, lam)

    z = sampler.run(
        logits_fn,
        z,
        frozen,
        key=key,
        schedule=schedule,
        num_steps=num_steps,
        mask_id=mask_id,
        num_tokens=num_tokens,
        num_free=num_free,
        dtype=dtype,
    )
    return z, calls


def step_alphas(schedule: AbstractMaskingSchedule, times: Array) -> tuple[Array, Array]:
    r"""$\alpha$ at the grid times with $\alpha(t_0) := 1$ (the last step reveals every token), and $\lambda$."""
    return schedule.alpha(times).at[0].set(1.0), schedule.lam(times)


class Ancestral(AbstractMaskedSampler):
    r"""MD4's ancestral sampler: from $t$ to $s$, a masked token is revealed with probability
    $(\alpha_s - \alpha_t)/(1 - \alpha_t)$, its value drawn from $\mu_\theta(\cdot|z_t)$; revealed tokens never
    change (SUBS); the last step reveals all. $T$ calls.

    Args:
        grid: the time grid (`UniformGrid()`, `CosineGridFineAtData()`, MD4's `CosineGridFineAtNoise()`).
        top_p: optional nucleus threshold in $(0, 1]$.
    """

    grid: AbstractTimeGrid = UniformGrid()
    top_p: float | None = None

    def __check_init__(self):
        check_top_p(self.top_p, "Ancestral")

    def num_calls(self, num_steps: int | None, num_tokens: int, num_free: int | None) -> int:
        """$T$."""
        return check_steps(num_steps, "Ancestral")

    def run(self, logits_fn, z, frozen, *, key, schedule, num_steps, mask_id, num_tokens, num_free, dtype):
        """MD4 steps along the grid."""
        assert num_steps is not None
        alphas, lams = step_alphas(schedule, grid_times(self.grid, num_steps))

        def step(z, k):
            t = num_steps - k
            a_t, a_s = alphas[t], alphas[t - 1]
            logp = log_probs(logits_fn(z, lams[t]), self.top_p, dtype)
            r = jnp.clip((a_s - a_t) / (1.0 - a_t), 0.0, 1.0)
            return reveal(z, frozen, logp, r, jr.fold_in(key, k), mask_id), None

        z, _ = lax.scan(step, z, jnp.arange(num_steps))
        return z


def _first_hitting_calls(num_steps: int | None, num_tokens: int, num_free: int | None) -> int:
    if num_steps is None:
        return num_tokens if num_free is None else num_free
    steps = check_steps(num_steps, "FirstHitting")
    if num_free is not None and steps < num_free:
        raise ValueError(
            f"FirstHitting needs one call per generated token: `num_steps`={steps} is below the {num_free} tokens "
            "to generate; pass num_steps=None."
        )
    return steps


class FirstHitting(AbstractMaskedSampler):
    r"""The first-hitting sampler (Zheng et al. 2024, arXiv:2409.02908): exact, one call per token.

    With $n$ masked tokens at time $t$, the next unmasking time solves
    $\alpha(t') = 1 - (1 - \alpha(t))\,u^{1/n}$, $u \sim U(0, 1)$; one token, uniform among the masked,
    is revealed there from $\mu_\theta(\cdot|z, \lambda(t'))$ (THEORY §14). With the exact posterior the
    samples are exact, in $L$ batched calls for $L$ tokens to generate (each sequence has its own times).
    `num_steps=None` makes one call per token to generate: $L$, or with a `Condition` known at trace
    time the most free tokens of any sequence (under `jit` the condition is traced: pass that count as
    `num_steps` to save the calls; it is checked at run time).

    Args:
        top_p: optional nucleus threshold in $(0, 1]$.
    """

    top_p: float | None = None

    def __check_init__(self):
        check_top_p(self.top_p, "FirstHitting")

    def num_calls(self, num_steps: int | None, num_tokens: int, num_free: int | None) -> int:
        """One per free token."""
        return _first_hitting_calls(num_steps, num_tokens, num_free)

    def run(self, logits_fn, z, frozen, *, key, schedule, num_steps, mask_id, num_tokens, num_free, dtype):
        """Reveal one token per call at the first-hitting times."""
        batch = z.shape[0]
        flat_z, flat_frozen = z.reshape(batch, -1), frozen.reshape(batch, -1)
        lam_lo, lam_hi = schedule.lam(jnp.ones((), dtype)), schedule.lam(jnp.zeros((), dtype))
        log1m_a = jnp.full((batch,), jnp.log(schedule.one_minus_alpha(jnp.ones((), dtype))), dtype)
        tiny = float(jnp.finfo(dtype).tiny)

        def step(carry, k):
            flat, log1m = carry
            ku, kp, kv = jr.split(jr.fold_in(key, k), 3)
            masked = (flat == mask_id) & ~flat_frozen
            n = jnp.sum(masked, axis=1)
            u = jr.uniform(ku, (batch,), dtype, minval=tiny)
            log1m_next = log1m + jnp.log(u) / jnp.maximum(n, 1).astype(dtype)
            lam = jnp.clip(jnp.log(-jnp.expm1(log1m_next)) - log1m_next, lam_lo, lam_hi)
            logp = log_probs(logits_fn(flat.reshape(z.shape), lam), self.top_p, dtype).reshape(batch, flat.shape[1], -1)
            pos = jnp.argmax(jnp.where(masked, jr.gumbel(kp, masked.shape, dtype), -jnp.inf), axis=1)
            lp = jnp.take_along_axis(logp, pos[:, None, None], axis=1)[:, 0]
            val = jnp.argmax(lp + jr.gumbel(kv, lp.shape, dtype), axis=-1).astype(jnp.int32)
            active = n > 0
            rows = jnp.arange(batch)
            flat = flat.at[rows, pos].set(jnp.where(active, val, flat[rows, pos]))
            return (flat, jnp.where(active, log1m_next, log1m)), None

        steps = _first_hitting_calls(num_steps, num_tokens, num_free)
        if num_steps is not None and num_free is None:  # a traced condition: check the bound at run time
            most = jnp.max(jnp.sum((flat_z == mask_id) & ~flat_frozen, axis=1))
            flat_z = error_if(flat_z, most > steps, "FirstHitting: `num_steps` is below the tokens to generate.")
        (flat_z, _), _ = lax.scan(step, (flat_z, log1m_a), jnp.arange(steps))
        return flat_z.reshape(z.shape)


class MaskGIT(AbstractMaskedSampler):
    r"""MaskGIT's confidence ordering (Chang et al. 2022, arXiv:2202.04200): a heuristic, not an exact sampler.

    Each step draws a value for every masked token, then keeps the most confident ones (highest
    log-probability of the drawn value, plus `temperature` $\cdot(1 - (k+1)/T)$ Gumbel noise) so that
    $\mathrm{round}(n_0 (1 - \alpha_s))$ stay masked ($n_0$: the tokens to generate; at least one is revealed
    per step); the rest are re-masked. It favours likely tokens, so it lowers sample diversity and does
    not sample the model's distribution even with many steps (THEORY §14). $T$ calls.

    Args:
        grid: the time grid.
        temperature: MaskGIT's choice temperature (0: pure confidence order; MaskGIT uses 4.5).
        top_p: optional nucleus threshold in $(0, 1]$.
    """

    grid: AbstractTimeGrid = UniformGrid()
    temperature: float = 0.0
    top_p: float | None = None

    def __check_init__(self):
        check_top_p(self.top_p, "MaskGIT")
        check_finite(self.temperature, "temperature", "MaskGIT")
        if not self.temperature >= 0:
            raise ValueError(f"`temperature` of MaskGIT must be >= 0; got {self.temperature}.")

    def num_calls(self, num_steps: int | None, num_tokens: int, num_free: int | None) -> int:
        """$T$."""
        return check_steps(num_steps, "MaskGIT")

    def run(self, logits_fn, z, frozen, *, key, schedule, num_steps, mask_id, num_tokens, num_free, dtype):
        """Confidence-ordered reveals along the grid."""
        assert num_steps is not None
        times = grid_times(self.grid, num_steps)
        one_minus = schedule.one_minus_alpha(times).at[0].set(0.0)
        lams = schedule.lam(times)
        batch = z.shape[0]
        n0 = jnp.sum(((z == mask_id) & ~frozen).reshape(batch, -1), axis=1).astype(dtype)

        def step(z, k):
            t = num_steps - k
            kv, kc = jr.split(jr.fold_in(key, k))
            logp = log_probs(logits_fn(z, lams[t]), self.top_p, dtype)
            val = jnp.argmax(logp + jr.gumbel(kv, logp.shape, dtype), axis=-1).astype(jnp.int32)
            conf = jnp.take_along_axis(logp, val[..., None], axis=-1)[..., 0]
            noise = self.temperature * (1.0 - (k + 1).astype(dtype) / num_steps)
            conf = conf + noise * jr.gumbel(kc, conf.shape, dtype)
            cand = ((z == mask_id) & ~frozen).reshape(batch, -1)
            conf = jnp.where(cand, conf.reshape(batch, -1), -jnp.inf)
            n_now = jnp.sum(cand, axis=1)
            keep = jnp.round(n0 * one_minus[t - 1]).astype(jnp.int32)
            keep = jnp.clip(keep, 0, jnp.maximum(n_now - 1, 0))
            rank = jnp.argsort(jnp.argsort(-conf, axis=1), axis=1)  # 0 = most confident
            show = cand & (rank < (n_now - keep)[:, None])
            return jnp.where(show.reshape(z.shape), val, z), None

        z, _ = lax.scan(step, z, jnp.arange(num_steps))
        return z


def _block_free(size: int, num_free: int | None) -> int | None:
    return None if num_free is None else min(size, num_free)


class SemiAutoregressive(AbstractMaskedSampler):
    r"""Semi-autoregressive generation: blocks left to right (over the flattened example), each by `inner`
    conditioned on the blocks before it, later blocks still masked (THEORY §14).

    Exact with the exact posterior whenever `inner` is (the denoiser sees later blocks as masked). A
    time-conditioned network sees each block's own times. Block $b$ draws with `fold_in(key, b)`; one
    block is `inner` itself. `num_blocks` times `inner`'s calls (`num_steps` per block).

    Args:
        inner: the sampler for each block.
        num_blocks: the number of blocks; block size $\lceil L / \text{num\_blocks}\rceil$.
    """

    inner: AbstractMaskedSampler
    num_blocks: int = eqx.field(static=True)

    def __check_init__(self):
        if not isinstance(self.inner, AbstractMaskedSampler):
            raise TypeError(f"`inner` of SemiAutoregressive must be an AbstractMaskedSampler; got {self.inner!r}.")
        check_positive_int(self.num_blocks, "num_blocks")

    def num_calls(self, num_steps: int | None, num_tokens: int, num_free: int | None) -> int:
        """`num_blocks` times the inner sampler's calls for one block."""
        size = -(-num_tokens // self.num_blocks)
        return self.num_blocks * self.inner.num_calls(num_steps, size, _block_free(size, num_free))

    def run(self, logits_fn, z, frozen, *, key, schedule, num_steps, mask_id, num_tokens, num_free, dtype):
        """Run `inner` block by block."""
        run = ft.partial(
            self.inner.run, logits_fn, schedule=schedule, num_steps=num_steps, mask_id=mask_id, dtype=dtype
        )
        if self.num_blocks == 1:
            return run(z, frozen, key=key, num_tokens=num_tokens, num_free=num_free)
        size = -(-num_tokens // self.num_blocks)
        pos = jnp.arange(math.prod(z.shape[1:])).reshape(z.shape[1:])

        def block(z, b):
            outside = jnp.broadcast_to((pos < b * size) | (pos >= (b + 1) * size), z.shape)
            free = _block_free(size, num_free)
            z = run(z, frozen | outside, key=jr.fold_in(key, b), num_tokens=size, num_free=free)
            return z, None

        z, _ = lax.scan(block, z, jnp.arange(self.num_blocks))
        return z
