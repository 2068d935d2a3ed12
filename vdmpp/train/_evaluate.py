"""Evaluation of a training state: test bits/dim and sample files (used by the training loop)."""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from .._io import atomic_write_bytes
from .._misc import in_graph_checks
from ..data import RecordArray
from ._metrics import image_grid, save_png
from ._objective import AbstractLoss
from ._sample_eval import jit_sample as _sample
from ._sharding import replicate_to_host, Sharding
from ._step import TrainState


class NonFiniteLossError(FloatingPointError):
    """Too many consecutive training steps had a non-finite loss or gradient, or an evaluation was not finite."""


@eqx.filter_jit
def _eval_bpd(model, loss: AbstractLoss, batch, key, sched_state):
    with in_graph_checks(False):  # the data were checked on the host (`evaluate_bpd`): a cacheable program
        return loss.bits_per_dim(model, batch, key=key, sched_state=sched_state)


def evaluate_bpd(
    model: Any,
    loss: AbstractLoss,
    data: np.ndarray | RecordArray,
    *,
    key,
    sched_state,
    batch_size: int = 256,
    repeats: int = 1,
    sharding: Sharding | None = None,
) -> float:
    """Mean bits/dim of `loss.bits_per_dim` over `data` (integer array) and `repeats` draws, in fixed-size batches,
    at `jax.default_matmul_precision("highest")` (THEORY §15)."""
    data = np.asarray(data)
    n = data.shape[0]
    if n == 0:
        raise ValueError("`data` for evaluation is empty.")
    loss.check_batch({"x": data})
    b = min(batch_size, n)
    total = 0.0
    starts = [s for _ in range(repeats) for s in range(0, n, b)]
    for i, start in enumerate(starts):
        chunk = data[start : start + b]
        m = chunk.shape[0]
        # A short last chunk is padded to the fixed shape (one compilation). Its real examples are spread
        # evenly over the slots: the time sampler is low-discrepancy over the slot index, so bunching them
        # at the front would give them all nearly the same noise level (unbiased, but high variance).
        slots = np.floor(np.arange(m) * b / m).astype(np.int64)
        full = np.resize(data, (b,) + data.shape[1:])
        full[slots] = chunk
        x = jnp.asarray(full) if sharding is None else sharding.replicate(full)
        with jax.default_matmul_precision("highest"):  # likelihoods at full float32 matmul precision (THEORY §15)
            bpd = replicate_to_host(_eval_bpd(model, loss, {"x": x}, jr.fold_in(key, i), sched_state))
        total += float(np.sum(np.asarray(bpd)[slots]))
    return total / (n * repeats)


def evaluate_state(
    state: TrainState, loss: AbstractLoss, data, key, step: int, *, examples: int, batch_size: int
) -> float:
    """Test bits/dim of the EMA model of `state` on the first `examples` of `data` (0: all); non-finite is an error."""
    if examples:  # slice first: a lazily read RecordArray then reads only these records
        data = data[:examples]
    data = np.asarray(data)
    bpd = evaluate_bpd(
        state.ema_model(),
        loss,
        data,
        key=jr.fold_in(key, step),
        sched_state=state.sched_state,
        batch_size=batch_size,
    )
    if not np.isfinite(bpd):
        raise NonFiniteLossError(
            f"The test bits/dim of the EMA model at step {step} is {bpd} (not finite); stopping before any plot or "
            "summary. Check the weighting, the schedule and the learning rate; the checkpoints written so far are "
            "intact."
        )
    return bpd


def write_samples(path, state: TrainState, loss, shape, num_steps, decode_text, key, step: int, num_levels) -> str:
    """Draw samples of the EMA model (keys fixed by `step`) and write a PNG grid, or text via `decode_text`."""
    key = jr.fold_in(jr.fold_in(key, 2_000_003), step)
    out = np.asarray(replicate_to_host(_sample(loss, state.ema_model(), state.sched_state, key, shape, num_steps)))
    is_main = jax.process_index() == 0
    if decode_text is not None:  # text samples
        path = path.with_suffix(".txt")
        if is_main:
            atomic_write_bytes(path, decode_text(out).encode())
        return path.name
    if is_main:
        levels = num_levels or int(out.max()) + 1
        save_png(image_grid(out, levels), path)
    return path.name
