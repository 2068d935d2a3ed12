"""Masked diffusion on digits with each S&T weighting: test ELBO (bits/pixel) and samples.

The CPU-scale analogue of Shi & Titsias's ImageNet-64 table: the same small transformer (vdmpp.nn.Transformer)
trained on scikit-learn digits as 64 tokens x 17 levels with the reweighted loss for each weighting —
ELBO, IDDPM, EDM, sigmoid (k=0), flow matching (FM), Simple — for the same fixed budget (steps, batch,
optimiser, seed). Reports the test -ELBO in bits per pixel (continuous time, linear schedule, several
Monte Carlo draws per test image) and a grid of ancestral samples for each weighting.

    python experiments/masked_weightings.py [--steps 600] [--out runs/masked_weightings]

Writes OUT/masked_weightings.json and OUT/masked_weightings.png (atomically). A plain optax Adam loop.
"""

import dataclasses
import json
import math
import os
import pathlib
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import matplotlib
import optax


matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import vdmpp as vd
from tqdm import tqdm


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from experiments import _cli  # noqa: E402


M = vd.masked
V = 17  # digits: pixel values 0..16
MASK = V


WEIGHTINGS = {
    "ELBO": vd.weighting.ELBO(),
    "IDDPM": vd.weighting.IDDPM(),
    "EDM": vd.weighting.EDM(),
    "sigmoid k=0": vd.weighting.Sigmoid(k=0.0),
    "FM": vd.weighting.FlowMatching(),
    "Simple": M.Simple(M.LinearSchedule()),  # the schedule `main` trains with
}


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of the comparison (the same for every weighting)."""

    out: pathlib.Path = pathlib.Path("runs/masked_weightings")
    """Output folder."""
    steps: int = 600
    """Adam steps per weighting."""
    batch: int = 64
    lr: float = 2e-3
    dim: int = 64
    depth: int = 2
    seed: int = 0
    draws: int = 4
    """Monte Carlo draws of the test ELBO per image."""
    sample_steps: int = 64
    debug: bool = False
    """Show the full traceback of an error instead of one line."""


def validate(cfg: Config) -> None:
    """Check the settings before anything is trained or written (`ConfigError` naming the flag)."""
    _cli.at_least(cfg, 1, "steps", "batch", "dim", "depth", "draws", "sample_steps")
    _cli.at_least(cfg, 0, "seed")
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise _cli.ConfigError(f"`--lr` must be a positive finite number, e.g. 2e-3; got {cfg.lr!r}.")
    if cfg.dim % 4:
        raise _cli.ConfigError(f"`--dim` must be divisible by the 4 attention heads; got {cfg.dim}.")
    if cfg.draws < 2:
        raise _cli.ConfigError(f"`--draws` must be at least 2 (the standard error needs two); got {cfg.draws}.")
    _cli.folder(cfg, "out")


def train_one(weighting, train, *, steps, batch, lr, schedule, key, dim, depth):
    """Train a fresh model with one weighting; return the model and the loss curve."""
    mkey, dkey = jr.split(key)
    model = vd.nn.ModelDenoiser(
        vd.nn.Transformer(V, 64, dim=dim, depth=depth, num_heads=4, lam_conditioning=True, key=mkey)
    )
    optim = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(optax.warmup_cosine_decay_schedule(0.0, lr, min(50, steps // 4), steps)),
    )
    opt_state = optim.init(eqx.filter(model, eqx.is_inexact_array))

    @eqx.filter_jit
    def step(model, opt_state, x, key):
        def loss_fn(m):
            return jnp.mean(M.reweighted_loss(m, x, key=key, schedule=schedule, weighting=weighting, mask_id=MASK))

        loss, grads = eqx.filter_value_and_grad(loss_fn)(model)
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optim.update(grads, opt_state, eqx.filter(model, eqx.is_inexact_array))
        return eqx.apply_updates(model, updates), opt_state, loss

    rng = np.random.default_rng(int(jr.randint(dkey, (), 0, 2**31 - 1)))
    losses = []
    for i in tqdm(range(steps), desc="train", leave=False):
        idx = rng.integers(0, train.shape[0], batch)
        model, opt_state, loss = step(model, opt_state, jnp.asarray(train[idx]), jr.fold_in(key, i))
        losses.append(float(loss))
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(
                f"Training with {weighting!r} gave a non-finite loss at step {i}; nothing was plotted or written. "
                "Lower --lr and run again."
            )
    return model, losses


@eqx.filter_jit
def _test_elbo(model, x, key, schedule):
    return M.elbo(model, x, key=key, schedule=schedule, mask_id=MASK)


def test_bpd(model, test, *, schedule, key, draws):
    """Per-image -ELBO in bits/pixel, averaged over `draws` Monte Carlo draws."""
    vals = np.mean(
        [np.asarray(_test_elbo(model, jnp.asarray(test), jr.fold_in(key, d), schedule)) for d in range(draws)], 0
    )
    bpd = vals / (64 * math.log(2.0))
    return float(bpd.mean()), float(bpd.std(ddof=1) / math.sqrt(bpd.size))


def main(cfg: Config) -> dict:
    """Train one model per weighting, evaluate, write JSON + PNG (nothing if a number is not finite)."""
    validate(cfg)
    steps, batch, lr, dim, depth, seed = cfg.steps, cfg.batch, cfg.lr, cfg.dim, cfg.depth, cfg.seed
    draws, sample_steps = cfg.draws, cfg.sample_steps
    out_dir = cfg.out
    ds = vd.data.load("digits")
    train = ds.train.reshape(ds.train.shape[0], 64).astype(np.int32)
    test = ds.test.reshape(ds.test.shape[0], 64).astype(np.int32)
    schedule = M.LinearSchedule()
    key = jr.key(seed)
    results = {
        "config": dict(
            steps=steps,
            batch=batch,
            lr=lr,
            dim=dim,
            depth=depth,
            seed=seed,
            draws=draws,
            sample_steps=sample_steps,
            schedule="LinearSchedule(eps=1e-4)",
            data="digits 64 tokens x 17 levels",
            network="vdmpp.nn.Transformer",
        ),
        "uniform_bpd": math.log2(V) * (1 - schedule.eps),
        "weightings": {},
    }
    samples = {}
    sample_fn = eqx.filter_jit(M.ancestral)
    for name, weighting in tqdm(WEIGHTINGS.items(), desc="weightings"):
        t0 = time.time()
        # same init and data order for every weighting: the weighting is the only difference
        model, losses = train_one(
            weighting,
            train,
            steps=steps,
            batch=batch,
            lr=lr,
            schedule=schedule,
            key=jr.fold_in(key, 1),
            dim=dim,
            depth=depth,
        )
        seconds = time.time() - t0
        bpd, se = test_bpd(model, test, schedule=schedule, key=jr.fold_in(key, 2), draws=draws)
        s, nfe = sample_fn(
            model, (16, 64), key=jr.fold_in(key, 3), schedule=schedule, num_steps=sample_steps, mask_id=MASK
        )
        samples[name] = np.asarray(s).reshape(16, 8, 8)
        results["weightings"][name] = {
            "test_bpd": bpd,
            "test_bpd_se": se,
            "final_train_loss": float(np.mean(losses[-50:])),
            "train_seconds": round(seconds, 1),
            "sample_nfe": int(nfe),
        }
        tqdm.write(f"{name:12s} test bpd {bpd:.4f} ± {se:.4f}  ({seconds:.0f}s)")
        _cli.check_finite_results(results["weightings"][name], f"masked_weightings.py ({name})")  # stop early

    out_dir.mkdir(parents=True, exist_ok=True)

    fig, axes = plt.subplots(1, len(WEIGHTINGS) + 1, figsize=(3 * (len(WEIGHTINGS) + 1), 3.4))
    names = list(WEIGHTINGS)
    vals = [results["weightings"][n]["test_bpd"] for n in names]
    errs = [results["weightings"][n]["test_bpd_se"] for n in names]
    axes[0].bar(range(len(names)), vals, yerr=errs, color="tab:blue")
    axes[0].set_xticks(range(len(names)), names, rotation=60, fontsize=7)
    axes[0].set_ylim(min(vals) * 0.9, max(vals) * 1.05)
    axes[0].set_ylabel("test -ELBO (bits/pixel)")
    for ax, name in zip(axes[1:], names):
        grid = samples[name].reshape(4, 4, 8, 8).transpose(0, 2, 1, 3).reshape(32, 32)
        ax.imshow(grid, cmap="gray_r", vmin=0, vmax=16)
        ax.set_title(f"{name}\n{results['weightings'][name]['test_bpd']:.3f} bpp", fontsize=8)
        ax.axis("off")
    fig.suptitle(f"masked diffusion on digits, {steps} Adam steps per weighting", fontsize=9)
    fig.tight_layout()
    tmp_png = out_dir / "masked_weightings.png.tmp.png"
    fig.savefig(tmp_png, dpi=110)
    os.replace(tmp_png, out_dir / "masked_weightings.png")
    vd.train.atomic_write_bytes(out_dir / "masked_weightings.json", json.dumps(results, indent=2).encode())
    return results


if __name__ == "__main__":
    res = _cli.run(main, Config, description=__doc__)
    print(json.dumps(res["weightings"], indent=1))
