"""Shared setup for the training benchmarks: the demo model, loss and optimiser on digits-shaped data."""

import jax.random as jr
import numpy as np
import vdmpp as vd


def demo_setup(width: int = 256, depth: int = 3):
    """Model (MLP over flattened 8x8x1), adaptive+Sigmoid(2) loss and Adam, as in `make demo`."""
    import experiments.train_gaussian as tg  # noqa: PLC0415

    cfg = tg.Config(workdir="unused", width=width, depth=depth, lam_max=7.9)
    data = vd.data.Dataset(
        train=np.zeros((1, 8, 8, 1), np.uint8), test=np.zeros((1, 8, 8, 1), np.uint8), num_levels=17, kind="image"
    )
    model = tg.build_model(cfg, data, jr.key(0))
    loss = vd.train.GaussianLoss(tg.build_weighting(cfg), tg.build_schedule(cfg), num_levels=17)
    optimizer = vd.train.make_optimizer(1e-3, 10, 10_000)
    return model, loss, optimizer


def batch(n: int, seed: int = 0) -> np.ndarray:
    """A digits-shaped uint8 batch."""
    return np.random.default_rng(seed).integers(0, 17, (n, 8, 8, 1)).astype(np.uint8)
