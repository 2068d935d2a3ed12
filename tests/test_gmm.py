"""GaussianMixture: closed-form noisy marginals checked against scipy, autodiff and quadrature."""

import math

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.stats
import vdmpp as vd

from helpers import tree_allclose


MEANS = np.array([[-2.0, 0.5], [1.5, 1.0], [0.5, -2.0]])
ISO = np.array([0.3, 0.5, 0.2])
DIAG = np.array([[0.3, 0.6], [0.5, 0.2], [0.2, 0.4]])
W = np.array([0.2, 0.5, 0.3])


def _scipy_logpdf(z, lam, scales):
    a2 = 1.0 / (1.0 + math.exp(-lam)) if math.isfinite(lam) else 1.0
    s2 = 1.0 - a2
    scales = np.broadcast_to(scales[:, None] if scales.ndim == 1 else scales, MEANS.shape)
    dens = sum(
        W[k] * scipy.stats.multivariate_normal(math.sqrt(a2) * MEANS[k], np.diag(a2 * scales[k] ** 2 + s2)).pdf(z)
        for k in range(len(W))
    )
    return np.log(dens)


@pytest.mark.parametrize("scales", [ISO, DIAG], ids=["isotropic", "diagonal"])
@pytest.mark.parametrize("lam", [float("inf"), 3.0, 0.0, -2.5])
def test_log_prob_matches_scipy(scales, lam):
    g = vd.oracle.GaussianMixture(jnp.asarray(MEANS, jnp.float32), jnp.asarray(scales, jnp.float32), jnp.asarray(W))
    z = np.random.default_rng(0).normal(size=(16, 2)) * 1.5
    got = np.asarray(g.log_prob(jnp.asarray(z, jnp.float32), lam))
    assert np.allclose(got, _scipy_logpdf(z, lam, scales), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lam", [4.0, 0.0, -3.0, 15.0])
def test_score_and_denoiser_match_autodiff(lam):
    g = vd.oracle.GaussianMixture(jnp.asarray(MEANS, jnp.float32), jnp.asarray(DIAG, jnp.float32), jnp.asarray(W))
    z = g.sample(jr.key(0), 12, lam=lam)
    auto = jax.vmap(jax.grad(lambda zi: g.log_prob(zi, lam)))(z)
    assert tree_allclose(g.score(z, lam), auto, rtol=1e-4, atol=1e-4)
    sigma = math.sqrt(1.0 / (1.0 + math.exp(lam)))
    # eps_hat = -sigma * score (K&G eq. 134), from the autodiff score
    assert tree_allclose(jax.vmap(g.denoiser, in_axes=(0, None))(z, lam), -sigma * auto, rtol=1e-4, atol=1e-4)


def test_x_hat_matches_quadrature():
    # 1-D mixture: E[x|z] by numerical integration over x on a fine grid (independent of the closed form).
    means, scales, w = np.array([[-1.0], [1.2]]), np.array([0.4, 0.25]), np.array([0.35, 0.65])
    g = vd.oracle.GaussianMixture(jnp.asarray(means, jnp.float32), jnp.asarray(scales, jnp.float32), jnp.asarray(w))
    lam = 0.7
    alpha, sigma = math.sqrt(1 / (1 + math.exp(-lam))), math.sqrt(1 / (1 + math.exp(lam)))
    xs = np.linspace(-5, 5, 20001)
    prior = sum(w[k] * scipy.stats.norm(means[k, 0], scales[k]).pdf(xs) for k in range(2))
    for z in (-1.3, 0.1, 0.9, 2.0):
        post = prior * scipy.stats.norm(alpha * xs, sigma).pdf(z)
        x_mean = np.trapezoid(xs * post, xs) / np.trapezoid(post, xs)
        eps_mean = (z - alpha * x_mean) / sigma
        zz = jnp.asarray([z], jnp.float32)
        assert abs(float(g.x_hat(zz, lam)[0]) - x_mean) < 1e-4
        assert abs(float(g.denoiser(zz, lam)[0]) - eps_mean) < 1e-4


def test_denoiser_is_stable_at_high_snr():
    g = vd.oracle.GaussianMixture(jnp.asarray(MEANS, jnp.float32), 0.3, jnp.asarray(W))
    z = g.sample(jr.key(3), 64, lam=30.0)
    eps = jax.vmap(g.denoiser, in_axes=(0, None))(z, 30.0)
    assert bool(jnp.all(jnp.isfinite(eps)))
    # near the data, eps_hat ~ the noise, which is O(1)
    assert float(jnp.max(jnp.abs(eps))) < 6.0


@pytest.mark.parametrize("lam", [float("inf"), 1.0])
def test_sample_moments(lam):
    g = vd.oracle.GaussianMixture(jnp.asarray(MEANS, jnp.float32), jnp.asarray(DIAG, jnp.float32), jnp.asarray(W))
    n = 200_000
    x = np.asarray(g.sample(jr.key(1), n, lam=lam), np.float64)
    # closed-form moments computed here in NumPy (law of total variance)
    a2 = 1.0 if not math.isfinite(lam) else 1 / (1 + math.exp(-lam))
    m = math.sqrt(a2) * (W @ MEANS)
    cov = sum(W[k] * (np.diag(a2 * DIAG[k] ** 2 + 1 - a2) + a2 * np.outer(MEANS[k], MEANS[k])) for k in range(3))
    cov = cov - np.outer(m, m)
    se = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(x.mean(0) - m) < 5 * se)
    assert np.allclose(np.cov(x.T), cov, atol=0.03)
    assert np.allclose(np.asarray(g.mean(lam)), m, atol=1e-5)
    assert np.allclose(np.asarray(g.covariance(lam)), cov, atol=1e-5)


def test_bad_input():
    with pytest.raises(ValueError, match="`means`"):
        vd.oracle.GaussianMixture(jnp.zeros(3), 1.0)
    with pytest.raises(ValueError, match="`scales`"):
        vd.oracle.GaussianMixture(jnp.zeros((3, 2)), jnp.ones(4))
    with pytest.raises(ValueError, match="`scales` must be positive"):
        vd.oracle.GaussianMixture(jnp.zeros((3, 2)), jnp.array([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="`weights`"):
        vd.oracle.GaussianMixture(jnp.zeros((3, 2)), 1.0, jnp.ones(2))
    g = vd.oracle.GaussianMixture(jnp.zeros((3, 2)), 1.0)
    with pytest.raises(ValueError, match="one example of shape"):
        g.denoiser(jnp.zeros((4, 2)), 0.0)
    with pytest.raises(ValueError, match="data dimension"):
        g.log_prob(jnp.zeros((4, 3)), 0.0)
