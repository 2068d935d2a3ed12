r"""Samplers for masked diffusion: MD4 ancestral, top-p, cached (MDLM), any-order autoregressive.

Every sampler works on a batch `shape = (batch, *example_shape)`, calls the denoiser (on ONE example,
`(z, lam) -> logits (*example_shape, V)`) through `jax.vmap`, is jittable (`lax.scan`), and returns
`(samples, nfe)` with `nfe` the number of batched network evaluations.

Categorical draws use the Gumbel-max trick on log-probabilities (never on probabilities, which
underflow in float32 and bias the draws), in float32 by default or in float64 when asked (needs
`jax_enable_x64`).

Ancestral step $t \to s$ (MD4): a masked token is revealed with probability
$(\alpha_s - \alpha_t)/(1 - \alpha_t)$, its value drawn from $\mu_\theta(\cdot|z_t)$; revealed tokens never
change (SUBS). At the last step ($s = 0$) every remaining mask is revealed.
"""

import abc
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax import lax

from .._types import Array, Float, Int, PRNGKeyArray
from ._process import check_mask_id
from ._schedules import AbstractMaskingSchedule


class AbstractTimeGrid(eqx.Module):
    """A sampling grid $0 = t_0 < t_1 < \\dots < t_T = 1$."""

    @abc.abstractmethod
    def __call__(self, num_steps: int) -> Float[Array, " T+1"]:
        """Return the $T + 1$ grid times, increasing from 0 to 1."""


class UniformGrid(AbstractTimeGrid):
    r"""$t_k = k/T$."""

    def __call__(self, num_steps):
        """Uniform grid."""
        return jnp.arange(num_steps + 1, dtype=jnp.float32) / num_steps


class CosineGrid(AbstractTimeGrid):
    r"""$t_k = 1 - \cos(\tfrac{\pi}{2}\,k/T)$: smaller steps near the data end ($t = 0$)."""

    def __call__(self, num_steps):
        """Cosine grid."""
        k = jnp.arange(num_steps + 1, dtype=jnp.float32) / num_steps
        return (2.0 * jnp.sin(0.25 * jnp.pi * k) ** 2).at[-1].set(1.0)


class ExplicitGrid(AbstractTimeGrid):
    r"""Any grid: the given times $0 = t_0 < \dots < t_T = 1$ (`num_steps` must equal $T$).

    Args:
        times: the $T + 1$ increasing times, starting at 0 and ending at 1.
    """

    times: tuple[float, ...] = eqx.field(static=True)

    def __init__(self, times):
        times = tuple(float(t) for t in np.asarray(times, np.float64).ravel())
        if len(times) < 2 or times[0] != 0.0 or times[-1] != 1.0 or np.any(np.diff(times) <= 0):
            raise ValueError(f"`times` must increase strictly from 0 to 1 (T + 1 values); got {times}.")
        self.times = times

    def __call__(self, num_steps):
        """The given grid."""
        if num_steps != len(self.times) - 1:
            raise ValueError(f"`num_steps` must be {len(self.times) - 1} for this ExplicitGrid; got {num_steps}.")
        return jnp.asarray(self.times, jnp.float32)


def _check_common(shape, num_steps, top_p, dtype) -> tuple[int, ...]:
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"`num_steps` must be a positive integer; got {num_steps!r}.")
    if not isinstance(shape, tuple) or len(shape) < 2 or not all(isinstance(d, (int, np.integer)) for d in shape):
        raise ValueError(f"`shape` must be a tuple (batch, *example_shape) of ints; got {shape!r}.")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"`top_p` must be None or a float in (0, 1]; got {top_p!r}.")
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64)):
        raise ValueError(f"`dtype` must be float32 or float64; got {dtype}.")
    if jnp.dtype(dtype) == jnp.dtype(jnp.float64) and not jax.config.read("jax_enable_x64"):
        raise ValueError("`dtype=float64` needs `jax.config.update('jax_enable_x64', True)` in your entry point.")
    return tuple(int(d) for d in shape)


def top_p_filter(logp: Float[Array, "*shape V"], top_p: float) -> Float[Array, "*shape V"]:
    r"""Nucleus filtering: keep the smallest set of tokens whose probability reaches `top_p`; renormalise.

    Works in log space on log-probabilities over the last axis.
    """
    order = jnp.argsort(-logp, axis=-1)
    sorted_lp = jnp.take_along_axis(logp, order, axis=-1)
    cum = jnp.cumsum(jnp.exp(sorted_lp), axis=-1)
    keep_sorted = (cum - jnp.exp(sorted_lp)) < top_p  # the mass before this token is still below top_p
    keep = jnp.zeros_like(keep_sorted)
    keep = jnp.put_along_axis(keep, order, keep_sorted, axis=-1, inplace=False)
    return jax.nn.log_softmax(jnp.where(keep, logp, -jnp.inf), axis=-1)


def _log_probs(logits: Array, top_p: float | None, dtype) -> Array:
    logp = jax.nn.log_softmax(logits.astype(dtype), axis=-1)
    return logp if top_p is None else top_p_filter(logp, top_p)


def _batched(denoiser: Callable, z: Array, lam: Array) -> Array:
    return jax.vmap(denoiser, in_axes=(0, None))(z, lam)


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
) -> tuple[Int[Array, " batch *shape"], Int[Array, ""]]:
    r"""MD4 ancestral sampling from all-masked $z_1$ down to $t = 0$ on a time grid.

    Args:
        denoiser: `(z, lam) -> logits (*example_shape, V)` on one example.
        shape: `(batch, *example_shape)`.
        key: PRNG key (step $k$ uses `fold_in(key, k)`, so cached and uncached runs share draws).
        schedule: the masking schedule ($\alpha_t$ sets how many tokens are revealed per step).
        num_steps: $T$, the number of steps.
        mask_id: the mask token's id.
        grid: `UniformGrid()` or `CosineGrid()`.
        top_p: optional nucleus sampling threshold in $(0, 1]$.
        cache: MDLM's trick: when no token changed since the last network call, reuse its logits
            (skips the network). Exact only for denoisers that ignore $\lambda$ (the absorbing process's
            true posterior does; time-conditioned networks get the previous step's $\lambda$).
        dtype: float32 (default) or float64 for the Gumbel-max draws.

    Returns:
        `(samples, nfe)`: int32 tokens of `shape`, and the number of batched network calls.
    """
    mask_id = check_mask_id(mask_id)
    shape = _check_common(shape, num_steps, top_p, dtype)
    times = grid(num_steps)
    alphas = schedule.alpha(times).at[0].set(1.0)  # reveal everything at the last step
    lams = schedule.lam(times)
    z0 = jnp.full(shape, mask_id, jnp.int32)
    logits0 = jax.eval_shape(denoiser, z0[0], lams[-1])
    vocab = logits0.shape[-1]
    cached0 = jnp.zeros(shape + (vocab,), logits0.dtype)

    def step(carry, k):
        z, cached, fresh, nfe = carry
        t_idx = num_steps - k
        a_t, a_s, lam_t = alphas[t_idx], alphas[t_idx - 1], lams[t_idx]

        def compute(_):
            return _batched(denoiser, z, lam_t), nfe + 1

        if cache:
            logits, nfe = lax.cond(fresh, lambda _: (cached, nfe), compute, None)
        else:
            logits, nfe = compute(None)
        logp = _log_probs(logits, top_p, dtype)
        r = jnp.clip((a_s - a_t) / (1.0 - a_t), 0.0, 1.0).astype(dtype)
        # categories: the V tokens (revealed) and "stay masked"
        cat = jnp.concatenate([jnp.log(r) + logp, jnp.broadcast_to(jnp.log1p(-r), logp.shape[:-1])[..., None]], -1)
        g = jr.gumbel(jr.fold_in(key, k), cat.shape, dtype)
        draw = jnp.argmax(cat + g, axis=-1).astype(jnp.int32)
        new = jnp.where(draw == vocab, mask_id, draw)
        z_new = jnp.where(z == mask_id, new, z)
        unchanged = jnp.all(z_new == z)
        return (z_new, logits, unchanged, nfe), None

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
) -> tuple[Int[Array, " batch *shape"], Int[Array, ""]] | tuple[Int[Array, " batch *shape"], Int[Array, ""], Array]:
    r"""Any-order autoregressive sampling: reveal ONE uniformly chosen masked token per step.

    With the exact conditionals this samples the data distribution exactly (the any-order AR view of
    masked diffusion), whatever the order. The network sees $\lambda = \log((k + \tfrac12)/(N - k - \tfrac12))$
    at step $k$ of $N$ (the fraction of revealed tokens as $\alpha$). Useful for debugging a denoiser.

    Args:
        denoiser: `(z, lam) -> logits (*example_shape, V)` on one example.
        shape: `(batch, *example_shape)`.
        key: PRNG key.
        mask_id: the mask token's id.
        return_order: also return the flat position revealed at each step, shape `(batch, N)`.
        dtype: float32 or float64 for the Gumbel-max draws.

    Returns:
        `(samples, nfe)` with `nfe` $= N$ (and the order when asked).
    """
    mask_id = check_mask_id(mask_id)
    shape = _check_common(shape, 1, None, dtype)
    batch, ex = shape[0], shape[1:]
    n = math.prod(ex)

    def step(z, k):
        kp, kv = jr.split(jr.fold_in(key, k))
        kf = k.astype(jnp.float32)
        lam = jnp.log(kf + 0.5) - jnp.log(n - kf - 0.5)
        logits = _batched(denoiser, z, lam)
        logp = jax.nn.log_softmax(logits.astype(dtype), axis=-1).reshape(batch, n, -1)
        flat = z.reshape(batch, n)
        pos_score = jnp.where(flat == mask_id, jr.gumbel(kp, (batch, n), dtype), -jnp.inf)
        pos = jnp.argmax(pos_score, axis=-1)
        lp = jnp.take_along_axis(logp, pos[:, None, None], axis=1)[:, 0]
        val = jnp.argmax(lp + jr.gumbel(kv, lp.shape, dtype), axis=-1).astype(jnp.int32)
        flat = flat.at[jnp.arange(batch), pos].set(val)
        return flat.reshape(shape), pos.astype(jnp.int32)

    z, order = lax.scan(step, jnp.full(shape, mask_id, jnp.int32), jnp.arange(n))
    nfe = jnp.asarray(n, jnp.int32)
    if return_order:
        return z, nfe, order.T
    return z, nfe
