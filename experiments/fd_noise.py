"""Sanity curve of the sample-quality metrics: test images corrupted with Gaussian noise of growing σ.

For each data set: the feature classifier (cached, trained on first use), then FD/KID/precision/recall/
classifier confidence of the test set corrupted with noise of standard deviation σ (in model space, where the
data spans [-1, 1]; re-quantised to the data's levels) against the *training* set's features, and the same
FD against the clean test set. σ = 0 gives FD(train, test): what a perfect model scores at n = the test set size.

    python experiments/fd_noise.py --out runs/fd_noise [--data digits mnist] [--sigmas 0 0.05 0.1 ...]

Writes OUT/fd_noise.json and OUT/fd_noise.png (atomically); OUT must not hold an earlier run.
"""

import dataclasses
import pathlib
import sys
import time

import matplotlib


matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import vdmpp as vd
from tqdm.auto import tqdm


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from experiments import _cli  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of the sweep."""

    out: str = "runs/fd_noise"
    data: tuple[str, ...] = ("digits", "mnist")
    sigmas: tuple[float, ...] = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
    seed: int = 0
    """Seed of the noise (and of the KID subsets)."""
    classifier_seed: int = 0
    cache_dir: str | None = None
    progress: bool = True
    debug: bool = False
    """Show the full traceback of an error instead of one line."""


def corrupt(images: np.ndarray, sigma: float, num_levels: int, rng: np.random.Generator) -> np.ndarray:
    """Add N(0, σ²) in model space (levels v -> 2(v + 1/2)/L - 1) and re-quantise to the nearest level."""
    x = 2.0 * (images.astype(np.float64) + 0.5) / num_levels - 1.0
    x = x + sigma * rng.standard_normal(x.shape)
    return np.clip(np.rint((x + 1.0) * num_levels / 2.0 - 0.5), 0, num_levels - 1).astype(np.int32)


def main(cfg: Config) -> dict:
    """Run the sweep; write and return the results."""
    _cli.at_least(cfg, 0, "seed", "classifier_seed")
    if not cfg.data or not cfg.sigmas or any(not (np.isfinite(s) and s >= 0) for s in cfg.sigmas):
        raise _cli.ConfigError(
            f"`--data` and `--sigmas` (finite, >= 0) must be non-empty; got {cfg.data}, {cfg.sigmas}."
        )
    out = pathlib.Path(cfg.out)
    if (out / "fd_noise.json").exists():
        raise FileExistsError(f"{out} already holds a run; choose a new --out (runs never overwrite).")
    start = time.perf_counter()
    results: dict = {"sigmas": list(cfg.sigmas), "data": {}}
    for name in cfg.data:
        ds = vd.data.load(name)
        net = vd.metrics.feature_network(ds, seed=cfg.classifier_seed, cache_dir=cfg.cache_dir, progress=cfg.progress)
        f_train, f_test = net(ds.train), net(ds.test)
        test_stats = vd.metrics.FeatureStats.from_features(f_test)
        rng = np.random.default_rng(cfg.seed)
        rows = []
        for sigma in tqdm(cfg.sigmas, desc=f"σ sweep ({name})", disable=not cfg.progress):
            noisy = corrupt(ds.test, sigma, ds.num_levels or 256, rng)
            q = vd.metrics.sample_quality(noisy, f_train, extractor=net, seed=cfg.seed)
            q["fd_vs_test"] = vd.metrics.frechet_distance(vd.metrics.FeatureStats.from_features(net(noisy)), test_stats)
            rows.append({"sigma": sigma, **q})
        results["data"][name] = {
            "n_train": int(ds.train.shape[0]),
            "n_test": int(ds.test.shape[0]),
            "test_accuracy": vd.metrics.accuracy(net, ds.test, ds.test_labels),
            "fd_train_test": rows[0]["fd"] if cfg.sigmas[0] == 0.0 else None,
            "rows": rows,
            "fd_monotonic": bool(np.all(np.diff([r["fd"] for r in rows]) > 0)),
        }
    results["seconds"] = round(time.perf_counter() - start, 1)

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, r in results["data"].items():
        s = [row["sigma"] for row in r["rows"]]
        (line,) = axes[0].plot(s, [row["fd"] for row in r["rows"]], marker="o", label=f"{name}: vs train")
        axes[0].plot(
            s,
            [row["fd_vs_test"] for row in r["rows"]],
            marker="x",
            ls="--",
            color=line.get_color(),
            label=f"{name}: vs clean test",
        )
        axes[1].plot(
            s, [row["precision"] for row in r["rows"]], marker="o", color=line.get_color(), label=f"{name} precision"
        )
        axes[1].plot(
            s, [row["recall"] for row in r["rows"]], marker="s", ls=":", color=line.get_color(), label=f"{name} recall"
        )
        axes[1].plot(
            s,
            [row["classifier_confidence"] for row in r["rows"]],
            marker="^",
            ls="--",
            color=line.get_color(),
            label=f"{name} confidence",
        )
    axes[0].set_yscale("symlog", linthresh=0.1)
    axes[0].set_xlabel("noise σ (model space, data in [-1, 1])")
    axes[0].set_ylabel("Fréchet distance (classifier features)")
    axes[0].set_title("FD of noisy test images (n = test set)")
    axes[0].legend(fontsize=8)
    axes[1].set_xlabel("noise σ")
    axes[1].set_ylim(-0.02, 1.02)
    axes[1].set_title("precision / recall vs train, classifier confidence")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    vd.train.save_figure(fig, out / "fd_noise.png")
    vd.train.atomic_write_json(out / "fd_noise.json", results)
    return results


def report(cfg: Config) -> dict:
    """`main`, then the results as text."""
    res = main(cfg)
    for name, r in res["data"].items():
        print(
            f"{name}: test accuracy {r['test_accuracy']:.4f}, FD(train, test) {r['fd_train_test']:.4g}, "
            f"monotonic {r['fd_monotonic']}"
        )
        for row in r["rows"]:
            print(
                f"  σ={row['sigma']:<5} FD={row['fd']:<10.4g} FD(test)={row['fd_vs_test']:<10.4g} "
                f"KID={row['kid']:.4g}±{row['kid_std']:.2g} P={row['precision']:.3f} R={row['recall']:.3f} "
                f"conf={row['classifier_confidence']:.3f}"
            )
    print(f"seconds: {res['seconds']}")
    return res


if __name__ == "__main__":
    _cli.run(report, Config, description=__doc__)
