"""K&G Theorem 1 (eq. 11), numerically: for two denoisers, the difference in L_w (Monte Carlo weighted loss)
equals the difference in int (d/dt w(lambda_t)) L(t; x) dt + w(lambda_max) L(0; x) (the constant cancels),
with L(t; x) from the cumulative diffusion loss along the path (`vdmpp.analysis.kl_path`).

Denoisers: the exact posterior-mean denoiser of a 4-point 2-D data set, and the linear (Wiener) denoiser
that would be optimal for Gaussian data of the same variance. Weightings: monotone and non-monotone.
"""

import math

import jax.numpy as jnp
import jax.random as jr
import matplotlib


matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import vdmpp as vd
from _common import out_dir, save_fig, save_json
from vdmpp.analysis import kl_path, theorem1_rhs


def main() -> None:
    out = out_dir("theorem1_check", __doc__)
    data = jnp.array([[-0.8, 0.3], [0.5, -0.6], [0.9, 0.9], [-0.2, -0.9]])
    lam_min, lam_max = -8.0, 8.0
    # the optimal (Wiener) denoiser for Gaussian data N(0, var I): imperfect for these 4 points
    wiener = vd.oracle.GaussianMixture(jnp.zeros((1, data.shape[1])), float(jnp.std(data))).denoiser
    denoisers = {"exact": vd.oracle.EmpiricalDenoiser(data), "wiener": wiener}
    weightings = {
        "ELBO": vd.weighting.ELBO(),
        "sigmoid(k=2)": vd.weighting.Sigmoid(k=2.0),
        "EDM-monotonic": vd.weighting.EDMMonotonic(),
        "EDM (non-monotone)": vd.weighting.EDM(),
        "IDDPM (non-monotone)": vd.weighting.IDDPM(),
    }
    lams = jnp.linspace(lam_min, lam_max, 641)
    sched = vd.schedules.Cosine(lam_min=lam_min, lam_max=lam_max)
    reps = 20000
    xs = jnp.tile(data, (reps, 1))
    paths = {k: kl_path(d, data, lams, key=jr.key(11), num_samples=2000) for k, d in denoisers.items()}
    rows = {}
    for wname, w in weightings.items():
        lhs, lhs_se, rhs = {}, {}, {}
        for dname, den in denoisers.items():
            vals = np.asarray(vd.losses.weighted_loss(den, xs, key=jr.key(5), schedule=sched, weighting=w)).reshape(
                reps, -1
            )
            lhs[dname] = vals.mean(0)
            lhs_se[dname] = vals.std(0, ddof=1) / math.sqrt(reps)
            rhs[dname] = np.asarray(theorem1_rhs(paths[dname], w))
        d_lhs = lhs["wiener"] - lhs["exact"]
        d_rhs = rhs["wiener"] - rhs["exact"]
        se = np.sqrt(lhs_se["wiener"] ** 2 + lhs_se["exact"] ** 2)
        z = (d_lhs - d_rhs) / se
        rows[wname] = {
            "monotonic": vd.weighting.is_monotonic(w, lam_min, lam_max),
            "delta_L_w_mc": d_lhs,
            "delta_L_w_mc_stderr": se,
            "delta_theorem1_rhs": d_rhs,
            "z_score": z,
            "within_3_stderr": bool(np.all(np.abs(z) < 3)),
        }
        print(
            f"{wname:<22} ΔL_w={np.round(d_lhs, 4)} ±{np.round(se, 4)}  ΔRHS={np.round(d_rhs, 4)}  z={np.round(z, 2)}"
        )
    record = {
        "data": np.asarray(data),
        "lam_range": [lam_min, lam_max],
        "mc": {"weighted_loss_samples_per_x": reps, "kl_path_noise_samples": 2000, "kl_path_grid": 641},
        "rows": rows,
        "all_within_3_stderr": all(r["within_3_stderr"] for r in rows.values()),
        "note": "The RHS's own MC error (kl_path, common random numbers) is not in the stderr; z uses L_w's only.",
    }
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for dname, p in paths.items():
        for i in range(data.shape[0]):
            axes[0].plot(
                np.asarray(lams),
                np.asarray(p.cumulative[i]),
                "-" if dname == "exact" else "--",
                label=f"{dname}, x{i}" if i < 2 else None,
            )
    axes[0].set(xlabel="λ", ylabel="L(λ; x) − L(λ_min; x)", title="KL along the path (cumulative diffusion loss)")
    axes[0].legend(fontsize=7)
    names = list(rows)
    xpos = np.arange(len(names))
    lhs_mean = [rows[n]["delta_L_w_mc"].mean() for n in names]
    lhs_err = [np.sqrt(np.sum(rows[n]["delta_L_w_mc_stderr"] ** 2)) / len(data) for n in names]
    rhs_mean = [rows[n]["delta_theorem1_rhs"].mean() for n in names]
    axes[1].bar(xpos - 0.2, lhs_mean, 0.4, yerr=np.multiply(lhs_err, 2), label="ΔL_w (MC, ±2 s.e.)")
    axes[1].bar(xpos + 0.2, rhs_mean, 0.4, label="Δ[∫ dw/dt L dt + w(λmax) L(0)]")
    axes[1].set_xticks(xpos, names, rotation=20, fontsize=8)
    axes[1].set(title="Theorem 1: wiener − exact, mean over the 4 points")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    save_fig(fig, out / "theorem1_check.png")
    save_json(out / "theorem1_check.json", record)


if __name__ == "__main__":
    main()
