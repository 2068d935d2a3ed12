r"""Loss objects for the training step: the step calls a loss, it does not know which one.

A loss maps `(model, batch, key, sched_state)` to a per-example loss and an auxiliary pytree, and
owns the noise-schedule state it may learn (the adaptive schedule of K&G §3.2, THEORY §5).
"""

import abc
import math
from typing import Any, cast

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr

from .._types import Array, Float, PRNGKeyArray
from ..losses import (
    AbstractTimeSampler,
    elbo_bpd,
    LowDiscrepancy,
    uint8_to_float,
    weighted_loss_at,
    WeightedLossAux,
)
from ..process import AbstractParameterisation, EpsPrediction
from ..schedules import AbstractSchedule, LinearLogSNR
from ..weighting import AbstractWeighting


Batch = dict[str, Array]


class AbstractLoss(eqx.Module):
    """A training objective the train step can run without knowing which one it is.

    Concrete losses define the per-example loss, the initial state of any learned schedule, its
    update from the loss's auxiliary output, and an evaluation metric in bits per dimension.
    """

    @abc.abstractmethod
    def __call__(self, model: Any, batch: Batch, *, key: PRNGKeyArray, sched_state: Any) -> tuple[Array, Any]:
        """Return `(per-example loss of shape (batch,), aux)` for one batch."""

    @abc.abstractmethod
    def init_schedule_state(self) -> Any:
        """Initial state of the learned noise schedule (`None` when the schedule is fixed)."""

    @abc.abstractmethod
    def update_schedule(self, sched_state: Any, aux: Any, axis_name: str | None = None) -> Any:
        """Update the schedule state from one step's aux (identity for a fixed schedule)."""

    @abc.abstractmethod
    def bits_per_dim(self, model: Any, batch: Batch, *, key: PRNGKeyArray, sched_state: Any) -> Array:
        """A per-example upper bound on the negative log-likelihood in bits per dimension."""


def _is_fixed(schedule: Any) -> bool:
    return isinstance(schedule, AbstractSchedule)


class _ModelDenoiser(eqx.Module):
    # (z, lam) -> eps_hat for one example, with the label fixed; used for evaluation only
    model: Any
    parameterisation: AbstractParameterisation

    def __call__(self, z, lam):
        out = self.model(z, lam, label=None, key=None, inference=True)
        return self.parameterisation.to_eps(z, out, lam)


class _TrainDenoiser(eqx.Module):
    # (z, lam, label, key) -> eps_hat for one example in training mode (dropout on)
    model: Any
    parameterisation: AbstractParameterisation
    use_labels: bool = eqx.field(static=True)

    def __call__(self, z, lam, label, key):
        out = self.model(z, lam, label=label if self.use_labels else None, key=key, inference=False)
        if out.shape != z.shape:
            raise ValueError(f"The model must return an array shaped like its input {z.shape}; got {out.shape}.")
        return self.parameterisation.to_eps(z, out, lam)


class GaussianLoss(AbstractLoss):
    r"""The VDM++ weighted loss (K&G eq. 5–7) on integer data, with a fixed or adaptive schedule.

    Per example, $\ell = \tfrac12\,\frac{w(\lambda)}{p(\lambda)}\|\epsilon - \hat\epsilon(z_\lambda;\lambda)\|^2$
    with $\lambda = \lambda(t)$, $t$ from `time_sampler`, $p$ the schedule's density (the importance
    form of eq. 7, so the adaptive schedule plugs in unchanged). Integer data in $\{0..L-1\}$ are
    mapped to bin centres in $(-1, 1)$ here: the loss owns the scaling.

    The model is called as `model(z, lam, *, label, key, inference=False)` on one example
    (vmapped here), and its output is read in `parameterisation`.

    Args:
        weighting: $w(\lambda)$, e.g. `vdmpp.weighting.Sigmoid(2.0)`.
        schedule: a fixed `vdmpp.schedules.AbstractSchedule`, or a learned schedule with
            `init()`, `bind(state)` and `update(state, lam, values, axis_name=...)` such as
            `vdmpp.adaptive.AdaptiveSchedule`.
        parameterisation: what the network predicts (default $\epsilon$).
        num_levels: number of integer levels $L$ of the data (17 for scikit-learn digits).
        time_sampler: draws the times (low-discrepancy by default).
        use_labels: pass `batch["label"]` to the model (class conditioning).
    """

    weighting: AbstractWeighting
    schedule: Any
    parameterisation: AbstractParameterisation = EpsPrediction()
    num_levels: int = eqx.field(static=True, default=256)
    time_sampler: AbstractTimeSampler = LowDiscrepancy()
    use_labels: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        if not isinstance(self.weighting, AbstractWeighting):
            raise TypeError(f"`weighting` must be a vdmpp.weighting object; got {self.weighting!r}.")
        if not isinstance(self.parameterisation, AbstractParameterisation):
            raise TypeError(
                f"`parameterisation` must be a vdmpp.process parameterisation object; got {self.parameterisation!r}."
            )
        if not isinstance(self.num_levels, int) or self.num_levels < 2:
            raise ValueError(f"`num_levels` must be an integer >= 2; got {self.num_levels!r}.")

    def schedule_at(self, sched_state: Any) -> AbstractSchedule:
        """The schedule in use given its state (the fixed schedule, or the adaptive one bound to `sched_state`)."""
        if _is_fixed(self.schedule):
            return self.schedule
        return self.schedule.bind(sched_state)

    def init_schedule_state(self) -> Any:
        """`None` for a fixed schedule, else the learned schedule's `init()`."""
        return None if _is_fixed(self.schedule) else self.schedule.init()

    def update_schedule(self, sched_state: Any, aux: Any, axis_name: str | None = None) -> Any:
        """Feed the step's $(\\lambda, w\\|\\epsilon-\\hat\\epsilon\\|^2)$ to a learned schedule (THEORY §5)."""
        if _is_fixed(self.schedule):
            return sched_state
        return self.schedule.update(sched_state, aux.lam, aux.values, axis_name=axis_name)

    def _scale(self, x: Array) -> Array:
        if jnp.issubdtype(x.dtype, jnp.integer):
            return uint8_to_float(x, self.num_levels)
        raise TypeError(
            f'`batch["x"]` must hold integer levels (uint8); got dtype {x.dtype}. The loss does the scaling.'
        )

    def __call__(
        self, model: Any, batch: Batch, *, key: PRNGKeyArray, sched_state: Any
    ) -> tuple[Float[Array, " batch"], WeightedLossAux]:
        """Per-example weighted loss and `WeightedLossAux(lam, values)` for the schedule update."""
        x = self._scale(batch["x"])
        n = x.shape[0]
        tkey, ekey, dkey = jr.split(key, 3)
        t = self.time_sampler(tkey, n, x.dtype)
        eps = jr.normal(ekey, x.shape, x.dtype)
        labels = batch["label"] if self.use_labels else jnp.zeros((n,), jnp.int32)
        out = weighted_loss_at(
            _TrainDenoiser(model, self.parameterisation, self.use_labels),
            x,
            t,
            eps,
            schedule=self.schedule_at(sched_state),
            weighting=self.weighting,
            per_example=(labels, jr.split(dkey, n)),
            return_aux=True,
        )
        return cast(tuple[Array, WeightedLossAux], out)

    def bits_per_dim(self, model: Any, batch: Batch, *, key: PRNGKeyArray, sched_state: Any) -> Float[Array, " batch"]:
        r"""The $-$ELBO in bits/dim (`vdmpp.losses.elbo_bpd`) with the model in inference mode.

        The diffusion term is estimated with $\lambda$ uniform on the schedule's range (an unbiased estimate
        for any schedule, since the loss is invariant to it; THEORY §3).
        """
        del sched_state
        # Importance sampler for the ELBO (w = 1): uniform in lambda over the same range. Its importance
        # weight is the constant (lam_max - lam_min), so the estimate stays low-variance even where a network's
        # error does not decay at high SNR (a cosine sampler's weight 1/p(lambda) explodes there).
        schedule = LinearLogSNR(lam_min=float(self.schedule.lam_min), lam_max=float(self.schedule.lam_max))
        denoiser = _ModelDenoiser(model, self.parameterisation)
        return elbo_bpd(denoiser, batch["x"], key=key, schedule=schedule, num_levels=self.num_levels)


def bits_per_dim_from_nats(nats: Array, dims: int) -> Array:
    """Convert per-example nats to bits per dimension."""
    return nats / (dims * math.log(2.0))
