r"""Post-hoc EMA: power-function EMA profiles and their least-squares combination (THEORY §13).

Karras et al. 2024 ("Analyzing and improving the training dynamics of diffusion models", App. C, arXiv
2312.02696). A power-function EMA with exponent $\gamma$ updates
$\hat\theta_t = \beta_t\hat\theta_{t-1} + (1-\beta_t)\theta_t$ with $\beta_t = (1 - 1/t)^{\gamma+1}$ ($t$ = step,
from 1). Unrolled, $\theta_k$ gets the weight $(k^{\gamma+1} - (k-1)^{\gamma+1})/t^{\gamma+1}$: exactly the
profile $p_{t,\gamma}(\tau) = (\gamma+1)\tau^\gamma/t^{\gamma+1}$ on $[0, t]$ integrated over $(k-1, k]$. So the
EMA is $\int_0^t p_{t,\gamma}(\tau)\theta(\tau)d\tau$ for the piecewise-constant trajectory ($\theta(\tau) =
\theta_k$ on $(k-1, k]$), and a linear combination of EMAs is the EMA under the same combination of profiles.
The profile's relative width is $\sigma_{rel} = \sqrt{(\gamma+1)/((\gamma+2)^2(\gamma+3))}$ (EDM2 eq. 123).

Reconstruction: given snapshots $\hat\theta_i$ with profiles $p_i$, choose $x$ minimising
$\|\sum_i x_i p_i - p_{target}\|_{L^2}$ subject to $\sum_i x_i = 1$ (every profile integrates to 1, so constants
are preserved), using the closed-form inner products
$\langle p_{a}, p_{b}\rangle = \frac{(\gamma_a+1)(\gamma_b+1)}{\gamma_a+\gamma_b+1}
\frac{m^{\gamma_a+\gamma_b+1}}{t_a^{\gamma_a+1}t_b^{\gamma_b+1}}$, $m = \min(t_a, t_b)$.
The answer is $\sum_i x_i\hat\theta_i$; the relative $L^2$ residual of the profile fit says how well the
snapshots represent the target.
"""

import math
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from .._types import Array, ArrayLike, Int


def gamma_to_sigma_rel(gamma: float) -> float:
    r"""$\sigma_{rel} = \sqrt{(\gamma+1)/((\gamma+2)^2(\gamma+3))}$ of the power-function profile (EDM2 eq. 123)."""
    g = float(gamma)
    if not g > -1.0:
        raise ValueError(f"`gamma` must be > -1 (an integrable profile); got {gamma}.")
    return math.sqrt((g + 1.0) / ((g + 2.0) ** 2 * (g + 3.0)))


# The widest profile: d/dgamma log sigma_rel^2 = 1/(g+1) - 2/(g+2) - 1/(g+3) = 0  <=>  g^2 + 3g + 1 = 0.
SIGMA_REL_MAX = gamma_to_sigma_rel((math.sqrt(5.0) - 3.0) / 2.0)  # 0.30028


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    r"""The exponent $\gamma$ of the power-function profile of relative width $\sigma_{rel}$.

    Squaring EDM2 eq. 123 and writing $u = \sigma_{rel}^{-2}$ gives the cubic
    $\gamma^3 + 7\gamma^2 + (16 - u)\gamma + 12 - u = 0$; the profile is its largest real root.

    Raises:
        ValueError: `sigma_rel` outside $(0, 0.3003)$ (no power-function profile is that wide).
    """
    s = float(sigma_rel)
    if not 0.0 < s < SIGMA_REL_MAX:
        raise ValueError(
            f"`sigma_rel` must lie in (0, {SIGMA_REL_MAX:.4f}) (the widest power-function profile); got {sigma_rel}. "
            "Typical values are 0.05-0.2."
        )
    u = s**-2
    roots = np.roots([1.0, 7.0, 16.0 - u, 12.0 - u])
    real = roots.real[np.abs(roots.imag) <= 1e-9 * np.maximum(1.0, np.abs(roots.real))]
    gamma = float(real.max())
    # polish with Newton steps on f(g) = g^3 + 7g^2 + (16-u)g + 12 - u (np.roots is accurate to ~1e-12 relative)
    for _ in range(3):
        f = ((gamma + 7.0) * gamma + 16.0 - u) * gamma + 12.0 - u
        gamma -= f / ((3.0 * gamma + 14.0) * gamma + 16.0 - u)
    return gamma


def profile_inner_product(t_a: ArrayLike, gamma_a: ArrayLike, t_b: ArrayLike, gamma_b: ArrayLike) -> np.ndarray:
    r"""The inner product $\int_0^\infty p_{t_a,\gamma_a}(\tau)\,p_{t_b,\gamma_b}(\tau)\,d\tau$ (float64; broadcasts).

    $p_{t,\gamma}(\tau) = (\gamma+1)\tau^\gamma/t^{\gamma+1}$ on $[0, t]$; with $m = \min(t_a, t_b)$ the integral
    is $\frac{(\gamma_a+1)(\gamma_b+1)}{\gamma_a+\gamma_b+1}\,\frac{m^{\gamma_a+\gamma_b+1}}{t_a^{\gamma_a+1}
    t_b^{\gamma_b+1}}$, computed in log space (the powers overflow for narrow profiles).
    """
    ta, ga, tb, gb = (np.asarray(v, np.float64) for v in (t_a, gamma_a, t_b, gamma_b))
    m = np.minimum(ta, tb)
    log = (ga + gb + 1.0) * np.log(m) - (ga + 1.0) * np.log(ta) - (gb + 1.0) * np.log(tb)
    return np.asarray((ga + 1.0) * (gb + 1.0) / (ga + gb + 1.0) * np.exp(log))


def posthoc_coefficients(
    steps: Sequence[int], sigma_rels: Sequence[float], step: int, sigma_rel: float
) -> tuple[np.ndarray, float]:
    r"""Weights $x$ with $\sum_i x_i p_i \approx p_{step,\sigma_{rel}}$ and the fit's relative $L^2$ residual.

    Least squares over the profiles $p_i$ (snapshot $i$ taken at `steps[i]` with width `sigma_rels[i]`) with
    $\sum_i x_i = 1$: the normal equations with the closed-form Gram matrix, bordered by the constraint
    (solved by `numpy.linalg.lstsq`, so duplicate snapshots do no harm).

    Returns:
        `(x, residual)`: `x` of shape `(len(steps),)`, and $\|\sum_i x_i p_i - p\|/\|p\|$.
    """
    t = np.asarray(steps, np.float64)
    g = np.asarray([sigma_rel_to_gamma(s) for s in sigma_rels], np.float64)
    if t.shape != g.shape or t.ndim != 1 or t.size == 0:
        raise ValueError(f"`steps` and `sigma_rels` must be non-empty and of one length; got {t.shape}, {g.shape}.")
    if np.any(t < 1):
        raise ValueError(f"snapshot steps must be >= 1; got {t.min()}.")
    g_out = sigma_rel_to_gamma(sigma_rel)
    gram = profile_inner_product(t[:, None], g[:, None], t[None, :], g[None, :])
    rhs = profile_inner_product(t, g, step, g_out)
    n = t.size
    kkt = np.zeros((n + 1, n + 1))
    kkt[:n, :n], kkt[:n, n], kkt[n, :n] = gram, 1.0, 1.0
    x = np.linalg.lstsq(kkt, np.append(rhs, 1.0), rcond=None)[0][:n]
    norm2 = float(profile_inner_product(step, g_out, step, g_out))
    res2 = norm2 - 2.0 * float(x @ rhs) + float(x @ gram @ x)
    return x, math.sqrt(max(res2, 0.0) / norm2)


class PostHocEMA(eqx.Module):
    r"""Track power-function EMAs of the trainable parameters for post-hoc EMA (THEORY §13; EDM2 App. C).

    Each of `sigma_rels` gets its own EMA in the train state (`TrainState.phema`, float32, laid out like the
    parameters, saved in every checkpoint) with $\beta_t = (1 - 1/t)^{\gamma+1}$, computed as
    $\exp((\gamma+1)\,\mathrm{log1p}(-1/t))$ so $1 - \beta_t \approx (\gamma+1)/t$ keeps its digits at large $t$.
    The loop writes them to `WORKDIR/ema_snapshots/` every `snapshot_every` steps; `reconstruct_ema` combines
    snapshots into the EMA of any other $\sigma_{rel}$.

    Args:
        sigma_rels: relative widths of the tracked profiles (EDM2 tracks 0.05 and 0.10).

    Raises:
        ValueError: empty, repeated, or a width outside $(0, 0.3003)$.
    """

    sigma_rels: tuple[float, ...] = eqx.field(static=True, default=(0.05, 0.10))

    def __check_init__(self):
        if not isinstance(self.sigma_rels, tuple) or not self.sigma_rels:
            raise ValueError(
                f"`sigma_rels` must be a non-empty tuple of floats, e.g. (0.05, 0.1); got {self.sigma_rels!r}."
            )
        if len(set(self.sigma_rels)) != len(self.sigma_rels):
            raise ValueError(f"`sigma_rels` must be distinct; got {self.sigma_rels}.")
        for s in self.sigma_rels:
            sigma_rel_to_gamma(s)

    @property
    def gammas(self) -> tuple[float, ...]:
        """The exponent of each profile."""
        return tuple(sigma_rel_to_gamma(s) for s in self.sigma_rels)

    def init(self, trainable: Any) -> tuple[Any, ...]:
        """One copy of the trainable leaves per profile (distinct buffers, so the state can be donated)."""
        return tuple(jtu.tree_map(lambda x: jnp.array(x, copy=True), trainable) for _ in self.sigma_rels)

    def update(self, phema: tuple[Any, ...], params: Any, step: Int[Array, ""]) -> tuple[Any, ...]:
        r"""Every profile after the update to the parameters `params` of step `step` (the new step count, >= 1)."""
        if len(phema) != len(self.sigma_rels):
            raise ValueError(
                f"The train state holds {len(phema)} post-hoc EMAs but `posthoc` tracks {len(self.sigma_rels)} "
                "profiles; build the state with `init_train_state(..., posthoc=...)` using the same PostHocEMA."
            )
        t = jnp.asarray(step).astype(jnp.float32)
        out = []
        for ema, gamma in zip(phema, self.gammas):
            one_minus_beta = -jnp.expm1((gamma + 1.0) * jnp.log1p(-1.0 / t))  # beta_1 = 0: the first EMA is theta_1
            out.append(jtu.tree_map(lambda e, p, c=one_minus_beta: e + c.astype(e.dtype) * (p - e), ema, params))
        return tuple(out)
