"""Schedules (THEORY §2): monotonicity, inverse, endpoints, density, normalisation, hand values, numerics, errors."""

import math

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.special
import scipy.stats
import vdmpp as vd
from hypothesis import given
from vdmpp import schedules as S

from helpers import finite


SHIFT = math.log(64 / 32)  # s = log(64/d) for d = 32

# Every concrete schedule, with the paper's truncation and with an asymmetric one.
ALL_SCHEDULES = [
    S.LinearLogSNR(lam_min=-20.0, lam_max=20.0),
    S.Cosine(lam_min=-20.0, lam_max=20.0),
    S.ShiftedCosine(shift=SHIFT, lam_min=-15.0 + SHIFT, lam_max=15.0 + SHIFT),
    S.EDMTraining(lam_min=-20.0, lam_max=20.0),
    S.EDMSampling(sigma_min=0.002, sigma_max=80.0, rho=7.0),
    S.FlowMatchingOT(lam_min=-20.0, lam_max=20.0),
    S.LinearLogSNR(lam_min=-7.0, lam_max=12.0),
    S.Cosine(lam_min=-15.0, lam_max=12.0),
    S.ShiftedCosine(shift=-1.0, lam_min=-18.0, lam_max=9.0),
    S.EDMTraining(lam_min=-10.0, lam_max=15.0),
    S.EDMSampling(sigma_min=0.01, sigma_max=20.0, rho=3.0, lam_min=-5.0, lam_max=8.0),
    S.FlowMatchingOT(lam_min=-30.0, lam_max=5.0),
]


def _vgrad(f):
    """Elementwise derivative of a scalar function, jitted (one compile instead of op-by-op dispatch)."""
    return jax.jit(jax.vmap(jax.grad(f)))


def _id(s):
    return f"{type(s).__name__}[{s.lam_min:.3g},{s.lam_max:.3g}]"


# --- independent float64 reference: THEORY §2 table + truncation formulas --------------------------


def _edm_sampling_consts(s):
    return s.sigma_max ** (1 / s.rho), s.sigma_min ** (1 / s.rho)


def ref_f(s, t):
    """Untruncated lambda = f(t) from the THEORY §2 table (float64 numpy)."""
    t = np.asarray(t, np.float64)
    if isinstance(s, S.LinearLogSNR):
        return s.lam_max + (s.lam_min - s.lam_max) * t
    if isinstance(s, S.Cosine):
        return -2 * np.log(np.tan(np.pi * t / 2))
    if isinstance(s, S.ShiftedCosine):
        return -2 * np.log(np.tan(np.pi * t / 2)) + 2 * s.shift
    if isinstance(s, S.EDMTraining):
        return 2.4 + 2.4 * scipy.special.ndtri(1 - t)
    if isinstance(s, S.EDMSampling):
        a, b = _edm_sampling_consts(s)
        return -2 * s.rho * np.log(a + (1 - t) * (b - a))
    if isinstance(s, S.FlowMatchingOT):
        return 2 * np.log((1 - t) / t)
    raise TypeError(s)


def ref_finv(s, lam):
    """Untruncated t = f^{-1}(lambda)."""
    lam = np.asarray(lam, np.float64)
    if isinstance(s, S.LinearLogSNR):
        return (s.lam_max - lam) / (s.lam_max - s.lam_min)
    if isinstance(s, S.Cosine):
        return 2 / np.pi * np.arctan(np.exp(-lam / 2))
    if isinstance(s, S.ShiftedCosine):
        return 2 / np.pi * np.arctan(np.exp(-lam / 2 + s.shift))
    if isinstance(s, S.EDMTraining):
        return scipy.stats.norm.cdf((2.4 - lam) / 2.4)
    if isinstance(s, S.EDMSampling):
        a, b = _edm_sampling_consts(s)
        return 1 - (np.exp(-lam / (2 * s.rho)) - a) / (b - a)
    if isinstance(s, S.FlowMatchingOT):
        return scipy.special.expit(-lam / 2)
    raise TypeError(s)


def ref_p(s, lam):
    """Untruncated p(lambda)."""
    lam = np.asarray(lam, np.float64)
    if isinstance(s, S.LinearLogSNR):
        return np.full_like(lam, 1 / (s.lam_max - s.lam_min))
    if isinstance(s, S.Cosine):
        return 1 / np.cosh(lam / 2) / (2 * np.pi)
    if isinstance(s, S.ShiftedCosine):
        return 1 / np.cosh(lam / 2 - s.shift) / (2 * np.pi)
    if isinstance(s, S.EDMTraining):
        return scipy.stats.norm.pdf(lam, 2.4, 2.4)
    if isinstance(s, S.EDMSampling):
        a, b = _edm_sampling_consts(s)
        return np.exp(-lam / (2 * s.rho)) / (2 * s.rho * (a - b))
    if isinstance(s, S.FlowMatchingOT):
        return 1 / np.cosh(lam / 4) ** 2 / 8
    raise TypeError(s)


def ref_truncated(s):
    """(lam(t), t(lam), p(lam)) of the schedule truncated to [lam_min, lam_max] (K&G 127-131)."""
    t0, t1 = ref_finv(s, s.lam_max), ref_finv(s, s.lam_min)
    lam = lambda t: ref_f(s, t0 + (t1 - t0) * np.asarray(t))
    tinv = lambda l: (ref_finv(s, l) - t0) / (t1 - t0)
    dens = lambda l: np.where((l >= s.lam_min) & (l <= s.lam_max), ref_p(s, l) / (t1 - t0), 0.0)
    return lam, tinv, dens


# --- acceptance 2: shared properties ---------------------------------------------------------------


@pytest.mark.parametrize("s", ALL_SCHEDULES, ids=_id)
def test_lam_strictly_decreasing(s):
    t = jnp.linspace(0.0, 1.0, 20001)
    lam = np.asarray(s.lam(t))
    assert np.all(np.diff(lam) < 0)


@pytest.mark.parametrize("s", ALL_SCHEDULES, ids=_id)
@given(t1=st.floats(0.0, 1.0), gap=st.floats(1e-4, 1.0))
def test_lam_strictly_decreasing_hypothesis(s, t1, gap):
    t2 = min(t1 + gap, 1.0)
    if t2 - t1 < 1e-4:
        t1 = t2 - 1e-4
    assert float(s.lam(jnp.float32(t1))) > float(s.lam(jnp.float32(t2)))


@pytest.mark.parametrize("s", ALL_SCHEDULES, ids=_id)
@given(t=st.floats(0.0, 1.0))
def test_t_inverts_lam(s, t):
    t = jnp.float32(t)
    assert abs(float(s.t(s.lam(t))) - float(t)) <= 1e-6  # float32 round-off


@pytest.mark.parametrize("s", ALL_SCHEDULES, ids=_id)
def test_t_inverts_lam_grid(s):
    t = jnp.linspace(0.0, 1.0, 10001)
    np.testing.assert_allclose(np.asarray(s.t(s.lam(t))), np.asarray(t), rtol=0, atol=1e-6)


@pytest.mark.parametrize("s", ALL_SCHEDULES, ids=_id)
def test_endpoints(s):
    np.testing.assert_allclose(float(s.lam(0.0)), s.lam_max, rtol=1e-6)
    np.testing.assert_allclose(float(s.lam(1.0)), s.lam_min, rtol=1e-6)
    np.testing.assert_allclose(float(s.t(s.lam_max)), 0.0, atol=1e-6)
    np.testing.assert_allclose(float(s.t(s.lam_min)), 1.0, atol=1e-6)


@pytest.mark.parametrize("s", ALL_SCHEDULES, ids=_id)
def test_density_is_minus_inverse_dlam_dt(s):
    t = jnp.linspace(0.0, 1.0, 1001)
    lam = s.lam(t)
    np.testing.assert_allclose(np.asarray(s.density(lam)), np.asarray(-1.0 / s.dlam_dt(t)), rtol=1e-5)


@pytest.mark.parametrize("s", ALL_SCHEDULES, ids=_id)
def test_density_matches_autodiff_of_t(s):
    lam = jnp.linspace(s.lam_min, s.lam_max, 401)[1:-1]
    autodiff = -_vgrad(s.t)(lam)
    np.testing.assert_allclose(np.asarray(s.density(lam)), np.asarray(autodiff), rtol=2e-5)
    # and dlam_dt against jax.jvp of lam(t) (STYLE rule 13)
    t = jnp.linspace(0.02, 0.98, 97)
    _, jvp = jax.jvp(s.lam, (t,), (jnp.ones_like(t),))
    np.testing.assert_allclose(np.asarray(s.dlam_dt(t)), np.asarray(jvp), rtol=2e-5)


@pytest.mark.parametrize("s", ALL_SCHEDULES, ids=_id)
def test_density_integrates_to_one(s):
    dens = lambda l: float(s.density(jnp.float32(l)))
    points = [2.4] if s.lam_min < 2.4 < s.lam_max else None
    total, err = scipy.integrate.quad(dens, s.lam_min, s.lam_max, points=points, limit=200, epsabs=1e-9)
    assert abs(total - 1.0) < 1e-5, (total, err)
    assert float(s.density(s.lam_min - 1.0)) == 0.0
    assert float(s.density(s.lam_max + 1.0)) == 0.0


@pytest.mark.parametrize("s", ALL_SCHEDULES, ids=_id)
def test_matches_theory_table(s):
    """lam(t), t(lam) and p(lam) against the THEORY §2 formulas with truncation, computed in float64 numpy."""
    lam_ref, t_ref, p_ref = ref_truncated(s)
    t = np.linspace(0.0, 1.0, 257)[1:-1]
    np.testing.assert_allclose(np.asarray(s.lam(jnp.asarray(t, jnp.float32))), lam_ref(t), rtol=2e-5, atol=2e-5)
    lam = np.linspace(s.lam_min, s.lam_max, 257)[1:-1]
    np.testing.assert_allclose(np.asarray(s.t(jnp.asarray(lam, jnp.float32))), t_ref(lam), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(s.density(jnp.asarray(lam, jnp.float32))), p_ref(lam), rtol=2e-5)


@given(
    which=st.integers(0, 5),
    lo=st.floats(-20.0, -0.01),
    hi=st.floats(0.01, 20.0),
    extra=st.floats(1.0, 10.0),
)
def test_ends_are_inside_for_any_truncation(which, lo, hi, extra):
    """lam(0), lam(1) round at most a few ulps past the ends, and the density there is positive (else w/p = inf)."""
    if which == 4:
        s = S.EDMSampling(sigma_min=math.exp(-hi / 2), sigma_max=math.exp(-lo / 2), rho=extra)  # rho = 1..10
    elif which == 5:
        s = S.ShiftedCosine(shift=extra - 5.0, lam_min=lo, lam_max=hi)
    else:
        s = (S.LinearLogSNR, S.Cosine, S.EDMTraining, S.FlowMatchingOT)[which](lam_min=lo, lam_max=hi)
    ends = s.lam(jnp.array([0.0, 1.0]))
    np.testing.assert_allclose(np.asarray(ends), [s.lam_max, s.lam_min], rtol=4e-6, atol=4e-6)
    assert bool(jnp.all(s.density(ends) > 0))


# --- hand-computed values (THEORY §2) ------------------------------------------------------------


def test_hand_values_untruncated():
    inf = math.inf
    cos = S.Cosine(lam_min=-inf, lam_max=inf)
    np.testing.assert_allclose(float(cos.lam(0.25)), 1.762747, rtol=1e-6)  # -2 log tan(pi/8)
    np.testing.assert_allclose(float(cos.lam(0.5)), 0.0, atol=1e-6)
    np.testing.assert_allclose(float(cos.t(0.0)), 0.5, atol=1e-7)
    np.testing.assert_allclose(float(cos.density(0.0)), 1 / (2 * math.pi), rtol=1e-6)  # 0.159155
    assert float(cos.lam(0.0)) == inf and float(cos.lam(1.0)) == -inf

    fm = S.FlowMatchingOT(lam_min=-inf, lam_max=inf)
    np.testing.assert_allclose(float(fm.density(0.0)), 0.125, rtol=1e-7)
    np.testing.assert_allclose(float(fm.lam(0.25)), 2 * math.log(3.0), rtol=1e-6)  # 2.197225
    np.testing.assert_allclose(float(fm.t(2 * math.log(3.0))), 0.25, rtol=1e-6)

    edm = S.EDMTraining(lam_min=-inf, lam_max=inf)
    np.testing.assert_allclose(float(edm.lam(0.5)), 2.4, rtol=1e-6)
    np.testing.assert_allclose(float(edm.density(2.4)), 0.166226, rtol=1e-5)  # 1/(2.4 sqrt(2 pi))
    np.testing.assert_allclose(float(edm.t(0.0)), 0.841345, rtol=1e-5)  # Phi(1)
    np.testing.assert_allclose(float(edm.lam(0.158655)), 4.8, rtol=1e-4)  # 2.4 + 2.4 Phi^-1(0.841345)

    sc = S.ShiftedCosine(shift=math.log(2.0), lam_min=-inf, lam_max=inf)  # s = log(64/32)
    np.testing.assert_allclose(float(sc.lam(0.5)), 2 * math.log(2.0), rtol=1e-6)  # 1.386294
    np.testing.assert_allclose(float(sc.t(0.0)), 0.704833, rtol=1e-6)  # (2/pi) arctan(2), erratum sign
    np.testing.assert_allclose(float(sc.density(2 * math.log(2.0))), 1 / (2 * math.pi), rtol=1e-6)


def test_hand_values_truncated():
    lin = S.LinearLogSNR(lam_min=-20.0, lam_max=20.0)
    np.testing.assert_allclose(float(lin.lam(0.25)), 10.0, rtol=1e-7)
    np.testing.assert_allclose(float(lin.density(3.0)), 0.025, rtol=1e-7)
    edms = S.EDMSampling()  # defaults: sigma_min 0.002, sigma_max 80, rho 7
    assert edms.lam_max == pytest.approx(12.429216, abs=1e-6)  # -2 log 0.002
    assert edms.lam_min == pytest.approx(-8.764053, abs=1e-6)  # -2 log 80
    np.testing.assert_allclose(float(edms.lam(0.5)), -1.844720, rtol=1e-5)  # -14 log((80^(1/7) + 0.002^(1/7))/2)
    np.testing.assert_allclose(float(edms.density(0.0)), 0.048972, rtol=1e-4)  # 1/(14 (80^(1/7) - 0.002^(1/7)))
    cos = S.Cosine(lam_min=-20.0, lam_max=20.0)
    # t1 - t0 = (2/pi)(arctan(e^10) - arctan(e^-10)) = 0.999942, so p(0) = 0.159155/0.999942
    np.testing.assert_allclose(float(cos.density(0.0)), 0.159164, rtol=1e-5)


def test_shift_for_resolution():
    assert S.shift_for_resolution(64) == 0.0
    assert S.shift_for_resolution(32) == pytest.approx(math.log(2.0))
    assert S.shift_for_resolution(128) == pytest.approx(-math.log(2.0))
    assert S.shift_for_resolution(8, base=32) == pytest.approx(math.log(4.0))
    with pytest.raises(ValueError, match="`d` and `base` must be positive"):
        S.shift_for_resolution(0)


# --- transforms ----------------------------------------------------------------------------------


@pytest.mark.parametrize("s", ALL_SCHEDULES[:6], ids=_id)
def test_jit_vmap_agree(s):
    # float32: XLA may fuse differently under jit; EDMSampling takes -2 rho log(x) with x near 1 (rel. 3e-5 at lam ~ 0)
    t = jnp.linspace(0.0, 1.0, 33)
    np.testing.assert_allclose(np.asarray(jax.jit(s.lam)(t)), np.asarray(s.lam(t)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(jax.vmap(s.lam)(t)), np.asarray(s.lam(t)), rtol=1e-5, atol=1e-5)
    # schedules are pytrees: a schedule passed through eqx.filter_jit gives the same values
    f = jax.jit(lambda sched, tt: sched.lam(tt))
    np.testing.assert_allclose(np.asarray(f(s, t)), np.asarray(s.lam(t)), rtol=1e-5, atol=1e-5)


# --- acceptance 8: finite in float32, with gradients ---------------------------------------------

TS = jnp.array([0.0, 1e-7, 0.5, 1.0 - 1e-7, 1.0], jnp.float32)
LAMS = jnp.array([-40.0, -25.0, -3.0, -1e-3, 0.0, 2.4, 25.0, 40.0], jnp.float32)

WIDE_SCHEDULES = [
    S.LinearLogSNR(lam_min=-40.0, lam_max=40.0),
    S.Cosine(lam_min=-40.0, lam_max=40.0),
    S.ShiftedCosine(shift=SHIFT, lam_min=-40.0, lam_max=40.0),
    S.ShiftedCosine(shift=-2.0, lam_min=-40.0, lam_max=40.0),
    # EDMTraining's density N(40; 2.4, 2.4^2) ~ 1e-54 is not representable in float32, so its lam(t), t(lam),
    # density are tested at +-40 but its dlam_dt only on [-20, 20] (below); ~1e12 there.
    S.EDMTraining(lam_min=-20.0, lam_max=20.0),
    S.EDMSampling(sigma_min=math.exp(-20.0), sigma_max=math.exp(20.0), rho=7.0),
    S.FlowMatchingOT(lam_min=-40.0, lam_max=40.0),
]


@pytest.mark.parametrize("s", [*WIDE_SCHEDULES, S.EDMTraining(lam_min=-40.0, lam_max=40.0)], ids=_id)
def test_finite_float32(s):
    lam_t = s.lam(TS)
    assert lam_t.dtype == jnp.float32
    assert finite(lam_t)
    np.testing.assert_allclose(float(lam_t[0]), s.lam_max, rtol=1e-6)
    np.testing.assert_allclose(float(lam_t[-1]), s.lam_min, rtol=1e-6)
    assert finite(_vgrad(s.lam)(TS))
    assert finite(s.t(LAMS)) and finite(_vgrad(s.t)(LAMS))
    assert finite(s.density(LAMS)) and finite(_vgrad(s.density)(LAMS))


@pytest.mark.parametrize("s", WIDE_SCHEDULES, ids=_id)
def test_dlam_dt_finite_float32(s):
    assert finite(s.dlam_dt(TS))
    assert bool(jnp.all(s.dlam_dt(TS) < 0))


# --- acceptance 9: bad input ---------------------------------------------------------------------

RANGED = [S.LinearLogSNR, S.Cosine, S.EDMTraining, S.FlowMatchingOT]


@pytest.mark.parametrize("cls", RANGED, ids=lambda c: c.__name__)
@pytest.mark.parametrize("lo, hi", [(1.0, 1.0), (5.0, -5.0)])
def test_lam_min_not_below_lam_max(cls, lo, hi):
    with pytest.raises(ValueError, match="`lam_min` < `lam_max`"):
        cls(lam_min=lo, lam_max=hi)


@pytest.mark.parametrize("cls", RANGED, ids=lambda c: c.__name__)
def test_nan_range(cls):
    with pytest.raises(ValueError, match="`lam_min` of .* must be a number"):
        cls(lam_min=math.nan, lam_max=1.0)


def test_linear_needs_finite_range():
    with pytest.raises(ValueError, match="finite `lam_min` and `lam_max`"):
        S.LinearLogSNR(lam_min=-math.inf, lam_max=1.0)


def test_shifted_cosine_bad_input():
    with pytest.raises(ValueError, match="`lam_min` < `lam_max`"):
        S.ShiftedCosine(shift=0.5, lam_min=3.0, lam_max=2.0)
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="`shift` of ShiftedCosine must be finite"):
            S.ShiftedCosine(shift=bad)


def test_edm_sampling_bad_input():
    with pytest.raises(ValueError, match="`sigma_min` < `sigma_max`"):
        S.EDMSampling(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="`rho` of EDMSampling must be finite and positive"):
        S.EDMSampling(rho=math.inf)
    with pytest.raises(ValueError, match="`sigma_min` of EDMSampling must be finite and positive"):
        S.EDMSampling(sigma_min=-1.0)
    with pytest.raises(ValueError, match="`lam_min` < `lam_max`"):
        S.EDMSampling(lam_min=3.0, lam_max=2.0)
    with pytest.raises(ValueError, match="EDMSampling is defined on"):
        S.EDMSampling(lam_max=30.0)


def test_public_names():
    for name in ("LinearLogSNR", "Cosine", "ShiftedCosine", "EDMTraining", "EDMSampling", "FlowMatchingOT"):
        assert issubclass(getattr(vd.schedules, name), vd.schedules.AbstractSchedule)
