"""Shared pieces of the samplers: argument checks, batching, classifier-free guidance."""

import abc
import warnings
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._misc import concrete, error_if
from .._types import Array, Float, FloatScalarLike


class AbstractCountedDenoiser(eqx.Module):
    """A denoiser wrapper that declares how many network calls one evaluation makes.

    Samplers multiply their step count by `calls_per_eval(denoiser)`, which reads this property; any
    other callable counts as one call. Subclass it for wrappers that call a network more than once
    (guidance, ensembles).
    """

    @property
    @abc.abstractmethod
    def calls_per_eval(self) -> int:
        """Network calls per evaluation of this denoiser."""


def calls_per_eval(denoiser: Callable) -> int:
    """Network calls one evaluation of `denoiser` makes: its `calls_per_eval` if it is an
    `AbstractCountedDenoiser`, else 1."""
    if isinstance(denoiser, AbstractCountedDenoiser):
        return int(denoiser.calls_per_eval)
    return 1


class AbstractGuidance(AbstractCountedDenoiser):
    """Classifier-free guidance of a conditional denoiser `(z, lam, *, label)`: the wrapped denoiser, the label
    $c$, the null label $\varnothing$ and the scale $w$; two calls per evaluation. Subclasses combine the two
    outputs (`Guided`: noise predictions; `vd.masked.Guided`: log-probabilities)."""

    denoiser: Callable
    label: Array
    null_label: Array
    scale: Float[Array, ""]

    def __init__(self, denoiser: Callable, label, null_label, scale: FloatScalarLike):
        self.denoiser = denoiser
        self.label = jnp.asarray(label)
        self.null_label = jnp.asarray(null_label)
        self.scale = jnp.asarray(scale, dtype=jnp.float32)

    @property
    def calls_per_eval(self) -> int:
        """Calls of the wrapped denoiser per evaluation (2, times the wrapped one's own)."""
        return 2 * calls_per_eval(self.denoiser)


class Guided(AbstractGuidance):
    r"""Classifier-free guidance: $\hat\epsilon_\varnothing + w(\hat\epsilon_c - \hat\epsilon_\varnothing)$.

    Scale $w = 0$ is the unconditional model, $w = 1$ the conditional one, $w > 1$ guides. Each
    evaluation calls the wrapped denoiser twice (conditional and unconditional), and samplers count
    both calls.

    Args:
        denoiser: `(z, lam, *, label) -> eps_hat` on one example.
        label: the condition $c$.
        null_label: the "no condition" label $\varnothing$ the model was trained with.
        scale: the guidance scale $w$.
    """

    def __call__(self, z: Float[Array, "*data"], lam: FloatScalarLike) -> Float[Array, "*data"]:
        """Return the guided $\\hat\\epsilon(z, \\lambda)$."""
        cond = self.denoiser(z, lam, label=self.label)
        uncond = self.denoiser(z, lam, label=self.null_label)
        return uncond + self.scale.astype(uncond.dtype) * (cond - uncond)


def guided(denoiser: Callable, label, null_label, scale: FloatScalarLike) -> Guided:
    """Wrap a conditional denoiser `(z, lam, *, label)` for classifier-free guidance (see `Guided`).

    The result is a plain `(z, lam) -> eps_hat` denoiser, usable by every sampler and by `log_likelihood`;
    samplers count two network calls per evaluation.
    """
    return Guided(denoiser, label, null_label, jnp.asarray(scale, jnp.float32))


def check_shape(shape) -> tuple[int, ...]:
    """`shape` must be `(num_samples, *data)` of positive ints."""
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise TypeError(f"`shape` must be a tuple (num_samples, *data) of ints; got {shape!r}.") from None
    if len(shape) < 2 or any(s < 1 for s in shape):
        raise ValueError(
            f"`shape` must be (num_samples, *data) with positive sizes, e.g. (512, 2); got {shape}. "
            "The denoiser works on one example of shape `shape[1:]`."
        )
    return shape


def check_trained_range(lam_lo: float, lam_hi: float, trained_range, what: str) -> None:
    """Warn when sampling needs log-SNRs outside the range the model was trained on."""
    if trained_range is None:
        return
    lo, hi = (float(v) for v in trained_range)
    if not lo < hi:
        raise ValueError(f"`trained_range` must be (lam_min, lam_max) with lam_min < lam_max; got {trained_range}.")
    tol = 1e-6 * max(1.0, abs(lo), abs(hi))
    if lam_lo < lo - tol or lam_hi > hi + tol:
        warnings.warn(
            f"{what} evaluates the denoiser at log-SNRs in [{lam_lo:.4g}, {lam_hi:.4g}], beyond the range it was "
            f"trained on, `trained_range`=[{lo:.4g}, {hi:.4g}]; its predictions there are extrapolations. "
            "Truncate the sampling schedule (its lam_min/lam_max) to the trained range.",
            UserWarning,
            stacklevel=3,
        )


def check_denoiser(denoiser: Callable, data_shape: tuple[int, ...], dtype) -> None:
    """Trace the denoiser once (no compute) and check it returns one example's shape."""
    z = jax.ShapeDtypeStruct(data_shape, dtype)
    lam = jax.ShapeDtypeStruct((), dtype)
    out = jax.eval_shape(denoiser, z, lam)
    if not hasattr(out, "shape") or tuple(out.shape) != tuple(data_shape):
        got = getattr(out, "shape", type(out).__name__)
        raise ValueError(
            f"The denoiser must map one example of shape {data_shape} (and a scalar lam) to eps_hat of the same "
            f"shape; got {got}. Samplers vmap the denoiser themselves: pass a function of ONE example."
        )


def batched(denoiser: Callable, shape: tuple[int, ...], dtype) -> tuple[Callable, int]:
    """Check `denoiser`; return the batched `(zs, lam) -> eps_hats` and the network calls per evaluation."""
    check_denoiser(denoiser, shape[1:], dtype)
    return jax.vmap(denoiser, in_axes=(0, None)), calls_per_eval(denoiser)


def check_z_init(z_init, shape: tuple[int, ...]) -> Array:
    """A floating start `(num_samples, *data)` of the given shape, finite where its values are known."""
    z = jnp.asarray(z_init)
    if not jnp.issubdtype(z.dtype, jnp.floating):
        raise TypeError(f"`z_init` must be a float array (the N(0, I) start); got dtype {z.dtype}.")
    if tuple(z.shape) != shape:
        raise ValueError(f"`z_init` must have the samples' shape {shape}; got {tuple(z.shape)}.")
    values = concrete(z)
    if values is not None:
        if not np.all(np.isfinite(values)):
            raise ValueError(f"`z_init` must be finite; it holds {int(np.sum(~np.isfinite(values)))} NaN/inf value(s).")
        return z
    return error_if(z, ~jnp.all(jnp.isfinite(z)), "`z_init` must be finite; it holds NaN/inf values.")


def float_dtype(dtype) -> jnp.dtype:
    """Check and return a floating dtype."""
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"`dtype` must be a floating dtype; got {dtype}.")
    return dtype
