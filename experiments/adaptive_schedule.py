"""The adaptive noise schedule (K&G App. F) learned for a fixed denoiser on a small data set.

    PYTHONPATH=. python experiments/adaptive_schedule.py --workdir runs/adaptive_schedule
    PYTHONPATH=. python experiments/adaptive_schedule.py --workdir runs/adaptive_trained --denoiser trained

For each weighting (Sigmoid(2), ELBO, EDM-monotonic) the update loop runs with a frozen denoiser on
64 scikit-learn digits (scaled to [-1, 1]): `--denoiser oracle` (default) the exact (Bayes-optimal)
denoiser of those 64 digits; `--denoiser trained` a `vd.nn.MLP` first trained for `train_steps` Adam
steps on all 1,797 distinct digits. Then the learned p(λ) is plotted beside the cosine and EDM-training
densities (truncated to the same range) and the target w(λ)E‖ε − ε̂‖² (normalised to a density;
estimated independently, λ uniform in each bin). The second row shows the importance-weighted error
(w/p)·E‖ε − ε̂‖² per bin, relative to its mean: flat means the schedule has adapted.

Writes WORKDIR/adaptive_schedule.png and WORKDIR/adaptive_schedule.json (atomically). ~1 minute on a CPU
(plus ~20 s of training with `--denoiser trained`).
"""

import dataclasses
import math
import pathlib
import sys
import time
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import matplotlib


matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import sklearn.datasets
import tqdm
import vdmpp as vd


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from experiments import _cli  # noqa: E402


WeightingName = Literal["sigmoid2", "elbo", "edm_monotonic"]


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of the experiment."""

    workdir: pathlib.Path = pathlib.Path("runs/adaptive_schedule")
    """Output folder."""
    num_points: int = 64
    """Number of digits (the data set the oracle denoiser is exact for)."""
    denoiser: Literal["oracle", "trained"] = "oracle"
    """oracle: `vd.oracle.EmpiricalDenoiser` of the digits; trained: a `vd.nn.MLP` trained on all digits."""
    train_steps: int = 2000
    """Adam steps for `--denoiser trained`."""
    lam_min: float = -10.0
    lam_max: float = 8.0
    num_bins: int = 100
    decay: float = 0.99
    """EMA decay per hit (the paper's 0.999 needs ~10x more hits per bin to converge)."""
    num_steps: int = 2000
    """Updates of the schedule in all (split as evenly as possible over the chunks)."""
    batch_size: int = 512
    chunks: int = 30
    """Progress-bar chunks (each a jitted scan of about num_steps/chunks updates)."""
    reference_samples: int = 1024
    """Monte Carlo samples per bin for the independent target estimate."""
    weightings: tuple[WeightingName, ...] = ("sigmoid2", "elbo", "edm_monotonic")
    with_moment2: bool = True
    """Also learn the variance-optimal `moment=2` schedule (p ∝ sqrt(E[v²]) per bin)."""
    seed: int = 0
    debug: bool = False
    """Show the full traceback of an error instead of one line."""


NUM_DIGITS = 1797
"""Distinct scikit-learn digits (the most `--num-points` can take)."""


def validate(cfg: Config) -> None:
    """Check every setting before anything is computed or written (`ConfigError` naming the flag)."""
    _cli.at_least(cfg, 1, "num_points", "train_steps", "num_bins", "num_steps", "batch_size", "chunks")
    _cli.at_least(cfg, 1, "reference_samples")
    _cli.at_least(cfg, 0, "seed")
    if cfg.num_points > NUM_DIGITS:
        raise _cli.ConfigError(f"`--num-points` must be at most {NUM_DIGITS} (distinct digits); got {cfg.num_points}.")
    if cfg.chunks > cfg.num_steps:
        raise _cli.ConfigError(f"`--chunks` ({cfg.chunks}) must not exceed `--num-steps` ({cfg.num_steps}).")
    if not cfg.weightings:
        raise _cli.ConfigError("`--weightings` must name at least one weighting, e.g. --weightings sigmoid2 elbo.")
    _cli.folder(cfg, "workdir")
    with _cli.flags(cfg, "lam_min", "lam_max", "num_bins", "decay"):
        schedule = vd.adaptive.AdaptiveSchedule(cfg.lam_min, cfg.lam_max, num_bins=cfg.num_bins, decay=cfg.decay)
        vd.schedules.check_numerics(schedule)
    for name in cfg.weightings:
        with _cli.flags(cfg, "weightings", "lam_min", "lam_max"):
            vd.weighting.check_on_range(build_weighting(name), cfg.lam_min, cfg.lam_max)


def chunk_sizes(num_steps: int, chunks: int) -> list[int]:
    """`num_steps` split into `chunks` sizes differing by at most one (they sum to `num_steps` exactly)."""
    q, r = divmod(num_steps, chunks)
    return [q + 1] * r + [q] * (chunks - r)


def build_weighting(name: WeightingName) -> vd.weighting.AbstractWeighting:
    """The one place names become weighting objects."""
    return {
        "sigmoid2": vd.weighting.Sigmoid(k=2.0),
        "elbo": vd.weighting.ELBO(),
        "edm_monotonic": vd.weighting.EDMMonotonic(),
    }[name]


def train_denoiser(*, steps: int, lam_min: float, lam_max: float, key, batch_size: int = 256, lr: float = 2e-3):
    """A `vd.nn.MLP` ε-denoiser trained on all 1,797 distinct digits with `vd.train.make_train_step`, then frozen.

    The loss is Sigmoid(2) under the cosine schedule on [lam_min, lam_max] (`vd.train.GaussianLoss`), the
    optimiser `vd.train.make_optimizer` (Adam, warmup + cosine decay). Returns the EMA (decay 0.99) network as a
    `(z, lam) -> eps_hat` denoiser (`vd.nn.as_denoiser`). ~20 s on a CPU for 2000 steps.
    """
    digits = np.unique(sklearn.datasets.load_digits().data.astype(np.uint8), axis=0)  # levels 0..16
    mkey, skey, bkey = jr.split(key, 3)
    model = vd.nn.MLP(digits.shape[1], width=256, depth=3, emb_dim=64, lam_min=lam_min, lam_max=lam_max, key=mkey)
    schedule = vd.schedules.Cosine(lam_min=lam_min, lam_max=lam_max)
    loss = vd.train.GaussianLoss(vd.weighting.Sigmoid(k=2.0), schedule, num_levels=17)
    optimizer = vd.train.make_optimizer(lr, 100, steps)
    state = vd.train.init_train_state(model, optimizer, loss, key=skey)
    train_step = vd.train.make_train_step(loss, optimizer, ema_decay=0.99)
    data = jnp.asarray(digits)
    bar = tqdm.trange(steps, desc="training the MLP denoiser")
    for i in bar:
        batch = {"x": data[jr.randint(jr.fold_in(bkey, i), (batch_size,), 0, data.shape[0])]}
        state, metrics = train_step(state, batch)
        if i % 200 == 0 or i == steps - 1:
            bar.set_postfix(loss=f"{float(metrics['loss']):.3f}")
    return vd.nn.as_denoiser(state.ema_model())


def load_data(num_points: int, seed: int) -> jax.Array:
    """`num_points` distinct scikit-learn digits (8x8, 17 levels), flattened and scaled to (-1, 1)."""
    digits = sklearn.datasets.load_digits().data.astype(np.int32)  # ships with scikit-learn, no download
    _, unique = np.unique(digits, axis=0, return_index=True)
    rows = np.random.default_rng(seed).choice(np.sort(unique), size=num_points, replace=False)
    return vd.losses.uint8_to_float(jnp.asarray(digits[rows]), num_levels=17)


@eqx.filter_jit
def bin_average_target(denoiser, data, weighting, edges, key, samples: int):
    """Per bin: mean, its s.e., and mean square of v = w(λ)‖ε − ε̂‖², λ ~ U(bin), x ~ U(data), ε ~ N(0, I)."""

    def one_bin(args):
        lo, hi, k = args
        k1, k2, k3 = jr.split(k, 3)
        lam = lo + (hi - lo) * jr.uniform(k1, (samples,))
        x = data[jr.randint(k2, (samples,), 0, data.shape[0])]
        eps = jr.normal(k3, x.shape)
        alpha, sigma = vd.process.vp_alpha_sigma(lam)
        z = alpha[:, None] * x + sigma[:, None] * eps
        err = jnp.sum((eps - jax.vmap(denoiser)(z, lam)) ** 2, axis=-1)
        v = weighting(lam) * err
        return jnp.mean(v), jnp.std(v) / math.sqrt(samples), jnp.mean(v**2)

    keys = jr.split(key, edges.shape[0] - 1)
    return jax.lax.map(one_bin, (edges[:-1], edges[1:], keys))


def weighted_rel_std(values: np.ndarray, weights: np.ndarray) -> float:
    """Relative standard deviation of `values` under the probability weights `weights`."""
    mean = np.average(values, weights=weights)
    return float(np.sqrt(np.average((values / mean - 1.0) ** 2, weights=weights)))


def main(cfg: Config) -> dict:
    """Run the experiment; return the JSON summary."""
    validate(cfg)
    start = time.time()
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    key = jr.key(cfg.seed)
    data = load_data(cfg.num_points, cfg.seed)
    if cfg.denoiser == "oracle":
        denoiser = vd.oracle.EmpiricalDenoiser(data)
    else:
        tkey = jr.fold_in(key, 998)
        denoiser = train_denoiser(steps=cfg.train_steps, lam_min=cfg.lam_min, lam_max=cfg.lam_max, key=tkey)
    a = vd.adaptive.AdaptiveSchedule(cfg.lam_min, cfg.lam_max, num_bins=cfg.num_bins, decay=cfg.decay)
    a2 = vd.adaptive.AdaptiveSchedule(cfg.lam_min, cfg.lam_max, num_bins=cfg.num_bins, decay=cfg.decay, moment=2)
    edges = a.bin_edges()
    mids = 0.5 * (edges[1:] + edges[:-1])
    width = (cfg.lam_max - cfg.lam_min) / cfg.num_bins
    cosine = vd.schedules.Cosine(lam_min=cfg.lam_min, lam_max=cfg.lam_max)
    edm = vd.schedules.EDMTraining(lam_min=cfg.lam_min, lam_max=cfg.lam_max)
    grid = np.linspace(cfg.lam_min, cfg.lam_max, 801)
    sizes = chunk_sizes(cfg.num_steps, cfg.chunks)  # at most two sizes: at most two compilations

    results = {}
    for name in cfg.weightings:
        w = build_weighting(name)
        fit_key, ref_key = jr.split(jr.fold_in(key, len(results)))
        states = {}
        for sched in (a, a2) if cfg.with_moment2 else (a,):
            state = sched.init()
            for i, size in enumerate(tqdm.tqdm(sizes, desc=f"adapting ({name}, moment={sched.moment})")):
                state = vd.adaptive.calibrate(
                    sched,
                    state,
                    denoiser,
                    data,
                    weighting=w,
                    key=jr.fold_in(fit_key, 1000 * sched.moment + i),
                    num_steps=size,
                    batch_size=cfg.batch_size,
                )
            states[sched.moment] = state
        state = states[1]
        target, target_se, second = bin_average_target(
            denoiser, data, w, jnp.asarray(edges, jnp.float32), ref_key, cfg.reference_samples
        )
        target, target_se = np.asarray(target, np.float64), np.asarray(target_se, np.float64)
        root2 = np.sqrt(np.asarray(second, np.float64))
        p = np.asarray(a.density(state, jnp.asarray(mids, jnp.float32)), np.float64)
        flat = target / p  # (w/p) E||eps - eps_hat||^2, per bin
        # bins whose target is above the floor (where p can follow it); the rest sit at the floor
        active = target > a.floor * target.mean()
        results[name] = dict(
            ema=np.asarray(state.ema).tolist(),
            density=p.tolist(),
            target_density=(target / (target.sum() * width)).tolist(),
            target_rel_se=(target_se / np.maximum(target, 1e-300)).tolist(),
            flatness_rel_std_all_bins=float(flat.std() / flat.mean()),
            flatness_rel_std_active_bins=float(flat[active].std() / flat[active].mean()),
            # weighted by the learned bin masses: the spread that sets the importance sampler's variance
            flatness_rel_std_p_weighted=weighted_rel_std(flat, p),
            active_bins=int(active.sum()),
            loss_integral=float(0.5 * target.sum() * width),
        )
        if cfg.with_moment2:
            p2 = np.asarray(a2.density(states[2], jnp.asarray(mids, jnp.float32)), np.float64)
            flat2 = root2 / p2  # should be flat for moment=2
            results[name].update(
                density_moment2=p2.tolist(),
                sqrt_second_moment_density=(root2 / (root2.sum() * width)).tolist(),
                flatness2_rel_std_active_bins=float(flat2[active].std() / flat2[active].mean()),
                flatness2_rel_std_p_weighted=weighted_rel_std(flat2, p2),
            )
        print(
            f"{name}: (w/p)E||eps-eps_hat||^2 relative std over bins: {results[name]['flatness_rel_std_all_bins']:.3f} "
            f"(active bins: {results[name]['flatness_rel_std_active_bins']:.3f}, {int(active.sum())}/{cfg.num_bins}; "
            f"p-weighted: {results[name]['flatness_rel_std_p_weighted']:.3f})"
        )

    _cli.check_finite_results(results, "adaptive_schedule.py")
    fig, axes = plt.subplots(2, len(cfg.weightings), figsize=(5.2 * len(cfg.weightings), 7.5), squeeze=False)
    for j, name in enumerate(cfg.weightings):
        r = results[name]
        ax = axes[0, j]
        ax.stairs(r["density"], edges, label="adaptive p(λ) (learned)", color="C0", lw=2)
        ax.stairs(r["target_density"], edges, label="target w·E‖ε−ε̂‖² (normalised)", color="k", ls="--")
        if cfg.with_moment2:
            ax.stairs(r["density_moment2"], edges, label="adaptive, moment=2", color="C3", lw=1.5)
            ax.stairs(r["sqrt_second_moment_density"], edges, label="√E[v²] (normalised)", color="0.5", ls=":")
        ax.plot(grid, np.asarray(cosine.density(jnp.asarray(grid, jnp.float32))), label="cosine", color="C1")
        ax.plot(grid, np.asarray(edm.density(jnp.asarray(grid, jnp.float32))), label="EDM training", color="C2")
        ax.set_yscale("log")
        ax.set_ylim(1e-5, None)
        ax.set_xlabel("log-SNR λ")
        ax.set_ylabel("density p(λ)")
        ax.set_title(f"{name}: noise-level densities")
        ax.legend(fontsize=8, loc="lower center")
        ax = axes[1, j]
        flat = np.asarray(r["target_density"]) / np.asarray(r["density"])
        ax.stairs(flat / np.average(flat, weights=r["density"]), edges, color="C0", label="K&G: target / p")
        if cfg.with_moment2:
            flat2 = np.asarray(r["sqrt_second_moment_density"]) / np.asarray(r["density_moment2"])
            flat2 = flat2 / np.average(flat2, weights=r["density_moment2"])
            ax.stairs(flat2, edges, color="C3", label="moment=2: √E[v²] / p")
            ax.legend(fontsize=8, loc="upper left")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_ylim(0.0, 2.0)
        ax.set_xlabel("log-SNR λ")
        ax.set_ylabel("(w/p)·E‖ε−ε̂‖², relative to its p-mean")
        ax.set_title(
            f"rel. std: all bins {r['flatness_rel_std_all_bins']:.2f}, "
            f"active {r['flatness_rel_std_active_bins']:.2f}, p-weighted {r['flatness_rel_std_p_weighted']:.2f}",
            fontsize=10,
        )
    fig.suptitle(
        f"Adaptive schedule, {cfg.denoiser} denoiser on {cfg.num_points} digits; "
        f"{cfg.num_steps} steps × {cfg.batch_size}, decay {cfg.decay}, {cfg.num_bins} bins"
    )
    fig.tight_layout()
    png = cfg.workdir / "adaptive_schedule.png"
    vd.train.save_figure(fig, png)

    summary = dict(
        config={k: (str(v) if isinstance(v, pathlib.Path) else v) for k, v in dataclasses.asdict(cfg).items()},
        bin_edges=edges.tolist(),
        results=results,
        seconds=time.time() - start,
    )
    out = cfg.workdir / "adaptive_schedule.json"
    vd.train.atomic_write_json(out, summary)
    print(f"wrote {png} and {out} in {summary['seconds']:.0f} s")
    return summary


if __name__ == "__main__":
    _cli.run(main, Config, description=__doc__)
