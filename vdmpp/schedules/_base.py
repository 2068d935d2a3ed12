r"""The schedule interfaces: every schedule used in training has a state (empty when fixed), an update and the
$\lambda$-maps under a state (THEORY §1–2, §5).

`AbstractNoiseSchedule` is what a loss holds: `init() -> state`, `update(state, lam, values) -> state` and
`bind(state) -> AbstractSchedule`, the schedule in force under that state (as optax's stateless transforms have
an empty state). `AbstractSchedule` is a fixed schedule with closed-form maps $\lambda(t)$, $t(\lambda)$, $p(\lambda)$;
its state is `EmptyState()`, its update the identity and `bind` returns itself. The adaptive schedule
(`vdmpp.adaptive.AdaptiveSchedule`) learns its state; `bind` turns a state into a fixed piecewise-linear schedule.
"""

import abc
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from .._misc import as_float, check_instance
from .._types import Array, ArrayLike, Float, FloatLike


class EmptyState(eqx.Module):
    """The state of a fixed schedule: no arrays."""


class AbstractNoiseSchedule(eqx.Module):
    r"""A noise schedule as a training run uses it: a state, its update, and the schedule under a state.

    Attributes:
        lam_min: log-SNR at $t = 1$ (noise end).
        lam_max: log-SNR at $t = 0$ (data end).
    """

    lam_min: eqx.AbstractVar[float]
    lam_max: eqx.AbstractVar[float]

    @abc.abstractmethod
    def init(self) -> Any:
        """The initial state (`EmptyState()` for a fixed schedule)."""

    @abc.abstractmethod
    def update(
        self, state: Any, lam: Float[ArrayLike, " batch"], values: Float[ArrayLike, " batch"], *, axis_name=None
    ) -> Any:
        r"""The state after one training step's $(\lambda_i, v_i = w(\lambda_i)\|\epsilon_i - \hat\epsilon_i\|^2)$."""

    @abc.abstractmethod
    def bind(self, state: Any) -> "AbstractSchedule":
        """The fixed schedule in force under `state` (for losses, evaluation and samplers)."""


class AbstractSchedule(AbstractNoiseSchedule):
    r"""A noise schedule: a strictly decreasing $\lambda(t)$ on $[0, 1]$ and its density $p(\lambda)$.

    Concrete schedules define the untruncated map $f(u, 1-u)$, its inverse and its density; this
    base class applies the truncation to `lam_min`/`lam_max`.
    """

    lam_min: eqx.AbstractVar[float]
    lam_max: eqx.AbstractVar[float]

    def init(self) -> EmptyState:
        """A fixed schedule's state: `EmptyState()`."""
        return EmptyState()

    def update(self, state: Any, lam, values, *, axis_name=None) -> Any:
        """A fixed schedule learns nothing: `state` unchanged."""
        del lam, values, axis_name
        return state

    def bind(self, state: Any) -> "AbstractSchedule":
        """A fixed schedule is the same under every state: `self`."""
        del state
        return self

    @abc.abstractmethod
    def _f(self, u: Array, v: Array) -> Array:
        """Untruncated $\\lambda = f(u)$, given $u$ and $v = 1 - u$."""

    @abc.abstractmethod
    def _u(self, lam: Array) -> Array:
        """Untruncated $f^{-1}(\\lambda)$."""

    @abc.abstractmethod
    def _v(self, lam: Array) -> Array:
        """Untruncated $1 - f^{-1}(\\lambda)$, computed directly."""

    @abc.abstractmethod
    def _density(self, lam: Array) -> Array:
        """Untruncated $p(\\lambda) = -d f^{-1}/d\\lambda$."""

    def _ends(self, dtype) -> tuple[Array, Array, Array, Array]:
        # t0 = f^-1(lam_max) and t1 = f^-1(lam_min), each with its complement 1 - t computed directly, and the
        # width t1 - t0 from whichever pair is the smaller (no cancellation). From 1 - t0 by subtraction, lam(0)
        # was off by ~2 ulp(1) / (1 - t0) in float32: 1.3e-5 past lam_max for ShiftedCosine(shift=4) truncated
        # to [-1, 0.03125], where 1 - t0 = 0.012 and p = 0 (so w/p = inf at t = 0).
        hi, lo = jnp.asarray(self.lam_max, dtype), jnp.asarray(self.lam_min, dtype)
        t0, c0, t1, c1 = self._u(hi), self._v(hi), self._u(lo), self._v(lo)
        return t0, c0, t1, c1

    def _width(self, dtype) -> Array:
        t0, c0, t1, c1 = self._ends(dtype)
        return jnp.where(t0 + t1 <= c0 + c1, t1 - t0, c0 - c1)

    def lam(self, t: FloatLike) -> Float[Array, "*shape"]:
        r"""Log-SNR $\tilde\lambda(t) = f(t_0 + (t_1 - t_0) t)$.

        $\lambda(0) = \lambda_{max}$ and $\lambda(1) = \lambda_{min}$.
        """
        t = as_float(t)
        t0, c0, t1, c1 = self._ends(t.dtype)
        # u and v = 1 - u, each interpolated between its own exact ends (both exact at t = 0 and t = 1)
        u = t0 + (t1 - t0) * t
        v = c1 + (c0 - c1) * (1 - t)
        # Where t0 (or 1 - t1) underflows to 0 (e.g. EDMTraining truncated at |lam| = 40 in float32), f would
        # give +-inf at the ends: return the endpoint itself there, keeping f's input positive so grads stay finite.
        tiny = jnp.finfo(u.dtype).tiny
        lam = self._f(jnp.maximum(u, tiny), jnp.maximum(v, tiny))
        lam_max = jnp.asarray(self.lam_max, lam.dtype)
        lam_min = jnp.asarray(self.lam_min, lam.dtype)
        return jnp.where(u <= 0, lam_max, jnp.where(v <= 0, lam_min, lam))

    def t(self, lam: FloatLike) -> Float[Array, "*shape"]:
        r"""Inverse map $\tilde f^{-1}(\lambda) = (f^{-1}(\lambda) - t_0)/(t_1 - t_0)$."""
        lam = as_float(lam)
        t0, c0, t1, c1 = self._ends(lam.dtype)
        u = self._u(lam)
        v = self._v(lam)
        # use whichever of u, 1-u is the smaller (more precise) number
        return jnp.where(u < 0.5, (u - t0) / (t1 - t0), 1 - (v - c1) / (c0 - c1))

    def density(self, lam: FloatLike) -> Float[Array, "*shape"]:
        r"""Density $\tilde p(\lambda) = p(\lambda)/(t_1 - t_0)$ on $[\lambda_{min}, \lambda_{max}]$, 0 outside."""
        lam = as_float(lam)
        width = self._width(lam.dtype)
        lo = jnp.asarray(self.lam_min, lam.dtype)
        hi = jnp.asarray(self.lam_max, lam.dtype)
        # lam(0), lam(1) may round a few ulps past the ends; they still count as inside (else w/p = inf there)
        rel = 64 * jnp.finfo(lam.dtype).eps
        inside = (lam >= lo - rel * jnp.maximum(1.0, jnp.abs(lo))) & (lam <= hi + rel * jnp.maximum(1.0, jnp.abs(hi)))
        safe = jnp.clip(lam, lo, hi)
        return jnp.where(inside, self._density(safe) / width, 0.0)

    def dlam_dt(self, t: FloatLike) -> Float[Array, "*shape"]:
        r"""$d\lambda/dt = -1/\tilde p(\lambda(t))$ (closed form, no autodiff)."""
        lam = self.lam(t)
        width = self._width(lam.dtype)
        return -width / self._density(lam)


def check_numerics(schedule: AbstractNoiseSchedule, *, num: int = 1025) -> None:
    r"""Raise a `ValueError` if a schedule is degenerate on its own range in float32 (under its initial state).

    Checked on grids of `num` points: $\lambda(t)$ is finite and runs from $\lambda_{max}$ at $t = 0$ to
    $\lambda_{min}$ at $t = 1$ (to 1% of the range), and the density $p(\lambda(t))$ is finite and positive for
    $0 < t < 1$ (where it is 0, underflowed or negative, the importance weight $w/p$ of the weighted loss is
    infinite or negative). Parameters that push the schedule's mass far outside the range (e.g.
    a huge `ShiftedCosine` shift) fail here.

    Args:
        schedule: the schedule to check (fixed or adaptive).
        num: number of grid points.

    Raises:
        ValueError: naming the schedule (with its parameters) and what is wrong where.
    """
    check_instance(schedule, AbstractNoiseSchedule, "schedule", "vd.schedules.Cosine(-10.0, 10.0)")
    bound = schedule.bind(schedule.init())
    lo, hi = float(bound.lam_min), float(bound.lam_max)
    t = np.linspace(0.0, 1.0, num, dtype=np.float32)
    lam = np.asarray(bound.lam(jnp.asarray(t)), np.float64)
    tol = 0.01 * (hi - lo)
    bad = np.flatnonzero(~np.isfinite(lam))
    if bad.size:
        i = int(bad[0])
        why = f"λ(t) = {lam[i]} at t = {t[i]:.4g}"
    elif abs(lam[0] - hi) > tol or abs(lam[-1] - lo) > tol:
        why = f"λ(0) = {lam[0]:.6g} and λ(1) = {lam[-1]:.6g} instead of λ_max = {hi:.6g} and λ_min = {lo:.6g}"
    else:
        inner = jnp.asarray(lam[1:-1], jnp.float32)  # the λ's training draws (t = 0 and 1 exactly are measure zero)
        p = np.asarray(bound.density(inner), np.float64)
        bad = np.flatnonzero(~(np.isfinite(p) & (p > 0)))
        if not bad.size:
            return
        i = int(bad[0])
        why = f"its density p(λ) = {p[i]:.3g} at λ = {lam[i + 1]:.4g}, so the loss weight w/p is not finite there"
    raise ValueError(
        f"{schedule!r} is degenerate in float32: {why}. Choose parameters that keep its mass inside "
        f"[λ_min, λ_max] = [{lo:.4g}, {hi:.4g}]."
    )
