"""Plumbing shared by the training scripts `train_gaussian.py` and `train_masked.py` (not a script).

The settings both scripts take (`RunConfig`), their start-up validation (`validate_run`; each script's
`validate` adds its own fields), the demo preset, the batch-size checks, the optimiser, the per-process grain
pipeline and the loop settings, the checkpoint record, the closing printout and the `__main__` entry. What a
script trains (model, loss, data kind, sampler) stays in the script.

Start-up order (nothing is loaded, compiled or written before the config is known to be good):
`validate(cfg)` -> `claim(cfg)` (the workdir's lock) -> load data -> checks that need the data -> build -> fit.
"""

import contextlib
import dataclasses
import math
import pathlib
import sys
from collections.abc import Callable, Iterator
from typing import Any, Literal

import jax
import numpy as np
import vdmpp as vd


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from experiments import _cli  # noqa: E402


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Settings of a training run shared by the scripts (a script's `Config` adds its model and loss)."""

    workdir: str
    """Output folder (metrics, plots, samples, checkpoints)."""
    data: str = "digits"
    """A vdmpp.data name (digits, mnist, fashion_mnist) or a path."""
    steps: int = 3000
    seed: int = 0
    checkpoint_every: int = 500
    resume: bool = False
    """Continue from the latest checkpoint in WORKDIR/checkpoints (a damaged one is an error, never skipped)."""
    resume_from: int | None = None
    """Continue from this checkpoint step instead of the latest (implies --resume; newer ones are deleted)."""
    overwrite: bool = False
    """Delete the outputs of an earlier run in WORKDIR and start afresh (without it such a WORKDIR is refused)."""
    demo: bool = False
    """A preset that runs in a few minutes on 2 CPU cores; explicit flags still win."""
    batch_size: int = 128
    """Global batch size (split over processes and devices)."""
    lr: float = 2e-3
    warmup: int = 100
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    ema_decay: float = 0.999
    accum_steps: int = 1
    fsdp: int = 1
    """Size of the mesh's fsdp axis (1: pure data parallelism)."""
    eval_every: int = 500
    eval_examples: int = 0
    """Test examples for the periodic evaluation (0: all)."""
    sample_every: int = 0
    num_samples: int = 64
    sample_steps: int = 250
    distributed: bool = False
    """Call jax.distributed.initialize() first (multi-host; cluster environments are detected)."""
    coordinator_address: str | None = None
    """host:port of process 0, where the cluster is not detected automatically (with --distributed)."""
    num_processes: int | None = None
    process_id: int | None = None
    progress: bool = True
    debug: bool = False
    """Show the full traceback of an error instead of one line."""


def with_preset(cfg: Any, preset: dict) -> Any:
    """With `cfg.demo`, fill in `preset` for every field the user left at its default."""
    if not cfg.demo:
        return cfg
    default = type(cfg)(workdir=cfg.workdir)
    return dataclasses.replace(cfg, **{k: v for k, v in preset.items() if getattr(cfg, k) == getattr(default, k)})


def validate_run(cfg: RunConfig) -> None:
    """Check the shared settings before anything is loaded, compiled or written (`ConfigError` naming the flag)."""
    if not str(cfg.workdir).strip():
        raise _cli.ConfigError("`--workdir` must be a folder path; got an empty string.")
    if cfg.resume and cfg.overwrite or cfg.resume_from is not None and cfg.overwrite:
        raise _cli.ConfigError("`--resume`/`--resume-from` and `--overwrite` contradict each other; pass one of them.")
    _cli.at_least(cfg, 1, "steps", "checkpoint_every", "batch_size", "accum_steps", "fsdp", "num_samples")
    _cli.at_least(cfg, 1, "sample_steps")
    _cli.at_least(cfg, 0, "warmup", "eval_every", "eval_examples", "sample_every")
    _cli.at_least(cfg, 0, "seed")
    if cfg.seed >= 2**32:
        raise _cli.ConfigError(f"`--seed` must be below 2**32 (larger seeds collide with small ones); got {cfg.seed}.")
    if cfg.resume_from is not None:
        _cli.at_least(cfg, 0, "resume_from")
    if not (isinstance(cfg.lr, (int, float)) and math.isfinite(cfg.lr) and cfg.lr > 0):
        raise _cli.ConfigError(f"`--lr` must be a positive finite number, e.g. 1e-3; got {cfg.lr!r}.")
    _cli.in_range(cfg, "ema_decay", 0.0, 1.0)
    if cfg.batch_size % cfg.accum_steps:
        raise _cli.ConfigError(
            f"`--batch-size` ({cfg.batch_size}) must split into `--accum-steps` ({cfg.accum_steps}) equal "
            "micro-batches; choose a divisor of the batch size."
        )
    if cfg.num_processes is not None:
        _cli.at_least(cfg, 1, "num_processes")
    if cfg.process_id is not None:
        _cli.at_least(cfg, 0, "process_id")
        if cfg.num_processes is not None and cfg.process_id >= cfg.num_processes:
            raise _cli.ConfigError(
                f"`--process-id` must be below `--num-processes` ({cfg.num_processes}); got {cfg.process_id}."
            )
    with _cli.flags(cfg):  # the library's own checks, with its field names turned into flags
        loop_config(cfg)
        optimizer(cfg)
        shards = vd.train.Sharding(vd.train.make_mesh(cfg.fsdp)).num_batch_shards
    if cfg.batch_size % shards:
        raise _cli.ConfigError(
            f"`--batch-size` ({cfg.batch_size}) must be divisible by the number of devices ({shards}); choose a "
            "multiple of it."
        )


@contextlib.contextmanager
def claim(cfg: RunConfig) -> Iterator[None]:
    """Hold the workdir's lock from before anything is loaded (`fit` claims it again, nested) to the end."""
    resume = cfg.resume or cfg.resume_from is not None
    with _cli.flags(cfg, "workdir"):
        lock = vd.train.claim_workdir(cfg.workdir, resume=resume, overwrite=cfg.overwrite)
    with lock:
        yield


def init_distributed(cfg: RunConfig) -> None:
    """`jax.distributed.initialize` when `--distributed` (before anything asks for the process count)."""
    if cfg.distributed:
        try:
            jax.distributed.initialize(cfg.coordinator_address, cfg.num_processes, cfg.process_id)
        except (RuntimeError, ValueError) as e:
            raise _cli.ConfigError(
                f"`--distributed`: {e} Outside a cluster that JAX detects, pass `--coordinator-address` host:port, "
                "`--num-processes` and `--process-id`."
            ) from e


def check_batch_size(cfg: RunConfig, num_train: int) -> None:
    """The global batch must split over the processes and fit in the training set."""
    nproc = jax.process_count()
    if cfg.batch_size % nproc:
        raise ValueError(f"`--batch-size` ({cfg.batch_size}) must be divisible by the process count ({nproc}).")
    if cfg.batch_size > num_train:
        raise ValueError(
            f"`--batch-size` ({cfg.batch_size}) is larger than the training set of {cfg.data} "
            f"({num_train} examples); use at most {num_train}."
        )


def optimizer(cfg: RunConfig) -> Any:
    """Adam with warmup and a cosine or constant learning rate."""
    kind = vd.train.WarmupCosine() if cfg.lr_schedule == "cosine" else vd.train.WarmupConstant()
    return vd.train.make_optimizer(cfg.lr, cfg.warmup, cfg.steps, kind)


def loop_config(cfg: RunConfig) -> vd.train.LoopConfig:
    """The loop settings."""
    return vd.train.LoopConfig(
        steps=cfg.steps,
        checkpoint_every=cfg.checkpoint_every,
        eval_every=cfg.eval_every,
        sample_every=cfg.sample_every,
        ema_decay=cfg.ema_decay,
        accum_steps=cfg.accum_steps,
        fsdp=cfg.fsdp,
        eval_examples=cfg.eval_examples,
        progress=cfg.progress,
    )


def training_setup(cfg: RunConfig, train: np.ndarray) -> tuple[Any, Any, vd.train.LoopConfig]:
    """The optimiser, this process's shard of the shuffled, repeating grain pipeline, and the loop settings."""
    nproc = jax.process_count()
    dataset = vd.data.pipeline(
        train,
        batch_size=cfg.batch_size // nproc,
        seed=cfg.seed,
        shuffle=True,
        num_epochs=None,
        shard_index=jax.process_index(),
        shard_count=nproc,
    )
    return optimizer(cfg), dataset, loop_config(cfg)


def fit_options(cfg: RunConfig) -> dict:
    """The `vd.train.fit` arguments that come straight from the run settings."""
    return dict(
        workdir=cfg.workdir,
        config=config_record(cfg),
        resume=cfg.resume,
        resume_from=cfg.resume_from,
        overwrite=cfg.overwrite,
    )


# Settings that do not change the maths of a run (where outputs go, how often to report, how to launch). Every
# other field of a script's Config, including fields added later, is compared with the checkpoint on --resume.
RUN_FIELDS = frozenset(
    {
        "workdir",
        "resume",
        "resume_from",
        "overwrite",
        "debug",
        "demo",
        "checkpoint_every",
        "eval_every",
        "eval_examples",
        "sample_every",
        "num_samples",
        "sample_steps",
        "sample_schedule",
        "distributed",
        "coordinator_address",
        "num_processes",
        "process_id",
        "progress",
    }
)


def config_record(cfg: Any) -> dict:
    """The JSON record saved with every checkpoint: `"maths"` (compared on --resume) and `"run"` (free)."""
    d = dataclasses.asdict(cfg)
    return {
        "maths": {k: v for k, v in d.items() if k not in RUN_FIELDS},
        "run": {k: v for k, v in d.items() if k in RUN_FIELDS},
    }


def print_outputs(workdir: str, summary: dict, headline: str) -> None:
    """On process 0: the headline result and the files written."""
    if jax.process_index() != 0:
        return
    out = pathlib.Path(workdir).absolute()
    print(f"\n{headline}")
    print(f"outputs in {out}:")
    for name in summary.get("files", []) + ["summary.json", "tb/"]:
        print(f"  {out / name}")


def run(main: Callable[[Any], Any], config: type) -> None:
    """The scripts' `__main__`: parse the command line into `config` and call `main` (one line per user error)."""
    _cli.run(main, config)
