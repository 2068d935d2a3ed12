"""Forward processes and parameterisations (THEORY §1, §3): pointwise identities and the v/FM loss equalities."""

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
from vdmpp import process as P

from helpers import tree_allclose


SD = 0.5  # EDM's sigma_data


def _np_alpha_sigma(lam):
    # VP, THEORY §1, computed independently in float64
    return np.sqrt(scipy.special.expit(lam)), np.sqrt(scipy.special.expit(-lam))


def _draw(seed, shape=(5,)):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, shape), rng.standard_normal(shape), rng.standard_normal(shape)


def _sq(a):
    return float(np.sum(np.asarray(a, np.float64) ** 2))


# --- processes -----------------------------------------------------------------------------------


@given(lam=st.floats(-40.0, 40.0))
def test_vp_ve_alpha_sigma(lam):
    a, s = P.vp_alpha_sigma(jnp.float32(lam))
    np.testing.assert_allclose(float(a) ** 2 + float(s) ** 2, 1.0, rtol=1e-6)
    assert float(a) > 0 and float(s) > 0
    np.testing.assert_allclose(2 * math.log(float(a)) - 2 * math.log(float(s)), lam, rtol=1e-5, atol=1e-4)
    la, ls = P.vp_log_alpha_sigma(jnp.float32(lam))
    ref_a, ref_s = _np_alpha_sigma(lam)
    np.testing.assert_allclose([float(la), float(ls)], [math.log(ref_a), math.log(ref_s)], rtol=1e-5, atol=1e-6)
    a, s = P.ve_alpha_sigma(jnp.float32(lam))
    np.testing.assert_allclose([float(a), float(s)], [1.0, math.exp(-lam / 2)], rtol=1e-6)


# --- acceptance 5: the identities of THEORY §3, pointwise ------------------------------------------


@given(lam=st.floats(-20.0, 20.0), seed=st.integers(0, 2**31 - 1))
def test_targets_and_loss_identities(lam, seed):
    """True targets from (x, eps) and K&G eq. 122-126 for a random prediction eps_hat (float64)."""
    x, eps, eps_hat = _draw(seed)
    a, s = _np_alpha_sigma(lam)
    z = a * x + s * eps
    # targets, computed here from THEORY §3 formulas
    v = a * eps - s * x
    o = x - eps
    score = -(z - a * x) / s**2  # grad_z log q(z|x)
    e = math.exp(-lam)
    F = (
        math.sqrt(e + SD**2) / (math.exp(-lam / 2) * SD) * x - SD * a / (math.exp(-lam / 2) * math.sqrt(e + SD**2)) * z
    )  # K&G eq. 120
    F121 = (
        -math.sqrt(e + SD**2) / SD * eps
        + math.exp(lam / 2) * (e + SD**2 - SD**2 * a**2) / (math.sqrt(e + SD**2) * SD * a) * z
    )  # K&G eq. 121 (an independent check of the formula we test against)
    np.testing.assert_allclose(F, F121, rtol=1e-6, atol=1e-6 * np.max(np.abs(F)))

    with jax.enable_x64(True):
        J = lambda arr: jnp.asarray(arr, jnp.float64)
        L = jnp.float64(lam)
        zj, ej, ehj = J(z), J(eps), J(eps_hat)
        # conversions of the true eps give the true targets
        np.testing.assert_allclose(np.asarray(P.eps_to_x(zj, ej, L)), x, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(np.asarray(P.eps_to_v(zj, ej, L)), v, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(np.asarray(P.eps_to_o(zj, ej, L)), o, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(np.asarray(P.eps_to_score(zj, ej, L)), score, rtol=1e-9)
        np.testing.assert_allclose(np.asarray(P.eps_to_f(zj, ej, L, SD)), F, rtol=1e-8, atol=1e-8 * np.max(np.abs(F)))
        # and back
        np.testing.assert_allclose(np.asarray(P.x_to_eps(zj, J(x), L)), eps, rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(np.asarray(P.v_to_eps(zj, J(v), L)), eps, rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(np.asarray(P.o_to_eps(zj, J(o), L)), eps, rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(np.asarray(P.score_to_eps(zj, J(score), L)), eps, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(np.asarray(P.f_to_eps(zj, J(F), L, SD)), eps, rtol=1e-7, atol=1e-7)
        np.testing.assert_allclose(np.asarray(P.v_to_x(zj, J(v), L)), x, rtol=1e-9, atol=1e-9)

        # K&G eq. 122-126 (and the o-form): every error is a fixed multiple of ||eps - eps_hat||^2
        err = _sq(eps - eps_hat)
        x_hat = np.asarray(P.eps_to_x(zj, ehj, L))
        v_hat = np.asarray(P.eps_to_v(zj, ehj, L))
        s_hat = np.asarray(P.eps_to_score(zj, ehj, L))
        f_hat = np.asarray(P.eps_to_f(zj, ehj, L, SD))
        o_hat = np.asarray(P.eps_to_o(zj, ehj, L))
    np.testing.assert_allclose(math.exp(lam) * _sq(x - x_hat), err, rtol=1e-7)
    np.testing.assert_allclose(s**2 * _sq(score - s_hat), err, rtol=1e-7)
    np.testing.assert_allclose(_sq(v - v_hat) / (e + 1), err, rtol=1e-7)
    np.testing.assert_allclose(_sq(F - f_hat) / (e / SD**2 + 1), err, rtol=1e-6)
    np.testing.assert_allclose(_sq(o - o_hat) / (1 + math.exp(-lam / 2)) ** 2, err, rtol=1e-7)


PARAMETERISATIONS = [
    P.EpsPrediction(),
    P.XPrediction(),
    P.VPrediction(),
    P.FPrediction(sigma_data=0.5),
    P.FPrediction(sigma_data=1.0),
    P.OPrediction(),
    P.ScorePrediction(),
]


@pytest.mark.parametrize("par", PARAMETERISATIONS, ids=lambda p: f"{type(p).__name__}")
@given(lam=st.floats(-20.0, 20.0), seed=st.integers(0, 2**31 - 1))
def test_parameterisation_round_trip(par, lam, seed):
    x, eps, _ = _draw(seed)
    a, s = _np_alpha_sigma(lam)
    with jax.enable_x64(True):
        z, e, L = jnp.asarray(a * x + s * eps), jnp.asarray(eps), jnp.float64(lam)
        np.testing.assert_allclose(np.asarray(par.to_eps(z, par.from_eps(z, e, L), L)), eps, rtol=1e-7, atol=1e-7)
        # as_eps_denoiser turns a network predicting `par`'s target into the eps-denoiser
        net = lambda zz, ll: par.from_eps(zz, e, ll)  # an "oracle" network that knows eps
        den = P.as_eps_denoiser(net, par)
        np.testing.assert_allclose(np.asarray(den(z, L)), eps, rtol=1e-7, atol=1e-7)


@given(lam=st.floats(-8.0, 8.0), seed=st.integers(0, 2**31 - 1))
def test_round_trips_float32(lam, seed):
    # float32, the precision users train in: moderate lambda keeps the cancellations in check
    x, eps, _ = _draw(seed)
    a, s = _np_alpha_sigma(lam)
    z, e, L = jnp.asarray(a * x + s * eps, jnp.float32), jnp.asarray(eps, jnp.float32), jnp.float32(lam)
    for par in PARAMETERISATIONS:
        back = par.to_eps(z, par.from_eps(z, e, L), L)
        assert back.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(back), eps, rtol=1e-3, atol=1e-3)


def test_as_eps_denoiser_passthrough_and_shape_error():
    f = lambda z, lam: 2.0 * z
    z = jnp.arange(3.0)
    assert tree_allclose(P.as_eps_denoiser(f)(z, jnp.float32(0.3)), 2.0 * z)
    assert tree_allclose(P.as_eps_denoiser(f, P.EpsPrediction())(z, jnp.float32(0.3)), 2.0 * z)
    bad = P.as_eps_denoiser(lambda z, lam: z[:2], P.VPrediction())
    with pytest.raises(ValueError, match="shaped like its input"):
        bad(jnp.ones(3), jnp.float32(0.0))


# --- acceptance 5: v-prediction and flow-matching losses as weighted losses (quadrature) -------------

DIM = 4
_MLP = eqx.nn.MLP(DIM + 1, DIM, width_size=32, depth=2, activation=jnp.tanh, key=jr.key(1))


class _Net(eqx.Module):
    """A fixed random MLP `(z, lam) -> output`, taking lambda as a feature."""

    mlp: eqx.nn.MLP

    def __call__(self, z, lam):
        return self.mlp(jnp.concatenate([z, jnp.reshape(lam / 10.0, (1,)).astype(z.dtype)]))


NET = _Net(_MLP)


class _FMNet(eqx.Module):
    """A flow-matching network in its own variables: o_hat = g(z_fm, t) with z_fm = (1 - t) x + t eps."""

    mlp: eqx.nn.MLP

    def __call__(self, z_fm, t):
        return self.mlp(jnp.concatenate([z_fm, jnp.reshape(t, (1,)).astype(z_fm.dtype)]))


class _FMAsVP(eqx.Module):
    """The same network seen from VP variables (z, lam): z_fm = z * sigmoid(lam/2)/alpha, t = sigmoid(-lam/2)."""

    g: _FMNet

    def __call__(self, z, lam):
        alpha, _ = P.vp_alpha_sigma(lam)
        return self.g(z * jax.nn.sigmoid(0.5 * lam) / alpha, jax.nn.sigmoid(-0.5 * lam))


FMNET = _FMNet(_MLP)

NODES, WEIGHTS = leggauss(256)
T_NODES = (NODES + 1) / 2  # Gauss-Legendre on [0, 1]
T_WEIGHTS = WEIGHTS / 2
NUM_EPS = 16


@eqx.filter_jit
def _v_loss_direct(net, x, eps, t):
    """E_t ||v - v_hat||^2 with the cosine schedule written out: alpha = cos(pi t/2), sigma = sin(pi t/2)."""
    alpha, sigma = jnp.cos(0.5 * jnp.pi * t), jnp.sin(0.5 * jnp.pi * t)
    lam = -2.0 * jnp.log(jnp.tan(0.5 * jnp.pi * t))

    def one(tt_alpha, tt_sigma, tt_lam, e):
        z = tt_alpha * x + tt_sigma * e
        v = tt_alpha * e - tt_sigma * x
        return jnp.sum((v - net(z, tt_lam)) ** 2)

    per = jax.vmap(lambda a, s, l: jax.vmap(lambda e: one(a, s, l, e))(eps))(alpha, sigma, lam)
    return jnp.mean(per, axis=1)  # one value per t node


@eqx.filter_jit
def _fm_loss_direct(g, x, eps, t):
    """E_t ||o - o_hat||^2 with o = x - eps, z_fm = (1 - t) x + t eps (conditional flow matching, OT path)."""

    def one(tt, e):
        return jnp.sum(((x - e) - g((1 - tt) * x + tt * e, tt)) ** 2)

    return jnp.mean(jax.vmap(lambda tt: jax.vmap(lambda e: one(tt, e))(eps))(t), axis=1)


@eqx.filter_jit
def _weighted_at_nodes(denoiser, x, eps, t, schedule, weighting):
    """weighted_loss_at at every node t, averaged over the same eps draws."""

    def per_node(tt):
        xb = jnp.broadcast_to(x, eps.shape)
        tb = jnp.full((eps.shape[0],), tt, x.dtype)
        return jnp.mean(vd.losses.weighted_loss_at(denoiser, xb, tb, eps, schedule=schedule, weighting=weighting))

    return jax.vmap(per_node)(t)


def test_v_prediction_is_weighted_loss(getkey):
    x = jr.uniform(getkey(), (DIM,), minval=-1.0, maxval=1.0)
    eps = jr.normal(getkey(), (NUM_EPS, DIM))
    t = jnp.asarray(T_NODES, jnp.float32)
    direct = np.asarray(_v_loss_direct(NET, x, eps, t), np.float64) @ T_WEIGHTS
    cosine = vd.schedules.Cosine(lam_min=-math.inf, lam_max=math.inf)
    den = P.as_eps_denoiser(NET, P.VPrediction())
    vals = _weighted_at_nodes(den, x, eps, t, cosine, vd.weighting.FlowMatching())
    weighted = (2 / math.pi) * (np.asarray(vals, np.float64) @ T_WEIGHTS)  # w = (2/pi) e^{-lam/2}
    assert direct > 0.1
    np.testing.assert_allclose(weighted, direct, rtol=1e-4)
    # the paper's printed constant (pi instead of 2/pi, THEORY erratum) is not it
    assert abs(math.pi * weighted / (2 / math.pi) - direct) > 0.5 * direct


def test_flow_matching_is_weighted_loss(getkey):
    x = jr.uniform(getkey(), (DIM,), minval=-1.0, maxval=1.0)
    eps = jr.normal(getkey(), (NUM_EPS, DIM))
    t = jnp.asarray(T_NODES, jnp.float32)
    direct = np.asarray(_fm_loss_direct(FMNET, x, eps, t), np.float64) @ T_WEIGHTS
    fm = vd.schedules.FlowMatchingOT(lam_min=-math.inf, lam_max=math.inf)
    den = P.as_eps_denoiser(_FMAsVP(FMNET), P.OPrediction())
    vals = _weighted_at_nodes(den, x, eps, t, fm, vd.weighting.FlowMatching())  # w = e^{-lam/2}
    weighted = np.asarray(vals, np.float64) @ T_WEIGHTS
    assert direct > 0.1
    np.testing.assert_allclose(weighted, direct, rtol=1e-4)


class _DensityWeighting(vd.weighting.AbstractWeighting):
    """w(lambda) = p(lambda) of a schedule (test-only)."""

    schedule: vd.schedules.AbstractSchedule

    def log_weight(self, lam):
        """log p(lambda)."""
        return jnp.log(self.schedule.density(lam))


def test_eps_prediction_is_density_weighting(getkey):
    """½ E_t ||eps - eps_hat||^2 under a schedule is the weighted loss with w = p(lambda) (THEORY §3)."""
    x = jr.uniform(getkey(), (DIM,), minval=-1.0, maxval=1.0)
    eps = jr.normal(getkey(), (NUM_EPS, DIM))
    t = jnp.asarray(T_NODES, jnp.float32)
    cosine = vd.schedules.Cosine(lam_min=-15.0, lam_max=15.0)
    lam = cosine.lam(t)

    def direct_at(l):
        a, s = P.vp_alpha_sigma(l)
        return jnp.mean(jax.vmap(lambda e: 0.5 * jnp.sum((e - NET(a * x + s * e, l)) ** 2))(eps))

    direct = np.asarray(jax.vmap(direct_at)(lam), np.float64) @ T_WEIGHTS
    vals = _weighted_at_nodes(NET, x, eps, t, cosine, _DensityWeighting(cosine))
    np.testing.assert_allclose(np.asarray(vals, np.float64) @ T_WEIGHTS, direct, rtol=1e-4)
