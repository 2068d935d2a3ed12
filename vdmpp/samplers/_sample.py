r"""One sampler interface: `AbstractSampler` strategies run by `sample` (THEORY §7, §11)."""

import abc
from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr

from .._misc import check_instance, check_positive_int
from .._types import Array, ArrayLike, Float, PRNGKeyArray, Shaped
from ..schedules import AbstractSchedule
from ._common import batched, check_shape, check_z_init


class AbstractSampler(eqx.Module):
    r"""A sampling strategy for Gaussian diffusion: a solver on a grid of log-SNRs (`AbstractGrid`).

    Run it with `vd.samplers.sample`. Implementations say how many denoiser evaluations `num_steps`
    steps take (`num_evals`, a Python int, which also checks the step count) and map the $N(0, I)$
    start at $\lambda_{min}$ to samples (`run`). The built-in samplers take their grid as a `grid` field.
    """

    @abc.abstractmethod
    def num_evals(self, num_steps: int) -> int:
        """Denoiser evaluations for `num_steps` steps; raises `ValueError` for a step count it cannot take."""

    @abc.abstractmethod
    def run(
        self,
        eps_fn: Callable,
        z: Float[Array, " batch *data"],
        *,
        key: PRNGKeyArray,
        schedule: AbstractSchedule,
        num_steps: int,
    ) -> Array:
        """Map the start `z` (at the grid's first log-SNR) to samples; `eps_fn` is the batched denoiser."""


def sample(
    sampler: AbstractSampler,
    denoiser: Callable,
    shape: tuple[int, ...],
    *,
    key: PRNGKeyArray,
    schedule: AbstractSchedule,
    num_steps: int,
    z_init: Shaped[ArrayLike, " batch *data"] | None = None,
) -> tuple[Array, int]:
    r"""Draw samples with `sampler`: $z \sim N(0, I)$ at the grid's $\lambda_{min}$, then the sampler's steps.

    Jittable (the sampler, the schedule and `num_steps` are static); the samples have `z_init`'s dtype
    (float32 when it is drawn here).

    Args:
        sampler: an `AbstractSampler`, e.g. `vd.samplers.DPMSolverPP(order=2)`.
        denoiser: `(z, lam) -> eps_hat` on ONE example (wrap other parameterisations with
            `vdmpp.process.as_eps_denoiser`, guidance with `vd.samplers.guided`).
        shape: `(num_samples, *data)`.
        key: PRNG key: the start (when `z_init` is None) and the sampler's noise.
        schedule: the sampling schedule; its $[\lambda_{min}, \lambda_{max}]$ bounds the grid (and `UniformTime`
            follows its shape). It need not be the training schedule: the denoiser is fed $\lambda$.
        num_steps: the number of steps $N$ (a positive Python int).
        z_init: the $N(0, I)$ start, shaped `shape`; drawn from `key` when None.

    Returns:
        `(samples, nfe)`: `nfe` is a Python int, the network calls per sample (the sampler's evaluations
        times `calls_per_eval(denoiser)`, e.g. 2 for `guided`).

    Raises:
        TypeError: `sampler` is not an `AbstractSampler`; `z_init` is not floating.
        ValueError: a bad `shape`, `num_steps` (also: fewer than a multistep solver's order), `z_init`
            (shape, non-finite) or grid (not strictly increasing), or a denoiser of the wrong output shape.
    """
    check_instance(sampler, AbstractSampler, "sampler", "vd.samplers.DPMSolverPP(order=2)")
    check_instance(schedule, AbstractSchedule, "schedule", "vd.schedules.Cosine(-15.0, 15.0)")
    shape = check_shape(shape)
    num_steps = check_positive_int(num_steps, "num_steps")
    evals = sampler.num_evals(num_steps)
    init_key, run_key = jr.split(key)
    z = jr.normal(init_key, shape, jnp.float32) if z_init is None else check_z_init(z_init, shape)
    eps_fn, calls = batched(denoiser, shape, z.dtype)
    samples = sampler.run(eps_fn, z, key=run_key, schedule=schedule, num_steps=num_steps)
    return samples, evals * calls
