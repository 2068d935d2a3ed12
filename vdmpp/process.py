r"""Gaussian forward processes and conversions between denoiser parameterisations.

All quantities are functions of the log-SNR $\lambda = \log(\alpha^2/\sigma^2)$ (THEORY §1).
Variance preserving (VP, the default): $\alpha^2 = \mathrm{sigmoid}(\lambda)$,
$\sigma^2 = \mathrm{sigmoid}(-\lambda)$. Variance exploding (VE): $\alpha = 1$, $\sigma^2 = e^{-\lambda}$.

Parameterisations (K&G App. E.2, D.2, D.3), all for the VP process:
$\hat x = (z - \sigma\hat\epsilon)/\alpha$, score $s = -\hat\epsilon/\sigma$,
$v = \alpha\epsilon - \sigma x$, flow matching $o = x - \epsilon$ and EDM's $F$ (K&G eq. 118–121).
"""

import abc
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._types import Array, Float, FloatLike


def vp_log_alpha_sigma(lam: FloatLike) -> tuple[Float[Array, "*shape"], Float[Array, "*shape"]]:
    r"""$(\log\alpha, \log\sigma)$ of the VP process, computed with log-sigmoids."""
    lam = jnp.asarray(lam)
    return 0.5 * jax.nn.log_sigmoid(lam), 0.5 * jax.nn.log_sigmoid(-lam)


def vp_alpha_sigma(lam: FloatLike) -> tuple[Float[Array, "*shape"], Float[Array, "*shape"]]:
    r"""$(\alpha_\lambda, \sigma_\lambda)$ of the VP process: $\alpha^2 = \mathrm{sigmoid}(\lambda)$."""
    lam = jnp.asarray(lam)
    return jnp.sqrt(jax.nn.sigmoid(lam)), jnp.sqrt(jax.nn.sigmoid(-lam))


def ve_alpha_sigma(lam: FloatLike) -> tuple[Float[Array, "*shape"], Float[Array, "*shape"]]:
    r"""$(\alpha_\lambda, \sigma_\lambda)$ of the VE process: $\alpha = 1$, $\sigma = e^{-\lambda/2}$."""
    lam = jnp.asarray(lam)
    return jnp.ones_like(lam), jnp.exp(-0.5 * lam)


def _f64(lam):
    return np.asarray(lam, dtype=np.float64)


def _sigmoid(x):
    return np.asarray(np.exp(-np.logaddexp(0.0, -x)))


# --- conversions (VP), each way -------------------------------------------------------------


def x_to_eps(z: Float[Array, "*data"], x_hat: Float[Array, "*data"], lam: FloatLike) -> Float[Array, "*data"]:
    r"""$\hat\epsilon = (z - \alpha \hat x)/\sigma$."""
    alpha, sigma = vp_alpha_sigma(lam)
    return (z - alpha * x_hat) / sigma


def eps_to_x(z: Float[Array, "*data"], eps_hat: Float[Array, "*data"], lam: FloatLike) -> Float[Array, "*data"]:
    r"""$\hat x = (z - \sigma \hat\epsilon)/\alpha$."""
    alpha, sigma = vp_alpha_sigma(lam)
    return (z - sigma * eps_hat) / alpha


def v_to_eps(z: Float[Array, "*data"], v_hat: Float[Array, "*data"], lam: FloatLike) -> Float[Array, "*data"]:
    r"""$\hat\epsilon = \sigma z + \alpha \hat v$ (from $v = \alpha\epsilon - \sigma x$)."""
    alpha, sigma = vp_alpha_sigma(lam)
    return sigma * z + alpha * v_hat


def eps_to_v(z: Float[Array, "*data"], eps_hat: Float[Array, "*data"], lam: FloatLike) -> Float[Array, "*data"]:
    r"""$\hat v = \alpha\hat\epsilon - \sigma\hat x = (\hat\epsilon - \sigma z)/\alpha$."""
    alpha, sigma = vp_alpha_sigma(lam)
    return (eps_hat - sigma * z) / alpha


def v_to_x(z: Float[Array, "*data"], v_hat: Float[Array, "*data"], lam: FloatLike) -> Float[Array, "*data"]:
    r"""$\hat x = \alpha z - \sigma \hat v$."""
    alpha, sigma = vp_alpha_sigma(lam)
    return alpha * z - sigma * v_hat


def score_to_eps(z: Float[Array, "*data"], score: Float[Array, "*data"], lam: FloatLike) -> Float[Array, "*data"]:
    r"""$\hat\epsilon = -\sigma s$."""
    del z
    _, sigma = vp_alpha_sigma(lam)
    return -sigma * score


def eps_to_score(z: Float[Array, "*data"], eps_hat: Float[Array, "*data"], lam: FloatLike) -> Float[Array, "*data"]:
    r"""$s = -\hat\epsilon/\sigma$ (K&G eq. 134)."""
    del z
    _, sigma = vp_alpha_sigma(lam)
    return -eps_hat / sigma


def _fm_scale(lam: FloatLike) -> tuple[Float[Array, "*shape"], Float[Array, "*shape"]]:
    # Flow-matching (OT path) scaling: z_fm = a x + b eps with a + b = 1, a/b = e^{lam/2}.
    lam = jnp.asarray(lam)
    return jax.nn.sigmoid(0.5 * lam), jax.nn.sigmoid(-0.5 * lam)


def o_to_eps(z: Float[Array, "*data"], o_hat: Float[Array, "*data"], lam: FloatLike) -> Float[Array, "*data"]:
    r"""Flow matching $o = x - \epsilon$ (K&G App. D.3) to $\hat\epsilon$.

    With $z_{fm} = a x + b\epsilon$, $a = \mathrm{sigmoid}(\lambda/2)$, $b = 1 - a$ (the OT path rescaled
    from VP), $\hat\epsilon = z_{fm} - a\hat o$.
    """
    a, _ = _fm_scale(lam)
    alpha, _ = vp_alpha_sigma(lam)
    return (a / alpha) * z - a * o_hat


def eps_to_o(z: Float[Array, "*data"], eps_hat: Float[Array, "*data"], lam: FloatLike) -> Float[Array, "*data"]:
    r"""$\hat o = \hat x - \hat\epsilon$."""
    return eps_to_x(z, eps_hat, lam) - eps_hat


def _edm_coeffs(lam: FloatLike, sigma_data: float):
    # K&G eq. 119: x = c_skip * alpha * z + c_out * F with c_skip = sd^2/(e^-lam + sd^2),
    # c_out = e^{-lam/2} sd / sqrt(e^-lam + sd^2) (eq. 118 is the VE case alpha = 1).
    lam = jnp.asarray(lam)
    s2 = jnp.exp(-lam)
    sd2 = sigma_data**2
    c_skip = sd2 / (s2 + sd2)
    c_out = jnp.sqrt(s2) * sigma_data * jax.lax.rsqrt(s2 + sd2)
    return c_skip, c_out


def f_to_eps(
    z: Float[Array, "*data"], f_hat: Float[Array, "*data"], lam: FloatLike, sigma_data: float = 0.5
) -> Float[Array, "*data"]:
    r"""EDM's network output $F$ to $\hat\epsilon$, with $\hat x = c_{skip}\,\alpha z + c_{out} F$ (K&G eq. 119).

    As printed in K&G (THEORY §3), the skip term is $c_{skip}\,\alpha z$; EDM's own VP code feeds $z/\alpha$.
    The two give different $F$ targets but the same loss weighting, $(e^{-\lambda}/\tilde\sigma_{data}^2 + 1)^{-1}$
    (eq. 126), which depends only on $c_{out}$.
    """
    alpha, _ = vp_alpha_sigma(lam)
    c_skip, c_out = _edm_coeffs(lam, sigma_data)
    x_hat = c_skip * (alpha * z) + c_out * f_hat
    return x_to_eps(z, x_hat, lam)


def eps_to_f(
    z: Float[Array, "*data"], eps_hat: Float[Array, "*data"], lam: FloatLike, sigma_data: float = 0.5
) -> Float[Array, "*data"]:
    r"""$\hat\epsilon$ to EDM's $F = (\hat x - c_{skip}\,\alpha z)/c_{out}$ (K&G eq. 120); inverse of `f_to_eps`."""
    alpha, _ = vp_alpha_sigma(lam)
    c_skip, c_out = _edm_coeffs(lam, sigma_data)
    x_hat = eps_to_x(z, eps_hat, lam)
    return (x_hat - c_skip * (alpha * z)) / c_out


# --- parameterisation strategy objects ---------------------------------------------------------


class AbstractParameterisation(eqx.Module):
    """What a network predicts; converts its output to $\\hat\\epsilon$ and back."""

    @abc.abstractmethod
    def to_eps(self, z: Float[Array, "*data"], out: Float[Array, "*data"], lam: FloatLike) -> Float[Array, "*data"]:
        """Convert the network output to $\\hat\\epsilon$."""

    @abc.abstractmethod
    def from_eps(self, z: Float[Array, "*data"], eps: Float[Array, "*data"], lam: FloatLike) -> Float[Array, "*data"]:
        """Convert $\\epsilon$ to this parameterisation's target."""

    @abc.abstractmethod
    def mse_ratio(self, lam) -> np.ndarray:
        r"""$r(\lambda) = \|\epsilon - \hat\epsilon\|^2 / \|P - \hat P\|^2$ for this target $P$ (VP; K&G eq. 122–126).

        Float64 NumPy, for analysis: the loss $E\|P - \hat P\|^2$ is the $\epsilon$-loss weighted by $1/r$.
        """


class EpsPrediction(AbstractParameterisation):
    r"""The network predicts $\epsilon$."""

    def to_eps(self, z, out, lam):
        """Identity."""
        return out

    def from_eps(self, z, eps, lam):
        """Identity."""
        return eps

    def mse_ratio(self, lam):
        """$r = 1$."""
        return np.ones_like(_f64(lam))


class XPrediction(AbstractParameterisation):
    r"""The network predicts $x$."""

    def to_eps(self, z, out, lam):
        """$\\hat\\epsilon = (z - \\alpha\\hat x)/\\sigma$."""
        return x_to_eps(z, out, lam)

    def from_eps(self, z, eps, lam):
        """$x = (z - \\sigma\\epsilon)/\\alpha$."""
        return eps_to_x(z, eps, lam)

    def mse_ratio(self, lam):
        """$r = e^{\\lambda}$."""
        return np.exp(_f64(lam))


class VPrediction(AbstractParameterisation):
    r"""The network predicts $v = \alpha\epsilon - \sigma x$."""

    def to_eps(self, z, out, lam):
        """$\\hat\\epsilon = \\sigma z + \\alpha\\hat v$."""
        return v_to_eps(z, out, lam)

    def from_eps(self, z, eps, lam):
        """$v = (\\epsilon - \\sigma z)/\\alpha$."""
        return eps_to_v(z, eps, lam)

    def mse_ratio(self, lam):
        """$r = \\mathrm{sigmoid}(\\lambda)$."""
        return _sigmoid(_f64(lam))


class FPrediction(AbstractParameterisation):
    r"""The network predicts EDM's $F$ with data scale $\tilde\sigma_{data}$ (K&G eq. 118–121)."""

    sigma_data: float = 0.5

    def to_eps(self, z, out, lam):
        """EDM's $F$ to $\\hat\\epsilon$."""
        return f_to_eps(z, out, lam, self.sigma_data)

    def from_eps(self, z, eps, lam):
        """$\\epsilon$ to EDM's $F$."""
        return eps_to_f(z, eps, lam, self.sigma_data)

    def mse_ratio(self, lam):
        """$r = \\mathrm{sigmoid}(\\lambda + 2\\log\\tilde\\sigma_{data})$."""
        return _sigmoid(_f64(lam) + 2.0 * np.log(self.sigma_data))


class OPrediction(AbstractParameterisation):
    r"""The network predicts the flow-matching target $o = x - \epsilon$."""

    def to_eps(self, z, out, lam):
        """$o$ to $\\hat\\epsilon$."""
        return o_to_eps(z, out, lam)

    def from_eps(self, z, eps, lam):
        """$\\epsilon$ to $o$."""
        return eps_to_o(z, eps, lam)

    def mse_ratio(self, lam):
        """$r = \\mathrm{sigmoid}(\\lambda/2)^2$."""
        return _sigmoid(0.5 * _f64(lam)) ** 2


class ScorePrediction(AbstractParameterisation):
    r"""The network predicts the score $\nabla_z \log q(z_\lambda)$."""

    def to_eps(self, z, out, lam):
        """$\\hat\\epsilon = -\\sigma s$."""
        return score_to_eps(z, out, lam)

    def from_eps(self, z, eps, lam):
        """$s = -\\epsilon/\\sigma$."""
        return eps_to_score(z, eps, lam)

    def mse_ratio(self, lam):
        """$r = \\mathrm{sigmoid}(-\\lambda)$."""
        return _sigmoid(-_f64(lam))


class EpsDenoiser(eqx.Module):
    r"""Wraps a denoiser of any parameterisation as an $\hat\epsilon$-denoiser `(z, lam) -> eps_hat`.

    Args:
        fn: callable on one example, `(z, lam) -> output` in the parameterisation below.
        parameterisation: what `fn` predicts (e.g. `VPrediction()`).
    """

    fn: Callable
    parameterisation: AbstractParameterisation

    def __call__(self, z: Float[Array, "*data"], lam: FloatLike) -> Float[Array, "*data"]:
        """Return $\\hat\\epsilon(z, \\lambda)$."""
        out = self.fn(z, lam)
        if out.shape != z.shape:
            raise ValueError(f"The denoiser must return an array shaped like its input {z.shape}; got {out.shape}.")
        return self.parameterisation.to_eps(z, out, lam)


def as_eps_denoiser(fn: Callable, parameterisation: AbstractParameterisation = EpsPrediction()) -> EpsDenoiser:
    """`fn` (on one example, predicting `parameterisation`'s target) as an $\\hat\\epsilon$-denoiser."""
    return EpsDenoiser(fn, parameterisation)
