"""Train a masked (absorbing) diffusion model: MD4's ELBO or S&T's reweighted losses, optional adaptive importance.

    python experiments/train_masked.py --workdir runs/m --data digits --steps 2000 --seed 0 --checkpoint-every 500
    python experiments/train_masked.py --workdir runs/t --data path/to/text8.txt --weighting sigmoid --demo

Image data are treated as tokens (one per pixel, V = number of grey levels); text files as characters.
Writes WORKDIR/summary.json, metrics.jsonl, tb/, loss_curve.png, bpd_curve.png (bits per token),
samples.png (images) or samples.txt (text) and checkpoints/. `--resume` continues bit for bit.
"""

import dataclasses
import pathlib
import sys
from typing import Literal

import jax.random as jr
import numpy as np
import vdmpp as vd


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from experiments import _evaluation, _launch  # noqa: E402  (plumbing shared with train_gaussian.py)
from experiments._launch import RunConfig  # noqa: E402


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
    dim: int = 128
    depth: int = 3
    num_heads: int = 4
    dropout: float = 0.0
    num_samples: int = 36
    sample_steps: int = 64


DEMO = dict(steps=1500, eval_every=500, checkpoint_every=500, lr=2e-3, ema_decay=0.995, depth=2)


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


def tokens_of(data: vd.data.Dataset) -> tuple[np.ndarray, np.ndarray, int]:
    """Train/test token arrays and the vocabulary size V (the mask id)."""
    if data.kind == "toy" or data.num_levels is None:
        raise ValueError(f"`--data` must be discrete (images or text) for train_masked.py; got kind {data.kind!r}.")
    return data.train, data.test, int(data.num_levels)


def apply_demo(cfg: Config) -> Config:
    """Fill in the demo preset for every field the user left at its default."""
    return _launch.with_preset(cfg, DEMO)


def main(cfg: Config) -> dict:
    """Build everything from `cfg`, train, and print where the outputs are."""
    _launch.init_distributed(cfg)
    cfg = apply_demo(cfg)
    data = vd.data.load(cfg.data)
    train, test, vocab = tokens_of(data)
    _launch.check_batch_size(cfg, train.shape[0])
    example_shape = tuple(train.shape[1:])
    schedule = build_schedule(cfg)
    lam_range = lam_range_of(schedule)  # the run's one λ range: model embedding and importance schedule
    key = jr.key(cfg.seed)
    mkey, tkey = jr.split(key)
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
    )
    loss = vd.train.MaskedLoss(
        schedule, build_weighting(cfg, schedule), mask_id=vocab, importance=build_importance(cfg, lam_range)
    )
    optimizer, dataset, loop = _launch.training_setup(cfg, train)
    evaluation = _evaluation.sample_evaluation(
        data, num_samples=cfg.eval_samples, progress=cfg.progress, batch_size=cfg.num_samples
    )
    vocab_str = data.vocab or "".join(chr(33 + i) for i in range(vocab))

    def decode_text(samples: np.ndarray) -> str:
        return "\n\n".join("".join(vocab_str[int(i)] for i in row.reshape(-1)) for row in samples)

    summary = vd.train.fit(
        model,
        loss,
        optimizer,
        dataset,
        loop=loop,
        workdir=cfg.workdir,
        config=_launch.config_record(cfg),
        key=tkey,
        resume=cfg.resume,
        test_data=test,
        num_levels=vocab,
        sample_shape=(cfg.num_samples, *example_shape),
        sample_steps=cfg.sample_steps,
        decode_text=None if data.kind == "image" else decode_text,
        evaluate_samples=evaluation,
    )
    uniform = f"uniform: log2({vocab}) = {np.log2(vocab):.2f}"
    headline = f"test bits per token (-ELBO, EMA model): {summary['test_bpd']:.3f}  ({uniform})"
    _launch.print_outputs(cfg.workdir, summary, headline + _evaluation.describe(summary))
    return summary


if __name__ == "__main__":
    _launch.run(main, Config)
