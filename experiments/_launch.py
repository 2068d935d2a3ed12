"""Plumbing shared by the training scripts `train_gaussian.py` and `train_masked.py` (not a script).

The settings both scripts take (`RunConfig`), the demo preset, the batch-size checks, the optimiser, the
per-process grain pipeline and the loop settings, the checkpoint record, the closing printout and the
`__main__` entry. What a script trains (model, loss, data kind, sampler) stays in the script.
"""

import dataclasses
import os
import pathlib
import sys
from collections.abc import Callable
from typing import Any, Literal

import jax
import numpy as np
import tyro
import vdmpp as vd


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
    """Continue from the latest checkpoint in WORKDIR/checkpoints."""
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
    eval_samples: int = 512
    """Samples of the EMA model scored at every evaluation (FD, KID, precision/recall, classifier confidence
    for labelled images; generative perplexity for text); 0: none."""
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


def with_preset(cfg: Any, preset: dict) -> Any:
    """With `cfg.demo`, fill in `preset` for every field the user left at its default."""
    if not cfg.demo:
        return cfg
    default = type(cfg)(workdir=cfg.workdir)
    return dataclasses.replace(cfg, **{k: v for k, v in preset.items() if getattr(cfg, k) == getattr(default, k)})


def init_distributed(cfg: RunConfig) -> None:
    """`jax.distributed.initialize` when `--distributed` (before anything asks for the process count)."""
    if cfg.distributed:
        jax.distributed.initialize(cfg.coordinator_address, cfg.num_processes, cfg.process_id)


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


def training_setup(cfg: RunConfig, train: np.ndarray) -> tuple[Any, Any, vd.train.LoopConfig]:
    """The optimiser, this process's shard of the shuffled, repeating grain pipeline, and the loop settings."""
    kind = vd.train.WarmupCosine() if cfg.lr_schedule == "cosine" else vd.train.WarmupConstant()
    optimizer = vd.train.make_optimizer(cfg.lr, cfg.warmup, cfg.steps, kind)
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
    loop = vd.train.LoopConfig(
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
    return optimizer, dataset, loop


# Settings that do not change the maths of a run (where outputs go, how often to report, how to launch). Every
# other field of a script's Config, including fields added later, is compared with the checkpoint on --resume.
RUN_FIELDS = frozenset(
    {
        "workdir",
        "resume",
        "demo",
        "checkpoint_every",
        "eval_every",
        "eval_examples",
        "eval_samples",
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
    """The scripts' `__main__`: parse the command line into `config` and call `main`."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if cache:
        jax.config.update("jax_compilation_cache_dir", cache)
    main(tyro.cli(config, args=sys.argv[1:]))
