"""K&G Fig. 2: lambda(t) and p(lambda) of common noise schedules (+ FM-OT, shifted cosine, adaptive)."""

import math

import jax
import jax.numpy as jnp
import matplotlib


matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import vdmpp as vd
from _common import out_dir, save_fig, save_json


def schedules() -> dict:
    inf = math.inf
    return {
        "cosine": vd.schedules.Cosine(lam_min=-inf, lam_max=inf),
        "EDM (training)": vd.schedules.EDMTraining(lam_min=-inf, lam_max=inf),
        "EDM (sampling)": vd.schedules.EDMSampling(),
        "FM-OT": vd.schedules.FlowMatchingOT(lam_min=-inf, lam_max=inf),
        "shifted cosine (d=128)": vd.schedules.ShiftedCosine(
            shift=vd.schedules.shift_for_resolution(128), lam_min=-inf, lam_max=inf
        ),
    }


def main() -> None:
    jax.config.update("jax_enable_x64", True)
    out = out_dir("fig2_schedules", __doc__)
    t = np.linspace(1e-4, 1 - 1e-4, 2001)
    lam = np.linspace(-15.0, 15.0, 3001)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    record = {}
    for name, s in schedules().items():
        lt = np.asarray(s.lam(jnp.asarray(t)))
        p = np.asarray(s.density(jnp.asarray(lam)))
        ax1.plot(t, lt, label=name)
        ax2.plot(lam, p, label=name)
        wide = np.linspace(max(float(s.lam_min), -80.0), min(float(s.lam_max), 80.0), 200001)
        mass = float(np.trapezoid(np.asarray(s.density(jnp.asarray(wide))), wide))
        record[name] = {
            "lam_at_t": {f"{tt:g}": float(s.lam(jnp.asarray(tt))) for tt in (0.1, 0.25, 0.5, 0.75, 0.9)},
            "density_at_lam": {f"{ll:g}": float(s.density(jnp.asarray(ll))) for ll in (-10, -5, 0, 5, 10)},
            "density_mass": mass,
            "argmax_density": float(lam[np.argmax(p)]),
        }
    ad = _adaptive(ax1, ax2, t, lam)
    if ad is not None:
        record["adaptive (calibrated)"] = ad
    else:
        record["adaptive (calibrated)"] = "vdmpp.adaptive not available on this branch"
    ax1.set(xlabel="t", ylabel="λ (log SNR)", ylim=(-20, 20), title="λ(t)")
    ax2.set(xlabel="λ (log SNR)", ylabel="p(λ)", title="p(λ) = −dt/dλ")
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    save_fig(fig, out / "fig2_schedules.png")
    save_json(out / "fig2_schedules.json", record)
    print(f"wrote {out}/fig2_schedules.png and .json")


def _adaptive(ax1, ax2, t, lam):
    if getattr(vd, "adaptive", None) is None:
        return None
    from _adaptive_fit import converged_adaptive  # needs vdmpp.adaptive (merged from the adaptive branch)

    sched, state, info = converged_adaptive()
    lt = np.asarray(sched.lam(state, jnp.asarray(t)))
    inside = (lam >= sched.lam_min) & (lam <= sched.lam_max)
    p = np.where(inside, np.asarray(sched.density(state, jnp.asarray(np.clip(lam, sched.lam_min, sched.lam_max)))), 0)
    ax1.plot(t, lt, "k--", label="adaptive (calibrated)")
    ax2.plot(lam, p, "k--", label="adaptive (calibrated)")
    return info


if __name__ == "__main__":
    main()
