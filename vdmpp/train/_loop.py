"""The training loop shared by every experiment: step, NaN guard, metrics, evaluation, checkpoints."""

import dataclasses
import json
import pathlib
import time
from collections.abc import Callable, Iterable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from tqdm.auto import tqdm

from .._io import atomic_write_bytes, atomic_write_json
from .._misc import check_positive_int
from ._checkpoint import Checkpointer
from ._metrics import image_grid, MetricsLogger, save_figure, save_png
from ._objective import AbstractLoss
from ._sample_eval import (
    check_evaluation,
    evaluate_samples as _score_samples,
    jit_sample as _sample,
    quality_plot,
    SampleEvaluation,
)
from ._sharding import make_mesh, replicate_to_host, Sharding
from ._step import init_train_state, make_train_step, TrainState


class NonFiniteLossError(FloatingPointError):
    """Too many consecutive training steps had a non-finite loss or gradient."""


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """Settings of the training loop (not of the model or the loss).

    Attributes:
        steps: number of applied updates to reach.
        checkpoint_every: save every this many steps (and at the end).
        eval_every: evaluate test bits/dim with the EMA model every this many steps (0: only at the end).
        log_every: write train metrics every this many steps.
        sample_every: write a sample grid every this many steps (0: only at the end).
        ema_decay: EMA decay.
        accum_steps: gradient-accumulation micro-batches per step.
        max_consecutive_skips: stop with an error after this many non-finite steps in a row.
        max_to_keep: checkpoints to keep.
        fsdp: size of the mesh's `fsdp` axis (1: pure data parallelism).
        eval_batch: examples per evaluation batch.
        eval_examples: evaluate on at most this many test examples (0: all).
        eval_repeats: Monte Carlo samples of the bound per test example (averaged).
        tensorboard: write TensorBoard events.
        progress: show a tqdm bar.
    """

    steps: int
    checkpoint_every: int = 500
    eval_every: int = 0
    log_every: int = 25
    sample_every: int = 0
    ema_decay: float = 0.999
    accum_steps: int = 1
    max_consecutive_skips: int = 10
    max_to_keep: int = 3
    fsdp: int = 1
    eval_batch: int = 256
    eval_examples: int = 0
    eval_repeats: int = 4
    tensorboard: bool = True
    progress: bool = True

    def __post_init__(self):
        for name in ("steps", "checkpoint_every", "log_every", "max_consecutive_skips", "max_to_keep", "accum_steps"):
            check_positive_int(getattr(self, name), name)
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"`ema_decay` must lie in [0, 1); got {self.ema_decay}.")


@eqx.filter_jit
def _eval_bpd(model, loss: AbstractLoss, batch, key, sched_state):
    return loss.bits_per_dim(model, batch, key=key, sched_state=sched_state)


def evaluate_bpd(
    model: Any,
    loss: AbstractLoss,
    data: np.ndarray,
    *,
    key,
    sched_state,
    batch_size: int = 256,
    repeats: int = 1,
    sharding: Sharding | None = None,
) -> float:
    """Mean bits/dim of `loss.bits_per_dim` over `data` (integer array) and `repeats` draws, in fixed-size batches."""
    data = np.asarray(data)
    n = data.shape[0]
    if n == 0:
        raise ValueError("`data` for evaluation is empty.")
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
        bpd = replicate_to_host(_eval_bpd(model, loss, {"x": x}, jr.fold_in(key, i), sched_state))
        total += float(np.sum(np.asarray(bpd)[slots]))
    return total / (n * repeats)


def _plots(workdir: pathlib.Path, logger: MetricsLogger, loss: AbstractLoss, sched_state: Any) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    s, v = logger.series("loss", "train")
    if len(s):
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot(s, v, lw=1)
        ax.set(xlabel="step", ylabel="training loss (mean per example)", yscale="log", title="loss curve")
        save_figure(fig, workdir / "loss_curve.png")
        written.append("loss_curve.png")
    s, v = logger.series("test_bpd", "eval")
    if len(s):
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot(s, v, "o-")
        ax.set(xlabel="step", ylabel="test bits/dim (EMA, -ELBO)", title="test bits/dim")
        save_figure(fig, workdir / "bpd_curve.png")
        written.append("bpd_curve.png")
    density = loss.noise_density(sched_state)
    if density is not None:
        sched, weighting = density
        lam = np.linspace(float(sched.lam_min), float(sched.lam_max), 801)
        dens = np.asarray(jax.vmap(sched.density)(jnp.asarray(lam, jnp.float32)))
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot(lam, dens, label="p(λ) of the noise schedule")
        w = np.asarray(jax.vmap(weighting)(jnp.asarray(lam, jnp.float32)))
        ax.plot(lam, w / np.trapezoid(w, lam), "--", label="w(λ) (normalised)")
        ax.set(xlabel="λ (log-SNR)", ylabel="density", title="noise schedule")
        ax.legend()
        save_figure(fig, workdir / "p_lambda.png")
        written.append("p_lambda.png")
    return written


def fit(
    model: Any,
    loss: AbstractLoss,
    optimizer: optax.GradientTransformation,
    dataset: Iterable,
    *,
    loop: LoopConfig,
    workdir: str | pathlib.Path,
    config: dict,
    key: Any,
    resume: bool = False,
    test_data: np.ndarray | None = None,
    num_levels: int | None = None,
    sample_shape: tuple[int, ...] | None = None,
    sample_steps: int = 250,
    decode_text: Callable[[np.ndarray], str] | None = None,
    sharding: Sharding | None = None,
    evaluate_samples: SampleEvaluation | None = None,
) -> dict:
    """Train `model` on `dataset` with `loss`, checkpointing, logging and evaluating; return the summary.

    Args:
        model: the network (`eqx.Module`).
        loss: the objective.
        optimizer: optax transformation (see `make_optimizer`).
        dataset: a grain `IterDataset` (or anything whose iterator has `get_state`/`set_state`) of this
            process's batches `{"x": ..., "label": ...}`.
        loop: loop settings.
        workdir: output folder (metrics, plots, samples, `checkpoints/`, `summary.json`).
        config: the run's full config as a JSON-able dict, saved with every checkpoint. On resume every entry
            except the `"run"` section (settings that do not change the maths) must equal the checkpoint's.
        key: base PRNG key of the run.
        resume: continue from the latest checkpoint in `workdir/checkpoints` (bit for bit).
        test_data: integer test set for the periodic bits/dim (EMA model); `None` to skip.
        num_levels: levels of the data (for the PNG grid).
        sample_shape: `(num_samples, *example)` to draw samples of the EMA model with `loss.sample` (PNG grids of
            images); `None` for no samples.
        sample_steps: sampler steps.
        decode_text: turns the samples (token ids) into text written to `samples*.txt` instead of a PNG.
        sharding: device layout (default: data parallel over all devices).
        evaluate_samples: sample quality of the EMA model at every evaluation and at the end (see
            [`vdmpp.train.SampleEvaluation`][]); its final numbers go into the summary.

    Raises:
        ValueError: if `workdir` already has checkpoints and `resume` is false, or the data yields no batch.
        CheckpointError: if the checkpoint to resume from is corrupt or from a different config.
        NonFiniteLossError: after `loop.max_consecutive_skips` non-finite steps in a row.
    """
    workdir = pathlib.Path(workdir)
    is_main = jax.process_index() == 0
    sharding = sharding or Sharding(make_mesh(loop.fsdp))
    ckpt_dir = workdir / "checkpoints"
    if not resume and ckpt_dir.exists() and any(p.name.isdigit() for p in ckpt_dir.iterdir()):
        raise ValueError(
            f"`workdir` {workdir} already holds checkpoints; pass --resume to continue that run "
            "or choose a new --workdir."
        )
    json.dumps(config)
    example_shape = check_evaluation(evaluate_samples, test_data, sample_shape, sample_steps)
    ckpt = Checkpointer(ckpt_dir, max_to_keep=loop.max_to_keep, free_keys=("run",))
    state = init_train_state(model, optimizer, loss, key=key)
    train_step = make_train_step(
        loss, optimizer, ema_decay=loop.ema_decay, accum_steps=loop.accum_steps, sharding=sharding
    )
    state = sharding.shard_state(state)
    iterator = iter(dataset)
    start_step = None
    if resume and ckpt.latest_step() is not None:
        state, data_state, start_step = ckpt.restore(state, config=config)
        state = sharding.shard_state(state)
        iterator.set_state(data_state)  # type: ignore[attr-defined]
        print(f"Resumed from {ckpt_dir / str(start_step)} (step {start_step}).")
    elif resume:
        print(f"No checkpoint in {ckpt_dir}; starting from scratch.")
    logger = MetricsLogger(workdir, resume_step=start_step or 0, tensorboard=loop.tensorboard, enabled=is_main)
    step = int(state.step)
    eval_key = jr.fold_in(key, 1_000_003)
    last_bpd = float("nan")
    bpd_s, bpd_v = logger.series("test_bpd", "eval")
    if len(bpd_v):
        last_bpd = float(bpd_v[-1])
    bar = tqdm(total=loop.steps, initial=step, disable=not (loop.progress and is_main), dynamic_ncols=True)
    t_last, s_last, steps_per_s = time.perf_counter(), step, float("nan")
    t_start, cpu_start = time.perf_counter(), time.process_time()
    skipped_total = int(state.total_skips)
    last_loss = None
    quality_names: list[str] = []

    def quality(evaluation: SampleEvaluation, step: int) -> dict[str, float]:  # logged (kind "eval")
        out = _score_samples(
            evaluation,
            loss,
            state,
            key=key,
            step=step,
            shape=example_shape,
            logger=logger,
            default_steps=sample_steps,
        )
        quality_names[:] = list(out)
        return out

    try:
        while step < loop.steps:
            try:
                local = next(iterator)
            except StopIteration:
                raise ValueError(
                    "The data pipeline yielded no (more) batches: the batch size is larger than the data set "
                    "or num_epochs is too small. Lower the batch size or repeat the data."
                ) from None
            batch = sharding.shard_batch(local)
            state, metrics = train_step(state, batch)
            if int(metrics["skipped"]):
                skips = int(metrics["skips"])
                skipped_total = int(metrics["total_skips"])
                logger.log(step, {"skipped": 1.0, "consecutive_skips": float(skips)}, kind="nan_guard")
                if skips >= loop.max_consecutive_skips:
                    last = ckpt.latest_step()
                    raise NonFiniteLossError(
                        f"{skips} consecutive training steps had a non-finite loss or gradient (at step {step}); "
                        f"stopping. The last good checkpoint (step {last}) in {ckpt_dir} is intact: lower the "
                        "learning rate or inspect the data, then resume with --resume."
                    )
                continue
            step = int(metrics["step"])
            bar.update(1)
            if step % loop.log_every == 0 or step == loop.steps:
                now = time.perf_counter()
                steps_per_s = (step - s_last) / max(now - t_last, 1e-9)
                t_last, s_last = now, step
                value = last_loss = float(metrics["loss"])
                logger.log(step, {"loss": value, "grad_norm": float(metrics["grad_norm"]), "steps_per_s": steps_per_s})
                bpd_text = "n/a" if np.isnan(last_bpd) else f"{last_bpd:.3f}"  # n/a until the first evaluation
                bar.set_postfix(loss=f"{value:.4g}", test_bpd=bpd_text, it_s=f"{steps_per_s:.1f}")
            if test_data is not None and loop.eval_every and step % loop.eval_every == 0 and step != loop.steps:
                last_bpd = _evaluate(state, loss, test_data, eval_key, step, loop, sharding)
                logger.log(step, {"test_bpd": last_bpd}, kind="eval")
            if evaluate_samples is not None and loop.eval_every and step % loop.eval_every == 0 and step != loop.steps:
                quality(evaluate_samples, step)
            if sample_shape is not None and loop.sample_every and step % loop.sample_every == 0 and step != loop.steps:
                path = workdir / f"samples_{step:06d}.png"
                _write_samples(path, state, loss, sample_shape, sample_steps, decode_text, key, step, num_levels)
            if step % loop.checkpoint_every == 0 or step == loop.steps:
                ckpt.save(step, state, data_state=iterator.get_state(), config=config)  # type: ignore[attr-defined]
        bar.close()
        train_seconds, train_cpu = time.perf_counter() - t_start, time.process_time() - cpu_start
        files = ["metrics.jsonl", "checkpoints/"]
        if test_data is not None:
            last_bpd = _evaluate(state, loss, test_data, eval_key, step, loop, sharding)
            logger.log(step, {"test_bpd": last_bpd}, kind="eval")
        if sample_shape is not None:
            path = workdir / "samples.png"
            name = _write_samples(path, state, loss, sample_shape, sample_steps, decode_text, key, step, num_levels)
            files.append(name)
        final_quality = {} if evaluate_samples is None else quality(evaluate_samples, step)
        summary = {
            "steps": step,
            "test_bpd": last_bpd,
            "final_train_loss": last_loss,
            "nan_guard_skips": skipped_total,
            "train_seconds_this_session": train_seconds,
            "train_cpu_seconds_this_session": train_cpu,  # all threads: >= the wall time on an idle machine
            "resumed_from": start_step,
            "devices": jax.device_count(),
            "processes": jax.process_count(),
            "config": config,
            **final_quality,
        }
        if is_main:
            files += _plots(workdir, logger, loss, state.sched_state)
            files += [name for name in [quality_plot(workdir, logger, quality_names)] if name]
            summary["files"] = files
            atomic_write_json(workdir / "summary.json", summary)
        return summary
    finally:
        bar.close()
        logger.close()
        ckpt.close()


def _evaluate(state: TrainState, loss: AbstractLoss, data, key, step: int, loop: LoopConfig, sharding) -> float:
    data = np.asarray(data)
    if loop.eval_examples:
        data = data[: loop.eval_examples]
    return evaluate_bpd(
        state.ema_model(),
        loss,
        data,
        key=jr.fold_in(key, step),
        sched_state=state.sched_state,
        batch_size=loop.eval_batch,
    )


def _write_samples(path, state: TrainState, loss, shape, num_steps, decode_text, key, step: int, num_levels) -> str:
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
