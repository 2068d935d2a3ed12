r"""The adaptive piecewise-linear noise schedule (K&G §3.2, App. F, H; THEORY §5).

The schedule itself lives in `vdmpp.schedules` (`AdaptiveSchedule`, its `AdaptiveState` and the bound
`BoundAdaptiveSchedule`) and is re-exported here; this module adds `calibrate`, which runs the schedule's
updates for a frozen denoiser. Usage:

    a = AdaptiveSchedule(lam_min=-20.0, lam_max=20.0)
    state = a.init()
    loss, aux = vdmpp.losses.weighted_loss(denoiser, x, key=key, schedule=a.bind(state),
                                           weighting=w, return_aux=True)
    state = a.update(state, aux.lam, aux.values)
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from ._misc import check_data, check_positive_int, error_if
from ._types import Array, Float, PRNGKeyArray
from .losses import weighted_loss
from .schedules import (
    AbstractTimeSampler,
    AdaptiveSchedule as AdaptiveSchedule,
    AdaptiveState as AdaptiveState,
    BoundAdaptiveSchedule as BoundAdaptiveSchedule,
    LowDiscrepancy,
)
from .weighting import AbstractWeighting


@eqx.filter_jit
def calibrate(
    schedule: AdaptiveSchedule,
    state: AdaptiveState,
    denoiser: Callable,
    data: Float[Array, " num_data *example"],
    *,
    weighting: AbstractWeighting,
    key: PRNGKeyArray,
    num_steps: int,
    batch_size: int,
    time_sampler: AbstractTimeSampler = LowDiscrepancy(),
) -> AdaptiveState:
    r"""Run `num_steps` updates of the adaptive schedule for a fixed denoiser (no training), jitted.

    Each step draws `batch_size` rows of `data` uniformly, evaluates `weighted_loss` with the schedule
    bound to the current state (so $\lambda$ is drawn from the current $p(\lambda)$), and feeds
    `aux.lam`, `aux.values` to `update`: the loop a training step runs, with the model frozen. With the
    Bayes-optimal denoiser (`vdmpp.oracle.EmpiricalDenoiser`) it converges to
    $p(\lambda) \propto w(\lambda) E\|\epsilon - \hat\epsilon^*\|^2$ bin by bin. Call it repeatedly to continue
    from the returned state (e.g. in chunks under a progress bar).

    Args:
        schedule: the adaptive schedule (configuration).
        state: the state to start from (e.g. `schedule.init()`).
        denoiser: `(z, lam) -> eps_hat` on one example.
        data: the data set, shape `(N, *data)`, in model space.
        weighting: $w(\lambda)$.
        key: PRNG key.
        num_steps: number of update steps.
        batch_size: examples per step.
        time_sampler: how the batch's times are drawn (low-discrepancy by default).

    Returns:
        The state after `num_steps` updates.
    """
    check_positive_int(num_steps, "num_steps")
    check_positive_int(batch_size, "batch_size")
    data = check_data(data, "data", floating=True)
    # traced here (jitted): NaN rows would give NaN targets, which `update` ignores, a silent no-op. The check is
    # tied to the returned state, so it is never dropped as dead code (e.g. for a denoiser that ignores its input).
    state = error_if(state, ~jnp.all(jnp.isfinite(data)), "`data` must be finite; it holds NaN/inf values.")

    def step(state, k):
        ikey, lkey = jr.split(k)
        x = data[jr.randint(ikey, (batch_size,), 0, data.shape[0])]
        _, aux = weighted_loss(
            denoiser,
            x,
            key=lkey,
            schedule=schedule.bind(state),
            weighting=weighting,
            time_sampler=time_sampler,
            return_aux=True,
        )
        return schedule.update(state, aux.lam, aux.values), None

    state, _ = jax.lax.scan(step, state, jr.split(key, num_steps))
    return state
