r"""The VDM++ weighted loss (K&G eq. 5–7) as a training objective, with a fixed or learned noise schedule."""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from .._misc import check_instance, is_int
from .._types import Array, Float, Int, PRNGKeyArray
from ..losses import decoder_logits, elbo_bpd, uint8_to_float, weighted_loss_at, WeightedLossAux
from ..nn import ModelDenoiser
from ..process import AbstractParameterisation, EpsPrediction
from ..samplers import AbstractSampler, Ancestral, sample
from ..schedules import AbstractNoiseSchedule, AbstractSchedule, AbstractTimeSampler, LinearLogSNR, LowDiscrepancy
from ..weighting import AbstractWeighting
from ._objective import AbstractLoss, Batch, check_int_range


class GaussianLoss(AbstractLoss):
    r"""The VDM++ weighted loss (K&G eq. 5–7) on integer data, with a fixed or learned schedule.

    Per example, $\ell = \tfrac12\,\frac{w(\lambda)}{p(\lambda)}\|\epsilon - \hat\epsilon(z_\lambda;\lambda)\|^2$
    with $\lambda = \lambda(t)$, $t$ from `time_sampler`, $p$ the density of the schedule under its state (the
    importance form of eq. 7, so the adaptive schedule plugs in unchanged). Integer data in $\{0..L-1\}$ are
    mapped to bin centres in $(-1, 1)$ here: the loss owns the scaling. The schedule's $[\lambda_{min},
    \lambda_{max}]$ is the run's one $\lambda$ range: training, the ELBO and sampling all use it.

    The model is called through `vdmpp.nn.ModelDenoiser` (one example, dropout on, one key per step) and its
    output read in `parameterisation`.

    Args:
        weighting: $w(\lambda)$, e.g. `vdmpp.weighting.Sigmoid(2.0)`.
        schedule: a `vdmpp.schedules` schedule: fixed (`Cosine(...)`) or learned (`AdaptiveSchedule(...)`).
        parameterisation: what the network predicts (default $\epsilon$).
        num_levels: number of integer levels $L$ of the data (17 for scikit-learn digits).
        time_sampler: draws the times (low-discrepancy by default).
        use_labels: pass `batch["label"]` to the model (class conditioning).
        sampling_schedule: the schedule samples are drawn on; `None` samples on the training schedule under its
            current state (the learned one for an adaptive run).
    """

    weighting: AbstractWeighting
    schedule: AbstractNoiseSchedule
    parameterisation: AbstractParameterisation = EpsPrediction()
    num_levels: int = eqx.field(static=True, default=256)
    time_sampler: AbstractTimeSampler = LowDiscrepancy()
    use_labels: bool = eqx.field(static=True, default=False)
    sampling_schedule: AbstractSchedule | None = None

    def __check_init__(self):
        check_instance(self.weighting, AbstractWeighting, "weighting", "vd.weighting.Sigmoid(2.0)")
        check_instance(self.schedule, AbstractNoiseSchedule, "schedule", "vd.schedules.Cosine(-10.0, 6.0)")
        check_instance(self.parameterisation, AbstractParameterisation, "parameterisation", "vd.process.VPrediction()")
        if not is_int(self.num_levels) or self.num_levels < 2:
            raise ValueError(f"`num_levels` must be an integer >= 2; got {self.num_levels!r}.")

    def init_schedule_state(self) -> Any:
        """The schedule's `init()` (`EmptyState()` for a fixed schedule)."""
        return self.schedule.init()

    def update_schedule(self, sched_state: Any, aux: Any, axis_name: str | None = None) -> Any:
        """Feed the step's $(\\lambda, w\\|\\epsilon-\\hat\\epsilon\\|^2)$ to the schedule (THEORY §5)."""
        return self.schedule.update(sched_state, aux.lam, aux.values, axis_name=axis_name)

    def check_batch(self, batch: Batch) -> None:
        """Integer levels in [0, num_levels) (on the host)."""
        check_int_range(batch, self.num_levels, "levels", "Set `num_levels` to the data's number of levels.")

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
        denoiser = ModelDenoiser(model, self.parameterisation, key=dkey, inference=False)
        return weighted_loss_at(
            denoiser,
            x,
            t,
            eps,
            schedule=self.schedule.bind(sched_state),
            weighting=self.weighting,
            per_example=(batch["label"],) if self.use_labels else (),
            return_aux=True,
        )

    def bits_per_dim(self, model: Any, batch: Batch, *, key: PRNGKeyArray, sched_state: Any) -> Float[Array, " batch"]:
        r"""The $-$ELBO in bits/dim (`vdmpp.losses.elbo_bpd`) with the model in inference mode.

        The diffusion term is estimated with $\lambda$ uniform on the schedule's range (an unbiased estimate
        for any schedule, since the loss is invariant to it; THEORY §3). Traced at
        `jax.default_matmul_precision("highest")` (THEORY §15).
        """
        del sched_state
        # Importance sampler for the ELBO (w = 1): uniform in lambda over the same range. Its importance
        # weight is the constant (lam_max - lam_min), so the estimate stays low-variance even where a network's
        # error does not decay at high SNR (a cosine sampler's weight 1/p(lambda) explodes there).
        schedule = LinearLogSNR(lam_min=float(self.schedule.lam_min), lam_max=float(self.schedule.lam_max))
        denoiser = ModelDenoiser(model, self.parameterisation)
        with jax.default_matmul_precision("highest"):  # likelihoods at full float32 matmul precision (THEORY §15)
            return elbo_bpd(denoiser, batch["x"], key=key, schedule=schedule, num_levels=self.num_levels)

    def sample_with(
        self,
        model: Any,
        sched_state: Any,
        *,
        sampler: AbstractSampler | None = None,
        key: PRNGKeyArray,
        shape: tuple[int, ...],
        num_steps: int,
    ) -> tuple[Int[Array, " num_samples *example"], int]:
        r"""`(samples, nfe)` with any `vdmpp.samplers` strategy on the sampling schedule, as integer levels.

        `None` is the training loop's sampler, `Ancestral(num_levels=L)`: ancestral steps (THEORY §7), then the
        mode of the ELBO's discretised decoder $p(x|z_0)$ (THEORY §6). A sampler that returns floats is read as
        ending at $z$ at $\lambda_{max}$ (`final_denoise=False`, the default of every built-in sampler but
        `EDM`) and decoded to the mode of the same decoder.
        """
        schedule = self.schedule.bind(sched_state) if self.sampling_schedule is None else self.sampling_schedule
        denoiser = ModelDenoiser(model, self.parameterisation)
        sampler = Ancestral(num_levels=self.num_levels) if sampler is None else sampler
        out, nfe = sample(sampler, denoiser, shape, key=key, schedule=schedule, num_steps=num_steps)
        if not jnp.issubdtype(out.dtype, jnp.integer):
            logits = decoder_logits(out, schedule.lam_max, self.num_levels)
            out = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        return out, nfe

    def noise_density(self, sched_state: Any) -> tuple[AbstractSchedule, AbstractWeighting]:
        """The schedule under `sched_state` and the weighting."""
        return self.schedule.bind(sched_state), self.weighting
