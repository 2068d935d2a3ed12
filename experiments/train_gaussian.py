"""Train a Gaussian diffusion model with the VDM++ weighted loss (any weighting, schedule or the adaptive one).

    python experiments/train_gaussian.py --workdir runs/x --data digits --steps 2000 --seed 0 --checkpoint-every 500
    python experiments/train_gaussian.py --workdir runs/demo --data digits --demo      # what `make demo` runs

Writes WORKDIR/summary.json, metrics.jsonl, tb/ (TensorBoard), loss_curve.png, bpd_curve.png,
p_lambda.png (adaptive schedule), samples.png and checkpoints/. `--resume` continues bit for bit.
"""

import dataclasses
import math
import os
import pathlib
import sys
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import tyro
import vdmpp as vd


Weighting = Literal[
    "elbo", "sigmoid", "iddpm", "edm", "edm_monotonic", "flow_matching", "indi", "p2", "min_snr", "five_bit"
]
Schedule = Literal["adaptive", "cosine", "shifted_cosine", "linear", "edm_training", "flow_matching"]
Param = Literal["eps", "x", "v", "f", "o"]


@dataclasses.dataclass(frozen=True)
class Config:
    """Hyperparameters of one run (names here; the objects are built in `build_*` below)."""

    workdir: str
    """Output folder (metrics, plots, samples, checkpoints)."""
    data: str = "digits"
    """A vdmpp.data name (digits, mnist, fashion_mnist) or a path (image folder, .npy/.npz, CIFAR batches)."""
    steps: int = 3000
    seed: int = 0
    checkpoint_every: int = 500
    resume: bool = False
    """Continue from the latest checkpoint in WORKDIR/checkpoints."""
    demo: bool = False
    """The `make demo` preset (a few minutes on 2 CPU cores); explicit flags still win."""
    batch_size: int = 128
    """Global batch size (split over processes and devices)."""
    lr: float = 2e-3
    warmup: int = 100
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    ema_decay: float = 0.999
    accum_steps: int = 1
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
    fsdp: int = 1
    """Size of the mesh's fsdp axis (1: pure data parallelism)."""
    eval_every: int = 500
    eval_examples: int = 0
    """Test examples for the periodic bits/dim (0: all)."""
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


DEMO = dict(
    steps=4000,
    batch_size=128,
    lr=3e-3,
    warmup=100,
    eval_every=1000,
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


def build_model(cfg: Config, data: vd.data.Dataset, key) -> eqx.Module:
    """The network named by `cfg.model`, conditioned on the normalised log-SNR."""
    shape = data.example_shape
    if cfg.model == "unet":
        return vd.nn.UNet(
            shape[-1],
            base_channels=cfg.unet_channels,
            channel_mults=cfg.unet_mults,
            num_res_blocks=cfg.unet_res_blocks,
            attention_levels=(len(cfg.unet_mults) - 1,),
            num_groups=min(8, cfg.unet_channels),
            dropout=cfg.dropout,
            lam_min=cfg.lam_min,
            lam_max=cfg.lam_max,
            key=key,
        )
    net = vd.nn.MLP(
        int(np.prod(shape)),
        width=cfg.width,
        depth=cfg.depth,
        emb_dim=cfg.emb_dim,
        lam_min=cfg.lam_min,
        lam_max=cfg.lam_max,
        dropout=cfg.dropout,
        key=key,
    )
    return FlatModel(net, shape)


# --- samples for the grids: vd.samplers.ancestral on a cosine grid, decoded like elbo_bpd -------


@eqx.filter_jit
def ancestral_samples(model, parameterisation, key, *, shape, num: int, num_steps: int, lam_min, lam_max, levels):
    """DDPM ancestral samples (THEORY §7) on a cosine λ grid, decoded to integer levels (argmax)."""
    sched = vd.schedules.Cosine(lam_min=lam_min, lam_max=lam_max)
    den = vd.nn.as_denoiser(model, parameterisation)
    x, _ = vd.samplers.ancestral(den, (num, *shape), key=key, schedule=sched, num_steps=num_steps, num_levels=levels)
    return x.astype(jnp.uint8)


def config_record(cfg: Config) -> dict:
    """The JSON record saved with every checkpoint; its sections are compared on --resume."""
    d = dataclasses.asdict(cfg)
    section = {
        "model": (
            "model",
            "width",
            "depth",
            "emb_dim",
            "dropout",
            "parameterisation",
            "lam_min",
            "lam_max",
            "unet_channels",
            "unet_mults",
            "unet_res_blocks",
        ),
        "loss": ("weighting", "weighting_param", "schedule", "schedule_shift", "adaptive_bins", "adaptive_decay"),
        "data": ("data", "batch_size", "seed"),
        "optimizer": ("lr", "warmup", "lr_schedule", "steps", "ema_decay", "accum_steps"),
    }
    out = {name: {k: d[k] for k in keys} for name, keys in section.items()}
    out["run"] = {k: v for k, v in d.items() if not any(k in keys for keys in section.values())}
    return out


def apply_demo(cfg: Config) -> Config:
    """Fill in the demo preset for every field the user left at its default."""
    if not cfg.demo:
        return cfg
    default = Config(workdir=cfg.workdir)
    return dataclasses.replace(cfg, **{k: v for k, v in DEMO.items() if getattr(cfg, k) == getattr(default, k)})


def main(cfg: Config) -> dict:
    """Build everything from `cfg`, train, and print where the outputs are."""
    if cfg.distributed:
        jax.distributed.initialize(cfg.coordinator_address, cfg.num_processes, cfg.process_id)
    cfg = apply_demo(cfg)
    data = vd.data.load(cfg.data)
    if data.kind != "image" or data.num_levels is None:
        raise ValueError(f"`--data` must be an integer image data set for train_gaussian.py; got kind {data.kind!r}.")
    nproc = jax.process_count()
    if cfg.batch_size % nproc:
        raise ValueError(f"`--batch-size` ({cfg.batch_size}) must be divisible by the process count ({nproc}).")
    if cfg.batch_size > data.train.shape[0]:
        raise ValueError(
            f"`--batch-size` ({cfg.batch_size}) is larger than the training set of {cfg.data} "
            f"({data.train.shape[0]} examples); use at most {data.train.shape[0]}."
        )
    if cfg.lam_max is None:
        cfg = dataclasses.replace(cfg, lam_max=round(2.0 * math.log(data.num_levels) + 0.5, 3))
    assert cfg.lam_max is not None
    key = jr.key(cfg.seed)
    mkey, tkey = jr.split(key)
    model = build_model(cfg, data, mkey)
    parameterisation = build_parameterisation(cfg)
    loss = vd.train.GaussianLoss(
        build_weighting(cfg), build_schedule(cfg), parameterisation=parameterisation, num_levels=data.num_levels
    )
    kind = vd.train.WarmupCosine() if cfg.lr_schedule == "cosine" else vd.train.WarmupConstant()
    optimizer = vd.train.make_optimizer(cfg.lr, cfg.warmup, cfg.steps, kind)
    dataset = vd.data.pipeline(
        data.train,
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
    shape, levels = data.example_shape, data.num_levels

    def sampler(ema_model, sched_state, key):
        return ancestral_samples(
            ema_model,
            parameterisation,
            key,
            shape=shape,
            num=cfg.num_samples,
            num_steps=cfg.sample_steps,
            lam_min=cfg.lam_min,
            lam_max=cfg.lam_max,
            levels=levels,
        )

    summary = vd.train.fit(
        model,
        loss,
        optimizer,
        dataset,
        loop=loop,
        workdir=cfg.workdir,
        config=config_record(cfg),
        key=tkey,
        resume=cfg.resume,
        test_data=data.test,
        num_levels=levels,
        sampler=sampler,
    )
    if jax.process_index() == 0:
        out = pathlib.Path(cfg.workdir).absolute()
        uniform = float(np.log2(levels))
        bpd = summary["test_bpd"]
        print(f"\ntest bits/dim (-ELBO, EMA model): {bpd:.3f}  (uniform baseline log2({levels}) = {uniform:.2f})")
        print(f"outputs in {out}:")
        for name in summary.get("files", []) + ["summary.json", "tb/"]:
            print(f"  {out / name}")
    return summary


if __name__ == "__main__":
    os.environ.setdefault("MPLBACKEND", "Agg")
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if cache:
        jax.config.update("jax_compilation_cache_dir", cache)
    main(tyro.cli(Config, args=sys.argv[1:]))
