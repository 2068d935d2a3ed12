r"""The training-objective interface: the train step and the loop call a loss, they do not know which one.

A loss maps `(model, batch, key, sched_state)` to a per-example loss and an auxiliary pytree, owns the state of
the noise schedule it may learn (the adaptive schedule of K&G §3.2, THEORY §5; an empty state for a fixed
schedule), and gives the loop what it reports: a bound on the negative log-likelihood in bits per dimension,
samples of a model, and the noise density for the plot.
"""

import abc
from typing import Any

import equinox as eqx
import numpy as np

from .._types import Array, Float, Int, PRNGKeyArray
from ..schedules import AbstractSchedule
from ..weighting import AbstractWeighting


Batch = dict[str, Any]  # name -> array (NumPy or JAX), leading batch axis


class AbstractLoss(eqx.Module):
    """A training objective the train step and the loop can run without knowing which one it is."""

    @abc.abstractmethod
    def __call__(self, model: Any, batch: Batch, *, key: PRNGKeyArray, sched_state: Any) -> tuple[Array, Any]:
        """Return `(per-example loss of shape (batch,), aux)` for one batch (the model in training mode)."""

    @abc.abstractmethod
    def init_schedule_state(self) -> Any:
        """Initial state of the noise schedule (`EmptyState()` when it is fixed)."""

    @abc.abstractmethod
    def update_schedule(self, sched_state: Any, aux: Any, axis_name: str | None = None) -> Any:
        """The schedule state after one step's aux (unchanged for a fixed schedule)."""

    @abc.abstractmethod
    def bits_per_dim(self, model: Any, batch: Batch, *, key: PRNGKeyArray, sched_state: Any) -> Float[Array, " batch"]:
        """A per-example upper bound on the negative log-likelihood in bits per dimension (inference mode)."""

    @abc.abstractmethod
    def sample_with(
        self,
        model: Any,
        sched_state: Any,
        *,
        sampler: Any,
        key: PRNGKeyArray,
        shape: tuple[int, ...],
        num_steps: int,
    ) -> tuple[Int[Array, " num_samples *example"], int]:
        """`(samples, nfe)`: `shape = (num_samples, *example)` integer samples (levels or token ids) of `model` in
        inference mode, drawn with `sampler` (a sampler strategy of the loss's kind; `None`: the loss's own, the
        one `sample` uses), and the network calls per sample (a Python int)."""

    def check_batch(self, batch: Batch) -> None:
        """Check one batch's values on the host, before they reach the device: `vd.train.fit` calls it on every
        batch and traces its train step without the in-graph checks (so the persistent compilation cache can
        store the step). The default checks nothing; raise a ValueError naming the bad values."""

    def sample(
        self, model: Any, sched_state: Any, *, key: PRNGKeyArray, shape: tuple[int, ...], num_steps: int
    ) -> Int[Array, " num_samples *example"]:
        """`shape = (num_samples, *example)` integer samples of `model` with the loss's own sampler (what the
        training loop draws): `sample_with(..., sampler=None)`'s samples."""
        samples, _ = self.sample_with(model, sched_state, sampler=None, key=key, shape=shape, num_steps=num_steps)
        return samples

    @abc.abstractmethod
    def noise_density(self, sched_state: Any) -> tuple[AbstractSchedule, AbstractWeighting] | None:
        r"""The schedule over $\lambda$ that training draws from and the weighting, for the $p(\lambda)$ plot."""


def check_int_range(batch: Batch, high: int, what: str, fix: str) -> None:
    """`batch["x"]` must hold integers in [0, high) (on the host, NumPy)."""
    x = np.asarray(batch["x"])
    if not np.issubdtype(x.dtype, np.integer):
        raise TypeError(f'`batch["x"]` must hold integer {what}; got dtype {x.dtype}.')
    if x.size:
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi >= high:
            raise ValueError(f'`batch["x"]` holds {what} in [{lo}, {hi}]; they must lie in [0, {high - 1}]. {fix}')
