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

import equinox as eqx
import jax.random as jr
import numpy as np
import vdmpp as vd


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from experiments import _launch  # noqa: E402  (plumbing shared with train_gaussian.py)
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
    weighting: Literal["elbo", "sigmoid", "simple", "flow_matching", "edm_monotonic"] = "elbo"
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


def build_weighting(cfg: Config):
    """The weighting named by `cfg.weighting`."""
    w = vd.weighting
    table = {
        "elbo": lambda: w.ELBO(),
        "sigmoid": lambda: w.Sigmoid(cfg.weighting_param),
        "simple": lambda: vd.masked.Simple(),
        "flow_matching": lambda: w.FlowMatching(),
        "edm_monotonic": lambda: w.EDMMonotonic(),
    }
    return table[cfg.weighting]()


def build_importance(cfg: Config):
    """`None` or the adaptive schedule over the masking log-SNR range."""
    return None if cfg.importance == "none" else vd.adaptive.AdaptiveSchedule(-12.0, 12.0)


def tokens_of(data: vd.data.Dataset) -> tuple[np.ndarray, np.ndarray, int]:
    """Train/test token arrays and the vocabulary size V (the mask id)."""
    if data.kind == "toy" or data.num_levels is None:
        raise ValueError(f"`--data` must be discrete (images or text) for train_masked.py; got kind {data.kind!r}.")
    return data.train, data.test, int(data.num_levels)


@eqx.filter_jit
def _sample(model, key, *, shape, schedule, num_steps: int, mask_id: int):
    den = _Den(model)
    samples, _ = vd.masked.ancestral(den, shape, key=key, schedule=schedule, num_steps=num_steps, mask_id=mask_id)
    return samples


class _Den(eqx.Module):
    model: eqx.Module

    def __call__(self, z, lam):
        return self.model(z, lam, inference=True)  # pyright: ignore


def config_record(cfg: Config) -> dict:
    """The JSON record saved with every checkpoint; its sections are compared on --resume."""
    model = ("dim", "depth", "num_heads", "dropout")
    loss = ("schedule", "schedule_param", "weighting", "weighting_param", "importance")
    return _launch.config_record(cfg, model=model, loss=loss)


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
    key = jr.key(cfg.seed)
    mkey, tkey = jr.split(key)
    model = vd.nn.Transformer(
        vocab,
        seq_len=int(np.prod(example_shape)),
        dim=cfg.dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        dropout=cfg.dropout,
        key=mkey,
    )
    schedule = build_schedule(cfg)
    loss = vd.train.MaskedLoss(schedule, build_weighting(cfg), mask_id=vocab, importance=build_importance(cfg))
    optimizer, dataset, loop = _launch.training_setup(cfg, train)
    is_image = data.kind == "image"
    vocab_str = data.vocab or "".join(chr(33 + i) for i in range(vocab))

    def sampler(ema_model, sched_state, key):
        shape = (cfg.num_samples, *example_shape)
        out = _sample(ema_model, key, shape=shape, schedule=schedule, num_steps=cfg.sample_steps, mask_id=vocab)
        if is_image:
            return out
        return "\n\n".join("".join(vocab_str[int(i)] for i in row.reshape(-1)) for row in np.asarray(out))

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
        test_data=test,
        num_levels=vocab,
        sampler=sampler,
    )
    uniform = f"uniform: log2({vocab}) = {np.log2(vocab):.2f}"
    _launch.print_outputs(
        cfg.workdir, summary, f"test bits per token (-ELBO, EMA model): {summary['test_bpd']:.3f}  ({uniform})"
    )
    return summary


if __name__ == "__main__":
    _launch.run(main, Config)
