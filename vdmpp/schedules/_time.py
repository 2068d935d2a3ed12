r"""Time samplers (THEORY §6): a batch of times $t \in [0, 1)$ whose marginals are each $U(0, 1)$.

All three are unbiased; they differ in the variance of a batch mean (low-discrepancy < stratified < i.i.d.).
"""

import abc

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr

from .._types import Array, Float, PRNGKeyArray


class AbstractTimeSampler(eqx.Module):
    """Draws a batch of times $t \\in [0, 1)$ whose marginals are each $U(0, 1)$."""

    @abc.abstractmethod
    def __call__(self, key: PRNGKeyArray, n: int, dtype=jnp.float32) -> Float[Array, " n"]:
        """Return `n` times."""


class LowDiscrepancy(AbstractTimeSampler):
    r"""VDM's low-discrepancy sampler: one $u \sim U(0,1)$, $t_i = (u + i/B) \bmod 1$."""

    def __call__(self, key, n, dtype=jnp.float32):
        """Return `n` evenly spaced times with a random offset."""
        u = jr.uniform(key, (), dtype)
        return jnp.mod(u + jnp.arange(n, dtype=dtype) / n, 1.0)


class Stratified(AbstractTimeSampler):
    r"""Stratified sampler: $t_i = (i + u_i)/B$ with independent $u_i \sim U(0,1)$."""

    def __call__(self, key, n, dtype=jnp.float32):
        """Return one time per stratum."""
        return (jnp.arange(n, dtype=dtype) + jr.uniform(key, (n,), dtype)) / n


class IID(AbstractTimeSampler):
    r"""Independent $t_i \sim U(0, 1)$."""

    def __call__(self, key, n, dtype=jnp.float32):
        """Return `n` i.i.d. uniform times."""
        return jr.uniform(key, (n,), dtype)
