"""Overhead of the full train step over the bare network forward+backward+Adam; prints one JSON line.

Full step: `vdmpp.train.make_train_step` (weighted loss with the adaptive schedule and Sigmoid(2) weighting,
NaN guard, Adam with clipping, EMA, adaptive-schedule update). Bare: the same network's forward and
backward on an MSE target at fixed inputs plus the same Adam update. Both are `jax.jit`-ed once with their
state donated and timed alternately in one process (so machine load hits both alike); the ratio of medians is
reported. Targets: <= 1.10 for the demo MLP, <= 1.05 for the MLP of width 1024 and the U-Net.

Also the cost of post-hoc EMA (`vdmpp.train.PostHocEMA`, two power-function EMAs in the state, the training
scripts' default): the full step with it over the full step without it, timed alternately the same way
(`posthoc_ema_ratio`; no target, reported to decide the default).

    python benchmarks/step_overhead.py [--repeats 300] [--batch-size 128]
"""

import dataclasses
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
from experiments import _cli  # noqa: E402


def demo_setup(width: int = 256, depth: int = 3, model: str = "mlp"):
    """Model (MLP over flattened 8x8x1, or the small U-Net), adaptive+Sigmoid(2) loss and Adam, as in `make demo`."""
    import experiments.train_gaussian as tg

    cfg = tg.Config(workdir="unused", width=width, depth=depth, lam_max=6.0, model=model)
    data = vd.data.Dataset(
        train=np.zeros((1, 8, 8, 1), np.uint8), test=np.zeros((1, 8, 8, 1), np.uint8), num_levels=17, kind="image"
    )
    model = tg.build_model(cfg, data, (cfg.lam_min, 6.0), jr.key(0))
    loss = vd.train.GaussianLoss(tg.build_weighting(cfg), tg.build_schedule(cfg), num_levels=17)
    optimizer = vd.train.make_optimizer(1e-3, 10, 10_000)
    return model, loss, optimizer


def batch(n: int, seed: int = 0) -> np.ndarray:
    """A digits-shaped uint8 batch."""
    return np.random.default_rng(seed).integers(0, 17, (n, 8, 8, 1)).astype(np.uint8)


def make_bare_step(model, optimizer):
    """Forward + backward of an MSE loss and one optimiser update, jitted with its state donated."""
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def mse(p, z, lam, target):
        m = eqx.combine(p, static)
        out = jax.vmap(lambda zi, li: m(zi, li, inference=False))(z, lam)
        return jnp.mean((out - target) ** 2)

    def step(p, opt_state, z, lam, target):
        with jax.numpy_dtype_promotion("standard"):
            value, grads = jax.value_and_grad(mse)(p, z, lam, target)
            updates, opt_state = optimizer.update(grads, opt_state, p)
        return eqx.apply_updates(p, updates), opt_state, value

    return params, jax.jit(step, donate_argnums=(0, 1))


def measure(batch_size: int = 128, repeats: int = 300, width: int = 256, model: str = "mlp", warmup: int = 20) -> dict:
    """Median full-step and bare-step times of one model, alternated `repeats` times after `warmup` rounds."""
    name = f"MLP width {width}, depth 3" if model == "mlp" else "U-Net (train_gaussian.py --model unet defaults)"
    model, loss, optimizer = demo_setup(width=width, model=model)
    state = vd.train.init_train_state(model, optimizer, loss, key=jr.key(0))
    x = jnp.asarray(batch(batch_size))
    full_batch = {"x": x}
    z = vd.losses.uint8_to_float(x, 17)
    lam = jnp.linspace(-10.0, 7.9, batch_size)
    target = jr.normal(jr.key(1), z.shape)
    train_step = vd.train.make_train_step(loss, optimizer, ema_decay=0.999)
    bare_params, bare_step = make_bare_step(model, optimizer)
    with jax.numpy_dtype_promotion("standard"):
        bare_opt = optimizer.init(bare_params)
    bare_params = jax.tree.map(lambda x: jnp.array(x, copy=True), bare_params)

    def run_full():
        nonlocal state
        state, m = train_step(state, full_batch)
        jax.block_until_ready(m["loss"])

    def run_bare():
        nonlocal bare_params, bare_opt
        bare_params, bare_opt, v = bare_step(bare_params, bare_opt, z, lam, target)
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
        "median_full_ms": round(1e3 * statistics.median(full), 4),
        "median_bare_ms": round(1e3 * statistics.median(bare), 4),
        "batch_size": batch_size,
        "model": f"{name}, 8x8x1 digits",
        "repeats": repeats,
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
    }


def posthoc_ratio(
    batch_size: int = 128, repeats: int = 300, width: int = 256, model: str = "mlp", warmup: int = 20
) -> dict:
    """Median time of the full step with post-hoc EMA (sigma_rel 0.05, 0.10) over the full step without it."""
    net, loss, optimizer = demo_setup(width=width, model=model)
    posthoc = vd.train.PostHocEMA((0.05, 0.10))
    batch_ = {"x": jnp.asarray(batch(batch_size))}
    states = {
        "with": vd.train.init_train_state(net, optimizer, loss, key=jr.key(0), posthoc=posthoc),
        "without": vd.train.init_train_state(net, optimizer, loss, key=jr.key(0)),
    }
    steps = {
        "with": vd.train.make_train_step(loss, optimizer, ema_decay=0.999, posthoc=posthoc),
        "without": vd.train.make_train_step(loss, optimizer, ema_decay=0.999),
    }
    times: dict[str, list[float]] = {"with": [], "without": []}

    def run(name):
        t0 = time.perf_counter()
        states[name], m = steps[name](states[name], batch_)
        jax.block_until_ready(m["loss"])
        return time.perf_counter() - t0

    for _ in range(warmup):
        run("with")
        run("without")
    for _ in range(repeats):
        times["with"].append(run("with"))
        times["without"].append(run("without"))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "ratio": round(med["with"] / med["without"], 4),
        "median_with_ms": round(1e3 * med["with"], 4),
        "median_without_ms": round(1e3 * med["without"], 4),
    }


@dataclasses.dataclass(frozen=True)
class Args:
    """Settings of the benchmark."""

    batch_size: int = 128
    repeats: int = 300
    """Timed alternations per MLP (the U-Net gets a twentieth)."""
    debug: bool = False
    """Show the full traceback of an error instead of one line."""


TARGETS = {"demo_mlp_w256": 1.10, "mlp_w1024": 1.05, "unet": 1.05}


def main(args: Args) -> dict:
    """Measure the three models and print one JSON line."""
    _cli.at_least(args, 1, "batch_size", "repeats")
    # the demo model (tiny: fixed per-step costs such as noise and schedule weigh most), a 4x wider one,
    # and the small U-Net of `train_gaussian.py --model unet`, where the network dominates the step
    runs = {
        "demo_mlp_w256": measure(batch_size=args.batch_size, repeats=args.repeats, width=256),
        "mlp_w1024": measure(batch_size=args.batch_size, repeats=args.repeats, width=1024),
        "unet": measure(batch_size=args.batch_size, model="unet", repeats=max(args.repeats // 20, 3), warmup=3),
    }
    ratios = {k: r["ratio_full_over_bare"] for k, r in runs.items()}
    posthoc = {
        "demo_mlp_w256": posthoc_ratio(batch_size=args.batch_size, repeats=args.repeats, width=256),
        "unet": posthoc_ratio(batch_size=args.batch_size, model="unet", repeats=max(args.repeats // 20, 3), warmup=3),
    }
    record = {
        "benchmark": "step_overhead",
        "ratio_full_over_bare": ratios,
        "target": TARGETS,
        "meets_target": {k: ratios[k] <= TARGETS[k] for k in runs},
        "median_ms": {k: [r["median_full_ms"], r["median_bare_ms"]] for k, r in runs.items()},
        "posthoc_ema_ratio": {k: r["ratio"] for k, r in posthoc.items()},
        "posthoc_ema_median_ms": {k: [r["median_with_ms"], r["median_without_ms"]] for k, r in posthoc.items()},
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
    }
    print(json.dumps(record))
    return record


if __name__ == "__main__":
    _cli.run(main, Args, description=__doc__)
