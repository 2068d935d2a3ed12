"""K&G Theorem 1 as a property: L_w = int (d/dt w(lambda_t)) L(t; x) dt + w(lambda_max) L(0; x) + const.

Left side: the weighted loss with a deterministic midpoint rule in t through a schedule (`weighted_loss_at`);
right side: `vdmpp.analysis.theorem1_rhs` on `kl_path` over a lambda grid. Both use the same fixed noise
draws, so they agree up to quadrature error, for any schedule, weighting (monotone or not) and denoiser.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import vdmpp as vd
from hypothesis import given, settings, strategies as st


DATA = jnp.array([[-0.7, 0.2], [0.4, -0.5], [0.8, 0.9]])
LAM_MIN, LAM_MAX = -6.0, 6.0
# an imperfect eps-denoiser: the optimal (Wiener) one for Gaussian data N(0, 0.4 I)
SHRINK = vd.oracle.GaussianMixture(jnp.zeros((1, DATA.shape[1])), math.sqrt(0.4)).denoiser
WEIGHTINGS = [vd.weighting.ELBO(), vd.weighting.Sigmoid(k=2.0), vd.weighting.EDM(), vd.weighting.IDDPM()]
SCHEDULES = [vd.schedules.Cosine(LAM_MIN, LAM_MAX), vd.schedules.LinearLogSNR(LAM_MIN, LAM_MAX)]
NUM_T = 2000


@eqx.filter_jit
def _lhs(den, eps, schedule, weighting):
    t = (jnp.arange(NUM_T, dtype=jnp.float32) + 0.5) / NUM_T
    per_t = jax.vmap(
        lambda ti: vd.losses.weighted_loss_at(
            den, DATA, jnp.full((DATA.shape[0],), ti), eps, schedule=schedule, weighting=weighting
        )
    )(t)
    return jnp.mean(per_t, axis=0)


@settings(max_examples=6)
@given(
    w_idx=st.integers(0, len(WEIGHTINGS) - 1),
    s_idx=st.integers(0, len(SCHEDULES) - 1),
    oracle=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_theorem1(w_idx, s_idx, oracle, seed):
    den = vd.oracle.EmpiricalDenoiser(DATA) if oracle else SHRINK
    weighting = WEIGHTINGS[w_idx]
    key = jr.key(seed)
    eps = jr.normal(key, (1,) + DATA.shape)
    # the path for the same single eps per example as the left side (kl_path would draw its own)
    lams = jnp.linspace(LAM_MIN, LAM_MAX, 1201)
    integrand = _integrand(den, eps[0], lams)
    path_one = vd.analysis.KLPath(
        lam=lams, integrand=integrand, stderr=jnp.zeros_like(integrand), cumulative=_cum(integrand, lams)
    )
    rhs = np.asarray(vd.analysis.theorem1_rhs(path_one, weighting))
    lhs = np.asarray(_lhs(den, eps[0], SCHEDULES[s_idx], weighting))
    np.testing.assert_allclose(lhs, rhs, rtol=5e-3, atol=1e-3)


@jax.jit
def _cum(y, x):
    seg = 0.5 * (y[:, 1:] + y[:, :-1]) * jnp.diff(x)[None, :]
    return jnp.concatenate([jnp.zeros_like(y[:, :1]), jnp.cumsum(seg, axis=-1)], axis=-1)


@eqx.filter_jit
def _integrand(den, eps, lams):
    # 1/2 ||eps - eps_hat||^2 per example and lambda, for one fixed eps per example: (B, L)
    def one(lam):
        alpha, sigma = vd.process.vp_alpha_sigma(lam)
        eps_hat = jax.vmap(den, in_axes=(0, None))(alpha * DATA + sigma * eps, lam)
        return 0.5 * jnp.sum((eps - eps_hat) ** 2, axis=-1)

    return jax.vmap(one)(lams).T


@pytest.mark.parametrize("weighting", [vd.weighting.Sigmoid(k=2.0), vd.weighting.EDMMonotonic()])
def test_monotone_weighting_is_expected_kl(weighting):
    # eq. 12: for monotone w normalised to w(lam_min) = 1, p_w(t) = dw(lam_t)/dt is a probability
    # distribution on [0, 1] (plus an atom w(lam_max) at t = 0): its total mass is w(lam_min)/w(lam_min) = 1
    lam = jnp.linspace(LAM_MIN, LAM_MAX, 4001)
    w = weighting(lam) / weighting(jnp.asarray(LAM_MIN))
    dens = -jnp.gradient(w, lam)  # dw/dt >= 0 as t increases while lam decreases
    assert float(jnp.min(dens)) >= -1e-4  # float32 round-off on the flat part
    mass = float(jnp.trapezoid(dens, lam)) + float(w[-1])
    assert mass == pytest.approx(1.0, abs=1e-4)
