"""Sampler quality against network calls on Gaussian mixtures with the exact denoiser; prints one JSON line.

For a 2-D and a 16-D mixture, every sampler of `vd.samplers` on every grid (uniform in the schedule's
time, uniform in log-SNR, EDM's rho-grid) at call budgets 4..256: the sliced Wasserstein-2 distance
(random projections) to a fresh exact sample, and the calls each needs to come within 1.5x of the
finite-sample floor (the sliced W2 between independent exact samples of the same size, from several
pairs: mean and spread). Also the wall time of diffrax's fixed-step Euler (`ProbabilityFlow`) divided by
the same Euler steps as a plain `lax.scan` (target <= 1.2), measured in this run.

    python benchmarks/samplers.py            # default: the 2-D mixture, 2000 samples, a subset of the grids
    python benchmarks/samplers.py --full     # both mixtures, 10000 samples, every sampler on every grid

Writes samplers_quick.{json,png} (default) or samplers.{json,png} (--full) to --out, atomically.
"""

import dataclasses
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


S = vd.samplers
BUDGETS = (4, 8, 16, 32, 64, 128, 256)
SCHEDULE = vd.schedules.Cosine(lam_min=-15.0, lam_max=15.0)
GRIDS = {"uniform_t": S.UniformTime(), "uniform_lambda": S.UniformLogSNR(), "edm_rho7": S.EDMGrid(7.0)}
QUICK_GRIDS = {"uniform_lambda": ("ddim", "dpmpp_2m", "dpmpp_3m"), "edm_rho7": ("edm",)}  # default: + uniform_t


@dataclasses.dataclass(frozen=True)
class Config:
    """Benchmark settings."""

    full: bool = False
    """The full run: both mixtures, 10000 samples, 1000 projections, 8 floor pairs, every sampler on every grid
    (default: the 2-D mixture, 2000 samples, 256 projections, 5 pairs; every sampler on uniform_t and those in
    QUICK_GRIDS on the other grids)."""
    out: pathlib.Path = pathlib.Path(__file__).parent / "results"
    """Directory for the JSON and PNG."""
    seed: int = 0
    debug: bool = False
    """Show the full traceback of an error instead of one line."""


def validate(cfg: Config) -> None:
    """Check the settings before anything runs (`ConfigError` naming the flag)."""
    _cli.at_least(cfg, 0, "seed")
    _cli.folder(cfg, "out")


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


def sliced_w2(a, b, theta: np.ndarray) -> float:
    """Sliced W2 between equal-size samples: exact 1-D W2 (sorted) averaged over the directions `theta`."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    pa, pb = np.sort(a @ theta.T, axis=0), np.sort(b @ theta.T, axis=0)
    return float(np.sqrt(np.mean((pa - pb) ** 2)))


def samplers(grid: S.AbstractGrid) -> dict[str, S.AbstractSampler]:
    """Every sampler on `grid` (ending at lam_max; EDM ends with its denoising step, as published)."""
    return {
        "ancestral": S.Ancestral(grid=grid),
        "ddim": S.DDIM(grid=grid),
        "dpmpp_2m": S.DPMSolverPP(2, grid=grid),
        "dpmpp_3m": S.DPMSolverPP(3, grid=grid),
        "dpmpp_2m_sde": S.DPMSolverPP(2, eta=1.0, grid=grid),
        "dpmpp_3m_sde": S.DPMSolverPP(3, eta=1.0, grid=grid),
        "edm": S.EDM(grid=grid),
        "edm_churn": S.EDM(grid=grid, s_churn=40.0),
        "pf_heun": S.ProbabilityFlow(dfx.Heun(), grid=grid),
        "sde_euler": S.ReverseSDE(dfx.Euler(), grid=grid),
    }


def steps_for(sampler: S.AbstractSampler, budget: int) -> int | None:
    """The most steps whose calls fit the budget (None if even the minimum does not)."""
    best = None
    for n in range(1, budget + 1):
        try:
            if sampler.num_evals(n) <= budget:
                best = n
        except ValueError:  # fewer steps than a multistep solver's order
            continue
    return best


@eqx.filter_jit
def _run(sampler, denoiser, shape, num_steps, key):
    return S.sample(sampler, denoiser, shape, key=key, schedule=SCHEDULE, num_steps=num_steps)


def calls_to_floor(rows: list[dict], threshold: float) -> int | None:
    """The fewest calls from which every larger budget stays within `threshold` (None: never)."""
    best = None
    for row in sorted(rows, key=lambda r: -r["nfe"]):
        if not row["sliced_w2"] <= threshold:
            break
        best = row["nfe"]
    return best


def runs(full: bool):
    """The (grid name, sampler name, sampler) triples of a run."""
    for gname, grid in GRIDS.items():
        for sname, sampler in samplers(grid).items():
            if full or gname == "uniform_t" or sname in QUICK_GRIDS.get(gname, ()):
                yield gname, sname, sampler


def evaluate(dim: int, cfg: Config, n: int, num_proj: int, pairs: int, bar) -> dict:
    g = mixture(dim)
    theta = np.random.default_rng(cfg.seed).normal(size=(num_proj, dim))
    theta /= np.linalg.norm(theta, axis=1, keepdims=True)
    key = jr.key(cfg.seed)
    ref = np.asarray(g.sample(jr.fold_in(key, 1), n))
    floors = [
        sliced_w2(g.sample(jr.fold_in(key, 100 + 2 * i), n), g.sample(jr.fold_in(key, 101 + 2 * i), n), theta)
        for i in range(pairs)
    ]
    floor, spread = float(np.mean(floors)), float(np.std(floors, ddof=1))
    out: dict = {"dim": dim, "num_samples": n, "floor_sliced_w2": floor, "floor_sliced_w2_std": spread}
    out["floor_pairs"] = floors
    out["threshold"] = 1.5 * floor
    out["results"], out["calls_to_floor"] = {}, {}
    for gname, sname, sampler in runs(cfg.full):
        rows = []
        for b in BUDGETS:
            steps = steps_for(sampler, b)
            if steps is None:
                continue
            x, nfe = _run(sampler, g.denoiser, (n, dim), steps, jr.fold_in(key, 2))
            xs = np.asarray(x, np.float64)
            sw = sliced_w2(xs, ref, theta) if np.all(np.isfinite(xs)) else float("inf")
            rows.append({"budget": b, "num_steps": steps, "nfe": nfe, "sliced_w2": sw})
            bar.update()
        out["results"].setdefault(sname, {})[gname] = rows
        out["calls_to_floor"].setdefault(sname, {})[gname] = calls_to_floor(rows, 1.5 * floor)
    return out


def _timed(fns, arg, repeats: int) -> list[float]:
    """The fastest of `repeats` interleaved runs of each compiled function (robust to other load)."""
    for fn in fns:
        jax.block_until_ready(fn(arg))  # compile
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            jax.block_until_ready(fn(arg))
            best[i] = min(best[i], time.perf_counter() - t)
    return best


def diffrax_over_scan(cfg: Config, n: int, num_steps: int = 64, repeats: int = 21) -> dict:
    """Wall time of `ProbabilityFlow(dfx.Euler())` over the same Euler steps in a plain `lax.scan`."""
    g = mixture(16)
    z = jr.normal(jr.key(cfg.seed), (n, 16))
    eps_fn = jax.vmap(g.denoiser, in_axes=(0, None))
    sampler = S.ProbabilityFlow(dfx.Euler(), grid=S.UniformTime())

    @jax.jit
    def via_diffrax(z):
        x, _ = S.sample(sampler, g.denoiser, z.shape, key=jr.key(0), schedule=SCHEDULE, num_steps=num_steps, z_init=z)
        return x

    @jax.jit
    def via_scan(z):
        ts = SCHEDULE.t(S.UniformTime().lams(SCHEDULE, num_steps, z.dtype))

        def step(z, tt):
            t, t_next = tt
            lam = SCHEDULE.lam(t)
            sigma = jnp.sqrt(jax.nn.sigmoid(-lam))  # probability-flow drift (THEORY §7)
            drift = 0.5 * SCHEDULE.dlam_dt(t) * (sigma**2 * z - sigma * eps_fn(z, lam))
            return z + (t_next - t) * drift, None

        return jax.lax.scan(step, z, (ts[:-1], ts[1:]))[0]

    err = float(jnp.max(jnp.abs(via_diffrax(z) - via_scan(z))))
    t_dfx, t_scan = _timed([via_diffrax, via_scan], z, repeats)
    return {
        "num_steps": num_steps,
        "num_samples": n,
        "seconds_diffrax": t_dfx,
        "seconds_scan": t_scan,
        "ratio": t_dfx / t_scan,
        "max_abs_difference": err,
    }


def plot(results: list[dict], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), len(GRIDS), figsize=(5.5 * len(GRIDS), 4.5 * len(results)), squeeze=False)
    for row, res in zip(axes, results):
        for ax, gname in zip(row, GRIDS):
            for sname, per_grid in res["results"].items():
                if gname not in per_grid:
                    continue
                rows = per_grid[gname]
                ax.plot([r["nfe"] for r in rows], [r["sliced_w2"] for r in rows], "o-", ms=3, label=sname)
            lo = res["floor_sliced_w2"] - res["floor_sliced_w2_std"]
            ax.axhspan(lo, res["floor_sliced_w2"] + res["floor_sliced_w2_std"], color="k", alpha=0.12)
            ax.axhline(res["threshold"], color="k", ls="--", lw=1, label="1.5 x floor")
            ax.set(xscale="log", yscale="log", xlabel="network calls", ylabel="sliced W2 to an exact sample")
            ax.set_ylim(0.5 * lo, 10)
            ax.set_title(f"{res['dim']}-D mixture, grid {gname}, n={res['num_samples']}", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
    axes[0, 0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    vd.train.save_figure(fig, path)


def main(cfg: Config) -> dict:
    """Run the benchmark, write JSON + PNG and print the JSON line."""
    validate(cfg)
    n, num_proj, pairs = (10000, 1000, 8) if cfg.full else (2000, 256, 5)
    cfg.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    dims = (2, 16) if cfg.full else (2,)
    total = len(dims) * sum(1 for _, _, s in runs(cfg.full) for b in BUDGETS if steps_for(s, b))
    with tqdm(total=total, desc="sampler runs") as bar:
        results = [evaluate(d, cfg, n, num_proj, pairs, bar) for d in dims]
    ratio = diffrax_over_scan(cfg, n)
    summary = {
        "benchmark": "samplers",
        "device": jax.devices()[0].platform,
        "full": cfg.full,
        "schedule": repr(SCHEDULE),
        "budgets": list(BUDGETS),
        "diffrax_over_scan": ratio,
        "calls_to_floor": {str(r["dim"]): r["calls_to_floor"] for r in results},
        "floors": {str(r["dim"]): [r["floor_sliced_w2"], r["floor_sliced_w2_std"]] for r in results},
        "results": results,
        "total_seconds": time.perf_counter() - t0,
    }
    name = "samplers" if cfg.full else "samplers_quick"
    vd.train.atomic_write_json(cfg.out / f"{name}.json", summary)
    plot(results, cfg.out / f"{name}.png")
    for r in results:
        floor = f"{r['floor_sliced_w2']:.4f} ± {r['floor_sliced_w2_std']:.4f}"
        tqdm.write(f"{r['dim']}-D: floor {floor}; calls to 1.5x floor:")
        for sname, per_grid in r["calls_to_floor"].items():
            tqdm.write(f"  {sname:14s} " + "  ".join(f"{g}={c if c else '>256'}" for g, c in per_grid.items()))
    tqdm.write(f"diffrax / scan wall time: {ratio['ratio']:.3f} (target <= 1.2); {summary['total_seconds']:.0f} s")
    print(json.dumps({k: v for k, v in summary.items() if k != "results"}))
    return summary


if __name__ == "__main__":
    _cli.run(main, Config, description=__doc__)
