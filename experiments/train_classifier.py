"""Train the feature classifier of a labelled image data set (the feature space of vdmpp.metrics).

    python experiments/train_classifier.py --data digits                      # into the cache (reused later)
    python experiments/train_classifier.py --data mnist --workdir runs/clf_mnist --seed 1
    python experiments/train_classifier.py --data path/to/image_folder --steps 3000

Without --workdir the network goes to the cache that `vd.metrics.feature_network` reads
($VDMPP_CACHE_DIR or .cache/vdmpp; an existing entry is reused, not retrained). With --workdir it is saved to
WORKDIR/feature_network (load it with `vd.metrics.load_feature_network(path, dataset)`), and WORKDIR must not
hold an earlier run. Either way WORKDIR (or the cache entry) gets summary.json with the test accuracy.
Deterministic given --seed.
"""

import dataclasses
import json
import pathlib
import sys

import vdmpp as vd


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from experiments import _cli  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of one classifier run."""

    data: str = "digits"
    """digits, mnist, fashion_mnist, or a path vd.data.load reads (a labelled image folder or .npz)."""
    seed: int = 0
    steps: int | None = None
    """Adam steps (None: 20 epochs, clipped to 1000..2000)."""
    batch_size: int = 128
    lr: float = 3e-3
    mixup: float = 0.2
    """Mixup's Beta(α, α) parameter α (0: off, which gives the networks trained before mixup was the default)."""
    widths: tuple[int, ...] = (16, 32, 64)
    feature_dim: int = 64
    workdir: str | None = None
    """Save here instead of the cache (must not hold an earlier run)."""
    cache_dir: str | None = None
    """Cache root (default $VDMPP_CACHE_DIR or the repository's .cache/vdmpp)."""
    progress: bool = True
    debug: bool = False
    """Show the full traceback of an error instead of one line."""


def main(cfg: Config) -> dict:
    """Train (or find in the cache), save, write summary.json; return the summary."""
    dataset = vd.data.load(cfg.data)
    clf = vd.metrics.ClassifierConfig(
        widths=cfg.widths,
        feature_dim=cfg.feature_dim,
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        mixup=cfg.mixup,
    )
    if cfg.workdir is None:
        net = vd.metrics.feature_network(
            dataset, seed=cfg.seed, config=clf, cache_dir=cfg.cache_dir, progress=cfg.progress
        )
        directory = vd.metrics.feature_network_path(dataset, seed=cfg.seed, config=clf, cache_dir=cfg.cache_dir)
        info = json.loads((directory / "feature_network.json").read_text())
    else:
        directory = pathlib.Path(cfg.workdir) / "feature_network"
        if (pathlib.Path(cfg.workdir) / "summary.json").exists() or directory.exists():
            raise FileExistsError(
                f"{cfg.workdir} already holds a classifier run; choose a new --workdir (runs never overwrite)."
            )
        net, info = vd.metrics.train_feature_network(dataset, seed=cfg.seed, config=clf, progress=cfg.progress)
        vd.metrics.save_feature_network(directory, net, info)
    summary = {
        "data": cfg.data,
        "seed": cfg.seed,
        "test_accuracy": info["test_accuracy"],
        "train_accuracy": info["train_accuracy"],
        "seconds": info["seconds"],
        "config": info["config"],
        "fingerprint": info["fingerprint"],
        "network": str(directory.absolute()),
    }
    out = pathlib.Path(cfg.workdir) if cfg.workdir is not None else directory
    vd.train.atomic_write_json(out / "summary.json", summary)
    print(
        f"{dataset.name}: test accuracy {summary['test_accuracy']:.4f} (train {summary['train_accuracy']:.4f}), "
        f"{net.classifier.feature_dim} features; network in {directory.absolute()}"
    )
    return summary


if __name__ == "__main__":
    _cli.run(main, Config, description=__doc__)
