"""Acceptance 10: the public names of the Gaussian core import exactly as DESIGN.md writes them."""

import inspect

import jax.numpy as jnp
import jax.random as jr
import pytest
import vdmpp as vd


SCHEDULES = ["Cosine", "ShiftedCosine", "EDMTraining", "EDMSampling", "FlowMatchingOT", "LinearLogSNR"]
WEIGHTINGS = [
    "Sigmoid",
    "ELBO",
    "IDDPM",
    "EDM",
    "EDMMonotonic",
    "FlowMatching",
    "InDI",
    "P2",
    "MinSNR",
    "FiveBitLike",
    "Shifted",
]


def test_package_version():
    assert isinstance(vd.__version__, str) and vd.__version__


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_names(name):
    cls = getattr(vd.schedules, name)
    assert issubclass(cls, vd.schedules.AbstractSchedule)
    for method in ("lam", "t", "density", "dlam_dt"):
        assert callable(getattr(cls, method))


@pytest.mark.parametrize("name", WEIGHTINGS)
def test_weighting_names(name):
    assert issubclass(getattr(vd.weighting, name), vd.weighting.AbstractWeighting)


def test_design_snippet_runs(getkey):
    """The Gaussian part of DESIGN.md's API block, verbatim where it is code."""
    s = vd.schedules.Cosine(lam_min=-20.0, lam_max=20.0)
    t = jnp.float32(0.3)
    lam = s.lam(t)
    s.t(lam)
    s.density(lam)
    vd.schedules.ShiftedCosine(shift=0.5)
    vd.schedules.EDMSampling(sigma_min=0.002, sigma_max=80.0, rho=7.0)
    vd.schedules.EDMTraining()
    vd.schedules.FlowMatchingOT()
    vd.schedules.LinearLogSNR()

    w = vd.weighting.Sigmoid(k=2.0)
    w(lam)
    assert vd.weighting.is_monotonic(w, -20.0, 20.0) is True
    vd.weighting.P2(gamma=1.0)
    vd.weighting.MinSNR(gamma=5.0)
    vd.weighting.Shifted(w, shift=0.5)

    x = jr.normal(getkey(), (3, 2))
    denoiser = lambda z, lam: z  # any callable on ONE example
    assert vd.losses.weighted_loss(denoiser, x, key=getkey(), schedule=s, weighting=w).shape == (3,)
    t_b, eps = jnp.full((3,), 0.5), jr.normal(getkey(), (3, 2))
    assert vd.losses.weighted_loss_at(denoiser, x, t_b, eps, schedule=s, weighting=w).shape == (3,)
    x_uint8 = jnp.array([[0, 255], [17, 3], [128, 64]], jnp.uint8)
    oracle = vd.oracle.EmpiricalDenoiser(vd.losses.uint8_to_float(x_uint8))
    assert vd.losses.elbo_bpd(oracle, x_uint8, key=getkey(), schedule=s).shape == (3,)


def test_keyword_only_arguments():
    """Keys, schedules and weightings are keyword-only, as DESIGN.md writes the calls."""

    def kw_only(fn):
        return {n for n, p in inspect.signature(fn).parameters.items() if p.kind is p.KEYWORD_ONLY}

    assert {"key", "schedule", "weighting", "time_sampler"} <= kw_only(vd.losses.weighted_loss)
    assert {"schedule", "weighting"} <= kw_only(vd.losses.weighted_loss_at)
    assert {"key", "schedule", "num_levels"} <= kw_only(vd.losses.elbo_bpd)
    assert list(inspect.signature(vd.losses.weighted_loss_at).parameters)[:4] == ["denoiser", "x", "t", "eps"]
    assert list(inspect.signature(vd.weighting.is_monotonic).parameters)[:3] == ["weighting", "lam_min", "lam_max"]
    assert inspect.signature(vd.losses.elbo_bpd).parameters["num_levels"].default == 256


def test_supporting_names():
    """Names other modules rely on (THEORY §6 and COMMON brief)."""
    for name in ("LowDiscrepancy", "Stratified", "IID", "WeightedLossAux", "discrete_loss", "discrete_loss_at"):
        assert hasattr(vd.losses, name)
    for name in ("as_eps_denoiser", "VPrediction", "XPrediction", "EpsPrediction", "FPrediction", "OPrediction"):
        assert hasattr(vd.process, name)
    assert callable(vd.schedules.shift_for_resolution)
