"""Sample quality during training: draw samples of the EMA model with the run's sampler and score them."""

import dataclasses
import math
import pathlib
import time
from collections.abc import Callable, Mapping
from typing import Any

import equinox as eqx
import jax.random as jr
import numpy as np

from .._misc import check_positive_int
from ._metrics import MetricsLogger, save_figure
from ._objective import AbstractLoss
from ._sharding import replicate_to_host


# summary entries the loop writes itself: a score may not reuse them
_RESERVED = frozenset(
    {"steps", "test_bpd", "final_train_loss", "nan_guard_skips", "train_seconds_this_session", "resumed_from"}
    | {"train_cpu_seconds_this_session"}
    | {"devices", "processes", "config", "files", "sample_eval_seconds"}
)


@dataclasses.dataclass(frozen=True)
class SampleEvaluation:
    """What `vdmpp.train.fit` does to judge samples: how many to draw, with how many sampler steps, and the score.

    At every evaluation (`LoopConfig.eval_every` steps and at the end) the loop draws `num_samples` samples of
    the EMA model with `loss.sample` (in jitted chunks of `batch_size`, the last one padded, so it compiles
    once; the keys depend only on the step, so a resumed run draws the same samples), calls `score` on them
    and logs the numbers it returns (kind `"eval"`, `metrics.jsonl` and TensorBoard); the final evaluation's
    numbers go into `summary.json` under their own names.

    The loop knows nothing of the metrics: an image run passes a closure over
    [`vdmpp.metrics.sample_quality`][] with the test set's features computed once, a text run one over
    [`vdmpp.metrics.generative_perplexity`][].

    Attributes:
        score: maps the samples (a NumPy integer array `(num_samples, *example)`) to a flat dict of numbers.
        num_samples: samples per evaluation.
        num_steps: sampler steps (`None`: the `sample_steps` given to `fit`).
        batch_size: samples per jitted sampler call.
    """

    score: Callable[[np.ndarray], Mapping[str, float | int]]
    num_samples: int
    num_steps: int | None = None
    batch_size: int = 256

    def __post_init__(self):
        if not callable(self.score):
            raise TypeError(f"`score` must be a callable `samples -> dict`; got {type(self.score).__name__}.")
        check_positive_int(self.num_samples, "num_samples")
        check_positive_int(self.batch_size, "batch_size")
        if self.num_steps is not None:
            check_positive_int(self.num_steps, "num_steps")


@eqx.filter_jit
def jit_sample(loss: AbstractLoss, model, sched_state, key, shape: tuple[int, ...], num_steps: int):
    """`loss.sample`, jitted (the loop's sample grids and the evaluation share its compilations)."""
    return loss.sample(model, sched_state, key=key, shape=shape, num_steps=num_steps)


def draw_samples(
    loss: AbstractLoss, model: Any, sched_state: Any, *, key: Any, num_samples: int, example_shape, num_steps, batch
) -> np.ndarray:
    """`num_samples` samples of `model` with `loss.sample`, in chunks of `batch` (one compilation)."""
    b = min(batch, num_samples)
    chunks = []
    for i in range(math.ceil(num_samples / b)):
        out = jit_sample(loss, model, sched_state, jr.fold_in(key, i), (b, *example_shape), num_steps)
        chunks.append(np.asarray(replicate_to_host(out)))
    return np.concatenate(chunks)[:num_samples]


def check_evaluation(evaluation: Any, test_data: Any, sample_shape: Any, sample_steps: int) -> tuple[int, ...]:
    """Check `fit`'s `evaluate_samples` and return the example shape the samples take (`()` without one)."""
    if evaluation is None:
        return ()
    if not isinstance(evaluation, SampleEvaluation):
        raise TypeError(f"`evaluate_samples` must be a vdmpp.train.SampleEvaluation; got {type(evaluation).__name__}.")
    if evaluation.num_steps is None:
        check_positive_int(sample_steps, "sample_steps")
    if test_data is not None:
        return tuple(np.shape(test_data)[1:])
    if sample_shape is not None:
        return tuple(sample_shape[1:])
    raise ValueError("`evaluate_samples` needs the example shape: pass `test_data` or `sample_shape` to `fit`.")


def evaluate_samples(
    evaluation: SampleEvaluation,
    loss: AbstractLoss,
    state: Any,
    *,
    key: Any,
    step: int,
    shape: tuple[int, ...],
    logger: MetricsLogger,
    default_steps: int,
) -> dict[str, float]:
    """Draw the EMA model's samples at `step`, score them, log the numbers (kind "eval") and return them."""
    t0 = time.perf_counter()
    samples = draw_samples(
        loss,
        state.ema_model(),
        state.sched_state,
        key=jr.fold_in(jr.fold_in(key, 3_000_017), step),  # depends only on the run's key and the step
        num_samples=evaluation.num_samples,
        example_shape=shape,
        num_steps=evaluation.num_steps or default_steps,
        batch=evaluation.batch_size,
    )
    scores = evaluation.score(samples)
    if not isinstance(scores, Mapping):
        raise TypeError(f"`SampleEvaluation.score` must return a dict of numbers; got {type(scores).__name__}.")
    clash = sorted(set(scores) & _RESERVED)
    if clash:
        raise ValueError(f"`SampleEvaluation.score` returned names the loop writes itself: {clash}; rename them.")
    try:
        out = {str(k): float(v) for k, v in scores.items()}
    except (TypeError, ValueError) as e:
        raise TypeError(f"`SampleEvaluation.score` must return a flat dict of numbers; got {dict(scores)!r}.") from e
    logger.log(step, {**out, "sample_eval_seconds": time.perf_counter() - t0}, kind="eval")
    return out


def quality_plot(workdir: pathlib.Path, logger: MetricsLogger, names: list[str]) -> str | None:
    """One panel per score logged by the sample evaluation, against the step; `None` if nothing was logged."""
    series = [(n, *logger.series(n, "eval")) for n in names]
    series = [(n, s, v) for n, s, v in series if len(s)]
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(series))
    rows = math.ceil(len(series) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.6 * rows), squeeze=False)
    for ax, (name, s, v) in zip(axes.ravel(), series):
        ax.plot(s, v, "o-")
        ax.set(xlabel="step", title=name)
    for ax in axes.ravel()[len(series) :]:
        ax.axis("off")
    fig.suptitle("sample quality (EMA model)")
    fig.tight_layout()
    save_figure(fig, workdir / "sample_quality.png")
    return "sample_quality.png"
