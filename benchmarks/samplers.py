"""Sampler quality vs NFE on Gaussian mixtures with the exact denoiser; prints one JSON line.

For a 2-D and a 16-D mixture and each sampler at NFE budgets 8..256: sliced Wasserstein-2 (many
random projections) against a fresh exact sample, the error of the mean and of the covariance against
the closed form, the NFE actually used, and the wall time per sample (compiled, second run). The
finite-sample floor is the sliced W2 between two independent exact samples of the same size.
Writes `samplers.json` and `samplers.png` (atomically) to `--out` (default benchmarks/results/).

    python benchmarks/samplers.py [--out DIR] [--num-samples 10000] [--quick]
"""

import dataclasses
import functools as ft
import json
import pathlib
import sys
import time

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import vdmpp as vd
from tqdm import tqdm


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from experiments import _cli  # noqa: E402


BUDGETS = (8, 16, 32, 64, 128, 256)
SCHEDULE = vd.schedules.Cosine(lam_min=-15.0, lam_max=15.0)


def mixture(dim: int) -> vd.oracle.GaussianMixture:
    """A fixed mixture: 3 components in 2-D, 4 in 16-D, separated means, unequal scales and weights."""
    if dim == 2:
        return vd.oracle.GaussianMixture(
            jnp.array([[-2.0, 0.5], [1.5, 1.0], [0.5, -2.0]]), jnp.array([0.3, 0.5, 0.2]), jnp.array([0.2, 0.5, 0.3])
        )
    rng = np.random.default_rng(dim)
    k = 4
    means = rng.normal(size=(k, dim)) * 1.2
    scales = rng.uniform(0.2, 0.6, size=(k, dim))
    weights = rng.uniform(0.5, 1.5, size=k)
    return vd.oracle.GaussianMixture(
        jnp.asarray(means, jnp.float32), jnp.asarray(scales, jnp.float32), jnp.asarray(weights, jnp.float32)
    )


def sliced_w2(a, b, num_proj: int = 1000, seed: int = 0) -> float:
    """Sliced W2 between equal-size samples: exact 1-D W2 (sorted) averaged over random directions."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    theta = np.random.default_rng(seed).normal(size=(num_proj, a.shape[1]))
    theta /= np.linalg.norm(theta, axis=1, keepdims=True)
    pa, pb = np.sort(a @ theta.T, axis=0), np.sort(b @ theta.T, axis=0)
    return float(np.sqrt(np.mean((pa - pb) ** 2)))


def samplers():
    """name -> (budget -> sampler partial), each using at most `budget` network evaluations."""
    pid = lambda rtol: dfx.PIDController(rtol=rtol, atol=rtol)
    return {
        "ancestral": lambda b: ft.partial(vd.samplers.ancestral, schedule=SCHEDULE, num_steps=b - 1),
        "edm": lambda b: ft.partial(vd.samplers.edm, num_steps=(b + 1) // 2),
        "edm_churn": lambda b: ft.partial(vd.samplers.edm, num_steps=(b + 1) // 2, s_churn=40.0),
        "pf_heun": lambda b: ft.partial(
            vd.samplers.probability_flow,
            schedule=SCHEDULE,
            solver=dfx.Heun(),
            stepsize_controller=dfx.ConstantStepSize(),
            dt0=-2.0 / b,
        ),
        # adaptive: the budget picks a tolerance; the NFE actually used is reported
        "pf_tsit5_adaptive": lambda b: ft.partial(
            vd.samplers.probability_flow,
            schedule=SCHEDULE,
            stepsize_controller=pid({8: 1e-1, 16: 3e-2, 32: 1e-2, 64: 1e-3, 128: 1e-4, 256: 1e-5}.get(b, 1e-3)),
        ),
        "sde_euler": lambda b: ft.partial(vd.samplers.reverse_sde, schedule=SCHEDULE, num_steps=b),
    }


@eqx.filter_jit
def _run(sampler, denoiser, shape, key):
    return sampler(denoiser, shape, key=key)


def evaluate(dim: int, n: int, budgets, num_proj: int) -> dict:
    g = mixture(dim)
    ref = g.sample(jr.key(1), n)
    mean, cov = np.asarray(g.mean()), np.asarray(g.covariance())
    # finite-sample floors: the same metrics for independent exact samples of the same size
    exact = [np.asarray(g.sample(jr.key(10 + i), n), np.float64) for i in range(5)]
    floors = [sliced_w2(e, ref, num_proj) for e in exact]
    out = {
        "dim": dim,
        "num_samples": n,
        "floor_sliced_w2": float(np.mean(floors)),
        "floor_sliced_w2_std": float(np.std(floors)),
        "floor_mean_err": float(np.mean([np.linalg.norm(e.mean(0) - mean) for e in exact])),
        "floor_cov_err": float(np.mean([np.linalg.norm(np.cov(e.T) - cov) for e in exact])),
        "samplers": {},
    }
    for name, make in tqdm(samplers().items(), desc=f"{dim}-D", leave=False):
        rows = []
        for b in budgets:
            sampler = make(b)
            shape = (n, dim)
            x, nfe = _run(sampler, g.denoiser, shape, jr.key(3))  # compile + run
            jax.block_until_ready(x)
            t = time.perf_counter()
            x, nfe = _run(sampler, g.denoiser, shape, jr.key(4))
            jax.block_until_ready(x)
            wall = time.perf_counter() - t
            xs = np.asarray(x, np.float64)
            finite = bool(np.all(np.isfinite(xs)))
            rows.append(
                {
                    "budget": b,
                    "nfe": int(nfe),
                    "sliced_w2": sliced_w2(xs, ref, num_proj) if finite else float("nan"),
                    "mean_err": float(np.linalg.norm(xs.mean(0) - mean)) if finite else float("nan"),
                    "cov_err": float(np.linalg.norm(np.cov(xs.T) - cov)) if finite else float("nan"),
                    "us_per_sample": 1e6 * wall / n,
                }
            )
        out["samplers"][name] = rows
    return out


def plot(results: list[dict], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5))
    for ax, res in zip(np.atleast_1d(axes), results):
        for name, rows in res["samplers"].items():
            rows = sorted(rows, key=lambda r: r["nfe"])  # adaptive solvers: NFE is not monotone in the budget
            ax.plot([r["nfe"] for r in rows], [r["sliced_w2"] for r in rows], "o-", label=name)
        ax.axhline(res["floor_sliced_w2"], color="k", ls="--", lw=1, label="finite-sample floor (mean of 5)")
        ax.set(xscale="log", yscale="log", xlabel="NFE", ylabel="sliced W2 to exact sample")
        ax.set_title(f"{res['dim']}-D Gaussian mixture, exact denoiser, n={res['num_samples']}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    vd.train.save_figure(fig, path)


@dataclasses.dataclass(frozen=True)
class Config:
    """Benchmark settings."""

    out: pathlib.Path = pathlib.Path(__file__).parent / "results"
    """Output folder (samplers.json, samplers.png)."""
    num_samples: int = 4000
    num_proj: int = 256
    """Random projections of the sliced W2."""
    quick: bool = False
    """Budgets 8, 32, 128 only."""
    debug: bool = False
    """Show the full traceback of an error instead of one line."""


def validate(cfg: Config) -> None:
    """Check the settings before anything runs (`ConfigError` naming the flag)."""
    _cli.at_least(cfg, 2, "num_samples", hint=" (a covariance needs two samples)")
    _cli.at_least(cfg, 1, "num_proj")
    if cfg.out.exists() and not cfg.out.is_dir():
        raise _cli.ConfigError(f"`--out` {cfg.out} is a file, not a folder; choose another path.")


def main(cfg: Config) -> dict:
    """Run the benchmark, write JSON + PNG and print the JSON line."""
    validate(cfg)
    budgets = (8, 32, 128) if cfg.quick else BUDGETS
    t0 = time.perf_counter()
    results = [evaluate(d, cfg.num_samples, budgets, cfg.num_proj) for d in (2, 16)]
    summary = {
        "benchmark": "samplers",
        "device": jax.devices()[0].platform,
        "budgets": list(budgets),
        "results": results,
        "total_seconds": time.perf_counter() - t0,
    }
    line = json.dumps(summary)
    cfg.out.mkdir(parents=True, exist_ok=True)
    vd.train.atomic_write_bytes(cfg.out / "samplers.json", (line + "\n").encode())
    plot(results, cfg.out / "samplers.png")
    print(line)
    return summary


if __name__ == "__main__":
    _cli.run(main, Config, description=__doc__)
