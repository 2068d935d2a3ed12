"""Throughput of the demo model's train step; prints one JSON line.

For two batch sizes: examples/s (median over timed steps) and the process's peak resident memory
(CPU; on GPU/TPU the device's `peak_bytes_in_use` when reported). Also the compile time of the step
and the time from process start to the first finished step, with a cold and then a warm JAX
compilation cache. Each measurement runs in a fresh subprocess so peaks and caches do not leak.

    python benchmarks/throughput.py [--steps 100] [--big-steps 30]
"""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time


ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from experiments import _cli  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Args:
    """Settings of the benchmark."""

    steps: int = 100
    """Timed steps at batch size 128."""
    big_steps: int = 30
    """Timed steps at batch size 1024."""
    debug: bool = False
    """Show the full traceback of an error instead of one line."""


def worker(batch_size: int, steps: int, t0: float) -> dict:
    """In a fresh process started at `t0`: compile and time the demo model's train step."""
    import resource
    import statistics

    import jax
    import jax.numpy as jnp
    import jax.random as jr

    sys.path.insert(0, str(ROOT))
    import vdmpp as vd
    from benchmarks.step_overhead import batch, demo_setup

    t_import = time.perf_counter() - t0
    model, loss, optimizer = demo_setup()
    state = vd.train.init_train_state(model, optimizer, loss, key=jr.key(0))
    b = {"x": jnp.asarray(batch(batch_size))}
    train_step = vd.train.make_train_step(loss, optimizer, ema_decay=0.999)
    t = time.perf_counter()
    compiled = train_step.lower(state, b).compile()
    compile_s = time.perf_counter() - t
    state, m = train_step(state, b)
    jax.block_until_ready(m["loss"])
    first_step_s = time.perf_counter() - t0
    del compiled
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        state, m = train_step(state, b)
        jax.block_until_ready(m["loss"])
        times.append(time.perf_counter() - t)
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return {
        "batch_size": batch_size,
        "examples_per_s": round(batch_size / statistics.median(times), 1),
        "peak_memory_mb": round((peak or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20, 1),
        "peak_memory_kind": "device peak_bytes_in_use" if peak else "process max RSS",
        "compile_s": round(compile_s, 3),
        "time_to_first_step_s": round(first_step_s, 3),
        "import_s": round(t_import, 3),
        "backend": jax.default_backend(),
    }


def run(batch_size: int, steps: int, cache_dir: str) -> dict:
    """One measurement in a fresh subprocess sharing the compilation cache `cache_dir`."""
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": cache_dir, "PYTHONPATH": str(ROOT)}
    code = (
        "import time; t0 = time.perf_counter()\n"
        "import jax, os; jax.config.update('jax_compilation_cache_dir', os.environ['JAX_COMPILATION_CACHE_DIR'])\n"
        "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)\n"
        "jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)\n"
        "import json; from benchmarks.throughput import worker\n"
        f"print(json.dumps(worker({batch_size}, {steps}, t0)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(args: Args) -> dict:
    """Cold and warm cache at batch 128, then batch 1024; print one JSON line."""
    _cli.at_least(args, 1, "steps", "big_steps")
    with tempfile.TemporaryDirectory() as cache:
        cold = run(128, args.steps, cache)
        warm = run(128, args.steps, cache)
        big = run(1024, args.big_steps, cache)
    record = {
        "benchmark": "throughput",
        "model": "demo MLP (width 256, depth 3), 8x8x1 digits, adaptive + Sigmoid(2)",
        "batch_sizes": [cold["batch_size"], big["batch_size"]],
        "examples_per_s": [warm["examples_per_s"], big["examples_per_s"]],
        "peak_memory_mb": [warm["peak_memory_mb"], big["peak_memory_mb"]],
        "peak_memory_kind": warm["peak_memory_kind"],
        "compile_s": {"cold_cache": cold["compile_s"], "warm_cache": warm["compile_s"]},
        "time_to_first_step_s": {
            "cold_cache": cold["time_to_first_step_s"],
            "warm_cache": warm["time_to_first_step_s"],
        },
        "backend": warm["backend"],
    }
    print(json.dumps(record))
    return record


if __name__ == "__main__":
    _cli.run(main, Args, description=__doc__)
