"""Variance of the per-example Monte Carlo loss estimate: converged adaptive schedule vs. cosine.

    PYTHONPATH=. python benchmarks/adaptive_variance.py        # prints ONE JSON line on stdout

For the ELBO, Sigmoid(2) and EDM-monotonic weightings and four fixed denoisers, each on its data set:

- `oracle`: the Bayes-optimal `EmpiricalDenoiser` of 32 uniform points in [-1, 1]^4 (the data set of the
  flatness test in tests/test_adaptive.py);
- `oracle_digits`: the `EmpiricalDenoiser` of 64 scikit-learn digits (64-d) — a hard case for K&G's rule:
  its error is heavy-tailed where the posterior collapses onto one digit (see docs/concepts/adaptive_schedule.md);
- `mlp_untrained`: a small untrained `eqx.nn.MLP`, on the 64 digits;
- `mlp_trained`: a `vd.nn.MLP` trained for a few thousand steps on all digits
  (`experiments.adaptive_schedule.train_denoiser`), on the 64 digits;

the adaptive schedule is first calibrated on that denoiser (`vdmpp.adaptive.calibrate`: the training-time
update loop with the model frozen), both with K&G's rule (`moment=1`, p ∝ E[v] per bin) and the
variance-optimal one (`moment=2`, p ∝ sqrt(E[v²]) per bin), v = w(λ)‖ε − ε̂‖².

The one-sample estimate under a schedule with density p is ℓ = ½ v/p(λ), λ ~ p; its variance given x is
Var_p[ℓ | x] = ∫ E_ε[v² | x, λ] / (4 p(λ)) dλ − L(x)², with L(x) the (schedule-independent) loss. Both
terms are computed by stratified Monte Carlo in λ (λ uniform in each bin, the same draws for every
schedule, so the comparison is paired). Sampling λ from p instead would almost never visit the bins where
an importance sampler goes wrong, and so would understate exactly the variance being measured.

Reported per denoiser and weighting (ratios < 1: the adaptive schedule has the smaller variance for the
same number of samples):

- `ratio`: E_x Var_p[ℓ | x] (adaptive, K&G rule) / the same for the cosine schedule truncated to the same
  [λ_min, λ_max] — the variance per unit of data;
- `ratio_total`: the same for the variance over (x, λ, ε) jointly;
- `ratio_moment2`, `ratio_total_moment2`: with the `moment=2` adaptive schedule;
- `ratio_fixed_point`, `ratio_fixed_point_moment2`: the same for the exact fixed points of the two rules,
  p_k ∝ mean of v (resp. sqrt of the mean of v²) over the stratified draws of bin k (same floor) — what the
  calibration converges to, without its EMA noise;
- `max_cv2`: the largest squared coefficient of variation E[v²]/E[v]² − 1 over the bins whose mean is above
  the floor (the two rules coincide when it is the same in every bin);
- the variances themselves and the loss E_x L(x).

Progress goes to stderr; about 4 minutes on a CPU.
"""

import dataclasses
import json
import pathlib
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import tqdm
import vdmpp as vd


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from experiments import _cli  # noqa: E402
from experiments.adaptive_schedule import load_data, NUM_DIGITS, train_denoiser  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Config:
    """Benchmark settings."""

    num_points: int = 64
    """Digits for the `oracle_digits` and network cases."""
    small_points: int = 32
    small_dim: int = 4
    """The `oracle` case: `small_points` uniform points in [-1, 1]^small_dim (the flatness test's data set)."""
    lam_min: float = -10.0
    lam_max: float = 8.0
    num_bins: int = 100
    decay: float = 0.997
    calibrate_steps: int = 1500
    batch_size: int = 512
    samples: int = 32
    """Draws of (λ, ε) per data row and bin for the stratified variance."""
    mlp_width: int = 128
    train_steps: int = 2000
    """Adam steps for the trained network (on all 1,797 distinct digits)."""
    seed: int = 0
    debug: bool = False
    """Show the full traceback of an error instead of one line."""


def validate(cfg: Config) -> None:
    """Check every setting before anything runs (`ConfigError` naming the flag)."""
    _cli.at_least(cfg, 1, "num_points", "small_points", "small_dim", "num_bins", "calibrate_steps", "batch_size")
    _cli.at_least(cfg, 1, "samples", "mlp_width", "train_steps")
    _cli.at_least(cfg, 0, "seed")
    if cfg.num_points > NUM_DIGITS:
        raise _cli.ConfigError(f"`--num-points` must be at most {NUM_DIGITS} (distinct digits); got {cfg.num_points}.")
    with _cli.flags(cfg, "lam_min", "lam_max", "num_bins", "decay"):
        vd.schedules.check_numerics(
            vd.adaptive.AdaptiveSchedule(cfg.lam_min, cfg.lam_max, num_bins=cfg.num_bins, decay=cfg.decay)
        )


class MLPDenoiser(eqx.Module):
    """A small untrained network ε̂(z, λ) = MLP([z, λ/10])."""

    mlp: eqx.nn.MLP

    def __init__(self, dim: int, width: int, *, key):
        self.mlp = eqx.nn.MLP(dim + 1, dim, width, 2, activation=jax.nn.silu, key=key)

    def __call__(self, z, lam):
        return self.mlp(jnp.concatenate([z, (lam / 10.0)[None]]))


@eqx.filter_jit
def stratified_draws(denoiser, data, weighting, edges, key, samples: int):
    """For each row and bin, `samples` draws of λ ~ U(bin) and v = w(λ)‖ε − ε̂‖²: shapes (rows, bins, samples)."""

    def one_bin(args):
        lo, hi, k = args
        lkey, ekey = jr.split(k)
        lam = lo + (hi - lo) * jr.uniform(lkey, (data.shape[0], samples))
        eps = jr.normal(ekey, (data.shape[0], samples) + data.shape[1:])
        alpha, sigma = vd.process.vp_alpha_sigma(lam)
        z = alpha[..., None] * data[:, None] + sigma[..., None] * eps
        err = jnp.sum((eps - jax.vmap(jax.vmap(denoiser))(z, lam)) ** 2, axis=-1)
        return lam, weighting(lam) * err

    keys = jr.split(key, edges.shape[0] - 1)
    lam, v = jax.lax.map(one_bin, (edges[:-1], edges[1:], keys))
    return jnp.moveaxis(lam, 0, 1), jnp.moveaxis(v, 0, 1)


def variances(v: np.ndarray, density: np.ndarray, width: float) -> tuple[float, float, float]:
    """(E_x Var[ℓ|x], Var[ℓ], E_x L(x)) of the one-sample estimate ℓ = v/(2p), from stratified draws."""
    second = np.sum(np.mean(v**2 / (4.0 * density), axis=-1), axis=-1) * width  # E_p[ℓ² | x], per row
    loss = np.sum(np.mean(0.5 * v, axis=-1), axis=-1) * width  # L(x), per row
    return float(np.mean(second - loss**2)), float(np.mean(second) - np.mean(loss) ** 2), float(np.mean(loss))


def main(cfg: Config) -> dict:
    """Run the benchmark; return (and print) the JSON record."""
    validate(cfg)
    start = time.time()
    key = jr.key(cfg.seed)
    data = load_data(cfg.num_points, cfg.seed)
    # the data set of tests/test_adaptive.py's convergence (flatness) test
    small = jr.uniform(jr.key(1), (cfg.small_points, cfg.small_dim), minval=-1.0, maxval=1.0)
    datasets = {"oracle": small, "oracle_digits": data, "mlp_untrained": data, "mlp_trained": data}
    denoisers = {
        "oracle": vd.oracle.EmpiricalDenoiser(small),
        "oracle_digits": vd.oracle.EmpiricalDenoiser(data),
        "mlp_untrained": MLPDenoiser(data.shape[1], cfg.mlp_width, key=jr.fold_in(key, 999)),
        "mlp_trained": train_denoiser(
            steps=cfg.train_steps, lam_min=cfg.lam_min, lam_max=cfg.lam_max, key=jr.fold_in(key, 998)
        ),
    }
    weightings = {
        "elbo": vd.weighting.ELBO(),
        "sigmoid2": vd.weighting.Sigmoid(k=2.0),
        "edm_monotonic": vd.weighting.EDMMonotonic(),
    }
    schedules = {
        m: vd.adaptive.AdaptiveSchedule(cfg.lam_min, cfg.lam_max, num_bins=cfg.num_bins, decay=cfg.decay, moment=m)
        for m in (1, 2)
    }
    cosine = vd.schedules.Cosine(lam_min=cfg.lam_min, lam_max=cfg.lam_max)
    edges = jnp.linspace(cfg.lam_min, cfg.lam_max, cfg.num_bins + 1)
    width = (cfg.lam_max - cfg.lam_min) / cfg.num_bins
    record: dict = {"benchmark": "adaptive_variance"}
    jobs = [(d, w) for d in denoisers for w in weightings]
    for i, (dname, wname) in enumerate(tqdm.tqdm(jobs, desc="adaptive vs cosine", file=sys.stderr)):
        den, w = denoisers[dname], weightings[wname]
        skey, *ckeys = jr.split(jr.fold_in(key, i), 1 + len(schedules))
        lam, v = stratified_draws(den, datasets[dname], w, edges, skey, cfg.samples)
        lam32, v = np.asarray(lam), np.asarray(v, np.float64)
        var_c, tot_c, loss = variances(v, np.asarray(cosine.density(lam32), np.float64), width)
        out = dict(loss=loss, var_cosine=var_c, var_total_cosine=tot_c)
        mean, second = v.mean(axis=(0, 2)), (v**2).mean(axis=(0, 2))
        active = mean > schedules[1].floor * mean.mean()
        out["max_cv2"] = float(np.max(second[active] / mean[active] ** 2 - 1.0))
        for moment, target in ((1, mean), (2, np.sqrt(second))):
            p = np.maximum(target, schedules[moment].floor * target.mean())
            p = p / (p.sum() * width)
            suffix = "" if moment == 1 else "_moment2"
            out[f"ratio_fixed_point{suffix}"] = variances(v, p[None, :, None], width)[0] / var_c
        for (moment, a), ckey in zip(schedules.items(), ckeys):
            state = vd.adaptive.calibrate(
                a,
                a.init(),
                den,
                datasets[dname],
                weighting=w,
                key=ckey,
                num_steps=cfg.calibrate_steps,
                batch_size=cfg.batch_size,
            )
            var_a, tot_a, _ = variances(v, np.asarray(a.density(state, lam32), np.float64), width)
            suffix = "" if moment == 1 else "_moment2"
            out.update({f"ratio{suffix}": var_a / var_c, f"ratio_total{suffix}": tot_a / tot_c})
            out.update({f"var_adaptive{suffix}": var_a, f"var_total_adaptive{suffix}": tot_a})
        record.setdefault(dname, {})[wname] = out
    record["config"] = dataclasses.asdict(cfg)
    record["seconds"] = round(time.time() - start, 1)
    _cli.check_finite_results(record, "adaptive_variance.py")
    print(json.dumps(record))
    return record


if __name__ == "__main__":
    _cli.run(main, Config, description=__doc__)
