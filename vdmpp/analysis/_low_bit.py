r"""Low-bit analysis (K&G App. I): where each bit of uniformly quantised data "lives" in $\lambda$.

Data $x$ is univariate and uniform on the $N = 2^n$ levels $x_k = -1 + 2k/(N-1)$; the model is the
Bayes-optimal one, so $L(\lambda; x) = KL(q(z_\lambda|x)\,\|\,q(z_\lambda))$ and
$E_x[L(\lambda; x)] = I(x; z_\lambda)$ (nats), with
$\frac{d}{d\lambda}E_x[L] = \tfrac12 E\|\epsilon - \hat\epsilon^*\|^2$ (K&G eq. 144; the I-MMSE relation).

Both curves are computed in float64 with the trapezoid rule over $\epsilon \in [-12, 12]$ against the
normal density: the integrands are analytic, so it converges exponentially (Gauss–Hermite, the obvious
choice, converges slowly here: the posterior switches sharply between neighbouring levels). With
$s = e^{\lambda/2}\Delta$ ($\Delta$ the level spacing) the posterior log-odds of level $k-d$ against the
true level $k$ are $a_d(\epsilon) = -s^2 d^2/2 - s d\,\epsilon$, so for every level at once
$\log\pi_k = -\mathrm{logsumexp}_d\, a_d$ over the offsets $d \in [k-N+1, k]$, evaluated with
cumulative log-sum-exps in $O(N)$ per node (no $N^2$ posterior matrix).
"""

import math

import equinox as eqx
import numpy as np
import numpy.typing as npt


class LowBitCurves(eqx.Module):
    r"""Results of `low_bit_curves`, as float64 NumPy arrays (nats).

    Attributes:
        n_bits: the bit depth $n$.
        lam: the log-SNR grid.
        loss: $E_x[L(\lambda; x)] = I(x; z_\lambda)$, increasing from 0 to $n\ln 2$.
        dloss: $E_x[\tfrac{d}{d\lambda}L(\lambda; x)] = \tfrac12 E\|\epsilon - \hat\epsilon^*\|^2$.
    """

    n_bits: int = eqx.field(static=True)
    lam: np.ndarray
    loss: np.ndarray
    dloss: np.ndarray


_RANGE = 12.0


def _check(n_bits, lams, num_nodes) -> np.ndarray:
    if isinstance(n_bits, bool) or not isinstance(n_bits, (int, np.integer)) or not 1 <= n_bits <= 12:
        raise ValueError(f"`n_bits` must be an integer in [1, 12]; got {n_bits!r}.")
    if not isinstance(num_nodes, (int, np.integer)) or num_nodes < 8:
        raise ValueError(f"`num_nodes` must be an integer >= 8; got {num_nodes!r}.")
    lam = np.asarray(lams, dtype=np.float64)
    if lam.ndim != 1 or lam.size == 0:
        raise ValueError(f"`lams` must be a non-empty 1-D array of log-SNRs; got shape {lam.shape}.")
    if not np.all(np.isfinite(lam)) or np.max(np.abs(lam)) > 40:
        raise ValueError(f"`lams` must be finite with |lam| <= 40; got range [{lam.min()}, {lam.max()}].")
    return lam


def _shifted_cumlse(a: np.ndarray) -> np.ndarray:
    # out[..., m] = logsumexp(a[..., :m]) for m = 0..K (out[..., 0] = -inf)
    cum = np.logaddexp.accumulate(a, axis=-1)
    pad = np.full(a.shape[:-1] + (1,), -np.inf)
    return np.concatenate([pad, cum], axis=-1)


def _chunk(lam: np.ndarray, n_levels: int, nodes: np.ndarray, weights: np.ndarray):
    delta = 2.0 / (n_levels - 1)
    s = np.exp(0.5 * lam)[:, None, None] * delta  # (L, 1, 1)
    eps = nodes[None, :, None]  # (1, M, 1)
    d = np.arange(1, n_levels, dtype=np.float64)[None, None, :]  # offsets 1..N-1
    quad = -0.5 * (s * d) ** 2
    lin = s * d * eps
    a_pos = quad - lin  # lower neighbours j = k - d
    a_neg = quad + lin  # upper neighbours j = k + d
    p = _shifted_cumlse(a_pos)  # p[..., m]: over d = 1..m
    q = _shifted_cumlse(a_neg)
    logd = np.log(d)
    pd = _shifted_cumlse(a_pos + logd)
    qd = _shifted_cumlse(a_neg + logd)
    k = np.arange(n_levels)
    up = n_levels - 1 - k
    lse = np.logaddexp(0.0, np.logaddexp(p[..., k], q[..., up]))  # (L, M, N): -log posterior of the truth
    mean_d = np.exp(pd[..., k] - lse) - np.exp(qd[..., up] - lse)  # E_pi[k - j]
    loss = math.log(n_levels) - np.einsum("m,lmk->l", weights, lse) / n_levels
    # eps - eps_hat = -s E_pi[d]
    dloss = 0.5 * s[:, 0, 0] ** 2 * np.einsum("m,lmk->l", weights, mean_d**2) / n_levels
    return loss, dloss


def low_bit_curves(n_bits: int, lams: npt.ArrayLike, *, num_nodes: int = 241) -> LowBitCurves:
    r"""$E_x[L(\lambda; x)]$ and $E_x[\frac{d}{d\lambda}L(\lambda; x)]$ for $2^n$-level data (K&G App. I, Fig. 5).

    Args:
        n_bits: bit depth $n$ (1..12); the data is uniform on $2^n$ evenly spaced levels in $[-1, 1]$.
        lams: 1-D grid of log-SNRs, $|\lambda| \le 40$.
        num_nodes: trapezoid nodes over $\epsilon \in [-12, 12]$ (241, a spacing of 0.1, gives ~1e-9 relative
            accuracy).

    Returns:
        `LowBitCurves(n_bits, lam, loss, dloss)`, in nats. The area under `dloss` over the whole real
        line is $n \ln 2$ (the entropy); each bit adds $\ln 2$.

    Raises:
        ValueError: for a bad `n_bits`, `lams` or `num_nodes`.
    """
    lam = _check(n_bits, lams, num_nodes)
    nodes = np.linspace(-_RANGE, _RANGE, int(num_nodes))
    weights = np.exp(-0.5 * nodes**2) / math.sqrt(2.0 * math.pi) * (nodes[1] - nodes[0])
    n_levels = 2 ** int(n_bits)
    # bound the (L, M, N) temporaries to ~4M elements
    step = max(1, 4_000_000 // (len(nodes) * n_levels))
    losses, dlosses = [], []
    for i in range(0, lam.size, step):
        a, b = _chunk(lam[i : i + step], n_levels, nodes, weights)
        losses.append(a)
        dlosses.append(b)
    return LowBitCurves(
        n_bits=int(n_bits), lam=lam, loss=np.concatenate(losses).clip(min=0.0), dloss=np.concatenate(dlosses)
    )
