"""Variance of the per-example Monte Carlo loss estimate: converged adaptive schedule vs. cosine.

    PYTHONPATH=. python benchmarks/adaptive_variance.py        # prints ONE JSON line on stdout

For the ELBO, Sigmoid(2) and EDM-monotonic weightings and two fixed denoisers (the Bayes-optimal
`EmpiricalDenoiser` of 64 scikit-learn digits, and a small untrained `eqx.nn.MLP`), the adaptive schedule
is first calibrated on that denoiser (`vdmpp.adaptive.calibrate`: the training-time update loop with the
model frozen); then, with fresh draws, each data row gets `samples` one-sample estimates
ℓ = ½ (w(λ)/p(λ)) ‖ε − ε̂(z_λ; λ)‖², t ~ U(0, 1) i.i.d., under the adaptive schedule and under the cosine
schedule truncated to the same [λ_min, λ_max]. Reported per weighting and denoiser:

- `ratio`: mean over rows of Var_{t,ε}[ℓ | x] (adaptive) / the same (cosine) — the variance per unit of
  data, same denoiser, same weighting, same number of samples (< 1: the adaptive schedule helps);
- `ratio_total`: the same for the variance over (x, t, ε) jointly;
- the two loss means with standard errors (equal up to Monte Carlo error: both are unbiased).

Progress goes to stderr; < 3 minutes on a CPU.
"""

import dataclasses
import json
import math
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import sklearn.datasets
import tqdm
import tyro
import vdmpp as vd


@dataclasses.dataclass(frozen=True)
class Config:
    """Benchmark settings."""

    num_points: int = 64
    lam_min: float = -10.0
    lam_max: float = 8.0
    num_bins: int = 100
    decay: float = 0.99
    calibrate_steps: int = 2000
    batch_size: int = 512
    samples: int = 1000
    """One-sample estimates per data row, per schedule."""
    mlp_width: int = 128
    seed: int = 0


class MLPDenoiser(eqx.Module):
    """A small untrained network ε̂(z, λ) = MLP([z, λ/10])."""

    mlp: eqx.nn.MLP

    def __init__(self, dim: int, width: int, *, key):
        self.mlp = eqx.nn.MLP(dim + 1, dim, width, 2, activation=jax.nn.silu, key=key)

    def __call__(self, z, lam):
        return self.mlp(jnp.concatenate([z, (lam / 10.0)[None]]))


def load_data(num_points: int, seed: int) -> jax.Array:
    """`num_points` distinct scikit-learn digits (8x8, 17 levels), flattened and scaled to (-1, 1)."""
    digits = sklearn.datasets.load_digits().data.astype(np.int32)
    _, unique = np.unique(digits, axis=0, return_index=True)
    rows = np.random.default_rng(seed).choice(np.sort(unique), size=num_points, replace=False)
    return vd.losses.uint8_to_float(jnp.asarray(digits[rows]), num_levels=17)


@eqx.filter_jit
def per_row_losses(denoiser, data, schedule, weighting, key, samples: int):
    """`samples` one-sample loss estimates for each data row: shape (rows, samples)."""
    x = jnp.repeat(data, samples, axis=0)
    tkey, ekey = jr.split(key)
    t = jr.uniform(tkey, (x.shape[0],))
    eps = jr.normal(ekey, x.shape)
    loss = vd.losses.weighted_loss_at(denoiser, x, t, eps, schedule=schedule, weighting=weighting)
    return loss.reshape(data.shape[0], samples)


def summarise(adaptive: np.ndarray, cosine: np.ndarray) -> dict:
    """Variance ratios and means of two (rows, samples) arrays of loss estimates."""
    within_a, within_c = adaptive.var(axis=1, ddof=1).mean(), cosine.var(axis=1, ddof=1).mean()
    n = adaptive.size
    return dict(
        ratio=float(within_a / within_c),
        ratio_total=float(adaptive.var(ddof=1) / cosine.var(ddof=1)),
        var_adaptive=float(within_a),
        var_cosine=float(within_c),
        mean_adaptive=float(adaptive.mean()),
        se_adaptive=float(adaptive.std(ddof=1) / math.sqrt(n)),
        mean_cosine=float(cosine.mean()),
        se_cosine=float(cosine.std(ddof=1) / math.sqrt(n)),
    )


def main(cfg: Config) -> dict:
    """Run the benchmark; return (and print) the JSON record."""
    start = time.time()
    key = jr.key(cfg.seed)
    data = load_data(cfg.num_points, cfg.seed)
    denoisers = {
        "oracle": vd.oracle.EmpiricalDenoiser(data),
        "mlp_untrained": MLPDenoiser(data.shape[1], cfg.mlp_width, key=jr.fold_in(key, 999)),
    }
    weightings = {
        "elbo": vd.weighting.ELBO(),
        "sigmoid2": vd.weighting.Sigmoid(k=2.0),
        "edm_monotonic": vd.weighting.EDMMonotonic(),
    }
    a = vd.adaptive.AdaptiveSchedule(cfg.lam_min, cfg.lam_max, num_bins=cfg.num_bins, decay=cfg.decay)
    cosine = vd.schedules.Cosine(lam_min=cfg.lam_min, lam_max=cfg.lam_max)
    record: dict = {"benchmark": "adaptive_variance"}
    jobs = [(d, w) for d in denoisers for w in weightings]
    for i, (dname, wname) in enumerate(tqdm.tqdm(jobs, desc="adaptive vs cosine", file=sys.stderr)):
        den, w = denoisers[dname], weightings[wname]
        ckey, akey, bkey = jr.split(jr.fold_in(key, i), 3)
        state = vd.adaptive.calibrate(
            a, a.init(), den, data, weighting=w, key=ckey, num_steps=cfg.calibrate_steps, batch_size=cfg.batch_size
        )
        la = np.asarray(per_row_losses(den, data, a.bind(state), w, akey, cfg.samples), np.float64)
        lc = np.asarray(per_row_losses(den, data, cosine, w, bkey, cfg.samples), np.float64)
        record.setdefault(dname, {})[wname] = summarise(la, lc)
    record["config"] = dataclasses.asdict(cfg)
    record["seconds"] = round(time.time() - start, 1)
    print(json.dumps(record))
    return record


if __name__ == "__main__":
    main(tyro.cli(Config))
