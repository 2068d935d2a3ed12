"""Turning a network into the denoiser callables that losses and samplers take."""

from collections.abc import Callable

import equinox as eqx

from .. import process
from .._types import Array, Float, FloatScalarLike, Int, PRNGKeyArray


class ModelDenoiser(eqx.Module):
    """`(z, lam) -> model(z, lam, label=label, key=key, inference=inference)`: a network as a plain denoiser.

    A Module (not a closure), so passing it to a jitted function does not recompile for each new instance.
    """

    model: eqx.Module
    label: Int[Array, ""] | int | None
    key: PRNGKeyArray | None
    inference: bool = eqx.field(static=True)

    def __call__(self, z: Float[Array, "*data"], lam: FloatScalarLike) -> Float[Array, "*data"]:
        """Apply the wrapped model to one example."""
        return self.model(z, lam, label=self.label, key=self.key, inference=self.inference)  # pyright: ignore


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
        inference: False to apply dropout (then `key` is needed when the model has dropout; note that under
            `vmap` every example gets the same key, so for training call the model with per-example keys).
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
