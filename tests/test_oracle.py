"""The Bayes-optimal denoiser for a finite data set (THEORY §4): exactness, I-MMSE, numerics, errors."""

import math

import equinox as eqx
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.special
import vdmpp as vd
from hypothesis import given
from numpy.polynomial.legendre import leggauss
from vdmpp.oracle import EmpiricalDenoiser

from helpers import finite


def _np_posterior_eps(data, z, lam):
    """Posterior-mean eps for data uniform on the rows, in float64 numpy (THEORY §4)."""
    a, s = math.sqrt(scipy.special.expit(lam)), math.sqrt(scipy.special.expit(-lam))
    d2 = np.sum((z[None] - a * data) ** 2, axis=tuple(range(1, data.ndim)))
    pi = scipy.special.softmax(-d2 / (2 * s**2))
    return np.tensordot(pi, (z[None] - a * data) / s, axes=1), pi


@given(lam=st.floats(-15.0, 15.0), seed=st.integers(0, 2**31 - 1))
def test_matches_numpy_posterior_mean(lam, seed):
    rng = np.random.default_rng(seed)
    data = rng.uniform(-1, 1, (5, 2, 3))
    x = data[rng.integers(5)]
    a, s = math.sqrt(scipy.special.expit(lam)), math.sqrt(scipy.special.expit(-lam))
    z = a * x + s * rng.standard_normal(x.shape)
    ref, ref_pi = _np_posterior_eps(data, z, lam)
    with jax.enable_x64(True):
        oracle = EmpiricalDenoiser(jnp.asarray(data))
        got = oracle(jnp.asarray(z), jnp.float64(lam))
        np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(np.asarray(oracle.posterior(jnp.asarray(z), jnp.float64(lam))), ref_pi, atol=1e-10)
        # x_hat is the posterior mean of x, consistent with eps_hat through z = alpha x + sigma eps
        x_hat = oracle.x_hat(jnp.asarray(z), jnp.float64(lam))
        np.testing.assert_allclose(
            np.asarray(x_hat), np.asarray(vd.process.eps_to_x(jnp.asarray(z), got, jnp.float64(lam))), atol=1e-8
        )


def test_recovers_the_point_at_high_snr(getkey):
    data = jr.uniform(getkey(), (6, 4), minval=-1.0, maxval=1.0)
    oracle = EmpiricalDenoiser(data)
    eps = jr.normal(getkey(), (4,))
    a, s = vd.process.vp_alpha_sigma(jnp.float32(12.0))
    z = a * data[2] + s * eps
    np.testing.assert_allclose(np.asarray(oracle.posterior(z, 12.0)), np.eye(6)[2], atol=1e-6)
    np.testing.assert_allclose(np.asarray(oracle.x_hat(z, 12.0)), np.asarray(data[2]), atol=1e-6)
    # at very low SNR the posterior is the prior (uniform)
    np.testing.assert_allclose(np.asarray(oracle.posterior(z, -30.0)), np.full(6, 1 / 6), rtol=1e-5)


# --- acceptance 6: I-MMSE -------------------------------------------------------------------------------


def _levels(n_bits):
    k = 2**n_bits
    return (2 * (np.arange(k) + 0.5) / k - 1)[:, None]  # 2^n bin centres in [-1, 1]


@eqx.filter_jit
def _mmse_grid(oracle, lam, eps):
    """E_x ||eps - eps_hat*(z_lam)||^2 on a grid of eps, for every lambda node: shape (nodes, x, eps)."""

    def at(l):
        a, s = vd.process.vp_alpha_sigma(l)

        def for_x(x):
            z = a * x[None, :] + s * eps[:, None]
            eps_hat = jax.vmap(lambda zz: oracle(zz, l))(z)
            return jnp.sum((eps[:, None] - eps_hat) ** 2, axis=1)

        return jax.vmap(for_x)(oracle.data)

    return jax.vmap(at)(lam)


@pytest.mark.parametrize("n_bits", [1, 2, 3])
def test_i_mmse(n_bits):
    """½ ∫_{-25}^{25} E||eps - eps_hat*||^2 dlam = H(X) = n ln 2 for data uniform on 2^n levels (THEORY §4).

    float64: at lam = 25, sigma = e^{-12.5}, and float32 rounding of z alone would add ~1 % to the integral.
    E over eps on a fine grid (the error has steep steps in eps, which Gauss-Hermite resolves poorly).
    """
    nodes, weights = leggauss(300)
    lam = 25.0 * nodes
    eps = np.linspace(-9.0, 9.0, 1201)
    eps_w = np.exp(-0.5 * eps**2) / math.sqrt(2 * math.pi) * (eps[1] - eps[0])
    with jax.enable_x64(True):
        oracle = EmpiricalDenoiser(jnp.asarray(_levels(n_bits)))
        mmse = np.asarray(_mmse_grid(oracle, jnp.asarray(lam), jnp.asarray(eps)))
    integral = 0.5 * np.einsum("jnk,k,j->", mmse, eps_w, 25.0 * weights) / 2**n_bits
    assert integral == pytest.approx(n_bits * math.log(2), rel=0.005)


# --- numerics -------------------------------------------------------------------------------------------


@jax.jit
def _oracle_values_and_grads(data, z, lam):
    oracle = EmpiricalDenoiser(data)
    f = lambda zz, ll: jnp.sum(oracle(zz, ll))
    return (
        jax.vmap(oracle)(z, lam),
        jax.vmap(jax.grad(f))(z, lam),
        jax.vmap(jax.grad(f, argnums=1))(z, lam),
    )


def test_finite_float32_for_all_lambda(getkey):
    data = jr.uniform(getkey(), (8, 3), minval=-1.0, maxval=1.0)
    lam = jnp.array([-40.0, -25.0, -5.0, 0.0, 5.0, 25.0, 40.0])
    a, s = vd.process.vp_alpha_sigma(lam)
    eps = jr.normal(getkey(), (lam.size, 3))
    for far in (0.0, 3.0):  # on the data, and off it (far from every row)
        z = a[:, None] * (data[1][None, :] + far) + s[:, None] * eps
        values, z_grads, lam_grads = _oracle_values_and_grads(data, z, lam)
        assert values.dtype == jnp.float32
        assert finite(values) and finite(z_grads) and finite(lam_grads)
    # at lam = 10 (sigma = e^-5, still resolved by float32 z), a sample of row 1 gives back its noise
    oracle = EmpiricalDenoiser(data)
    a10, s10 = vd.process.vp_alpha_sigma(jnp.float32(10.0))
    z = a10 * data[1] + s10 * eps[-1]
    np.testing.assert_allclose(np.asarray(oracle(z, 10.0)), np.asarray(eps[-1]), atol=1e-3)


def test_posterior_and_gradients_match_softmax(getkey):
    """The stabilised posterior equals jax.nn.softmax of the logits, in value and in its Jacobian (moderate lam)."""
    data = jr.uniform(getkey(), (6, 2), minval=-1.0, maxval=1.0)
    oracle = EmpiricalDenoiser(data)
    z = 0.5 * jr.normal(getkey(), (2,))
    for lam in (-2.0, 0.5, 3.0):
        ref = lambda zz: jax.nn.softmax(oracle.posterior_logits(zz, lam))
        np.testing.assert_allclose(np.asarray(oracle.posterior(z, lam)), np.asarray(ref(z)), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(
            np.asarray(jax.jacobian(lambda zz: oracle.posterior(zz, lam))(z)),
            np.asarray(jax.jacobian(ref)(z)),
            rtol=1e-4,
            atol=1e-6,
        )


def test_batched_through_vmap(getkey):
    data = jr.uniform(getkey(), (5, 2), minval=-1.0, maxval=1.0)
    oracle = EmpiricalDenoiser(data)
    z = jr.normal(getkey(), (7, 2))
    lam = jnp.linspace(-5.0, 5.0, 7)
    batched = jax.vmap(oracle)(z, lam)
    np.testing.assert_allclose(np.asarray(batched[3]), np.asarray(oracle(z[3], lam[3])), rtol=1e-6, atol=1e-6)


# --- bad input ------------------------------------------------------------------------------------------


def test_bad_input():
    with pytest.raises(ValueError, match=r"`data` must be shaped \(N, \*data\)"):
        EmpiricalDenoiser(jnp.zeros(3))
    with pytest.raises(TypeError, match="data"):  # jaxtyping (tests) or our message names `data`
        EmpiricalDenoiser(jnp.zeros((3, 2), jnp.int32))
    oracle = EmpiricalDenoiser(jnp.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"`z` must have one example's shape \(2,\); got \(3,\)"):
        oracle(jnp.zeros(3), 0.0)
