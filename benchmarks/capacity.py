"""Capacity plan of the papers' presets on accelerators, computed on the CPU without allocating a model.

For each preset (experiments/_presets.py) and each mesh of 1, 8, 64 and 256 devices (data x FSDP, the layouts of
`vd.train.Sharding`), with bfloat16 compute, AdamW and post-hoc EMA (sigma_rel 0.05, 0.10) on, as the training
scripts run them:

- parameter count (`jax.eval_shape`);
- bytes per device of the train state: parameters, Adam moments, EMA and the two post-hoc EMAs (float32). The
  meshes are mostly larger than this CPU's device count, so these come from `vd.train.Sharding`'s own rule
  applied to every state leaf on a `jax.sharding.AbstractMesh` (`NamedSharding.shard_shape`): analytic, exact
  for that rule. Gradients are counted once more (float32, laid out like the parameters);
- activation memory per device at the stated per-device batch: the residuals the backward pass keeps (the
  leaves of `jax.vjp`'s closure under `jax.eval_shape`), per example (batch 2 minus batch 1) times the batch,
  without and with `--remat`; the batch-independent part (the bfloat16 copies of the weights) is listed
  separately. XLA may rematerialise or reuse buffers, so this is an estimate, not a measurement;
- FLOPs per example and per step: XLA's cost analysis of the lowered train step (`TrainStep.lower` on
  `jax.ShapeDtypeStruct` inputs, batch 2 minus batch 1; nothing is compiled or allocated);
- the step time implied by a stated model-FLOP utilisation on named accelerators (peak dense bfloat16 FLOP/s,
  sources below), and whether the per-device total fits in their memory. Communication is not modelled.

The global batch is the preset's (raised to the device count where it is smaller, so each device has one
example). Prints one JSON line; writes `capacity.json` (atomically) to `--out`.

    python benchmarks/capacity.py [--out benchmarks/results] [--mfu 0.4] [--presets vdm_cifar10 md4_text8]
"""

import dataclasses
import json
import math
import pathlib
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax.sharding import AbstractMesh


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import vdmpp as vd  # noqa: E402
from experiments import _cli  # noqa: E402
from experiments._presets import get_preset, Preset  # noqa: E402


# Peak dense bfloat16 FLOP/s (no sparsity) and memory per chip/GPU.
ACCELERATORS = {
    "TPU v4": (275e12, 32 * 2**30, "cloud.google.com/tpu/docs/v4: 275 TFLOPs bf16, 32 GiB HBM2"),
    "TPU v5e": (197e12, 16 * 2**30, "cloud.google.com/tpu/docs/v5e: 197 TFLOPs bf16, 16 GiB HBM2"),
    "TPU v5p": (459e12, 95 * 2**30, "cloud.google.com/tpu/docs/v5p: 459 TFLOPs bf16, 95 GiB HBM2e"),
    "TPU v6e": (918e12, 32 * 2**30, "cloud.google.com/tpu/docs/v6e: 918 TFLOPs bf16, 32 GiB HBM"),
    "A100 80GB": (312e12, 80e9, "NVIDIA A100 datasheet: 312 TFLOPS bf16 dense (624 sparse), 80 GB HBM2e"),
    "H100 SXM": (989e12, 80e9, "NVIDIA H100 datasheet: 989 TFLOPS bf16 dense (1979 sparse), 80 GB HBM3"),
    "H200 SXM": (989e12, 141e9, "NVIDIA H200 datasheet: 989 TFLOPS bf16 dense (1979 sparse), 141 GB HBM3e"),
}
PRESETS = ("vdm_cifar10", "md4_text8", "md4_imagenet64")
LAYOUTS = {1: (1,), 8: (1, 8), 64: (1, 8, 64), 256: (1, 8, 256)}  # device count -> FSDP sizes (data = rest)
BF16 = vd.nn.Precision(jnp.bfloat16)
POSTHOC = vd.train.PostHocEMA((0.05, 0.10))


def _loss(preset: Preset) -> vd.train.AbstractLoss:
    if preset.kind == "gaussian":
        return vd.train.GaussianLoss(preset.weighting, preset.schedule, num_levels=preset.num_levels)
    return vd.train.MaskedLoss(preset.schedule, vd.weighting.ELBO(), mask_id=preset.num_levels)


def _optimizer(preset: Preset):
    kind = vd.train.WarmupCosine() if preset.lr_schedule == "cosine" else vd.train.WarmupConstant()
    return vd.train.make_optimizer(
        preset.lr, preset.warmup, preset.steps, kind, clip_norm=preset.grad_clip, b2=preset.b2,
        weight_decay=preset.weight_decay,
    )  # fmt: skip


def _batch(preset: Preset, n: int) -> dict:
    return {"x": jax.ShapeDtypeStruct((n, *preset.data_shape), jnp.uint8)}


def abstract_state(preset: Preset, remat: bool = False) -> vd.train.TrainState:
    """The train state as `jax.ShapeDtypeStruct`s (bfloat16 compute, AdamW, EMA, post-hoc EMA)."""
    loss, opt = _loss(preset), _optimizer(preset)

    def init(key):
        model = preset.build(key, precision=BF16, remat=remat)
        return vd.train.init_train_state(model, opt, loss, key=key, posthoc=POSTHOC)

    return eqx.filter_eval_shape(init, jr.key(0))


def _nbytes(x) -> int:
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):  # dropout keys: a few bytes
        return 0
    return math.prod(x.shape) * np.dtype(x.dtype).itemsize


def state_bytes_per_device(state: vd.train.TrainState, data: int, fsdp: int) -> dict[str, int]:
    """Per-device bytes of each part of the state under `vd.train.Sharding`'s rule on an abstract mesh."""
    mesh = AbstractMesh((data, fsdp), ("data", "fsdp"))  # any size: no devices needed for the layout rule
    sharding = vd.train.Sharding(mesh)

    def per_device(tree) -> int:
        total = 0
        for x in jax.tree.leaves(tree):
            if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
                continue
            total += math.prod(sharding.leaf(x).shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
        return total

    trainable = [x for x in jax.tree.leaves(state.params) if jnp.issubdtype(x.dtype, jnp.inexact)]  # abstract leaves
    return {
        "params": per_device(state.params),
        "optimizer": per_device(state.opt_state),
        "ema": per_device(state.ema),
        "posthoc_emas": per_device(state.phema),
        "gradients": per_device(trainable),
    }


def residual_bytes(preset: Preset, batch: int, remat: bool) -> int:
    """Bytes the backward pass keeps (the leaves of `jax.vjp`'s closure), from `jax.eval_shape`."""
    loss = _loss(preset)

    def residuals(key):
        model = preset.build(key, precision=BF16, remat=remat)
        trainable, rest = eqx.partition(model, eqx.is_inexact_array)
        x = jnp.zeros((batch, *preset.data_shape), jnp.uint8)

        def mean_loss(tr):
            with jax.numpy_dtype_promotion("standard"):
                value, _ = loss(eqx.combine(tr, rest), {"x": x}, key=key, sched_state=loss.init_schedule_state())
                return jnp.mean(value)

        return jax.vjp(mean_loss, trainable)[1]

    leaves = jax.tree.leaves(eqx.filter_eval_shape(residuals, jr.key(0)))
    return sum(_nbytes(x) for x in leaves if hasattr(x, "shape"))


def step_flops(preset: Preset, state: vd.train.TrainState, batch: int) -> float:
    """XLA's FLOP count of the lowered train step (fwd + bwd + AdamW + EMAs) at `batch`; nothing is compiled."""
    step = vd.train.make_train_step(_loss(preset), _optimizer(preset), ema_decay=preset.ema_decay, posthoc=POSTHOC)
    cost = step.lower(state, _batch(preset, batch)).cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"])


def analyse(preset: Preset, mfu: float) -> dict:
    """Everything above for one preset; `mfu` is the stated model-FLOP utilisation."""
    t0 = time.perf_counter()
    state = abstract_state(preset)
    num_params = vd.nn.num_parameters(preset.abstract())
    f1, f2 = step_flops(preset, state, 1), step_flops(preset, state, 2)
    per_example, per_step = f2 - f1, 2 * f1 - f2
    residual = {r: [residual_bytes(preset, b, r) for b in (1, 2)] for r in (False, True)}
    act = {r: v[1] - v[0] for r, v in residual.items()}  # per example
    weight_copies = residual[False][0] - act[False]  # batch-independent: the bfloat16 weights kept for the backward
    rows = []
    for devices, fsdps in LAYOUTS.items():
        global_batch = max(preset.batch_size, devices)
        global_batch = -(-global_batch // devices) * devices
        local = global_batch // devices
        for fsdp in fsdps:
            parts = state_bytes_per_device(state, devices // fsdp, fsdp)
            state_total = sum(v for k, v in parts.items() if k != "gradients")
            flops_device = per_example * local + per_step / fsdp
            row = {
                "devices": devices,
                "mesh": {"data": devices // fsdp, "fsdp": fsdp},
                "global_batch": global_batch,
                "batch_per_device": local,
                "bytes_per_device": parts,
                "state_bytes_per_device": state_total,
                "activation_bytes_per_device": act[False] * local,
                "activation_bytes_per_device_remat": act[True] * local,
                "weight_copies_bytes": weight_copies,
                "total_bytes_per_device": state_total + parts["gradients"] + act[False] * local + weight_copies,
                "total_bytes_per_device_remat": state_total + parts["gradients"] + act[True] * local + weight_copies,
                "flops_per_device_per_step": flops_device,
            }
            row["step_seconds"] = {n: flops_device / (peak * mfu) for n, (peak, _, _) in ACCELERATORS.items()}
            row["fits"] = [n for n, (_, mem, _) in ACCELERATORS.items() if row["total_bytes_per_device"] <= mem]
            row["fits_remat"] = [
                n for n, (_, mem, _) in ACCELERATORS.items() if row["total_bytes_per_device_remat"] <= mem
            ]
            rows.append(row)
    return {
        "preset": preset.name,
        "network": preset.network.__name__,
        "data_shape": list(preset.data_shape),
        "num_parameters": num_params,
        "reference_parameters": preset.reference_params,
        "flops_per_example": per_example,
        "flops_per_step_fixed": per_step,
        "activation_bytes_per_example": act[False],
        "activation_bytes_per_example_remat": act[True],
        "preset_batch": preset.batch_size,
        "rows": rows,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _gib(x: float) -> str:
    return f"{x / 2**30:.2f}"


def table(results: list[dict], accelerator: str = "TPU v5p") -> str:
    """A Markdown table of the results (the one in docs/howto/devices.md)."""
    lines = [
        f"| preset | params | GFLOP/example | devices (data×fsdp) | batch/device | state GiB/device | "
        f"activations GiB/device (remat) | total GiB/device (remat) | step s on {accelerator} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for row in r["rows"]:
            m = row["mesh"]
            lines.append(
                f"| `{r['preset']}` | {r['num_parameters'] / 1e6:.1f}M | {r['flops_per_example'] / 1e9:.1f} | "
                f"{row['devices']} ({m['data']}×{m['fsdp']}) | {row['batch_per_device']} | "
                f"{_gib(row['state_bytes_per_device'])} | {_gib(row['activation_bytes_per_device'])} "
                f"({_gib(row['activation_bytes_per_device_remat'])}) | {_gib(row['total_bytes_per_device'])} "
                f"({_gib(row['total_bytes_per_device_remat'])}) | {row['step_seconds'][accelerator]:.3f} |"
            )
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of the capacity plan."""

    out: pathlib.Path = pathlib.Path(__file__).parent / "results"
    """Output folder (capacity.json)."""
    mfu: float = 0.4
    """Stated model-FLOP utilisation in (0, 1]."""
    presets: tuple[str, ...] = tuple(PRESETS)
    """Preset names (experiments/_presets.py)."""
    debug: bool = False
    """Show the full traceback of an error instead of one line."""


def main(args: Config) -> dict:
    """Analyse every preset on every mesh; write and print one JSON line and a table."""
    _cli.in_range(args, "mfu", 0.0, 1.0, closed="(]")
    _cli.folder(args, "out")
    with _cli.flags(args, "presets"):
        presets = [get_preset(n) for n in args.presets]  # an unknown name is a ValueError listing the known ones
    results = []
    for p in presets:
        print(f"== {p.name}", file=sys.stderr, flush=True)
        results.append(analyse(p, args.mfu))
    accelerators = {n: {"peak_bf16_flops": f, "memory_bytes": m, "source": s} for n, (f, m, s) in ACCELERATORS.items()}
    out = {
        "benchmark": "capacity",
        "mfu": args.mfu,
        "compute": "bfloat16 (float32 parameters, AdamW, EMA and post-hoc EMAs 0.05/0.10)",
        "accelerators": accelerators,
        "notes": "bytes per device from vd.train.Sharding's rule on an AbstractMesh (analytic); activations: "
        "jax.vjp residuals from jax.eval_shape; FLOPs: XLA cost analysis of the lowered step; no communication.",
        "results": results,
    }  # fmt: skip
    line = json.dumps(out)
    print(line)
    args.out.mkdir(parents=True, exist_ok=True)
    vd.train.atomic_write_bytes(args.out / "capacity.json", (line + "\n").encode())
    print(table(results), file=sys.stderr)
    return out


if __name__ == "__main__":
    _cli.run(main, Config, description=__doc__)
