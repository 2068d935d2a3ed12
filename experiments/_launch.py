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
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import vdmpp as vd


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from experiments import _cli  # noqa: E402
from experiments._presets import get_preset, Preset  # noqa: E402


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
    debug: bool = False
    """Show the full traceback of an error instead of one line."""
    # --- accelerators (issue 14): presets, mixed precision, remat, optimiser options, data workers, post-hoc EMA
    preset: str | None = None
    """quality: the script's own longer run (its QUALITY settings, at most 20 minutes on 2 CPU cores; not with
    --demo). Or a published model from experiments/_presets.py (vdm_cifar10 for train_gaussian.py; md4_text8,
    md4_imagenet64 for train_masked.py; each with a reduced *_tiny variant): its network and training
    hyperparameters. Explicit flags still win."""
    precision: Literal["float32", "bfloat16"] = "float32"
    """The network's compute dtype; parameters, optimiser state and EMAs stay float32 (THEORY §15)."""
    remat: bool = False
    """Recompute each block's activations in the backward pass (jax.checkpoint): less memory, more compute."""
    adam_b2: float = 0.999
    weight_decay: float = 0.0
    """AdamW's decoupled weight decay (0: Adam)."""
    grad_clip: float | None = 1.0
    """Clip the gradient's global norm to this (None: no clipping)."""
    num_workers: int = 0
    """grain worker processes that read and batch the data (0: in this process); resume with the same value."""
    posthoc_sigma_rels: tuple[float, ...] = (0.05, 0.10)
    """Widths of the power-function EMAs tracked for post-hoc EMA (experiments/posthoc_ema.py); pass the flag
    with no value to turn it off."""
    snapshot_every: int = 500
    """Write the post-hoc EMAs to WORKDIR/ema_snapshots/ every this many steps (the folder is never pruned)."""


class Run(NamedTuple):
    """What a training script builds from its config (`build_run`): the config with its presets filled in, the
    data, the network, the loss and the run's training key."""

    cfg: Any
    data: vd.data.Dataset
    model: Any
    loss: vd.train.AbstractLoss
    key: Any


QUALITY = "quality"
"""The `--preset` name of a script's own longer run (its `QUALITY` settings), not a published model."""


def with_preset(cfg: Any, preset: dict, *, when: bool | None = None) -> Any:
    """When `when` (default `cfg.demo`), fill in `preset` for every field the user left at its default."""
    if not (cfg.demo if when is None else when):
        return cfg
    default = type(cfg)(workdir=cfg.workdir)
    return dataclasses.replace(cfg, **{k: v for k, v in preset.items() if getattr(cfg, k) == getattr(default, k)})


def apply_run_preset(cfg: Any, demo: dict, quality: dict) -> Any:
    """`--demo` (the script's `demo` settings) or `--preset quality` (`quality`), explicit flags winning."""
    if cfg.demo and cfg.preset == QUALITY:
        raise ValueError("`--demo` and `--preset quality` cannot be combined: pick one of the two run presets.")
    return with_preset(with_preset(cfg, demo), quality, when=cfg.preset == QUALITY)


def validate_run(cfg: RunConfig) -> None:
    """Check the shared settings before anything is loaded, compiled or written (`ConfigError` naming the flag)."""
    if not str(cfg.workdir).strip():
        raise _cli.ConfigError("`--workdir` must be a folder path; got an empty string.")
    if cfg.resume and cfg.overwrite or cfg.resume_from is not None and cfg.overwrite:
        raise _cli.ConfigError("`--resume`/`--resume-from` and `--overwrite` contradict each other; pass one of them.")
    _cli.at_least(cfg, 1, "steps", "checkpoint_every", "batch_size", "accum_steps", "fsdp", "num_samples")
    _cli.at_least(cfg, 1, "sample_steps")
    _cli.at_least(cfg, 0, "warmup", "eval_every", "eval_examples", "eval_samples", "sample_every")
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
    check_accelerator_flags(cfg)
    with _cli.flags(cfg):  # the library's own checks, with its field names turned into flags
        loop_config(cfg)
        optimizer(cfg)
        shards = vd.train.Sharding(vd.train.make_mesh(cfg.fsdp)).num_batch_shards
    if cfg.batch_size % shards:
        raise _cli.ConfigError(
            f"`--batch-size` ({cfg.batch_size}) must be divisible by the number of devices ({shards}); choose a "
            "multiple of it."
        )


def warn_short_ema(cfg: RunConfig) -> None:
    """Warn when the EMA model (what is evaluated and sampled) still holds > 5 % of the initialisation at the end:
    the EMA starts at the initial parameters, whose weight after n steps is decay**n."""
    left = cfg.ema_decay**cfg.steps
    if left > 0.05:
        print(
            f"warning: with `--ema-decay` {cfg.ema_decay} the EMA model still holds {left:.0%} of the initial "
            f"parameters after `--steps` {cfg.steps} (decay**steps); for a run this short lower --ema-decay, e.g. "
            f"{1 - 5 / cfg.steps:.3g} (a time constant of a fifth of the run).",
            file=sys.stderr,
            flush=True,
        )


def validate_unet(cfg: Any) -> None:
    """Check the `--unet-*` flags both scripts share (a U-Net's sizes)."""
    _cli.at_least(cfg, 1, "unet_channels", "unet_res_blocks")
    if not cfg.unet_mults or any(isinstance(m, bool) or m < 1 for m in cfg.unet_mults):
        raise _cli.ConfigError(f"`--unet-mults` must be one or more integers >= 1, e.g. 1 2; got {cfg.unet_mults!r}.")


def unet_kwargs(cfg: Any, lam_range: tuple[float, float]) -> dict[str, Any]:
    """The U-Net keywords both scripts build from their flags (`vd.nn.UNet`, `vd.nn.TokenUNet`): sizes from
    `--unet-*`, attention at the coarsest level, dropout, precision, remat, the log-SNR embedding's range."""
    return dict(
        base_channels=cfg.unet_channels,
        channel_mults=cfg.unet_mults,
        num_res_blocks=cfg.unet_res_blocks,
        attention_levels=(len(cfg.unet_mults) - 1,),
        num_groups=min(8, cfg.unet_channels),
        dropout=cfg.dropout,
        lam_min=lam_range[0],
        lam_max=lam_range[1],
        precision=precision_of(cfg),
        remat=cfg.remat,
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
    """Adam(W) with warmup, a cosine or constant learning rate and optional global-norm clipping."""
    kind = vd.train.WarmupCosine() if cfg.lr_schedule == "cosine" else vd.train.WarmupConstant()
    return vd.train.make_optimizer(
        cfg.lr,
        cfg.warmup,
        cfg.steps,
        kind,
        clip_norm=cfg.grad_clip,
        b2=cfg.adam_b2,
        weight_decay=cfg.weight_decay,
    )


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
        posthoc_sigma_rels=tuple(cfg.posthoc_sigma_rels),
        snapshot_every=cfg.snapshot_every,
    )


def training_setup(cfg: RunConfig, train: Any) -> tuple[Any, Any, vd.train.LoopConfig]:
    """The optimiser, this process's shard of the shuffled, repeating grain pipeline, and the loop settings.

    `train` is an array or a lazily read `vd.data.RecordArray`: then each process reads only its own shard.
    """
    nproc = jax.process_count()
    dataset = vd.data.pipeline(
        train,
        batch_size=cfg.batch_size // nproc,
        seed=cfg.seed,
        shuffle=True,
        num_epochs=None,
        shard_index=jax.process_index(),
        shard_count=nproc,
        num_workers=cfg.num_workers,
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
# `remat` is recomputation only: same maths (resume with or without it, e.g. after running out of memory).
RUN_FIELDS = frozenset(
    "workdir resume resume_from overwrite debug demo checkpoint_every eval_every eval_examples eval_samples "
    "sample_every num_samples sample_steps sample_schedule distributed coordinator_address num_processes "
    "process_id progress remat snapshot_every".split()
)


def config_record(cfg: Any) -> dict:
    """The JSON record saved with every checkpoint: `"maths"` (compared on --resume) and `"run"` (free)."""
    d = dataclasses.asdict(cfg)
    return {
        "maths": {k: v for k, v in d.items() if k not in RUN_FIELDS},
        "run": {k: v for k, v in d.items() if k in RUN_FIELDS},
    }


_PRECISIONS = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_SCRIPTS = {"gaussian": "train_gaussian.py", "masked": "train_masked.py"}


def precision_of(cfg: RunConfig) -> vd.nn.Precision:
    """The network's precision policy named by `--precision`."""
    if cfg.precision not in _PRECISIONS:
        raise ValueError(f"`--precision` must be one of {', '.join(_PRECISIONS)}; got {cfg.precision!r}.")
    return vd.nn.Precision(_PRECISIONS[cfg.precision])


def check_accelerator_flags(cfg: RunConfig) -> None:
    """Precision, worker count and post-hoc EMA settings, checked before any work starts."""
    precision_of(cfg)
    _cli.in_range(cfg, "adam_b2", 0.0, 1.0)
    _cli.finite(cfg, "weight_decay")
    if cfg.weight_decay < 0:
        raise _cli.ConfigError(f"`--weight-decay` must be >= 0 (0: Adam); got {cfg.weight_decay!r}.")
    if cfg.grad_clip is not None and not (math.isfinite(cfg.grad_clip) and cfg.grad_clip > 0):
        raise _cli.ConfigError(f"`--grad-clip` must be a positive finite number or None; got {cfg.grad_clip!r}.")
    if not isinstance(cfg.num_workers, int) or cfg.num_workers < 0:
        raise ValueError(f"`--num-workers` must be an integer >= 0 (0: read in this process); got {cfg.num_workers!r}.")
    if not isinstance(cfg.snapshot_every, int) or cfg.snapshot_every < 1:
        raise ValueError(f"`--snapshot-every` must be a positive integer; got {cfg.snapshot_every!r}.")
    if cfg.posthoc_sigma_rels:
        try:
            vd.train.PostHocEMA(tuple(float(s) for s in cfg.posthoc_sigma_rels))
        except ValueError as e:
            raise ValueError(f"`--posthoc-sigma-rels`: {e}") from None


def apply_model_preset(cfg: Any, kind: str, model_fields: tuple[str, ...]) -> tuple[Any, Preset | None]:
    """With `--preset NAME`: check that it belongs to this script, then fill its hyperparameters into every field
    the user left at its default (like `--demo`). `model_fields` are the script's own network flags, which a
    preset replaces (setting one is an error).

    Raises:
        ValueError: an unknown preset (the message lists them), a preset of the other script, `--demo` with a
            preset, or a network flag with a preset.
    """
    check_accelerator_flags(cfg)
    if cfg.preset is None or cfg.preset == QUALITY:  # no model preset (`quality` is filled by apply_run_preset)
        return cfg, None
    try:
        preset = get_preset(cfg.preset)
    except ValueError as e:
        raise ValueError(f"`--preset`: {e} Or `{QUALITY}`: the script's own longer run.") from None
    if preset.kind != kind:
        raise ValueError(
            f"`--preset {cfg.preset}` is a {preset.kind}-diffusion model: train it with "
            f"experiments/{_SCRIPTS[preset.kind]}, not experiments/{_SCRIPTS[kind]}."
        )
    if cfg.demo:
        raise ValueError("`--demo` and `--preset` cannot be combined: the demo uses its own small network.")
    default = type(cfg)(workdir=cfg.workdir)
    changed = [f for f in model_fields if getattr(cfg, f) != getattr(default, f)]
    if changed:
        flags = ", ".join("--" + f.replace("_", "-") for f in changed)
        raise ValueError(
            f"{flags} cannot be used with `--preset {cfg.preset}`: the preset fixes the network "
            f"({preset.network.__name__}); drop the flag, or train without a preset."
        )
    fill = {k: v for k, v in preset.run_overrides().items() if getattr(cfg, k) == getattr(default, k)}
    return dataclasses.replace(cfg, **fill), preset


def data_options(preset: Preset | None) -> dict[str, Any]:
    """Extra `vd.data.load` arguments for a preset: a text file is cut into the preset's sequence length."""
    return {"seq_len": preset.data_shape[0]} if preset is not None and len(preset.data_shape) == 1 else {}


def check_preset_data(cfg: RunConfig, preset: Preset | None, data: vd.data.Dataset) -> None:
    """The data must have the shape and number of levels the preset's network is built for."""
    if preset is None:
        return
    if tuple(data.example_shape) != tuple(preset.data_shape) or data.num_levels != preset.num_levels:
        raise ValueError(
            f"`--preset {preset.name}` is built for examples of shape {tuple(preset.data_shape)} with "
            f"{preset.num_levels} levels; `--data {cfg.data}` has shape {tuple(data.example_shape)} with "
            f"{data.num_levels} levels. Use data of the preset's shape or another preset."
        )


def build_preset_model(cfg: RunConfig, preset: Preset, lam_range: tuple[float, float], key) -> Any:
    """The preset's network under `--precision`/`--remat`, embedding the run's λ range, with `--dropout`."""
    return preset.build(
        key,
        precision=precision_of(cfg),
        remat=cfg.remat,
        lam_min=lam_range[0],
        lam_max=lam_range[1],
        dropout=getattr(cfg, "dropout", preset.dropout),
    )


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
