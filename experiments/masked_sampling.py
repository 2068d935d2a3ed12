"""Parallel-sampling bandwidth of masked diffusion: non-data samples vs number of steps, per masking schedule.

With the exact (oracle) denoiser of a finite data set, the one-token-per-step sampler is exact, and MD4's
ancestral sampler with T steps is exact only in the limit: revealing several tokens at once from their
marginals can produce sequences that are not data rows. How many tokens a step reveals is set by the
shape of alpha_t on the sampling grid (Shi & Titsias slides, "parallel sampling bandwidth"). This script
reports the fraction of samples that are not rows of the data set against T for each schedule.

    python experiments/masked_sampling.py [--out runs/masked_sampling] [--quick]

Writes OUT/masked_sampling.json and OUT/masked_sampling.png (atomically). < 2 min on one CPU core.
"""

import dataclasses
import json
import os
import pathlib
import sys
import time

import equinox as eqx
import jax.random as jr
import matplotlib


matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import vdmpp as vd
from tqdm import tqdm


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from experiments import _cli  # noqa: E402


M = vd.masked


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of the sweep."""

    out: pathlib.Path = pathlib.Path("runs/masked_sampling")
    """Output folder."""
    quick: bool = False
    """Fewer steps and samples."""
    seed: int = 0
    debug: bool = False
    """Show the full traceback of an error instead of one line."""


def validate(cfg: Config) -> None:
    """Check the settings before anything is computed or written (`ConfigError` naming the flag)."""
    _cli.at_least(cfg, 0, "seed")
    if cfg.out.exists() and not cfg.out.is_dir():
        raise _cli.ConfigError(f"`--out` {cfg.out} is a file, not a folder; choose another path.")


def make_data(num_rows: int, length: int, vocab: int, seed: int) -> np.ndarray:
    """`num_rows` distinct random sequences."""
    rng = np.random.default_rng(seed)
    rows: set[tuple[int, ...]] = set()
    while len(rows) < num_rows:
        rows.add(tuple(int(v) for v in rng.integers(0, vocab, length)))
    return np.array(sorted(rows), np.int32)


def non_data_fraction(samples: np.ndarray, data: np.ndarray) -> float:
    """Fraction of samples that are not rows of `data`."""
    rows = {r.tobytes() for r in data}
    return float(np.mean([s.tobytes() not in rows for s in samples]))


def main(cfg: Config) -> dict:
    """Run the sweep, write JSON + PNG, print and return the results."""
    validate(cfg)
    quick, seed = cfg.quick, cfg.seed
    out_dir = cfg.out
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab, length, num_rows = 6, 10, 200
    data = make_data(num_rows, length, vocab, seed)
    oracle = vd.oracle.EmpiricalMaskedDenoiser(data, vocab_size=vocab, mask_id=vocab)
    steps = [1, 2, 4, 8, 16, 32, 64] if quick else [1, 2, 4, 8, 16, 32, 64, 128, 256]
    num_samples = 500 if quick else 2000
    setups = {
        "linear": (M.LinearSchedule(), M.UniformGrid()),
        "cosine": (M.CosineSchedule(), M.UniformGrid()),
        "poly2": (M.PolynomialSchedule(k=2.0), M.UniformGrid()),
        "poly0.5": (M.PolynomialSchedule(k=0.5), M.UniformGrid()),
        "geometric": (M.GeometricSchedule(), M.UniformGrid()),
        "linear+cosine grid": (M.LinearSchedule(), M.CosineGrid()),
    }
    sample = eqx.filter_jit(M.ancestral)
    key = jr.key(seed)
    results: dict = {"steps": steps, "num_samples": num_samples, "series": {}}
    t0 = time.time()
    for name, (schedule, grid) in tqdm(setups.items(), desc="schedules"):
        fracs, nfes = [], []
        for T in steps:
            s, nfe = sample(
                oracle,
                (num_samples, length),
                key=jr.fold_in(key, T),
                schedule=schedule,
                num_steps=T,
                mask_id=vocab,
                grid=grid,
            )
            fracs.append(non_data_fraction(np.asarray(s), data))
            nfes.append(int(nfe))
        results["series"][name] = {"non_data_fraction": fracs, "nfe": nfes}
    # the exact one-token-per-step sampler, for reference (should be 0 non-data)
    s, nfe = eqx.filter_jit(M.any_order_autoregressive)(oracle, (num_samples, length), key=key, mask_id=vocab)
    results["any_order_autoregressive"] = {"non_data_fraction": non_data_fraction(np.asarray(s), data), "nfe": int(nfe)}
    results["data"] = {"num_rows": num_rows, "length": length, "vocab_size": vocab}
    results["seconds"] = round(time.time() - t0, 1)
    _cli.check_finite_results(results, "masked_sampling.py")

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, series in results["series"].items():
        ax.plot(steps, series["non_data_fraction"], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("number of sampling steps T")
    ax.set_ylabel("fraction of samples not in the data set")
    ax.set_title(f"oracle denoiser, {num_rows} rows, L={length}, V={vocab}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp_png = out_dir / "masked_sampling.png.tmp.png"
    fig.savefig(tmp_png, dpi=120)
    os.replace(tmp_png, out_dir / "masked_sampling.png")
    vd.train.atomic_write_bytes(out_dir / "masked_sampling.json", json.dumps(results, indent=2).encode())
    for name, series in results["series"].items():
        print(f"{name:20s}", " ".join(f"{f:.3f}" for f in series["non_data_fraction"]))
    print("any-order AR:", results["any_order_autoregressive"], "seconds:", results["seconds"])
    return results


if __name__ == "__main__":
    _cli.run(main, Config, description=__doc__)
