"""A converged adaptive schedule for fig2 (helper module, not a script): K&G App. F with a frozen exact denoiser."""

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import vdmpp as vd
from sklearn.datasets import load_digits


def converged_adaptive(num_steps: int = 800, batch_size: int = 64):
    """Calibrate `AdaptiveSchedule` on 128 digits with their exact denoiser and w = sigmoid(-lam + 2)."""
    images = load_digits().images[:128].reshape(128, -1).astype(np.float32) / 8.0 - 1.0
    data = jnp.asarray(images)
    sched = vd.adaptive.AdaptiveSchedule(lam_min=-15.0, lam_max=15.0, num_bins=100, decay=0.99)
    state = vd.adaptive.calibrate(
        sched,
        sched.init(),
        vd.oracle.EmpiricalDenoiser(data),
        data,
        weighting=vd.weighting.Sigmoid(k=2.0),
        key=jr.key(0),
        num_steps=num_steps,
        batch_size=batch_size,
    )
    info = {
        "data": "128 scikit-learn digits (64-dim), exact denoiser",
        "weighting": "sigmoid(-lam + 2)",
        "num_bins": 100,
        "decay": 0.99,
        "steps": num_steps,
        "batch_size": batch_size,
        "note": "bins the calibration rarely visits keep part of their initial EMA value (1): the flat tails",
        "argmax_density": float(sched.bin_edges()[int(np.argmax(np.asarray(sched.masses(state))))]),
        "lam_at_t": {f"{t:g}": float(sched.lam(state, jnp.asarray(t))) for t in (0.1, 0.25, 0.5, 0.75, 0.9)},
    }
    return sched, state, info
