"""Overhead of the full train step over the bare network forward+backward+Adam; prints one JSON line.

Full step: `vdmpp.train.train_step` (weighted loss with the adaptive schedule and Sigmoid(2) weighting,
NaN guard, Adam with clipping, EMA, adaptive-schedule update). Bare: the same network's forward and
backward on an MSE target at fixed inputs plus the same Adam update. Both are jitted once and timed
alternately in one process (so machine load hits both alike), through the same dispatcher; the ratio of
medians is reported.
Target: <= 1.10.
"""

import json
import pathlib
import statistics
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import numpy as np  # noqa: E402
import vdmpp as vd  # noqa: E402
from vdmpp.train._state import _FastFilterJit  # noqa: E402


def demo_setup(width: int = 256, depth: int = 3, model: str = "mlp"):
    """Model (MLP over flattened 8x8x1, or the small U-Net), adaptive+Sigmoid(2) loss and Adam, as in `make demo`."""
    import experiments.train_gaussian as tg

    cfg = tg.Config(workdir="unused", width=width, depth=depth, lam_max=6.0, model=model)
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


# the same dispatcher as `vdmpp.train.train_step` (JAX's C++ dispatch over the array leaves; `eqx.filter_jit`
# would add ~0.3-1 ms of Python per call to the baseline only), so the ratio measures the extra work, not dispatch
@_FastFilterJit
def bare_step(model, opt_state, z, lam, target, optimizer):
    """Forward + backward of an MSE loss and one optimiser update."""

    def mse(params, static):
        m = eqx.combine(params, static)
        out = jax.vmap(lambda zi, li: m(zi, li, inference=False))(z, lam)
        return jnp.mean((out - target) ** 2)

    params, static = eqx.partition(model, eqx.is_inexact_array)
    with jax.numpy_dtype_promotion("standard"):
        value, grads = jax.value_and_grad(mse)(params, static)
        updates, opt_state = optimizer.update(grads, opt_state, params)
    return eqx.apply_updates(model, updates), opt_state, value


def main(batch_size: int = 128, repeats: int = 300, width: int = 256, model: str = "mlp", warmup: int = 20) -> dict:
    name = f"MLP width {width}, depth 3" if model == "mlp" else "U-Net (train_gaussian.py --model unet defaults)"
    model, loss, optimizer = demo_setup(width=width, model=model)
    state = vd.train.init_train_state(model, optimizer, loss, key=jr.key(0))
    x = jnp.asarray(batch(batch_size))
    full_batch = {"x": x}
    z = vd.losses.uint8_to_float(x, 17)
    lam = jnp.linspace(-10.0, 7.9, batch_size)
    target = jr.normal(jr.key(1), z.shape)
    bare_model, bare_opt = model, state.opt_state

    def run_full():
        nonlocal state
        state, m = vd.train.train_step(state, full_batch, loss=loss, optimizer=optimizer, ema_decay=0.999)
        jax.block_until_ready(m["loss"])

    def run_bare():
        nonlocal bare_model, bare_opt
        bare_model, bare_opt, v = bare_step(bare_model, bare_opt, z, lam, target, optimizer)
        jax.block_until_ready(v)

    for _ in range(warmup):  # compile and warm up
        run_full()
        run_bare()
    full, bare = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run_full()
        t1 = time.perf_counter()
        run_bare()
        t2 = time.perf_counter()
        full.append(t1 - t0)
        bare.append(t2 - t1)
    ratio = statistics.median(full) / statistics.median(bare)
    return {
        "benchmark": "step_overhead",
        "ratio_full_over_bare": round(ratio, 4),
        "target": 1.10,
        "meets_target": ratio <= 1.10,
        "median_full_ms": round(1e3 * statistics.median(full), 4),
        "median_bare_ms": round(1e3 * statistics.median(bare), 4),
        "batch_size": batch_size,
        "model": f"{name}, 8x8x1 digits",
        "repeats": repeats,
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
    }


if __name__ == "__main__":
    # the demo model (tiny: fixed per-step costs such as noise and schedule weigh most) and a 4x wider one
    # and the small U-Net of `train_gaussian.py --model unet`, where the network dominates the step
    small, large = main(width=256), main(width=1024)
    unet = main(model="unet", repeats=15, warmup=3)
    print(
        json.dumps(
            {
                "benchmark": "step_overhead",
                "target": 1.10,
                "ratio_full_over_bare": {
                    "demo_mlp_w256": small["ratio_full_over_bare"],
                    "mlp_w1024": large["ratio_full_over_bare"],
                    "unet": unet["ratio_full_over_bare"],
                },
                "meets_target": {
                    "demo_mlp_w256": small["meets_target"],
                    "mlp_w1024": large["meets_target"],
                    "unet": unet["meets_target"],
                },
                "median_ms": {
                    "demo_mlp_w256": [small["median_full_ms"], small["median_bare_ms"]],
                    "mlp_w1024": [large["median_full_ms"], large["median_bare_ms"]],
                    "unet": [unet["median_full_ms"], unet["median_bare_ms"]],
                },
                "batch_size": small["batch_size"],
                "repeats": small["repeats"],
                "backend": small["backend"],
                "devices": small["devices"],
            }
        )
    )
