"""Turning a network into the denoiser callables that losses and samplers take."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from .. import process
from .._types import Array, Float, FloatScalarLike, Int, PRNGKeyArray


def _bits_hash(x: Array) -> Array:
    """A uint32 hash of the bits of `x` (wrapping sums of position-weighted 32-bit words)."""
    x = jnp.asarray(x)
    if x.dtype.itemsize != 4:
        x = x.astype(jnp.float32 if jnp.issubdtype(x.dtype, jnp.floating) else jnp.int32)
    words = jax.lax.bitcast_convert_type(x, jnp.uint32).ravel()
    weights = jnp.arange(1, 2 * words.size, 2, dtype=jnp.uint32) * jnp.uint32(2654435761)  # odd: Knuth
    return jnp.sum(words * weights, dtype=jnp.uint32)


class ModelDenoiser(eqx.Module):
    """`(z, lam) -> model(z, lam, label=label, key=key, inference=inference)`: a network as a plain denoiser.

    A Module (not a closure), so passing it to a jitted function does not recompile for each new instance.
    With a dropout `key`, each call folds the bits of `(z, lam)` into it, so the examples of a vmapped batch
    (which all see the same `key`) get different dropout masks, deterministically.
    """

    model: eqx.Module
    label: Int[Array, ""] | int | None
    key: PRNGKeyArray | None
    inference: bool = eqx.field(static=True)

    def __call__(self, z: Float[Array, "*data"], lam: FloatScalarLike) -> Float[Array, "*data"]:
        """Apply the wrapped model to one example."""
        key = self.key
        if key is not None:
            key = jr.fold_in(key, _bits_hash(z))
            key = jr.fold_in(key, _bits_hash(jnp.asarray(lam, jnp.float32)))
        return self.model(z, lam, label=self.label, key=key, inference=self.inference)  # pyright: ignore


def as_denoiser(
    model: eqx.Module,
    parameterisation: process.AbstractParameterisation = process.EpsPrediction(),
    *,
    label: Int[Array, ""] | int | None = None,
    inference: bool = True,
    key: PRNGKeyArray | None = None,
) -> Callable:
    r"""Wrap a network as an $\hat\epsilon$-denoiser `(z, lam) -> eps_hat` for `vdmpp.losses` and samplers.

    Args:
        model: a network called as `model(z, lam, *, label, key, inference)` (e.g. [`vdmpp.nn.UNet`][]).
        parameterisation: what the network's output means (ε, x, v, F, o or score prediction); converted to
            $\hat\epsilon$ with `vdmpp.process.as_eps_denoiser`.
        label: class label for a class-conditional model (None: the null class, i.e. unconditional).
        inference: False to apply dropout (then `key` is needed when the model has dropout; each example
            folds its own `(z, lam)` into the key, so a vmapped batch gets independent-looking masks).
        key: dropout key, only with `inference=False`.

    Returns:
        A callable on one example, `(z, lam) -> eps_hat` with the shape of `z`.
    """
    if not isinstance(parameterisation, process.AbstractParameterisation):
        raise TypeError(
            f"`parameterisation` must be a vdmpp.process parameterisation object such as "
            f"vd.process.VPrediction(); got {parameterisation!r}."
        )
    return process.as_eps_denoiser(ModelDenoiser(model, label, key, inference), parameterisation)
