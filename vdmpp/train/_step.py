r"""The train state and the one training step: `make_train_step` builds it on `jax.jit` with the state donated.

One step does: loss + gradients (optionally accumulated over micro-batches), a NaN guard, the optax update, the
EMA update, the post-hoc power-function EMAs (optional, `PostHocEMA`) and the schedule update. The state is all
arrays (the model's non-array part is a static field, set once by `init_train_state`), so `jax.jit` dispatches
it directly and donates its buffers: the step updates the state in place. It is the same code on one CPU and on
a mesh of devices (one or many processes): the batch arrives sharded, the state replicated or FSDP-split, and
the output state is constrained to that layout so the step compiles once.
"""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import optax

from .._misc import check_instance, check_positive_int, in_graph_checks
from .._types import Array, Int, PRNGKeyArray
from ._objective import AbstractLoss, Batch
from ._posthoc import PostHocEMA
from ._sharding import Sharding


class _Skeleton:
    """The model's non-array part as a static (hashable, compared by value) field; its hash is computed once."""

    __slots__ = ("tree", "_hash")

    def __init__(self, tree: Any):
        self.tree = tree
        try:
            self._hash = hash(tree)
        except TypeError:  # an unhashable leaf: fall back to identity
            self._hash = id(tree)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Skeleton):
            return NotImplemented
        return self.tree is other.tree or bool(eqx.tree_equal(self.tree, other.tree))


class TrainState(eqx.Module):
    """Everything a run needs to continue bit for bit, as one pytree of arrays.

    Attributes:
        params: the model's array leaves (`eqx.filter(model, eqx.is_array)`); `model` puts the model together.
        opt_state: the optax state of the trainable (inexact-array) leaves.
        ema: exponential moving average of those leaves.
        sched_state: the noise schedule's state (`EmptyState()` for a fixed schedule).
        step: number of applied updates.
        key: the run's base key; the step's key is derived from it and the counters.
        skips: consecutive steps rejected by the NaN guard (reset by an applied step).
        total_skips: all steps rejected by the NaN guard.
        phema: the post-hoc power-function EMAs of the trainable leaves, one per profile of the step's
            `PostHocEMA` (empty without post-hoc EMA).
    """

    params: Any
    opt_state: Any
    ema: Any
    sched_state: Any
    step: Int[Array, ""]
    key: PRNGKeyArray
    skips: Int[Array, ""]
    total_skips: Int[Array, ""]
    skeleton: _Skeleton = eqx.field(static=True)
    phema: tuple[Any, ...] = ()  # last, with a default: a state without post-hoc EMA has the old leaf order

    @property
    def model(self) -> Any:
        """The network with the current parameters."""
        return eqx.combine(self.params, self.skeleton.tree)

    def ema_model(self) -> Any:
        """The network with its trainable leaves replaced by their EMA (for evaluation and sampling)."""
        return eqx.combine(self.ema, self.params, self.skeleton.tree, is_leaf=lambda x: x is None)

    def phema_model(self, index: int) -> Any:
        """The network with its trainable leaves replaced by post-hoc EMA number `index` (see `PostHocEMA`)."""
        return eqx.combine(self.phema[index], self.params, self.skeleton.tree, is_leaf=lambda x: x is None)


def init_train_state(
    model: Any,
    optimizer: optax.GradientTransformation,
    loss: AbstractLoss,
    *,
    key: PRNGKeyArray,
    posthoc: PostHocEMA | None = None,
) -> TrainState:
    """Build the initial `TrainState`: optimiser state, EMA = parameters, schedule state, counters at 0.

    With `posthoc` (a `PostHocEMA`), the state also holds one power-function EMA per profile (`phema`).
    """
    check_instance(loss, AbstractLoss, "loss", "vd.train.GaussianLoss(...)")
    params, skeleton = eqx.partition(model, eqx.is_array)
    trainable = eqx.filter(params, eqx.is_inexact_array)
    with jax.numpy_dtype_promotion("standard"):
        opt_state = optimizer.init(trainable)

    def copy(x):  # distinct buffers, so the state can be donated leaf by leaf
        return jnp.array(x, copy=True)

    return TrainState(
        params=jtu.tree_map(copy, params),
        opt_state=jtu.tree_map(copy, opt_state),
        ema=jtu.tree_map(copy, trainable),
        sched_state=jtu.tree_map(copy, loss.init_schedule_state()),
        step=jnp.zeros((), jnp.int32),
        key=copy(key),  # the caller keeps using its key; the state's copy is donated
        skips=jnp.zeros((), jnp.int32),
        total_skips=jnp.zeros((), jnp.int32),
        skeleton=_Skeleton(skeleton),
        phema=() if posthoc is None else posthoc.init(trainable),
    )


def _loss_and_grads(model, batch, key, sched_state, loss: AbstractLoss, accum_steps: int):
    def mean_loss(trainable, rest, mb, k):
        per_example, aux = loss(eqx.combine(trainable, rest), mb, key=k, sched_state=sched_state)
        with jax.named_scope("loss_reduction"):  # float32 (THEORY §15): the per-example losses are float32
            return jnp.mean(per_example), aux

    trainable, rest = eqx.partition(model, eqx.is_inexact_array)
    grad_fn = jax.value_and_grad(mean_loss, has_aux=True)
    if accum_steps == 1:
        (value, aux), grads = grad_fn(trainable, rest, batch, key)
        return value, aux, grads

    def split(x):
        return x.reshape((accum_steps, x.shape[0] // accum_steps) + x.shape[1:])

    def body(carry, inputs):
        total, grads_sum = carry
        mb, i = inputs
        (value, aux), grads = grad_fn(trainable, rest, mb, jr.fold_in(key, i))
        return (total + value, jtu.tree_map(jnp.add, grads_sum, grads)), aux

    zeros = jtu.tree_map(jnp.zeros_like, trainable)
    micro = jtu.tree_map(split, batch)
    (total, grads), auxs = jax.lax.scan(body, (jnp.zeros((), jnp.float32), zeros), (micro, jnp.arange(accum_steps)))
    aux = jtu.tree_map(lambda a: a.reshape((-1,) + a.shape[2:]), auxs)
    return total / accum_steps, aux, jtu.tree_map(lambda g: g / accum_steps, grads)


def _step(
    state: TrainState,
    batch: Batch,
    *,
    loss: AbstractLoss,
    optimizer: optax.GradientTransformation,
    ema_decay: float,
    accum_steps: int,
    sharding: Sharding | None,
    posthoc: PostHocEMA | None = None,
) -> tuple[TrainState, dict[str, Array]]:
    n = jtu.tree_leaves(batch)[0].shape[0]
    if n % accum_steps:
        raise ValueError(f"`accum_steps` ({accum_steps}) must divide the batch size {n}.")
    key = jr.fold_in(jr.fold_in(state.key, state.step), state.total_skips)
    one = jnp.ones((), jnp.int32)
    with jax.numpy_dtype_promotion("standard"):
        value, aux, grads = _loss_and_grads(state.model, batch, key, state.sched_state, loss, accum_steps)
        grad_norm = optax.global_norm(grads)
        # a non-finite gradient entry makes the global norm non-finite (one reduction)
        finite = jnp.isfinite(value) & jnp.isfinite(grad_norm)
        trainable, rest = eqx.partition(state.params, eqx.is_inexact_array)

        def apply(operands):
            trainable, opt_state, ema, phema, sched_state = operands
            updates, opt_state = optimizer.update(grads, opt_state, trainable)
            trainable = jtu.tree_map(lambda p, u: p + u, trainable, updates)
            ema = jtu.tree_map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema, trainable)
            if posthoc is not None:  # power-function EMAs, beta from the step count this update would reach
                phema = posthoc.update(phema, trainable, state.step + one)
            with jax.named_scope("schedule_update"):  # the adaptive histogram: float32
                sched_state = loss.update_schedule(sched_state, aux)
            return trainable, opt_state, ema, phema, sched_state

        def skip(operands):
            return operands

        # The guard is a branch, not a select per leaf: with the state donated, a select that reads the old
        # optimiser moments after they are updated in place makes XLA copy every moment first (a 10-20 % slower
        # step on the CPU); under a branch each buffer is updated in place once.
        new_trainable, opt_state, ema, phema, sched_state = jax.lax.cond(
            finite, apply, skip, (trainable, state.opt_state, state.ema, state.phema, state.sched_state)
        )
        bad = (~finite).astype(jnp.int32)
        new_state = TrainState(
            params=eqx.combine(new_trainable, rest),
            opt_state=opt_state,
            ema=ema,
            sched_state=sched_state,
            step=state.step + one - bad,
            key=state.key,
            skips=(state.skips + one) * bad,
            total_skips=state.total_skips + bad,
            skeleton=state.skeleton,
            phema=phema,
        )
    if sharding is not None:
        new_state = sharding.constrain(new_state)
    metrics = {
        "loss": value,
        "grad_norm": grad_norm,
        "skipped": bad,
        "skips": new_state.skips,
        "total_skips": new_state.total_skips,
        "step": new_state.step,
    }
    return new_state, metrics


class TrainStep:
    r"""One training step, jitted once (`jax.jit`, the state donated): loss, gradients, NaN guard, update, EMA.

    Made by `make_train_step`; call it as `state, metrics = step(state, batch)`. The input state's buffers are
    donated (deleted after the call): always continue from the returned state. A step whose mean loss or any
    gradient is not finite is not applied: the returned state equals the input except that `skips` and
    `total_skips` grow by one (`metrics["skipped"]` is 1).
    """

    def __init__(
        self,
        loss: AbstractLoss,
        optimizer: optax.GradientTransformation,
        *,
        ema_decay: float,
        accum_steps: int = 1,
        sharding: Sharding | None = None,
        posthoc: PostHocEMA | None = None,
        graph_checks: bool = True,
    ):
        check_instance(loss, AbstractLoss, "loss", "vd.train.GaussianLoss(...)")
        check_positive_int(accum_steps, "accum_steps")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"`ema_decay` must lie in [0, 1); got {ema_decay}.")
        if posthoc is not None:
            check_instance(posthoc, PostHocEMA, "posthoc", "vd.train.PostHocEMA((0.05, 0.1))")
        self.loss, self.optimizer, self.ema_decay = loss, optimizer, float(ema_decay)
        self.accum_steps, self.sharding, self.posthoc = accum_steps, sharding, posthoc

        def step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, Array]]:
            with in_graph_checks(graph_checks):  # at trace time
                return _step(
                    state,
                    batch,
                    loss=loss,
                    optimizer=optimizer,
                    ema_decay=self.ema_decay,
                    accum_steps=accum_steps,
                    sharding=sharding,
                    posthoc=posthoc,
                )

        self._jit = jax.jit(step, donate_argnums=0)

    def __call__(self, state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, Array]]:
        """Apply one step; returns `(new_state, metrics)` (`loss`, `grad_norm`, `skipped`, `skips`, ...)."""
        return self._jit(state, batch)

    def lower(self, state: TrainState, batch: Batch) -> Any:
        """Lower for these arguments (as `jax.jit(...).lower`), e.g. for XLA's cost analysis."""
        return self._jit.lower(state, batch)


def make_train_step(
    loss: AbstractLoss,
    optimizer: optax.GradientTransformation,
    *,
    ema_decay: float,
    accum_steps: int = 1,
    sharding: Sharding | None = None,
    posthoc: PostHocEMA | None = None,
    graph_checks: bool = True,
) -> TrainStep:
    """Build the jitted training step (see `TrainStep`).

    Args:
        loss: the objective (any `AbstractLoss`).
        optimizer: an optax transformation, e.g. from `make_optimizer`.
        ema_decay: EMA decay in $[0, 1)$.
        accum_steps: split each batch into this many micro-batches and average their gradients.
        sharding: a `vdmpp.train.Sharding`; the output state is constrained to its layout.
        posthoc: update the state's power-function EMAs (`PostHocEMA`; the state must come from
            `init_train_state(..., posthoc=)` with the same profiles).
        graph_checks: keep the library's in-graph value checks (`eqx.error_if`) in the step. They are host
            callbacks, and XLA's persistent compilation cache does not store a program that holds one; `fit`
            passes False and checks every batch on the host instead (`AbstractLoss.check_batch`).
    """
    return TrainStep(
        loss,
        optimizer,
        ema_decay=ema_decay,
        accum_steps=accum_steps,
        sharding=sharding,
        posthoc=posthoc,
        graph_checks=graph_checks,
    )
