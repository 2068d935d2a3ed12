r"""Bayes-optimal denoisers: exact posteriors for data uniform on a finite set.

For $q(x)$ uniform on the rows $x_1..x_N$ of `data`, the posterior given $z_\lambda = \alpha x + \sigma\epsilon$
is $\pi_n \propto \exp(-\|z - \alpha x_n\|^2/(2\sigma^2))$ and the optimal
$\hat\epsilon^*(z, \lambda) = \sum_n \pi_n (z - \alpha x_n)/\sigma$ (THEORY §4).
"""

import equinox as eqx
import jax
import jax.numpy as jnp

from .._misc import check_data
from .._types import Array, Float, FloatScalarLike
from ..process import vp_alpha_sigma


class EmpiricalDenoiser(eqx.Module):
    r"""Exact posterior-mean $\hat\epsilon^*$ for data uniform on the rows of `data` (VP process).

    Numerically stable for any $\lambda \in [-40, 40]$: posterior weights by log-sum-exp, distances
    computed directly (no expansion of $\|z - \alpha x_n\|^2$, which cancels catastrophically at high SNR).

    Args:
        data: the data set, shape `(N, *data)`, in model space (e.g. $[-1, 1]$).
    """

    data: Float[Array, " N *data"]

    def __init__(self, data: Float[Array, " N *data"]):
        self.data = check_data(data, "data", floating=True)

    def posterior_logits(self, z: Float[Array, "*data"], lam: FloatScalarLike) -> Float[Array, " N"]:
        r"""Unnormalised log posterior $-\|z - \alpha x_n\|^2/(2\sigma^2)$ over the rows."""
        alpha, sigma = vp_alpha_sigma(jnp.asarray(lam, z.dtype))
        axes = tuple(range(1, self.data.ndim))
        d2 = jnp.sum((z[None] - alpha * self.data) ** 2, axis=axes)
        # 1/sigma^2 = 1 + e^lam
        return -0.5 * d2 * jnp.exp(jax.nn.softplus(jnp.asarray(lam, z.dtype)))

    def posterior(self, z: Float[Array, "*data"], lam: FloatScalarLike) -> Float[Array, " N"]:
        """Posterior probabilities of the rows given $z_\\lambda$."""
        # Softmax relative to the best row, whose term is exactly exp(0) = 1, so the sum is >= 1. At lam ~ 40 the
        # logits reach ~1e18; under jit XLA may fuse their last multiply into `logits - max` (an FMA keeps the
        # unrounded product), which left the best row at -4e10, every exp at 0, and NaN from jax.nn.softmax.
        logits = self.posterior_logits(z, lam)
        best = jnp.argmax(logits)
        shifted = logits - logits[best]  # no stop_gradient: the gradient wrt the best logit flows through here
        shifted = jnp.where((jnp.arange(logits.shape[0]) == best) | (shifted > 0), 0.0, shifted)
        p = jnp.exp(shifted)
        return p / jnp.sum(p)

    def x_hat(self, z: Float[Array, "*data"], lam: FloatScalarLike) -> Float[Array, "*data"]:
        r"""Posterior mean $E[x|z_\lambda]$."""
        pi = self.posterior(z, lam)
        return jnp.tensordot(pi, self.data, axes=1)

    def __call__(self, z: Float[Array, "*data"], lam: FloatScalarLike) -> Float[Array, "*data"]:
        r"""$\hat\epsilon^*(z, \lambda) = \sum_n \pi_n (z - \alpha x_n)/\sigma$."""
        if z.shape != self.data.shape[1:]:
            raise ValueError(f"`z` must have one example's shape {self.data.shape[1:]}; got {z.shape}.")
        alpha, sigma = vp_alpha_sigma(jnp.asarray(lam, z.dtype))
        pi = self.posterior(z, lam)
        resid = (z[None] - alpha * self.data) / sigma
        return jnp.tensordot(pi, resid, axes=1)
