r"""Fourier view of Gaussian noise (K&G App. J, Fig. 6–7).

$F(z_\lambda) = \alpha_\lambda F(x) + \sigma_\lambda F(\epsilon)$. The radially averaged power spectrum of
$\alpha F(x)$ falls fast with spatial frequency, that of $\sigma F(\epsilon)$ is flat
($E|F(\epsilon)|^2 = HW$ for the unnormalised DFT), so the per-frequency log-SNR
$\tilde\lambda(f) = \lambda + \log(S_x(f)/(HW))$ is highest at low frequencies: noise destroys fine
detail first.
"""

import equinox as eqx
import numpy as np
import numpy.typing as npt


class PowerSpectra(eqx.Module):
    r"""Results of `power_spectra` (float64 NumPy arrays).

    Attributes:
        freq: radial spatial frequencies (integer radii $1, 2, \ldots$ in cycles per image).
        lam: the log-SNRs, shape `(L,)`.
        power_x: radially averaged $|\alpha_\lambda F(x)|^2$, averaged over images, shape `(L, F)`.
        power_eps: $E|\sigma_\lambda F(\epsilon)|^2 = \sigma_\lambda^2 HW$, shape `(L, F)`.
        log_snr: per-frequency log-SNR $\log(\text{power\_x}/\text{power\_eps})$, shape `(L, F)`.
        counts: number of 2-D frequencies in each radial bin.
    """

    freq: np.ndarray
    lam: np.ndarray
    power_x: np.ndarray
    power_eps: np.ndarray
    log_snr: np.ndarray
    counts: np.ndarray


def radial_power(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Radially averaged $|F(x)|^2$ of `(B, H, W)` images: (integer radii, mean power, bin counts).

    Radius $r = \sqrt{f_y^2 + f_x^2}$ with $f$ in cycles per image (`fftfreq * size`), rounded to the
    nearest integer; radius 0 (the mean) is excluded.
    """
    h, w = images.shape[-2:]
    power = np.mean(np.abs(np.fft.fft2(images, axes=(-2, -1))) ** 2, axis=0)
    fy = np.fft.fftfreq(h) * h
    fx = np.fft.fftfreq(w) * w
    r = np.rint(np.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)).astype(int)
    counts = np.bincount(r.ravel())
    sums = np.bincount(r.ravel(), weights=power.ravel())
    keep = np.arange(counts.size) >= 1
    keep &= counts > 0
    radii = np.arange(counts.size)[keep]
    return radii.astype(np.float64), sums[keep] / counts[keep], counts[keep]


def power_spectra(images: npt.ArrayLike, lam: npt.ArrayLike | float) -> PowerSpectra:
    r"""Radially averaged power spectra of $\alpha_\lambda F(x)$ and $\sigma_\lambda F(\epsilon)$ (K&G App. J).

    Args:
        images: `(B, H, W)` or `(B, H, W, C)` images in model space (e.g. $[-1, 1]$); channels are
            treated as extra images.
        lam: a log-SNR or a 1-D array of them (VP process).

    Returns:
        `PowerSpectra` with the spectra at every `lam` and the per-frequency log-SNR (Fig. 7).

    Raises:
        ValueError: if `images` is not 3-D or 4-D, or `lam` is not a scalar or 1-D.
    """
    x = np.asarray(images, dtype=np.float64)
    if x.ndim == 4:
        x = np.moveaxis(x, -1, 1).reshape(-1, x.shape[1], x.shape[2])
    if x.ndim != 3 or min(x.shape[1:]) < 2:
        raise ValueError(f"`images` must be shaped (B, H, W) or (B, H, W, C) with H, W >= 2; got {np.shape(images)}.")
    lam_arr = np.atleast_1d(np.asarray(lam, dtype=np.float64))
    if lam_arr.ndim != 1:
        raise ValueError(f"`lam` must be a scalar or a 1-D array; got shape {np.shape(lam)}.")
    freq, sx, counts = radial_power(x)
    h, w = x.shape[1:]
    alpha2 = 1.0 / (1.0 + np.exp(-lam_arr))  # sigmoid(lam)
    sigma2 = 1.0 / (1.0 + np.exp(lam_arr))
    power_x = alpha2[:, None] * sx[None, :]
    power_eps = np.broadcast_to(sigma2[:, None] * float(h * w), power_x.shape).copy()
    with np.errstate(divide="ignore"):  # a frequency with no power has log-SNR -inf
        log_snr = lam_arr[:, None] + np.log(sx[None, :] / float(h * w))
    return PowerSpectra(freq=freq, lam=lam_arr, power_x=power_x, power_eps=power_eps, log_snr=log_snr, counts=counts)
