"""KL–Fisher relation (K&G App. G) for a conservative score: a 1-D Gaussian-mixture model written here.

For a model whose reverse process uses the exact score of its own diffused marginals p_lam (a Gaussian
mixture, closed form), the joint KL L(lam; x) = KL(q(z_lam|x) || p_lam), and
d/dlam L = 1/2 sigma^2 D_F(q(z_lam|x) || p_lam) = 1/2 E||eps - eps_hat||^2 with eps_hat = -sigma * score.
Checked by finite differences of a quadrature KL against a quadrature Fisher divergence (NumPy, float64).
"""

import math

import numpy as np
from hypothesis import given, strategies as st


def _vp(lam):
    return math.sqrt(1 / (1 + math.exp(-lam))), math.sqrt(1 / (1 + math.exp(lam)))


def _mixture(z, lam, means, scales, weights):
    # diffused mixture: components N(alpha m_k, alpha^2 s_k^2 + sigma^2); log density and score at z
    alpha, sigma = _vp(lam)
    var = alpha**2 * scales**2 + sigma**2
    logc = np.log(weights) - 0.5 * np.log(2 * np.pi * var) - 0.5 * (z[:, None] - alpha * means) ** 2 / var
    logp = np.logaddexp.reduce(logc, axis=1)
    resp = np.exp(logc - logp[:, None])
    score = np.sum(resp * (-(z[:, None] - alpha * means) / var), axis=1)
    return logp, score


def _kl_and_fisher(x, lam, params, n=4001):
    alpha, sigma = _vp(lam)
    z = alpha * x + sigma * np.linspace(-10, 10, n)
    logq = -0.5 * ((z - alpha * x) / sigma) ** 2 - math.log(sigma * math.sqrt(2 * math.pi))
    q = np.exp(logq)
    logp, score = _mixture(z, lam, *params)
    kl = np.trapezoid(q * (logq - logp), z)
    grad_logq = -(z - alpha * x) / sigma**2
    fisher = np.trapezoid(q * (grad_logq - score) ** 2, z)
    return kl, fisher


@given(
    x=st.floats(-1.5, 1.5),
    lam=st.floats(-4.0, 6.0),
    means=st.lists(st.floats(-1.0, 1.0), min_size=2, max_size=3),
    scale=st.floats(0.1, 0.6),
    seed=st.integers(0, 1000),
)
def test_dkl_dlam_is_half_sigma2_fisher(x, lam, means, scale, seed):
    rng = np.random.default_rng(seed)
    k = len(means)
    params = (np.array(means), scale * rng.uniform(0.5, 1.5, k), rng.dirichlet(np.ones(k)))
    h = 1e-4
    kl_up, _ = _kl_and_fisher(x, lam + h, params)
    kl_down, _ = _kl_and_fisher(x, lam - h, params)
    _, fisher = _kl_and_fisher(x, lam, params)
    _, sigma = _vp(lam)
    lhs = (kl_up - kl_down) / (2 * h)
    rhs = 0.5 * sigma**2 * fisher
    assert rhs >= 0
    assert abs(lhs - rhs) <= 1e-5 + 1e-4 * abs(rhs), (lhs, rhs)
