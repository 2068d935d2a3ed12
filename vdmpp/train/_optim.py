"""The optimiser: Adam or AdamW, optional global-norm clipping, a warmup + cosine/constant learning rate (optax)."""

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
    clip_norm: float | None = 1.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> optax.GradientTransformation:
    """Adam (AdamW with `weight_decay` > 0) after optional global-norm clipping, with a warmup + cosine/constant
    learning rate.

    AdamW's decay is decoupled (Loshchilov & Hutter 2019) and follows the learning-rate schedule, as in
    `optax.adamw` (and the published VDM/MD4 configs that the presets copy); it applies to every parameter.

    Args:
        lr: peak learning rate.
        warmup: linear warm-up steps.
        total_steps: length of the schedule.
        schedule: the learning-rate schedule kind.
        clip_norm: clip the gradient's global norm to this (`None`: no clipping, as in VDM and MD4).
        b1, b2, eps: Adam's moment decays and epsilon.
        weight_decay: AdamW's decoupled weight decay (0: plain Adam).

    Raises:
        ValueError: if `lr`, `warmup`, `total_steps`, `clip_norm` or `weight_decay` is out of range.
    """
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"`lr` must be positive and finite; got {lr}.")
    if warmup < 0 or total_steps < 1:
        raise ValueError(
            f"`warmup` must be >= 0 and `total_steps` >= 1; got warmup={warmup}, total_steps={total_steps}."
        )
    if clip_norm is not None and not clip_norm > 0:
        raise ValueError(f"`clip_norm` must be positive, or None for no clipping; got {clip_norm}.")
    if not weight_decay >= 0:
        raise ValueError(f"`weight_decay` must be >= 0 (0: plain Adam); got {weight_decay}.")
    sched = schedule.build(lr, warmup, total_steps)
    if weight_decay > 0:
        adam = optax.adamw(sched, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    else:
        adam = optax.adam(sched, b1=b1, b2=b2, eps=eps)
    return adam if clip_norm is None else optax.chain(optax.clip_by_global_norm(clip_norm), adam)
