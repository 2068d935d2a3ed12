r"""The masked-diffusion training objective (MD4's ELBO and S&T's reweighted losses) as a loss object."""

import math
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr

from .._types import Array, Float, PRNGKeyArray
from ..losses import AbstractTimeSampler, LowDiscrepancy, WeightedLossAux
from ..masked import AbstractMaskingSchedule, elbo, reweighted_loss, Simple
from ..weighting import AbstractWeighting
from ._loss import AbstractLoss, Batch


class _TokenDenoiser(eqx.Module):
    # (z_tokens, lam) -> logits for one example; one dropout key shared by the batch (vmap outside)
    model: Any
    key: Any
    inference: bool = eqx.field(static=True)

    def __call__(self, z, lam):
        return self.model(z, lam, key=self.key, inference=self.inference)


class MaskedLoss(AbstractLoss):
    r"""Masked (absorbing) diffusion: the reweighted loss $L^{\tilde w}$ (S&T), the $-$ELBO for `ELBO()`.

    Per example, `vdmpp.masked.reweighted_loss` with $\tilde w(t) = w(\lambda_t)$; with a learned
    `importance` schedule (e.g. `vdmpp.adaptive.AdaptiveSchedule`) $\lambda$ is drawn from it and
    importance-weighted, and its statistics are updated by the train step like the Gaussian case.

    The model is called as `model(z_tokens, lam, *, key, inference)` on one example and returns
    logits over the $V$ real tokens; `mask_id` is $V$. With dropout, every example of a batch shares
    one dropout key (the masks and times still differ per example).

    Args:
        schedule: the masking schedule $\alpha_t$, e.g. `vdmpp.masked.LinearSchedule()`.
        weighting: a `vdmpp.weighting` object (`ELBO()` gives MD4's loss) or `vdmpp.masked.Simple()`.
        mask_id: id of the mask token ($= V$).
        importance: `None`, or a learned schedule over $\lambda$ with `init`/`bind`/`update`.
        time_sampler: draws the times.
    """

    schedule: AbstractMaskingSchedule
    weighting: AbstractWeighting | Simple
    mask_id: int = eqx.field(static=True)
    importance: Any = None
    time_sampler: AbstractTimeSampler = LowDiscrepancy()

    def __check_init__(self):
        if not isinstance(self.schedule, AbstractMaskingSchedule):
            raise TypeError(f"`schedule` must be a vdmpp.masked masking schedule; got {self.schedule!r}.")
        if not isinstance(self.mask_id, int) or self.mask_id < 1:
            raise ValueError(f"`mask_id` must be a positive int (the vocabulary size V); got {self.mask_id!r}.")

    def init_schedule_state(self) -> Any:
        """`None` without a learned importance schedule, else its `init()`."""
        return None if self.importance is None else self.importance.init()

    def update_schedule(self, sched_state: Any, aux: Any, axis_name: str | None = None) -> Any:
        """Feed $(\\lambda, w\\alpha\\,\\mathrm{CE})$ to the learned importance schedule."""
        if self.importance is None:
            return sched_state
        return self.importance.update(sched_state, aux.lam, aux.values, axis_name=axis_name)

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
        out = reweighted_loss(
            _TokenDenoiser(model, dkey, False),
            self._tokens(batch),
            key=lkey,
            schedule=self.schedule,
            weighting=self.weighting,
            mask_id=self.mask_id,
            importance=importance,
            time_sampler=self.time_sampler,
            return_aux=True,
        )
        assert isinstance(out, tuple)
        return out

    def bits_per_dim(self, model: Any, batch: Batch, *, key: PRNGKeyArray, sched_state: Any) -> Float[Array, " batch"]:
        """The $-$ELBO (`vdmpp.masked.elbo`) in bits per token, model in inference mode."""
        del sched_state
        tokens = self._tokens(batch)
        nats = elbo(_TokenDenoiser(model, None, True), tokens, key=key, schedule=self.schedule, mask_id=self.mask_id)
        return nats / (math.prod(tokens.shape[1:]) * math.log(2.0))
