r"""The train state, the optimiser and the one jitted training step.

One `eqx.filter_jit` step does: loss + gradients (optionally accumulated over micro-batches),
a NaN guard, the optax update (Adam, global-norm clipping, warmup + cosine/constant learning
rate), the EMA update and the learned-schedule update. It is the same code on one CPU and on a
mesh of devices: the batch arrives sharded, the state replicated (or FSDP-sharded), and the
output state is constrained to the input state's layout so the step compiles once.
"""

import abc
import functools
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import optax

from .._types import Array, Int, PRNGKeyArray
from ._loss import AbstractLoss, Batch


class TrainState(eqx.Module):
    """Everything a run needs to continue bit for bit, as one pytree.

    Attributes:
        model: the network (an `eqx.Module`).
        opt_state: the optax state of the trainable (inexact-array) leaves of `model`.
        ema: exponential moving average of those leaves (`eqx.filter(model, eqx.is_inexact_array)`).
        sched_state: the learned schedule's state (`None` for a fixed schedule).
        step: number of applied updates.
        key: the run's base key; the step's key is derived from it and the counters.
        skips: consecutive steps rejected by the NaN guard (reset by an applied step).
        total_skips: all steps rejected by the NaN guard.
    """

    model: Any
    opt_state: Any
    ema: Any
    sched_state: Any
    step: Int[Array, ""]
    key: PRNGKeyArray
    skips: Int[Array, ""]
    total_skips: Int[Array, ""]

    def ema_model(self) -> Any:
        """The model with its trainable leaves replaced by their EMA (for evaluation and sampling)."""
        return eqx.combine(self.ema, self.model, is_leaf=lambda x: x is None)


def init_train_state(
    model: Any, optimizer: optax.GradientTransformation, loss: AbstractLoss, *, key: PRNGKeyArray
) -> TrainState:
    """Build the initial `TrainState`: optimiser state, EMA = parameters, schedule state, counters at 0."""
    if not isinstance(loss, AbstractLoss):
        raise TypeError(f"`loss` must be a vdmpp.train.AbstractLoss; got {type(loss).__name__}.")
    params = eqx.filter(model, eqx.is_inexact_array)
    with jax.numpy_dtype_promotion("standard"):
        opt_state = optimizer.init(params)
    ema = jtu.tree_map(lambda p: jnp.array(p, copy=True), params)

    def zero():  # distinct buffers, so the state can be donated
        return jnp.zeros((), jnp.int32)

    return TrainState(
        model=model,
        opt_state=opt_state,
        ema=ema,
        sched_state=loss.init_schedule_state(),
        step=zero(),
        key=key,
        skips=zero(),
        total_skips=zero(),
    )


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
    if not lr > 0:
        raise ValueError(f"`lr` must be positive; got {lr}.")
    if warmup < 0 or total_steps < 1:
        raise ValueError(
            f"`warmup` must be >= 0 and `total_steps` >= 1; got warmup={warmup}, total_steps={total_steps}."
        )
    sched = schedule.build(lr, warmup, total_steps)
    return optax.chain(optax.clip_by_global_norm(clip_norm), optax.adam(sched, b1=b1, b2=b2, eps=eps))


def _loss_and_grads(model, batch, key, sched_state, loss: AbstractLoss, accum_steps: int):
    def mean_loss(params, static, mb, k):
        per_example, aux = loss(eqx.combine(params, static), mb, key=k, sched_state=sched_state)
        return jnp.mean(per_example), aux

    params, static = eqx.partition(model, eqx.is_inexact_array)
    grad_fn = jax.value_and_grad(mean_loss, has_aux=True)
    if accum_steps == 1:
        (value, aux), grads = grad_fn(params, static, batch, key)
        return value, aux, grads

    def split(x):
        return x.reshape((accum_steps, x.shape[0] // accum_steps) + x.shape[1:])

    micro = jtu.tree_map(split, batch)

    def body(carry, inputs):
        total, grads_sum = carry
        mb, i = inputs
        (value, aux), grads = grad_fn(params, static, mb, jr.fold_in(key, i))
        return (total + value, jtu.tree_map(jnp.add, grads_sum, grads)), aux

    zeros = jtu.tree_map(jnp.zeros_like, params)
    (total, grads), auxs = jax.lax.scan(body, (jnp.zeros((), jnp.float32), zeros), (micro, jnp.arange(accum_steps)))
    aux = jtu.tree_map(lambda a: a.reshape((-1,) + a.shape[2:]), auxs)
    return total / accum_steps, aux, jtu.tree_map(lambda g: g / accum_steps, grads)


class _FastFilterJit:
    """`eqx.filter_jit` semantics (array leaves traced, every other leaf static) with JAX's C++ dispatch.

    `eqx.filter_jit` partitions and recombines every argument in Python on each call, which for a train
    state (model + optimiser state + EMA, ~150 leaves) costs about as much as a small model's whole step.
    Here each call does one `tree_flatten` and hands the array leaves to a `jax.jit` keyed on the tree
    structure and the non-array leaves (which must be hashable, as for `eqx.filter_jit`).
    """

    def __init__(self, fn: Callable):
        self._fn = fn
        self._outs: dict[Any, Any] = {}  # static key -> (output treedef, output non-array leaves, array mask)
        self._jit = jax.jit(self._flat, static_argnums=0)
        functools.update_wrapper(self, fn)

    def _flat(self, key, arrays):
        treedef, mask, statics = key
        it_a, it_s = iter(arrays), iter(statics)
        args, kwargs = jtu.tree_unflatten(treedef, [next(it_a) if m else next(it_s) for m in mask])
        out_leaves, out_def = jtu.tree_flatten(self._fn(*args, **kwargs))
        out_mask = tuple(eqx.is_array(x) for x in out_leaves)
        self._outs[key] = (out_def, out_mask, [x for x, m in zip(out_leaves, out_mask) if not m])
        return [x for x, m in zip(out_leaves, out_mask) if m]

    def _split(self, args, kwargs):
        leaves, treedef = jtu.tree_flatten((args, kwargs))
        mask = tuple(eqx.is_array(x) for x in leaves)
        key = (treedef, mask, tuple(x for x, m in zip(leaves, mask) if not m))
        return key, [x for x, m in zip(leaves, mask) if m]

    def __call__(self, *args, **kwargs):
        key, arrays = self._split(args, kwargs)
        out_arrays = self._jit(key, arrays)
        out_def, out_mask, out_statics = self._outs[key]
        it_a, it_s = iter(out_arrays), iter(out_statics)
        return jtu.tree_unflatten(out_def, [next(it_a) if m else next(it_s) for m in out_mask])

    def lower(self, *args, **kwargs):
        """Lower for these arguments (as `jax.jit(...).lower`), e.g. to time the compilation."""
        key, arrays = self._split(args, kwargs)
        return self._jit.lower(key, arrays)


@_FastFilterJit
def train_step(
    state: TrainState,
    batch: Batch,
    *,
    loss: AbstractLoss,
    optimizer: optax.GradientTransformation,
    ema_decay: float,
    accum_steps: int = 1,
    sharding: Any = None,
) -> tuple[TrainState, dict[str, Array]]:
    r"""One training step, jitted once: loss, gradients, NaN guard, Adam, EMA, schedule update.

    A step whose mean loss or any gradient is not finite is not applied: the returned state equals
    the input except that `skips` and `total_skips` grow by one (`metrics["skipped"]` is 1). The
    driver stops the run after a configurable number of consecutive skips.

    Args:
        state: the current `TrainState`.
        batch: `{"x": integer data (batch, ...), "label": (batch,)}`; sharded on the mesh's batch axes.
        loss: the objective (any `AbstractLoss`).
        optimizer: an optax transformation, e.g. from `make_optimizer` (same object every call).
        ema_decay: EMA decay in $[0, 1)$.
        accum_steps: split the batch into this many micro-batches and average their gradients.
        sharding: a `vdmpp.train.Sharding`; the output state is constrained to its layout.

    Returns:
        `(new_state, metrics)` with `loss`, `grad_norm`, `skipped`, `skips`, `total_skips`, `step`.
    """
    n = jtu.tree_leaves(batch)[0].shape[0]
    if accum_steps < 1 or n % accum_steps:
        raise ValueError(f"`accum_steps` must be a positive divisor of the batch size {n}; got {accum_steps}.")
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"`ema_decay` must lie in [0, 1); got {ema_decay}.")
    key = jr.fold_in(jr.fold_in(state.key, state.step), state.total_skips)
    one = jnp.ones((), jnp.int32)
    with jax.numpy_dtype_promotion("standard"):
        value, aux, grads = _loss_and_grads(state.model, batch, key, state.sched_state, loss, accum_steps)
        grad_norm = optax.global_norm(grads)
        # a non-finite gradient entry makes the global norm non-finite (one reduction, shared with clipping)
        finite = jnp.isfinite(value) & jnp.isfinite(grad_norm)
        params, static = eqx.partition(state.model, eqx.is_inexact_array)
        updates, new_opt_state = optimizer.update(grads, state.opt_state, params)

        # The guard is a select inside each leaf's own elementwise update (one fused loop per leaf),
        # not a separate pass over the whole state afterwards.
        def keep_if_bad(new, old):
            return jnp.where(finite, new, old) if eqx.is_array(new) else new

        new_params = jtu.tree_map(lambda p, u: None if p is None else keep_if_bad(p + u, p), params, updates)
        # The EMA reads the (guarded) new parameters, not `p + u`: then the Adam update `u` has one consumer
        # and is computed inside the parameters' fused loop instead of being written out as a separate
        # array (one fewer full pass over the parameters; same values: new_params = p + u when applied).
        ema = jtu.tree_map(lambda e, p: keep_if_bad(ema_decay * e + (1.0 - ema_decay) * p, e), state.ema, new_params)
        opt_state = jtu.tree_map(keep_if_bad, new_opt_state, state.opt_state)
        sched_state = jtu.tree_map(keep_if_bad, loss.update_schedule(state.sched_state, aux), state.sched_state)
        bad = (~finite).astype(jnp.int32)
        new_state = TrainState(
            model=eqx.combine(new_params, static),
            opt_state=opt_state,
            ema=ema,
            sched_state=sched_state,
            step=state.step + one - bad,
            key=state.key,
            skips=(state.skips + one) * bad,
            total_skips=state.total_skips + bad,
        )
    if sharding is not None:
        new_state = sharding.constrain(new_state)
    metrics = {
        "loss": value,
        "grad_norm": grad_norm,
        "skipped": (~finite).astype(jnp.int32),
        "skips": new_state.skips,
        "total_skips": new_state.total_skips,
        "step": new_state.step,
    }
    return new_state, metrics
