"""S&T Theorems 1 and 2 (THEORY §9): the improved-ELBO cascade L^(i), Gaussian and masked diffusion.

Theorem 1: E_x L^(i) is non-decreasing in i for ANY denoiser (more ground-truth decoding steps, tighter bound).
Theorem 2: sum_i w_i L^(i) = -sum_j W_j K_j + C with C free of the denoiser; as T grows, sum_j W_j K_j tends
to the weighted (Gaussian) / reweighted (masked) loss with w~(t_j) = W_j, here for w = sigmoid(-lambda + k).
Denoisers: the exact one for the finite data set, and imperfect ones (Wiener / a blend / uniform).
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import matplotlib


matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import vdmpp as vd
from _common import out_dir, save_fig, save_json


# --- Gaussian --------------------------------------------------------------------------------


class Blend(eqx.Module):
    """Average of two eps-denoisers."""

    a: eqx.Module
    b: eqx.Module

    def __call__(self, z, lam):
        return 0.5 * (self.a(z, lam) + self.b(z, lam))


def gaussian_part(record, axes):
    data = jnp.array([[-0.8, 0.3], [0.5, -0.6], [0.9, 0.9], [-0.2, -0.9], [0.1, 0.6], [-0.6, -0.4]])
    exact = vd.oracle.EmpiricalDenoiser(data)
    # the optimal (Wiener) denoiser for Gaussian data N(0, var I): imperfect for the finite data set
    wiener = vd.oracle.GaussianMixture(jnp.zeros((1, data.shape[1])), float(jnp.std(data))).denoiser
    dens = {"exact": exact, "blend (exact+wiener)/2": Blend(exact, wiener), "wiener": wiener}
    sched = vd.schedules.Cosine(lam_min=-8.0, lam_max=8.0)
    reps, T = 600, 32
    xs = jnp.tile(data, (reps, 1))
    eps = jr.normal(jr.key(0), xs.shape)
    w = vd.weighting.Sigmoid(k=2.0)
    out = {"T": T, "samples": int(xs.shape[0]), "schedule": "cosine [-8, 8]", "denoisers": {}}
    consts = {}
    for name, den in dens.items():
        terms = vd.losses.gaussian_cascade_terms_at(den, xs, data, eps, schedule=sched, num_steps=T)
        bounds = np.asarray(terms.bounds)
        mean, se = bounds.mean(0), bounds.std(0, ddof=1) / math.sqrt(bounds.shape[0])
        axes[0].errorbar(np.arange(1, T + 1), mean, yerr=2 * se, label=name, capsize=2)
        W = np.asarray(w(sched.lam(jnp.arange(1, T + 1) / T)))  # non-decreasing in t
        wts = np.diff(np.concatenate([[0.0], W]))
        weighted = bounds @ wts
        consts[name] = weighted + np.asarray(terms.kl) @ W  # C per example
        out["denoisers"][name] = {
            "E_L_i": mean,
            "stderr": se,
            "non_decreasing_in_i": bool(np.all(np.diff(mean) >= -3 * np.sqrt(se[1:] ** 2 + se[:-1] ** 2))),
            "min_increment": float(np.min(np.diff(mean))),
        }
    names = list(consts)
    out["theorem2_C_max_abs_diff_between_denoisers"] = float(
        max(np.max(np.abs(consts[a] - consts[names[0]])) for a in names[1:])
    )
    # sum_j W_j K_j -> L_w as T grows (exact denoiser vs wiener)
    conv = {}
    for name in ("exact", "wiener"):
        den = dens[name]
        lw = np.asarray(
            vd.losses.weighted_loss(den, jnp.tile(data, (5000, 1)), key=jr.key(3), schedule=sched, weighting=w)
        )
        row = {"L_w_mc": float(lw.mean()), "L_w_stderr": float(lw.std(ddof=1) / math.sqrt(lw.size)), "sum_WK": {}}
        row["sum_WK_stderr"] = {}
        small, small_eps = xs[: 300 * data.shape[0]], eps[: 300 * data.shape[0]]
        for TT in (8, 32, 128, 512):
            terms = vd.losses.gaussian_cascade_terms_at(den, small, data, small_eps, schedule=sched, num_steps=TT)
            W = np.asarray(w(sched.lam(jnp.arange(1, TT + 1) / TT)))
            vals = np.asarray(terms.kl) @ W
            row["sum_WK"][str(TT)] = float(np.mean(vals))
            row["sum_WK_stderr"][str(TT)] = float(np.std(vals, ddof=1) / math.sqrt(vals.size))
        conv[name] = row
        Ts = [int(k) for k in row["sum_WK"]]
        axes[1].semilogx(Ts, list(row["sum_WK"].values()), "o-", label=f"Σ W_j K_j, {name}")
        axes[1].axhline(row["L_w_mc"], ls="--", color=axes[1].lines[-1].get_color(), label=f"L_w (MC), {name}")
    out["theorem2_sum_WK_vs_weighted_loss"] = conv
    record["gaussian"] = out
    axes[0].set(title="Gaussian: E_x L^(i) (Theorem 1)", xlabel="i (ground-truth decoder from s(i))", ylabel="nats")
    axes[1].set(title="Gaussian: Σ_j W_j K_j → L_w, w = sigmoid(−λ+2)", xlabel="T", yscale="log")
    for ax in axes[:2]:
        ax.legend(fontsize=7)


# --- masked ----------------------------------------------------------------------------------


class MixMasked(eqx.Module):
    """Masked denoiser mixing the exact posterior with the uniform distribution (weight `mix` on uniform)."""

    oracle: eqx.Module
    mix: float
    vocab: int = eqx.field(static=True)

    def __call__(self, z, lam):
        p = jax.nn.softmax(self.oracle(z, lam), axis=-1)
        return jnp.log((1 - self.mix) * p + self.mix / self.vocab)


def masked_part(record, axes):
    V, mask_id, L, N = 4, 4, 5, 8
    data = jr.randint(jr.key(1), (N, L), 0, V)
    oracle = vd.oracle.EmpiricalMaskedDenoiser(data, vocab_size=V, mask_id=mask_id)
    dens = {
        "exact": oracle,
        "mix 30% uniform": MixMasked(oracle, 0.3, V),
        "uniform": MixMasked(oracle, 1.0, V),
    }
    sched = vd.masked.LinearSchedule()
    reps, T = 600, 32
    toks = jnp.tile(data, (reps, 1))
    w = vd.weighting.Sigmoid(k=0.0)
    out = {"T": T, "samples": int(toks.shape[0]), "schedule": "linear", "V": V, "N": N, "length": L, "denoisers": {}}
    consts = {}
    for name, den in dens.items():
        terms = vd.masked.cascade_terms(den, toks, data, key=jr.key(2), schedule=sched, num_steps=T, mask_id=mask_id)
        bounds = np.asarray(terms.bounds)
        mean, se = bounds.mean(0), bounds.std(0, ddof=1) / math.sqrt(bounds.shape[0])
        axes[2].errorbar(np.arange(1, T + 1), mean, yerr=2 * se, label=name, capsize=2)
        W = np.asarray(vd.masked.tilde_weight(w, sched, jnp.arange(1, T + 1) / T))
        wts = np.diff(np.concatenate([[0.0], W]))
        consts[name] = bounds @ wts + np.asarray(terms.kl) @ W
        out["denoisers"][name] = {
            "E_L_i": mean,
            "stderr": se,
            "non_decreasing_in_i": bool(np.all(np.diff(mean) >= -3 * np.sqrt(se[1:] ** 2 + se[:-1] ** 2))),
        }
    names = list(consts)
    out["theorem2_C_max_abs_diff_between_denoisers"] = float(
        max(np.max(np.abs(consts[a] - consts[names[0]])) for a in names[1:])
    )
    conv = {}
    for name in ("exact", "mix 30% uniform"):
        den = dens[name]
        big = jnp.tile(data, (2000, 1))
        rl = np.asarray(
            vd.masked.reweighted_loss(den, big, key=jr.key(4), schedule=sched, weighting=w, mask_id=mask_id)
        )
        row = {"reweighted_mc": float(rl.mean()), "stderr": float(rl.std(ddof=1) / math.sqrt(rl.size)), "sum_WK": {}}
        row["sum_WK_stderr"] = {}
        small = toks[: 300 * N]
        for TT in (8, 32, 128, 512):
            terms = vd.masked.cascade_terms(
                den, small, data, key=jr.key(2), schedule=sched, num_steps=TT, mask_id=mask_id
            )
            W = np.asarray(vd.masked.tilde_weight(w, sched, jnp.arange(1, TT + 1) / TT))
            vals = np.asarray(terms.kl) @ W
            row["sum_WK"][str(TT)] = float(np.mean(vals))
            row["sum_WK_stderr"][str(TT)] = float(np.std(vals, ddof=1) / math.sqrt(vals.size))
        conv[name] = row
        Ts = [int(k) for k in row["sum_WK"]]
        axes[3].semilogx(Ts, list(row["sum_WK"].values()), "o-", label=f"Σ W_j K_j, {name}")
        axes[3].axhline(row["reweighted_mc"], ls="--", color=axes[3].lines[-1].get_color(), label=f"L^w̃ (MC), {name}")
    out["theorem2_sum_WK_vs_reweighted_loss"] = conv
    record["masked"] = out
    axes[2].set(title="Masked: E_x L^(i) (Theorem 1)", xlabel="i", ylabel="nats")
    axes[3].set(title="Masked: Σ_j W_j K_j → L^w̃, w = sigmoid(−λ)", xlabel="T")
    for ax in axes[2:]:
        ax.legend(fontsize=7)


def main() -> None:
    out = out_dir("cascade", __doc__)
    fig, axes = plt.subplots(1, 4, figsize=(22, 4.5))
    record = {}
    gaussian_part(record, axes)
    masked_part(record, axes)
    fig.tight_layout()
    save_fig(fig, out / "cascade.png")
    save_json(out / "cascade.json", record)
    for part in ("gaussian", "masked"):
        r = record[part]
        print(
            part,
            {k: v["non_decreasing_in_i"] for k, v in r["denoisers"].items()},
            "C diff:",
            r["theorem2_C_max_abs_diff_between_denoisers"],
        )
        key = "theorem2_sum_WK_vs_weighted_loss" if part == "gaussian" else "theorem2_sum_WK_vs_reweighted_loss"
        print(r[key])


if __name__ == "__main__":
    main()
