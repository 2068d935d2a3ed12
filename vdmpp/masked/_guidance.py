r"""Classifier-free guidance for masked diffusion: a denoiser wrapper (two network calls per evaluation)."""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from .._types import Array, Float, FloatScalarLike, Int
from ..samplers import AbstractGuidance


_FLOOR = -1e9  # log-probabilities below this count as impossible (keeps (1 - w) * -inf finite)


class Guided(AbstractGuidance):
    r"""Classifier-free guidance in log-probability space: $(1 - w)\log p_\varnothing + w \log p_c$.

    That is $p \propto p_\varnothing^{1-w} p_c^{w}$ per token (normalised by the samplers): $w = 0$ is the
    unconditional model, $w = 1$ the conditional one, $w > 1$ guides. Impossible tokens
    ($\log p = -\infty$) are floored at $-10^9$ so the combination stays finite. Samplers count two
    calls per evaluation.

    Args:
        denoiser: `(z, lam, *, label) -> logits (*shape, V)` on one example.
        label: the condition $c$.
        null_label: the "no condition" label $\varnothing$ the model was trained with.
        scale: the guidance scale $w$.
    """

    def __call__(self, z: Int[Array, "*shape"], lam: FloatScalarLike) -> Float[Array, "*shape V"]:
        """Guided log-probabilities over the $V$ tokens (unnormalised for $w \\ne 0, 1$)."""
        cond = jax.nn.log_softmax(self.denoiser(z, lam, label=self.label), axis=-1)
        uncond = jax.nn.log_softmax(self.denoiser(z, lam, label=self.null_label), axis=-1)
        w = self.scale.astype(cond.dtype)
        return (1.0 - w) * jnp.maximum(uncond, _FLOOR) + w * jnp.maximum(cond, _FLOOR)


def guided(denoiser: Callable, label, null_label, scale: FloatScalarLike) -> Guided:
    """Wrap a conditional masked denoiser `(z, lam, *, label)` for classifier-free guidance (see `Guided`)."""
    return Guided(denoiser, label, null_label, jnp.asarray(scale, jnp.float32))
