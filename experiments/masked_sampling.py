"""Parallel-sampling bandwidth of masked diffusion: non-data samples vs number of steps, per masking schedule.

With the exact (oracle) denoiser of a finite data set, the one-token-per-step sampler is exact, and MD4's
ancestral sampler with T steps is exact only in the limit: revealing several tokens at once from their
marginals can produce sequences that are not data rows. How many tokens a step reveals is set by the
shape of alpha_t on the sampling grid (Shi & Titsias slides, "parallel sampling bandwidth"). This script
reports the fraction of samples that are not rows of the data set against T for each schedule.

    PYTHONPATH=$PWD python experiments/masked_sampling.py [--out runs/masked_sampling] [--quick]

Writes OUT/masked_sampling.json and OUT/masked_sampling.png (atomically). < 2 min on one CPU core.
"""

import argparse
import json
import os
import pathlib
import time

import equinox as eqx
import jax.random as jr
import matplotlib


matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import vdmpp as vd
from tqdm import tqdm


M = vd.masked


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


def main(out: str = "runs/masked_sampling", quick: bool = False, seed: int = 0) -> dict:
    """Run the sweep, write JSON + PNG, return the results."""
    out_dir = pathlib.Path(out)
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
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/masked_sampling")
    parser.add_argument("--quick", action="store_true", help="fewer steps and samples")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    res = main(args.out, args.quick, args.seed)
    for name, series in res["series"].items():
        print(f"{name:20s}", " ".join(f"{f:.3f}" for f in series["non_data_fraction"]))
    print("any-order AR:", res["any_order_autoregressive"], "seconds:", res["seconds"])
