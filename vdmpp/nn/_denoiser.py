r"""The one adapter from a network to the denoiser callables that losses and samplers take.

A network is called as `model(z, lam, *, label=..., key=..., inference=...)` on ONE example. Losses and
samplers call a denoiser `(z, lam) -> output` on one example and vmap it themselves. `ModelDenoiser` bridges
the two and converts the output to $\hat\epsilon$ with the parameterisation the network was trained in.

**Dropout-key policy (one, everywhere).** A `ModelDenoiser` holds at most one dropout key. Each call folds
the bits of its own `(z, lam)` into that key, so the examples of a vmapped batch, which all see the same key,
get different dropout masks, deterministically. Training losses build a fresh `ModelDenoiser` per step from
the step's key; evaluation and sampling use `inference=True` and no key.
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from .. import process
from .._misc import check_instance
from .._types import Array, Float, FloatScalarLike, Int, PRNGKeyArray, Shaped


def _bits_hash(x: Array) -> Array:
    """A uint32 hash of the bits of `x` (wrapping sums of position-weighted 32-bit words)."""
    x = jnp.asarray(x)
    if x.dtype.itemsize != 4:
        x = x.astype(jnp.float32 if jnp.issubdtype(x.dtype, jnp.floating) else jnp.int32)
    words = jax.lax.bitcast_convert_type(x, jnp.uint32).ravel()
    weights = jnp.arange(1, 2 * words.size, 2, dtype=jnp.uint32) * jnp.uint32(2654435761)  # odd: Knuth
    return jnp.sum(words * weights, dtype=jnp.uint32)


def at_least_float32(x: Array) -> Array:
    """`x` in float32 if it is a narrower float (bfloat16, float16); unchanged otherwise (float32/64, integers)."""
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.floating) and x.dtype.itemsize < 4:
        return x.astype(jnp.float32)
    return x


class ModelDenoiser(eqx.Module):
    r"""A network as a denoiser on one example: `(z, lam[, label]) -> parameterisation.to_eps(z, model(z, lam))`.

    A Module (not a closure), so passing a new one to a jitted function does not recompile. With the default
    `EpsPrediction()` the network's output is returned as it is (also for masked models, whose output is logits).

    Mixed precision (THEORY §15): a network may compute in bfloat16 (`vdmpp.nn.Precision`); its output is read
    in float32 (cast up if narrower), so the parameterisation conversion and everything the loss does after it
    (α/σ, the weighting, cross-entropies, the reduction) stay float32.

    Args:
        model: a network called as `model(z, lam, *, [label,] key, inference)`.
        parameterisation: what the network predicts (converted to $\hat\epsilon$).
        label: class label passed to the model (`None`: the model is called without `label`); a call may pass
            its own per-example `label` instead (losses do, for class-conditional training).
        key: dropout key (see the module docstring for how each example derives its own).
        inference: `False` to apply dropout (then `key` is needed when the model has dropout).
    """

    model: eqx.Module
    parameterisation: process.AbstractParameterisation = process.EpsPrediction()
    label: Int[Array, ""] | int | None = None
    key: PRNGKeyArray | None = None
    inference: bool = eqx.field(static=True, default=True)

    def __check_init__(self):
        check_instance(self.parameterisation, process.AbstractParameterisation, "parameterisation", "VPrediction()")

    def __call__(
        self, z: Shaped[Array, "*data"], lam: FloatScalarLike, label: Int[Array, ""] | int | None = None
    ) -> Float[Array, "*data"] | Float[Array, "*data V"]:
        """Apply the model to one example and convert its output to $\\hat\\epsilon$."""
        key = self.key
        if key is not None:
            key = jr.fold_in(key, _bits_hash(z))
            key = jr.fold_in(key, _bits_hash(jnp.asarray(lam, jnp.float32)))
        label = self.label if label is None else label
        kwargs = {} if label is None else {"label": label}
        out = self.model(z, lam, key=key, inference=self.inference, **kwargs)  # pyright: ignore[reportCallIssue]
        with jax.named_scope("parameterisation"):  # a float32 island (THEORY §15), whatever the network computes in
            return self.parameterisation.to_eps(z, at_least_float32(out), lam)


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
        parameterisation: what the network's output means (ε, x, v, F, o or score prediction).
        label: class label for a class-conditional model (`None`: the model is called without a label).
        inference: False to apply dropout (then `key` is needed when the model has dropout).
        key: dropout key, only with `inference=False` (each example folds its own `(z, lam)` into it).

    Returns:
        A `ModelDenoiser`: a callable on one example, `(z, lam) -> eps_hat` with the shape of `z`.
    """
    return ModelDenoiser(model, parameterisation, label, key, inference)
