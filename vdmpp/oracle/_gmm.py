r"""A Gaussian mixture data distribution whose every noisy marginal is known in closed form.

For $x \sim \sum_k w_k N(\mu_k, \mathrm{diag}(s_k^2))$ and the VP process $z_\lambda = \alpha x + \sigma\epsilon$,
$q(z_\lambda) = \sum_k w_k N(z; \alpha\mu_k, \mathrm{diag}(v_k))$ with $v_k = \alpha^2 s_k^2 + \sigma^2$.
The posterior over components is $\pi_k(z) \propto w_k N(z; \alpha\mu_k, v_k)$, and

- score: $\nabla_z \log q(z_\lambda) = -\sum_k \pi_k (z - \alpha\mu_k)/v_k$;
- exact (posterior-mean) denoiser: $E[\epsilon|z] = \sum_k \pi_k\,\sigma (z - \alpha\mu_k)/v_k = -\sigma\nabla\log q$,
  written without the cancelling difference $(z - \alpha\hat x)/\sigma$, so it is accurate at any $\lambda$;
- $E[x|z] = \sum_k \pi_k (\mu_k + \alpha s_k^2 (z - \alpha\mu_k)/v_k)$.

This is the ground truth for sampler and likelihood tests (THEORY §7).
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from .._misc import concrete
from .._types import Array, Float, FloatScalarLike, PRNGKeyArray
from ..process import vp_alpha_sigma


class GaussianMixture(eqx.Module):
    r"""Data distribution $\sum_k w_k N(\mu_k, \mathrm{diag}(s_k^2))$ on $\mathbb{R}^D$, noisy marginals in closed form.

    Args:
        means: component means $\mu_k$, shape `(K, D)`.
        scales: component standard deviations: shape `(K,)` (isotropic), `(K, D)` (diagonal) or a scalar.
        weights: mixture weights, shape `(K,)`, positive (normalised here); `None` for uniform weights.

    Raises:
        ValueError: on mismatched shapes, non-positive scales or weights.
    """

    means: Float[Array, "K D"]
    scales: Float[Array, "K D"]
    log_weights: Float[Array, " K"]

    def __init__(self, means, scales, weights=None):
        means = jnp.asarray(means)
        if not jnp.issubdtype(means.dtype, jnp.floating):
            means = means.astype(jnp.float32)
        if means.ndim != 2 or 0 in means.shape:
            raise ValueError(f"`means` must be shaped (K, D) with K, D >= 1; got shape {means.shape}.")
        if concrete(means) is not None and not np.all(np.isfinite(np.asarray(means))):
            raise ValueError("`means` must be finite; it holds NaN/inf.")
        k, d = means.shape
        scales = jnp.asarray(scales, dtype=means.dtype)
        if scales.ndim == 0:
            scales = jnp.full((k, d), scales)
        elif scales.shape == (k,):
            scales = jnp.broadcast_to(scales[:, None], (k, d))
        elif scales.shape != (k, d):
            raise ValueError(
                f"`scales` must be a scalar, shaped (K,)=({k},) (isotropic) or (K, D)=({k}, {d}) (diagonal); "
                f"got shape {scales.shape}."
            )
        if weights is None:
            weights = jnp.full((k,), 1.0 / k, dtype=means.dtype)
        weights = jnp.asarray(weights, dtype=means.dtype)
        if weights.shape != (k,):
            raise ValueError(f"`weights` must be shaped (K,)=({k},); got shape {weights.shape}.")
        if concrete(scales) is not None and not bool(jnp.all((scales > 0) & jnp.isfinite(scales))):
            raise ValueError(f"`scales` must be positive and finite; got {scales}.")
        if concrete(weights) is not None and not bool(jnp.all((weights > 0) & jnp.isfinite(weights))):
            raise ValueError(f"`weights` must be positive and finite; got {weights}.")
        self.means = means
        self.scales = scales
        self.log_weights = jnp.log(weights) - jnp.log(jnp.sum(weights))

    @property
    def dim(self) -> int:
        """The data dimension $D$."""
        return self.means.shape[1]

    @property
    def weights(self) -> Float[Array, " K"]:
        """Normalised mixture weights."""
        return jnp.exp(self.log_weights)

    def _check_z(self, z: Array) -> None:
        if z.ndim < 1 or z.shape[-1] != self.dim:
            raise ValueError(f"`z` must end with the data dimension D={self.dim}; got shape {z.shape}.")

    def _marginal(self, lam: FloatScalarLike, dtype) -> tuple[Array, Array, Array, Array]:
        lam = jnp.asarray(lam, dtype)
        alpha, sigma = vp_alpha_sigma(lam)
        var = alpha**2 * self.scales**2 + sigma**2
        return alpha, sigma, alpha * self.means, var

    def _batched(self, fn, z: Array) -> Array:
        # apply a one-example function over any leading batch axes
        z = jnp.asarray(z)
        self._check_z(z)
        flat = z.reshape(-1, self.dim)
        out = jax.vmap(fn)(flat)
        return out.reshape(*z.shape[:-1], *out.shape[1:])

    def _one(self, z: Array, lam: FloatScalarLike) -> tuple[Array, Array, Array, Array, Array]:
        # for one example z (D,): posterior pi (K,), alpha, sigma, z - alpha mu_k (K, D), v_k (K, D)
        alpha, sigma, mean, var = self._marginal(lam, z.dtype)
        diff = z[None, :] - mean
        quad = jnp.sum(diff**2 / var + jnp.log(var), axis=-1)
        logits = self.log_weights - 0.5 * quad - 0.5 * self.dim * math.log(2 * math.pi)
        return logits, alpha, sigma, diff, var

    def log_prob(self, z: Float[Array, "*batch D"], lam: FloatScalarLike = float("inf")) -> Float[Array, "*batch"]:
        r"""$\log q(z_\lambda)$, exact; `lam=inf` (the default) is the data density."""
        return self._batched(lambda zi: jax.nn.logsumexp(self._one(zi, lam)[0]), z)

    def posterior(self, z: Float[Array, "*batch D"], lam: FloatScalarLike) -> Float[Array, "*batch K"]:
        r"""Posterior component probabilities $\pi_k(z_\lambda)$."""
        return self._batched(lambda zi: jax.nn.softmax(self._one(zi, lam)[0]), z)

    def score(self, z: Float[Array, "*batch D"], lam: FloatScalarLike) -> Float[Array, "*batch D"]:
        r"""Exact score $\nabla_z \log q(z_\lambda) = -\sum_k \pi_k (z - \alpha\mu_k)/v_k$."""

        def one(zi):
            logits, _, _, diff, var = self._one(zi, lam)
            return -jax.nn.softmax(logits) @ (diff / var)

        return self._batched(one, z)

    def eps_hat(self, z: Float[Array, "*batch D"], lam: FloatScalarLike) -> Float[Array, "*batch D"]:
        r"""Exact posterior mean $E[\epsilon | z_\lambda] = \sum_k \pi_k \sigma (z - \alpha\mu_k)/v_k$."""

        def one(zi):
            logits, _, sigma, diff, var = self._one(zi, lam)
            return sigma * (jax.nn.softmax(logits) @ (diff / var))

        return self._batched(one, z)

    def x_hat(self, z: Float[Array, "*batch D"], lam: FloatScalarLike) -> Float[Array, "*batch D"]:
        r"""Exact posterior mean $E[x | z_\lambda] = \sum_k \pi_k(\mu_k + \alpha s_k^2 (z - \alpha\mu_k)/v_k)$."""

        def one(zi):
            logits, alpha, _, diff, var = self._one(zi, lam)
            return jax.nn.softmax(logits) @ (self.means + alpha * self.scales**2 * diff / var)

        return self._batched(one, z)

    def denoiser(self, z: Float[Array, "*data"], lam: FloatScalarLike) -> Float[Array, "*data"]:
        r"""The exact $\hat\epsilon^*$-denoiser on one example, `(z, lam) -> eps_hat` (see `eps_hat`)."""
        if z.shape != (self.dim,):
            raise ValueError(f"The mixture denoiser takes one example of shape ({self.dim},); got shape {z.shape}.")
        return self.eps_hat(z, lam)

    def mean(self, lam: FloatScalarLike = float("inf")) -> Float[Array, " D"]:
        r"""$E[z_\lambda] = \alpha \sum_k w_k\mu_k$."""
        alpha, _ = vp_alpha_sigma(jnp.asarray(lam, self.means.dtype))
        return alpha * jnp.sum(self.weights[:, None] * self.means, axis=0)

    def covariance(self, lam: FloatScalarLike = float("inf")) -> Float[Array, "D D"]:
        r"""$\mathrm{Cov}[z_\lambda] = \sum_k w_k(\mathrm{diag}(v_k) + \alpha^2\mu_k\mu_k^\top) - E[z]E[z]^\top$."""
        _, _, mean_k, var = self._marginal(lam, self.means.dtype)
        w = self.weights
        second = jnp.einsum("k,ki,kj->ij", w, mean_k, mean_k) + jnp.diag(jnp.sum(w[:, None] * var, axis=0))
        m = jnp.sum(w[:, None] * mean_k, axis=0)
        return second - jnp.outer(m, m)

    def sample(self, key: PRNGKeyArray, n: int, lam: FloatScalarLike = float("inf")) -> Float[Array, "n D"]:
        r"""`n` exact samples of $z_\lambda$ (the data itself for `lam=inf`, the default)."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"`n` must be a positive integer; got {n!r}.")
        ckey, nkey = jr.split(key)
        comp = jr.categorical(ckey, self.log_weights, shape=(n,))
        _, _, mean, var = self._marginal(lam, self.means.dtype)
        xi = jr.normal(nkey, (n, self.dim), self.means.dtype)
        return mean[comp] + jnp.sqrt(var[comp]) * xi
