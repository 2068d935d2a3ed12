r"""Shared pieces of the masked samplers: time grids, nucleus filtering, conditioning, checks, draws.

Categorical draws use the Gumbel-max trick on log-probabilities (never on probabilities, which
underflow in float32 and bias the draws), in float32 by default or in float64 when asked (needs
`jax_enable_x64`).
"""

import abc
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from .._misc import check_positive_int, concrete, error_if
from .._types import Array, ArrayLike, Float, Int, PRNGKeyArray, Shaped
from ._elbo import infer_vocab_size
from ._process import check_mask_id


class AbstractTimeGrid(eqx.Module):
    """A sampling grid $0 = t_0 < t_1 < \\dots < t_T = 1$ (sampling runs from $t_T = 1$ down to 0)."""

    @abc.abstractmethod
    def __call__(self, num_steps: int) -> Float[Array, " M"]:
        """Return the $T + 1$ grid times, increasing from 0 to 1."""


class UniformGrid(AbstractTimeGrid):
    r"""$t_k = k/T$."""

    def __call__(self, num_steps: int) -> Float[Array, " M"]:
        """Uniform grid."""
        return jnp.arange(num_steps + 1, dtype=jnp.float32) / num_steps


class CosineGridFineAtData(AbstractTimeGrid):
    r"""$t_k = 1 - \cos(\tfrac{\pi}{2}\,k/T)$: small steps near the data ($t = 0$), large near the noise.

    The mirror image of MD4's cosine grid (`CosineGridFineAtNoise`).
    """

    def __call__(self, num_steps: int) -> Float[Array, " M"]:
        """Cosine grid, fine at $t = 0$."""
        k = jnp.arange(num_steps + 1, dtype=jnp.float32) / num_steps
        return (2.0 * jnp.sin(0.25 * jnp.pi * k) ** 2).at[-1].set(1.0)  # = 1 - cos(pi k / 2), no cancellation


class CosineGridFineAtNoise(AbstractTimeGrid):
    r"""MD4's cosine grid, $t_k = \sin(\tfrac{\pi}{2}\,k/T)$: small steps near the noise ($t = 1$).

    What MD4's `sampling_grid="cosine"` (the default of every MD4 config) uses
    (`md4/models/diffusion/md4.py`, `get_sampling_grid`: $t = \cos(\tfrac\pi2(1 - k/T))$).
    """

    def __call__(self, num_steps: int) -> Float[Array, " M"]:
        """MD4's cosine grid."""
        k = jnp.arange(num_steps + 1, dtype=jnp.float32) / num_steps
        return jnp.sin(0.5 * jnp.pi * k).at[0].set(0.0).at[-1].set(1.0)


class ExplicitGrid(AbstractTimeGrid):
    r"""Any grid: the given times $0 = t_0 < \dots < t_T = 1$ (`num_steps` must equal $T$).

    Args:
        times: the $T + 1$ increasing times, starting at 0 and ending at 1.
    """

    times: tuple[float, ...] = eqx.field(static=True)

    def __init__(self, times: Sequence[float] | Float[ArrayLike, " M"]):
        values = np.asarray(times, np.float64).ravel()
        if (
            values.shape[0] < 2
            or values[0] != 0.0
            or values[-1] != 1.0
            or not np.all(np.diff(values) > 0)
            or not np.all(np.isfinite(values))
        ):
            raise ValueError(f"`times` must increase strictly from 0 to 1 (T + 1 values); got {values}.")
        self.times = tuple(float(t) for t in values)

    def __call__(self, num_steps: int) -> Float[Array, " M"]:
        """The given grid."""
        if num_steps != len(self.times) - 1:
            raise ValueError(f"`num_steps` must be {len(self.times) - 1} for this ExplicitGrid; got {num_steps}.")
        return jnp.asarray(self.times, jnp.float32)


def grid_times(grid: AbstractTimeGrid, num_steps: int) -> Array:
    """The grid's times, checked: strictly increasing from 0 to 1 (when their values are known)."""
    if not isinstance(grid, AbstractTimeGrid):
        raise TypeError(f"`grid` must be a vd.masked.AbstractTimeGrid such as UniformGrid(); got {grid!r}.")
    times = grid(num_steps)
    values = concrete(times)
    if values is not None and not (
        values.shape == (num_steps + 1,) and values[0] == 0 and values[-1] == 1 and np.all(np.diff(values) > 0)
    ):
        raise ValueError(
            f"{type(grid).__name__} must give {num_steps + 1} times increasing strictly from 0 to 1; got {values}."
        )
    return times


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


def check_top_p(top_p, owner: str) -> None:
    """`top_p` must be None or in (0, 1]."""
    if top_p is not None and not (isinstance(top_p, (int, float)) and not isinstance(top_p, bool) and 0 < top_p <= 1):
        raise ValueError(f"`top_p` of {owner} must be None or a float in (0, 1]; got {top_p!r}.")


def log_probs(logits: Array, top_p: float | None, dtype) -> Array:
    """Log-softmax in `dtype`, nucleus-filtered when `top_p` is set."""
    logp = jax.nn.log_softmax(logits.astype(dtype), axis=-1)
    return logp if top_p is None else top_p_filter(logp, top_p)


def reveal(z: Array, frozen: Array, logp: Array, r: Array, key: PRNGKeyArray, mask_id: int) -> Array:
    r"""MD4's step on the masked, non-frozen tokens: each is revealed with probability `r`, its value
    drawn from `exp(logp)`; one Gumbel-max draw over the $V$ tokens and "stay masked"."""
    dtype = logp.dtype
    r = jnp.broadcast_to(jnp.asarray(r, dtype), logp.shape[:-1])
    cat = jnp.concatenate([jnp.log(r)[..., None] + logp, jnp.log1p(-r)[..., None]], -1)
    draw = jnp.argmax(cat + jr.gumbel(key, cat.shape, dtype), axis=-1).astype(jnp.int32)
    new = jnp.where(draw == logp.shape[-1], mask_id, draw)
    return jnp.where((z == mask_id) & ~frozen, new, z)


def check_dtype(dtype) -> jnp.dtype:
    """float32, or float64 when x64 is on."""
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64)):
        raise ValueError(f"`dtype` must be float32 or float64; got {dtype}.")
    if jnp.dtype(dtype) == jnp.dtype(jnp.float64) and not jax.config.read("jax_enable_x64"):
        raise ValueError("`dtype=float64` needs `jax.config.update('jax_enable_x64', True)` in your entry point.")
    return jnp.dtype(dtype)


def check_shape(shape) -> tuple[int, ...]:
    """`(batch, *example_shape)` of positive ints."""
    if (
        not isinstance(shape, tuple)
        or len(shape) < 2
        or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 1 for d in shape)
    ):
        raise ValueError(f"`shape` must be a tuple (batch, *example_shape) of positive ints; got {shape!r}.")
    return tuple(int(d) for d in shape)


def check_vocab(denoiser, example_shape: tuple[int, ...], mask_id) -> tuple[int, int]:
    """`mask_id` must lie outside the denoiser's token ids $[0, V)$; returns `(V, mask_id)`."""
    mask_id = check_mask_id(mask_id)
    vocab = infer_vocab_size(denoiser, jnp.full(example_shape, mask_id, jnp.int32))
    if mask_id < vocab:
        raise ValueError(
            f"`mask_id`={mask_id} is one of the denoiser's {vocab} token ids [0, {vocab}); the mask token must lie "
            f"outside them, or it would be drawn as a token (usually mask_id={vocab})."
        )
    return vocab, mask_id


def check_steps(num_steps, owner: str) -> int:
    """A positive Python int of steps."""
    return check_positive_int(num_steps, "num_steps", f" for {owner}")


class Condition(eqx.Module):
    r"""Tokens to condition on (infilling, prefix): the samples keep `tokens` wherever `given` is True.

    Exact for the absorbing process: the given tokens are revealed from the start and never change,
    and the denoiser's posterior over the other tokens conditions on them (THEORY §14). Both arrays are
    shaped like the samples `(batch, *example)` or like one example `(*example)` (the same for all).

    Args:
        tokens: token ids in $[0, V)$ at the given positions (any value elsewhere).
        given: boolean mask of the given positions, shaped like `tokens`.
    """

    tokens: Int[Array, "..."]
    given: Shaped[Array, "..."]

    def __init__(self, tokens: Int[ArrayLike, "..."], given: Shaped[ArrayLike, "..."]):
        tokens, given = jnp.asarray(tokens), jnp.asarray(given)
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise TypeError(f"`tokens` of Condition must hold integer ids; got dtype {tokens.dtype}.")
        if given.dtype != jnp.bool_:
            raise TypeError(f"`given` of Condition must be a boolean mask; got dtype {given.dtype}.")
        if tokens.shape != given.shape:
            raise ValueError(
                f"`given` of Condition must have the shape of `tokens`, {tokens.shape}; got {given.shape}."
            )
        self.tokens = tokens.astype(jnp.int32)
        self.given = given

    def start(self, shape: tuple[int, ...], mask_id: int, vocab: int) -> tuple[Array, Array]:
        """The starting tokens (given ones, else `mask_id`) and the given mask, both shaped `shape`."""
        if self.given.shape not in (shape, shape[1:]):
            raise ValueError(
                f"The conditioning mask has shape {self.given.shape}, which differs from the samples' shape {shape} "
                f"and from one example's {shape[1:]}; pass `tokens` and `given` shaped like either."
            )
        given = jnp.broadcast_to(self.given, shape)
        tokens = jnp.broadcast_to(self.tokens, shape)
        bad = given & ((tokens < 0) | (tokens >= vocab))
        values = concrete(bad)
        if values is not None and np.any(values):
            raise ValueError(f"Condition `tokens` at given positions must be token ids in [0, {vocab}).")
        if values is None:
            msg = f"Condition `tokens` at given positions must be token ids in [0, {vocab})."
            tokens = error_if(tokens, jnp.any(bad), msg)
        return jnp.where(given, tokens, mask_id), given
