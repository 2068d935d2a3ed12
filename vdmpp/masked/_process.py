r"""The masking (absorbing) forward process and input checks (THEORY §1, §8).

Each token of $x$ independently stays with probability $\alpha_t$, else becomes `mask_id`. Token arrays
may have any shape (a sequence, an H×W×C pixel grid); the mask id is always explicit.
"""

import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Bool

from .._misc import concrete, error_if
from .._types import Array, FloatLike, Int, PRNGKeyArray, Shaped
from ._schedules import AbstractMaskingSchedule


def check_mask_id(mask_id) -> int:
    """Validate the explicit mask id (a non-negative Python int)."""
    if isinstance(mask_id, bool) or not isinstance(mask_id, (int, np.integer)) or mask_id < 0:
        raise ValueError(
            f"`mask_id` must be a non-negative Python int (usually the vocabulary size V); got {mask_id!r}."
        )
    return int(mask_id)


def check_tokens(tokens, *, mask_id: int, vocab_size: int | None = None, name: str = "tokens") -> Array:
    """Check clean token ids: integer, in $[0, V)$, never `mask_id`; returns them as a JAX array.

    Concrete arrays are checked eagerly (ValueError); traced ones with `eqx.error_if`.
    """
    tokens = jnp.asarray(tokens)
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise TypeError(f"`{name}` must hold integer token ids; got dtype {tokens.dtype}.")
    hi = np.iinfo(np.int64).max if vocab_size is None else vocab_size
    values = concrete(tokens)
    if values is None:
        bad = (tokens < 0) | (tokens >= hi) | (tokens == mask_id)
        return error_if(tokens, bad, f"`{name}` holds ids outside [0, vocab_size) or equal to mask_id.")
    if values.size:
        lo_v, hi_v = int(values.min()), int(values.max())
        if lo_v < 0 or hi_v >= hi:
            raise ValueError(
                f"`{name}` must hold ids in [0, {vocab_size}) (the real tokens); got values in [{lo_v}, {hi_v}]."
            )
        if np.any(values == mask_id):
            raise ValueError(
                f"`{name}` (clean data) contains mask_id={mask_id}; clean data must not contain the mask token. "
                "Pass `mask_id` outside the data's vocabulary (e.g. mask_id=V)."
            )
    return tokens


def checked_alpha(alpha: Array) -> Array:
    """Error (inside jit too) when a schedule produced $\\alpha \\notin [0, 1]$."""
    bad = ~((alpha >= 0) & (alpha <= 1))
    return error_if(alpha, bad, "The masking schedule returned alpha outside [0, 1]; check its parameters.")


def _expand(a: Array, ndim: int) -> Array:
    return jnp.reshape(a, a.shape + (1,) * (ndim - a.ndim))


def sample_mask(key: PRNGKeyArray, shape: tuple[int, ...], alpha: FloatLike) -> Bool[Array, "*dims"]:
    r"""Draw which tokens are masked: True with probability $1 - \alpha$, independently per token.

    `alpha` is a scalar or has a leading prefix of `shape` (one $\alpha$ per example).
    """
    alpha = checked_alpha(jnp.asarray(alpha))
    u = jr.uniform(key, shape, alpha.dtype if jnp.issubdtype(alpha.dtype, jnp.floating) else jnp.float32)
    return u >= _expand(alpha, len(shape))


def apply_mask(tokens: Int[Array, "*dims"], mask: Bool[Array, "*dims"], mask_id: int) -> Int[Array, "*dims"]:
    """$z = $ `mask_id` where `mask`, else the token."""
    if mask.shape != tokens.shape:
        raise ValueError(f"`mask` must have the shape of `tokens`, {tokens.shape}; got {mask.shape}.")
    return jnp.where(mask, jnp.asarray(mask_id, tokens.dtype), tokens)


def forward(
    tokens: Int[Array, "*dims"],
    t: FloatLike,
    *,
    key: PRNGKeyArray,
    schedule: AbstractMaskingSchedule,
    mask_id: int,
) -> Int[Array, "*dims"]:
    r"""Sample $z_t \sim q(z_t|x)$: each token kept with probability $\alpha_t$, else `mask_id`.

    Args:
        tokens: clean token ids, any shape (`t` scalar) or `(batch, ...)` with `t` of shape `(batch,)`.
        t: time(s) in $[0, 1]$.
        key: PRNG key.
        schedule: the masking schedule.
        mask_id: the id of the mask token.
    """
    mask_id = check_mask_id(mask_id)
    tokens = check_tokens(tokens, mask_id=mask_id)
    mask = sample_mask(key, tokens.shape, schedule.alpha(t))
    return apply_mask(tokens, mask, mask_id)


def masks_from_uniforms(u: Shaped[Array, "*dims"], alpha: FloatLike) -> Bool[Array, "*dims"]:
    r"""Coupled masks: token masked at level $\alpha$ iff $u \ge \alpha$ (one $u$ per token, shared across times)."""
    alpha = checked_alpha(jnp.asarray(alpha))
    return u >= _expand(alpha, u.ndim)
