"""Weightings (THEORY §3 table): values, monotonicity, EDM-monotonic, numerics, bad input."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
import scipy.special
import scipy.stats
from vdmpp import weighting as W

from helpers import finite


SHIFT = math.log(64 / 32)


def _sech(x):
    return 1.0 / np.cosh(x)


def _edm(lam):
    return scipy.stats.norm.pdf(lam, 2.4, 2.4) * (np.exp(-lam) + 0.5**2)


# (weighting, independent float64 formula from the THEORY §3 table, the table's "monotone?" column)
CASES = [
    (W.ELBO(), lambda l: np.ones_like(l), True),
    (W.IDDPM(), lambda l: _sech(l / 2), False),
    (W.EDM(), _edm, False),
    (W.FlowMatching(), lambda l: np.exp(-l / 2), True),
    (W.InDI(), lambda l: np.exp(-l) * _sech(l / 4) ** 2, True),
    (W.P2(gamma=0.5), lambda l: _sech(l / 2) / (1 + np.exp(l)) ** 0.5, False),
    (W.P2(gamma=1.0), lambda l: _sech(l / 2) / (1 + np.exp(l)), False),
    (W.MinSNR(gamma=5.0), lambda l: _sech(l / 2) * np.minimum(1.0, 5.0 * np.exp(-l)), False),
    (W.Sigmoid(k=2.0), lambda l: scipy.special.expit(-l + 2.0), True),
    (W.Sigmoid(k=-1.0), lambda l: scipy.special.expit(-l - 1.0), True),
    (W.FiveBitLike(), lambda l: scipy.stats.norm.cdf(-2 * (l - 8.4)), True),
    (W.Shifted(W.Sigmoid(k=2.0), shift=SHIFT), lambda l: scipy.special.expit(-(l - 2 * SHIFT) + 2.0), True),
    (W.Shifted(W.IDDPM(), shift=-1.0), lambda l: _sech((l + 2.0) / 2), False),
    (W.Shifted(W.EDM(), shift=SHIFT), lambda l: _edm(l - 2 * SHIFT), False),
]
IDS = [f"{type(w).__name__}{i}" for i, (w, _, _) in enumerate(CASES)]


def _edm_peak_reference():
    res = scipy.optimize.minimize_scalar(
        lambda l: -_edm(l), bounds=(-10, 0), method="bounded", options={"xatol": 1e-10}
    )
    return res.x, _edm(res.x)


@pytest.mark.parametrize("w, ref, _", CASES, ids=IDS)
def test_values_match_table(w, ref, _):
    # the table's formulas on a grid where float32 values are well above underflow
    lam = np.linspace(-15.0, 15.0, 121)
    np.testing.assert_allclose(np.asarray(w(jnp.asarray(lam, jnp.float32))), ref(lam), rtol=2e-5, atol=1e-30)


def test_theory_hand_values():
    lam = jnp.array([-4.0, -2.0, 0.0, 2.0, 4.0])
    np.testing.assert_allclose(
        np.asarray(W.Sigmoid(k=2.0)(lam)), [0.997527, 0.982014, 0.880797, 0.5, 0.119203], rtol=2e-6
    )
    np.testing.assert_allclose(np.asarray(W.IDDPM()(lam)), [0.265802, 0.648054, 1, 0.648054, 0.265802], rtol=2e-6)
    np.testing.assert_allclose(
        np.asarray(W.EDM()(lam)), [0.260437, 0.236528, 0.126026, 0.063169, 0.035714], rtol=1e-5, atol=2e-6
    )


@pytest.mark.parametrize("w, _, monotone", CASES, ids=IDS)
def test_is_monotonic_agrees_with_table(w, _, monotone):
    assert W.is_monotonic(w, -20.0, 20.0) is monotone
    assert W.is_monotonic(w) is monotone  # default range [-20, 20]


def test_is_monotonic_edm_monotonic_and_ranges():
    assert W.is_monotonic(W.EDMMonotonic(), -20.0, 20.0)
    assert W.is_monotonic(W.EDMMonotonic(), -40.0, 40.0)
    # EDM is monotone right of its peak only
    assert W.is_monotonic(W.EDM(), -3.2, 20.0)
    assert not W.is_monotonic(W.EDM(), -3.5, 20.0)
    # sech(lam/2) is monotone on lam >= 0
    assert W.is_monotonic(W.IDDPM(), 0.0, 20.0)
    with pytest.raises(ValueError, match="lam_min < lam_max"):
        W.is_monotonic(W.ELBO(), 1.0, 1.0)


def test_edm_monotonic():
    peak_lam, peak_value = _edm_peak_reference()
    assert peak_lam == pytest.approx(-3.308, abs=1e-3)
    assert peak_value == pytest.approx(0.27103, abs=1e-5)
    assert W.EDM_PEAK_LAM == pytest.approx(peak_lam, abs=1e-6)
    assert W.EDM_PEAK_VALUE == pytest.approx(peak_value, rel=1e-7)
    right = np.linspace(peak_lam + 1e-3, 20.0, 200)
    np.testing.assert_allclose(
        np.asarray(W.EDMMonotonic()(jnp.asarray(right, jnp.float32))), _edm(right), rtol=2e-5, atol=1e-30
    )
    left = np.linspace(-40.0, peak_lam - 1e-3, 200)
    np.testing.assert_allclose(np.asarray(W.EDMMonotonic()(jnp.asarray(left, jnp.float32))), peak_value, rtol=1e-6)
    # continuous at the peak
    np.testing.assert_allclose(float(W.EDMMonotonic()(peak_lam)), peak_value, rtol=1e-6)


def test_shifted_moves_by_twice_the_shift():
    lam = jnp.linspace(-10.0, 10.0, 41)
    for base in (W.Sigmoid(k=2.0), W.EDM(), W.InDI()):
        np.testing.assert_allclose(
            np.asarray(W.Shifted(base, shift=0.7)(lam)), np.asarray(base(lam - 1.4)), rtol=1e-6, atol=1e-30
        )


def test_log_weight_consistent():
    lam = jnp.linspace(-30.0, 30.0, 61)
    for w, _, _ in CASES:
        np.testing.assert_allclose(np.asarray(jnp.exp(w.log_weight(lam))), np.asarray(w(lam)), rtol=1e-6)


# --- acceptance 8: finite in float32 with gradients ------------------------------------------------

LAMS = jnp.array([-40.0, -25.0, -3.308, -1e-3, 0.0, 1e-3, 2.4, 8.4, 25.0, 40.0], jnp.float32)
ALL_WEIGHTINGS = [w for w, _, _ in CASES] + [W.EDMMonotonic(), W.MinSNR(gamma=1.0)]


@jax.jit
def _values_and_grads(w, lam):
    # one jit for all weightings (they are pytrees)
    return jax.vmap(w)(lam), jax.vmap(jax.grad(w))(lam)


@pytest.mark.parametrize("w", ALL_WEIGHTINGS, ids=lambda w: type(w).__name__)
def test_finite_float32(w):
    values, grads = _values_and_grads(w, LAMS)
    assert values.dtype == jnp.float32
    assert finite(values) and finite(grads)
    assert bool(jnp.all(values >= 0))


# --- acceptance 9: bad input -------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_bad_parameters(bad):
    with pytest.raises(ValueError, match="`k` of Sigmoid must be finite"):
        W.Sigmoid(k=bad)
    with pytest.raises(ValueError, match="`shift` of Shifted must be finite"):
        W.Shifted(W.ELBO(), shift=bad)
    with pytest.raises(ValueError, match="`gamma` of P2 must be finite"):
        W.P2(gamma=bad)
    with pytest.raises(ValueError, match="`gamma` of MinSNR must be finite"):
        W.MinSNR(gamma=bad)


def test_bad_types_and_signs():
    with pytest.raises(ValueError, match="`gamma` of MinSNR must be positive"):
        W.MinSNR(gamma=0.0)
    # with runtime checking on (tests), jaxtyping/beartype reports it first; both name the `weighting` argument
    with pytest.raises(TypeError, match="weighting"):
        W.Shifted("sigmoid", shift=0.0)  # pyright: ignore[reportArgumentType]
