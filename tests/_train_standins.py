"""Small pieces for the training tests (a tiny MLP denoiser, fake data), runnable as a training script.

As a script it trains for `--steps` with checkpoints every `--every` steps, so a test can kill it
(SIGKILL) and resume it: `python tests/_train_standins.py WORKDIR STEPS EVERY [--resume] [--slow]
[--wait-for=PATH]` (`--wait-for`: the first batch waits until PATH exists, so the run holds its workdir).
"""

import os
import sys

import equinox as eqx
import grain
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np


class TinyDenoiser(eqx.Module):
    """An MLP on the flattened example; NaN output for label < 0 (to inject non-finite losses)."""

    mlp: eqx.nn.MLP

    def __init__(self, dim: int, width: int, *, key):
        self.mlp = eqx.nn.MLP(dim + 1, dim, width, 2, key=key)

    def __call__(self, z, lam, *, label=None, key=None, inference=False):
        out = self.mlp(jnp.concatenate([z.reshape(-1), (lam / 20.0)[None]])).reshape(z.shape)
        if label is not None:
            out = jnp.where(label < 0, jnp.nan, out)
        return out


def fake_data(n: int = 96, shape=(4, 4, 1), levels: int = 17, seed: int = 0) -> np.ndarray:
    """Integer 'images' in {0..levels-1}."""
    return np.random.default_rng(seed).integers(0, levels, (n, *shape)).astype(np.uint8)


def pipeline(data: np.ndarray, batch_size: int, seed: int, labels=None):
    """The library's grain pipeline (shuffled, repeated, checkpointable)."""
    import vdmpp as vd

    return vd.data.pipeline(data, batch_size=batch_size, seed=seed, shuffle=True, num_epochs=None, labels=labels)


POSTHOC = (0.05, 0.1)  # the post-hoc EMA profiles of `build(..., posthoc=True)`, snapshots every 2 steps


def build(steps: int, every: int, lr: float = 3e-3, posthoc: bool = False):
    """Model, loss, optimizer, loop config and dataset of the standard small run (optionally with post-hoc EMA)."""
    import vdmpp as vd

    model = TinyDenoiser(16, 32, key=jr.key(0))
    loss = vd.train.GaussianLoss(vd.weighting.Sigmoid(2.0), vd.schedules.Cosine(-10.0, 10.0), num_levels=17)
    opt = vd.train.make_optimizer(lr, 2, steps)
    loop = vd.train.LoopConfig(
        steps=steps,
        checkpoint_every=every,
        log_every=1,
        ema_decay=0.9,
        progress=False,
        posthoc_sigma_rels=POSTHOC if posthoc else (),
        snapshot_every=2,
    )
    return model, loss, opt, loop, pipeline(fake_data(), 16, seed=1)


CONFIG = {
    "maths": {
        "model": {"kind": "tiny", "width": 32},
        "loss": {"w": "sigmoid2"},
        "data": "fake",
        "optimizer": {"lr": 3e-3},
    },
    "run": {"note": "free"},
}


def main(argv):
    import time

    import vdmpp as vd

    workdir, steps, every = argv[0], int(argv[1]), int(argv[2])
    resume = "--resume" in argv
    slow = "--slow" in argv
    model, loss, opt, loop, ds = build(steps, every, posthoc=True)
    if slow:  # slow each batch down so the parent can kill the process mid-run

        class Slow(grain.transforms.Map):
            def map(self, x):
                time.sleep(0.15)
                return x

        ds = ds.map(Slow())
    gate = next((a.split("=", 1)[1] for a in argv if a.startswith("--wait-for=")), None)
    if gate is not None:  # hold the first batch (and so the run, inside `fit`) until the parent creates `gate`

        class Gate(grain.transforms.Map):
            def map(self, x):
                while not os.path.exists(gate):
                    time.sleep(0.01)
                return x

        ds = ds.map(Gate())
    vd.train.fit(
        model, loss, opt, ds, loop=loop, workdir=workdir, config=CONFIG, key=jr.key(7), resume=resume, test_data=None
    )


if __name__ == "__main__":
    jax.config.update("jax_numpy_dtype_promotion", "strict")
    main(sys.argv[1:])
