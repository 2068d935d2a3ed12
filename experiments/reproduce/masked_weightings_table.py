"""S&T's masked-diffusion weighting table: w~(t) for IDDPM, sigmoid, FM, EDM and simple, against t for the
linear and cosine masking schedules, and in lambda = log(alpha / (1 - alpha)). The JSON checks each
lambda-space weighting against the closed form in alpha of THEORY §8 (by value)."""

import math

import jax
import jax.numpy as jnp
import matplotlib


matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import vdmpp as vd
from _common import out_dir, save_fig, save_json


def closed_forms(k: float) -> dict:
    """w~ in terms of alpha (THEORY §8 table), for the lambda-space weightings."""
    return {
        "IDDPM": lambda a: 2 * np.sqrt(a * (1 - a)),
        f"sigmoid (k={k:g})": lambda a: (1 - a) / (1 - (1 - math.exp(-k)) * a),
        "flow matching": lambda a: np.sqrt((1 - a) / a),
        "EDM": None,
        "simple": None,
    }


def main() -> None:
    jax.config.update("jax_enable_x64", True)
    out = out_dir("masked_weightings_table", __doc__)
    k = 0.0
    weightings = {
        "IDDPM": vd.weighting.IDDPM(),
        f"sigmoid (k={k:g})": vd.weighting.Sigmoid(k=k),
        "flow matching": vd.weighting.FlowMatching(),
        "EDM": vd.weighting.EDM(),
        "simple": None,  # vd.masked.Simple(schedule): built per schedule below
    }
    schedules = {"linear": vd.masked.LinearSchedule(), "cosine": vd.masked.CosineSchedule()}
    t = np.linspace(0.01, 0.99, 197)
    lam = np.linspace(-8.0, 8.0, 321)
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.3))
    record = {"t_grid": [0.01, 0.99], "checks": {}, "w_tilde_at_t": {}}
    cf = closed_forms(k)
    for ax, (sname, sched) in zip(axes[:2], schedules.items()):
        alpha = np.asarray(sched.alpha(jnp.asarray(t)))
        for wname, w in weightings.items():
            w = vd.masked.Simple(sched) if w is None else w
            wt = np.asarray(vd.masked.tilde_weight(w, sched, jnp.asarray(t)))
            ax.semilogy(t, wt / wt.max(), label=wname)
            record["w_tilde_at_t"][f"{sname}/{wname}"] = {f"{x:g}": float(np.interp(x, t, wt)) for x in (0.1, 0.5, 0.9)}
            if cf.get(wname) is not None:
                err = float(np.max(np.abs(wt / cf[wname](alpha) - 1)))
                record["checks"][f"{sname}/{wname}"] = {"max_rel_err_vs_alpha_form": err, "pass": err < 1e-6}
            if wname == "simple":
                # simple weight times the ELBO weight -alpha'/(1-alpha) is 1
                elbo_w = -np.asarray(sched.dalpha(jnp.asarray(t))) / (1 - alpha)
                err = float(np.max(np.abs(wt * elbo_w - 1)))
                record["checks"][f"{sname}/simple x ELBO weight = 1"] = {"max_abs_err": err, "pass": err < 1e-9}
        ax.set(title=f"w̃(t), {sname} masking schedule (max 1)", xlabel="t")
        ax.legend(fontsize=8)
    for wname, w in weightings.items():
        if wname == "simple":
            for sname, sched in schedules.items():
                v = np.asarray(w.lam_weight(sched, jnp.asarray(lam)))
                axes[2].semilogy(lam, v / v.max(), "--", label=f"simple ({sname})")
            continue
        v = np.asarray(w(jnp.asarray(lam)))
        axes[2].semilogy(lam, v / v.max(), label=wname)
    axes[2].set(title="the same weightings in λ = log(α/(1−α)) (max 1)", xlabel="λ")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    record["increasing_in_t"] = {
        f"{sname}/{wname}": bool(np.all(np.diff(np.asarray(vd.masked.tilde_weight(w, s, jnp.asarray(t)))) >= -1e-12))
        for sname, s in schedules.items()
        for wname, w in weightings.items()
    }
    record["note"] = "S&T: a weighted loss is a positive combination of improved ELBOs iff w~ is non-decreasing in t."
    record["all_pass"] = all(c["pass"] for c in record["checks"].values())
    save_fig(fig, out / "masked_weightings_table.png")
    save_json(out / "masked_weightings_table.json", record)
    print(
        "checks:",
        {
            k_: round(v.get("max_rel_err_vs_alpha_form", v.get("max_abs_err", 0)), 12)
            for k_, v in record["checks"].items()
        },
    )
    print("increasing in t:", record["increasing_in_t"])


if __name__ == "__main__":
    main()
