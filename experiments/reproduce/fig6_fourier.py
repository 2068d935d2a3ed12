"""K&G Fig. 6 and 7 (App. J): power spectra of alpha F(x) and sigma F(eps), and per-frequency log-SNR.

Images: Fashion-MNIST (28x28, Debian's dataset-fashion-mnist) when installed, else scikit-learn digits (8x8).
"""

import gzip
import pathlib

import matplotlib


matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from _common import out_dir, save_fig, save_json
from vdmpp.analysis import power_spectra


FASHION = pathlib.Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


def load_images(n: int = 2000) -> tuple[np.ndarray, str]:
    if FASHION.exists():
        with gzip.open(FASHION, "rb") as f:
            raw = np.frombuffer(f.read(), dtype=np.uint8, offset=16)
        images = raw.reshape(-1, 28, 28)[:n].astype(np.float64)
        return images / 127.5 - 1.0, "fashion-mnist (t10k, first 2000)"
    from sklearn.datasets import load_digits

    images = load_digits().images.astype(np.float64)
    return images / 8.0 - 1.0, "scikit-learn digits (8x8, 1797)"


def main() -> None:
    out = out_dir("fig6_fourier", __doc__)
    images, source = load_images()
    lams = np.array([-5.0, -2.5, 0.0, 2.5, 5.0])
    ps = power_spectra(images, lams)
    fig, axes = plt.subplots(1, 5, figsize=(22, 4), sharey=True)
    crossover = {}
    for i, lam in enumerate(lams):
        ax = axes[i]
        ax.loglog(ps.freq, ps.power_x[i], label="α F(x)")
        ax.loglog(ps.freq, ps.power_eps[i], label="σ F(ε)")
        ax.set(title=f"λ = {lam}", xlabel="spatial frequency")
        ax.legend()
        below = np.nonzero(ps.log_snr[i] < 0)[0]
        crossover[f"{lam:g}"] = float(ps.freq[below[0]]) if below.size else None
    axes[0].set_ylabel("average power spectrum")
    fig.suptitle(f"Fig. 6: Gaussian noise perturbation in the frequency domain ({source})")
    fig.tight_layout()
    save_fig(fig, out / "fig6_fourier.png")

    lam_grid = np.linspace(-10.0, 15.0, 101)
    ps7 = power_spectra(images, lam_grid)
    picks = np.unique(np.geomspace(1, ps7.freq[-1], 5).round()).astype(int)
    fig7, ax = plt.subplots(figsize=(6, 4.5))
    snr_offsets = {}
    for f in picks:
        j = int(np.argmin(np.abs(ps7.freq - f)))
        ax.plot(lam_grid, ps7.log_snr[:, j], label=f"freq={ps7.freq[j]:g}")
        snr_offsets[f"{ps7.freq[j]:g}"] = float(ps7.log_snr[0, j] - lam_grid[0])
    ax.plot(lam_grid, lam_grid, "k:", label="λ (data space)")
    ax.set(xlabel="λ (log SNR)", ylabel="λ̃ (log SNR around freq)", title="Fig. 7: per-frequency log-SNR")
    ax.legend(fontsize=8)
    fig7.tight_layout()
    save_fig(fig7, out / "fig7_log_snr.png")
    record = {
        "images": source,
        "freq": ps.freq,
        "power_x_at_lam0": ps.power_x[2],
        "power_eps_at_lam0": ps.power_eps[2, 0],
        "first_frequency_where_noise_wins": crossover,
        "log_snr_offset_per_frequency": snr_offsets,
        "spectrum_decreasing_fraction": float(np.mean(np.diff(np.log(ps.power_x[2])) < 0)),
        "note": "log-SNR at frequency f is lambda + log(S_x(f) / (H W)): parallel lines, higher at low f",
    }
    save_json(out / "fig6_fourier.json", record)
    print("first frequency where noise power exceeds signal, per lambda:", crossover)


if __name__ == "__main__":
    main()
