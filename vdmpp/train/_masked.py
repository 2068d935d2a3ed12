r"""The masked-diffusion training objective (MD4's ELBO and S&T's reweighted losses)."""

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from .._misc import check_instance, check_positive_int
from .._types import Array, Float, Int, PRNGKeyArray
from ..losses import WeightedLossAux
from ..masked import AbstractMaskedSampler, AbstractMaskingSchedule, Ancestral, elbo, reweighted_loss, sample
from ..nn import ModelDenoiser
from ..schedules import AbstractNoiseSchedule, AbstractSchedule, AbstractTimeSampler, EmptyState, LowDiscrepancy
from ..weighting import AbstractWeighting
from ._objective import AbstractLoss, Batch, check_int_range


class MaskedLoss(AbstractLoss):
    r"""Masked (absorbing) diffusion: the reweighted loss $L^{\tilde w}$ (S&T), the $-$ELBO for `ELBO()`.

    Per example, `vdmpp.masked.reweighted_loss` with $\tilde w(t) = w(\lambda_t)$; with a learned
    `importance` schedule (e.g. `vdmpp.schedules.AdaptiveSchedule`) $\lambda$ is drawn from it and
    importance-weighted, and its statistics are updated by the train step like the Gaussian case.

    The model is called through `vdmpp.nn.ModelDenoiser` as `model(z_tokens, lam, *, key, inference)` on one
    example and returns logits over the $V$ real tokens; `mask_id` is $V$.

    Args:
        schedule: the masking schedule $\alpha_t$, e.g. `vdmpp.masked.LinearSchedule()`.
        weighting: a `vdmpp.weighting` object (`ELBO()` gives MD4's loss) or `vdmpp.masked.Simple(schedule)`.
        mask_id: id of the mask token ($= V$).
        importance: `None`, or a learned schedule over $\lambda$ (`init`/`update`/`bind`).
        time_sampler: draws the times.
    """

    schedule: AbstractMaskingSchedule
    weighting: AbstractWeighting
    mask_id: int = eqx.field(static=True)
    importance: AbstractNoiseSchedule | None = None
    time_sampler: AbstractTimeSampler = LowDiscrepancy()

    def __check_init__(self):
        check_instance(self.schedule, AbstractMaskingSchedule, "schedule", "vd.masked.LinearSchedule()")
        check_instance(self.weighting, AbstractWeighting, "weighting", "vd.weighting.ELBO()")
        check_positive_int(self.mask_id, "mask_id", " (the vocabulary size V)")

    def init_schedule_state(self) -> Any:
        """`EmptyState()` without a learned importance schedule, else its `init()`."""
        return EmptyState() if self.importance is None else self.importance.init()

    def update_schedule(self, sched_state: Any, aux: Any, axis_name: str | None = None) -> Any:
        """Feed $(\\lambda, w\\alpha\\,\\mathrm{CE})$ to the learned importance schedule."""
        if self.importance is None:
            return sched_state
        return self.importance.update(sched_state, aux.lam, aux.values, axis_name=axis_name)

    def check_batch(self, batch: Batch) -> None:
        """Token ids in [0, V) with V = `mask_id` (on the host)."""
        check_int_range(batch, self.mask_id, "token ids", "`mask_id` is the vocabulary size V (ids 0..V-1).")

    def _tokens(self, batch: Batch) -> Array:
        x = batch["x"]
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise TypeError(f'`batch["x"]` must hold integer token ids; got dtype {x.dtype}.')
        return x.astype(jnp.int32)

    def __call__(
        self, model: Any, batch: Batch, *, key: PRNGKeyArray, sched_state: Any
    ) -> tuple[Float[Array, " batch"], WeightedLossAux]:
        """Per-example reweighted loss (nats) and `WeightedLossAux(lam, values)`."""
        lkey, dkey = jr.split(key)
        importance = None if self.importance is None else self.importance.bind(sched_state)
        return reweighted_loss(
            ModelDenoiser(model, key=dkey, inference=False),
            self._tokens(batch),
            key=lkey,
            schedule=self.schedule,
            weighting=self.weighting,
            mask_id=self.mask_id,
            importance=importance,
            time_sampler=self.time_sampler,
            return_aux=True,
        )

    def bits_per_dim(self, model: Any, batch: Batch, *, key: PRNGKeyArray, sched_state: Any) -> Float[Array, " batch"]:
        """The $-$ELBO (`vdmpp.masked.elbo`) in bits per token, model in inference mode, traced at
        `jax.default_matmul_precision("highest")` (THEORY §15)."""
        del sched_state
        tokens = self._tokens(batch)
        with jax.default_matmul_precision("highest"):  # likelihoods at full float32 matmul precision (THEORY §15)
            nats = elbo(ModelDenoiser(model), tokens, key=key, schedule=self.schedule, mask_id=self.mask_id)
        return nats / (math.prod(tokens.shape[1:]) * math.log(2.0))

    def sample_with(
        self,
        model: Any,
        sched_state: Any,
        *,
        sampler: AbstractMaskedSampler | None = None,
        key: PRNGKeyArray,
        shape: tuple[int, ...],
        num_steps: int,
    ) -> tuple[Int[Array, " num_samples *example"], int]:
        """`(token ids, nfe)` with any `vdmpp.masked` sampler on the masking schedule (`None`: MD4's `Ancestral()`,
        the training loop's sampler)."""
        del sched_state
        sampler = Ancestral() if sampler is None else sampler
        return sample(
            sampler, ModelDenoiser(model), shape, key=key, schedule=self.schedule, num_steps=num_steps,
            mask_id=self.mask_id,
        )  # fmt: skip

    def noise_density(self, sched_state: Any) -> tuple[AbstractSchedule, AbstractWeighting] | None:
        """The learned importance schedule under `sched_state` and the weighting (`None` without one)."""
        if self.importance is None:
            return None
        return self.importance.bind(sched_state), self.weighting
