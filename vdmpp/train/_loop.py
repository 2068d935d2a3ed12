"""The training loop shared by every experiment: step, NaN guard, metrics, evaluation, checkpoints."""

import dataclasses
import json
import pathlib
import time
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.random as jr
import numpy as np
import optax
from tqdm.auto import tqdm

from .._io import atomic_write_json
from .._misc import check_nonnegative_int, check_positive_int
from ..data import RecordArray
from ._checkpoint import Checkpointer, CheckpointError
from ._evaluate import evaluate_state, NonFiniteLossError, write_samples
from ._metrics import MetricsLogger, run_plots
from ._objective import AbstractLoss
from ._sample_eval import (
    check_evaluation,
    evaluate_samples as _score_samples,
    quality_plot,
    SampleEvaluation,
)
from ._sharding import make_mesh, Sharding
from ._snapshots import check_posthoc_settings, posthoc_of, write_state_snapshot
from ._step import init_train_state, make_train_step
from ._workdir import claim_workdir


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
        posthoc_sigma_rels: relative widths of the power-function EMAs to track for post-hoc EMA
            (`PostHocEMA`; THEORY §13); empty: none.
        snapshot_every: with post-hoc EMA, write its EMAs to `WORKDIR/ema_snapshots/` every this many steps
            (and at the end); the folder is never pruned.
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
    posthoc_sigma_rels: tuple[float, ...] = ()
    snapshot_every: int = 500

    def __post_init__(self):
        positive = ("steps", "checkpoint_every", "log_every", "max_consecutive_skips", "max_to_keep", "accum_steps")
        for name in positive + ("fsdp", "eval_batch", "eval_repeats"):
            check_positive_int(getattr(self, name), name)
        for name in ("eval_every", "sample_every", "eval_examples"):
            hint = " (0: only at the end)" if "every" in name else " (0: all)"
            check_nonnegative_int(getattr(self, name), name, hint)
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"`ema_decay` must lie in [0, 1); got {self.ema_decay}.")
        check_posthoc_settings(self.posthoc_sigma_rels, self.snapshot_every)


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
    resume_from: int | None = None,
    overwrite: bool = False,
    test_data: np.ndarray | RecordArray | None = None,
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
        resume: continue from the latest checkpoint in `workdir/checkpoints` (bit for bit); a damaged latest
            checkpoint is an error, never skipped.
        resume_from: continue from this checkpoint step instead (implies `resume`); newer checkpoints are deleted.
        overwrite: delete an earlier run's outputs in `workdir` instead of refusing the folder.
        test_data: integer test set for the periodic bits/dim (EMA model; a lazily read `RecordArray` is read
            only up to `loop.eval_examples`); `None` to skip.
        num_levels: levels of the data (for the PNG grid).
        sample_shape: `(num_samples, *example)` to draw samples of the EMA model with `loss.sample` (PNG grids of
            images); `None` for no samples.
        sample_steps: sampler steps.
        decode_text: turns the samples (token ids) into text written to `samples*.txt` instead of a PNG.
        sharding: device layout (default: data parallel over all devices).
        evaluate_samples: sample quality of the EMA model at every evaluation and at the end (see
            [`vdmpp.train.SampleEvaluation`][]); its final numbers go into the summary.

    The run owns `workdir` while it runs (`claim_workdir`): a second run on it is refused, and so is a folder holding
    an earlier run's results unless `resume` or `overwrite`. Resuming a run that already finished (its last
    checkpoint at `loop.steps` and its `summary.json` written) changes nothing and returns the saved summary.

    Raises:
        WorkdirError: if `workdir` is in use, holds an earlier run's results (without `resume`/`overwrite`), or is
            not a writable folder.
        ValueError: if the data yields no batch.
        CheckpointError: if the checkpoint to resume from is damaged or from a different config.
        NonFiniteLossError: after `loop.max_consecutive_skips` non-finite steps in a row, or a non-finite evaluation.
    """
    workdir = pathlib.Path(workdir)
    if test_data is not None and np.shape(test_data)[:1] in ((), (0,)):
        raise ValueError(f"`test_data` must hold at least one example; got shape {np.shape(test_data)}.")
    if sample_shape is not None:
        for i, n in enumerate(sample_shape):
            check_positive_int(n, f"sample_shape[{i}]", " (the number of samples, then the example's shape)")
        check_positive_int(sample_steps, "sample_steps")
    if resume_from is not None:
        check_nonnegative_int(resume_from, "resume_from")
        resume = True
    json.dumps(config)
    example_shape = check_evaluation(evaluate_samples, test_data, sample_shape, sample_steps)
    with claim_workdir(workdir, resume=resume, overwrite=overwrite):
        return _fit(
            model=model,
            loss=loss,
            optimizer=optimizer,
            dataset=dataset,
            loop=loop,
            workdir=workdir,
            config=config,
            key=key,
            resume=resume,
            resume_from=resume_from,
            test_data=test_data,
            num_levels=num_levels,
            sample_shape=sample_shape,
            sample_steps=sample_steps,
            decode_text=decode_text,
            sharding=sharding,
            evaluate_samples=evaluate_samples,
            example_shape=example_shape,
        )


def _fit(
    *, model, loss, optimizer, dataset, loop, workdir, config, key, resume, resume_from, test_data, num_levels,
    sample_shape, sample_steps, decode_text, sharding, evaluate_samples, example_shape,
) -> dict:  # fmt: skip
    is_main = jax.process_index() == 0
    sharding = sharding or Sharding(make_mesh(loop.fsdp))
    ckpt_dir = workdir / "checkpoints"
    if resume_from is not None and not (ckpt_dir.is_dir() and any(p.name.isdigit() for p in ckpt_dir.iterdir())):
        raise CheckpointError(f"No checkpoint in {ckpt_dir}; --resume-from {resume_from} has nothing to resume.")
    ckpt = Checkpointer(ckpt_dir, max_to_keep=loop.max_to_keep, free_keys=("run",))
    posthoc = posthoc_of(loop.posthoc_sigma_rels)
    try:
        state = init_train_state(model, optimizer, loss, key=key, posthoc=posthoc)
        start_step = None
        if resume and (ckpt.all_steps() or ckpt.damaged_steps()):
            state, data_state, start_step = ckpt.restore(state, config=config, step=resume_from)
            finished = _finished_summary(workdir, start_step, loop.steps)
            if finished is not None:
                print(f"The run in {workdir} already finished at step {start_step}; its outputs are unchanged.")
                return finished
            if resume_from is not None and is_main:
                dropped = ckpt.discard_after(start_step)
                if dropped:
                    print(f"Discarded the checkpoints after step {start_step}: {', '.join(map(str, dropped))}.")
            print(f"Resumed from {ckpt_dir / str(start_step)} (step {start_step}).")
        elif resume:
            print(f"No checkpoint in {ckpt_dir}; starting from scratch.")
    except BaseException:
        ckpt.close()
        raise
    train_step = make_train_step(  # without in-graph checks (cacheable): every batch is checked on the host below
        loss,
        optimizer,
        ema_decay=loop.ema_decay,
        accum_steps=loop.accum_steps,
        sharding=sharding,
        posthoc=posthoc,
        graph_checks=False,
    )
    state = sharding.shard_state(state)
    iterator = iter(dataset)
    if start_step is not None:
        iterator.set_state(data_state)  # type: ignore[attr-defined]
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
            loss.check_batch(local)
            batch = sharding.shard_batch(local)
            state, metrics = train_step(state, batch)
            if int(metrics["skipped"]):
                skips = int(metrics["skips"])
                skipped_total = int(metrics["total_skips"])
                logger.log(step, {"skipped": 1.0, "consecutive_skips": float(skips)}, kind="nan_guard")
                if skips >= loop.max_consecutive_skips:
                    last = ckpt.latest_step()
                    where = (
                        f"The last good checkpoint (step {last}) in {ckpt_dir} is intact: lower the learning rate "
                        "or inspect the data, then resume with --resume."
                        if last is not None
                        else "No checkpoint was written yet: lower the learning rate or inspect the data and the "
                        "weighting, then start again with --overwrite."
                    )
                    raise NonFiniteLossError(
                        f"{skips} consecutive training steps had a non-finite loss or gradient (at step {step}); "
                        f"stopping. {where}"
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
                last_bpd = evaluate_state(
                    state, loss, test_data, eval_key, step, examples=loop.eval_examples, batch_size=loop.eval_batch
                )
                logger.log(step, {"test_bpd": last_bpd}, kind="eval")
            if evaluate_samples is not None and loop.eval_every and step % loop.eval_every == 0 and step != loop.steps:
                quality(evaluate_samples, step)
            if sample_shape is not None and loop.sample_every and step % loop.sample_every == 0 and step != loop.steps:
                path = workdir / f"samples_{step:06d}.png"
                write_samples(path, state, loss, sample_shape, sample_steps, decode_text, key, step, num_levels)
            if posthoc is not None and (step % loop.snapshot_every == 0 or step == loop.steps):
                write_state_snapshot(workdir, step, state, posthoc)  # before the checkpoint: a resume replays it
            if step % loop.checkpoint_every == 0 or step == loop.steps:
                ckpt.save(step, state, data_state=iterator.get_state(), config=config)  # type: ignore[attr-defined]
        bar.close()
        train_seconds, train_cpu = time.perf_counter() - t_start, time.process_time() - cpu_start
        files = ["metrics.jsonl", "checkpoints/"]
        if test_data is not None:
            last_bpd = evaluate_state(
                state, loss, test_data, eval_key, step, examples=loop.eval_examples, batch_size=loop.eval_batch
            )
            logger.log(step, {"test_bpd": last_bpd}, kind="eval")
        if sample_shape is not None:
            path = workdir / "samples.png"
            name = write_samples(path, state, loss, sample_shape, sample_steps, decode_text, key, step, num_levels)
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
            files += run_plots(workdir, logger, loss.noise_density(state.sched_state))
            files += [name for name in [quality_plot(workdir, logger, quality_names)] if name]
            summary["files"] = files
            atomic_write_json(workdir / "summary.json", summary)
        return summary
    finally:
        bar.close()
        logger.close()
        ckpt.close()


def _finished_summary(workdir: pathlib.Path, step: int, steps: int) -> dict | None:
    """The saved summary of a run that already reached `steps`, or `None`."""
    path = workdir / "summary.json"
    if step < steps or not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) and summary.get("steps") == step else None
