"""K&G Fig. 5 (App. I): low-bit analysis with the exact (Bayes-optimal) model, n = 1..8 bits."""

import math

import jax
import jax.numpy as jnp
import matplotlib


matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import vdmpp as vd
from _common import out_dir, save_fig, save_json
from vdmpp.analysis import low_bit_curves


def main() -> None:
    jax.config.update("jax_enable_x64", True)
    out = out_dir("fig5_low_bit", __doc__)
    # areas need the whole real line: below -16 the curves are < 1e-7, above 20 they are 0 to 1e-30
    lam = np.arange(-16.0, 20.0 + 1e-9, 0.1)
    curves = {n: low_bit_curves(n, lam, num_nodes=161) for n in range(1, 9)}
    ln2 = math.log(2)
    areas, prev = {}, np.zeros_like(lam)
    per_bit = {}
    for n, c in curves.items():
        per_bit[n] = c.dloss - prev
        areas[n] = float(np.trapezoid(per_bit[n], lam) / ln2)
        prev = c.dloss
    w5 = np.asarray(vd.weighting.FiveBitLike()(jnp.asarray(lam)))
    five, eight_w = curves[5].dloss, curves[8].dloss * w5
    view = (lam >= -10) & (lam <= 15)
    fig, axes = plt.subplots(1, 5, figsize=(24, 4.2))
    for n, c in curves.items():
        axes[0].plot(lam[view], c.loss[view], label=f"n_bits = {n}")
        axes[1].plot(lam[view], c.dloss[view], label=f"n_bits = {n}")
        axes[2].plot(lam[view], per_bit[n][view], label=f"bit {n}")
    axes[0].set(title="(a) E_q(x)[L(λ, x)] (nats)", xlabel="λ")
    axes[1].set(title="(b) E_q(x)[d/dλ L(λ, x)]", xlabel="λ")
    axes[2].set(title="(c) per-bit contribution (area = 1 bit each)", xlabel="λ")
    ws = {
        "5-bit-like Φ(−2(λ−8.4))": vd.weighting.FiveBitLike(),
        "sigmoid(−λ+2)": vd.weighting.Sigmoid(k=2.0),
        "EDM-monotonic": vd.weighting.EDMMonotonic(),
        "v-prediction": vd.weighting.FlowMatching(),
    }
    for name, w in ws.items():
        v = np.asarray(w(jnp.asarray(lam[view])))
        axes[3].plot(lam[view], v / v.max(), label=name)
    axes[3].set(title="(d) weighting functions (max 1)", xlabel="λ")
    axes[4].plot(lam[view], five[view], label="E[d/dλ L], n_bits = 5")
    axes[4].plot(lam[view], eight_w[view], "--", label="E[d/dλ L · w(λ)], n_bits = 8")
    axes[4].set(title="(e) unweighted 5-bit vs weighted 8-bit", xlabel="λ")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    diff = five - eight_w
    record = {
        "per_bit_area_bits": areas,
        "max_abs_area_error_bits": max(abs(a - 1) for a in areas.values()),
        "area_tolerance": 1e-3,
        "pass": all(abs(a - 1) < 1e-3 for a in areas.values()),
        "total_information_bits_at_lam_20": {n: float(c.loss[-1] / ln2) for n, c in curves.items()},
        "five_bit_vs_weighted_eight_bit": {
            "max_abs_diff_nats": float(np.max(np.abs(diff))),
            "max_of_5bit_curve": float(np.max(five)),
            "l1_diff_nats": float(np.trapezoid(np.abs(diff), lam)),
            "area_5bit_bits": float(np.trapezoid(five, lam) / ln2),
            "area_weighted_8bit_bits": float(np.trapezoid(eight_w, lam) / ln2),
        },
        "lam_grid": [float(lam[0]), float(lam[-1]), 0.1],
    }
    save_fig(fig, out / "fig5_low_bit.png")
    save_json(out / "fig5_low_bit.json", record)
    print("per-bit areas (bits):", {n: round(a, 7) for n, a in areas.items()})
    print("5-bit vs weighted 8-bit:", record["five_bit_vs_weighted_eight_bit"])


if __name__ == "__main__":
    main()
