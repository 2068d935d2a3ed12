"""Train a masked (absorbing) diffusion model: MD4's ELBO or S&T's reweighted losses, optional adaptive importance.

    python experiments/train_masked.py --workdir runs/m --data digits --steps 2000 --seed 0 --checkpoint-every 500
    python experiments/train_masked.py --workdir runs/t --data path/to/text8.txt --weighting sigmoid --demo

Image data are treated as tokens (one per pixel, V = number of grey levels); text files as characters.
Writes WORKDIR/summary.json, metrics.jsonl, tb/, loss_curve.png, bpd_curve.png (bits per token),
samples.png (images) or samples.txt (text), checkpoints/ and ema_snapshots/ (post-hoc EMA). `--resume`
continues bit for bit. A class-conditional preset (md4_imagenet64) is trained with its null class (unconditional).
"""

import dataclasses
import pathlib
import sys
from collections.abc import Callable
from typing import Any, Literal

import jax.random as jr
import numpy as np
import vdmpp as vd


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from experiments import _cli, _evaluation, _launch  # noqa: E402  (plumbing shared with the other script)
from experiments._launch import RunConfig  # noqa: E402
from experiments._presets import Preset  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Config(RunConfig):
    """Hyperparameters of one run (names here; the objects are built in `build_*` below)."""

    data: str = "digits"
    """A vdmpp.data name (digits, mnist) or a path (text file, image folder, .npy/.npz)."""
    batch_size: int = 64
    """Global batch size (split over processes and devices)."""
    lr: float = 1e-3
    schedule: Literal["linear", "cosine", "polynomial", "geometric"] = "linear"
    schedule_param: float = 2.0
    """k of polynomial (ignored otherwise)."""
    weighting: Literal["elbo", "sigmoid", "simple", "flow_matching", "edm_monotonic", "iddpm", "edm"] = "elbo"
    weighting_param: float = 0.0
    """k of sigmoid."""
    importance: Literal["none", "adaptive"] = "none"
    """Draw lambda from the learned adaptive schedule (importance-weighted) instead of the masking schedule."""
    model: Literal["transformer", "unet"] = "transformer"
    """transformer: bidirectional Transformer over the flattened tokens (dim, depth, num_heads; any data);
    unet: U-Net over embedded token images (unet_*, embed_dim; image data only, several times cheaper per step)."""
    dim: int = 128
    depth: int = 3
    num_heads: int = 4
    embed_dim: int = 16
    unet_channels: int = 32
    unet_mults: tuple[int, ...] = (1, 2)
    unet_res_blocks: int = 1
    dropout: float = 0.0
    num_samples: int = 36
    sample_steps: int = 64


# Run presets, chosen by measurement on digits (docs/howto/demo_models.md): `--demo` (under 3 minutes of training
# on 2 CPU cores) and `--preset quality` (at most 20 minutes), both the U-Net over token images (a quarter of the
# Transformer's cost per step). No evaluation inside the demo's loop (the run's end scores it).
DEMO = dict(model="unet", unet_channels=16, steps=1500, eval_every=0, checkpoint_every=500, lr=2e-3, ema_decay=0.995)
QUALITY = dict(
    model="unet",
    unet_channels=24,
    dropout=0.1,
    steps=3000,
    eval_every=1000,
    checkpoint_every=1000,
    lr=2e-3,
    ema_decay=0.998,
)


def build_schedule(cfg: Config) -> vd.masked.AbstractMaskingSchedule:
    """The masking schedule named by `cfg.schedule`."""
    m = vd.masked
    table = {
        "linear": lambda: m.LinearSchedule(),
        "cosine": lambda: m.CosineSchedule(),
        "polynomial": lambda: m.PolynomialSchedule(cfg.schedule_param),
        "geometric": lambda: m.GeometricSchedule(),
    }
    return table[cfg.schedule]()


def build_weighting(cfg: Config, schedule: vd.masked.AbstractMaskingSchedule) -> vd.weighting.AbstractWeighting:
    """The weighting named by `cfg.weighting` (`simple` is defined by the masking schedule)."""
    w = vd.weighting
    table = {
        "elbo": lambda: w.ELBO(),
        "sigmoid": lambda: w.Sigmoid(cfg.weighting_param),
        "simple": lambda: vd.masked.Simple(schedule),
        "flow_matching": lambda: w.FlowMatching(),
        "edm_monotonic": lambda: w.EDMMonotonic(),
        "iddpm": lambda: w.IDDPM(),
        "edm": lambda: w.EDM(),
    }
    return table[cfg.weighting]()


def build_importance(cfg: Config, lam_range: tuple[float, float]):
    """`None` or the adaptive schedule over the masking schedule's log-SNR range."""
    return None if cfg.importance == "none" else vd.schedules.AdaptiveSchedule(*lam_range)


def lam_range_of(schedule: vd.masked.AbstractMaskingSchedule) -> tuple[float, float]:
    """The run's one λ range, from the masking schedule: (λ at t = 1, λ at t = 0)."""
    return float(schedule.lam(1.0)), float(schedule.lam(0.0))


def tokens_of(data: vd.data.Dataset) -> tuple[Any, Any, int]:
    """Train/test token arrays (NumPy or lazily read `vd.data.RecordArray`) and the vocabulary size V (the mask id)."""
    if data.kind == "toy" or data.num_levels is None:
        raise _cli.ConfigError(
            f"`--data` must be discrete (images or text) for train_masked.py; got kind {data.kind!r}."
        )
    return data.train, data.test, int(data.num_levels)


def text_decoder(data: vd.data.Dataset) -> Callable[[np.ndarray], str] | None:
    """Token ids -> the samples' text, one blank line between samples (`None` for image data: those are PNGs)."""
    if data.kind == "image":
        return None
    vocab_str = data.vocab or "".join(chr(33 + i) for i in range(int(data.num_levels or 0)))

    def decode(samples: np.ndarray) -> str:
        return "\n\n".join("".join(vocab_str[int(i)] for i in row.reshape(-1)) for row in samples)

    return decode


# The network flags a --preset replaces (setting one with a preset is an error).
MODEL_FIELDS = ("model", "dim", "depth", "num_heads", "embed_dim", "unet_channels", "unet_mults", "unet_res_blocks")


def apply_demo(cfg: Config) -> Config:
    """Fill in the demo preset for every field the user left at its default."""
    return _launch.with_preset(cfg, DEMO)


def validate(cfg: Config) -> tuple[vd.masked.AbstractMaskingSchedule, vd.weighting.AbstractWeighting]:
    """Check every setting before anything is loaded, compiled or written (`ConfigError` naming the flag); returns
    the masking schedule and the weighting, checked on the schedule's λ range."""
    _launch.validate_run(cfg)
    _cli.at_least(cfg, 1, "dim", "depth", "num_heads", "embed_dim")
    _launch.validate_unet(cfg)
    _cli.in_range(cfg, "dropout", 0.0, 1.0)
    _cli.finite(cfg, "schedule_param", "weighting_param")
    if cfg.dim % cfg.num_heads:
        raise _cli.ConfigError(f"`--dim` ({cfg.dim}) must be divisible by `--num-heads` ({cfg.num_heads}).")
    param = ("schedule_param",) if cfg.schedule == "polynomial" else ()
    with _cli.flags(cfg, "schedule", *param):
        schedule = build_schedule(cfg)
        lo, hi = lam_range_of(schedule)
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise ValueError(f"{schedule!r} has the log-SNR range [{lo}, {hi}]; it must be finite and non-empty.")
        importance = build_importance(cfg, (lo, hi))
        if importance is not None:
            vd.schedules.check_numerics(importance)
    with _cli.flags(cfg, "weighting", *(("weighting_param",) if cfg.weighting == "sigmoid" else ())):
        weighting = build_weighting(cfg, schedule)
        vd.weighting.check_on_range(weighting, lo, hi)
    return schedule, weighting


def prepare(cfg: Config) -> tuple[Config, Preset | None]:
    """`cfg` with `--demo`, `--preset quality` or a model `--preset` filled in (explicit flags win), and the model
    preset (None for `quality`)."""
    with _cli.flags(cfg):
        cfg = _launch.apply_run_preset(cfg, DEMO, QUALITY)  # before the model presets, which skip `quality`
        return _launch.apply_model_preset(cfg, "masked", MODEL_FIELDS)


def build_unet(cfg: Config, vocab: int, example_shape: tuple[int, ...], lam_range, key) -> vd.nn.TokenUNet:
    """The `--model unet` network: a U-Net over embedded token images (image data only)."""
    factor = 2 ** (len(cfg.unet_mults) - 1)
    if len(example_shape) != 3 or example_shape[0] % factor or example_shape[1] % factor:
        raise _cli.ConfigError(
            f"`--model unet` needs images (H, W, C) with H and W divisible by {factor} (from `--unet-mults` "
            f"{list(cfg.unet_mults)}); the data's examples have shape {example_shape}. Use `--model transformer`."
        )
    return vd.nn.TokenUNet(
        vocab, example_shape, embed_dim=cfg.embed_dim, key=key, **_launch.unet_kwargs(cfg, lam_range)
    )


def build_run(cfg: Config) -> _launch.Run:
    """Everything a run trains, from `cfg`: data, network, loss, training key (the config with its preset and
    demo filled in). Validates first; `experiments/posthoc_ema.py` calls it with a finished run's recorded config
    to rebuild the network."""
    cfg, preset = prepare(cfg)
    schedule, weighting = validate(cfg)
    with _cli.flags(cfg, "data"):
        data = vd.data.load(cfg.data, **_launch.data_options(preset))
    train, _, vocab = tokens_of(data)
    _launch.check_preset_data(cfg, preset, data)
    _launch.check_batch_size(cfg, train.shape[0])
    example_shape = tuple(train.shape[1:])
    lam_range = lam_range_of(schedule)  # the run's one λ range: model embedding and importance schedule
    key = jr.key(cfg.seed)
    mkey, tkey = jr.split(key)
    if preset is None and cfg.model == "unet":
        model = build_unet(cfg, vocab, example_shape, lam_range, mkey)
    elif preset is None:
        model = vd.nn.Transformer(
            vocab,
            seq_len=int(np.prod(example_shape)),
            dim=cfg.dim,
            depth=cfg.depth,
            num_heads=cfg.num_heads,
            dropout=cfg.dropout,
            lam_min=lam_range[0],
            lam_max=lam_range[1],
            key=mkey,
            precision=_launch.precision_of(cfg),
            remat=cfg.remat,
        )
    else:
        model = _launch.build_preset_model(cfg, preset, lam_range, mkey)
    loss = vd.train.MaskedLoss(schedule, weighting, mask_id=vocab, importance=build_importance(cfg, lam_range))
    return _launch.Run(cfg, data, model, loss, tkey)


def main(cfg: Config) -> dict:
    """Validate `cfg`, build everything from it, train, and print where the outputs are."""
    _launch.init_distributed(cfg)
    validate(prepare(cfg)[0])  # before the workdir is claimed
    with _launch.claim(cfg):
        cfg, data, model, loss, tkey = build_run(cfg)
        train, test, vocab = tokens_of(data)
        example_shape = tuple(train.shape[1:])
        optimizer, dataset, loop = _launch.training_setup(cfg, train)
        _launch.warn_short_ema(cfg)  # after every check of the flags and data
        evaluation = _evaluation.sample_evaluation(
            data, num_samples=cfg.eval_samples, progress=cfg.progress, batch_size=cfg.num_samples
        )
        summary = vd.train.fit(
            model,
            loss,
            optimizer,
            dataset,
            loop=loop,
            key=tkey,
            test_data=test,
            num_levels=vocab,
            sample_shape=(cfg.num_samples, *example_shape),
            sample_steps=cfg.sample_steps,
            decode_text=text_decoder(data),
            evaluate_samples=evaluation,
            **_launch.fit_options(cfg),
        )
    uniform = f"uniform: log2({vocab}) = {np.log2(vocab):.2f}"
    headline = f"test bits per token (-ELBO, EMA model): {summary['test_bpd']:.3f}  ({uniform})"
    _launch.print_outputs(cfg.workdir, summary, headline + _evaluation.describe(summary))
    return summary


if __name__ == "__main__":
    _launch.run(main, Config)
