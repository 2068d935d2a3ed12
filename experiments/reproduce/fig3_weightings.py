"""K&G Fig. 3: the weighting functions of THEORY §3, normalised to max 1 on [-7.5, 10], by monotonicity."""

import jax
import jax.numpy as jnp
import matplotlib


matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import vdmpp as vd
from _common import out_dir, save_fig, save_json


def weightings() -> dict:
    w = vd.weighting
    return {
        "ELBO": w.ELBO(),
        "IDDPM": w.IDDPM(),
        "EDM": w.EDM(),
        "EDM-monotonic": w.EDMMonotonic(),
        "v-prediction / FM-OT": w.FlowMatching(),
        "InDI": w.InDI(),
        "P2 (γ=0.5)": w.P2(gamma=0.5),
        "P2 (γ=1)": w.P2(gamma=1.0),
        "min-SNR-5": w.MinSNR(gamma=5.0),
        "sigmoid(−λ+2)": w.Sigmoid(k=2.0),
        "5-bit-like": w.FiveBitLike(),
        "sigmoid(−λ+2), shifted d=128": w.Shifted(w.Sigmoid(k=2.0), shift=vd.schedules.shift_for_resolution(128)),
    }


def main() -> None:
    jax.config.update("jax_enable_x64", True)
    out = out_dir("fig3_weightings", __doc__)
    lam = np.linspace(-7.5, 10.0, 1751)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    record = {}
    for name, w in weightings().items():
        values = np.asarray(w(jnp.asarray(lam)))
        mono = vd.weighting.is_monotonic(w, -20.0, 20.0)
        ax = axes[1] if mono else axes[0]
        ax.plot(lam, values / values.max(), label=name)
        record[name] = {
            "monotonic_on_[-20,20]": mono,
            "max_on_[-7.5,10]": float(values.max()),
            "argmax": float(lam[np.argmax(values)]),
            "w_at": {f"{x:g}": float(w(jnp.asarray(float(x)))) for x in (-4, -2, 0, 2, 4)},
        }
    # THEORY §3's reference values, to check by eye in the JSON
    record["_theory_reference"] = {
        "sigmoid(2-lam) at -4,-2,0,2,4": [0.997527, 0.982014, 0.880797, 0.5, 0.119203],
        "sech(lam/2)": [0.265802, 0.648054, 1, 0.648054, 0.265802],
        "EDM": [0.260437, 0.236528, 0.126026, 0.063169, 0.035714],
        "EDM peak": [-3.308, 0.2710],
    }
    record["_edm_peak"] = [vd.weighting.EDM_PEAK_LAM, vd.weighting.EDM_PEAK_VALUE]
    axes[0].set(title="Non-monotonic weighting functions", xlabel="λ (log SNR)", ylabel="w(λ) (normalized)")
    axes[1].set(title="Monotonic weighting functions", xlabel="λ (log SNR)")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_fig(fig, out / "fig3_weightings.png")
    save_json(out / "fig3_weightings.json", record)
    print(f"wrote {out}/fig3_weightings.png and .json")


if __name__ == "__main__":
    main()
