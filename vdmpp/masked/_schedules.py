r"""Masking schedules $\alpha_t$ (MD4; THEORY §8).

$\alpha_t$ is the probability that a token is still unmasked at time $t$ (decreasing, $t = 0$ data,
$t = 1$ all masked). MD4 clips the endpoints: $\alpha = (1 - 2\epsilon)\bar\alpha + \epsilon$, so that
$\lambda = \log(\alpha/(1-\alpha))$ is finite on $[0, 1]$. Every schedule computes $\bar\alpha$ and
$1 - \bar\alpha$ separately (no cancellation near either end) and $d\bar\alpha/dt$ in closed form.

A masking schedule is also an importance sampler over $\lambda$: `t(lam)` is its inverse and
`density(lam)` $= -dt/d\lambda = \alpha(1-\alpha)/(-\alpha')$, the same interface as the Gaussian
schedules in `vdmpp.schedules`.
"""

import abc
import math

import equinox as eqx
import jax.numpy as jnp

from .._misc import as_float
from .._types import Array, Float, FloatLike


def _check_eps(name: str, eps) -> None:
    if not isinstance(eps, (int, float)):
        return
    if not (math.isfinite(eps) and 0.0 <= eps < 0.5):
        raise ValueError(
            f"`eps` of {name} must lie in [0, 0.5) so that alpha = (1 - 2 eps) alpha_bar + eps stays in [0, 1]; "
            f"got eps={eps}. Use the default 1e-4 (MD4) or 0 for no clipping."
        )


class AbstractMaskingSchedule(eqx.Module):
    r"""A masking schedule $\alpha_t = (1 - 2\epsilon)\bar\alpha_t + \epsilon$ on $t \in [0, 1]$."""

    eps: eqx.AbstractVar[float]

    @abc.abstractmethod
    def _alpha_bar(self, t: Array) -> tuple[Array, Array]:
        r"""Unclipped $(\bar\alpha_t, 1 - \bar\alpha_t)$, each computed directly."""

    @abc.abstractmethod
    def _dalpha_bar(self, t: Array) -> Array:
        r"""$d\bar\alpha/dt$ in closed form."""

    @abc.abstractmethod
    def _t_of(self, abar: Array, one_minus_abar: Array) -> Array:
        r"""Inverse of $t \mapsto \bar\alpha_t$."""

    def alpha(self, t: FloatLike) -> Float[Array, "*shape"]:
        r"""$\alpha_t$, the probability that a token is unmasked at time $t$."""
        abar, _ = self._alpha_bar(as_float(t))
        return (1.0 - 2.0 * self.eps) * abar + self.eps

    def one_minus_alpha(self, t: FloatLike) -> Float[Array, "*shape"]:
        r"""$1 - \alpha_t$, computed without cancellation."""
        _, cbar = self._alpha_bar(as_float(t))
        return (1.0 - 2.0 * self.eps) * cbar + self.eps

    def dalpha(self, t: FloatLike) -> Float[Array, "*shape"]:
        r"""$\alpha'_t = (1 - 2\epsilon)\,d\bar\alpha/dt$ (closed form; tested against `jax.grad`)."""
        return (1.0 - 2.0 * self.eps) * self._dalpha_bar(as_float(t))

    def lam(self, t: FloatLike) -> Float[Array, "*shape"]:
        r"""Log-SNR $\lambda_t = \log\alpha_t - \log(1 - \alpha_t)$ (MD4's "gamma"), finite when $\epsilon > 0$."""
        t = as_float(t)
        return jnp.log(self.alpha(t)) - jnp.log(self.one_minus_alpha(t))

    def elbo_weight(self, t: FloatLike) -> Float[Array, "*shape"]:
        r"""The continuous-time ELBO weight $-\alpha'_t/(1 - \alpha_t) \ge 0$."""
        t = as_float(t)
        return -self.dalpha(t) / self.one_minus_alpha(t)

    def discrete_weight(self, s: FloatLike, t: FloatLike) -> Float[Array, "*shape"]:
        r"""The discrete-time weight $(\alpha_s - \alpha_t)/(1 - \alpha_t)$ of a step $t \to s < t$."""
        s, t = as_float(s), as_float(t)
        # alpha_s - alpha_t = (1 - alpha_t) - (1 - alpha_s): use whichever pair is better conditioned
        return (self.alpha(s) - self.alpha(t)) / self.one_minus_alpha(t)

    def t(self, lam: FloatLike) -> Float[Array, "*shape"]:
        r"""Inverse map $\lambda \mapsto t$, clipped to $[0, 1]$."""
        lam = as_float(lam)
        e = self.eps
        # alpha = sigmoid(lam); alpha_bar = (alpha - eps)/(1 - 2 eps)
        a = jnp.exp(-jnp.logaddexp(0.0, -lam))
        c = jnp.exp(-jnp.logaddexp(0.0, lam))
        abar = jnp.clip((a - e) / (1.0 - 2.0 * e), 0.0, 1.0)
        cbar = jnp.clip((c - e) / (1.0 - 2.0 * e), 0.0, 1.0)
        return jnp.clip(self._t_of(abar, cbar), 0.0, 1.0)

    def density(self, lam: FloatLike) -> Float[Array, "*shape"]:
        r"""Density of $\lambda_t$ for $t \sim U(0,1)$: $p(\lambda) = \alpha(1-\alpha)/(-\alpha')$.

        Zero outside $[\lambda_1, \lambda_0]$.
        """
        lam = as_float(lam)
        lo, hi = self.lam(jnp.ones((), lam.dtype)), self.lam(jnp.zeros((), lam.dtype))
        t = self.t(lam)
        a, c = self.alpha(t), self.one_minus_alpha(t)
        dens = a * c / (-self.dalpha(t))
        inside = (lam >= lo) & (lam <= hi)
        return jnp.where(inside & jnp.isfinite(dens), dens, 0.0)


class LinearSchedule(AbstractMaskingSchedule):
    r"""$\bar\alpha_t = 1 - t$ (MD4's linear schedule; MDLM's log-linear).

    Args:
        eps: endpoint clipping $\epsilon \in [0, 0.5)$.
    """

    eps: float = 1e-4

    def __check_init__(self):
        _check_eps("LinearSchedule", self.eps)

    def _alpha_bar(self, t):
        return 1.0 - t, t

    def _dalpha_bar(self, t):
        return -jnp.ones_like(t)

    def _t_of(self, abar, one_minus_abar):
        return one_minus_abar


class CosineSchedule(AbstractMaskingSchedule):
    r"""$\bar\alpha_t = 1 - \cos(\pi(1 - t)/2) = 1 - \sin(\pi t/2)$ (MD4's cosine schedule).

    Args:
        eps: endpoint clipping $\epsilon \in [0, 0.5)$.
    """

    eps: float = 1e-4

    def __check_init__(self):
        _check_eps("CosineSchedule", self.eps)

    def _alpha_bar(self, t):
        # 1 - sin(x) = 2 sin^2(pi/4 - x/2): no cancellation near t = 1
        return 2.0 * jnp.sin(0.25 * jnp.pi * (1.0 - t)) ** 2, jnp.sin(0.5 * jnp.pi * t)

    def _dalpha_bar(self, t):
        return -0.5 * jnp.pi * jnp.cos(0.5 * jnp.pi * t)

    def _t_of(self, abar, one_minus_abar):
        return (2.0 / jnp.pi) * jnp.arcsin(one_minus_abar)


class PolynomialSchedule(AbstractMaskingSchedule):
    r"""$\bar\alpha_t = 1 - t^k$ (MD4's "poly k").

    Args:
        k: the exponent $k > 0$.
        eps: endpoint clipping $\epsilon \in [0, 0.5)$.
    """

    k: float = 2.0
    eps: float = 1e-4

    def __check_init__(self):
        _check_eps("PolynomialSchedule", self.eps)
        if isinstance(self.k, (int, float)) and not (math.isfinite(self.k) and self.k > 0):
            raise ValueError(f"`k` of PolynomialSchedule must be finite and positive; got k={self.k}.")

    def _alpha_bar(self, t):
        tk = t**self.k
        return 1.0 - tk, tk

    def _dalpha_bar(self, t):
        return -self.k * t ** (self.k - 1.0)

    def _t_of(self, abar, one_minus_abar):
        return one_minus_abar ** (1.0 / self.k)


class GeometricSchedule(AbstractMaskingSchedule):
    r"""$\bar\alpha_t = \exp(-\sigma_{min}^{1-t}\sigma_{max}^{t})$ (MD4's geometric schedule).

    Args:
        sigma_min: $\sigma_{min} > 0$ ($\bar\alpha_0 = e^{-\sigma_{min}}$).
        sigma_max: $\sigma_{max} > \sigma_{min}$ ($\bar\alpha_1 = e^{-\sigma_{max}}$).
        eps: endpoint clipping $\epsilon \in [0, 0.5)$.
    """

    sigma_min: float = 1e-5
    sigma_max: float = 20.0
    eps: float = 1e-4

    def __check_init__(self):
        _check_eps("GeometricSchedule", self.eps)
        lo, hi = self.sigma_min, self.sigma_max
        if isinstance(lo, (int, float)) and isinstance(hi, (int, float)):
            if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
                raise ValueError(
                    f"GeometricSchedule needs 0 < `sigma_min` < `sigma_max` (finite), else alpha leaves [0, 1] or "
                    f"does not decrease; got sigma_min={lo}, sigma_max={hi}."
                )

    def _log_sigma(self, t):
        return math.log(self.sigma_min) + t * (math.log(self.sigma_max) - math.log(self.sigma_min))

    def _alpha_bar(self, t):
        sig = jnp.exp(self._log_sigma(t))
        return jnp.exp(-sig), -jnp.expm1(-sig)

    def _dalpha_bar(self, t):
        sig = jnp.exp(self._log_sigma(t))
        return -jnp.exp(-sig) * sig * (math.log(self.sigma_max) - math.log(self.sigma_min))

    def _t_of(self, abar, one_minus_abar):
        # sigma = -log(abar) = -log1p(-(1 - abar))
        sig = -jnp.log1p(-jnp.minimum(one_minus_abar, 1.0 - 1e-30))
        sig = jnp.where(abar > 0.5, sig, -jnp.log(jnp.maximum(abar, 1e-38)))
        return (jnp.log(sig) - math.log(self.sigma_min)) / (math.log(self.sigma_max) - math.log(self.sigma_min))
