"""Train a Gaussian diffusion model with the VDM++ weighted loss (any weighting, schedule or the adaptive one).

    python experiments/train_gaussian.py --workdir runs/x --data digits --steps 2000 --seed 0 --checkpoint-every 500
    python experiments/train_gaussian.py --workdir runs/demo --data digits --demo      # what `make demo` runs
    python experiments/train_gaussian.py --workdir runs/vdm --data 'cifar10/*.array_record' --preset vdm_cifar10 \
        --precision bfloat16                                                           # VDM's CIFAR-10 U-Net

Writes WORKDIR/summary.json, metrics.jsonl, tb/ (TensorBoard), loss_curve.png, bpd_curve.png,
p_lambda.png (adaptive schedule), samples.png, checkpoints/ and ema_snapshots/ (post-hoc EMA, see
experiments/posthoc_ema.py). `--resume` continues bit for bit.
"""

import dataclasses
import math
import pathlib
import sys
from typing import Literal

import equinox as eqx
import jax.random as jr
import numpy as np
import vdmpp as vd


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from experiments import _cli, _evaluation, _launch  # noqa: E402  (plumbing shared with the other script)
from experiments._launch import RunConfig  # noqa: E402
from experiments._presets import Preset  # noqa: E402


Weighting = Literal[
    "elbo", "sigmoid", "iddpm", "edm", "edm_monotonic", "flow_matching", "indi", "p2", "min_snr", "five_bit"
]
Schedule = Literal["adaptive", "cosine", "shifted_cosine", "linear", "edm_training", "flow_matching"]
Param = Literal["eps", "x", "v", "f", "o"]


@dataclasses.dataclass(frozen=True)
class Config(RunConfig):
    """Hyperparameters of one run (names here; the objects are built in `build_*` below)."""

    data: str = "digits"
    """A vdmpp.data name (digits, mnist, fashion_mnist) or a path (image folder, .npy/.npz, CIFAR batches)."""
    demo: bool = False
    """The `make demo` preset (a U-Net, under 3 minutes of training on 2 CPU cores); explicit flags still win."""
    weighting: Weighting = "sigmoid"
    weighting_param: float = 2.0
    """k of sigmoid, gamma of p2 / min_snr (ignored otherwise)."""
    schedule: Schedule = "adaptive"
    schedule_shift: float = 0.0
    """s of shifted_cosine."""
    lam_min: float = -10.0
    lam_max: float | None = None
    """None: 2 ln(L) + 0.5 for L-level data (11.6 for 8-bit, 6.2 for digits' 17 levels). Above it the decoder
    p(x|z_0) takes over; a short CPU run learns the highest-SNR noise poorly, so a lower value gives a better ELBO."""
    adaptive_bins: int = 100
    adaptive_decay: float = 0.999
    parameterisation: Param = "eps"
    model: Literal["mlp", "unet"] = "mlp"
    """mlp: residual MLP over the flattened image (width, depth); unet: ADM-style U-Net (unet_*)."""
    width: int = 256
    depth: int = 3
    emb_dim: int = 64
    dropout: float = 0.0
    unet_channels: int = 32
    unet_mults: tuple[int, ...] = (1, 2)
    unet_res_blocks: int = 1
    sample_schedule: Literal["cosine", "learned"] = "cosine"
    """Schedule the samples are drawn on: cosine over the run's λ range, or the training schedule under its final
    state (the learned one for --schedule adaptive)."""


# Run presets, chosen by measurement on digits (docs/howto/demo_models.md): `--demo` (under 3 minutes of training on
# 2 CPU cores) and `--preset quality` (at most 20 minutes). No evaluation inside the demo's loop: each one scores
# 512 samples, which would cost a third of its training time; the run's end scores the EMA model.
DEMO = dict(
    model="unet",
    unet_channels=16,
    steps=2000,
    batch_size=64,
    lr=2e-3,
    warmup=100,
    eval_every=0,
    checkpoint_every=1000,
    ema_decay=0.998,
    dropout=0.1,
)
QUALITY = dict(
    model="unet",
    unet_channels=24,
    steps=4000,
    batch_size=64,
    lr=2e-3,
    warmup=100,
    eval_every=2000,
    checkpoint_every=1000,
    ema_decay=0.998,
    dropout=0.1,
)


# --- names -> objects (the only place that maps strings to strategy objects) -------------------


def build_weighting(cfg: Config) -> vd.weighting.AbstractWeighting:
    """The weighting object named by `cfg.weighting`."""
    w, k = vd.weighting, cfg.weighting_param
    table = {
        "elbo": lambda: w.ELBO(),
        "sigmoid": lambda: w.Sigmoid(k),
        "iddpm": lambda: w.IDDPM(),
        "edm": lambda: w.EDM(),
        "edm_monotonic": lambda: w.EDMMonotonic(),
        "flow_matching": lambda: w.FlowMatching(),
        "indi": lambda: w.InDI(),
        "p2": lambda: w.P2(k),
        "min_snr": lambda: w.MinSNR(k),
        "five_bit": lambda: w.FiveBitLike(),
    }
    return table[cfg.weighting]()


def build_schedule(cfg: Config):
    """The (fixed or adaptive) schedule named by `cfg.schedule`, truncated to [lam_min, lam_max]."""
    s, lo, hi = vd.schedules, cfg.lam_min, cfg.lam_max
    table = {
        "adaptive": lambda: vd.adaptive.AdaptiveSchedule(lo, hi, num_bins=cfg.adaptive_bins, decay=cfg.adaptive_decay),
        "cosine": lambda: s.Cosine(lam_min=lo, lam_max=hi),
        "shifted_cosine": lambda: s.ShiftedCosine(lam_min=lo, lam_max=hi, shift=cfg.schedule_shift),
        "linear": lambda: s.LinearLogSNR(lam_min=lo, lam_max=hi),
        "edm_training": lambda: s.EDMTraining(lam_min=lo, lam_max=hi),
        "flow_matching": lambda: s.FlowMatchingOT(lam_min=lo, lam_max=hi),
    }
    return table[cfg.schedule]()


def build_parameterisation(cfg: Config) -> vd.process.AbstractParameterisation:
    """The parameterisation object named by `cfg.parameterisation`."""
    p = vd.process
    return {"eps": p.EpsPrediction, "x": p.XPrediction, "v": p.VPrediction, "f": p.FPrediction, "o": p.OPrediction}[
        cfg.parameterisation
    ]()


class FlatModel(eqx.Module):
    """Runs a network on flattened examples and restores the example's shape (MLP on images)."""

    net: eqx.Module
    shape: tuple[int, ...] = eqx.field(static=True)

    def __call__(self, z, lam, *, label=None, key=None, inference=False):
        """Apply the network to one flattened example."""
        out = self.net(z.reshape(-1), lam, label=label, key=key, inference=inference)  # pyright: ignore
        return out.reshape(self.shape)


def build_model(cfg: Config, data: vd.data.Dataset, lam_range: tuple[float, float], key) -> eqx.Module:
    """The network named by `cfg.model`, its log-SNR embedding normalised to the run's λ range."""
    shape = data.example_shape
    lam_min, lam_max = lam_range
    if cfg.model == "unet":
        return vd.nn.UNet(shape[-1], key=key, **_launch.unet_kwargs(cfg, lam_range))
    net = vd.nn.MLP(
        int(np.prod(shape)),
        width=cfg.width,
        depth=cfg.depth,
        emb_dim=cfg.emb_dim,
        lam_min=lam_min,
        lam_max=lam_max,
        dropout=cfg.dropout,
        key=key,
        precision=_launch.precision_of(cfg),
        remat=cfg.remat,
    )
    return FlatModel(net, shape)


# The network flags a --preset replaces (setting one with a preset is an error).
MODEL_FIELDS = ("model", "width", "depth", "emb_dim", "unet_channels", "unet_mults", "unet_res_blocks")


def apply_demo(cfg: Config) -> Config:
    """Fill in the demo preset for every field the user left at its default."""
    return _launch.with_preset(cfg, DEMO)


PARAM_OF = {"sigmoid": "k", "p2": "gamma", "min_snr": "gamma"}
"""The weightings that read `--weighting-param` (and what it is to them)."""


def validate(cfg: Config) -> None:
    """Check every setting before anything is loaded, compiled or written (`ConfigError` naming the flag).

    The schedule and the weighting are checked on the run's λ range here when `--lam-max` is given, else by
    `check_maths` once the data's number of levels fixes it.
    """
    _launch.validate_run(cfg)
    _cli.at_least(cfg, 1, "adaptive_bins", "width", "depth", "emb_dim")
    _launch.validate_unet(cfg)
    _cli.in_range(cfg, "dropout", 0.0, 1.0)
    _cli.finite(cfg, "lam_min", "weighting_param", "schedule_shift", "adaptive_decay")
    if cfg.lam_max is not None:
        check_maths(cfg)


def check_maths(cfg: Config) -> tuple[vd.schedules.AbstractNoiseSchedule, vd.weighting.AbstractWeighting]:
    """Build the schedule and the weighting and check both are usable on the run's λ range (not degenerate)."""
    shift = ("schedule_shift",) if cfg.schedule == "shifted_cosine" else ()
    adaptive = ("adaptive_bins", "adaptive_decay") if cfg.schedule == "adaptive" else ()
    with _cli.flags(cfg, "schedule", "lam_min", "lam_max", *shift, *adaptive):
        schedule = build_schedule(cfg)
        vd.schedules.check_numerics(schedule)
        if cfg.sample_schedule == "cosine":
            vd.schedules.check_numerics(vd.schedules.Cosine(float(schedule.lam_min), float(schedule.lam_max)))
    param = ("weighting_param",) if cfg.weighting in PARAM_OF else ()
    with _cli.flags(cfg, "weighting", *param):
        weighting = build_weighting(cfg)
        vd.weighting.check_on_range(weighting, float(schedule.lam_min), float(schedule.lam_max))
    return schedule, weighting


def prepare(cfg: Config) -> tuple[Config, Preset | None]:
    """`cfg` with `--demo`, `--preset quality` or a model `--preset` filled in (explicit flags win), and the model
    preset (None for `quality`)."""
    with _cli.flags(cfg):
        cfg = _launch.apply_run_preset(cfg, DEMO, QUALITY)  # before the model presets, which skip `quality`
        return _launch.apply_model_preset(cfg, "gaussian", MODEL_FIELDS)


def build_run(cfg: Config) -> _launch.Run:
    """Everything a run trains, from `cfg`: data, network, loss, training key (the config with its preset, demo
    and λ range filled in). Validates first; `experiments/posthoc_ema.py` calls it with a finished run's recorded
    config to rebuild the network."""
    cfg, preset = prepare(cfg)
    validate(cfg)
    with _cli.flags(cfg, "data"):
        data = vd.data.load(cfg.data, **_launch.data_options(preset))
    if data.kind != "image" or data.num_levels is None:
        raise _cli.ConfigError(
            f"`--data` must be an integer image data set for train_gaussian.py; got kind {data.kind!r}."
        )
    _launch.check_preset_data(cfg, preset, data)
    _launch.check_batch_size(cfg, data.train.shape[0])
    if cfg.lam_max is None:
        cfg = dataclasses.replace(cfg, lam_max=round(2.0 * math.log(data.num_levels) + 0.5, 3))
    schedule, weighting = check_maths(cfg)  # the run's one λ range: model embedding, training, ELBO, sampling
    lam_range = (float(schedule.lam_min), float(schedule.lam_max))
    key = jr.key(cfg.seed)
    mkey, tkey = jr.split(key)
    with _cli.flags(cfg, "model"):  # e.g. an image size the U-Net's levels cannot halve
        if preset is None:
            model = build_model(cfg, data, lam_range, mkey)
        else:
            model = _launch.build_preset_model(cfg, preset, lam_range, mkey)
    sampling = vd.schedules.Cosine(*lam_range) if cfg.sample_schedule == "cosine" else None
    loss = vd.train.GaussianLoss(
        weighting,
        schedule,
        parameterisation=build_parameterisation(cfg),
        num_levels=data.num_levels,
        sampling_schedule=sampling,
    )
    return _launch.Run(cfg, data, model, loss, tkey)


def main(cfg: Config) -> dict:
    """Validate `cfg`, build everything from it, train, and print where the outputs are."""
    _launch.init_distributed(cfg)
    validate(prepare(cfg)[0])  # before the workdir is claimed
    with _launch.claim(cfg):
        cfg, data, model, loss, tkey = build_run(cfg)
        optimizer, dataset, loop = _launch.training_setup(cfg, data.train)
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
            test_data=data.test,
            num_levels=data.num_levels,
            sample_shape=(cfg.num_samples, *data.example_shape),
            sample_steps=cfg.sample_steps,
            evaluate_samples=evaluation,
            **_launch.fit_options(cfg),
        )
    levels = data.num_levels
    bpd, uniform = summary["test_bpd"], float(np.log2(levels))
    headline = f"test bits/dim (-ELBO, EMA model): {bpd:.3f}  (uniform baseline log2({levels}) = {uniform:.2f})"
    headline += _evaluation.describe(summary)
    _launch.print_outputs(cfg.workdir, summary, headline)
    return summary


if __name__ == "__main__":
    _launch.run(main, Config)
