"""Shared pieces of the samplers: argument checks, batching, classifier-free guidance."""

import math
import warnings
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from .._misc import check_positive_int
from .._types import Array, Float, FloatScalarLike


class Guided(eqx.Module):
    r"""Classifier-free guidance: $\hat\epsilon_\varnothing + w(\hat\epsilon_c - \hat\epsilon_\varnothing)$.

    Scale $w = 0$ is the unconditional model, $w = 1$ the conditional one, $w > 1$ guides. Each
    evaluation calls the wrapped denoiser twice (conditional and unconditional), and samplers count
    both calls in their NFE.

    Args:
        denoiser: `(z, lam, *, label) -> eps_hat` on one example.
        label: the condition $c$.
        null_label: the "no condition" label $\varnothing$ the model was trained with.
        scale: the guidance scale $w$.
    """

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

    def __call__(self, z: Float[Array, "*data"], lam: FloatScalarLike) -> Float[Array, "*data"]:
        """Return the guided $\\hat\\epsilon(z, \\lambda)$."""
        cond = self.denoiser(z, lam, label=self.label)
        uncond = self.denoiser(z, lam, label=self.null_label)
        return uncond + self.scale.astype(uncond.dtype) * (cond - uncond)


def guided(denoiser: Callable, label, null_label, scale: FloatScalarLike) -> Guided:
    """Wrap a conditional denoiser `(z, lam, *, label)` for classifier-free guidance (see `Guided`).

    The result is a plain `(z, lam) -> eps_hat` denoiser, usable by every sampler and by `log_likelihood`.
    """
    return Guided(denoiser, label, null_label, scale)


def calls_per_eval(denoiser: Callable) -> int:
    """How many calls of the user's network one evaluation of `denoiser` makes (2 for `Guided`)."""
    return denoiser.calls_per_eval if isinstance(denoiser, Guided) else 1


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


def check_steps(num_steps, name: str = "num_steps") -> int:
    """A positive Python integer number of steps."""
    return check_positive_int(num_steps, name)


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


def prepare(
    denoiser: Callable,
    shape: tuple[int, ...],
    dtype,
    label=None,
    null_label=None,
    guidance_scale: FloatScalarLike | None = None,
) -> tuple[Callable, int]:
    """Return a batched `(zs, lam) -> eps_hats` and the network calls per evaluation.

    With `label` (a scalar, or one label per sample with leading axis `num_samples`), the denoiser
    is guided (`Guided`); `guidance_scale` defaults to 1 (the conditional model).
    """
    n = shape[0]
    if label is None:
        if null_label is not None or guidance_scale is not None:
            raise ValueError("`null_label`/`guidance_scale` need a `label`; pass `label=` (or wrap with `guided`).")
        check_denoiser(denoiser, shape[1:], dtype)
        return jax.vmap(denoiser, in_axes=(0, None)), calls_per_eval(denoiser)
    if null_label is None:
        raise ValueError("Classifier-free guidance needs `null_label` (the label the model saw when unconditioned).")
    scale = 1.0 if guidance_scale is None else guidance_scale
    label = jnp.asarray(label)
    per_sample = label.ndim > 0
    if per_sample and label.shape[0] != n:
        raise ValueError(
            f"`label` must be a scalar or have one entry per sample (leading axis {n} = shape[0]); "
            f"got shape {label.shape}."
        )
    one = Guided(denoiser, label[0] if per_sample else label, null_label, scale)
    check_denoiser(one, shape[1:], dtype)

    def batched(zs, lam):
        if per_sample:
            return jax.vmap(lambda z, lab: Guided(denoiser, lab, null_label, scale)(z, lam))(zs, label)
        return jax.vmap(one, in_axes=(0, None))(zs, lam)

    return batched, one.calls_per_eval


def float_dtype(dtype) -> jnp.dtype:
    """Check and return a floating dtype."""
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"`dtype` must be a floating dtype; got {dtype}.")
    return dtype


def num_data(shape: tuple[int, ...]) -> int:
    """Number of dimensions of one example."""
    return math.prod(shape[1:])
