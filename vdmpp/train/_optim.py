"""The optimiser: Adam with global-norm clipping and a warmup + cosine/constant learning rate (optax)."""

import abc
import math

import equinox as eqx
import optax


class AbstractLRSchedule(eqx.Module):
    """A learning-rate schedule kind (strategy object) for `make_optimizer`."""

    @abc.abstractmethod
    def build(self, lr: float, warmup: int, total_steps: int) -> optax.Schedule:
        """Return the optax schedule."""


class WarmupCosine(AbstractLRSchedule):
    """Linear warmup from 0 to `lr` over `warmup` steps, then cosine decay to `final_fraction * lr`."""

    final_fraction: float = 0.0

    def build(self, lr, warmup, total_steps):
        """Return `optax.warmup_cosine_decay_schedule`."""
        return optax.warmup_cosine_decay_schedule(
            0.0, lr, warmup_steps=warmup, decay_steps=max(total_steps, warmup + 1), end_value=lr * self.final_fraction
        )


class WarmupConstant(AbstractLRSchedule):
    """Linear warmup from 0 to `lr` over `warmup` steps, then constant."""

    def build(self, lr, warmup, total_steps):
        """Return a warmup joined to a constant schedule."""
        if warmup == 0:
            return optax.constant_schedule(lr)
        return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup])


def make_optimizer(
    lr: float,
    warmup: int,
    total_steps: int,
    schedule: AbstractLRSchedule = WarmupCosine(),
    *,
    clip_norm: float = 1.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> optax.GradientTransformation:
    """Adam with global-norm clipping (1.0 by default) and a warmup + cosine/constant learning rate.

    Raises:
        ValueError: if `lr`, `warmup` or `total_steps` is out of range.
    """
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"`lr` must be positive and finite; got {lr}.")
    if warmup < 0 or total_steps < 1:
        raise ValueError(
            f"`warmup` must be >= 0 and `total_steps` >= 1; got warmup={warmup}, total_steps={total_steps}."
        )
    sched = schedule.build(lr, warmup, total_steps)
    return optax.chain(optax.clip_by_global_norm(clip_norm), optax.adam(sched, b1=b1, b2=b2, eps=eps))
